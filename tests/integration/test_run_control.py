"""`peaknet-pipeline stop` and `scale` from another terminal, as a user runs them: each local
run has its own embedded Ray instance, and the command finds the right one by the run's
`control.json`, however many runs are active. Every refusal is one line.

The runs are real `peaknet-pipeline run` processes (small, rate-limited, endless random
streams with `runtime.max_run_time_s` as a safety net) in tmp_path, the commands' working
directory, so the default `runs/{run_id}` lands there.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from runs import cli, wait_for

from peaknet_pipeline.errors import ANSI

SMALL_RUN = {
    "ray": {"address": "local", "include_dashboard": False},
    "source": {
        "kind": "random",
        "random": {"frame_shape": [1, 32, 32], "num_frames": 0, "rate_hz": 8},
    },
    "model": {"kind": "threshold"},
    "inference": {"num_cpus_per_actor": 0.5},
    "writer": {"min_peaks": 0},
    "monitor": {"console": False, "report_html": False},
    "runtime": {"max_run_time_s": 120},
}  # an endless stream at 8 frames/s, ended by `stop` (or by the time limit at worst)


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text and not ANSI.search(text), text
    return lines[0]


def _start(cwd: Path, run_id: str, max_actors: int) -> tuple[subprocess.Popen, Path]:
    log, config = cwd / f"{run_id}.log", cwd / "small.yaml"
    config.write_text(json.dumps(SMALL_RUN))  # YAML reads JSON
    with log.open("w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "peaknet_pipeline.cli", "run", "-c", str(config)]
            + ["--set", f"runtime.run_id={run_id}"]
            + ["--set", f"inference.max_actors={max_actors}"],
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=cwd,
        )
    return process, log


def _ended(process: subprocess.Popen, run_dir: Path) -> dict:
    """The run's report once its process has exited by itself."""
    process.wait(timeout=120)
    return json.loads((run_dir / "report.json").read_text())


@pytest.mark.slow
def test_stop_and_scale_reach_each_of_two_local_runs(tmp_path, unique_name):
    a, b = f"{unique_name}-a", f"{unique_name}-b"
    started = [_start(tmp_path, a, max_actors=2), _start(tmp_path, b, max_actors=1)]
    try:
        (run_a, log_a), (run_b, log_b) = started
        for run_id, (process, log) in zip((a, b), started, strict=True):
            wait_for(
                f"{run_id} to start",
                lambda log=log, r=run_id, p=process: (
                    p.poll() is not None or f"run {r}: " in log.read_text()
                ),
                120,
                0.2,
            )
            assert process.poll() is None, log.read_text()
            wait_for(
                f"{run_id} to say how to reach it",
                lambda log=log, r=run_id: f"peaknet-pipeline stop {r}`" in log.read_text(),
                10,
                0.1,
            )
            reach = json.loads((tmp_path / "runs" / run_id / "control.json").read_text())
            assert reach["run_id"] == run_id and reach["address"] and reach["namespace"]

        unknown = cli("stop", "nope", cwd=tmp_path)
        assert unknown.returncode == 2
        assert _one_line(unknown.stderr) == (
            f"peaknet-pipeline stop: no running pipeline 'nope' under runs/ "
            f"(running there: {a}, {b})"
        )

        refused = cli("scale", b, "--inference", "2", cwd=tmp_path)  # max_actors 1
        assert refused.returncode == 2
        line = _one_line(refused.stderr)
        assert "Error" not in line and "--set inference.max_actors=N" in line, line
        assert line.startswith(f"peaknet-pipeline scale: --inference 2: run {b} allows 1 to 1 ")

        grown = cli("scale", a, "--inference", "2", cwd=tmp_path)
        assert grown.returncode == 0, grown.stderr
        assert f"run {a}: inference actors 1 -> 2 requested" in grown.stdout
        wait_for("a's second actor", lambda: "1 -> 2 actors" in log_a.read_text(), 60, 0.2)

        stopped = cli("stop", b, cwd=tmp_path)
        assert stopped.returncode == 0, stopped.stderr
        assert "peaknet-pipeline stop" in _ended(run_b, tmp_path / "runs" / b)["ended_by"]
        assert run_a.poll() is None, "stopping b stopped a"
        assert not (tmp_path / "runs" / b / "control.json").exists()

        stopped = cli("stop", a, cwd=tmp_path)
        assert stopped.returncode == 0, stopped.stderr
        report = _ended(run_a, tmp_path / "runs" / a)
        assert "peaknet-pipeline stop" in report["ended_by"]
        assert sorted(s["actor_id"] for s in report["inference"]) == [
            "inference-0",
            "inference-1",
        ]
    finally:
        for process, _ in started:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_stop_with_no_run_active_is_one_line_and_needs_no_ray(tmp_path):
    for command in (["stop", "nope"], ["scale", "nope", "--inference", "2"]):
        result = cli(*command, cwd=tmp_path)
        assert result.returncode == 2
        assert _one_line(result.stderr) == (
            f"peaknet-pipeline {command[0]}: no running pipeline 'nope' under runs/ "
            "(none is running there)"
        )
