"""The chart's RBAC is exactly what the code calls: the real operator, started with the args
the chart's Deployment passes, runs against the API emulator through every API path it has
(create, patch of each patchable child, the status timer, deletion); the (group, resource,
verb) of each request it made must equal the chart's rules, cluster-wide and namespaced. The
driver's Role is checked the same way against the calls of peaknet_pipeline.kube. The
emulator does not enforce RBAC: what a real API server would refuse is for the kind suite."""

from __future__ import annotations

import copy
import socket
import threading
import urllib.request
from typing import Any

import pytest

from chart_render import RELEASE, of_kind, render
from conftest import example, wait_for
from peaknet_operator import main as operator_main
from peaknet_operator.kubeapi import CREATE_ONLY, PLURALS
from peaknet_operator.render import render_all
from peaknet_operator.spec import PeakNetPipelineSpec

TOKEN = "test-token"  # the kubeconfig fixture's; the test's own client sends none
# Permissions no request shows: with the OwnerReferencesPermissionEnforcement admission plugin
# (OpenShift, hardened clusters), setting blockOwnerDeletion on a child's owner reference (as
# kopf.adopt does) needs update on the owner's finalizers.
IMPLIED = {("peaknet.slac.stanford.edu", "peaknetpipelines/finalizers", "update")}
PNP_GROUP = "peaknet.slac.stanford.edu"


def socket_manifest() -> dict[str, Any]:
    """examples/run.yaml fed by a listening socket, so an ingest Service is rendered too."""
    manifest = example()
    pipeline = manifest["spec"]["pipeline"]
    pipeline["source"] = {"kind": "socket", "socket": {"addresses": ["tcp://0.0.0.0:12321"]}}
    manifest["spec"]["cluster"]["inference"]["maxReplicas"] = 2
    return manifest


NAMED_VERBS = {"GET": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
COLLECTION_VERBS = {"POST": "create", "DELETE": "deletecollection"}


def verb(method: str, named: bool, params: Any) -> str:
    """The RBAC verb of a request, as the API server's authorizer names it."""
    if method == "GET" and not named:
        return "watch" if params.get("watch") == "true" else "list"
    return NAMED_VERBS[method] if named else COLLECTION_VERBS[method]


def recorded(emulator, token: str = TOKEN) -> set[tuple[str, str, str]]:
    """(group, resource[/subresource], verb) of every resource request made with `token`;
    discovery (/api, /apis/...) is open to every authenticated user and left out."""
    seen = set()
    for r in emulator.requests:
        if token not in r.headers.get("Authorization", ""):
            continue
        if r.resource is None or not r.resource.plural:
            continue
        resource = r.resource.plural + (f"/{r.subresource}" if r.subresource else "")
        method = str(r.method.value).upper()
        seen.add((r.resource.group or "", resource, verb(method, bool(r.name), r.params)))
    return seen


def rules(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, v)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for v in rule["verbs"]
    }


def child_permissions() -> set[tuple[str, str, str]]:
    """From the code alone: every kind the renderer makes is read and created, and patched
    unless the API layer creates it only."""
    perms = set()
    for child in render_all(
        "demo", "ns", PeakNetPipelineSpec.model_validate(socket_manifest()["spec"])
    ):
        group = child["apiVersion"].rpartition("/")[0]
        plural = PLURALS[child["kind"]]
        verbs = {"get", "create"} | (set() if child["kind"] in CREATE_ONLY else {"patch"})
        perms |= {(group, plural, v) for v in verbs}
    return perms


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def probe(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status
    except OSError:
        return None


def chart_args(values: dict[str, Any] | None, port: int) -> list[str]:
    """The operator's args as the chart renders them; liveness on a free loopback port and a
    fast status timer for the test."""
    (deployment,) = of_kind(render(values), "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    out = []
    for arg in args:
        if arg.startswith("--liveness="):
            arg = f"--liveness=http://127.0.0.1:{port}/healthz"
        elif arg.startswith("--status-interval-s="):
            arg = "--status-interval-s=0.3"
        out.append(arg)
    return out


def run_operator(args: list[str]) -> tuple[threading.Event, threading.Thread]:
    parsed = operator_main.parse_args(args)
    stop, ready = threading.Event(), threading.Event()
    thread = threading.Thread(
        target=operator_main.run,
        args=(parsed,),
        kwargs={"stop_flag": stop, "ready_flag": ready},
        daemon=True,
    )
    thread.start()
    assert ready.wait(20), "the operator did not become ready"
    return stop, thread


def exercise(kubectl) -> None:
    """Every API path: create all children; a hand-edited PDB and a spec edit (inference
    replicas, Service type) so the next reconcile patches RayCluster, ConfigMap, Service and
    PDB; the status timer (the driver's ServiceAccount checked); the end of the run (the
    RayCluster deleted); deletion."""
    client, ns = kubectl.client, kubectl.ns
    manifest = socket_manifest()
    kubectl.apply(manifest)
    wait_for(lambda: kubectl.child("ray.io/v1", "RayJob", "demo-driver"), "the RayJob")
    pdb = f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/demo-writer"
    client.merge_patch(pdb, {"spec": {"maxUnavailable": 2}})
    spec = copy.deepcopy(manifest["spec"])
    spec["cluster"]["inference"]["replicas"] = 2
    spec["cluster"]["ingestService"] = {"type": "NodePort"}
    kubectl.patch("demo", {"spec": spec})

    def reconciled() -> bool:
        svc = kubectl.child("v1", "Service", "demo-ingest")
        return svc["spec"]["type"] == "NodePort" and client.get(pdb)["spec"]["maxUnavailable"] == 1

    wait_for(reconciled, "the Service and the PDB patched")
    wait_for(lambda: (kubectl.get("demo").get("status") or {}).get("workers"), "the status timer")
    # The run ends and KubeRay sees it: the operator deletes the RayCluster (releases the
    # compute).
    kubectl.patch("demo", {"status": {"driver": {"state": "Succeeded", "exitCode": 0}}}, "status")
    job = f"/apis/ray.io/v1/namespaces/{ns}/rayjobs/demo-driver/status"
    client.merge_patch(job, {"status": {"jobDeploymentStatus": "Complete"}})
    wait_for(lambda: kubectl.child("ray.io/v1", "RayCluster", "demo") is None, "compute released")
    kubectl.delete("demo")
    wait_for(lambda: kubectl.child("ray.io/v1", "RayCluster", "demo") is None, "children gone")


@pytest.mark.parametrize("namespaced", [False, True], ids=["cluster-wide", "watch-namespace"])
def test_chart_rbac_is_exactly_what_the_operator_calls(
    namespaced, kubeconfig, emulator, kubectl, namespace
):
    values = {"watchNamespace": namespace} if namespaced else None
    port = free_port()
    stop, thread = run_operator(chart_args(values, port))
    try:
        # The chart's liveness and readiness probes (kopf starts serving soon after ready).
        wait_for(lambda: probe(f"http://127.0.0.1:{port}/healthz") == 200, "/healthz answers")
        exercise(kubectl)
    finally:
        stop.set()
        thread.join(1.0)
    calls = recorded(emulator)
    assert child_permissions() <= calls, "the scenario missed a path of the code"
    docs = render(values)
    if namespaced:
        assert not of_kind(docs, "ClusterRole") and not of_kind(docs, "ClusterRoleBinding")
        (role,) = [r for r in of_kind(docs, "Role") if r["metadata"]["name"] == RELEASE]
        assert role["metadata"]["namespace"] == namespace
    else:
        (role,) = of_kind(docs, "ClusterRole")
        assert ("apiextensions.k8s.io", "customresourcedefinitions", "watch") in calls
    granted = rules(role)
    assert granted - calls == IMPLIED, "granted but never used"
    assert calls - granted == set(), "used but not granted"


def test_driver_role_is_exactly_what_the_driver_calls(emulator, kubectl):
    from peaknet_pipeline import kube

    kubectl.apply(example())
    client = kube.KubeClient(emulator.url, token="driver-token")
    ref = kube.ResourceRef("demo", kubectl.ns)
    assert kube.desired_inference_actors(client, ref) == 1
    publisher = kube.StatusPublisher(client, ref, min_interval_s=0.0)
    publisher.failed("a start-up failure")
    assert kubectl.get("demo")["status"]["driver"]["state"] == "Failed"
    calls = recorded(emulator, token="driver-token")
    for namespaced in (False, True):
        docs = render({"watchNamespace": "beamtime"} if namespaced else None)
        (role,) = [r for r in of_kind(docs, "Role") if r["metadata"]["name"] == "peaknet-driver"]
        assert (
            rules(role)
            == calls
            == {
                (PNP_GROUP, "peaknetpipelines", "get"),
                (PNP_GROUP, "peaknetpipelines/status", "patch"),
            }
        )
        (binding,) = [
            b for b in of_kind(docs, "RoleBinding") if b["metadata"]["name"] == "peaknet-driver"
        ]
        assert binding["roleRef"]["name"] == role["metadata"]["name"]
        (subject,) = binding["subjects"]
        sa = PeakNetPipelineSpec().cluster.driver_service_account
        assert subject["name"] == sa and subject["namespace"] == role["metadata"]["namespace"]
        assert any(
            s["metadata"]["name"] == sa and s["metadata"]["namespace"] == subject["namespace"]
            for s in of_kind(docs, "ServiceAccount")
        )
