"""`peaknet-pipeline train` as the README shows it never replaces the shipped demo weights: it
writes into a new directory under writer.output_dir and says how to use the result; an
existing `--output` is replaced only with `--force`. The real command, tiny frames, one step."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEMO_FILES = ("examples/configs/demo.yaml", "examples/weights/peaknet-demo.pt")
TINY = ("--steps", "1", "--batch-size", "1", "--no-eval", "--progress-every", "1")


def train(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "peaknet_pipeline.cli", "train"]
    command += ["--config", "examples/configs/demo.yaml", *TINY]
    command += ["--set", "source.random.frame_shape=[1,64,64]", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=240)


def copy_demo(directory: Path) -> Path:
    """A working directory holding copies of the demo's config and weights (copies, not links:
    a defect here must not be able to damage the repository's weights)."""
    for name in DEMO_FILES:
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / name, directory / name)
    return directory


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_train_leaves_the_demo_weights_alone_and_says_how_to_use_its_own(tmp_path):
    weights = copy_demo(tmp_path) / DEMO_FILES[1]
    before = digest(weights)
    done = train(tmp_path)
    assert done.returncode == 0, done.stderr
    assert digest(weights) == before
    written = list((tmp_path / "runs" / "demo").glob("train-*/peaknet.pt"))
    assert len(written) == 1, list(tmp_path.rglob("*"))
    assert written[0].with_suffix(".json").is_file()
    relative = written[0].relative_to(tmp_path)
    assert done.stdout.strip().splitlines()[-1] == (
        "run with these weights: peaknet-pipeline run --config examples/configs/demo.yaml "
        f"--set model.weights_path={relative}"
    )


def test_an_existing_output_is_replaced_only_with_force(tmp_path):
    target = tmp_path / "weights.pt"
    target.write_bytes(b"precious")
    refused = train(copy_demo(tmp_path), "--output", str(target))
    assert refused.returncode == 2
    assert f"--output {target}: the file exists; pass --force" in refused.stderr
    assert target.read_bytes() == b"precious"
    forced = train(tmp_path, "--output", str(target), "--force")
    assert forced.returncode == 0, forced.stderr
    assert target.read_bytes() != b"precious" and target.with_suffix(".json").is_file()
