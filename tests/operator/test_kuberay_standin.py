"""The KubeRay stand-in's rules (kuberay_rules.py) against what KubeRay v1.7.0's source does,
and the stand-in acting on them (no Ray needed): the pods it builds, the nodes it would start,
and the objects it refuses."""

from __future__ import annotations

import copy

import pytest
from kuberay_rules import (
    SUBMITTER_RESOURCES,
    ResourcesParamError,
    build_pod,
    parse_resources_param,
    ray_start_params,
    submitter_pod,
    validate_raycluster,
    validate_rayjob,
)
from kuberay_standin import KubeRayStandIn
from ray_nodes import container_env, expand, node_args

from peaknet_operator.render import render_all
from peaknet_operator.render.rayjob import SUBMITTER_REQUESTS
from peaknet_operator.spec import PeakNetPipelineSpec
from peaknet_pipeline.kube import KubeClient

ESCAPED = '"{\\"peaknet_infer\\": 1}"'  # what the operator rendered before issue 19


def rendered(raw: dict | None = None) -> tuple[dict, dict]:
    raw = raw or {"cluster": {"inference": {"replicas": 1, "actorsPerWorker": 2, "cpu": "2"}}}
    children = render_all("demo", "ns", PeakNetPipelineSpec.model_validate(raw))
    (rc,) = [c for c in children if c["kind"] == "RayCluster"]
    (job,) = [c for c in children if c["kind"] == "RayJob"]
    return rc, job


def test_resources_are_read_as_getresourcesmap_reads_them():
    assert parse_resources_param("'{\"peaknet_infer\":1}'") == {"peaknet_infer": 1.0}
    assert parse_resources_param('{"a": 2.5}') == {"a": 2.5}
    assert parse_resources_param("`null`") == {}
    for bad in (ESCAPED, '\'{"a": "1"}\'', "'[1]'", "'{\"a\": true}'"):
        with pytest.raises(ResourcesParamError, match="failed to unmarshal resources"):
            parse_resources_param(bad)


def test_num_gpus_cpus_and_memory_come_from_the_limits_unless_resources_is_unreadable():
    container = {"resources": {"limits": {"cpu": "1500m", "memory": "2Gi", "nvidia.com/gpu": 2}}}
    ok = ray_start_params({"rayStartParams": {"resources": "'{\"x\":1}'"}}, container)
    assert ok.log == []
    assert (ok.params["num-cpus"], ok.params["memory"], ok.params["num-gpus"]) == (
        "2",  # resource.Quantity.Value() rounds up
        str(2 << 30),
        "2",
    )
    broken = ray_start_params({"rayStartParams": {"resources": ESCAPED}}, container)
    assert "num-gpus" not in broken.params
    assert broken.log and "failed to get resources map from rayStartParams" in broken.log[0]
    grouped = ray_start_params({"resources": {"peaknet_infer": "1", "CPU": "3"}}, container)
    assert grouped.params["resources"] == "'{\"peaknet_infer\":1}'"
    assert grouped.params["num-cpus"] == "3"


def test_pods_are_built_as_kuberay_builds_them():
    rc, _ = rendered()
    pod = build_pod(rc, "inference", "demo-raycluster-inference-worker-abcde").manifest
    labels = pod["metadata"]["labels"]
    assert labels["ray.io/node-type"] == "worker" and labels["ray.io/group"] == "inference"
    assert labels["ray.io/cluster"] == rc["metadata"]["name"]
    (shm,) = [v for v in pod["spec"]["volumes"] if v["name"] == "shared-mem"]
    limits = rc["spec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]["resources"]
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": limits["limits"]["memory"]}
    (container,) = pod["spec"]["containers"]
    assert {"name": "shared-mem", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert container["command"] == ["/bin/bash", "-c", "--"]
    (args,) = container["args"]
    assert args.startswith("ulimit -n ${RAY_START_ULIMIT_OPEN_FILES:-65536}; ray start ")
    fqdn = f"{rc['metadata']['name']}-head-svc.ns.svc.cluster.local:6379"
    assert " --block " in args and f" --address={fqdn} " in args
    env = {e["name"]: e for e in container["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "auth_token"
    assert env["KUBERAY_GEN_RAY_START_CMD"]["value"] in args
    (init,) = pod["spec"]["initContainers"]
    assert init["name"] == "wait-gcs-ready"
    head = build_pod(rc, None, "demo-raycluster-head-abcde").manifest
    assert head["metadata"]["labels"]["ray.io/node-type"] == "head"
    assert "initContainers" not in head["spec"]
    assert " --head " in head["spec"]["containers"][0]["args"][0]


def test_a_pod_node_is_named_after_the_pod_and_declares_the_group_resources():
    rc, _ = rendered()
    args = node_args(build_pod(rc, "inference", "demo-inference-worker-x1y2z"))
    assert args["node_name"] == "demo-inference-worker-x1y2z"
    assert args["resources"] == {"peaknet_infer": 2}
    assert args["num_cpus"] == 2 and args["object_store_memory"] >= 75 << 20
    writer = node_args(build_pod(rc, "writer", "demo-writer-worker-abcde"))
    assert (writer["node_name"], writer["resources"]) == (
        "demo-writer-worker-abcde",
        {"peaknet_writer": 1},
    )
    gpu, _ = rendered({"cluster": {"inference": {"gpusPerWorker": 1}}})
    assert node_args(build_pod(gpu, "inference", "p"))["num_gpus"] == 1


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


def test_the_submitter_has_kuberays_default_requests_without_a_template():
    rc, job = rendered()
    job["spec"].pop("submitterPodTemplate", None)
    assert SUBMITTER_RESOURCES["requests"] == SUBMITTER_REQUESTS
    pod = submitter_pod(job, rc, "demo-driver-abcde")
    (container,) = pod["spec"]["containers"]
    assert container["resources"] == SUBMITTER_RESOURCES
    assert (
        container["image"]
        == rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    )
    assert pod["metadata"]["labels"]["ray.io/originated-from-crd"] == "RayJob"


def broken_clusters() -> dict[str, tuple[dict, str]]:
    rc, _ = rendered()
    cases: dict[str, tuple[dict, str]] = {}

    def case(name: str, needle: str, change) -> None:
        obj = copy.deepcopy(rc)
        change(obj)
        cases[name] = (obj, needle)

    groups = "workerGroupSpecs"
    case(
        "long name",
        "RayCluster name should be no more than 53 characters",
        lambda o: o["metadata"].update(name="a" * 54),
    )
    case(
        "dns",
        "RayCluster name should be a valid DNS1035 label: [a DNS-1035 label",
        lambda o: o["metadata"].update(name="1demo"),
    )
    case(
        "min>max",
        "worker group ingest has minReplicas 2 greater than maxReplicas 1",
        lambda o: o["spec"][groups][0].update(minReplicas=2),
    )
    case(
        "no max",
        "worker group ingest must set both minReplicas and maxReplicas",
        lambda o: o["spec"][groups][0].pop("maxReplicas"),
    )
    case(
        "both ways",
        "resource fields should not be set in both rayStartParams and Resources for ingest group",
        lambda o: o["spec"][groups][0].update(resources={"x": "1"}),
    )
    case(
        "labels param",
        "rayStartParams['labels'] is not supported for writer group",
        lambda o: o["spec"][groups][2]["rayStartParams"].update(labels="a=b"),
    )
    case(
        "token without version",
        "authOptions.mode is 'token' but RayVersion was not specified",
        lambda o: o["spec"].pop("rayVersion"),
    )
    case(
        "old ray",
        "minimum Ray version is 2.52.0, got 2.40.0",
        lambda o: o["spec"].update(rayVersion="2.40.0"),
    )
    case(
        "upgrade type",
        "Spec.UpgradeStrategy.Type value Rolling is invalid",
        lambda o: o["spec"].update(upgradeStrategy={"type": "Rolling"}),
    )
    return cases


@pytest.mark.parametrize("case", sorted(broken_clusters()))
def test_kuberay_validation_refuses_with_its_message(case):
    obj, needle = broken_clusters()[case]
    (message,) = validate_raycluster(obj)
    assert message.startswith("The RayCluster ") and "ns/" in message
    assert needle in message


def test_rayjob_validation_refuses_with_its_message():
    _, job = rendered()
    assert validate_rayjob(job) == []
    retried = copy.deepcopy(job)
    retried["spec"]["backoffLimit"] = 1
    assert validate_rayjob(retried) == [
        "The RayJob spec is invalid: BackoffLimit is incompatible with ClusterSelector mode"
    ]
    unnamed = copy.deepcopy(job)
    unnamed["spec"]["clusterSelector"] = {"ray.io/cluster": ""}
    assert validate_rayjob(unnamed) == ["cluster name in ClusterSelector should not be empty"]
    long = copy.deepcopy(job)
    long["metadata"]["name"] = "j" * 48
    assert "RayJob name should be no more than 47 characters" in validate_rayjob(long)[0]


def test_the_stand_in_refuses_what_kuberay_refuses(emulator, tmp_path):
    rc, job = rendered()
    rc["spec"]["workerGroupSpecs"][0]["minReplicas"] = 5
    job["spec"]["backoffLimit"] = 2
    client = KubeClient(emulator.url)
    for obj, plural in ((rc, "rayclusters"), (job, "rayjobs")):
        client.request("POST", f"/apis/ray.io/v1/namespaces/ns/{plural}", obj, "application/json")
    standin = KubeRayStandIn(emulator.url, "ns", cluster=None, workdir=tmp_path)
    standin.poll()
    standin.poll()  # one Event per refusal, not one per poll
    assert client.get("/api/v1/namespaces/ns/pods")["items"] == []
    events = client.get("/api/v1/namespaces/ns/events")["items"]
    reasons = sorted(e["reason"] for e in events)
    assert reasons == ["InvalidRayClusterSpec", "InvalidRayJobSpec"]
    status = client.get(f"/apis/ray.io/v1/namespaces/ns/rayjobs/{job['metadata']['name']}")
    assert status["status"]["jobDeploymentStatus"] == "ValidationFailed"
    assert "BackoffLimit is incompatible" in status["status"]["message"]
    assert standin.jobs == {}
