"""A service resource (spec.pipeline.runtime.service: true): when its driver has failed and
when a new one is started, as pure functions of what the operator observed.

A service runs until its resource is deleted. Its driver is a RayJob on the service's
RayCluster; KubeRay runs each RayJob once (`backoffLimit: 0`: a second try would be a new
RayCluster for a RayJob that makes its own, and none for one that selects ours). So a driver that
fails is followed by a new RayJob, attempt n+1, named `<name>-driver-<n+1>` and annotated with
its attempt, on the same RayCluster; the newest attempt is the service's driver, older ones
are deleted. Everything needed to decide lives in the RayJobs themselves (their attempt
annotation and KubeRay's `endTime`), so the decision is level-triggered: an operator restarted
between two steps decides the same again.

A driver has failed when KubeRay has seen its job end (jobDeploymentStatus final,
rayjob_controller.go) and the driver did not end it on purpose: only `peaknet-pipeline stop`
ends a service (the driver publishes `endedBy`); an exit on SIGTERM is a pod going away
(eviction, a node drained) and is restarted like a crash. The next attempt starts
`restartBackoffSeconds x 2^attempt` after the failed one's end; past `driverRestarts`
restarts the service has failed, and its compute is released like a finished run's.

Deleting a service drains it first (`drain_wait`): the API server only marks a resource with
finalizers (deletionTimestamp), the driver sees the mark on its next read of the resource and
stops as `peaknet-pipeline stop` would (closing the current DAQ run's files), and the
operator's deletion handler keeps its finalizer until status.driver says the driver ended (or
its RayJob ended, or the grace period is over). Only then does the garbage collector delete
the RayCluster, so the pods are not all sent SIGTERM mid-run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from peaknet_pipeline.kube import DELETION_STOP

from .spec import GROUP, ServiceSpec

ATTEMPT = f"{GROUP}/driver-attempt"
# KubeRay's final RayJob deployment states (ray-operator/apis/ray/v1/rayjob_types.go).
KUBERAY_JOB_ENDED = {"Complete", "Failed", "ValidationFailed"}
STOPPED_ON_PURPOSE = "peaknet-pipeline stop"
ON_PURPOSE = {STOPPED_ON_PURPOSE, DELETION_STOP}  # a deleted service's driver drained too
DRIVER_RUNS = {"Running", "Draining"}  # status.driver.state while the driver lives
ISO = "%Y-%m-%dT%H:%M:%SZ"


def attempt_of(rayjob: Mapping[str, Any] | None) -> int:
    """The attempt a RayJob runs (0: the first driver, or a RayJob without the annotation)."""
    annotations = ((rayjob or {}).get("metadata") or {}).get("annotations") or {}
    try:
        return max(0, int(annotations.get(ATTEMPT, 0)))
    except (TypeError, ValueError):
        return 0


def current_rayjob(rayjobs: Iterable[Mapping[str, Any]]) -> tuple[dict | None, list[str]]:
    """(the newest attempt's RayJob or None, names of the older ones, to be deleted)."""
    ordered = sorted(rayjobs, key=lambda j: (attempt_of(j), j["metadata"]["name"]))
    if not ordered:
        return None, []
    return dict(ordered[-1]), [j["metadata"]["name"] for j in ordered[:-1]]


@dataclass(frozen=True)
class DriverRestart:
    """What to do about a service's driver: `action` is "none" (running, or ended on
    purpose), "wait" (failed; the next attempt is due in `due_in_s`), "restart" (start attempt
    `attempt + 1` now) or "spent" (failed with no restart left: the service has failed).
    `reason` says why the driver ended."""

    action: str
    attempt: int
    budget: int
    due_in_s: float = 0.0
    reason: str = ""
    due_at: str = ""  # when the next attempt starts (UTC), for "wait" and "restart"


def _parse(when: str | None) -> datetime | None:
    try:
        return datetime.strptime(str(when), ISO).replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def failure_reason(rayjob: Mapping[str, Any] | None, driver: Mapping[str, Any]) -> str | None:
    """Why the service's driver ended, when it ended other than on purpose; None while it
    runs (KubeRay has not seen its job end) or when `peaknet-pipeline stop` ended it."""
    status = (rayjob or {}).get("status") or {}
    if status.get("jobDeploymentStatus") not in KUBERAY_JOB_ENDED:
        return None
    ended_by = str(driver.get("endedBy") or "")
    if driver.get("state") == "Succeeded" and ended_by in ON_PURPOSE:
        return None
    if ended_by and driver.get("state") in ("Succeeded", "Failed"):
        return f"the driver ended ({ended_by}, exit code {driver.get('exitCode')})"
    message = status.get("message") or status.get("reason") or "no message"
    return f"KubeRay: job {status.get('jobStatus') or '?'} ({message})"


def restart_decision(
    rayjob: Mapping[str, Any] | None,
    driver: Mapping[str, Any],
    policy: ServiceSpec,
    now: datetime,
) -> DriverRestart:
    """The decision for the service's current RayJob (module doc)."""
    attempt, budget = attempt_of(rayjob), policy.driver_restarts
    reason = failure_reason(rayjob, driver)
    if reason is None:
        return DriverRestart("none", attempt, budget)
    if attempt >= budget:
        return DriverRestart("spent", attempt, budget, reason=reason)
    ended = _parse(((rayjob or {}).get("status") or {}).get("endTime")) or now
    wait_s = policy.restart_backoff_seconds * 2**attempt
    due_in_s = max(0.0, wait_s - (now - ended).total_seconds())
    due_at = (ended + timedelta(seconds=wait_s)).strftime(ISO)
    action = "wait" if due_in_s > 0 else "restart"
    return DriverRestart(action, attempt, budget, due_in_s, reason, due_at)


def restart_message(decision: DriverRestart) -> str:
    """The Warning event's and the status' words for a restart or a spent budget."""
    if decision.action == "wait":
        return (
            f"{decision.reason}; driver attempt {decision.attempt + 1} starts at "
            f"{decision.due_at} ({decision.attempt}/{decision.budget} restarts used)"
        )
    if decision.action == "spent":
        return (
            f"{decision.reason}; no driver restart left ({decision.attempt}/{decision.budget} "
            "used): the service has failed and its compute is released"
        )
    return (
        f"{decision.reason}; starting driver attempt {decision.attempt + 1} on the same "
        f"RayCluster ({decision.attempt + 1}/{decision.budget} restarts), continuing the same "
        "service directory"
    )


def service_status(decision: DriverRestart, rayjob: Mapping[str, Any] | None) -> dict[str, Any]:
    """status.service: the driver's RayJob, restarts used of the budget, and what happens next."""
    state = {"none": "Running", "wait": "RestartPending", "restart": "Restarting"}
    ended = ((rayjob or {}).get("status") or {}).get("jobDeploymentStatus") in KUBERAY_JOB_ENDED
    return {
        "driverJob": ((rayjob or {}).get("metadata") or {}).get("name", ""),
        "driverRestarts": decision.attempt,
        "driverRestartBudget": decision.budget,
        "driver": "Stopped"
        if decision.action == "none" and ended
        else state.get(decision.action, "RestartsExhausted"),
        "lastFailure": decision.reason or None,
        "nextRestartAt": decision.due_at or None,
    }


def drain_wait(
    rayjob: Mapping[str, Any] | None,
    driver: Mapping[str, Any],
    deletion: str | None,
    grace_s: float,
    now: datetime,
) -> float | None:
    """Seconds the deletion of a service still waits for its driver to drain, or None to let
    the deletion go on: the driver has ended (status.driver), KubeRay saw its job end or it
    has no RayJob (nothing can drain), or `grace_s` (the pods' termination grace period) has
    passed since the deletion began (`deletion`: metadata.deletionTimestamp)."""
    if driver.get("state") not in DRIVER_RUNS or rayjob is None:
        return None
    if ((rayjob.get("status") or {}).get("jobDeploymentStatus")) in KUBERAY_JOB_ENDED:
        return None
    began = _parse(deletion) or now
    left = grace_s - (now - began).total_seconds()
    return left if left > 0 else None
