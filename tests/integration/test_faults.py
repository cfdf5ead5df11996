"""Fault injection on whole runs: an actor of each role is killed with SIGKILL mid-stream (no
chance to clean up, as when a node's kernel kills it) and the run still writes every event it
accepted exactly once, replaces the actor, and reports what happened.

The kills come from outside, by process: Ray titles an actor's worker `ray::<Class>`, so the
test finds the actor it wants the way an operator would, among this session's workers.
A poison record (one that kills every consumer it meets) is tested on the queue itself, in
test_queue_leases.py: a pipeline has no way to make one on purpose.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import ray
from runs import DriverThread, event_ids, pids_running, wait_control, wait_for, wait_pool

from peaknet_pipeline.config import PipelineConfig

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _config(tmp_path: Path, run_id: str, frames: int, rate_hz: float) -> PipelineConfig:
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
            "model": {"kind": "threshold", "threshold": 60.0},
            "inference": {"num_actors": 1, "max_actors": 2, "num_cpus_per_actor": 0.5},
            "writer": {
                "output_dir": str(tmp_path / "{run_id}"),
                "min_peaks": 0,
                "events_per_file": 64,
            },
            "monitor": {"console": False, "progress_interval_s": 0.5},
            "runtime": {
                "run_id": run_id,
                "drain_timeout_s": 60,
                "restarts": {"backoff_s": 0.2},
            },
        }
    )


def _kill_one(actor_class: str) -> int:
    """SIGKILL the run's one actor of `actor_class`; returns its pid."""
    [pid] = wait_for(f"one {actor_class} process", lambda: pids_running(actor_class))
    os.kill(pid, signal.SIGKILL)
    return pid


def _assert_every_event_once(report: dict, out: Path) -> int:
    acc = report["accounting"]
    assert acc["accounted"], acc
    frames = acc["frames_ingested"]
    assert frames > 0 and acc["events_written"] == frames
    assert event_ids(out) == list(range(frames))
    return frames


def test_a_killed_inference_actor_is_replaced_and_its_batches_go_through_once(
    ray_session, tmp_path, unique_name
):
    # Ingest as fast as it can: Q1 stays full and the actor always holds prefetched batches.
    driver = DriverThread(_config(tmp_path, unique_name, frames=0, rate_hz=0))
    driver.start()
    control = wait_control(unique_name)
    state = wait_pool(control, running=1)
    os.kill(state["actors"]["inference-0"]["pid"], signal.SIGKILL)
    replaced = wait_for(
        "a replacement running",
        lambda: ray.get(control.pool_state.remote())["actors"].get("inference-1"),
    )
    assert replaced["pid"] != state["actors"]["inference-0"]["pid"]
    wait_for("files from the replacement", lambda: len(list(tmp_path.rglob("*.cxi"))) >= 3)
    ray.get(control.stop.remote())

    report = driver.finish()
    [restart] = report["restarts"]
    assert restart["role"] == "inference" and restart["id"] == "inference-0"
    assert restart["replacement"] == "replaced by the pool"
    assert restart["error"].startswith("ActorDiedError")
    assert report["exit_code"] == 0, report["errors"]
    _assert_every_event_once(report, tmp_path / unique_name)


def test_a_writer_killed_mid_file_is_replaced_and_no_event_is_lost_or_written_twice(
    ray_session, tmp_path, unique_name
):
    driver = DriverThread(_config(tmp_path, unique_name, frames=0, rate_hz=400))
    driver.start()
    out = tmp_path / unique_name
    wait_for("a closed file and one being written", lambda: list(out.glob("*.cxi.part")))
    dead = _kill_one("WriterActor")
    # The replacement takes over the dead writer's Results; the dead one's .part stays.
    wait_for("a new writer", lambda: [p for p in pids_running("WriterActor") if p != dead])
    files_before = len(list(out.glob("*.cxi")))
    wait_for("files from the new writer", lambda: len(list(out.glob("*.cxi"))) > files_before)
    ray.get(wait_control(unique_name).stop.remote())

    report = driver.finish()
    [restart] = report["restarts"]
    assert restart["role"] == "writer" and restart["id"] == "writer-0"
    assert restart["replacement"] == "writer-0.1"
    assert report["exit_code"] == 0, report["errors"]
    _assert_every_event_once(report, out)
    summary = json.loads((out / "summary.json").read_text())
    [part] = summary["incomplete_files"]  # the dead writer's file, listed, not hidden
    assert part["path"].endswith(".cxi.part") and part["abandoned"]


def test_a_killed_source_resumes_where_the_queue_left_off(ray_session, tmp_path, unique_name):
    frames = 480
    driver = DriverThread(_config(tmp_path, unique_name, frames=frames, rate_hz=160))
    driver.start()
    out = tmp_path / unique_name
    wait_for("the first file", lambda: list(out.glob("*.cxi")))
    _kill_one("RandomSource")

    report = driver.finish()  # the stream ends by itself: the replacement sent the rest
    [restart] = report["restarts"]
    assert restart["role"] == "ingest" and restart["replacement"].endswith(".1")
    assert 0 < restart["resumed_at_seq"] < frames // 4
    assert report["exit_code"] == 0, report["errors"]
    assert _assert_every_event_once(report, out) == frames
