"""The README's cluster install, checked as text against what it builds and installs (no Docker
engine, registry or cluster here): issue 20, point 9 — the install went straight to
`helm install` with the chart's default `peaknet-operator:0.1.0`, an image no registry has.
Each image is built from its Dockerfile with arguments that Dockerfile declares, tagged with
the package version, pushed (or loaded into kind) before the chart is installed, and the chart
and the resource are pointed at exactly those images."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import tomllib
import yaml

from chart_render import CHART, REPO, render_files

README = (REPO / "README.md").read_text()
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
REGISTRY = "registry.test/peaknet"  # what the README's $REGISTRY stands for in these checks


def install_commands() -> list[str]:
    """The commands of the README's Kubernetes "Install" section, in order: indented code
    lines, continuations joined, comments and the example Dockerfile left out."""
    section = README.split("\n### Install\n", 1)[1].split("\n### ", 1)[0]
    lines = [line[4:] for line in section.splitlines() if line.startswith("    ")]
    joined = re.sub(r"\\\n\s*", "", "\n".join(lines))
    commands = []
    for line in joined.splitlines():
        command = re.sub(r"(^|\s+)#\s.*$", "", line)
        if command and command.split()[0] not in ("FROM", "COPY", "spec:") and line[0] != " ":
            commands.append(command)
    return commands


def expand(word: str) -> str:
    return word.replace("$REGISTRY", REGISTRY)


def docker_builds(commands: list[str]) -> list[dict]:
    builds = []
    for index, command in enumerate(commands):
        words = shlex.split(command)
        if words[:2] != ["docker", "build"]:
            continue
        flags = {"-f": [], "-t": [], "--build-arg": []}
        rest = iter(words[2:])
        context = []
        for word in rest:
            if word in flags:
                flags[word].append(next(rest))
            else:
                context.append(word)
        (dockerfile,) = flags["-f"]
        (tag,) = flags["-t"]
        builds.append(
            {
                "at": index,
                "dockerfile": dockerfile,
                "tag": expand(tag),
                "args": dict(a.split("=", 1) for a in flags["--build-arg"]),
                "context": context,
            }
        )
    return builds


def dockerfile_args(path: Path) -> set[str]:
    import dockerfile

    return {
        v.split("=")[0] for c in dockerfile.parse_file(str(path)) if c.cmd == "ARG" for v in c.value
    }


def position(commands: list[str], prefix: str) -> int:
    (index,) = [i for i, c in enumerate(commands) if c.startswith(prefix)]
    return index


def test_the_install_builds_both_images_from_their_dockerfiles_before_helm():
    commands = install_commands()
    builds = docker_builds(commands)
    assert builds, f"no image is built before {commands[0]!r}"
    assert commands[0].startswith("REGISTRY=")  # set before it is used
    images = {}
    for build in builds:
        path = REPO / build["dockerfile"]
        assert path.is_file() and build["dockerfile"].startswith("images/"), build
        assert build["context"] == ["."], build  # the repository root, as the .dockerignore says
        assert set(build["args"]) <= dockerfile_args(path), build
        name = f"peaknet-{path.parent.name}"
        assert build["tag"] == f"{REGISTRY}/{name}:{VERSION}", build
        images[name] = build["tag"]
    assert set(images) == {"peaknet-pipeline", "peaknet-operator"}
    cpu = [b for b in builds if b["args"]]
    assert [b["args"] for b in cpu] == [{"TORCH_VARIANT": "cpu"}]  # kind's pipeline image

    helm = position(commands, "helm install peaknet-operator")
    for image in images.values():
        pushed = position(commands, f"docker push {image.replace(REGISTRY, '$REGISTRY')}")
        assert pushed < helm
    kind = shlex.split(commands[position(commands, "kind load docker-image")])
    assert {expand(w) for w in kind[3:] if not w.startswith("-") and w != "peaknet"} == set(
        images.values()
    )
    assert max(b["at"] for b in builds) < position(commands, "kind load docker-image") < helm


def test_the_chart_and_the_resource_are_pointed_at_the_images_built():
    import helm_python

    commands = install_commands()
    builds = {Path(b["dockerfile"]).parent.name: b["tag"] for b in docker_builds(commands)}
    helm = shlex.split(commands[position(commands, "helm install peaknet-operator")])
    values: dict = {}
    for flag, value in zip(helm, helm[1:]):
        if flag == "--set":
            values = _merge(values, helm_python.parse_set_string(expand(value)))
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values.get("image"), f"the chart is installed with its default image: {helm}"
    assert set(values["image"]) <= set(defaults["image"])  # keys the chart has
    deployment = render_files(values)["peaknet-operator/templates/deployment.yaml"]
    (image,) = re.findall(r"image: \"?([^\"\s]+)", deployment)
    assert image == builds["operator"]

    (apply,) = [c for c in commands if c.endswith("| kubectl apply -f -")]
    edit = apply.rsplit("|", 1)[0]
    env = {**os.environ, "REGISTRY": REGISTRY}
    out = subprocess.run(
        ["bash", "-c", edit], capture_output=True, text=True, cwd=REPO, env=env, check=True
    )
    resource = yaml.safe_load(out.stdout)
    assert resource["spec"]["cluster"]["image"] == builds["pipeline"]
    assert "examples/run.yaml" in edit


def _merge(into: dict, extra: dict) -> dict:
    out = dict(into)
    for key, value in extra.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out
