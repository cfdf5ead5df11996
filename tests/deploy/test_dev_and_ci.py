"""skaffold.yaml, tests/e2e/kind.sh and the GitHub workflow that runs it, checked as files
(no skaffold, kind or Actions runner here): what they build, deploy and pin agrees with the
Dockerfiles, the chart, pyproject.toml and each other, and the workflow provides what the
kind script needs."""

from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonpatch
import tomllib
import yaml

from chart_render import CHART, REPO, render_files
from peaknet_operator.spec import GROUP, KIND, ClusterSpec

SKAFFOLD = yaml.safe_load((REPO / "skaffold.yaml").read_text())
KIND_SH = REPO / "tests" / "e2e" / "kind.sh"
WORKFLOW = REPO / ".github" / "workflows" / "e2e.yaml"
CHART_META = yaml.safe_load((CHART / "Chart.yaml").read_text())
KUBERAY = CHART_META["annotations"]["peaknet.slac.stanford.edu/kuberay-version"]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PREINSTALLED_ON_RUNNER = {"docker", "kubectl"}  # GitHub's ubuntu-24.04 image


def profile(name: str) -> dict[str, Any]:
    (found,) = [p for p in SKAFFOLD["profiles"] if p["name"] == name]
    return jsonpatch.apply_patch(copy.deepcopy(SKAFFOLD), found["patches"])


def dockerfile_args(path: Path) -> set[str]:
    import dockerfile

    return {
        v.split("=")[0] for c in dockerfile.parse_file(str(path)) if c.cmd == "ARG" for v in c.value
    }


def kind_sh_var(name: str) -> str:
    (value,) = re.findall(rf"^{name}=(?:\$\{{{name}:-)?([^}}\s]+)\}}?$", KIND_SH.read_text(), re.M)
    return value


def test_skaffold_builds_both_images_from_their_dockerfiles():
    assert re.fullmatch(r"skaffold/v4beta\d+", SKAFFOLD["apiVersion"])
    artifacts = {a["image"]: a for a in SKAFFOLD["build"]["artifacts"]}
    assert {name: a["docker"]["dockerfile"] for name, a in artifacts.items()} == {
        "peaknet-operator": "images/operator/Dockerfile",
        "peaknet-pipeline": "images/pipeline/Dockerfile",
    }
    for artifact in artifacts.values():
        assert artifact["context"] == "."
        args = set(artifact["docker"].get("buildArgs", {}))
        assert args <= dockerfile_args(REPO / artifact["docker"]["dockerfile"])
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["image"]["repository"] == "peaknet-operator"
    assert ClusterSpec().image.split(":")[0] == "peaknet-pipeline"


def test_skaffold_deploys_the_pinned_kuberay_and_this_chart_with_its_image():
    kuberay, ours = SKAFFOLD["deploy"]["helm"]["releases"]
    assert (kuberay["remoteChart"], kuberay["version"]) == ("kuberay-operator", KUBERAY)
    assert (REPO / ours["chartPath"]).resolve() == CHART
    assert ours["setValueTemplates"] == {
        "image.repository": "{{.IMAGE_REPO_peaknet_operator}}",
        "image.tag": "{{.IMAGE_TAG_peaknet_operator}}",
    }
    import helm_python

    values: dict[str, Any] = {"image": {"repository": "r", "tag": "t"}}
    for key, value in ours["setValues"].items():
        values |= helm_python.parse_set_string(f"{key}={value}")
    rendered = "".join(render_files(values).values())
    assert "namespace: default" in rendered  # the examples' namespace gets the driver's role


def test_the_kind_profile_loads_cpu_images_and_the_demo_profile_runs_the_example():
    kind = profile("kind")
    assert kind["build"]["local"]["push"] is False
    (pipeline,) = [a for a in kind["build"]["artifacts"] if a["image"] == "peaknet-pipeline"]
    assert pipeline["docker"]["buildArgs"] == {"TORCH_VARIANT": "cpu"}
    demo = profile("demo")
    assert demo["manifests"]["rawYaml"] == ["examples/run.yaml"]
    (allow,) = demo["resourceSelector"]["allow"]
    assert allow["groupKind"] == f"{KIND}.{GROUP}"
    assert demo["deploy"]["helm"] == SKAFFOLD["deploy"]["helm"]  # added to, not replaced


def test_kind_script_pins_agree_with_the_chart():
    assert kind_sh_var("KUBERAY_VERSION") == KUBERAY
    node = kind_sh_var("KIND_NODE_IMAGE")
    minor = int(re.fullmatch(r"kindest/node:v1\.(\d+)\.\d+", node)[1])
    assert minor >= int(re.match(r">=\s*1\.(\d+)", CHART_META["kubeVersion"])[1])
    text = KIND_SH.read_text()
    assert "--build-arg TORCH_VARIANT=cpu" in text
    images = re.search(r"^IMAGES=\((.+)\)$", text, re.M)[1].split()
    assert images == ['"peaknet-pipeline:$VERSION"', '"peaknet-operator:$VERSION"']
    for index, image in enumerate(("pipeline", "operator")):
        assert re.search(
            rf"-f images/{image}/Dockerfile[^\n]*\\?\n?[^\n]*-t \"\${{IMAGES\[{index}\]}}\"", text
        )
    assert 'kubectl apply -n "$NS" -f examples/run.yaml' in text
    assert subprocess.run(["bash", "-n", str(KIND_SH)]).returncode == 0


def workflow() -> dict[str, Any]:
    doc = yaml.safe_load(WORKFLOW.read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as true
    return doc


def step_texts(job: dict[str, Any]) -> list[str]:
    return [yaml.safe_dump(step) for step in job["steps"]]


def test_the_workflow_provides_what_the_kind_script_needs():
    doc = workflow()
    assert "pull_request" in doc["on"] and "workflow_dispatch" in doc["on"]
    (job,) = doc["jobs"].values()
    assert job["runs-on"].startswith("ubuntu") and job["timeout-minutes"] >= 60
    steps = job["steps"]
    uses = [s.get("uses", "") for s in steps]
    assert uses[0].startswith("actions/checkout@")
    (python,) = [s for s in steps if s.get("uses", "").startswith("actions/setup-python@")]
    image_python = re.search(r"-py(\d)(\d+)", (REPO / "images/pipeline/Dockerfile").read_text())
    assert python["with"]["python-version"] == f"{image_python[1]}.{image_python[2]}"
    (required,) = re.findall(r"^require (.+)$", KIND_SH.read_text(), re.M)
    texts = step_texts(job)
    for tool in required.split():
        assert tool in PREINSTALLED_ON_RUNNER or any(
            f"install {tool}" in t.lower() or f"setup-{tool}" in t for t in texts
        ), f"nothing in the workflow installs {tool}"
    (install,) = [t for t in texts if "make install" in t]
    torch = re.search(r"TORCH_SPEC \?= (torch==\S+)", (REPO / "Makefile").read_text())[1]
    assert torch in install and "whl/cpu" in install
    (run,) = [s for s in steps if "tests/e2e/test_kind.py" in s.get("run", "")]
    assert run["env"]["PEAKNET_E2E_REQUIRED"] == "1"  # a runner without kind fails, not skips
    (logs,) = [s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@")]
    assert logs["if"] == "failure()" and logs["with"]["path"] == run["env"]["OUT"]
    assert any(m.startswith("kind:") for m in PYPROJECT["tool"]["pytest"]["ini_options"]["markers"])
