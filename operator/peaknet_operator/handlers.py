"""kopf handlers: read, call the pure functions (checks, sizing, render, status), write.

One level-triggered reconcile serves create, resume (operator start) and spec updates: it
renders every child, adopts it (owner reference: deleting the resource deletes it) and
creates or patches it. A spec that is invalid or does not fit is reported in status (phase
Failed, condition SpecAccepted false) and nothing is created or changed; it is not retried
(a new spec is a new event).

API failures reach status before anything else: the `Reconciled` condition carries the API's
own message and a Warning event repeats it; then every failure is retried with back-off
(TemporaryError, doubling to RETRY_MAX_S): unreachable or overloaded API servers (0, 409, 429,
5xx) and KubeRay's CRDs not being installed (discovery serves no ray.io/v1 kind) leave the
phase Pending, other refusals (401, 403, 404, 422) make it Failed until a retry succeeds, so
fixing RBAC, a quota or the cluster takes effect without a new spec or an operator restart.

A service (spec.pipeline.runtime.service) runs until deleted and keeps its RayCluster between
DAQ runs; the timer starts a new driver (the next attempt's RayJob, same cluster) when one
fails, with back-off and within spec.service.driverRestarts (service.py). Deleting a service
drains it before its pods go: kopf's finalizer keeps the resource (deletionTimestamp set, the
driver sees it and drains) while the deletion handler waits for status.driver to say the driver
ended, bounded by the pods' grace period; then the garbage collector deletes the children.

The end of the run releases the compute once KubeRay has seen it (the RayJob's
jobDeploymentStatus is final: see status.compute_to_release): the RayCluster is deleted (its
pods with it; KubeRay never deletes a cluster a RayJob only selects), and a finished run's
reconcile (resume, spec edit) creates and patches nothing, so the cluster is never
re-created. The output claim, the RayJob and the resource stay.

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

Each event (a reconcile, a timer tick) parses and sizes the spec once, reads the children
once, renders once and folds once; it reads again only after writing a RayCluster or RayJob
(what status is folded from; observation.py reads). The decisions are pure (decisions.py,
status.py, scaling.py).
Nothing lives at module level: the API client is made at login and kept in kopf's operator
memo; the lock and the last create-or-patch outcome (which the timer's status keeps showing
in `Reconciled`) live in the resource's own memo, which kopf drops with the resource.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from typing import Any, NoReturn

import kopf
import kubernetes

from .decisions import (
    FINGERPRINT,
    Event,
    accept,
    applied_event,
    creation_annotations,
    released_event,
    restart_reason,
    scale_event,
    status_events,
)
from .deletion import DRAIN_POLL_S, drain_before_deletion
from .kubeapi import KubeApi
from .observation import (
    CallFailed,
    Target,
    Writes,
    after_writes,
    bare_observation,
    call,
    observe,
    refused,
    require_kuberay,
    settled,
)
from .observed import Observed, Outcome, compute_to_release, run_ended
from .render import render_all, restart_fingerprint
from .render.rayjob import render_rayjob
from .scaling import applied
from .service import restart_message
from .spec import GROUP, PLURAL, VERSION
from .status import fold, status_patch

# Re-exported: the render CLI's tests and the operator image's closure check import them here.
__all__ = ["FINGERPRINT", "accept", "creation_annotations", "register", "settings"]

STATUS_INTERVAL_S = 5.0
RETRY_DELAY_S = 10.0
RETRY_MAX_S = 300.0
APPLIED = Outcome(True, "Applied", "every child created or up to date")
RUN_ENDED = Outcome(True, "RunEnded", "the run has ended: nothing is created or changed")


@dataclasses.dataclass
class Connection:
    """The operator's API client, made at each login (kopf logs in again when credentials
    stop working). One object in kopf's operator memo: each resource's memo is a shallow copy
    of that memo, so every resource sees the client of the latest login."""

    api: KubeApi | None = None


@dataclasses.dataclass
class ResourceState:
    """What one resource's handlers share, kept in its kopf memo (gone with the resource): the
    lock around read-decide-write, and the last create-or-patch outcome (`Reconciled`)."""

    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    outcome: Outcome | None = None


def configure_client() -> None:
    """Point the `kubernetes` client at the cluster: in-cluster, else $KUBECONFIG."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))


def login(memo: kopf.Memo, **kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf and the operator's own calls use the same credentials: a new client per login."""
    configure_client()
    memo.setdefault("connection", Connection()).api = KubeApi(kubernetes.client.ApiClient())
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


def _api(memo: kopf.Memo) -> KubeApi:
    connection = memo.get("connection")
    if connection is None or connection.api is None:
        raise RuntimeError("no API client: the login handler has not run")
    return connection.api


def _state(memo: kopf.Memo) -> ResourceState:
    # dict.setdefault is atomic: the reconcile and the timer run in different threads.
    return memo.setdefault("resource_state", ResourceState())


def backoff(retry: int) -> float:
    """Seconds before retry number `retry` (0 first): doubling, capped."""
    return min(RETRY_DELAY_S * 2 ** min(retry, 10), RETRY_MAX_S)


def _post(body: Mapping[str, Any], events: Iterable[Event | None]) -> None:
    for event in events:
        if event is not None:
            kopf.event(body, type=event.type, reason=event.reason, message=event.message)


def begin(
    name: str,
    namespace: str,
    body: kopf.Body,
    patch: kopf.Patch,
    memo: kopf.Memo,
    logger: logging.Logger | None = None,
) -> tuple[Target, ResourceState] | None:
    """Every event's start: the client, the resource's state and its spec accepted once.
    None for a spec that is refused: status says why (and `logger`, when given, warns), and
    nothing is read or written."""
    state = _state(memo)
    t = Target(_api(memo), name, namespace, body, accept(body.get("spec")))
    if t.acceptance.problems:
        if logger is not None:
            problems = "; ".join(t.acceptance.problems)
            logger.warning("spec not applied (%s): %s", t.acceptance.reason, problems)
        write_status(body, refused(t, state.outcome), patch)
        return None
    return t, state


def look(t: Target, state: ResourceState) -> tuple[Observed, list[dict], str]:
    """(observation, children, restart fingerprint): the children read once and rendered
    once, with the scale decided on what was read; sets whether the running pods lag behind
    them. The fingerprint leaves the scale out, so a later observation is compared with the
    same one."""
    obs = observe(t, state.outcome)
    spec, sizes = t.acceptance.spec, t.acceptance.sizes
    attempt = obs.restart.attempt if obs.restart is not None else 0
    children = render_all(t.name, t.namespace, spec, sizes, obs.scale, attempt)
    fingerprint = restart_fingerprint(children)
    obs.restart_reason = restart_reason(obs.raycluster, fingerprint)
    return obs, children, fingerprint


def write_status(body: Mapping[str, Any], obs: Observed, patch: kopf.Patch) -> None:
    """Fold, and put the difference (if any) into kopf's patch, posting the events the
    change calls for (decisions.status_events)."""
    folded = fold(obs)
    change = status_patch(obs.previous, folded)
    if change is None:
        return
    patch["status"] = change
    _post(body, status_events(obs.previous, folded))


def report_failure(
    t: Target,
    patch: kopf.Patch,
    outcome: Outcome,
    retry: int,
    obs: Observed | None,
    writes: Writes,
    fingerprint: str,
) -> NoReturn:
    """Write the failure into status (and its event), then hand it to kopf to retry with
    back-off (a permanent refusal too: RBAC or the cluster may be fixed meanwhile). Status
    shows what `writes` changed when it can be read again; else (or `obs` None: the children
    could not be read) what is known without the children."""
    obs = settled(t, obs, writes, fingerprint) or bare_observation(t, outcome)
    obs.outcome = outcome
    write_status(t.body, obs, patch)
    raise kopf.TemporaryError(outcome.message, delay=backoff(retry))


def reconcile(
    name: str,
    namespace: str,
    body: kopf.Body,
    patch: kopf.Patch,
    logger: logging.Logger,
    memo: kopf.Memo,
    retry: int = 0,
    **_: Any,
) -> None:
    """Create or patch every child of the resource (idempotent); once the run has ended,
    release its compute instead and create nothing."""
    begun = begin(name, namespace, body, patch, memo, logger)
    if begun is None:
        return
    t, state = begun
    writes: Writes = []
    obs, fingerprint = None, ""
    with state.lock:
        try:
            obs, children, fingerprint = look(t, state)
            if run_ended(obs):
                release_compute(t, obs, writes)
                state.outcome = RUN_ENDED
            else:
                if obs.raycluster is None or obs.rayjob is None:
                    require_kuberay(t.k)
                apply_children(t, obs, children, fingerprint, writes)
                state.outcome = APPLIED
        except CallFailed as failed:
            logger.warning("%s", failed.outcome.message)
            state.outcome = failed.outcome
            report_failure(t, patch, failed.outcome, retry, obs, writes, fingerprint)
    applies = [(kind, result) for kind, result in writes if result != "deleted"]
    counts = {r: [res for _, res in applies].count(r) for r in ("created", "patched", "unchanged")}
    logger.info("children: %s", ", ".join(f"{n} {r}" for r, n in counts.items()))
    _post(body, [applied_event(applies)])
    try:
        obs = after_writes(t, obs, writes, fingerprint, state.outcome)
    except CallFailed as failed:
        report_failure(t, patch, failed.outcome, retry, None, writes, fingerprint)
    write_status(body, obs, patch)


def apply_children(
    t: Target, obs: Observed, children: list[dict], fingerprint: str, writes: Writes
) -> None:
    """Adopt, then create or patch each child, appending (kind, result) to `writes` as it
    goes (a failure leaves the writes made before it there). The RayCluster and the RayJob
    are compared with what `obs` read moments ago, under the lock; the others are read."""
    k, read = t.k, {"RayCluster": obs.raycluster, "RayJob": obs.rayjob}
    for child in children:
        kopf.adopt(child, owner=t.body)
        kind = child["kind"]
        annotations = creation_annotations(kind, fingerprint)
        if kind in read:
            args = (k.apply_over, read[kind], child, annotations)
        else:
            args = (k.apply, child, annotations)
        writes.append((kind, call(k, f"apply {kind}", *args, kind=kind)))


def release_compute(t: Target, obs: Observed, writes: Writes) -> bool:
    """Delete the RayCluster of a run that has ended (its pods go with it); True when it did."""
    if not compute_to_release(obs):
        return False
    k, rc = t.k, obs.raycluster_name
    call(k, "delete RayCluster", k.delete, "ray.io/v1", "RayCluster", t.namespace, rc)
    writes.append(("RayCluster", "deleted"))
    _post(t.body, [released_event(rc, obs.claim)])
    return True


def restart_driver(t: Target, obs: Observed, writes: Writes) -> bool:
    """A service: delete older attempts' RayJobs, and start the next attempt once the failed
    driver's back-off has passed (service.py), with a Warning event; True when it wrote."""
    decision, k = obs.restart, t.k
    if decision is None or obs.raycluster is None:
        return False
    for stale in obs.stale_rayjobs:
        call(k, "delete RayJob", k.delete, "ray.io/v1", "RayJob", t.namespace, stale)
        writes.append(("RayJob", "deleted"))
    if decision.action != "restart":
        return bool(obs.stale_rayjobs)
    job = render_rayjob(t.name, t.namespace, t.acceptance.spec, decision.attempt + 1)
    kopf.adopt(job, owner=t.body)
    writes.append(("RayJob", call(k, "restart the driver", k.apply, job, kind="RayJob")))
    _post(t.body, [Event("Warning", "DriverRestarted", restart_message(decision)[:1000])])
    return True


def apply_scale(t: Target, obs: Observed, children: list[dict], writes: Writes) -> bool:
    """Patch the RayCluster when the scaling decision moved since it was written (the driver
    released pods); True when it patched. Never creates the RayCluster (the reconcile does)."""
    if obs.problems or obs.raycluster is None or obs.scale is None or run_ended(obs):
        return False
    if applied(obs.raycluster, obs.scale):
        return False
    raycluster = next(child for child in children if child["kind"] == "RayCluster")
    kopf.adopt(raycluster, owner=t.body)
    call(t.k, "scale RayCluster", t.k.apply_over, obs.raycluster, raycluster, kind="RayCluster")
    writes.append(("RayCluster", "patched"))
    _post(t.body, [scale_event(obs.scale)])
    return True


def refresh_status(
    name: str, namespace: str, body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any
) -> None:
    """Release the compute of an ended run or apply a pending scale-down step, and fold the
    children and the driver into status (the timer)."""
    begun = begin(name, namespace, body, patch, memo)
    if begun is None:
        return
    t, state = begun
    writes: Writes = []
    obs, fingerprint = None, ""
    with state.lock:
        try:
            obs, children, fingerprint = look(t, state)
            if not release_compute(t, obs, writes) and not restart_driver(t, obs, writes):
                apply_scale(t, obs, children, writes)
            obs = after_writes(t, obs, writes, fingerprint, state.outcome)
        except CallFailed as failed:
            report_failure(t, patch, failed.outcome, 0, obs, writes, fingerprint)
    write_status(body, obs, patch)


def register(
    registry: kopf.OperatorRegistry,
    status_interval_s: float = STATUS_INTERVAL_S,
    drain_poll_s: float = DRAIN_POLL_S,
) -> kopf.OperatorRegistry:
    """Register every handler on `registry` (the console script and the tests each use their
    own registry, so nothing global is shared)."""
    kopf.on.login(registry=registry)(login)
    for on in (kopf.on.create, kopf.on.resume, kopf.on.update):
        on(GROUP, VERSION, PLURAL, registry=registry)(reconcile)
    kopf.timer(GROUP, VERSION, PLURAL, interval=status_interval_s, registry=registry)(
        refresh_status
    )
    kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry, id="drain", param=drain_poll_s)(
        _drain_handler
    )
    return registry


def _drain_handler(
    name: str,
    namespace: str,
    body: kopf.Body,
    memo: kopf.Memo,
    logger: logging.Logger,
    param: float,
    retry: int = 0,
    **_: Any,
) -> None:
    """The deletion handler (deletion.py); kopf passes register's drain_poll_s as `param`. A
    finite run, or a spec that was never accepted (nothing runs), is let go at once."""
    acceptance = accept(body.get("spec"))
    if acceptance.problems or acceptance.spec is None or not acceptance.spec.is_service:
        return
    t = Target(_api(memo), name, namespace, body, acceptance)
    drain_before_deletion(t, logger, retry, param)


def settings(settings: kopf.OperatorSettings | None = None) -> kopf.OperatorSettings:
    """Progress and diff base in annotations, so status holds only what the schema declares."""
    settings = settings or kopf.OperatorSettings()
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.posting.reporting_component = "peaknet-operator"
    settings.posting.event_name_prefix = "peaknet-operator-"
    return settings
