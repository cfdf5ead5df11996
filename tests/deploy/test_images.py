"""The Dockerfiles, parsed with a real Dockerfile parser (the `dockerfile` package, Docker's
own Go parser): base images pinned, versions agreeing with pyproject.toml, the Makefile, the
operator's models and the chart's default tags, non-root users, labels, and build contexts
that send only what is copied. No image is built here (no Docker engine): the kind suite
builds both."""

from __future__ import annotations

import fnmatch
import posixpath
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from chart_render import CHART, REPO
from peaknet_operator.spec import ClusterSpec

PIPELINE = REPO / "images" / "pipeline" / "Dockerfile"
OPERATOR = REPO / "images" / "operator" / "Dockerfile"
OPERATOR_REQUIREMENTS = REPO / "images" / "operator" / "requirements.txt"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
HEAVY = {"ray", "torch", "transformers", "h5py", "hdf5plugin", "scipy", "zmq", "pynng"}


def commands(path: Path) -> tuple:
    import dockerfile

    return dockerfile.parse_file(str(path))


def final_stage(path: Path) -> list:
    cmds = list(commands(path))
    last = max(i for i, c in enumerate(cmds) if c.cmd == "FROM")
    return cmds[last:]


def base_images(path: Path) -> list[str]:
    return [c.value[0] for c in commands(path) if c.cmd == "FROM"]


def arg_defaults(path: Path) -> dict[str, str]:
    return dict(v.split("=", 1) for c in commands(path) if c.cmd == "ARG" for v in c.value)


def labels(path: Path) -> dict[str, str]:
    args = arg_defaults(path)
    out = {}
    for c in final_stage(path):
        if c.cmd == "LABEL":
            for key, value in zip(c.value[::2], c.value[1::2]):
                value = value.strip('"')
                out[key] = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], value)
    return out


def requirement(name: str) -> Requirement:
    """The project's requirement on `name` (dependencies or the operator extra)."""
    deps = (
        PYPROJECT["project"]["dependencies"]
        + PYPROJECT["project"]["optional-dependencies"]["operator"]
    )
    (req,) = [Requirement(d) for d in deps if Requirement(d).name.lower() == name.lower()]
    return req


def pinned(req: Requirement) -> str:
    (spec,) = req.specifier
    assert spec.operator == "==", f"{req.name} is not pinned exactly in pyproject.toml"
    return spec.version


def test_base_images_are_pinned_to_full_versions():
    for path in (PIPELINE, OPERATOR):
        for image in base_images(path):
            name, _, tag = image.partition(":")
            assert tag and tag != "latest", image
            assert re.search(r"\d+\.\d+\.\d+", tag), f"{image}: not a full version"


def test_the_pipeline_image_is_rays_image_of_the_pinned_versions():
    (base,) = base_images(PIPELINE)
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)", base)
    assert match, base
    ray = pinned(requirement("ray"))
    assert match[1] == ray == ClusterSpec().ray_version  # image, package, the RayCluster's
    python = f"{match[2]}.{match[3]}"
    assert python + ".0" in SpecifierSet(PYPROJECT["project"]["requires-python"])
    (operator_python,) = {re.match(r"python:(\d+\.\d+)\.", b)[1] for b in base_images(OPERATOR)}
    assert python == operator_python
    checks = [
        c.value[0] for c in commands(PIPELINE) if c.cmd == "RUN" and "ray.__version__" in c.value[0]
    ]
    assert checks and all(f"'{ray}'" in c for c in checks)


def test_torch_default_matches_the_makefile_and_the_cpu_variant_exists():
    args = arg_defaults(PIPELINE)
    makefile = (REPO / "Makefile").read_text()
    (spec,) = re.findall(r"^TORCH_SPEC \?= torch==(\S+)", makefile, re.M)
    assert args["TORCH_VERSION"] == spec
    assert args["TORCH_VERSION"] in requirement("torch").specifier
    assert args["TORCH_VARIANT"] == "cu128"  # CUDA by default ...
    run = next(c.value[0] for c in commands(PIPELINE) if c.cmd == "RUN" and "torch==" in c.value[0])
    assert "whl/${TORCH_VARIANT}" in run  # ... and --build-arg TORCH_VARIANT=cpu selects CPU


def operator_pins() -> dict[str, str]:
    lines = OPERATOR_REQUIREMENTS.read_text().splitlines()
    reqs = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    return {r.name: pinned(r) for r in reqs}


def test_operator_image_pins_satisfy_pyproject_and_hold_no_ray_or_torch():
    pins = operator_pins()
    for name, version in pins.items():
        assert version in requirement(name).specifier, f"{name}=={version} vs pyproject"
    assert not {n.lower() for n in pins} & HEAVY
    install = [c.value[0] for c in commands(OPERATOR) if c.cmd == "RUN"]
    assert any("-r /tmp/requirements.txt" in r for r in install)
    assert any("--no-deps ." in r for r in install)  # the package without its pipeline deps


CLOSURE_CHECK = r"""
import sys
sys.path.insert(0, sys.argv[1])
import yaml
from peaknet_operator import crd, handlers, main
from peaknet_operator.render import render_all
main.parse_args(["--standalone"])
spec, sizes, problems, _ = handlers.accept(yaml.safe_load(open(sys.argv[2]))["spec"])
assert not problems, problems
render_all("demo", "ns", spec, sizes)
crd.crd_yaml()
print(sorted(m for m in sys.modules if m.split(".")[0] in ("ray", "torch")))
"""


def distribution_closure(names: list[str]) -> set[str]:
    """The distributions `names` pull in (their requirements without extras, recursively)."""
    from importlib import metadata

    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = metadata.distribution(todo.pop()).metadata["Name"].lower()
        if name in seen:
            continue
        seen.add(name)
        for line in metadata.requires(name) or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def image_site_packages(dists: set[str], dest: Path) -> None:
    """What `pip install -r requirements.txt` and `pip install --no-deps .` put in the
    image: the distributions' top-level files, linked from this venv, and our packages."""
    from importlib import metadata

    for name in dists:
        dist = metadata.distribution(name)
        for top in {f.parts[0] for f in dist.files or [] if f.parts[0] != ".."}:
            if not (dest / top).exists():
                (dest / top).symlink_to(dist.locate_file(top))
    (dest / "peaknet_pipeline").symlink_to(REPO / "pipeline" / "peaknet_pipeline")
    (dest / "peaknet_operator").symlink_to(REPO / "operator" / "peaknet_operator")


def test_the_operator_runs_on_its_image_packages_only(tmp_path):
    """Imports the operator and renders a resource in a fresh interpreter that sees only the
    standard library, this package and the image's pins with their own dependencies (no
    site-packages): what the image lacks would fail here, not in the cluster."""
    dists = distribution_closure(list(operator_pins()))
    assert not dists & HEAVY
    image_site_packages(dists, tmp_path)
    example = REPO / "examples" / "run.yaml"
    result = subprocess.run(
        [sys.executable, "-S", "-c", CLOSURE_CHECK, str(tmp_path), str(example)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"  # neither Ray nor torch was imported


def test_images_run_as_non_root_and_carry_labels():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for path, expected_uid in ((PIPELINE, 1000), (OPERATOR, values["runAsUser"])):
        users = [c.value[0] for c in final_stage(path) if c.cmd == "USER"]
        assert users, f"{path}: no USER"
        uid = users[-1].split(":")[0]
        assert uid.isdigit() and int(uid) == expected_uid != 0, path
        found = labels(path)
        assert found["org.opencontainers.image.version"] == VERSION, path
        assert found["org.opencontainers.image.licenses"] == PYPROJECT["project"]["license"]["text"]
        assert found["org.opencontainers.image.base.name"] == base_images(path)[-1]
        assert found["org.opencontainers.image.title"] == f"peaknet-{path.parent.name}"


def test_default_tags_agree_with_the_package_version():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert chart["appVersion"] == chart["version"] == VERSION
    assert values["image"] == {
        "repository": "peaknet-operator",
        "tag": VERSION,
        "pullPolicy": "IfNotPresent",
    }
    assert ClusterSpec().image == f"peaknet-pipeline:{VERSION}"
    for example in ("run.yaml", "run-gpu.yaml"):
        run = yaml.safe_load((REPO / "examples" / example).read_text())
        assert run["spec"]["cluster"]["image"].endswith(f"peaknet-pipeline:{VERSION}"), example


def image_path(path: Path, source: str) -> str:
    """Where the final stage of `path` puts the repository file `source` (COPY's rule: a
    destination ending in / is a directory; a relative one is under the WORKDIR before it)."""
    workdir = "/"
    found = []
    for c in final_stage(path):
        if c.cmd == "WORKDIR":
            workdir = posixpath.join(workdir, c.value[0])
        elif c.cmd == "COPY" and source in c.value[:-1]:
            dest = posixpath.join(workdir, c.value[-1])
            many = len(c.value) > 2 or c.value[-1].endswith("/")
            found.append(posixpath.join(dest, posixpath.basename(source)) if many else dest)
    assert len(found) == 1, f"{path} copies {source} {len(found)} times"
    return posixpath.normpath(found[0])


def test_the_pipeline_image_carries_the_demo_weights_where_run_yaml_names_them():
    """Issue 20, point 8: .dockerignore left examples/ out of the image, so examples/run.yaml
    could only run random weights. The image carries the demo weights (and their sidecar), and
    run.yaml names them there."""
    weights = "examples/weights/peaknet-demo.pt"
    in_image = image_path(PIPELINE, weights)
    assert image_path(PIPELINE, "examples/weights/peaknet-demo.json") == in_image.replace(
        ".pt", ".json"
    )
    run = yaml.safe_load((REPO / "examples" / "run.yaml").read_text())
    assert run["spec"]["pipeline"]["model"]["weights_path"] == in_image


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!").rstrip("/")
        glob_tail = glob.removeprefix("**/")
        for candidate in candidates:
            if fnmatch.fnmatchcase(candidate, glob) or (
                glob != glob_tail and fnmatch.fnmatchcase(candidate.rsplit("/", 1)[-1], glob_tail)
            ):
                verdict = not negate
    return verdict


def ignore_patterns(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize("dockerfile", [PIPELINE, OPERATOR], ids=["pipeline", "operator"])
def test_the_build_context_sends_what_is_copied_and_nothing_else(dockerfile):
    copied = [
        src
        for c in commands(dockerfile)
        if c.cmd == "COPY" and not any(f.startswith("--from") for f in c.flags)
        for src in c.value[:-1]
    ]
    for patterns in (
        ignore_patterns(Path(f"{dockerfile}.dockerignore")),
        ignore_patterns(REPO / ".dockerignore"),
    ):
        for src in copied:
            assert (REPO / src).exists(), src
            assert not ignored(src, patterns), f"{src} is ignored but copied"
            assert not ignored(f"{src.rstrip('/')}/x.py", patterns) or not (REPO / src).is_dir()
        for kept_out in (".venv/bin/python", "tests/conftest.py", ".git/HEAD", "runs/x.cxi"):
            assert ignored(kept_out, patterns), kept_out
        assert ignored("pipeline/peaknet_pipeline/__pycache__/x.pyc", patterns)
