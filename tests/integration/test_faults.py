"""Fault injection on whole runs: actors of each role are killed mid-stream, by SIGKILL of their
worker process (no chance to clean up, as when a pod is OOM-killed) and by `ray.kill`, several
times in one run, and the run still writes every event it accepted exactly once (checked
against the random source's event ids), replaces the actors, and reports what happened.

The tests kill from outside the driver's loop, as a failing node would: through the driver's
own view of its actors (`DriverThread.running`). A poison record (one that kills every
consumer it meets) is tested on the queue itself, in test_queue_leases.py: a pipeline has no
way to make one on purpose.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import ray
from runs import DriverThread, event_ids, random_run, wait_control, wait_for

from helpers import SMALL_MODEL
from peaknet_pipeline.config import PipelineConfig
from peaknet_pipeline.model import build_model, save_weights

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _config(
    tmp_path: Path, run_id: str, frames: int, rate_hz: float, actors: int = 1
) -> PipelineConfig:
    """Files of 64 events (a kill lands mid-file), quick progress samples (the tests watch
    the actors' counts), restarts enough for every kill, and a short back-off. Deliveries
    enough for every kill too: the records an actor holds when it is killed go back to the
    front of its home shard, where its replacement takes them again; with the default 3, a
    soak that killed writer-0, writer-0.1 and writer-0.2 while each held the same records (in
    a file not yet committed) sent them to the dead letters (seed 798771659), as the queue
    must for a record that kills every consumer it meets."""
    return random_run(
        tmp_path,
        run_id,
        frames,
        rate_hz,
        (
            f"inference.num_actors={actors}",
            f"inference.max_actors={actors}",
            f"writer.num_actors={actors}",
            "writer.num_cpus_per_actor=0.5",
            "writer.events_per_file=64",
            "monitor.progress_interval_s=0.2",
            "runtime.restarts={ingest: 8, inference: 8, writer: 8, backoff_s: 0.1}",
            "queue.max_deliveries=8",
        ),
    )


def _kill(actor: Any, how: str) -> None:
    if how == "SIGKILL":
        os.kill(actor.pid, signal.SIGKILL)
    else:
        ray.kill(actor.handle, no_restart=True)


def _next_victim(
    driver: DriverThread, role: str, killed: list[str], busy: str, at_least: int = 1
) -> Any:
    """The run's live actor of `role` not killed yet, once its `busy` counter reached
    `at_least`."""
    return wait_for(
        f"a live {role} actor with {busy} >= {at_least}",
        lambda: next(
            (
                a
                for a in driver.running(role)
                if a.actor_id not in killed and a.counts.get(busy, 0) >= at_least
            ),
            None,
        ),
    )


def _assert_every_event_once(report: dict, out: Path) -> int:
    acc = report["accounting"]
    assert acc["accounted"], acc
    frames = acc["frames_ingested"]
    assert frames > 0 and acc["events_written"] == frames
    assert event_ids(out) == list(range(frames))
    # 4: stopped by `peaknet-pipeline stop` before the end of its stream, all written
    assert report["exit_code"] == (4 if report["stopped_early"] else 0), report["errors"]
    return frames


def _abandoned_parts(out: Path) -> list[dict]:
    parts = json.loads((out / "summary.json").read_text())["incomplete_files"]
    assert all(p["abandoned"] for p in parts)
    assert sorted(p["path"] for p in parts) == sorted(str(p) for p in out.glob("*.cxi.part"))
    return parts


def test_inference_actors_killed_again_and_again_lose_and_double_nothing(
    ray_session, tmp_path, unique_name
):
    # Ingest as fast as it can: Q1 stays full and each actor always holds prefetched batches.
    driver = DriverThread(_config(tmp_path, unique_name, frames=0, rate_hz=0))
    driver.start()
    killed: list[str] = []
    for how in ("SIGKILL", "ray.kill", "SIGKILL"):
        victim = _next_victim(driver, "inference", killed, "frames_out")
        _kill(victim, how)
        killed.append(victim.actor_id)
    _next_victim(driver, "inference", killed, "frames_out")  # the third replacement works
    ray.get(wait_control(unique_name).stop.remote())

    report = driver.finish()
    assert [r["id"] for r in report["restarts"]] == killed
    assert all(r["replacement"] == "replaced by the pool" for r in report["restarts"])
    assert all(r["error"].startswith("ActorDiedError") for r in report["restarts"])
    assert sum(r["records_given_back"] for r in report["restarts"]) > 0
    assert report["accounting"]["redeliveries"] > 0
    _assert_every_event_once(report, tmp_path / unique_name)


def test_writers_killed_mid_file_lose_and_double_nothing(ray_session, tmp_path, unique_name):
    driver = DriverThread(_config(tmp_path, unique_name, frames=0, rate_hz=400))
    driver.start()
    out = tmp_path / unique_name
    killed: list[str] = []
    for how in ("SIGKILL", "ray.kill"):
        victim = _next_victim(driver, "writer", killed, "current_file_events")
        _kill(victim, how)
        killed.append(victim.actor_id)
    _next_victim(driver, "writer", killed, "frames_out")
    ray.get(wait_control(unique_name).stop.remote())

    report = driver.finish()
    assert [(r["id"], r["replacement"]) for r in report["restarts"]] == [
        ("writer-0", "writer-0.1"),
        ("writer-0.1", "writer-0.2"),
    ]
    _assert_every_event_once(report, out)
    assert len(_abandoned_parts(out)) >= 1  # the dead writers' open files: listed, not counted


def test_a_writer_killed_while_blocked_in_get_takes_nothing_with_it(
    ray_session, tmp_path, unique_name
):
    # A slow stream: the writer spends its time waiting on an empty Q2.
    driver = DriverThread(_config(tmp_path, unique_name, frames=0, rate_hz=20))
    driver.start()
    writer = _next_victim(driver, "writer", [], "frames_out")
    q2 = driver.pipeline.q2

    def waiting_on_empty_q2() -> bool:
        shards = q2.stats()["shards"]  # one snapshot: every shard empty, gets waiting
        return all(s["depth"] == 0 and s["blocked_calls"] > 0 for s in shards)

    wait_for("the writer waiting on an empty Q2", waiting_on_empty_q2)
    _kill(writer, "SIGKILL")
    _next_victim(driver, "writer", [writer.actor_id], "frames_out")
    ray.get(wait_control(unique_name).stop.remote())
    stopped = time.monotonic()

    report = driver.finish()
    # Had the dead writer's waiting get taken a Result after it died, the Result would sit
    # under its lease until the lease ran out (queue.lease_s = 60 s) and hold up the drain.
    assert time.monotonic() - stopped < driver.cfg.queue.lease_s / 2
    [restart] = report["restarts"]
    assert restart["id"] == "writer-0" and restart["replacement"] == "writer-0.1"
    _assert_every_event_once(report, tmp_path / unique_name)


def test_sources_killed_twice_resume_where_the_queue_left_off(ray_session, tmp_path, unique_name):
    frames = 1200  # 6 s at 200 Hz: time for two kills, each after the source made frames
    cfg = _config(tmp_path, unique_name, frames=frames, rate_hz=200)
    cfg.monitor.report_html = True  # the page of a run whose source was restarted is read
    driver = DriverThread(cfg)
    driver.start()
    killed: list[str] = []
    for how in ("SIGKILL", "ray.kill"):  # each after Q1 surely accepted some of its batches
        victim = _next_victim(driver, "ingest", killed, "frames_out", at_least=64)
        _kill(victim, how)
        killed.append(victim.actor_id)

    report = driver.finish()  # the stream ends by itself: the last replacement sent the rest
    out = tmp_path / unique_name
    restarts = report["restarts"]
    assert [r["id"] for r in restarts] == killed == ["random-0", "random-0.1"]
    assert [r["replacement"] for r in restarts] == ["random-0.1", "random-0.2"]
    assert 0 < restarts[0]["resumed_at_seq"] < restarts[1]["resumed_at_seq"] < frames // 4
    assert _assert_every_event_once(report, out) == frames
    # Recovered failures are restarts, not the run's end: the replacement finished the stream.
    assert report["ended_by"] == "end of stream", report["ended_by"]
    # The page reads each source's index from its stream (random-0), not the actor's id
    # (random-0.2): the recovery section and its figure are drawn for a restarted source.
    html = (out / "report.html").read_text()
    assert '<section id="recovery">' in html, "report.html has no recovery section"
    figure = html.split('<section id="recovery-errors">', 1)[1].split("</section>", 1)[0]
    assert "<img" in figure, figure


def test_a_replacement_that_cannot_start_counts_as_a_failure_and_the_run_ends_naming_the_loss(
    ray_session, tmp_path, unique_name
):
    """The only inference actor dies and its weights file is gone: every replacement fails to
    load it. Each failure uses a restart; once they are used up the run stops ingest, drains
    what it can and exits 1, naming the frames that were never inferred (not a hang, and not
    an early end of Q2 that would hide them)."""
    cfg = _config(tmp_path, unique_name, frames=0, rate_hz=100)
    weights = tmp_path / "peaknet.pt"
    cfg.model = cfg.model.model_validate({"kind": "peaknet", **SMALL_MODEL})
    save_weights(build_model(cfg.model), weights)
    cfg.model.weights_path = str(weights)
    cfg.runtime.restarts.inference = 2
    driver = DriverThread(cfg)
    driver.start()
    victim = _next_victim(driver, "inference", [], "frames_out")
    weights.unlink()
    _kill(victim, "SIGKILL")

    report = driver.finish()
    assert report["exit_code"] == 1
    restarts = report["restarts"]
    assert [r["id"] for r in restarts] == ["inference-0", "inference-1", "inference-2"]
    assert all("could not start" in r["error"] for r in restarts[1:]), restarts
    assert restarts[-1]["replacement"] is None  # the budget of 2 is used up
    acc = report["accounting"]
    assert acc["lost_before_inference"] > 0 and not acc["accounted"]
    written = event_ids(tmp_path / unique_name)
    assert len(written) == len(set(written)) == acc["events_written"]


def test_a_killed_socket_source_binds_again_and_the_report_names_what_may_be_lost(
    ray_session, tmp_path, unique_name
):
    """A socket source dies while a streamer pushes to it: the replacement binds the same
    address and the streamer's reconnecting socket goes on sending. Messages in the dead
    actor's hands or in the transport's buffers are lost: the report says so; every event
    that reached Q1 is written exactly once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    cfg = _config(tmp_path, unique_name, frames=0, rate_hz=0)
    cfg.source = cfg.source.model_validate(
        {
            "kind": "socket",
            "num_cpus_per_actor": 0.5,
            "socket": {
                "addresses": [address],
                "wavelength_unit": "nm",
                "hdf5": {"extra": {"event_id": "/data/event_id"}},
                "idle_timeout_s": 3,
            },
        }
    )
    driver = DriverThread(cfg)
    driver.start()
    wait_for("the socket source bound", lambda: driver.running("ingest"))
    frames = 400
    push = subprocess.Popen(
        [sys.executable, "-m", "peaknet_pipeline.cli", "push", "--address", address]
        + ["--num-frames", str(frames), "--batch-size", "4", "--rate-hz", "100"]
        + ["--shape", "1", "64", "64"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        victim = _next_victim(driver, "ingest", [], "frames_out", at_least=40)
        _kill(victim, "SIGKILL")
        _next_victim(driver, "ingest", [victim.actor_id], "frames_out")  # the new one receives
        _, push_log = push.communicate(timeout=120)
    finally:
        push.kill()
    assert push.returncode == 0, push_log  # every message left the streamer's socket
    report = driver.finish()  # the replacement ends at its idle timeout

    [restart] = report["restarts"]
    assert restart["role"] == "ingest" and restart["replacement"] == f"{victim.actor_id}.1"
    assert "transport's buffers" in restart["note"]
    acc = report["accounting"]
    assert acc["accounted"] and acc["events_written"] == acc["frames_ingested"]
    written = event_ids(tmp_path / unique_name)
    assert len(written) == len(set(written)) == acc["events_written"]
    assert set(written) <= set(range(frames))
    # Lost, if anything: what the dead actor had received and what sat in the transport's
    # buffers when it died; the rest of the stream reached the replacement.
    print(f"socket restart: {frames - len(written)} of {frames} frames lost in flight")
    assert len(written) > frames // 2, len(written)


SOAK_ROUNDS = 3
BUSY = {"inference": "frames_out", "writer": "frames_out", "ingest": "frames_out"}


def test_soak_random_kills_of_random_roles(ray_session, tmp_path, unique_name):
    """Kills at random moments of random actors of every role, two of each consuming role;
    the seed is printed with any failure (set PEAKNET_SOAK_SEED to replay it)."""
    seed = int(os.environ.get("PEAKNET_SOAK_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    driver = DriverThread(_config(tmp_path, unique_name, frames=0, rate_hz=300, actors=2))
    driver.start()
    killed: list[str] = []
    for _ in range(SOAK_ROUNDS):
        for role, count in (("inference", 2), ("writer", 2), ("ingest", 1)):
            wait_for(  # every role at full strength again, and working
                f"{count} working {role} actors (seed {seed})",
                lambda r=role, n=count: len(
                    [a for a in driver.running(r) if a.actor_id not in killed and a.counts.get(BUSY[r], 0)]
                ) >= n,
            )  # fmt: skip
        time.sleep(rng.uniform(0.0, 1.0))  # a random moment in the stream, not a wait for it
        role = rng.choice(sorted(BUSY))
        victim = rng.choice([a for a in driver.running(role) if a.actor_id not in killed])
        _kill(victim, rng.choice(("SIGKILL", "ray.kill")))
        killed.append(victim.actor_id)
    ray.get(wait_control(unique_name).stop.remote())

    report = driver.finish()
    assert sorted(r["id"] for r in report["restarts"]) == sorted(killed), seed
    assert not report["dead_letters"], seed
    try:
        _assert_every_event_once(report, tmp_path / unique_name)
    except AssertionError as exc:
        raise AssertionError(f"soak seed {seed}: {exc}") from exc
