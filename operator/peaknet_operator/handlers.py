"""kopf handlers: read, call the pure functions (checks, sizing, render, status), write.

One level-triggered reconcile serves create, resume (operator start) and spec updates: it
renders every child, adopts it (owner reference: deleting the resource deletes it) and
creates or patches it. A spec that is invalid or does not fit is reported in status (phase
Failed, condition SpecAccepted false) and nothing is created or changed; it is not retried
(a new spec is a new event).

API failures reach status before anything else: the `Reconciled` condition carries the API's
own message and a Warning event repeats it; then unreachable or overloaded API servers (0,
409, 429, 5xx) and KubeRay's CRDs not being installed (discovery serves no ray.io/v1 kind) are
retried with back-off (TemporaryError), other refusals (403, 404, 422) are not
(PermanentError: the spec, RBAC or the cluster must change first).

The end of the run (RayJob or driver finished) releases the compute: the RayCluster is
deleted (its pods with it; KubeRay never deletes a cluster a RayJob only selects), and a
finished run's reconcile (resume, spec edit) creates and patches nothing, so the cluster is
never re-created. The output claim, the RayJob and the resource stay.

Status: a timer on each resource folds RayCluster, RayJob, pods and `status.driver` (which
the driver patches itself) into phase and conditions. Why a timer and not watches on the
children: three writers (KubeRay on two kinds, the driver) change what status is made of; one
periodic read of all of them is level-triggered, cannot miss an event, rate-limits the status
writes by itself, and the driver's own fields (the printer columns) reach `kubectl get`
without waiting for it. A status write happens only when the folded status differs. Phase
changes and failures are posted as Kubernetes Events.

Scaling (scaling.py): both the reconcile and the timer render the inference group from the
scaling decision made on what they observe. The reconcile reacts to a new replica count; the
timer is what lowers replicas once the driver publishes released pods (that is a status
change, which fires no update handler). A per-resource lock keeps the two from interleaving
their read-decide-patch steps.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import kopf
import kubernetes

from .checks import parse_spec
from .kubeapi import ApiError, KubeApi
from .render import names, render_all, restart_fingerprint
from .render.raycluster import render_raycluster
from .render.volume import output_claim
from .scaling import InferenceScale, applied, decide, observe_scale
from .sizing import RoleSize, size_roles, sizing_problems
from .spec import GROUP, PLURAL, ROLES, VERSION, PeakNetPipelineSpec
from .status import (
    WARN_CONDITIONS,
    Observed,
    Outcome,
    compute_to_release,
    fold,
    outcome_of,
    run_ended,
    status_patch,
)

FINGERPRINT = f"{GROUP}/started-fingerprint"
STATUS_INTERVAL_S = 5.0
RETRY_DELAY_S = 10.0
RETRY_MAX_S = 300.0
RAY_KINDS = ("RayCluster", "RayJob")
APPLIED = Outcome(True, "Applied", "every child created or up to date")
RUN_ENDED = Outcome(True, "RunEnded", "the run has ended: nothing is created or changed")
RESTART_MESSAGE = (
    "the spec changed in a way running pods and the driver do not pick up (pod templates, "
    "Ray start parameters or the pipeline config); they keep the previous one until the "
    "resource is re-created (kubectl replace --force -f FILE)"
)
_api: KubeApi | None = None
_locks: dict[tuple[str, str], threading.Lock] = {}
# The last create-or-patch outcome per resource; what the timer's status keeps showing.
_outcomes: dict[tuple[str, str], Outcome] = {}


class CallFailed(Exception):
    """An API call of the operator failed; `outcome` is what status and the event say."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.message)
        self.outcome = outcome


def configure_client() -> None:
    """Point the `kubernetes` client at the cluster: in-cluster, else $KUBECONFIG."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))


def api() -> KubeApi:
    global _api
    if _api is None:
        _api = KubeApi(kubernetes.client.ApiClient())
    return _api


def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf and the operator's own calls use the same credentials."""
    global _api
    configure_client()
    _api = None
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


def accept(raw_spec: Mapping[str, Any] | None) -> tuple[Any, dict[str, RoleSize], list[str], str]:
    """(spec, sizes, problems, reason): problems empty when the spec can be applied."""
    spec, problems = parse_spec(raw_spec)
    if spec is None or problems:
        return spec, {}, problems, "SpecInvalid"
    sizes = size_roles(spec)
    problems = sizing_problems(sizes, spec)
    return spec, sizes, problems, "ObjectStoreDoesNotFit" if problems else ""


def _lock(namespace: str, name: str) -> threading.Lock:
    return _locks.setdefault((namespace, name), threading.Lock())


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def backoff(retry: int) -> float:
    """Seconds before retry number `retry` (0 first): doubling, capped."""
    return min(RETRY_DELAY_S * 2 ** min(retry, 10), RETRY_MAX_S)


def _call(what: str, fn: Any, *args: Any, kind: str = "") -> Any:
    """Call the API; a failure becomes CallFailed with its outcome. A 404 on a KubeRay `kind`
    is checked against discovery: the CRD may not be installed."""
    try:
        return fn(*args)
    except ApiError as exc:
        missing = exc.status == 404 and kind in RAY_KINDS and not _serves(kind)
        raise CallFailed(outcome_of(what, exc.status, exc.reason, str(exc), missing)) from None


def _serves(kind: str) -> bool:
    try:
        return api().serves("ray.io/v1", kind)
    except ApiError as exc:
        raise CallFailed(outcome_of("discovery", exc.status, exc.reason, str(exc), False)) from None


def require_kuberay() -> None:
    """Before creating a RayCluster or RayJob: KubeRay's CRDs must be served."""
    for kind in RAY_KINDS:
        if not _serves(kind):
            raise CallFailed(outcome_of(f"create {kind}", 404, "NotFound", "", True))


def observe(
    name: str, namespace: str, body: Mapping[str, Any], raw_spec: Mapping[str, Any] | None
) -> Observed:
    """Read the children and fold inputs for one resource."""
    spec, sizes, problems, reason = accept(raw_spec)
    obs = bare_observation(name, namespace, body)
    obs.problems, obs.problem_reason = problems, reason or "SpecInvalid"
    if problems:
        return obs
    obs.claim = output_claim(name, spec)
    obs.service_account = spec.cluster.driver_service_account
    obs.desired = {role: spec.cluster.group(role).replicas for role in ROLES}
    k = api()
    obs.raycluster = _call(
        "get RayCluster", k.get, "ray.io/v1", "RayCluster", namespace, names.raycluster_name(name)
    )
    obs.rayjob = _call(
        "get RayJob", k.get, "ray.io/v1", "RayJob", namespace, names.rayjob_name(name)
    )
    selector = f"{names.LABEL_PIPELINE}={names.raycluster_name(name)}"
    obs.pods = _call("list pods", k.list, "v1", "Pod", namespace, selector)
    account = _call(
        "get ServiceAccount", k.get, "v1", "ServiceAccount", namespace, obs.service_account
    )
    obs.account_found = account is not None
    obs.scale_seen = observe_scale(obs.raycluster, obs.pods, obs.driver)
    obs.scale = decide(spec.cluster.inference.replicas, obs.scale_seen)
    started = ((obs.raycluster or {}).get("metadata", {}).get("annotations") or {}).get(FINGERPRINT)
    current = restart_fingerprint(render_all(name, namespace, spec, sizes))
    if started and started != current:
        obs.restart_reason = RESTART_MESSAGE
    return obs


def bare_observation(name: str, namespace: str, body: Mapping[str, Any]) -> Observed:
    """What is known without reading the children: the resource itself and the last outcome."""
    status = dict(body.get("status") or {})
    return Observed(
        generation=int(body.get("metadata", {}).get("generation") or 0),
        now=_now(),
        driver=dict(status.get("driver") or {}),
        previous=status,
        outcome=_outcomes.get((namespace, name)),
        namespace=namespace,
        raycluster_name=names.raycluster_name(name),
    )


def write_status(body: Mapping[str, Any], obs: Observed, patch: kopf.Patch) -> None:
    """Fold, and put the difference (if any) into kopf's patch; post an event on a new phase
    and a Warning event when a condition of WARN_CONDITIONS turns False (its message)."""
    folded = fold(obs)
    change = status_patch(obs.previous, folded)
    if change is None:
        return
    patch["status"] = change
    before, after = obs.previous.get("phase"), folded["phase"]
    if after != before:
        kind = "Warning" if after in ("Failed", "Degraded") else "Normal"
        kopf.event(body, type=kind, reason=after, message=folded.get("message", "")[:1000])
    old = {c.get("type"): c for c in obs.previous.get("conditions", [])}
    for cond in folded["conditions"]:
        if cond["type"] not in WARN_CONDITIONS or cond["status"] != "False":
            continue
        was = old.get(cond["type"], {})
        if (was.get("status"), was.get("message")) != ("False", cond["message"]):
            kopf.event(body, type="Warning", reason=cond["reason"], message=cond["message"][:1000])


def report_failure(
    name: str,
    namespace: str,
    body: kopf.Body,
    patch: kopf.Patch,
    outcome: Outcome,
    retry: int,
    retry_always: bool = False,
) -> None:
    """Write the failure into status (and its event), then hand it to kopf: retried with
    back-off unless permanent (a timer always retries: it runs again anyway)."""
    try:
        obs = observe(name, namespace, body, body.get("spec"))
    except CallFailed:
        obs = bare_observation(name, namespace, body)
    obs.outcome = outcome
    write_status(body, obs, patch)
    if outcome.permanent and not retry_always:
        raise kopf.PermanentError(outcome.message)
    raise kopf.TemporaryError(outcome.message, delay=backoff(retry))


def reconcile(
    name: str,
    namespace: str,
    body: kopf.Body,
    patch: kopf.Patch,
    logger: logging.Logger,
    retry: int = 0,
    **_: Any,
) -> None:
    """Create or patch every child of the resource (idempotent); once the run has ended,
    release its compute instead and create nothing."""
    raw_spec = body.get("spec")
    spec, sizes, problems, reason = accept(raw_spec)
    if problems:
        logger.warning("spec not applied (%s): %s", reason, "; ".join(problems))
        write_status(body, observe(name, namespace, body, raw_spec), patch)
        return
    key = (namespace, name)
    with _lock(namespace, name):
        try:
            obs = observe(name, namespace, body, raw_spec)
            if run_ended(obs):
                release_compute(name, namespace, body, obs)
                results, _outcomes[key] = [], RUN_ENDED
            else:
                if obs.raycluster is None or obs.rayjob is None:
                    require_kuberay()
                results = apply_children(name, namespace, body, spec, sizes, obs.scale)
                _outcomes[key] = APPLIED
        except CallFailed as failed:
            logger.warning("%s", failed.outcome.message)
            _outcomes[key] = failed.outcome
            report_failure(name, namespace, body, patch, failed.outcome, retry)
    counts = {r: results.count(r) for r in ("created", "patched", "unchanged")}
    logger.info("children: %s", ", ".join(f"{n} {r}" for r, n in counts.items()))
    if counts["created"] or counts["patched"]:
        message = f"{counts['created']} created, {counts['patched']} patched"
        kopf.event(body, type="Normal", reason="Reconciled", message=message)
    try:
        write_status(body, observe(name, namespace, body, raw_spec), patch)
    except CallFailed as failed:
        report_failure(name, namespace, body, patch, failed.outcome, retry, retry_always=True)


def apply_children(
    name: str,
    namespace: str,
    body: kopf.Body,
    spec: PeakNetPipelineSpec,
    sizes: dict[str, RoleSize],
    scale: InferenceScale | None = None,
) -> list[str]:
    children = render_all(name, namespace, spec, sizes, scale)
    fingerprint = restart_fingerprint(children)
    results = []
    for child in children:
        kopf.adopt(child, owner=body)
        kind = child["kind"]
        results.append(
            _call(
                f"apply {kind}",
                api().apply,
                child,
                creation_annotations(kind, fingerprint),
                kind=kind,
            )
        )
    return results


def creation_annotations(kind: str, fingerprint: str) -> dict[str, str] | None:
    """Annotations a child gets only when it is created: the RayCluster records the restart
    fingerprint it was started with."""
    return {FINGERPRINT: fingerprint} if kind == "RayCluster" else None


def release_compute(name: str, namespace: str, body: kopf.Body, obs: Observed) -> bool:
    """Delete the RayCluster of a run that has ended (its pods go with it); True when it did."""
    if not compute_to_release(obs):
        return False
    rc = obs.raycluster_name
    _call("delete RayCluster", api().delete, "ray.io/v1", "RayCluster", namespace, rc)
    message = (
        f"the run ended: deleted the RayCluster {rc} and its pods; the output claim "
        f"{obs.claim} and this resource stay"
    )
    kopf.event(body, type="Normal", reason="ComputeReleased", message=message)
    return True


def apply_scale(name: str, namespace: str, body: kopf.Body, obs: Observed) -> bool:
    """Patch the RayCluster when the scaling decision moved since it was written (the driver
    released pods); True when it patched. Never creates the RayCluster (the reconcile does)."""
    if obs.problems or obs.raycluster is None or obs.scale is None or run_ended(obs):
        return False
    if applied(obs.raycluster, obs.scale):
        return False
    spec, sizes, _, _ = accept(body.get("spec"))
    raycluster = render_raycluster(name, namespace, spec, sizes, obs.scale)
    kopf.adopt(raycluster, owner=body)
    _call("scale RayCluster", api().apply, raycluster, None, kind="RayCluster")
    deleting = ", ".join(obs.scale.workers_to_delete or ()) or "none"
    message = f"inference replicas {obs.scale.replicas}, deleting released pods: {deleting}"
    if obs.scale.workers_to_delete == ():
        message = f"inference replicas {obs.scale.replicas}; emptied workersToDelete (pods gone)"
    kopf.event(body, type="Normal", reason="ScaledInference", message=message)
    return True


def refresh_status(name: str, namespace: str, body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    """Release the compute of an ended run or apply a pending scale-down step, and fold the
    children and the driver into status (the timer)."""
    with _lock(namespace, name):
        try:
            obs = observe(name, namespace, body, body.get("spec"))
            if release_compute(name, namespace, body, obs) or apply_scale(
                name, namespace, body, obs
            ):
                obs = observe(name, namespace, body, body.get("spec"))
        except CallFailed as failed:
            report_failure(name, namespace, body, patch, failed.outcome, 0, retry_always=True)
    write_status(body, obs, patch)


def register(
    registry: kopf.OperatorRegistry, status_interval_s: float = STATUS_INTERVAL_S
) -> kopf.OperatorRegistry:
    """Register every handler on `registry` (the console script and the tests each use their
    own registry, so nothing global is shared)."""
    kopf.on.login(registry=registry)(login)
    for on in (kopf.on.create, kopf.on.resume, kopf.on.update):
        on(GROUP, VERSION, PLURAL, registry=registry)(reconcile)
    kopf.timer(GROUP, VERSION, PLURAL, interval=status_interval_s, registry=registry)(
        refresh_status
    )
    return registry


def settings(settings: kopf.OperatorSettings | None = None) -> kopf.OperatorSettings:
    """Progress and diff base in annotations, so status holds only what the schema declares."""
    settings = settings or kopf.OperatorSettings()
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.posting.reporting_component = "peaknet-operator"
    settings.posting.event_name_prefix = "peaknet-operator-"
    return settings
