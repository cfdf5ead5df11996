"""The scheduling check (peaknet_operator.scheduling): Kubernetes quantities, pod requests as
the scheduler adds them up, placement as the scheduler binds pods (creation order, least
allocated node) with its filters and its own messages, both examples on the node sizes they are written for; and the status of a
pipeline whose pods stay Pending, which carries the scheduler's message. Pure, no Ray."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest
import yaml

from peaknet_operator.checks import parse_spec
from peaknet_operator.observed import Observed
from peaknet_operator.quantity import cpu_cores, memory_bytes, parse_quantity, scheduler_units
from peaknet_operator.render import names
from peaknet_operator.scheduling import (
    PodRequest,
    fits,
    node,
    pipeline_pods,
    place,
    pod_request,
    pods_of,
    unschedulable_message,
)
from peaknet_operator.status import fold

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
GPU = "nvidia.com/gpu"


@pytest.mark.parametrize(
    "text, value",
    [
        ("500m", Fraction(1, 2)),
        ("1.5", Fraction(3, 2)),
        ("2", 2),
        (4, 4),
        (0.25, Fraction(1, 4)),
        ("16Gi", 16 << 30),
        ("1536Mi", 1536 << 20),
        ("64Ki", 64 << 10),
        ("2G", 2 * 10**9),
        ("3M", 3 * 10**6),
        ("1k", 1000),
        ("100n", Fraction(1, 10**7)),
        ("1e3", 1000),
        ("5E-1", Fraction(1, 2)),
        ("1E", 10**18),
        (".5Gi", 1 << 29),
    ],
)
def test_quantities_parse_as_apimachinery_parses_them(text, value):
    assert parse_quantity(text) == value


@pytest.mark.parametrize("bad", ["", "Gi", "1.5.1", "1 Gi", "1gi", "1Kb", "0x10", True])
def test_what_is_not_a_quantity_is_refused(bad):
    with pytest.raises(ValueError, match="not a quantity"):
        parse_quantity(bad)


def test_scheduler_units_round_up_like_milli_value_and_value():
    assert scheduler_units("cpu", "0.0001") == 1  # 0.1m rounds up to 1m
    assert scheduler_units("cpu", "1") == 1000
    assert scheduler_units("memory", "1.5Ki") == 1536
    assert scheduler_units("memory", "100m") == 1  # a tenth of a byte is a byte
    assert scheduler_units(GPU, 1) == 1


@pytest.mark.parametrize("cpu", ["500m", "1", "1.5", "2.125", "250m"])
@pytest.mark.parametrize("memory", ["1536Mi", "2Gi", "2G", "384Mi", "1000", "3k"])
def test_sizing_reads_a_quantity_as_the_scheduler_counts_it(cpu, memory):
    """Sizing (spec quantities) and the scheduling check read quantities with one parser."""
    assert cpu_cores(cpu) * 1000 == scheduler_units("cpu", cpu)
    assert memory_bytes(memory) == scheduler_units("memory", memory)


def test_pod_requests_sum_containers_take_the_largest_init_container_and_default_to_limits():
    spec = {
        "containers": [
            {"resources": {"requests": {"cpu": "250m", "memory": "1Gi"}}},
            {"resources": {"limits": {"cpu": "1", "memory": "512Mi", GPU: 1}}},
        ],
        "initContainers": [{"resources": {"requests": {"cpu": "2", "memory": "64Mi"}}}],
        "overhead": {"cpu": "10m"},
    }
    pod = pod_request("p", spec)
    assert pod.requests == {"cpu": 2010, "memory": (1 << 30) + (512 << 20), GPU: 1}
    assert pod_request("empty", {"containers": [{}]}).requests == {}


def cpu_pod(name: str, cpu: str, **kwargs) -> PodRequest:
    resources = {"requests": {"cpu": cpu, "memory": "100Mi"}}
    return pod_request(name, {"containers": [{"resources": resources}], **kwargs})


def test_pods_spread_in_creation_order_as_the_scheduler_places_them():
    # The scheduler binds one pod at a time as they are created, each on the least allocated
    # node that fits: the head and a 2-CPU ingest pod spread over two 4-CPU nodes, and a
    # 4-CPU inference pod created after them finds no node with 4 CPUs free, though placing
    # it first would have fitted everything.
    pods = [cpu_pod("head", "500m"), cpu_pod("ingest", "2"), cpu_pod("inference", "4")]
    nodes = [node("n1", "4", "16Gi"), node("n2", "4", "16Gi")]
    assert fits(pods, nodes) == ["inference: 0/2 nodes are available: 2 Insufficient cpu."]
    assert nodes[0].pods == [] and nodes[0].requested == {}  # fits() leaves its input alone
    spread = [node("n1", "4", "16Gi"), node("n2", "4", "16Gi")]
    place(pods[:2], spread)
    assert [[p.name for p in n.pods] for n in spread] == [["head"], ["ingest"]]


def test_requests_not_limits_and_what_already_runs_count():
    running = [cpu_pod("system", "950m")]
    pod = pod_request(
        "burst", {"containers": [{"resources": {"requests": {"cpu": "3"}, "limits": {"cpu": "8"}}}]}
    )
    assert fits([pod], [node("n", "4", "16Gi", running=running)]) == []
    assert fits([pod, cpu_pod("one-more", "100m")], [node("n", "4", "16Gi", running=running)]) == [
        "one-more: 0/1 nodes are available: 1 Insufficient cpu."
    ]


def test_the_schedulers_message_counts_nodes_per_reason_sorted():
    assert unschedulable_message([["Insufficient cpu"]]) == (
        "0/1 nodes are available: 1 Insufficient cpu."
    )
    message = unschedulable_message(
        [
            ["Insufficient cpu", "Insufficient memory"],
            ["node(s) had untolerated taint {dedicated: beamtime}"],
            ["Insufficient cpu"],
        ]
    )
    assert message == (
        "0/3 nodes are available: 1 Insufficient memory, 1 node(s) had untolerated taint "
        "{dedicated: beamtime}, 2 Insufficient cpu."
    )


def test_unschedulable_pods_are_named_with_every_nodes_reason():
    big = pod_request(
        "big", {"containers": [{"resources": {"requests": {"cpu": "8", "memory": "64Gi"}}}]}
    )
    tainted = node("gpu", "32", "256Gi", gpus=4, taints=[{"key": GPU, "effect": "NoSchedule"}])
    small = node("cpu", "4", "16Gi")
    assert fits([big], [tainted, small]) == [
        "big: 0/2 nodes are available: 1 Insufficient cpu, 1 Insufficient memory, "
        "1 node(s) had untolerated taint {nvidia.com/gpu: }."
    ]


def test_taints_tolerations_and_node_selectors():
    taint = {"key": "dedicated", "value": "beamtime", "effect": "NoSchedule"}
    gpu_node = node("g", "8", "32Gi", gpus=1, labels={"gpu": "yes"}, taints=[taint])
    tolerant = cpu_pod(
        "t",
        "1",
        tolerations=[{"key": "dedicated", "operator": "Equal", "value": "beamtime"}],
        nodeSelector={"gpu": "yes"},
    )
    wrong_value = cpu_pod("w", "1", tolerations=[{"key": "dedicated", "value": "other"}])
    any_taint = cpu_pod("a", "1", tolerations=[{"operator": "Exists"}], nodeSelector={"gpu": "no"})
    assert fits([tolerant], [gpu_node]) == []
    assert fits([wrong_value], [gpu_node]) == [
        "w: 0/1 nodes are available: 1 node(s) had untolerated taint {dedicated: beamtime}."
    ]
    assert fits([any_taint], [gpu_node]) == [
        "a: 0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
    ]


def test_required_pod_affinity_follows_the_pod_it_selects():
    term = {"labelSelector": {"matchLabels": {"role": "head"}}, "topologyKey": names_hostname()}
    affinity = {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}
    follower = pod_request(
        "writer", {"containers": [{"resources": {"requests": {"cpu": "1"}}}], "affinity": affinity}
    )
    head = pod_request("head", {"containers": [{"resources": {"requests": {"cpu": "1"}}}]})
    head = PodRequest(head.name, head.requests, labels={"role": "head"})
    # Created before the head, the writer waits for it, then joins it on its node.
    nodes = [node("n1", "2", "4Gi"), node("n2", "4", "4Gi")]
    assert fits([follower, head], nodes) == []
    place([follower, head], nodes)
    assert [[p.name for p in n.pods] for n in nodes] == [[], ["head", "writer"]]
    # A big head takes the roomier node; the writer cannot follow it there, and the other
    # node, with room, is not the head's.
    big_head = PodRequest("head", {"cpu": 3000, "memory": 0}, labels={"role": "head"})
    small_writer = pod_request(
        "writer",
        {"containers": [{"resources": {"requests": {"cpu": "1200m"}}}], "affinity": affinity},
    )
    assert fits([big_head, small_writer], [node("n1", "4", "4Gi"), node("n2", "1500m", "4Gi")]) == [
        "writer: 0/2 nodes are available: 1 Insufficient cpu, "
        "1 node(s) didn't match pod affinity rules."
    ]


def names_hostname() -> str:
    return "kubernetes.io/hostname"


def example(name: str):
    manifest = yaml.safe_load((EXAMPLES / name).read_text())
    spec, problems = parse_spec(manifest["spec"])
    assert problems == []
    return manifest["metadata"]["name"], spec


def gpu_node(gpus: int) -> object:
    """A beamtime GPU node as run-gpu.yaml is written for: labelled by GPU feature discovery,
    tainted for GPUs and reserved for the beamtime."""
    taints = [
        {"key": GPU, "effect": "NoSchedule"},
        {"key": "dedicated", "value": "beamtime", "effect": "NoSchedule"},
    ]
    labels = {"nvidia.com/gpu.present": "true"}
    return node("gpu-1", "32", "256Gi", gpus=gpus, labels=labels, taints=taints)


def test_run_gpu_fits_a_cpu_node_and_a_four_gpu_node_up_to_max_replicas():
    """examples/run-gpu.yaml: head, 2 ingest and 2 writer pods (10 CPUs, 36 GiB) and the
    submitter on a 16-CPU, 64 GiB CPU node; inference (1 GPU, 4 CPUs, 16 GiB each) up to
    maxReplicas 4 on one 4-GPU node."""
    name, spec = example("run-gpu.yaml")
    for at_max in (False, True):
        pods = pipeline_pods(name, "beamline", spec, at_max=at_max)
        assert fits(pods, [gpu_node(4), node("cpu-1", "16", "64Gi")]) == []
    pods = pipeline_pods(name, "beamline", spec, at_max=True)
    assert [p.name for p in pods if p.requests.get(GPU)] == [f"inference-{i}" for i in (1, 2, 3, 4)]


def test_run_gpu_scaled_past_the_gpus_it_has_names_the_pod_and_the_reason():
    name, spec = example("run-gpu.yaml")
    nodes = [gpu_node(2), node("cpu-1", "16", "64Gi")]
    assert fits(pipeline_pods(name, "beamline", spec), nodes) == []
    reason = (
        "0/2 nodes are available: 1 Insufficient nvidia.com/gpu, "
        "1 node(s) didn't match Pod's node affinity/selector."
    )
    assert fits(pipeline_pods(name, "beamline", spec, at_max=True), nodes) == [
        f"inference-3: {reason}",
        f"inference-4: {reason}",
    ]


def test_run_yaml_fits_a_bare_four_cpu_node_and_the_submitter_comes_last():
    """examples/run.yaml is written for one kind node; with the control plane on it see
    tests/e2e/test_kind_tool.py. Every worker pod also carries KubeRay's wait-gcs-ready init
    container (200m), which is less than each worker's own request."""
    name, spec = example("run.yaml")
    pods = pipeline_pods(name, "default", spec, at_max=True)
    assert [p.name for p in pods][-1] == "submitter"
    assert fits(pods, [node("kind", "4", "16Gi")]) == []
    assert fits(pods, [node("small", "2500m", "16Gi")]) == [
        "submitter: 0/1 nodes are available: 1 Insufficient cpu."
    ]


def test_kuberay_labels_and_init_container_are_part_of_the_pods():
    name, spec = example("run.yaml")
    from peaknet_operator.render import render_all

    pods = {p.name: p for p in pods_of(render_all(name, "default", spec))}
    head, writer = pods["head"], pods["writer-1"]
    assert head.labels["ray.io/node-type"] == "head"
    assert head.labels["ray.io/cluster"] == names.raycluster_name(name)
    assert writer.labels["ray.io/group"] == "writer"


# The status of a pipeline whose pods stay Pending.


def pending_pod(name: str, role: str, message: str) -> dict:
    return {
        "metadata": {"name": name, "labels": {names.LABEL_ROLE: role}},
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": message,
                }
            ],
        },
    }


def test_a_pending_pipeline_says_why_the_scheduler_cannot_place_its_pods():
    """Before: the phase's message was "waiting for worker pods", whatever kept them."""
    message = (
        "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: "
        "1 No preemption victims found for incoming pod."
    )
    obs = Observed(
        generation=1,
        now="2025-01-01T00:00:00Z",
        desired={"ingest": 1, "inference": 1, "writer": 1},
        raycluster={"metadata": {"name": "demo"}, "status": {"state": ""}},
        rayjob={"metadata": {"name": "demo-driver"}, "status": {}},
        pods=[pending_pod("demo-writer-abc12", "writer", message)],
    )
    status = fold(obs)
    assert status["phase"] == "Pending"
    expected = f"pod demo-writer-abc12 cannot be scheduled: {message}"
    assert status["message"] == expected
    progressing = {c["type"]: c for c in status["conditions"]}["Progressing"]
    assert progressing["reason"] == "Unschedulable"
    assert progressing["message"] == expected


def test_the_submitter_pod_is_one_of_the_pipelines_pods_and_small():
    """The status lists the pods labelled as the pipeline's; the submitter is one, so its
    Pending reason reaches the status too. It asks for 100m, not KubeRay's default 500m."""
    name, spec = example("run.yaml")
    from peaknet_operator.render import render_all

    (rayjob,) = [c for c in render_all(name, "default", spec) if c["kind"] == "RayJob"]
    template = rayjob["spec"]["submitterPodTemplate"]
    assert template["metadata"]["labels"][names.LABEL_PIPELINE] == names.raycluster_name(name)
    assert template["spec"]["restartPolicy"] == "Never"
    assert pods_of([rayjob])[0].requests == {"cpu": 100, "memory": 200 << 20}
