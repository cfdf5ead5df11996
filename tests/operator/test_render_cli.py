"""`peaknet-operator render -f RESOURCE.yaml`: the real console script prints every child the
operator would create, after the operator's own acceptance checks. Its output (not a
re-rendering in the test) is what is validated: every document parses, RayCluster and RayJob
against KubeRay v1.7's schemas, the built-in kinds with kubernetes-validate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from conftest import EXAMPLE, EXAMPLE_GPU, REPO, example, kuberay_dir
from peaknet_operator.handlers import FINGERPRINT

SCRIPT = Path(sys.executable).parent / "peaknet-operator"
KUBERAY_KINDS = {"RayCluster": "raycluster", "RayJob": "rayjob"}


def run(*args: str) -> subprocess.CompletedProcess:
    assert SCRIPT.is_file(), f"the console script is not installed at {SCRIPT}"
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=60, cwd=REPO
    )


def rendered(path: Path, *extra: str) -> list[dict[str, Any]]:
    done = run("render", "-f", str(path), *extra)
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d is not None]
    assert all(isinstance(d, dict) and d.get("kind") for d in docs), done.stdout[:500]
    return docs


@pytest.mark.parametrize("path", [EXAMPLE, EXAMPLE_GPU], ids=["run", "run-gpu"])
def test_render_prints_every_child_valid_for_kuberay(path):
    docs = rendered(path)
    assert {"ConfigMap", "PodDisruptionBudget", "RayCluster", "RayJob"} <= {d["kind"] for d in docs}
    name = example(path)["metadata"]["name"]
    for doc in docs:
        assert doc["metadata"]["namespace"] == "default", doc["kind"]
        # What kopf.adopt adds except the owner reference (its uid exists only in a cluster).
        assert "ownerReferences" not in doc["metadata"]
        assert doc["metadata"]["name"].startswith(name)
    (raycluster,) = [d for d in docs if d["kind"] == "RayCluster"]
    assert FINGERPRINT in raycluster["metadata"]["annotations"]
    schemas = kuberay_dir()
    if schemas is None:
        pytest.skip("KubeRay's v1 schemas not found ($KUBERAY_SCHEMAS or ../shared/kuberay)")
    for doc in docs:
        if doc["kind"] in KUBERAY_KINDS:
            schema_file = schemas / f"{KUBERAY_KINDS[doc['kind']]}.v1.schema.json"
            jsonschema.validate(doc, json.loads(schema_file.read_text()))


def test_render_json_and_namespace():
    done = run("render", "-f", str(EXAMPLE), "-o", "json", "-n", "beamtime")
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert listed["kind"] == "List" and listed["apiVersion"] == "v1"
    assert {d["metadata"]["namespace"] for d in listed["items"]} == {"beamtime"}
    assert [d["kind"] for d in listed["items"]] == [d["kind"] for d in rendered(EXAMPLE)]


@pytest.mark.slow  # kubernetes-validate loads its schema definitions per object: ~1-3 s each
def test_rendered_built_in_kinds_are_valid_kubernetes():
    import kubernetes_validate
    from kubernetes_validate.utils import latest_version

    version = f"{latest_version()}.0"
    for path in (EXAMPLE, EXAMPLE_GPU):
        for doc in rendered(path):
            if doc["kind"] not in KUBERAY_KINDS:
                kubernetes_validate.validate(doc, version, strict=True)


def test_a_refused_spec_exits_2_naming_each_field(tmp_path):
    manifest = example()
    manifest["spec"]["pipeline"]["inference"]["num_actors"] = 3  # disagrees with 1 x 1
    manifest["spec"]["cluster"]["ingest"]["memory"] = "256Mi"  # the object store cannot fit
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(manifest))
    done = run("render", "-f", str(bad))
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert any("spec.pipeline.inference.num_actors=3" in line for line in lines), lines
    for line in lines[1:]:
        assert line.lstrip(" -").startswith("spec."), line

    manifest = example()
    manifest["spec"]["cluster"]["ingest"]["memory"] = "256Mi"
    bad.write_text(yaml.safe_dump(manifest))
    done = run("render", "-f", str(bad))
    assert done.returncode == 2 and "spec.cluster.ingest.memory=256Mi" in done.stderr


def test_not_a_peaknetpipeline_exits_2(tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    done = run("render", "-f", str(other))
    assert done.returncode == 2 and "PeakNetPipeline" in done.stderr


def test_without_a_subcommand_the_operator_options_are_unchanged():
    from peaknet_operator.main import parse_args

    args = parse_args(["--standalone", "-n", "a", "--status-interval-s=2"])
    assert args.standalone and args.namespace == ["a"] and args.status_interval_s == 2.0
