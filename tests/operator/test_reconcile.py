"""The real operator (kopf and our handlers) against the API emulator over HTTP.

KubeRay, pods and the driver are played by the test: it writes their status as they would.
"""

from __future__ import annotations

import copy

from conftest import example, wait_for
from peaknet_operator.render import names, render_all
from peaknet_operator.spec import PeakNetPipelineSpec

CHILD_KINDS = {
    ("v1", "PersistentVolumeClaim"),
    ("v1", "ConfigMap"),
    ("policy/v1", "PodDisruptionBudget"),
    ("ray.io/v1", "RayCluster"),
    ("ray.io/v1", "RayJob"),
}


def expected_children(namespace: str) -> list[dict]:
    spec = PeakNetPipelineSpec.model_validate(example()["spec"])
    return render_all("demo", namespace, spec)


def child_writes(emulator, namespace: str) -> list[tuple[str, str]]:
    """(method, path) of every write to the namespace's objects other than the resource."""
    return [
        (str(r.method.value).upper(), r.url.path)
        for r in emulator.requests
        if r.resource is not None
        and r.resource.plural not in ("peaknetpipelines", "events")
        and r.namespace == namespace
        and str(r.method.value).upper() in ("POST", "PATCH", "DELETE")
    ]


def phase(kubectl, name: str = "demo") -> str | None:
    return (kubectl.get(name).get("status") or {}).get("phase")


def conditions(kubectl, name: str = "demo") -> dict[str, dict]:
    return {c["type"]: c for c in kubectl.get(name).get("status", {}).get("conditions", [])}


def test_apply_creates_and_adopts_every_child(operator, kubectl, namespace):
    operator()
    parent = kubectl.apply(example())
    wait_for(lambda: kubectl.child("ray.io/v1", "RayJob", "demo-driver"), "the RayJob")
    uid = kubectl.get("demo")["metadata"]["uid"]
    assert uid == parent["metadata"]["uid"]
    for manifest in expected_children(namespace):
        meta = manifest["metadata"]
        child = kubectl.child(manifest["apiVersion"], manifest["kind"], meta["name"])
        assert child is not None, meta["name"]
        (ref,) = child["metadata"]["ownerReferences"]
        assert ref == {
            "apiVersion": "peaknet.slac.stanford.edu/v1alpha1",
            "kind": "PeakNetPipeline",
            "name": "demo",
            "uid": uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    kinds = {(m["apiVersion"], m["kind"]) for m in expected_children(namespace)}
    assert kinds == CHILD_KINDS  # random source: no ingest Service
    wait_for(lambda: phase(kubectl) == "Pending", "phase Pending")
    accepted = conditions(kubectl)["SpecAccepted"]
    assert accepted["status"] == "True" and accepted["observedGeneration"] == 1
    assert kubectl.get("demo")["status"]["inferenceReady"] == "0/1"


def test_same_spec_changes_nothing_and_a_replica_edit_patches_that_group(
    operator, kubectl, namespace, emulator
):
    operator()
    manifest = example()
    manifest["spec"]["cluster"]["inference"]["maxReplicas"] = 2  # sized for 2 from the start
    kubectl.apply(manifest)
    wait_for(lambda: kubectl.child("ray.io/v1", "RayJob", "demo-driver"), "the RayJob")
    before = kubectl.child("ray.io/v1", "RayCluster", "demo")
    writes = len(child_writes(emulator, namespace))

    kubectl.patch("demo", {"spec": manifest["spec"]})  # kubectl apply of the same file
    edited = copy.deepcopy(manifest["spec"])
    edited["cluster"]["inference"]["replicas"] = 2
    kubectl.patch("demo", {"spec": edited})

    def inference_replicas() -> int:
        rc = kubectl.child("ray.io/v1", "RayCluster", "demo")
        return next(g for g in rc["spec"]["workerGroupSpecs"] if g["groupName"] == "inference")[
            "replicas"
        ]

    wait_for(lambda: inference_replicas() == 2, "the inference group scaled")
    after = kubectl.child("ray.io/v1", "RayCluster", "demo")
    new_writes = child_writes(emulator, namespace)[writes:]
    assert sorted(new_writes) == sorted(
        [
            ("PATCH", f"/api/v1/namespaces/{namespace}/configmaps/demo-config"),
            ("PATCH", f"/apis/ray.io/v1/namespaces/{namespace}/rayclusters/demo"),
        ]
    ), new_writes
    groups_before = {g["groupName"]: g for g in before["spec"]["workerGroupSpecs"]}
    for group in after["spec"]["workerGroupSpecs"]:
        old = groups_before[group["groupName"]]
        if group["groupName"] != "inference":
            assert group == old
            continue
        changed = {k for k in group if group[k] != old[k]}
        assert changed == {"replicas", "minReplicas", "maxReplicas"}
        assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 2
    assert after["spec"]["headGroupSpec"] == before["spec"]["headGroupSpec"]
    config = kubectl.child("v1", "ConfigMap", "demo-config")["data"]["pipeline.yaml"]
    assert "num_actors: 2" in config
    # The same spec again did not change the generation; the edit did.
    wait_for(lambda: conditions(kubectl)["SpecAccepted"]["observedGeneration"] == 2, "gen 2")
    assert kubectl.get("demo")["metadata"]["generation"] == 2
    assert conditions(kubectl)["RestartRequired"]["status"] == "False"


def test_unfittable_spec_fails_with_the_reason_and_creates_nothing(
    operator, kubectl, namespace, emulator
):
    operator()
    manifest = example()
    manifest["spec"]["cluster"]["ingest"]["memory"] = "256Mi"
    kubectl.apply(manifest)
    wait_for(lambda: phase(kubectl) == "Failed", "phase Failed")
    accepted = conditions(kubectl)["SpecAccepted"]
    assert accepted["status"] == "False"
    assert accepted["reason"] == "ObjectStoreDoesNotFit"
    assert "spec.cluster.ingest.memory=256Mi" in accepted["message"]
    assert "set spec.cluster.ingest.memory to at least" in accepted["message"]
    assert child_writes(emulator, namespace) == []
    assert kubectl.child("ray.io/v1", "RayCluster", "demo") is None
    events = [
        r.data
        for r in emulator.requests
        if r.resource is not None and r.resource.plural == "events" and r.data
    ]
    assert any(e.get("reason") == "Failed" and e.get("type") == "Warning" for e in events)


def test_invalid_spec_is_reported_not_retried(operator, kubectl, namespace, emulator):
    operator()
    manifest = example()
    manifest["spec"]["pipeline"]["inference"]["num_actors"] = 3  # disagrees with 1 x 1
    kubectl.apply(manifest)
    wait_for(lambda: phase(kubectl) == "Failed", "phase Failed")
    accepted = conditions(kubectl)["SpecAccepted"]
    assert accepted["reason"] == "SpecInvalid"
    assert "spec.pipeline.inference.num_actors=3" in accepted["message"]
    assert child_writes(emulator, namespace) == []


def ready_pod(namespace: str, role: str, i: int, ready: bool = True) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"demo-{role}-worker-{i}",
            "namespace": namespace,
            "labels": names.pod_labels("demo", role) | {"ray.io/cluster": "demo"},
        },
        "status": {"conditions": [{"type": "Ready", "status": str(ready)}]},
    }


def test_raycluster_and_job_status_reach_the_parent(operator, kubectl, namespace):
    operator()
    kubectl.apply(example())
    wait_for(lambda: kubectl.child("ray.io/v1", "RayJob", "demo-driver"), "the RayJob")
    client = kubectl.client
    for role in ("ingest", "inference", "writer"):
        client.request(
            "POST",
            f"/api/v1/namespaces/{namespace}/pods",
            ready_pod(namespace, role, 0),
            "application/json",
        )
    rc_status = f"/apis/ray.io/v1/namespaces/{namespace}/rayclusters/demo/status"
    # KubeRay has been seen saying "ready" with workers still pending: not ready yet.
    client.merge_patch(
        rc_status,
        {"status": {"state": "ready", "readyWorkerReplicas": 2, "desiredWorkerReplicas": 3}},
    )
    wait_for(lambda: kubectl.get("demo")["status"]["rayCluster"]["state"] == "ready", "state")
    assert conditions(kubectl)["IngestReady"]["status"] == "False"
    client.merge_patch(rc_status, {"status": {"readyWorkerReplicas": 3}})
    wait_for(lambda: conditions(kubectl)["WritersReady"]["status"] == "True", "writers ready")
    assert phase(kubectl) == "Pending"  # no driver yet
    job_status = f"/apis/ray.io/v1/namespaces/{namespace}/rayjobs/demo-driver/status"
    client.merge_patch(
        job_status, {"status": {"jobStatus": "RUNNING", "jobDeploymentStatus": "Running"}}
    )
    kubectl.patch(
        "demo",
        {
            "status": {
                "driver": {
                    "state": "Running",
                    "inference": {"desired": 1, "running": 1, "retiring": 0},
                }
            }
        },
        sub="status",
    )
    wait_for(lambda: phase(kubectl) == "Running", "phase Running")
    status = kubectl.get("demo")["status"]
    assert status["workers"]["inference"] == {"desired": 1, "ready": 1}
    assert status["inferenceReady"] == "1/1"
    assert status["job"]["jobStatus"] == "RUNNING"
    # An inference pod goes unready while the driver runs: Degraded.
    client.merge_patch(
        f"/api/v1/namespaces/{namespace}/pods/demo-inference-worker-0",
        {"status": {"conditions": [{"type": "Ready", "status": "False"}]}},
    )
    wait_for(lambda: phase(kubectl) == "Degraded", "phase Degraded")
    assert conditions(kubectl)["InferenceReady"]["status"] == "False"


def test_operator_restart_resumes_without_duplicate_children(
    operator, kubectl, namespace, emulator
):
    first = operator()
    kubectl.apply(example())
    wait_for(lambda: kubectl.child("ray.io/v1", "RayJob", "demo-driver"), "the RayJob")
    # Stop once the status timer runs (a KubeRay state only the timer folds in): kopf does not
    # stop a timer spawned after it began exiting, and would wait 5 s for it.
    kubectl.client.merge_patch(
        f"/apis/ray.io/v1/namespaces/{namespace}/rayclusters/demo/status",
        {"status": {"state": "suspended"}},
    )
    wait_for(lambda: kubectl.get("demo")["status"]["rayCluster"]["state"] == "suspended", "timer")
    first.stop()
    kubectl.client.request("DELETE", f"/apis/ray.io/v1/namespaces/{namespace}/rayjobs/demo-driver")
    writes = len(child_writes(emulator, namespace))
    operator()
    wait_for(lambda: kubectl.child("ray.io/v1", "RayJob", "demo-driver"), "the RayJob again")
    assert child_writes(emulator, namespace)[writes:] == [
        ("POST", f"/apis/ray.io/v1/namespaces/{namespace}/rayjobs")
    ]
    posts = [w for w in child_writes(emulator, namespace) if w[0] == "POST"]
    assert len(posts) == len(expected_children(namespace)) + 1  # only the deleted one again


def test_deleting_the_resource_leaves_no_children(operator, kubectl, namespace, emulator):
    operator()
    kubectl.apply(example())
    wait_for(lambda: kubectl.child("ray.io/v1", "RayJob", "demo-driver"), "the RayJob")
    kubectl.delete("demo")

    def gone() -> bool:
        return all(
            kubectl.child(m["apiVersion"], m["kind"], m["metadata"]["name"]) is None
            for m in expected_children(namespace)
        )

    wait_for(gone, "every child collected")
    live = [key for key, obj in emulator.emulator.objects.items() if not obj.deleted]
    assert not [key for key in live if key[1] == namespace and key[0].plural != "events"]


def inference_group(kubectl) -> dict:
    rc = kubectl.child("ray.io/v1", "RayCluster", "demo")
    return next(g for g in rc["spec"]["workerGroupSpecs"] if g["groupName"] == "inference")


def test_scale_down_waits_for_the_driver_and_deletes_exactly_the_released_pod(
    operator, kubectl, namespace, emulator
):
    operator()
    manifest = example()
    manifest["spec"]["cluster"]["inference"].update(replicas=2, maxReplicas=2)
    kubectl.apply(manifest)
    wait_for(lambda: kubectl.child("ray.io/v1", "RayJob", "demo-driver"), "the RayJob")
    pods = [ready_pod(namespace, "inference", i) for i in (0, 1)]
    for pod in pods:
        kubectl.client.request(
            "POST", f"/api/v1/namespaces/{namespace}/pods", pod, "application/json"
        )
    running = {"state": "Running", "inference": {"desired": 2, "running": 2, "retiring": 0}}
    kubectl.patch("demo", {"status": {"driver": running}}, sub="status")

    edited = copy.deepcopy(manifest["spec"])
    edited["cluster"]["inference"]["replicas"] = 1
    kubectl.patch("demo", {"spec": edited})
    wait_for(
        lambda: conditions(kubectl)["Scaling"]["message"].endswith("release 1 pod"),
        "the scale-down waiting for the driver",
    )
    config = kubectl.child("v1", "ConfigMap", "demo-config")["data"]["pipeline.yaml"]
    assert "num_actors: 1" in config  # the reconcile ran; replicas were not lowered
    group = inference_group(kubectl)
    assert group["replicas"] == 2 and "scaleStrategy" not in group

    released = pods[1]["metadata"]["name"]
    driver = {"inference": {"desired": 1, "running": 1, "retiring": 0}, "releasedPods": [released]}
    kubectl.patch("demo", {"status": {"driver": driver}}, sub="status")
    wait_for(lambda: inference_group(kubectl)["replicas"] == 1, "replicas lowered by the timer")
    group = inference_group(kubectl)
    assert group["minReplicas"] == group["maxReplicas"] == 1
    assert group["scaleStrategy"] == {"workersToDelete": [released]}
    wait_for(lambda: "deleting released pod" in conditions(kubectl)["Scaling"]["message"], "shown")
    assert conditions(kubectl)["RestartRequired"]["status"] == "False"
    events = [r.data for r in emulator.requests if r.resource and r.resource.plural == "events"]
    assert any(
        e and e.get("reason") == "ScaledInference" and released in e["message"] for e in events
    )

    # KubeRay deletes the pod and leaves the stored list as it is (it clears only its own
    # copy); the driver forgets the pod. The operator empties the list: the stale name must
    # not delete a later pod of that name.
    kubectl.client.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{released}")
    kubectl.patch("demo", {"status": {"driver": {"releasedPods": []}}}, sub="status")
    wait_for(lambda: conditions(kubectl)["Scaling"]["reason"] == "Stable", "stable at 1 pod")
    wait_for(
        lambda: inference_group(kubectl)["scaleStrategy"] == {"workersToDelete": []},
        "the stale list emptied by the operator",
    )
    assert inference_group(kubectl)["replicas"] == 1
