"""The README's local commands, in the README's order, as written, on a fresh clone (issue 20,
"done when"): a scratch directory stands for the repository root (examples/, the Makefile,
pyproject.toml and .venv linked into it, nothing else: no runs/), and each command runs there
as a user types it, with .venv/bin on PATH as after activating it. Every section of the local
part of the README either runs here or says why not; a command that fails as written fails
this test. Three pipeline runs (the demo, the threshold oracle, the replay) and a few cheap
commands."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import h5py
import pytest

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
LOCAL = README.split("\n## Two commands\n", 1)[1].split("\n## Kubernetes\n", 1)[0]
LINKED = ("examples", "Makefile", "pyproject.toml", ".venv")

# Sections whose commands run here, and why the others do not.
RUN = {"Two commands", "Running", "Replaying files"}
NOT_RUN = {
    "Scaling inference while a run streams": "needs a run streaming in another terminal",
    "Sweeps": "eight runs, minutes; test_sweep_cli.py runs a small sweep through the CLI",
    "Demo weights": "training takes minutes; test_train_cli.py runs `train` on tiny frames",
    "Live data from LCLStreamer": "two processes talking over sockets; test_pipeline.py runs it",
    "The output files in CrystFEL": "CrystFEL is not installed here",
    "Running through a beamtime": "a service runs until stopped from another terminal; "
    "test_service_runs.py and test_service_restart.py run it with push and stop",
    "Live indexing with CrystFEL": "CrystFEL is not installed here; test_live_feed.py reads "
    "the feed as indexamajig does",
    "Crystals that index": "CrystFEL is not installed here; test_crystal.py checks the spots "
    "against the lattice",
    "Metrics (Prometheus)": "curl against a run still running",
    "Profiling": "Nsight Systems and a GPU",
}
# Commands in those sections that are not run, and why.
SKIPPED = {
    "make test": "the whole suite, this test included",
    "make demo TORCH_SPEC=": "installs a CUDA torch: a network and gigabytes",
}
PLACEHOLDER = re.compile(r"\b[A-Z][A-Z0-9_]*\b|\[|<")  # FILE, RUN, N, [--set ...], <run id>


def sections(text: str) -> dict[str, str]:
    """{heading: its text up to the next heading of any level}."""
    parts = re.split(r"^#{2,4} (.+)$", "## Two commands\n" + text, flags=re.M)[1:]
    return dict(zip(parts[::2], parts[1::2]))


def commands(text: str) -> list[str]:
    """Shell commands of the indented code blocks of `text`: continuations joined, trailing
    comments dropped; usage synopses (placeholders in capitals, brackets) left out."""
    lines = [line[4:] for line in text.splitlines() if line.startswith("    ")]
    joined = re.sub(r"\\\n\s*", "", "\n".join(lines))
    found = []
    for line in joined.splitlines():
        command = re.sub(r"\s+#\s.*$", "", line).strip()
        if not command.startswith(("make ", ".venv/bin/", "peaknet-pipeline ")):
            continue
        if any(command.startswith(skipped) for skipped in SKIPPED):
            continue
        if not PLACEHOLDER.search(command.replace("TORCH_SPEC", "")):
            found.append(command)
    return found


def shell(command: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{cwd / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=240
    )


def make_recipe(target: str, cwd: Path) -> str:
    """What `make TARGET` runs, once the venv is installed (make -n prints it)."""
    dry = shell(f"make -n -s {target}", cwd)
    lines = dry.stdout.strip().splitlines()
    assert dry.returncode == 0 and len(lines) == 1, (
        f"`make -n {target}` would do more than run it (is .venv out of date? make install): "
        + dry.stdout
        + dry.stderr
    )
    return lines[0]


def test_every_local_section_is_run_or_says_why_not():
    found = {heading for heading, text in sections(LOCAL).items() if commands(text)}
    assert found <= RUN | set(NOT_RUN), found - RUN - set(NOT_RUN)
    assert RUN <= set(sections(LOCAL)), RUN - set(sections(LOCAL))


@pytest.mark.slow
def test_the_readme_commands_in_order_on_a_fresh_clone(tmp_path):
    for name in LINKED:
        (tmp_path / name).symlink_to(REPO / name)
    todo = [
        c for heading, text in sections(LOCAL).items() if heading in RUN for c in commands(text)
    ]
    assert todo[0] == "make demo" and any("replay.yaml" in c for c in todo), todo

    runs: list[Path] = []  # run directories, in the order the commands made them
    for command in todo:
        argv = make_recipe(command.split()[1], tmp_path) if command.startswith("make ") else command
        done = shell(argv, tmp_path)
        assert done.returncode == 0, f"{command}: exit {done.returncode}\n{done.stderr[-3000:]}"
        runs += sorted(run_directories(tmp_path) - set(runs))
        if " evaluate " in argv:  # the newest demo run, whatever ran since
            demo = [r for r in runs if r.parent.name == "demo"]
            assert done.stdout.startswith(f"run {demo[-1].name}:"), done.stdout
        if "replay.yaml" in argv:  # what it replayed: the newest demo run's first file
            replayed(runs[-1], [r for r in runs if r.parent.name == "demo"][-1], tmp_path)


def replayed(replay: Path, demo: Path, root: Path) -> None:
    """Issue 20, point 10: replay.yaml named runs/latest, which every run moves, so a second
    replay replayed the first. It replays the newest demo run's first file, twice, and writes
    a run directory of its own, which runs/latest names; runs/demo/latest stays the demo's
    (the `evaluate` after it checks that)."""
    assert replay.parent == (root / "runs").resolve()  # not in runs/demo/
    assert (root / "runs" / "latest").resolve() == replay
    report = json.loads((replay / "report.json").read_text())
    first = demo / "peaknet-w00-0000.cxi"
    (path,) = report["config"]["source"]["replay"]["paths"]
    assert (root / path).resolve() == first.resolve(), path
    with h5py.File(first, "r") as f:
        frames = f["/entry_1/data_1/data"].shape[0]
    assert report["accounting"]["frames_ingested"] == 2 * frames, report["accounting"]  # repeat


def run_directories(root: Path) -> set[Path]:
    """Every run directory under root/runs (a run's own, or the demo's runs/demo/)."""
    return {p.parent.resolve() for p in root.glob("runs/*/report.json")} | {
        p.parent.resolve() for p in root.glob("runs/demo/*/report.json")
    }
