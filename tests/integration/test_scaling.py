"""The elastic inference pool on a plain local Ray (no operator): the desired count changes
mid-run through the run's control actor and the `peaknet-pipeline scale` command, and every
event still reaches the files exactly once.

The driver runs in a thread of the test process (on the session's Ray); the test plays the
operator's part from outside, as a user would.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
from runs import DriverThread, event_ids, random_run, wait_control, wait_pool

from peaknet_pipeline.config import PipelineConfig

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _config(tmp_path: Path, run_id: str, frames: int, rate_hz: float) -> PipelineConfig:
    return random_run(
        tmp_path,
        run_id,
        frames,
        rate_hz,
        ("inference.max_actors=3", "monitor.progress_interval_s=0.5"),
    )


def _cli(*args: str, by_address: bool = True) -> subprocess.CompletedProcess:
    """`peaknet-pipeline scale|stop ...` against the test session's Ray: by its address (as
    for a run on a cluster), or as RUN names it (the run's directory: its control.json)."""
    import ray

    where = ["--address", ray.get_runtime_context().gcs_address, "--namespace", "peaknet-tests"]
    return subprocess.run(
        [sys.executable, "-m", "peaknet_pipeline.cli", *args, *(where if by_address else [])],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _scale_cli(run: str, count: int, by_address: bool = True) -> subprocess.CompletedProcess:
    return _cli("scale", run, "--inference", str(count), by_address=by_address)


def test_scaling_up_and_down_mid_run_loses_and_duplicates_nothing(
    ray_session, tmp_path, unique_name, caplog
):
    import ray

    caplog.set_level(logging.INFO, logger="peaknet_pipeline.pool")

    # An endless, rate-limited stream, stopped from outside once the pool went 1 -> 3 -> 1.
    driver = DriverThread(_config(tmp_path, unique_name, frames=0, rate_hz=40))
    driver.start()
    control = wait_control(unique_name)
    wait_pool(control, running=1)

    grown = _scale_cli(str(tmp_path / unique_name), 3, by_address=False)  # by its control.json
    assert grown.returncode == 0, grown.stderr
    assert f"run {unique_name}: inference actors 1 -> 3 requested" in grown.stdout
    wait_pool(control, running=3, starting=0)
    # Two scale-downs in a row, the second while the first may still be draining: merged.
    ray.get(control.set_inference.remote(2))
    ray.get(control.set_inference.remote(1))
    state = wait_pool(control, running=1, retiring=0)
    assert state["desired"] == 1
    retired = re.findall(
        r"inference pool: (inference-\d) retired: finished its batches", caplog.text
    )
    assert sorted(retired) == ["inference-1", "inference-2"], caplog.text

    refused = _scale_cli(unique_name, 9)
    assert refused.returncode == 2
    assert refused.stderr.strip() == (  # one line: no exception name, and how to allow more
        f"peaknet-pipeline scale: --inference 9: run {unique_name} allows 1 to 3 inference "
        "actors (inference.max_actors); a run started with --set inference.max_actors=N allows "
        "up to N"
    )

    stopped = _cli("stop", unique_name)
    assert stopped.returncode == 0, stopped.stderr
    driver.join(timeout=120)
    assert not driver.is_alive() and driver.error is None, driver.error
    report = driver.report
    assert report["exit_code"] == 4, report["errors"]  # stopped early, every frame written
    assert report["ended_by"] == "peaknet-pipeline stop" and report["stopped_early"]
    acc = report["accounting"]
    frames = acc["frames_ingested"]
    assert acc["accounted"] and frames == acc["events_written"] > 0
    by_id = {s["actor_id"]: s for s in report["inference"]}
    assert sorted(by_id) == ["inference-0", "inference-1", "inference-2"]
    assert by_id["inference-1"]["frames_out"] + by_id["inference-2"]["frames_out"] > 0
    assert sum(s["frames_out"] for s in by_id.values()) == frames  # retired ones counted
    assert event_ids(tmp_path / unique_name) == list(range(frames))  # exactly once each


def test_an_unknown_run_is_a_one_line_error(ray_session):
    result = _scale_cli("no-such-run", 2)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "peaknet-pipeline scale: no running pipeline 'no-such-run' in Ray namespace "
        "'peaknet-tests' (none is running there)"
    )
