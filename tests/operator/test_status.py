"""Folding children and the driver into status: pure, no API server."""

from __future__ import annotations

from peaknet_operator.observed import Observed
from peaknet_operator.render import names
from peaknet_operator.scaling import ScaleObservation, decide
from peaknet_operator.status import fold, status_patch

NOW, LATER = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"
DESIRED = {"ingest": 1, "inference": 2, "writer": 1}


def pod(role: str, ready: bool = True, terminating: bool = False) -> dict:
    meta = {"labels": names.pod_labels("demo", role)}
    if terminating:
        meta["deletionTimestamp"] = NOW
    return {"metadata": meta, "status": {"conditions": [{"type": "Ready", "status": str(ready)}]}}


def cluster(state: str = "ready", ready: int = 4) -> dict:
    return {
        "metadata": {"name": "demo"},
        "status": {"state": state, "readyWorkerReplicas": ready, "desiredWorkerReplicas": 4},
    }


def job(status: str = "RUNNING") -> dict:
    return {"metadata": {"name": "demo-driver"}, "status": {"jobStatus": status}}


ALL_PODS = [pod("ingest"), pod("inference"), pod("inference"), pod("writer")]
RUNNING = {"state": "Running", "inference": {"desired": 2, "running": 2, "retiring": 0}}


def observed(**kwargs) -> Observed:
    base = dict(
        generation=3,
        now=NOW,
        desired=DESIRED,
        raycluster=cluster(),
        rayjob=job(),
        pods=ALL_PODS,
        driver=RUNNING,
    )
    return Observed(**{**base, **kwargs})


def conditions(status: dict) -> dict[str, dict]:
    return {c["type"]: c for c in status["conditions"]}


def test_running_when_every_group_is_ready_and_every_actor_warm():
    status = fold(observed())
    assert status["phase"] == "Running"
    assert status["inferenceReady"] == "2/2"
    assert status["workers"]["inference"] == {"desired": 2, "ready": 2}
    for ctype in ("IngestReady", "InferenceReady", "WritersReady", "Progressing"):
        assert conditions(status)[ctype]["status"] == "True", ctype
    assert conditions(status)["InferenceReady"]["message"] == "2/2 workers ready; 2/2 actors warm"
    assert all(c["observedGeneration"] == 3 for c in status["conditions"])


def test_kuberay_ready_is_not_enough_while_workers_are_pending():
    status = fold(observed(raycluster=cluster(ready=3), driver={}, rayjob=job("PENDING")))
    assert status["phase"] == "Pending"
    assert conditions(status)["IngestReady"]["reason"] == "ClusterNotReady"


def test_degraded_when_running_short_of_workers_or_warm_actors():
    short = [pod("ingest"), pod("inference"), pod("inference", terminating=True), pod("writer")]
    assert fold(observed(pods=short, raycluster=cluster(ready=3)))["phase"] == "Degraded"
    cold = {"state": "Running", "inference": {"desired": 2, "running": 1, "retiring": 0}}
    status = fold(observed(driver=cold))
    assert status["phase"] == "Degraded"
    assert conditions(status)["InferenceReady"]["message"].endswith("1/2 actors warm")


def test_finished_runs_and_frame_accounting():
    done = {
        "state": "Succeeded",
        "exitCode": 0,
        "framesLost": 0,
        "framesIngested": 64,
        "framesInferred": 64,
        "framesWritten": 64,
        "framesRejected": 0,
    }
    status = fold(observed(driver=done, rayjob=job("SUCCEEDED")))
    assert status["phase"] == "Succeeded"
    assert conditions(status)["FramesAccounted"]["status"] == "True"
    assert conditions(status)["Progressing"]["status"] == "False"
    lost = {**done, "state": "Failed", "exitCode": 1, "framesLost": 8, "framesWritten": 56}
    status = fold(observed(driver=lost, rayjob=job("FAILED")))
    assert status["phase"] == "Failed"
    frames = conditions(status)["FramesAccounted"]
    assert frames["status"] == "False" and frames["reason"] == "FramesLost"
    assert frames["message"].startswith("8 frames lost: ingested 64")
    # KubeRay says the job failed before the driver could report: still Failed.
    assert fold(observed(driver=RUNNING, rayjob=job("FAILED")))["phase"] == "Failed"


def test_a_run_stopped_early_succeeds_though_kuberay_marks_its_job_failed():
    # `peaknet-pipeline stop`, runtime.max_run_time_s or SIGTERM: the driver exits 4 and
    # publishes Succeeded; Ray's job supervisor calls any non-zero exit FAILED, and KubeRay
    # copies that (ray-operator/controllers/ray/rayjob_controller.go: Reconcile sets
    # JobDeploymentStatusFailed when jobInfo.JobStatus is FAILED).
    stopped = {
        "state": "Succeeded",
        "exitCode": 4,
        "framesLost": 0,
        "framesIngested": 40,
        "framesInferred": 40,
        "framesWritten": 40,
        "framesRejected": 0,
        "lastError": "ended by peaknet-pipeline stop",
    }
    failed_job = job("FAILED")
    failed_job["status"]["jobDeploymentStatus"] = "Failed"
    status = fold(observed(driver=stopped, rayjob=failed_job, raycluster=None))
    assert status["phase"] == "Succeeded", status["message"]
    assert status["message"] == (
        "the run was stopped before the end of its stream (ended by peaknet-pipeline stop, "
        "exit code 4); every frame it accepted was written; compute released"
    )
    assert conditions(status)["FramesAccounted"]["status"] == "True"
    assert conditions(status)["Progressing"]["reason"] == "Succeeded"
    # Exit 3 (rejected frames) and 1 stay Failed; a job that failed before the driver
    # published anything is Failed whatever its exit code would have been.
    for code in (3, 1):
        failed = {**stopped, "state": "Failed", "exitCode": code}
        assert fold(observed(driver=failed, rayjob=failed_job))["phase"] == "Failed"
    assert fold(observed(driver=RUNNING, rayjob=failed_job))["phase"] == "Failed"


def test_spec_problems_fail_without_children():
    status = fold(
        observed(
            problems=["spec.cluster.ingest.memory=1Gi ..."], problem_reason="ObjectStoreDoesNotFit"
        )
    )
    assert status["phase"] == "Failed"
    (condition,) = status["conditions"]
    assert condition["type"] == "SpecAccepted" and condition["reason"] == "ObjectStoreDoesNotFit"
    assert "workers" not in status


def test_restart_required_is_a_condition():
    status = fold(observed(restart_reason="the spec changed ..."))
    restart = conditions(status)["RestartRequired"]
    assert restart["status"] == "True" and restart["reason"] == "SpecChanged"


def test_transition_times_kept_while_status_holds_and_no_patch_when_nothing_changed():
    first = fold(observed())
    again = fold(observed(now=LATER, previous={**first, "driver": RUNNING}))
    assert again == first  # same times: nothing changed
    assert status_patch({**first, "driver": RUNNING}, again) is None
    changed = fold(
        observed(
            now=LATER,
            previous=first,
            driver={**RUNNING, "inference": {"desired": 2, "running": 1, "retiring": 0}},
        )
    )
    patch = status_patch(first, changed)
    assert patch is not None and "driver" not in patch
    ready = conditions(changed)["InferenceReady"]
    assert ready["status"] == "False" and ready["lastTransitionTime"] == LATER
    assert conditions(changed)["WritersReady"]["lastTransitionTime"] == NOW


# -- scaling -----------------------------------------------------------------------------------
A, B = "demo-inference-worker-aaaaa", "demo-inference-worker-bbbbb"


def scaling(obs: Observed) -> dict:
    return conditions(fold(obs))["Scaling"]


def scale_down(released=(), deleting=(), retiring=0, desired_pods=1) -> Observed:
    """The spec asks for `desired_pods` inference pods; the RayCluster still has 2 (A, B)."""
    seen = ScaleObservation(2, frozenset({A, B}), tuple(released), tuple(deleting))
    driver = {"state": "Running", "inference": {"desired": 1, "running": 1, "retiring": retiring}}
    return observed(
        desired={**DESIRED, "inference": desired_pods},
        driver=driver,
        scale_seen=seen,
        scale=decide(desired_pods, seen),
    )


def test_stable_pool_and_the_actors_column():
    status = fold(
        observed(scale_seen=ScaleObservation(2, frozenset({A, B})), scale=decide(2, None))
    )
    assert status["inferenceActors"] == "2/2"
    condition = conditions(status)["Scaling"]
    assert (condition["status"], condition["reason"]) == ("False", "Stable")
    assert condition["message"] == "inference at 2 pods, 2 actors"
    assert fold(observed(driver={}))["inferenceActors"] == ""  # the driver has not reported


def test_scale_down_waiting_for_the_driver_then_retiring_then_deleting():
    waiting = scaling(scale_down())
    assert (waiting["status"], waiting["reason"]) == ("True", "ScalingDown")
    assert waiting["message"] == ("inference 2 -> 1 pods: waiting for the driver to release 1 pod")
    retiring = scale_down(retiring=1)
    assert scaling(retiring)["message"].endswith("; 1 actor retiring")
    status = fold(retiring)
    assert status["inferenceActors"] == "1/1 (1 retiring)"
    assert conditions(status)["InferenceReady"]["message"].endswith("1/1 actors warm, 1 retiring")
    # Released and named in workersToDelete, KubeRay has not deleted it yet.
    seen = ScaleObservation(1, frozenset({A, B}), (B,), (B,))
    deleting = observed(
        desired={**DESIRED, "inference": 1},
        driver={"state": "Running", "inference": {"desired": 1, "running": 1, "retiring": 0}},
        scale_seen=seen,
        scale=decide(1, seen),
    )
    assert scaling(deleting)["message"] == f"deleting released pod {B}"


def test_scale_up_waits_for_pods_and_warm_actors():
    short = {"state": "Running", "inference": {"desired": 3, "running": 2, "retiring": 0}}
    obs = observed(
        desired={**DESIRED, "inference": 3},
        driver=short,
        scale_seen=ScaleObservation(3, frozenset({A, B})),
        scale=decide(3, ScaleObservation(3, frozenset({A, B}))),
    )
    condition = scaling(obs)
    assert (condition["status"], condition["reason"]) == ("True", "ScalingUp")
    assert condition["message"] == "2/3 inference pods ready, 2/3 actors warm"
    done = {"state": "Succeeded", "exitCode": 0, "framesLost": 0}
    assert scaling(observed(driver=done))["reason"] == "NotRunning"


def test_a_rayjob_kuberay_refuses_fails_the_run_with_kuberays_message():
    message = "The RayJob spec is invalid default/demo-driver: backoffLimit must be >= 0"
    refused = {
        "metadata": {"name": "demo-driver"},
        "status": {"jobDeploymentStatus": "ValidationFailed", "message": message},
    }
    status = fold(observed(rayjob=refused, driver={}))
    assert status["phase"] == "Failed"
    assert message in status["message"]


def test_the_compute_is_released_only_once_kuberay_has_seen_the_job_end():
    from peaknet_operator.observed import compute_to_release

    finished = {"state": "Succeeded", "exitCode": 0}
    assert not compute_to_release(observed(driver=finished))  # the driver's word alone
    for deployment in ("Complete", "Failed", "ValidationFailed"):
        ended = {"metadata": {"name": "demo-driver"}, "status": {"jobDeploymentStatus": deployment}}
        assert compute_to_release(observed(driver=finished, rayjob=ended)), deployment
        assert not compute_to_release(observed(driver=finished, rayjob=ended, raycluster=None))
