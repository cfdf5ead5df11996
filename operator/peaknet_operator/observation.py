"""What the operator reads for one event, and how a failed call is told: the observation status
is folded from (RayCluster, RayJob, pods, the driver's ServiceAccount; each read once), the
reads again after a write of the RayCluster or RayJob, and CallFailed, which carries the
outcome (`Reconciled`) of a refused or unreachable API call. The handlers (handlers.py) call
these; the decisions made on what is read are pure (decisions.py, scaling.py, status.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from .decisions import Acceptance, changes_observation, restart_reason
from .kubeapi import ApiError, KubeApi
from .observed import Observed, Outcome, outcome_of
from .render import names
from .render.livepage import page_host
from .render.volume import output_claim
from .scaling import decide, observe_scale
from .service import current_rayjob, restart_decision
from .spec import ROLES

RAY_KINDS = ("RayCluster", "RayJob")
Writes = list[tuple[str, str]]  # (kind, "created" | "patched" | "unchanged" | "deleted")


@dataclasses.dataclass(frozen=True)
class Target:
    """The resource one event is about: the API client, the resource's name, namespace and
    body, and its spec as accepted once (decisions.accept). Every read of the event takes it,
    so the same five values are not passed down each call again."""

    k: KubeApi
    name: str
    namespace: str
    body: Mapping[str, Any]
    acceptance: Acceptance


class CallFailed(Exception):
    """An API call of the operator failed; `outcome` is what status and the event say."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.message)
        self.outcome = outcome


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def call(k: KubeApi, what: str, fn: Any, *args: Any, kind: str = "") -> Any:
    """Call the API; a failure becomes CallFailed with its outcome. A 404 on a KubeRay `kind`
    is checked against discovery: the CRD may not be installed."""
    try:
        return fn(*args)
    except ApiError as exc:
        missing = exc.status == 404 and kind in RAY_KINDS and not _serves(k, kind)
        raise CallFailed(outcome_of(what, exc.status, exc.reason, str(exc), missing)) from None


def _serves(k: KubeApi, kind: str) -> bool:
    try:
        return k.serves("ray.io/v1", kind)
    except ApiError as exc:
        raise CallFailed(outcome_of("discovery", exc.status, exc.reason, str(exc), False)) from None


def require_kuberay(k: KubeApi) -> None:
    """Before creating a RayCluster or RayJob: KubeRay's CRDs must be served."""
    for kind in RAY_KINDS:
        if not _serves(k, kind):
            raise CallFailed(outcome_of(f"create {kind}", 404, "NotFound", "", True))


def bare_observation(t: Target, outcome: Outcome | None) -> Observed:
    """What is known without reading the children: the resource itself and the last outcome."""
    status = dict(t.body.get("status") or {})
    return Observed(
        generation=int(t.body.get("metadata", {}).get("generation") or 0),
        now=_now(),
        driver=dict(status.get("driver") or {}),
        previous=status,
        outcome=outcome,
        namespace=t.namespace,
        raycluster_name=names.raycluster_name(t.name),
    )


def refused(t: Target, outcome: Outcome | None) -> Observed:
    """The observation of a spec that is not applied: its problems, nothing read."""
    obs = bare_observation(t, outcome)
    obs.problems = t.acceptance.problems
    obs.problem_reason = t.acceptance.reason or "SpecInvalid"
    return obs


def observe(t: Target, outcome: Outcome | None) -> Observed:
    """Read what status is folded from (RayCluster, RayJob, pods, the driver's
    ServiceAccount), each once, and decide the inference group's scale on it."""
    k, namespace, spec = t.k, t.namespace, t.acceptance.spec
    obs = bare_observation(t, outcome)
    obs.claim = output_claim(t.name, spec)
    obs.service_account = spec.cluster.driver_service_account
    obs.live_page_host = page_host(t.name, namespace, spec)
    obs.desired = {role: spec.cluster.group(role).replicas for role in ROLES}
    selector = f"{names.LABEL_PIPELINE}={obs.raycluster_name}"
    obs.pods = call(k, "list pods", k.list, "v1", "Pod", namespace, selector)
    account = call(
        k, "get ServiceAccount", k.get, "v1", "ServiceAccount", namespace, obs.service_account
    )
    obs.account_found = account is not None
    return read_ray(t, obs)


def read_ray(t: Target, obs: Observed) -> Observed:
    """Read the RayCluster and the RayJob into `obs` and decide the scale on them (what a
    write of the operator changes)."""
    k, namespace, rc_name = t.k, t.namespace, obs.raycluster_name
    obs.raycluster = call(k, "get RayCluster", k.get, "ray.io/v1", "RayCluster", namespace, rc_name)
    spec = t.acceptance.spec
    if spec.is_service:  # every attempt's RayJob: the newest is the driver (service.py)
        selector = f"{names.LABEL_PIPELINE}={rc_name},{names.LABEL_COMPONENT}=driver"
        jobs = call(k, "list RayJobs", k.list, "ray.io/v1", "RayJob", namespace, selector)
        obs.rayjob, obs.stale_rayjobs = current_rayjob(jobs)
        now = datetime.strptime(obs.now, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        obs.restart = restart_decision(obs.rayjob, obs.driver, spec.service, now)
    else:
        obs.rayjob = call(
            k, "get RayJob", k.get, "ray.io/v1", "RayJob", namespace, names.rayjob_name(t.name)
        )
    obs.scale_seen = observe_scale(obs.raycluster, obs.pods, obs.driver)
    obs.scale = decide(t.acceptance.spec.cluster.inference.replicas, obs.scale_seen)
    return obs


def after_writes(
    t: Target, obs: Observed, writes: Writes, fingerprint: str, outcome: Outcome | None
) -> Observed:
    """What status is folded from after `writes`: `obs` itself unless a write changed the
    RayCluster or the RayJob; then those two are read again (pods come and go by KubeRay's
    hand, later; the next timer tick reads them)."""
    obs.outcome = outcome
    if not changes_observation(writes):
        return obs
    before = obs.restart
    obs = read_ray(t, dataclasses.replace(obs))
    obs.restart_reason = restart_reason(obs.raycluster, fingerprint)
    if before is not None and before.action == "restart" and obs.restart is not None:
        # The next attempt runs now, so its decision names no failure; status.service
        # .lastFailure keeps the one it was started for (a restart due at the first look, its
        # back-off already over, was otherwise never written).
        obs.restart = dataclasses.replace(obs.restart, reason=obs.restart.reason or before.reason)
    return obs


def settled(t: Target, obs: Observed | None, writes: Writes, fingerprint: str) -> Observed | None:
    """after_writes on a failure path: None when nothing was read or reading again fails."""
    if obs is None:
        return None
    try:
        return after_writes(t, obs, writes, fingerprint, None)
    except CallFailed:
        return None
