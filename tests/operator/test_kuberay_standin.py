"""The stand-in's reading of a rendered RayCluster (no Ray needed): what each pod's Ray node is
started with, so the chain tests' nodes are the ones KubeRay would start."""

from __future__ import annotations

from kuberay_standin import container_env, expand, node_args

from peaknet_operator.render import render_all
from peaknet_operator.spec import PeakNetPipelineSpec


def groups() -> dict[str, dict]:
    raw = {"cluster": {"inference": {"replicas": 1, "actorsPerWorker": 2, "cpu": "2"}}}
    children = render_all("demo", "ns", PeakNetPipelineSpec.model_validate(raw))
    (rc,) = [c for c in children if c["kind"] == "RayCluster"]
    return {g["groupName"]: g for g in rc["spec"]["workerGroupSpecs"]}


def test_a_pod_node_is_named_after_the_pod_and_declares_the_group_resources():
    args = node_args(groups()["inference"], "demo-inference-worker-x1y2z")
    assert args["node_name"] == "demo-inference-worker-x1y2z"
    assert args["resources"] == {"peaknet_infer": 2}
    assert args["num_cpus"] == 2 and args["object_store_memory"] >= 75 << 20
    writer = node_args(groups()["writer"], "demo-writer-worker-abcde")
    assert (writer["node_name"], writer["resources"]) == (
        "demo-writer-worker-abcde",
        {"peaknet_writer": 1},
    )


def test_expansion_follows_kubernetes():
    container = {
        "env": [
            {"name": "A", "value": "1"},
            {"name": "P", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ]
    }
    env = container_env(container, "pod-7")
    assert env == {"A": "1", "P": "pod-7"}
    assert expand("$(P)-$(A)-$(UNSET)", env) == "pod-7-1-$(UNSET)"  # unknown stays as written
