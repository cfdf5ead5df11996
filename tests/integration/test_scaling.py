"""The elastic inference pool on a plain local Ray (no operator): the desired count changes
mid-run through the run's control actor and the `peaknet-pipeline scale` command, and every
event still reaches the files exactly once.

The driver runs in a thread of the test process (on the session's Ray); the test plays the
operator's part from outside, as a user would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from runs import DriverThread, event_ids, wait_control, wait_pool

from peaknet_pipeline.config import PipelineConfig

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _config(tmp_path: Path, run_id: str, frames: int, rate_hz: float, **model) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "source": {
                "random": {
                    "frame_shape": [1, 64, 64],
                    "batch_size": 4,
                    "num_frames": frames,
                    "rate_hz": rate_hz,
                    "peaks_per_frame": 3,
                }
            },
            "model": model or {"kind": "threshold", "threshold": 60.0},
            "inference": {"num_actors": 1, "max_actors": 3, "num_cpus_per_actor": 0.5},
            "writer": {"output_dir": str(tmp_path / "{run_id}"), "min_peaks": 0},
            "monitor": {"console": False, "progress_interval_s": 0.5},
            "runtime": {"run_id": run_id, "drain_timeout_s": 60},
        }
    )


def _cli(*args: str) -> subprocess.CompletedProcess:
    """`peaknet-pipeline scale|stop ...` against the test session's Ray."""
    import ray

    where = ["--address", ray.get_runtime_context().gcs_address, "--namespace", "peaknet-tests"]
    return subprocess.run(
        [sys.executable, "-m", "peaknet_pipeline.cli", *args, *where],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _scale_cli(run_id: str, count: int) -> subprocess.CompletedProcess:
    return _cli("scale", run_id, "--inference", str(count))


def test_scaling_up_and_down_mid_run_loses_and_duplicates_nothing(
    ray_session, tmp_path, unique_name
):
    import ray

    # An endless, rate-limited stream, stopped from outside once the pool went 1 -> 3 -> 1.
    driver = DriverThread(_config(tmp_path, unique_name, frames=0, rate_hz=40))
    driver.start()
    control = wait_control(unique_name)
    wait_pool(control, running=1)

    grown = _scale_cli(unique_name, 3)  # the command a user runs
    assert grown.returncode == 0, grown.stderr
    assert f"run {unique_name}: inference actors 1 -> 3 requested" in grown.stdout
    wait_pool(control, running=3, starting=0)
    # Two scale-downs in a row, the second while the first may still be draining: merged.
    ray.get(control.set_inference.remote(2))
    ray.get(control.set_inference.remote(1))
    state = wait_pool(control, running=1, retiring=0)
    assert state["desired"] == 1

    refused = _scale_cli(unique_name, 9)
    assert refused.returncode == 2
    assert "this run allows 1 to 3 inference actors (inference.max_actors)" in refused.stderr

    stopped = _cli("stop", unique_name)
    assert stopped.returncode == 0, stopped.stderr
    driver.join(timeout=120)
    assert not driver.is_alive() and driver.error is None, driver.error
    report = driver.report
    assert report["exit_code"] == 0, report["errors"]
    assert report["ended_by"] == "stopped by peaknet-pipeline stop"
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
        "peaknet-pipeline scale: no running pipeline 'no-such-run' in this Ray namespace"
    )


def test_a_retiring_actor_that_dies_is_reported_and_its_batches_are_not_lost(
    ray_session, tmp_path, unique_name
):
    import ray

    # The demo's PeakNet on 256 x 256 frames and a full Q1: a retiring actor holds batches for
    # a few hundred ms, long enough to be killed while it finishes them.
    demo_model = dict(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1], bifpn_num_blocks=1)
    demo_model.update(bifpn_num_features=32, seg_out_channels=32)
    cfg = _config(tmp_path, unique_name, frames=0, rate_hz=0, kind="peaknet", **demo_model)
    cfg.source.random.frame_shape = [1, 256, 256]
    cfg.source.random.batch_size = 8
    driver = DriverThread(cfg)
    driver.start()
    control = wait_control(unique_name)
    ray.get(control.set_inference.remote(2))
    wait_pool(control, running=2)
    ray.get(control.set_inference.remote(1))
    state = wait_pool(control, retiring=1, timeout_s=10, poll_s=0.01)
    assert state["actors"]["inference-1"]["state"] == "retiring"
    os.kill(state["actors"]["inference-1"]["pid"], signal.SIGKILL)  # dies while finishing
    wait_pool(control, running=1, retiring=0, timeout_s=30)  # not waited on: it is gone
    ray.get(control.stop.remote())

    driver.join(timeout=120)
    assert not driver.is_alive(), "the run waited on a dead actor"
    report = driver.report
    [error] = report["errors"]
    assert error["id"] == "inference-1" and error["error"].startswith("ActorDiedError")
    [restart] = report["restarts"]
    assert restart["id"] == "inference-1" and restart["retiring"]  # leaving: not replaced
    inference_0 = next(s for s in report["inference"] if s["actor_id"] == "inference-0")
    assert inference_0["state"] == "done"  # the other actor went on until the drain
    # What the dead actor held went back to Q1 and through inference-0: nothing is lost.
    acc = report["accounting"]
    assert acc["accounted"] and acc["frames_ingested"] == acc["events_handled_by_writers"]
    assert report["exit_code"] == 0, acc
    out = tmp_path / unique_name
    assert event_ids(out) == list(range(acc["frames_ingested"]))
