"""Rendering is pure: manifests from (name, namespace, spec), checked without an API server.

RayCluster and RayJob validate against the KubeRay v1.7 schemas in ../shared/kuberay/, and
every field name the renderer writes must exist there (the schemas do not reject unknown
names); core kinds' field names are checked against the `kubernetes` client's models."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import kubernetes
import pytest
import yaml
from kuberay_rules import parse_resources_param

from conftest import EXAMPLE_GPU, example, kuberay_dir
from peaknet_operator.checks import parse_spec
from peaknet_operator.render import effective_config, names, render_all, restart_fingerprint
from peaknet_operator.scaling import InferenceScale
from peaknet_operator.spec import PeakNetPipelineSpec

SOCKET = {
    "pipeline": {
        "source": {
            "kind": "socket",
            "socket": {"addresses": ["tcp://0.0.0.0:12321", "tcp://0.0.0.0:12322"]},
        },
        "inference": {"frame_shape": [1, 256, 256]},
    },
    "cluster": {
        "ingest": {"replicas": 2, "memory": "2Gi"},
        "inference": {"replicas": 2, "gpusPerWorker": 1, "memory": "4Gi", "cpu": "2"},
        "writer": {"replicas": 2},
        "ingestService": {"type": "NodePort", "ports": [{"targetPort": 12321, "nodePort": 30321}]},
    },
}


def spec_of(raw: dict) -> PeakNetPipelineSpec:
    spec, problems = parse_spec(raw)
    assert problems == [], problems
    return spec


def by_kind(children: list[dict]) -> dict[str, list[dict]]:
    kinds: dict[str, list[dict]] = {}
    for child in children:
        kinds.setdefault(child["kind"], []).append(child)
    return kinds


SPECS = {
    "example": example()["spec"],
    "example-gpu": example(EXAMPLE_GPU)["spec"],
    "socket-gpu": SOCKET,
    "defaults": {},
}
# Two actors per inference pod, mid scale-down from 2 pods to 1 with one pod released.
ELASTIC = {
    "cluster": {"inference": {"replicas": 1, "maxReplicas": 3, "actorsPerWorker": 2, "cpu": "2"}}
}
RELEASED = "demo-inference-worker-abcde"
SCALING_DOWN = InferenceScale(1, (RELEASED,))


@pytest.fixture(params=[*sorted(SPECS), "scaling-down"])
def children(request) -> list[dict]:
    if request.param == "scaling-down":
        return render_all("demo", "beamtime", spec_of(ELASTIC), scale=SCALING_DOWN)
    return render_all("demo", "beamtime", spec_of(SPECS[request.param]))


# -- KubeRay schemas -------------------------------------------------------------------------
def schema(name: str) -> dict[str, Any]:
    where = kuberay_dir()
    if where is None:
        pytest.skip("KubeRay schemas not found: set KUBERAY_SCHEMAS or provide ../shared/kuberay")
    return json.loads((where / f"{name}.v1.schema.json").read_text())


def unknown_fields(value: Any, node: dict[str, Any], path: str = "") -> list[str]:
    """Paths of keys `value` has that `node` (a JSON schema) does not declare."""
    if isinstance(value, list):
        items = node.get("items", {})
        return [p for i, v in enumerate(value) for p in unknown_fields(v, items, f"{path}[{i}]")]
    if not isinstance(value, dict) or node.get("x-kubernetes-preserve-unknown-fields"):
        return []
    props, extra = node.get("properties"), node.get("additionalProperties")
    found = []
    for key, child in value.items():
        if props is not None and key in props:
            found += unknown_fields(child, props[key], f"{path}.{key}")
        elif isinstance(extra, dict):
            found += unknown_fields(child, extra, f"{path}.{key}")
        elif props is not None or extra is False:
            found.append(f"{path}.{key}")
    return found


@pytest.mark.parametrize("kind, schema_name", [("RayCluster", "raycluster"), ("RayJob", "rayjob")])
def test_kuberay_children_validate_and_use_only_known_fields(children, kind, schema_name):
    kuberay = schema(schema_name)
    (manifest,) = by_kind(children)[kind]
    jsonschema.Draft7Validator(kuberay).validate(manifest)
    body = {k: v for k, v in manifest.items() if k not in ("apiVersion", "kind", "metadata")}
    assert unknown_fields(body, kuberay) == []


def test_the_allow_list_catches_a_misspelled_field():
    kuberay = schema("raycluster")
    manifest = {"spec": {"workerGroupSpecs": [{"groupName": "x", "minReplica": 1}]}}
    assert unknown_fields(manifest, kuberay) == [".spec.workerGroupSpecs[0].minReplica"]


# -- core kinds: field names from the kubernetes client's models -----------------------------
def core_unknown(value: Any, type_name: str, path: str = "") -> list[str]:
    if type_name in ("object", "str", "int", "bool", "float", "datetime"):
        return []
    match = re.fullmatch(r"[Ll]ist\[(.+)\]", type_name)
    if match:
        return [p for i, v in enumerate(value) for p in core_unknown(v, match[1], f"{path}[{i}]")]
    match = re.fullmatch(r"(?:dict\(str, (.+)\)|Dict\[str, (.+)\])", type_name)
    if match:
        inner = match[1] or match[2]
        return [p for k, v in value.items() for p in core_unknown(v, inner, f"{path}.{k}")]
    model = getattr(kubernetes.client, type_name)
    by_json = {json_key: attr for attr, json_key in model.attribute_map.items()}
    found = []
    for key, child in value.items():
        if key not in by_json:
            found.append(f"{path}.{key}")
        else:
            found += core_unknown(child, model.openapi_types[by_json[key]], f"{path}.{key}")
    return found


CORE_MODELS = {
    "ConfigMap": "V1ConfigMap",
    "Service": "V1Service",
    "PersistentVolumeClaim": "V1PersistentVolumeClaim",
    "PodDisruptionBudget": "V1PodDisruptionBudget",
}


def test_the_core_allow_list_catches_a_misspelled_field():
    service = {"spec": {"ports": [{"port": 1, "targetPorts": 1}]}}
    assert core_unknown(service, "V1Service") == [".spec.ports[0].targetPorts"]


def test_core_children_use_only_known_fields(children):
    core = [c for c in children if c["kind"] in CORE_MODELS]
    assert core
    for manifest in core:
        assert core_unknown(manifest, CORE_MODELS[manifest["kind"]]) == [], manifest["kind"]


def test_kuberay_templates_use_only_pod_fields(children):
    (rc,) = by_kind(children)["RayCluster"]
    groups = [rc["spec"]["headGroupSpec"], *rc["spec"]["workerGroupSpecs"]]
    for group in groups:
        assert core_unknown(group["template"], "V1PodTemplateSpec") == []


# -- what the RayCluster promises ------------------------------------------------------------
def groups(children: list[dict]) -> dict[str, dict]:
    (rc,) = by_kind(children)["RayCluster"]
    return {g["groupName"]: g for g in rc["spec"]["workerGroupSpecs"]}


def test_head_runs_no_actors_and_hosts_the_driver(children):
    (rc,) = by_kind(children)["RayCluster"]
    head = rc["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head["rayStartParams"]["num-gpus"] == "0"
    pod = head["template"]["spec"]
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    assert env == {"PEAKNET_RESOURCE_NAME": "demo", "PEAKNET_RESOURCE_NAMESPACE": "beamtime"}
    assert pod["serviceAccountName"] == "peaknet-driver"
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts == {"/etc/peaknet", "/data"}
    assert rc["spec"]["enableInTreeAutoscaling"] is False
    assert rc["spec"]["authOptions"] == {"mode": "token"}
    assert len(rc["metadata"]["name"]) <= 53


def test_each_group_declares_its_role_resource_one_way_only(children):
    for role, resource in (("ingest", "ingest"), ("inference", "infer"), ("writer", "writer")):
        group = groups(children)[role]
        assert "resources" not in group  # never both ways
        declared = parse_resources_param(group["rayStartParams"]["resources"])
        assert declared[f"peaknet_{resource}"] >= 1
        assert group["replicas"] == group["minReplicas"] == group["maxReplicas"]
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())
        container = group["template"]["spec"]["containers"][0]
        assert container["resources"]["requests"] == container["resources"]["limits"]
        store = int(group["rayStartParams"]["object-store-memory"])
        assert store >= 75 << 20


def test_inference_pods_declare_one_peaknet_infer_unit_per_actor():
    declared = {}
    for raw in ({}, ELASTIC):
        group = groups(render_all("demo", "ns", spec_of(raw)))["inference"]
        per_pod = parse_resources_param(group["rayStartParams"]["resources"])["peaknet_infer"]
        declared[spec_of(raw).cluster.inference.actors_per_worker] = per_pod
    assert declared == {1: 1, 2: 2}
    for role in ("ingest", "writer"):
        group = groups(render_all("demo", "ns", spec_of(ELASTIC)))[role]
        assert parse_resources_param(group["rayStartParams"]["resources"])[f"peaknet_{role}"] == 1


def test_every_worker_ray_node_is_named_after_its_pod(children):
    for role, group in groups(children).items():
        assert group["rayStartParams"]["node-name"] == "$(POD_NAME)", role
        (container,) = group["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert env["POD_NAME"] == {
            "name": "POD_NAME",
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
        }


def test_the_scaling_decision_sets_inference_replicas_and_the_pods_to_delete():
    spec = spec_of(ELASTIC)
    plain = groups(render_all("demo", "ns", spec))
    scaling = groups(render_all("demo", "ns", spec, scale=InferenceScale(2, (RELEASED,), 1)))
    inference = scaling["inference"]
    assert inference["replicas"] == inference["minReplicas"] == inference["maxReplicas"] == 2
    assert inference["scaleStrategy"] == {"workersToDelete": [RELEASED]}
    assert plain["inference"]["replicas"] == 1 and "scaleStrategy" not in plain["inference"]
    # No names: scaleStrategy is left out (a merge patch leaves KubeRay's list alone).
    up = groups(render_all("demo", "ns", spec, scale=InferenceScale(3)))["inference"]
    assert up["replicas"] == 3 and "scaleStrategy" not in up
    for role in ("ingest", "writer"):
        assert scaling[role] == plain[role]


def test_socket_ingest_pods_declare_one_resource_per_port_and_the_service_selects_them():
    children = render_all("demo", "beamtime", spec_of(SOCKET))
    ingest = groups(children)["ingest"]
    declared = parse_resources_param(ingest["rayStartParams"]["resources"])
    assert declared == {
        "peaknet_ingest": 1,
        "peaknet_ingest_port_12321": 1,
        "peaknet_ingest_port_12322": 1,
    }
    (svc,) = by_kind(children)["Service"]
    assert svc["spec"]["type"] == "NodePort"
    assert svc["spec"]["ports"] == [
        {
            "name": "ingest-12321",
            "port": 12321,
            "targetPort": 12321,
            "nodePort": 30321,
            "protocol": "TCP",
        }
    ]
    labels = ingest["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"] == labels == names.pod_labels("demo", "ingest")
    config = effective_config(spec_of(SOCKET))
    # Each port listed once per ingest pod: one socket actor per pod and port.
    assert sorted(config.source.socket.addresses) == sorted(
        ["tcp://0.0.0.0:12321", "tcp://0.0.0.0:12322"] * 2
    )


def test_gpus_only_when_asked_with_a_toleration():
    gpu = groups(render_all("demo", "ns", spec_of(SOCKET)))["inference"]
    container = gpu["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    keys = [t["key"] for t in gpu["template"]["spec"]["tolerations"]]
    assert keys == ["nvidia.com/gpu"]
    cpu = groups(render_all("demo", "ns", spec_of({})))["inference"]
    assert "nvidia.com/gpu" not in cpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "tolerations" not in cpu["template"]["spec"]


def test_output_volume_on_writers_and_head_only(children):
    for role, group in groups(children).items():
        volumes = group["template"]["spec"].get("volumes", [])
        claims = [v for v in volumes if "persistentVolumeClaim" in v]
        assert bool(claims) == (role == "writer"), role


def test_a_pdb_per_worker_group_selecting_its_pods(children):
    pdbs = by_kind(children)["PodDisruptionBudget"]
    assert {p["metadata"]["name"] for p in pdbs} == {
        "demo-ingest",
        "demo-inference",
        "demo-writer",
    }
    for pdb in pdbs:
        role = pdb["metadata"]["name"].rsplit("-", 1)[1]
        assert pdb["spec"]["maxUnavailable"] == 1
        assert (
            pdb["spec"]["selector"]["matchLabels"]
            == groups(children)[role]["template"]["metadata"]["labels"]
        )


def test_the_driver_job_selects_the_cluster_and_runs_the_mounted_config(children):
    (job,) = by_kind(children)["RayJob"]
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": "demo"}
    assert job["spec"]["entrypoint"] == "peaknet-pipeline run --config /etc/peaknet/pipeline.yaml"
    (cm,) = by_kind(children)["ConfigMap"]
    config = yaml.safe_load(cm["data"]["pipeline.yaml"])
    assert config["ray"]["address"] == "auto"
    assert config["writer"]["output_dir"].startswith("/data/")


def test_effective_config_derives_counts_and_shards():
    config = effective_config(spec_of(SOCKET))
    assert config.inference.num_actors == 2 and config.writer.num_actors == 2
    assert config.queue.q1.num_shards == 4  # 4 socket actors, 2 inference consumers
    assert config.queue.q2.num_shards == 2
    assert config.inference.max_actors == 2  # no maxReplicas: replicas
    elastic = effective_config(spec_of(ELASTIC))
    assert (elastic.inference.num_actors, elastic.inference.max_actors) == (2, 6)
    set_shards = {**SOCKET, "pipeline": {**SOCKET["pipeline"], "queue": {"q1": {"num_shards": 3}}}}
    assert effective_config(spec_of(set_shards)).queue.q1.num_shards == 3


def test_long_names_stay_within_kubernetes_limits():
    long = "a" * 60 + ".beamline-" + "b" * 100
    children = render_all(long, "ns", spec_of({}))
    for child in children:
        name = child["metadata"]["name"]
        assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), name
        assert len(name) <= (53 if child["kind"] == "RayCluster" else 63)
    (job,) = by_kind(children)["RayJob"]
    assert len(job["metadata"]["name"]) <= 47
    assert names.raycluster_name(long) != names.raycluster_name(long + "x")


def test_restart_fingerprint_ignores_inference_scaling_only():
    base = {"cluster": {"inference": {"replicas": 1, "maxReplicas": 3}}}
    scaled = {"cluster": {"inference": {"replicas": 3, "maxReplicas": 3}}}
    memory = {"cluster": {"inference": {"replicas": 1, "maxReplicas": 3, "memory": "2Gi"}}}
    fingerprint = {
        key: restart_fingerprint(render_all("demo", "ns", spec_of(raw)))
        for key, raw in (("base", base), ("scaled", scaled), ("memory", memory))
    }
    assert fingerprint["base"] == fingerprint["scaled"]
    assert fingerprint["base"] != fingerprint["memory"]
    draining = render_all("demo", "ns", spec_of(scaled), scale=InferenceScale(2, (RELEASED,), 1))
    assert restart_fingerprint(draining) == fingerprint["base"]
    # A new maxReplicas resizes queues and stores and changes max_actors: a restart.
    wider = {"cluster": {"inference": {"replicas": 1, "maxReplicas": 4}}}
    assert restart_fingerprint(render_all("demo", "ns", spec_of(wider))) != fingerprint["base"]


@pytest.mark.parametrize(
    "raw, needle",
    [
        ({"pipeline": {"inference": {"num_actors": 2}}}, "spec.pipeline.inference.num_actors=2"),
        (
            {"pipeline": {"inference": {"max_actors": 4}}},
            "spec.pipeline.inference.max_actors=4 disagrees",
        ),
        ({"pipeline": {"ray": {"address": "local"}}}, "spec.pipeline.ray.address='local'"),
        ({"pipeline": {"ray": {"num_cpus": 4}}}, "spec.pipeline.ray.num_cpus"),
        ({"pipeline": {"writer": {"output_dir": "/tmp/x"}}}, "outside the output volume"),
        ({"pipeline": {"inference": {"device": "cuda"}}}, "gpusPerWorker > 0"),
        ({"pipeline": {"inference": {"num_cpus_per_actor": 3}}}, "do not fit the 1 Ray CPUs"),
        (
            {
                "pipeline": {
                    "source": {"kind": "socket", "socket": {"addresses": ["tcp://127.0.0.1:5000"]}}
                }
            },
            "must bind every interface",
        ),
        ({"cluster": {"output": {"existingClaim": "a", "storageClassName": "b"}}}, "not both"),
        (
            {"cluster": {"output": {"accessModes": ["ReadWriteOncePod"]}}},
            "a ReadWriteOncePod claim serves one pod only",
        ),
        ({"cluster": {"inference": {"replicas": 3, "maxReplicas": 2}}}, "maxReplicas=2"),
    ],
)
def test_spec_problems_name_the_field(raw, needle):
    _, problems = parse_spec(raw)
    assert problems and any(needle in p for p in problems), problems


def test_the_gpu_example_places_inference_on_gpu_nodes_and_writes_to_its_claim():
    children = render_all("beamtime", "beamline", spec_of(example(EXAMPLE_GPU)["spec"]))
    pod = groups(children)["inference"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    keys = [t["key"] for t in pod["tolerations"]]
    assert keys == ["dedicated", "nvidia.com/gpu"]  # the site's taint and the GPU one
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    writer = groups(children)["writer"]["template"]["spec"]
    (claim,) = [v for v in writer["volumes"] if "persistentVolumeClaim" in v]
    assert claim["persistentVolumeClaim"]["claimName"] == "beamtime-cxi"
    assert "PersistentVolumeClaim" not in by_kind(children)  # an existing claim: none created
    (svc,) = by_kind(children)["Service"]
    assert [(p["targetPort"], p["nodePort"]) for p in svc["spec"]["ports"]] == [
        (12321, 30321),
        (12322, 30322),
    ]
