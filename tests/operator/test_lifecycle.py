"""The operator against the API emulator where a real cluster differs from the happy path: a
finished run (its compute released), API errors (reported before anything else), KubeRay not
installed (retried, said so), and a namespace without the driver's ServiceAccount.

KubeRay, pods and the driver are played by the test, as in test_reconcile.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import kmock
import pytest
from test_reconcile import child_writes, conditions, phase

from conftest import Kubectl, example, point_kubeconfig_at, wait_for

SA = "peaknet-driver"


def events(emulator, namespace: str) -> list[dict[str, Any]]:
    return [
        r.data
        for r in emulator.requests
        if r.resource is not None
        and r.resource.plural == "events"
        and r.namespace == namespace
        and isinstance(r.data, dict)
    ]


def add_driver_account(kubectl: Kubectl) -> None:
    """What the chart creates in each namespace of driver.namespaces."""
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": SA}}
    path = f"/api/v1/namespaces/{kubectl.ns}/serviceaccounts"
    kubectl.client.request("POST", path, account, "application/json")


def finish_run(kubectl: Kubectl, state: str = "Succeeded") -> None:
    """The driver reports the end of the run, as StatusPublisher does (before its process
    exits, so before KubeRay has seen the job end)."""
    driver = {"state": state, "exitCode": 0 if state == "Succeeded" else 1, "framesLost": 0}
    kubectl.patch("demo", {"status": {"driver": driver}}, sub="status")


def kuberay_sees_the_end(kubectl: Kubectl, deployment: str = "Complete") -> None:
    """KubeRay polls the finished job and sets its final deployment status."""
    path = f"/apis/ray.io/v1/namespaces/{kubectl.ns}/rayjobs/demo-driver/status"
    status = {"jobDeploymentStatus": deployment, "jobStatus": "SUCCEEDED"}
    kubectl.client.merge_patch(path, {"status": status})


def test_a_finished_run_releases_its_cluster_and_a_resume_does_not_recreate_it(
    operator, kubectl, namespace, emulator
):
    first = operator()
    add_driver_account(kubectl)
    kubectl.apply(example())
    wait_for(lambda: kubectl.child("ray.io/v1", "RayJob", "demo-driver"), "the RayJob")
    released = conditions(kubectl).get("ComputeReleased", {})
    assert released.get("status") != "True", "released before the run ended"
    finish_run(kubectl)
    # The phase follows the driver at once, but the cluster stays until KubeRay has seen the
    # job end: deleted earlier, the RayJob would stay Running for good (RayClusterNotFound).
    wait_for(lambda: phase(kubectl) == "Succeeded", "the phase from the driver's report")
    assert kubectl.child("ray.io/v1", "RayCluster", "demo") is not None
    assert conditions(kubectl)["ComputeReleased"]["status"] == "False"
    kuberay_sees_the_end(kubectl)

    wait_for(
        lambda: kubectl.child("ray.io/v1", "RayCluster", "demo") is None,
        "the RayCluster deleted after the run",
    )
    wait_for(lambda: conditions(kubectl).get("ComputeReleased", {}).get("status") == "True", "cond")
    released = conditions(kubectl)["ComputeReleased"]
    assert released["reason"] == "RunFinished"
    assert "RayCluster demo" in released["message"] and "demo-output" in released["message"]
    assert phase(kubectl) == "Succeeded"
    assert "compute released" in kubectl.get("demo")["status"]["message"]
    # The output claim, the RayJob (its record of the run) and the resource stay.
    assert kubectl.child("v1", "PersistentVolumeClaim", "demo-output") is not None
    assert kubectl.child("ray.io/v1", "RayJob", "demo-driver") is not None
    assert any(e.get("reason") == "ComputeReleased" for e in events(emulator, namespace))

    # The operator restarts (resume) and a spec edit arrives: nothing is re-created.
    first.stop()
    writes = len(child_writes(emulator, namespace))
    operator()
    spec = example()["spec"]
    spec["cluster"]["inference"]["maxReplicas"] = 2
    kubectl.patch("demo", {"spec": spec})
    wait_for(lambda: conditions(kubectl)["SpecAccepted"]["observedGeneration"] == 2, "gen 2")
    assert kubectl.child("ray.io/v1", "RayCluster", "demo") is None
    assert [w for w in child_writes(emulator, namespace)[writes:] if w[0] == "POST"] == []


@pytest.fixture
def bare_emulator() -> Iterator[Any]:
    """A cluster where KubeRay is not installed: no ray.io kinds are served."""
    from kube_emulator import RunningEmulator

    running = RunningEmulator(kuberay=False)
    yield running
    running.stop()


@pytest.fixture
def bare_kubeconfig(bare_emulator, tmp_path, monkeypatch):
    return point_kubeconfig_at(bare_emulator.url, tmp_path, monkeypatch)


def reconcile_progress(kubectl: Kubectl) -> dict[str, Any]:
    """kopf's progress record of the reconcile handler (annotation progress storage)."""
    annotations = kubectl.get("demo")["metadata"].get("annotations", {})
    for key, value in annotations.items():
        if key.startswith("peaknet.slac.stanford.edu/reconcile"):
            return json.loads(value)
    return {}


def test_kuberay_not_installed_is_said_and_retried(bare_kubeconfig, bare_emulator, namespace):
    from conftest import Operator

    op = Operator()
    try:
        kubectl = Kubectl(bare_emulator.url, namespace)
        kubectl.apply(example())

        def applied() -> dict:
            return conditions(kubectl).get("Reconciled", {})

        wait_for(lambda: applied().get("reason") == "KubeRayNotInstalled", "the condition")
        assert applied()["status"] == "False"
        assert "KubeRay's CRDs are not installed" in applied()["message"]
        assert phase(kubectl) == "Pending"
        assert "KubeRay's CRDs are not installed" in kubectl.get("demo")["status"]["message"]
        assert any(
            "KubeRay's CRDs are not installed" in e.get("message", "")
            and e.get("type") == "Warning"
            for e in events(bare_emulator, namespace)
        )
        # Retried with back-off (kopf's TemporaryError), not given up.
        wait_for(lambda: reconcile_progress(kubectl).get("delayed"), "a retry scheduled")
        assert reconcile_progress(kubectl).get("failure") is not True
    finally:
        op.stop(timeout_s=1.0)


INVALID = (
    'RayCluster.ray.io "demo" is invalid: spec.workerGroupSpecs[0].template.spec.containers'
    "[0].resources.limits: Invalid value: a refused value"
)


def test_an_api_refusal_reaches_a_condition_and_an_event(operator, kubectl, namespace, emulator):
    path = f"/apis/ray.io/v1/namespaces/{namespace}/rayclusters"
    refusal = {"kind": "Status", "status": "Failure", "code": 422, "reason": "Invalid"}
    emulator.emulator[kmock.method.POST, kmock.path(path)] << kmock.Response(
        status=422, payload={**refusal, "message": INVALID}
    )
    operator()
    add_driver_account(kubectl)
    kubectl.apply(example())

    failed = wait_for(
        lambda: conditions(kubectl).get("Reconciled", {}).get("status") == "False", "the condition"
    )
    assert failed
    applied = conditions(kubectl)["Reconciled"]
    assert applied["status"] == "False" and applied["reason"] == "Invalid"
    assert "a refused value" in applied["message"] and "RayCluster" in applied["message"]
    assert phase(kubectl) == "Failed"
    assert any(
        e.get("type") == "Warning" and "a refused value" in e.get("message", "")
        for e in events(emulator, namespace)
    )
    # Retried with back-off (RBAC, a quota or the cluster may be fixed meanwhile), not given up.
    wait_for(lambda: reconcile_progress(kubectl).get("delayed"), "a retry scheduled")
    assert reconcile_progress(kubectl).get("failure") is not True


def test_a_namespace_without_the_driver_account_says_which_chart_value_adds_it(
    operator, kubectl, namespace, emulator
):
    operator()
    kubectl.apply(example())
    wait_for(
        lambda: conditions(kubectl).get("DriverServiceAccount", {}).get("status") == "False",
        "the condition",
    )
    account = conditions(kubectl)["DriverServiceAccount"]
    assert account["status"] == "False" and account["reason"] == "ServiceAccountMissing"
    assert SA in account["message"] and namespace in account["message"]
    assert "driver.namespaces" in account["message"]
    assert "driver.namespaces" in kubectl.get("demo")["status"]["message"]
    assert any(
        e.get("type") == "Warning" and "driver.namespaces" in e.get("message", "")
        for e in events(emulator, namespace)
    )
    add_driver_account(kubectl)
    wait_for(lambda: conditions(kubectl)["DriverServiceAccount"]["status"] == "True", "found later")
