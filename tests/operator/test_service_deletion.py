"""A service on the API emulator with the real operator (kopf): deleting it waits for its
driver to drain, a failed driver is started again after its back-off within its budget; the
emulator's deletion rules; the driver stopping on its resource's deletion; examples/service.yaml.

KubeRay and the driver are played by the test: it writes the RayJob's status as KubeRay does
(jobDeploymentStatus, endTime) and status.driver as the driver does."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import EXAMPLE_SERVICE, example, wait_for
from peaknet_operator.decisions import accept
from peaknet_operator.render import render_all
from peaknet_operator.render.raycluster import grace_period_s
from peaknet_operator.service import ATTEMPT
from peaknet_pipeline import kube
from peaknet_pipeline.kube import KubeError
from peaknet_pipeline.pool_plan import PoolState

REPO = Path(__file__).resolve().parents[2]
NAME = "beamline"  # examples/service.yaml
RAYJOBS = "/apis/ray.io/v1/namespaces/{ns}/rayjobs"


def utc(seconds_ago: float = 0.0) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - seconds_ago))


def service(restart_backoff_s: float = 10.0, restarts: int = 3) -> dict:
    manifest = example(EXAMPLE_SERVICE)
    manifest["spec"]["service"] = {
        "driverRestarts": restarts,
        "restartBackoffSeconds": restart_backoff_s,
    }
    return manifest


def kuberay_job_status(kubectl, job: str, deployment: str, status: str, ended: bool) -> None:
    """What KubeRay writes on the RayJob (rayjob_controller.go: jobDeploymentStatus, endTime)."""
    body = {"jobDeploymentStatus": deployment, "jobStatus": status}
    if ended:
        body.update(endTime=utc(), message="the driver's pod was evicted")
    kubectl.client.merge_patch(f"{RAYJOBS.format(ns=kubectl.ns)}/{job}/status", {"status": body})


def events(emulator, reason: str) -> list[dict]:
    return [
        r.data
        for r in emulator.requests
        if r.resource is not None
        and r.resource.plural == "events"
        and isinstance(r.data, dict)
        and r.data.get("reason") == reason
    ]


def gone(kubectl, name: str) -> bool:
    try:
        kubectl.get(name)
    except KubeError as exc:
        return "HTTP 404" in str(exc)
    return False


def drain_retries(kubectl, name: str) -> int:
    """How often kopf has run the deletion handler (its progress annotation)."""
    annotations = kubectl.get(name)["metadata"].get("annotations") or {}
    progress = annotations.get("peaknet.slac.stanford.edu/drain")
    return int(json.loads(progress).get("retries") or 0) if progress else 0


def running_driver(kubectl, name: str, job: str) -> None:
    wait_for(lambda: kubectl.child("ray.io/v1", "RayJob", job), "the driver's RayJob")
    kuberay_job_status(kubectl, job, "Running", "RUNNING", ended=False)
    kubectl.patch(name, {"status": {"driver": {"state": "Running"}}}, sub="status")


def test_deleting_a_service_waits_until_its_driver_has_drained(operator, kubectl, emulator):
    operator()
    kubectl.apply(service())
    running_driver(kubectl, NAME, f"{NAME}-driver")
    kubectl.delete(NAME)
    # Held: kopf ran the deletion handler twice and the resource and its cluster are still here.
    wait_for(lambda: drain_retries(kubectl, NAME) >= 2, "the deletion waiting for the driver")
    held = kubectl.get(NAME)
    assert held["metadata"]["deletionTimestamp"]
    assert kubectl.child("ray.io/v1", "RayCluster", NAME) is not None
    (draining,) = wait_for(lambda: events(emulator, "Draining"), "a Draining event")
    assert "before the pods go" in draining["message"]
    # The driver drains and says so (peaknet_pipeline.kube: DELETION_STOP): everything goes.
    ended = {"state": "Succeeded", "exitCode": 4, "endedBy": kube.DELETION_STOP}
    kubectl.patch(NAME, {"status": {"driver": ended}}, sub="status")
    wait_for(lambda: gone(kubectl, NAME), "the resource deleted")
    wait_for(lambda: kubectl.child("ray.io/v1", "RayCluster", NAME) is None, "children collected")
    assert kubectl.child("ray.io/v1", "RayJob", f"{NAME}-driver") is None


def test_deleting_a_finite_run_is_not_held(operator, kubectl, emulator):
    operator()
    kubectl.apply(example())
    running_driver(kubectl, "demo", "demo-driver")
    kubectl.delete("demo")
    wait_for(lambda: gone(kubectl, "demo"), "the resource deleted")
    wait_for(lambda: kubectl.child("ray.io/v1", "RayCluster", "demo") is None, "children")
    assert events(emulator, "Draining") == []


def test_a_failed_driver_is_restarted_after_its_back_off_until_the_budget_is_spent(
    operator, kubectl, emulator
):
    operator()
    kubectl.apply(service(restart_backoff_s=0.5, restarts=1))
    first = f"{NAME}-driver"
    running_driver(kubectl, NAME, first)
    kuberay_job_status(kubectl, first, "Failed", "FAILED", ended=True)  # the head pod evicted
    second = wait_for(
        lambda: kubectl.child("ray.io/v1", "RayJob", f"{NAME}-driver-1"), "attempt 1's RayJob"
    )
    assert second["metadata"]["annotations"][ATTEMPT] == "1"
    assert second["spec"]["clusterSelector"] == {"ray.io/cluster": NAME}  # the same cluster
    (restarted,) = wait_for(lambda: events(emulator, "DriverRestarted"), "a DriverRestarted event")
    assert restarted["type"] == "Warning" and "attempt 1" in restarted["message"]
    wait_for(lambda: kubectl.child("ray.io/v1", "RayJob", first) is None, "attempt 0 deleted")
    assert kubectl.child("ray.io/v1", "RayCluster", NAME) is not None  # kept meanwhile

    kuberay_job_status(kubectl, f"{NAME}-driver-1", "Failed", "FAILED", ended=True)
    wait_for(lambda: kubectl.get(NAME)["status"].get("phase") == "Failed", "phase Failed")
    assert kubectl.get(NAME)["status"]["service"]["driver"] == "RestartsExhausted"
    (spent,) = wait_for(lambda: events(emulator, "DriverRestartsExhausted"), "its event")
    assert spent["type"] == "Warning" and "no driver restart left" in spent["message"]
    wait_for(lambda: kubectl.child("ray.io/v1", "RayCluster", NAME) is None, "compute released")
    assert kubectl.child("ray.io/v1", "RayJob", f"{NAME}-driver-2") is None


# -- the emulator: deletion as the API server's store does it (admission/deletion.py) ----------
def finalized(kubectl) -> dict:
    manifest = example()
    manifest["metadata"]["finalizers"] = ["example.org/cleanup"]
    return kubectl.apply(manifest)


def test_a_delete_marks_an_object_with_finalizers_and_emptying_them_deletes_it(kubectl):
    created = finalized(kubectl)
    kubectl.delete("demo")
    marked = kubectl.get("demo")
    meta, before = marked["metadata"], created["metadata"]
    assert meta["deletionTimestamp"].endswith("Z") and len(meta["deletionTimestamp"]) == 20
    assert meta["deletionGracePeriodSeconds"] == 0
    assert meta["generation"] == before["generation"] + 1
    assert int(meta["resourceVersion"]) > int(before["resourceVersion"])
    kubectl.delete("demo")  # a second DELETE changes nothing
    assert kubectl.get("demo") == marked
    kubectl.patch("demo", {"status": {"driver": {"state": "Running"}}}, sub="status")
    kubectl.patch("demo", {"metadata": {"finalizers": []}})
    assert gone(kubectl, "demo")


def test_an_object_being_deleted_takes_no_new_finalizer_and_keeps_its_mark(kubectl):
    finalized(kubectl)
    kubectl.delete("demo")
    with pytest.raises(KubeError, match="HTTP 422.*no new finalizers can be added"):
        kubectl.patch("demo", {"metadata": {"finalizers": ["example.org/cleanup", "x.io/y"]}})
    with pytest.raises(KubeError, match="HTTP 422.*deletionGracePeriodSeconds"):
        kubectl.patch("demo", {"metadata": {"deletionGracePeriodSeconds": 30}})
    kubectl.patch("demo", {"metadata": {"deletionTimestamp": None, "labels": {"a": "b"}}})
    assert kubectl.get("demo")["metadata"]["deletionTimestamp"]  # BeforeUpdate keeps it


def test_a_write_cannot_mark_an_object_and_a_create_is_never_marked(kubectl):
    manifest = example()
    manifest["metadata"].update(deletionTimestamp=utc(), deletionGracePeriodSeconds=0)
    created = kubectl.apply(manifest)
    assert "deletionTimestamp" not in created["metadata"]
    assert "deletionGracePeriodSeconds" not in created["metadata"]
    with pytest.raises(KubeError, match="HTTP 422.*deletionTimestamp.*field is immutable"):
        kubectl.patch("demo", {"metadata": {"deletionTimestamp": utc()}})


def test_the_garbage_collector_marks_a_dependent_with_finalizers(kubectl):
    owner = kubectl.apply(example())
    ref = {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": "demo"}
    ref["uid"] = owner["metadata"]["uid"]
    for name, finalizers in (("kept", ["example.org/cleanup"]), ("plain", [])):
        meta = {"name": name, "ownerReferences": [ref], "finalizers": finalizers}
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta}
        kubectl.client.request(
            "POST", f"/api/v1/namespaces/{kubectl.ns}/configmaps", body, "application/json"
        )
    kubectl.delete("demo")
    assert kubectl.child("v1", "ConfigMap", "plain") is None
    assert kubectl.child("v1", "ConfigMap", "kept")["metadata"]["deletionTimestamp"]


# -- the driver: its resource's deletion stops it as `peaknet-pipeline stop` would --------------
def test_the_driver_drains_when_its_resource_is_being_deleted(emulator, kubectl, monkeypatch):
    finalized(kubectl)
    monkeypatch.setenv(kube.ENV_NAME, "demo")
    monkeypatch.setenv(kube.ENV_NAMESPACE, kubectl.ns)
    monkeypatch.setenv(kube.ENV_API_URL, emulator.url)
    stops: list[str] = []
    pool = SimpleNamespace(state=lambda: PoolState(1, 1, 0, 0, [], {}))
    pipeline = SimpleNamespace(pool=pool, stop_ingest=lambda reason, note="": stops.append(reason))
    publisher = kube.status_publisher()
    publisher.started(pipeline)
    assert publisher.desired_inference() == 1 and stops == []
    kubectl.delete("demo")
    assert publisher.desired_inference() == 1  # the same read
    assert stops == [kube.DELETION_STOP]


def test_the_service_example_is_a_service_with_a_grace_period_for_its_drain():
    manifest = example(EXAMPLE_SERVICE)
    acceptance = accept(manifest["spec"])
    assert acceptance.problems == [] and acceptance.spec.is_service
    assert acceptance.spec.service.driver_restarts == 3
    pipeline = manifest["spec"]["pipeline"]
    assert grace_period_s(acceptance.spec) == pipeline["runtime"]["drain_timeout_s"] + 3 + 30
    kinds = {c["kind"] for c in render_all(NAME, "ns", acceptance.spec, acceptance.sizes)}
    assert {"Service", "RayCluster", "RayJob"} <= kinds  # the ingest Service for the DAQ
    weights = Path(pipeline["model"]["weights_path"])  # what the image carries, as run.yaml
    assert (REPO / "examples" / "weights" / weights.name).is_file()
