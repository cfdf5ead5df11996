"""The rendered RayCluster and RayJob as KubeRay v1.7.0 turns them into pods (kuberay_rules.py):
KubeRay reads every start parameter without an error, GPUs reach `ray start`, its validation
accepts both objects, and the pods can write to a fresh volume that only one node may mount."""

from __future__ import annotations

import pytest
from kuberay_rules import build_pod, submitter_pod, validate_raycluster, validate_rayjob

from conftest import EXAMPLE_GPU, example
from peaknet_operator.checks import parse_spec
from peaknet_operator.render import render_all
from peaknet_operator.render.rayjob import SUBMITTER_REQUESTS
from peaknet_operator.spec import PeakNetPipelineSpec

GPU_SPEC = {"cluster": {"inference": {"gpusPerWorker": 2, "cpu": "2", "memory": "4Gi"}}}
SPECS = {
    "example": example()["spec"],
    "example-gpu": example(EXAMPLE_GPU)["spec"],
    "gpu": GPU_SPEC,
    "defaults": {},
}


def spec_of(raw: dict) -> PeakNetPipelineSpec:
    spec, problems = parse_spec(raw)
    assert problems == [], problems
    return spec


def rendered(raw: dict) -> tuple[dict, dict]:
    children = render_all("demo", "beamtime", spec_of(raw))
    (rc,) = [c for c in children if c["kind"] == "RayCluster"]
    (job,) = [c for c in children if c["kind"] == "RayJob"]
    return rc, job


def pods(rc: dict) -> dict[str, dict]:
    """Every pod KubeRay would build: the head and one per worker group."""
    built = {"head": build_pod(rc, None, "demo-raycluster-head-abcde")}
    for group in rc["spec"]["workerGroupSpecs"]:
        name = group["groupName"]
        built[name] = build_pod(rc, name, f"demo-raycluster-{name}-worker-abcde")
    return built


@pytest.mark.parametrize("which", sorted(SPECS))
def test_kuberay_reads_every_start_parameter_without_an_error(which):
    rc, _ = rendered(SPECS[which])
    for role, pod in pods(rc).items():
        assert pod.start.log == [], (role, rc["spec"]["workerGroupSpecs"])


@pytest.mark.parametrize("which", ["example-gpu", "gpu"])
def test_gpu_pods_start_ray_with_their_gpus(which):
    rc, _ = rendered(SPECS[which])
    group = next(g for g in rc["spec"]["workerGroupSpecs"] if g["groupName"] == "inference")
    gpus = group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    assert group["rayStartParams"].get("num-gpus") == str(gpus)  # rendered, not left to KubeRay
    assert pods(rc)["inference"].start.params["num-gpus"] == str(gpus)
    assert f"--num-gpus={gpus}" in pods(rc)["inference"].command


@pytest.mark.parametrize("which", sorted(SPECS))
def test_kuberay_validation_accepts_the_rendered_cluster_and_job(which):
    rc, job = rendered(SPECS[which])
    assert validate_raycluster(rc) == []
    assert validate_rayjob(job) == []


def test_the_submitter_pod_kuberay_adds_requests_what_the_operator_counts():
    """KubeRay uses a submitterPodTemplate as given, else its default (500m CPU, 200Mi)."""
    rc, job = rendered({})
    pod = submitter_pod(job, rc, "demo-driver-abcde")
    template = job["spec"].get("submitterPodTemplate")
    requests = pod["spec"]["containers"][0]["resources"]["requests"]
    if template is None:
        assert requests == SUBMITTER_REQUESTS
    else:
        assert requests == template["spec"]["containers"][0]["resources"]["requests"]
        assert pod["spec"]["restartPolicy"] == "Never"  # a Job's pods may not restart Always
    del job["spec"]["submitterPodTemplate"]
    default = submitter_pod(job, rc, "demo-driver-abcde")["spec"]["containers"][0]
    assert default["resources"]["requests"] == SUBMITTER_REQUESTS


@pytest.mark.parametrize("which", sorted(SPECS))
def test_every_pod_writes_to_a_fresh_volume_as_rays_group(which):
    """Ray's image runs as uid 1000, gid 100; a fresh block volume's root is root:root 0755."""
    rc, _ = rendered(SPECS[which])
    for role, pod in pods(rc).items():
        context = pod.manifest["spec"].get("securityContext") or {}
        assert context.get("fsGroup") == 100, role
        assert context.get("fsGroupChangePolicy") == "OnRootMismatch", role


def head_affinity_terms(rc: dict, role: str) -> list[dict]:
    affinity = pods(rc)[role].manifest["spec"].get("affinity") or {}
    required = (affinity.get("podAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    )
    return required or []


def selects(selector: dict, labels: dict) -> bool:
    """A label selector (matchLabels, matchExpressions with In) against a pod's labels."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        assert expr["operator"] == "In", expr
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def test_a_readwriteonce_claim_puts_the_writers_on_the_head_node():
    rc, _ = rendered({})  # the default output claim: ReadWriteOnce
    built = pods(rc)
    (term,) = head_affinity_terms(rc, "writer")
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert selects(term["labelSelector"], built["head"].manifest["metadata"]["labels"])
    for role in ("ingest", "inference", "writer"):  # no worker pod is taken for the head
        assert not selects(term["labelSelector"], built[role].manifest["metadata"]["labels"])
    for role in ("head", "ingest", "inference"):  # only the writers mount it besides the head
        assert head_affinity_terms(rc, role) == [], role


def test_a_readwritemany_claim_leaves_the_writers_free():
    rc, _ = rendered({"cluster": {"output": {"accessModes": ["ReadWriteMany"]}}})
    assert head_affinity_terms(rc, "writer") == []
