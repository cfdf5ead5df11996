"""The CRD: generated from the models (a drift fails), accepted by the API server (the admission
stand-in), useful to `kubectl explain`, and `examples/run.yaml` valid against it."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import pytest
import yaml
from admission.crd import validate_crd

from conftest import CRD_FILE, EXAMPLE, EXAMPLE_GPU
from peaknet_operator.checks import parse_spec
from peaknet_operator.crd import build_crd, crd_yaml
from peaknet_operator.sizing import size_roles, sizing_problems


def openapi_schema() -> dict[str, Any]:
    return build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def undescribed(node: dict[str, Any], path: str = "") -> list[str]:
    missing = []
    for key, child in node.get("properties", {}).items():
        if "description" not in child and f"{path}.{key}" != ".metadata":
            missing.append(f"{path}.{key}")
        missing += undescribed(child, f"{path}.{key}")
    if "items" in node:
        missing += undescribed(node["items"], f"{path}[]")
    return missing


def as_json_schema(node: Any) -> Any:
    """OpenAPI v3.0 (as the API server reads it) to JSON Schema draft 4: nullable as a null
    type, and unknown fields rejected (what `kubectl apply` reports with strict validation)."""
    if isinstance(node, list):
        return [as_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: as_json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
    if out.pop("nullable", False):
        out["type"] = [out["type"], "null"]
    if "properties" in out and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def validate(manifest: dict[str, Any]) -> None:
    jsonschema.Draft4Validator(as_json_schema(openapi_schema())).validate(manifest)


def test_checked_in_crd_matches_the_models():
    assert CRD_FILE.read_text() == crd_yaml(), "the CRD drifted from the models: run `make crd`"


def test_crd_output_is_byte_stable():
    assert crd_yaml() == crd_yaml()


def test_the_api_server_would_accept_the_crd():
    """Structural everywhere, list-map keys required, CEL within budget: the API server's own
    checks, as tests/operator/admission reproduces them (test_crd_admission.py shows they bite)."""
    assert validate_crd(build_crd()) == []


def test_every_field_is_described_for_kubectl_explain():
    schema = openapi_schema()
    assert undescribed(schema) == []
    inference = schema["properties"]["spec"]["properties"]["pipeline"]["properties"]["inference"]
    assert "buffering" in inference["description"]
    assert "Default: 2" in inference["properties"]["buffer_depth"]["description"]


def test_enums_bounds_and_nullables_are_carried_over():
    spec = openapi_schema()["properties"]["spec"]["properties"]
    inference = spec["pipeline"]["properties"]["inference"]["properties"]
    assert inference["precision"]["enum"] == ["fp32", "bf16", "fp16"]
    assert inference["buffer_depth"]["minimum"] == 1 and inference["buffer_depth"]["maximum"] == 16
    gpus = inference["num_gpus_per_actor"]
    assert gpus["minimum"] == 0 and gpus["exclusiveMinimum"] is True
    assert inference["frame_shape"]["nullable"] is True
    assert inference["frame_shape"]["minItems"] == 3
    assert inference["runtime_env"]["x-kubernetes-preserve-unknown-fields"] is True
    extra = spec["pipeline"]["properties"]["source"]["properties"]["socket"]["properties"]["hdf5"]
    rule = extra["properties"]["extra"]["x-kubernetes-validations"][0]["rule"]
    assert rule.startswith("self.all(k, k.matches(")
    cluster = spec["cluster"]["properties"]
    assert cluster["inference"]["x-kubernetes-validations"][0]["message"].startswith("maxReplicas")
    assert cluster["imagePullPolicy"]["enum"] == ["Always", "IfNotPresent", "Never"]


def test_resource_names_subresources_and_columns():
    crd = build_crd()
    assert crd["metadata"]["name"] == "peaknetpipelines.peaknet.slac.stanford.edu"
    assert crd["spec"]["names"]["shortNames"] == ["pnp"]
    assert crd["spec"]["scope"] == "Namespaced"
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1alpha1"
    scale = version["subresources"]["scale"]
    assert scale["specReplicasPath"] == ".spec.cluster.inference.replicas"
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    ready = status["properties"]["workers"]["properties"]["inference"]["properties"]["ready"]
    assert scale["statusReplicasPath"] == ".status.workers.inference.ready"
    assert ready["type"] == "integer"
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Phase": ".status.phase",
        "Inference": ".status.inferenceReady",
        "Actors": ".status.inferenceActors",
        "DAQ Run": ".status.driver.daqRuns.current.name",
        "Frames In": ".status.driver.framesIngested",
        "Written": ".status.driver.framesWritten",
        "Frames/s": ".status.driver.framesPerSecond",
        "Verdict": ".status.driver.verdict",
        "Age": ".metadata.creationTimestamp",
        "Message": ".status.message",
    }


def test_example_run_validates_and_fits_a_kind_node():
    manifest = yaml.safe_load(EXAMPLE.read_text())
    validate(manifest)
    spec, problems = parse_spec(manifest["spec"])
    assert problems == []
    assert sizing_problems(size_roles(spec), spec) == []
    assert spec.pipeline.source.kind == "random" and spec.pipeline.source.random.num_frames > 0
    assert spec.pipeline.inference.device == "cpu"
    cluster = spec.cluster
    pods = [cluster.head, cluster.ingest, cluster.inference, cluster.writer]
    from peaknet_operator.quantity import cpu_cores, memory_bytes

    assert sum(cpu_cores(p.cpu) * getattr(p, "replicas", 1) for p in pods) <= 3.0
    assert sum(memory_bytes(p.memory) * getattr(p, "replicas", 1) for p in pods) <= 5 << 30


def test_example_run_gpu_validates_and_streams_from_lclstreamer_onto_gpus():
    manifest = yaml.safe_load(EXAMPLE_GPU.read_text())
    validate(manifest)
    spec, problems = parse_spec(manifest["spec"])
    assert problems == []
    assert sizing_problems(size_roles(spec), spec) == []
    source = spec.pipeline.source
    assert source.kind == "socket" and source.socket.mode == "bind"
    assert source.socket.transport == "zmq" and source.socket.format == "hdf5"
    assert spec.pipeline.inference.device == "cuda"
    inference = spec.cluster.inference
    assert inference.gpus_per_worker >= 1 and inference.tolerations
    assert inference.max_replicas > inference.replicas  # room for kubectl scale
    assert spec.cluster.output.existing_claim  # CXI files outlive the resource
    ports = {p.target_port for p in spec.cluster.ingest_service.ports}
    assert ports == {int(a.rsplit(":", 1)[1]) for a in source.socket.addresses}


@pytest.mark.parametrize(
    "path, value",
    [
        (("pipeline", "inference", "buffer_depth"), 0),
        (("pipeline", "inference", "precision"), "fp64"),
        (("pipeline", "inference", "unknown_key"), 1),
        (("cluster", "inference", "memory"), "lots"),
        (("cluster", "imagePullPolicy"), "Sometimes"),
    ],
)
def test_the_schema_rejects_what_the_models_reject(path, value):
    manifest = yaml.safe_load(EXAMPLE.read_text())
    node = manifest["spec"]
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        validate(manifest)
    spec, problems = parse_spec(copy.deepcopy(manifest["spec"]))
    assert spec is None and problems  # the models reject it too, naming the field
    assert any(".".join(path[1:]) in p or path[-1] in p for p in problems), problems
