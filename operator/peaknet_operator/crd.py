"""The PeakNetPipeline CRD, generated from the pydantic models (`make crd`; never hand-edited).

pydantic's JSON schema is turned into a Kubernetes structural schema: every `$ref` inlined,
`anyOf [X, null]` as X with `nullable: true`, `exclusiveMinimum: n` as OpenAPI v3.0's
`minimum: n` + `exclusiveMinimum: true`, free-form maps (`runtime_env`) as
`x-kubernetes-preserve-unknown-fields`, key patterns of maps as CEL rules (each such map carries
the model's `maxProperties`, 64: the API server estimates a rule's cost for the largest map a
3 MiB request could hold, and `self.all(k, k.matches(...))` on an unbounded map is estimated at
~3.9 M against its 1 M per-call budget; 64 keys cost ~650), no defaults (the
models apply them, and a default written into stored objects would look like a value the user
set). Descriptions are kept (with the default appended) so `kubectl explain` documents every
field. Cross-field rules of the models that CEL can say are added as `x-kubernetes-validations`;
the rest are reported in the resource's status.

    python -m peaknet_operator.crd > crds/peaknetpipelines.peaknet.slac.stanford.edu.yaml
"""

from __future__ import annotations

import copy
import json
import sys
from typing import Any

import yaml

from .spec import GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION, PeakNetPipelineSpec
from .status_schema import STATUS_SCHEMA

CRD_NAME = f"{PLURAL}.{GROUP}"
CRD_PATH = f"crds/{CRD_NAME}.yaml"
DROPPED = {
    "title",
    "default",
    "additionalProperties",
    "propertyNames",
    "patternProperties",
    "$defs",
}

# Cross-field rules of the models, by model (class) name, in CEL.
CEL_RULES: dict[str, list[dict[str, str]]] = {
    "QueueConfig": [
        {
            "rule": "!has(self.num_shards) || !has(self.capacity_items) || "
            "self.num_shards <= self.capacity_items",
            "message": "num_shards must not exceed capacity_items (one record per shard)",
        }
    ],
    "WriterConfig": [
        {
            "rule": "!has(self.max_pixels_per_peak) || !has(self.min_pixels_per_peak) || "
            "self.max_pixels_per_peak >= self.min_pixels_per_peak",
            "message": "max_pixels_per_peak must be >= min_pixels_per_peak",
        },
        {
            "rule": "!has(self.compression_level) || (has(self.compression) && "
            "self.compression in ['gzip', 'zstd'])",
            "message": "compression_level applies to compression gzip or zstd only",
        },
    ],
    "InferenceGroupSpec": [
        {
            "rule": "!has(self.maxReplicas) || self.maxReplicas >= "
            "(has(self.replicas) ? self.replicas : 1)",
            "message": "maxReplicas must be >= replicas",
        }
    ],
    "OutputVolumeSpec": [
        {
            "rule": "!(has(self.existingClaim) && has(self.storageClassName))",
            "message": "set existingClaim or storageClassName, not both",
        }
    ],
}
# Descriptions of sections whose models carry none (shown by `kubectl explain`).
MODEL_DESCRIPTIONS = {
    "RayConfig": "Where Ray runs; on Kubernetes always the pipeline's own RayCluster.",
    "SourceConfig": "Which source feeds Q1 (random, socket or replay) and its options.",
    "RandomSourceConfig": "Synthetic frames with Bragg-like peaks at reproducible positions.",
    "SocketSourceConfig": "LCLStreamer messages over zmq PULL or nng Pull0.",
    "ReplaySourceConfig": "Frames streamed from HDF5/CXI files.",
    "Hdf5FieldsConfig": "Dataset paths inside an HDF5 message.",
    "NpzFieldsConfig": "Array names inside an NPZ message.",
    "QueuesConfig": "Q1 (batches, ingest to inference) and Q2 (results, inference to writers).",
    "QueueConfig": "One sharded queue: shards and capacity in records and bytes.",
    "ModelConfig": "The PeakNet architecture (upstream field names), weights, or the oracle.",
    "InferenceConfig": "Inference actors: device, N-way buffering, precision, padding, output.",
    "WriterConfig": "Writer actors: output directory, hit rule, peak filters, files.",
    "MonitorConfig": "Progress lines, the end-of-run report and the exported Ray metrics.",
    "RuntimeConfig": "Run id, logging, start-up and drain timeouts.",
    "ProfileConfig": "Profiling: a torch trace of one inference actor, NVTX ranges everywhere.",
    "TorchProfileConfig": "Which inference actor the torch profiler records, and how long.",
}
FIELD_CEL_RULES: dict[tuple[str, str], list[dict[str, str]]] = {
    ("ModelConfig", "seg_out_channels"): [
        {"rule": "self % 32 == 0", "message": "must be a multiple of 32 (GroupNorm, 32 groups)"}
    ],
}


def _describe(node: dict[str, Any], default: Any) -> None:
    if default is not None and default != {} and not isinstance(default, dict):
        text = json.dumps(default)
        if len(text) <= 60:
            node["description"] = f"{node.get('description', '').rstrip('.')}. Default: {text}."


def _nullable(schema: dict[str, Any]) -> dict[str, Any] | None:
    """The non-null branch of `anyOf [X, {type: null}]`, or None."""
    branches = schema.get("anyOf")
    if not branches or len(branches) != 2:
        return None
    others = [b for b in branches if b.get("type") != "null"]
    return others[0] if len(others) == 1 else None


class Converter:
    def __init__(self, defs: dict[str, Any]) -> None:
        self.defs = defs

    def convert(self, schema: dict[str, Any], model: str | None = None) -> dict[str, Any]:
        schema = copy.deepcopy(schema)
        if "$ref" in schema:
            model = schema.pop("$ref").rsplit("/", 1)[-1]
            target = copy.deepcopy(self.defs[model])
            if "description" not in target and model in MODEL_DESCRIPTIONS:
                target["description"] = MODEL_DESCRIPTIONS[model]
            schema = {**target, **schema}
        inner = _nullable(schema)
        if inner is not None:
            rest = {k: v for k, v in schema.items() if k != "anyOf"}
            node = self.convert({**inner, **rest}, model)
            node["nullable"] = True
            return node
        if "anyOf" in schema or "oneOf" in schema or "allOf" in schema:
            raise ValueError(f"no structural form for {schema}")
        return self._typed(schema, model)

    def _typed(self, schema: dict[str, Any], model: str | None) -> dict[str, Any]:
        node: dict[str, Any] = {}
        default = schema.get("default")
        if "const" in schema:
            schema["enum"] = [schema.pop("const")]
        if "enum" in schema and "type" not in schema:
            kinds = {type(v) for v in schema["enum"]}
            schema["type"] = {int: "integer", str: "string", float: "number"}[kinds.pop()]
        if "exclusiveMinimum" in schema:
            schema["minimum"], schema["exclusiveMinimum"] = schema["exclusiveMinimum"], True
        if "exclusiveMaximum" in schema:
            schema["maximum"], schema["exclusiveMaximum"] = schema["exclusiveMaximum"], True
        for key, value in schema.items():
            if key in DROPPED or key in ("properties", "items", "required"):
                continue
            node[key] = value
        kind = schema.get("type")
        if kind == "object":
            self._object(schema, node, model)
        elif kind == "array":
            node["items"] = self.convert(schema["items"])
        _describe(node, default)
        return node

    def _object(self, schema: dict[str, Any], node: dict[str, Any], model: str | None) -> None:
        extra = schema.get("additionalProperties")
        patterns = schema.get("patternProperties") or {}
        if len(patterns) == 1:  # a map whose keys follow a pattern: values typed, keys by CEL
            ((pattern, extra),) = patterns.items()
            schema = {**schema, "propertyNames": {"pattern": pattern}}
        if "properties" in schema:
            node["properties"] = {
                key: self._property(model, key, value)
                for key, value in schema["properties"].items()
            }
            if schema.get("required"):
                node["required"] = list(schema["required"])
            rules = CEL_RULES.get(model or "", [])
            if rules:
                node["x-kubernetes-validations"] = copy.deepcopy(rules)
        elif isinstance(extra, dict) and extra.get("type") == "string":
            node["additionalProperties"] = {"type": "string"}
            pattern = schema.get("propertyNames", {}).get("pattern")
            if pattern:
                node["x-kubernetes-validations"] = [
                    {
                        "rule": f"self.all(k, k.matches('{pattern}'))",
                        "message": "keys must be letters, digits and _ (not starting with a digit)",
                    }
                ]
        else:
            node["x-kubernetes-preserve-unknown-fields"] = True

    def _property(self, model: str | None, key: str, value: dict[str, Any]) -> dict[str, Any]:
        node = self.convert(value)
        rules = FIELD_CEL_RULES.get((model or "", key))
        if rules:
            node["x-kubernetes-validations"] = copy.deepcopy(rules)
        return node


def spec_schema() -> dict[str, Any]:
    """The structural schema of `spec`, from PeakNetPipelineSpec (pipeline + cluster models)."""
    raw = PeakNetPipelineSpec.model_json_schema(by_alias=True)
    converter = Converter(raw.get("$defs", {}))
    node = converter.convert({k: v for k, v in raw.items() if k != "$defs"}, "Spec")
    node["description"] = raw.get("description", "").strip()
    return node


PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {
        "name": "Inference",
        "type": "string",
        "description": "Inference workers ready/desired.",
        "jsonPath": ".status.inferenceReady",
    },
    {
        "name": "Actors",
        "type": "string",
        "description": "Inference actors running/desired (and retiring).",
        "jsonPath": ".status.inferenceActors",
    },
    {
        "name": "DAQ Run",
        "type": "string",
        "description": "A service's DAQ run being written now (empty between DAQ runs).",
        "jsonPath": ".status.driver.daqRuns.current.name",
    },
    {"name": "Frames In", "type": "integer", "jsonPath": ".status.driver.framesIngested"},
    {"name": "Written", "type": "integer", "jsonPath": ".status.driver.framesWritten"},
    {"name": "Frames/s", "type": "number", "jsonPath": ".status.driver.framesPerSecond"},
    {
        "name": "Verdict",
        "type": "string",
        "description": "Is inference fed? ok, starved, backlogged, writer-bound, spilling or too-short.",
        "jsonPath": ".status.driver.verdict",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
]
SCALE = {
    "specReplicasPath": ".spec.cluster.inference.replicas",
    "statusReplicasPath": ".status.workers.inference.ready",
}


def build_crd() -> dict[str, Any]:
    """The whole CustomResourceDefinition."""
    schema = {
        "type": "object",
        "description": "A streaming Bragg-peak segmentation pipeline on its own Ray cluster.",
        "properties": {
            "apiVersion": {"type": "string", "description": "API version of the object."},
            "kind": {"type": "string", "description": "PeakNetPipeline."},
            "metadata": {"type": "object"},
            "spec": spec_schema(),
            "status": copy.deepcopy(STATUS_SCHEMA),
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": ["peaknet"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": {"status": {}, "scale": dict(SCALE)},
                    "additionalPrinterColumns": copy.deepcopy(PRINTER_COLUMNS),
                }
            ],
        },
    }


def crd_yaml() -> str:
    """The CRD as YAML, byte-stable (key order as built, fixed width)."""
    header = "# Generated by `make crd` from the pydantic models; do not edit.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=100)


def main() -> None:
    sys.stdout.write(crd_yaml())


if __name__ == "__main__":
    main()
