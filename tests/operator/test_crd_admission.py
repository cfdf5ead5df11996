"""CRD admission: the checks the API server runs when a CRD is created (tests/operator/admission,
each rule taken from k8s.io/apiextensions-apiserver). Real clusters accept KubeRay's CRDs, so the
stand-in must too; it must accept the PeakNetPipeline CRD and catch every kind of CRD a real API
server refuses that we know how to get wrong."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from admission.cel_cost import PER_CALL_LIMIT, decl_type, estimate
from admission.crd import compile_rule, validate_crd

from conftest import CRD_FILE, kuberay_dir
from peaknet_operator.crd import build_crd

SCHEMA = "spec.versions[0].schema.openAPIV3Schema"
EXTRA_RULE = "self.all(k, k.matches('^[A-Za-z_][A-Za-z0-9_]*$'))"


@functools.cache
def _kuberay_crd(name: str) -> dict[str, Any]:
    directory = kuberay_dir()
    if directory is None or not (Path(directory) / name).is_file():
        pytest.skip(f"KubeRay's CRD {name} not found (set KUBERAY_SCHEMAS or ../shared/kuberay)")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load((Path(directory) / name).read_text(), Loader=loader)


def _schema(crd: dict[str, Any]) -> dict[str, Any]:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


@pytest.mark.parametrize("name", ["ray.io_rayclusters.yaml", "ray.io_rayjobs.yaml"])
def test_kuberays_own_crds_are_accepted(name):
    assert validate_crd(_kuberay_crd(name)) == []


def test_the_peaknetpipeline_crd_is_accepted():
    assert validate_crd(yaml.safe_load(CRD_FILE.read_text())) == []
    assert validate_crd(build_crd()) == []


def test_conditions_keyed_on_an_optional_type_are_refused():
    """Issue 19 point 1: the CRD as it was (no `required: [type]` on the conditions item)."""
    crd = build_crd()
    _schema(crd)["properties"]["status"]["properties"]["conditions"]["items"].pop("required", None)
    assert validate_crd(crd) == [
        f"{SCHEMA}.properties[status].properties[conditions].items.properties[type].default: "
        "Required value: this property is in x-kubernetes-list-map-keys, so it must have a "
        "default or be a required property"
    ]


def test_unbounded_maps_with_key_rules_exceed_the_per_call_budget():
    """Issue 19 point 1: the `extra` maps as they were (no maxProperties): ~3.9 M per call."""
    crd = build_crd()
    socket = _schema(crd)["properties"]["spec"]["properties"]["pipeline"]["properties"]["source"]
    socket = socket["properties"]["socket"]["properties"]
    for fmt in ("hdf5", "npz"):
        socket[fmt]["properties"]["extra"].pop("maxProperties")
    errors = validate_crd(crd)
    assert len(errors) == 2
    for fmt, error in zip(("hdf5", "npz"), errors, strict=True):
        assert f"properties[{fmt}].properties[extra].x-kubernetes-validations[0].rule" in error
        assert "estimated rule cost exceeds budget by factor of 3.9x" in error


def test_the_cost_model_matches_the_api_servers_arithmetic():
    """cel-go's estimate of `all` + `matches` over an unbounded map of strings: 393215 entries
    (3 MiB / 8 bytes), 10 per entry, plus 2; with maxProperties 64 it is tiny."""
    unbounded = decl_type({"type": "object", "additionalProperties": {"type": "string"}})
    assert unbounded.max_elements == 393215
    assert estimate(EXTRA_RULE, unbounded).max_cost == 3_932_152
    bounded = {"type": "object", "maxProperties": 64, "additionalProperties": {"type": "string"}}
    assert estimate(EXTRA_RULE, decl_type(bounded)).max_cost == 642 < PER_CALL_LIMIT
    program = compile_rule(EXTRA_RULE, bounded)
    assert bool(program.evaluate({"self": {"a_1": "x"}})) is True
    assert bool(program.evaluate({"self": {"1a": "x"}})) is False  # a key the rule refuses


def _at(crd: dict[str, Any], *keys: str) -> dict[str, Any]:
    node = _schema(crd)
    for key in keys:
        node = node["properties"][key]
    return node


def _version(crd: dict[str, Any]) -> dict[str, Any]:
    return crd["spec"]["versions"][0]


Mutation = Callable[[dict[str, Any]], None]
INVALID: dict[str, tuple[Mutation, str]] = {
    "missing type": (
        lambda c: _at(c, "status", "phase").pop("type"),
        "properties[phase].type: Required value: must not be empty for specified object fields",
    ),
    "additionalProperties with properties": (
        lambda c: _at(c, "status").update(additionalProperties={"type": "string"}),
        "properties[status].additionalProperties: Forbidden: additionalProperties and properties "
        "are mutual exclusive",
    ),
    "printer column type": (
        lambda c: _version(c)["additionalPrinterColumns"][0].update(type="text"),
        'additionalPrinterColumns[0].type: Invalid value: "text": must be one of '
        "boolean,date,integer,number,string",
    ),
    "scale path outside .spec": (
        lambda c: _version(c)["subresources"]["scale"].update(specReplicasPath=".status.x"),
        'scale.specReplicasPath: Invalid value: ".status.x": should be a json path under .spec',
    ),
    "scale path not an integer": (
        lambda c: _version(c)["subresources"]["scale"].update(statusReplicasPath=".status.phase"),
        "must name an integer field of the schema",
    ),
    "default of the wrong type": (
        lambda c: _at(c, "status", "observedGeneration").update(default="one"),
        "properties[observedGeneration].default: Invalid value",
    ),
    "default with unknown fields": (
        lambda c: _at(c, "status", "workers").update(default={"bogus": 1}),
        'properties[workers].default: Invalid value: "object": must not have unknown fields',
    ),
    "CEL rule that does not compile": (
        lambda c: _at(c, "status").update(
            {"x-kubernetes-validations": [{"rule": "self.nosuchfield == 1"}]}
        ),
        "undefined field 'nosuchfield'",
    ),
    "CEL rule that is not boolean": (
        lambda c: _at(c, "status").update({"x-kubernetes-validations": [{"rule": "self.phase"}]}),
        "cel expression must evaluate to a bool",
    ),
    "CEL function the stand-in cannot estimate": (
        lambda c: _at(c, "status").update(
            {"x-kubernetes-validations": [{"rule": "self.phase.lowerAscii() == 'x'"}]}
        ),
        "undeclared reference to 'lowerAscii'",
    ),
    "oldSelf under an atomic list": (
        lambda c: _at(c, "status", "driver", "releasedPods")["items"].update(
            {"x-kubernetes-validations": [{"rule": "self == oldSelf"}]}
        ),
        "oldSelf cannot be used on the uncorrelatable portion of the schema",
    ),
    "two storage versions": (
        lambda c: c["spec"]["versions"].append({**copy.deepcopy(_version(c)), "name": "v1"}),
        'spec.versions: Invalid value: "object": must have exactly one version marked as storage',
    ),
    "duplicate version names": (
        lambda c: c["spec"]["versions"].append({**copy.deepcopy(_version(c)), "storage": False}),
        "must contain unique version names",
    ),
    "metadata with extra fields at the root": (
        lambda c: _at(c, "metadata").update(properties={"labels": {"type": "object"}}),
        "properties[metadata]: Forbidden: must not specify anything other than name and "
        "generateName, but metadata is implicitly specified",
    ),
    "nullable list-map key": (
        lambda c: _at(c, "status", "conditions")["items"]["properties"]["type"].update(
            nullable=True
        ),
        "items.properties[type].nullable: Forbidden: this property is in "
        "x-kubernetes-list-map-keys, so it cannot be nullable",
    ),
    "list-map keys on a non-map list": (
        lambda c: _at(c, "status", "conditions").update({"x-kubernetes-list-type": "atomic"}),
        'x-kubernetes-list-type: Invalid value: "atomic": must be map if '
        "x-kubernetes-list-map-keys is non-empty",
    ),
    "array without items": (
        lambda c: _at(c, "status", "driver", "releasedPods").pop("items"),
        "properties[releasedPods].items: Required value: must be specified",
    ),
    "name not plural.group": (
        lambda c: c["metadata"].update(name="pipelines.peaknet.slac.stanford.edu"),
        'metadata.name: Invalid value: "pipelines.peaknet.slac.stanford.edu": must be '
        'spec.names.plural+"."+spec.group',
    ),
    "upper-case plural": (
        lambda c: c["spec"]["names"].update(plural="PeakNetPipelines"),
        'spec.names.plural: Invalid value: "PeakNetPipelines": a DNS-1035 label',
    ),
    "kind equal to listKind": (
        lambda c: c["spec"]["names"].update(listKind=c["spec"]["names"]["kind"]),
        'spec.names.listKind: Invalid value: "PeakNetPipeline": kind and listKind may not be '
        "the same",
    ),
    "nullable root": (
        lambda c: _schema(c).update(nullable=True),
        "openAPIV3Schema.nullable: Forbidden: nullable cannot be true at the root",
    ),
    "anyOf with a type": (
        lambda c: _at(c, "status", "phase").update(anyOf=[{"type": "string"}]),
        "properties[phase].anyOf[0].type: Forbidden: must be empty to be structural",
    ),
    "unbounded rule under an unbounded list": (
        lambda c: _at(c, "status", "driver", "releasedPods")["items"].update(
            {"x-kubernetes-validations": [{"rule": "self.matches('^[a-z0-9-]+$')"}]}
        ),
        "x-kubernetes-validations[0].rule: Forbidden: estimated rule cost exceeds budget by "
        "factor of more than 100x",
    ),
}


@pytest.mark.parametrize("kind", sorted(INVALID))
def test_each_kind_of_invalid_crd_is_refused_with_the_api_servers_message(kind):
    mutate, fragment = INVALID[kind]
    crd = build_crd()
    mutate(crd)
    errors = validate_crd(crd)
    assert any(fragment in error for error in errors), errors
