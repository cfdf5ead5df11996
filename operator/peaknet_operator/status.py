"""Folding what is observed (spec problems, RayCluster, RayJob, pods, the driver's own report)
into the resource's status: phase, conditions, workers per role. Pure: the handlers read the
objects and write the result, and only when it differs from what is there.

Readiness per role counts the role's Ready pods: KubeRay's status has totals only
(`readyWorkerReplicas`), and its `state: ready` has been seen while workers were still Pending,
so the cluster counts as ready only when that total also reaches the desired count.

Phases: Failed when the spec is not accepted or the run ended badly; Succeeded when the run
ended with exit code 0, or 4 (stopped before the end of its stream by `peaknet-pipeline stop`,
runtime.max_run_time_s or SIGTERM, every accepted frame written: the message says it stopped
early); Running when the driver runs with every group ready and every desired
inference actor warm; Degraded when it runs short of that (a scale-up included, until the new
pods and actors are ready); Pending otherwise.

After the run ends the operator deletes the RayCluster (its pods go; the claim, the RayJob and
the resource stay): `ComputeReleased` says so. `Reconciled` carries the API's own message
when creating or patching a child failed (KubeRay not installed included), and
`DriverServiceAccount` whether the ServiceAccount the Ray head runs as exists. `livePage` is
the live page's in-cluster address while the driver serves it (render/livepage.py).

Scaling the inference group shows in the `Scaling` condition (up: waiting for pods or actors;
down: waiting for the driver to release pods, actors retiring, released pods being deleted)
and in `inferenceActors` (the driver's running/desired actors, and how many are retiring).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .observed import (
    EXIT_STOPPED,
    FINISHED_DRIVER,
    OPERATOR_KEYS,
    READY_NAMES,
    RUNNING_DRIVER,
    Observed,
    _finished,
    cluster_ready,
    ready_pods,
    run_ended,
)
from .render.livepage import page_address
from .service import restart_message, service_status
from .spec import ROLES


def _condition(obs: Observed, ctype: str, status: str, reason: str, message: str) -> dict:
    before = {c.get("type"): c for c in obs.previous.get("conditions", [])}.get(ctype, {})
    since = before.get("lastTransitionTime") if before.get("status") == status else None
    return {
        "type": ctype,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since or obs.now,
        "observedGeneration": obs.generation,
    }


def _role_conditions(obs: Observed, ready: dict[str, int], gate: bool) -> list[dict]:
    conditions = []
    inference = obs.driver.get("inference") or {}
    for role in ROLES:
        want, have = obs.desired.get(role, 0), ready[role]
        ok = gate and have >= want
        message = f"{have}/{want} workers ready"
        if role == "inference" and obs.driver.get("state") in RUNNING_DRIVER:
            warm, wanted = inference.get("running", 0), inference.get("desired", 0)
            message += f"; {warm}/{wanted} actors warm"
            if inference.get("retiring"):
                message += f", {inference['retiring']} retiring"
            ok = ok and warm >= wanted
        reason = "Ready" if ok else ("ClusterNotReady" if not gate else "WorkersNotReady")
        conditions.append(_condition(obs, READY_NAMES[role], str(ok), reason, message))
    return conditions


def _frames_condition(obs: Observed) -> dict:
    d = obs.driver
    if d.get("state") not in FINISHED_DRIVER or d.get("framesLost") is None:
        return _condition(obs, "FramesAccounted", "Unknown", "RunNotFinished", "")
    counts = (
        f"ingested {d.get('framesIngested', 0)}, inferred {d.get('framesInferred', 0)}, "
        f"written {d.get('framesWritten', 0)}, rejected {d.get('framesRejected', 0)}"
    )
    if d["framesLost"]:
        message = f"{d['framesLost']} frames lost: {counts}"
        return _condition(obs, "FramesAccounted", "False", "FramesLost", message)
    return _condition(obs, "FramesAccounted", "True", "AllAccounted", counts)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _scaling_down(obs: Observed) -> str | None:
    """What a scale-down in progress waits for, or None."""
    seen, scale = obs.scale_seen, obs.scale
    retiring = (obs.driver.get("inference") or {}).get("retiring", 0)
    want = obs.desired.get("inference", 0)
    parts = []
    if scale is not None and scale.awaiting_release and seen is not None:
        parts.append(
            f"inference {seen.current} -> {want} pods: waiting for the driver to release "
            f"{_plural(scale.awaiting_release, 'pod')}"
        )
    if retiring:
        parts.append(f"{_plural(retiring, 'actor')} retiring")
    deleting = sorted(set(seen.deleting) & seen.pods) if seen is not None else []
    if deleting:
        noun = "pod" if len(deleting) == 1 else "pods"
        parts.append(f"deleting released {noun} {', '.join(deleting)}")
    return "; ".join(parts) or None


def _scaling_condition(obs: Observed, ready: dict[str, int]) -> dict:
    down = _scaling_down(obs)
    if down:
        return _condition(obs, "Scaling", "True", "ScalingDown", down)
    want = obs.desired.get("inference", 0)
    inference = obs.driver.get("inference") or {}
    warm, wanted = inference.get("running", 0), inference.get("desired", 0)
    if obs.driver.get("state") not in RUNNING_DRIVER:
        return _condition(obs, "Scaling", "False", "NotRunning", "the pipeline is not running")
    if ready["inference"] < want or warm < wanted:
        message = f"{ready['inference']}/{want} inference pods ready, {warm}/{wanted} actors warm"
        return _condition(obs, "Scaling", "True", "ScalingUp", message)
    message = f"inference at {_plural(want, 'pod')}, {_plural(warm, 'actor')}"
    return _condition(obs, "Scaling", "False", "Stable", message)


def _released_condition(obs: Observed) -> dict:
    if not run_ended(obs):
        message = "the RayCluster runs until the run ends"
        return _condition(obs, "ComputeReleased", "False", "RunNotFinished", message)
    if obs.raycluster is not None:
        message = f"the run ended; deleting the RayCluster {obs.raycluster_name}"
        return _condition(obs, "ComputeReleased", "False", "Releasing", message)
    message = (
        f"the run ended: the RayCluster {obs.raycluster_name} and its pods were deleted; the "
        f"output claim {obs.claim}, the RayJob, this resource and its status stay (to run "
        "again, re-create the resource)"
    )
    return _condition(obs, "ComputeReleased", "True", "RunFinished", message)


def _account_message(obs: Observed) -> str:
    return (
        f"ServiceAccount {obs.service_account} does not exist in namespace {obs.namespace}: the "
        "Ray head runs as it, so KubeRay cannot create the head pod. Add the namespace to the "
        f"operator chart's value driver.namespaces (helm upgrade ... --set "
        f"'driver.namespaces={{...,{obs.namespace}}}'), or set spec.cluster.driverServiceAccount "
        "to a ServiceAccount that exists there"
    )


def _account_condition(obs: Observed) -> dict:
    if obs.account_found is None:
        return _condition(obs, "DriverServiceAccount", "Unknown", "NotChecked", "")
    if obs.account_found:
        message = f"ServiceAccount {obs.service_account} exists"
        return _condition(obs, "DriverServiceAccount", "True", "Found", message)
    return _condition(
        obs, "DriverServiceAccount", "False", "ServiceAccountMissing", _account_message(obs)
    )


def _reconciled_condition(obs: Observed) -> dict:
    out = obs.outcome
    if out is None:
        return _condition(obs, "Reconciled", "Unknown", "NotYetApplied", "")
    return _condition(obs, "Reconciled", str(out.ok), out.reason, out.message)


def actors_column(driver: Mapping[str, Any]) -> str:
    """The driver's inference actors for `kubectl get`: running/desired, and retiring."""
    inference = driver.get("inference")
    if not inference:
        return ""
    text = f"{inference.get('running', 0)}/{inference.get('desired', 0)}"
    retiring = inference.get("retiring", 0)
    return f"{text} ({retiring} retiring)" if retiring else text


def unschedulable(pods: list[Mapping[str, Any]]) -> list[str]:
    """One "pod <name> cannot be scheduled: <why>" per live pod the kube-scheduler could not
    place, in the scheduler's own words: its PodScheduled condition, status False, reason
    Unschedulable, whose message is the FitError ("0/1 nodes are available: 1 Insufficient
    cpu. ..."; kubernetes pkg/scheduler/schedule_one.go: handleSchedulingFailure)."""
    found = []
    for pod in pods:
        meta = pod.get("metadata", {})
        if meta.get("deletionTimestamp"):
            continue
        for c in pod.get("status", {}).get("conditions", []):
            if c.get("type") == "PodScheduled" and c.get("status") == "False":
                if c.get("reason") == "Unschedulable":
                    found.append(f"pod {meta.get('name')} cannot be scheduled: {c.get('message')}")
    return found


def _restarts_condition(obs: Observed) -> dict:
    """A service's driver restarts: False (a Warning event) once the budget is spent."""
    decision = obs.restart
    if decision.action == "spent":
        message = restart_message(decision)
        return _condition(obs, "DriverRestarts", "False", "DriverRestartsExhausted", message)
    used = f"{decision.attempt}/{decision.budget} driver restarts used"
    if decision.action in ("wait", "restart"):
        return _condition(
            obs, "DriverRestarts", "True", "RestartPending", restart_message(decision)
        )
    return _condition(obs, "DriverRestarts", "True", "WithinBudget", used)


def _service(obs: Observed) -> dict[str, Any]:
    folded = service_status(obs.restart, obs.rayjob)
    if folded["lastFailure"] is None:  # the failure a running attempt was restarted for
        folded["lastFailure"] = (obs.previous.get("service") or {}).get("lastFailure")
    return folded


def _phase(obs: Observed, all_ready: bool) -> tuple[str, str]:
    if obs.restart is not None and obs.restart.action in ("wait", "restart"):
        return "Degraded", f"the service's driver failed: {restart_message(obs.restart)}"
    ended, ok = _finished(obs)
    if ended:
        error = obs.driver.get("lastError") or (obs.rayjob or {}).get("status", {}).get("message")
        released = "; compute released" if obs.raycluster is None else ""
        if ok and obs.driver.get("exitCode") == EXIT_STOPPED:
            # the driver's lastError is `ended by <what stopped it>` unless an actor failed
            how = f"{error}, " if str(error).startswith("ended by ") else ""
            return "Succeeded", (
                f"the run was stopped before the end of its stream ({how}exit code "
                f"{EXIT_STOPPED}); every frame it accepted was written{released}"
            )
        if ok:
            return "Succeeded", f"the run finished; every frame is accounted for{released}"
        code = obs.driver.get("exitCode")
        return "Failed", f"the run failed (exit code {code}): {error}{released}"
    failed = obs.outcome is not None and not obs.outcome.ok
    if failed and obs.rayjob is None:
        return ("Failed" if obs.outcome.permanent else "Pending"), obs.outcome.message
    if obs.account_found is False and obs.driver.get("state") not in RUNNING_DRIVER:
        return "Pending", _account_message(obs)
    if obs.raycluster is None or obs.rayjob is None:
        return "Pending", "creating the RayCluster and the driver"
    stuck = unschedulable(obs.pods)
    more = f" (and {_plural(len(stuck) - 1, 'more pod')})" if len(stuck) > 1 else ""
    if obs.driver.get("state") in RUNNING_DRIVER:
        if all_ready:
            return "Running", "every stage ready"
        short = "running short of workers or inference actors"
        return "Degraded", stuck[0] + more if stuck else short
    if stuck:  # a worker, or the driver's submitter pod
        return "Pending", stuck[0] + more
    if all_ready:
        return "Pending", "workers ready; waiting for the driver"
    return "Pending", "waiting for worker pods"


def _live_page(obs: Observed) -> str | None:
    """The live page's in-cluster address while the driver serves it (it says so in
    status.driver.livePage) on a RayCluster that still exists; None otherwise (a merge patch
    then removes it)."""
    if obs.raycluster is None or obs.driver.get("state") not in RUNNING_DRIVER:
        return None
    return page_address(obs.live_page_host, obs.driver.get("livePage"))


def fold(obs: Observed) -> dict[str, Any]:
    """The operator's part of status (everything but `driver`)."""
    if obs.problems:
        message = "; ".join(obs.problems)
        return {
            "phase": "Failed",
            "message": f"spec not applied: {obs.problems[0]}",
            "observedGeneration": obs.generation,
            "conditions": [
                _condition(obs, "SpecAccepted", "False", obs.problem_reason, message),
            ],
        }
    ready = ready_pods(obs.pods)
    gate = cluster_ready(obs.raycluster, sum(obs.desired.values()))
    role_conditions = _role_conditions(obs, ready, gate)
    all_ready = all(c["status"] == "True" for c in role_conditions)
    phase, message = _phase(obs, all_ready)
    progressing = phase in ("Pending", "Running", "Degraded")
    conditions = [
        _condition(obs, "SpecAccepted", "True", "Accepted", "every child rendered and sized"),
        *role_conditions,
        _condition(
            obs,
            "Progressing",
            str(progressing),
            "Unschedulable" if unschedulable(obs.pods) and progressing else phase,
            message,
        ),
        _scaling_condition(obs, ready),
        _frames_condition(obs),
        _released_condition(obs),
        _reconciled_condition(obs),
        _account_condition(obs),
    ]
    restart = obs.restart_reason
    conditions.append(
        _condition(
            obs,
            "RestartRequired",
            str(bool(restart)),
            "SpecChanged" if restart else "UpToDate",
            restart or "running pods and driver have the current spec",
        )
    )
    if obs.restart is not None:
        conditions.append(_restarts_condition(obs))
    rc_status = (obs.raycluster or {}).get("status", {})
    job_status = (obs.rayjob or {}).get("status", {})
    extra = {"service": _service(obs)} if obs.restart is not None else {}
    return {
        "livePage": _live_page(obs),
        **extra,
        "phase": phase,
        "message": message,
        "observedGeneration": obs.generation,
        "conditions": conditions,
        "workers": {r: {"desired": obs.desired.get(r, 0), "ready": ready[r]} for r in ROLES},
        "inferenceReady": f"{ready['inference']}/{obs.desired.get('inference', 0)}",
        "inferenceActors": actors_column(obs.driver),
        "rayCluster": {
            "name": (obs.raycluster or {}).get("metadata", {}).get("name", ""),
            "state": rc_status.get("state", ""),
            "readyWorkerReplicas": rc_status.get("readyWorkerReplicas", 0),
            "desiredWorkerReplicas": rc_status.get("desiredWorkerReplicas", 0),
        },
        "job": {
            "name": (obs.rayjob or {}).get("metadata", {}).get("name", ""),
            "jobStatus": job_status.get("jobStatus", ""),
            "jobDeploymentStatus": job_status.get("jobDeploymentStatus", ""),
            "message": job_status.get("message", ""),
        },
    }


def status_patch(current: Mapping[str, Any], folded: Mapping[str, Any]) -> dict | None:
    """The merge patch turning `current` into `folded` for the operator's keys, or None when
    nothing changed (then nothing is written). `driver` is the driver's and never touched."""
    patch = {k: folded.get(k) for k in OPERATOR_KEYS if current.get(k) != folded.get(k)}
    return patch or None
