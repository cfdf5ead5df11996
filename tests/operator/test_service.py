"""A service resource (spec.pipeline.runtime.service): its cluster is kept while it runs, a
failed driver is restarted with back-off within a budget, and status shows its DAQ runs.
Pure: no API server, no Ray."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from peaknet_operator.decisions import status_events
from peaknet_operator.observed import Observed, compute_to_release, run_ended
from peaknet_operator.render import render_all
from peaknet_operator.render.configmap import effective_config
from peaknet_operator.render.raycluster import grace_period_s
from peaknet_operator.service import ATTEMPT, current_rayjob, drain_wait, restart_decision
from peaknet_operator.spec import PeakNetPipelineSpec, ServiceSpec
from peaknet_operator.status import fold
from peaknet_pipeline.kube import DELETION_STOP, daq_runs_status
from peaknet_pipeline.monitor.daqruns import DaqRun, DaqRunTracker, Seen

ENDED = "2026-01-01T00:00:00Z"
POLICY = ServiceSpec()  # 3 restarts, 10 s doubling


def at(seconds: float) -> datetime:
    return datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=seconds)


def rayjob(attempt: int = 0, deployment: str = "Failed", job: str = "FAILED") -> dict:
    name = "demo-driver" + (f"-{attempt}" if attempt else "")
    status = {"jobDeploymentStatus": deployment, "jobStatus": job, "endTime": ENDED}
    meta = {"name": name, "annotations": {ATTEMPT: str(attempt)}}
    return {"metadata": meta, "status": status}


KILLED = {"state": "Running"}  # a driver killed hard publishes nothing more
STOPPED = {"state": "Succeeded", "exitCode": 4, "endedBy": "peaknet-pipeline stop"}
SIGTERM = {"state": "Succeeded", "exitCode": 4, "endedBy": "SIGTERM"}


def test_a_failed_driver_is_restarted_after_a_back_off_doubling_from_10_s():
    first = restart_decision(rayjob(0), KILLED, POLICY, at(9))
    assert (first.action, first.attempt, first.due_at) == ("wait", 0, "2026-01-01T00:00:10Z")
    assert restart_decision(rayjob(0), KILLED, POLICY, at(10)).action == "restart"
    second = restart_decision(rayjob(1), KILLED, POLICY, at(19))
    assert (second.action, second.due_at) == ("wait", "2026-01-01T00:00:20Z")
    assert restart_decision(rayjob(2), KILLED, POLICY, at(40)).action == "restart"
    assert "KubeRay: job FAILED" in first.reason


def test_the_budget_is_spent_after_driver_restarts_and_stop_ends_the_service():
    spent = restart_decision(rayjob(3), KILLED, POLICY, at(999))
    assert (spent.action, spent.attempt, spent.budget) == ("spent", 3, 3)
    assert restart_decision(rayjob(0), KILLED, ServiceSpec(driverRestarts=0), at(99)).action == (
        "spent"
    )
    # `peaknet-pipeline stop` ends a service; SIGTERM (an evicted head pod) does not
    assert restart_decision(rayjob(0, "Failed"), STOPPED, POLICY, at(99)).action == "none"
    assert restart_decision(rayjob(0), SIGTERM, POLICY, at(99)).action == "restart"
    running = rayjob(0, "Running", "RUNNING")
    assert restart_decision(running, KILLED, POLICY, at(99)).action == "none"


def test_the_newest_attempt_is_the_driver_and_older_ones_go():
    current, stale = current_rayjob([rayjob(1), rayjob(0), rayjob(2)])
    assert current["metadata"]["name"] == "demo-driver-2"
    assert stale == ["demo-driver", "demo-driver-1"]
    assert current_rayjob([]) == (None, [])


def observed(job: dict, driver: dict, service: bool = True) -> Observed:
    obs = Observed(generation=1, now="2026-01-01T00:00:05Z", rayjob=job, driver=driver)
    obs.raycluster = {"metadata": {"name": "demo"}, "status": {"state": "ready"}}
    obs.desired = {"ingest": 1, "inference": 1, "writer": 1}
    if service:
        obs.restart = restart_decision(job, driver, POLICY, at(5))
    return obs


def test_a_service_keeps_its_cluster_while_a_restart_is_pending_a_finite_run_does_not():
    pending = observed(rayjob(0), {"state": "Failed", "exitCode": 1, "endedBy": "x"})
    assert pending.restart.action == "wait"
    assert not run_ended(pending) and not compute_to_release(pending)
    finite = observed(rayjob(0), {"state": "Failed", "exitCode": 1}, service=False)
    assert run_ended(finite) and compute_to_release(finite)
    # the restarted attempt runs while status.driver still holds the failed one's state
    restarted = observed(rayjob(1, "Running", "RUNNING"), {"state": "Failed", "exitCode": 1})
    assert not run_ended(restarted) and not compute_to_release(restarted)
    stopped = observed(rayjob(0, "Failed"), STOPPED)
    assert run_ended(stopped) and compute_to_release(stopped)
    spent = observed(rayjob(3), KILLED)
    assert run_ended(spent) and compute_to_release(spent)


def test_status_shows_restarts_and_a_spent_budget_is_a_warning():
    pending = fold(observed(rayjob(1), KILLED))
    assert pending["phase"] == "Degraded"
    assert pending["service"]["driverRestarts"] == 1
    assert pending["service"]["driver"] == "RestartPending"
    assert pending["service"]["nextRestartAt"] == "2026-01-01T00:00:20Z"
    spent_obs = observed(rayjob(3), KILLED)
    spent_obs.previous = pending
    spent = fold(spent_obs)
    assert spent["phase"] == "Failed"
    assert spent["service"]["driver"] == "RestartsExhausted"
    reasons = {(e.type, e.reason) for e in status_events(pending, spent)}
    assert ("Warning", "DriverRestartsExhausted") in reasons
    assert "service" not in fold(observed(rayjob(0), KILLED, service=False))


SERVICE_SPEC = {
    "pipeline": {"runtime": {"service": True, "drain_timeout_s": 60}},
    "cluster": {},
}


def test_a_service_renders_its_grace_period_attempt_and_one_service_directory():
    spec = PeakNetPipelineSpec.model_validate(SERVICE_SPEC)
    assert grace_period_s(spec) == 60 + 3 + 30  # drain + daq_run_close_s + margin
    assert grace_period_s(PeakNetPipelineSpec()) is None
    children = {c["kind"]: c for c in render_all("demo", "ns", spec, attempt=2)}
    job = children["RayJob"]
    assert job["metadata"]["name"] == "demo-driver-2"
    assert job["metadata"]["annotations"] == {ATTEMPT: "2"}
    pods = [children["RayCluster"]["spec"]["headGroupSpec"]["template"]["spec"]]
    pods += [g["template"]["spec"] for g in children["RayCluster"]["spec"]["workerGroupSpecs"]]
    assert {p["terminationGracePeriodSeconds"] for p in pods} == {93}
    assert effective_config(spec, "demo").writer.output_dir == "/data/runs/demo"
    assert effective_config(spec, "demo").runtime.run_id == "demo"  # stop reaches every attempt
    named = PeakNetPipelineSpec.model_validate(SERVICE_SPEC)
    named.pipeline.runtime.run_id = "beamtime"
    assert effective_config(named, "demo").runtime.run_id == "beamtime"


def test_the_driver_publishes_the_current_daq_run_the_last_ones_and_totals(tmp_path):
    tracker = DaqRunTracker(tmp_path, "svc", "peaknet", pages=False)
    tracker.index = {
        f"r{n:04d}": {"daq_run": f"r{n:04d}", "frames": 10, "hits": 2, "first_t": n}
        for n in range(1, 8)
    }
    tracker.runs["r0008"] = DaqRun("r0008", {"w0": Seen("open", 40, 10, 1_767_225_600.0)})
    status = daq_runs_status(tracker.status())
    assert status["current"] == {
        "name": "r0008",
        "frames": 40,
        "hits": 10,
        "hitRate": 0.25,
        "since": "2026-01-01T00:00:00Z",
    }
    assert [r["name"] for r in status["recent"]] == ["r0007", "r0006", "r0005", "r0004", "r0003"]
    assert status["totals"] == {"daqRuns": 8, "frames": 110, "hits": 24}
    tracker.runs.clear()
    assert daq_runs_status(tracker.status())["current"] is None


def test_a_deletion_waits_for_a_running_driver_within_the_grace_period():
    running = rayjob(0, "Running", "RUNNING")
    deleted = "2026-01-01T00:00:00Z"
    assert drain_wait(running, {"state": "Draining"}, deleted, 93, at(3)) == 90
    assert drain_wait(running, {"state": "Running"}, deleted, 93, at(93)) is None  # bounded
    assert drain_wait(running, {"state": "Succeeded"}, deleted, 93, at(3)) is None  # drained
    assert drain_wait(rayjob(0), KILLED, deleted, 93, at(3)) is None  # KubeRay: job ended
    assert drain_wait(None, KILLED, deleted, 93, at(3)) is None  # no driver to wait for
    # the driver's end on deletion is on purpose: never a failure to restart
    drained = {"state": "Succeeded", "exitCode": 4, "endedBy": DELETION_STOP}
    assert restart_decision(rayjob(0, "Complete"), drained, POLICY, at(99)).action == "none"
