"""Socket source as a Ray actor: the pusher (a subprocess, like LCLStreamer) -> zmq/nng -> Q1.

Every address binds port 0 (or the pusher does), so tests never collide on ports.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from helpers import STARTED_PUSHERS
from peaknet_pipeline.config import PipelineConfig, RandomSourceConfig, WriterConfig
from peaknet_pipeline.queue import EndOfStream, ShardedQueue
from peaknet_pipeline.records import Result
from peaknet_pipeline.sources.push import PUSH_EXTRA
from peaknet_pipeline.sources.random import FrameGenerator
from peaknet_pipeline.sources.socket import SocketSource
from peaknet_pipeline.writer import WriterStage

pytestmark = pytest.mark.ray

LOOPBACK = "tcp://127.0.0.1:0"


def _cfg(transport="zmq", fmt="hdf5", addresses=(LOOPBACK,), mode="bind", **socket):
    section = {
        "transport": transport,
        "format": fmt,
        "addresses": list(addresses),
        "mode": mode,
        "idle_timeout_s": 1.0,
        fmt: {"extra": PUSH_EXTRA[fmt]},
        **socket,
    }
    return PipelineConfig.model_validate({"source": {"kind": "socket", "socket": section}})


def _start(cfg, q1, index=0):
    import ray

    sid = f"socket-{index}"
    q1.register_producer(sid)
    actor = ray.remote(SocketSource).options(max_concurrency=4, num_cpus=0.5)
    handle = actor.remote(sid, q1, cfg, index)
    run = handle.run.remote()
    return handle, run, ray.get(handle.endpoint.remote(), timeout=60)


def _push(args: str, wait: bool = True):
    cmd = [sys.executable, "-m", "peaknet_pipeline.sources.push", "--json", *args.split()]
    if not wait:
        pusher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        STARTED_PUSHERS.append(pusher)
        return pusher
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _drain(q1, delay_s: float = 0.0) -> list:
    batches = []
    try:
        while True:
            batches += q1.get_many(1 if delay_s else 16, timeout=60)
            time.sleep(delay_s)
    except EndOfStream:
        return batches


def _ids(batches) -> list[int]:
    return sorted(int(i) for b in batches for i in b.meta["event_id"])


def _expected_frames(shape, ids, dtype="float32", peaks=3):
    cfg = RandomSourceConfig(
        frame_shape=shape, dtype=dtype, peaks_per_frame=peaks, seed=0, pool_size=4
    )
    return FrameGenerator(cfg).batch(np.asarray(ids))


def test_zmq_bind_hdf5_float64_into_q1(ray_session, unique_name):
    import ray

    q1 = ShardedQueue.create(unique_name, num_shards=2)
    try:
        _, run, endpoint = _start(_cfg(), q1)
        sent = _push(
            f"--address {endpoint} --num-frames 30 --batch-size 8 --shape 1 24 32 "
            "--peaks-per-frame 3 --dtype float64 --timestamp uint64"
        )
        batches = _drain(q1)
        summary = ray.get(run, timeout=60)
        assert sent["frames"] == 30 and sent["delivered"]
        assert summary.ended_by.startswith("idle timeout") and summary.frames_out == 30
        assert summary.messages == 4 and summary.bad_total == 0
        assert sorted(b.size for b in batches) == [6, 8, 8, 8]  # the short last batch passes
        assert _ids(batches) == list(range(30))
        for batch, images in zip(batches, ray.get([b.images for b in batches])):
            assert images.dtype == np.float32 and images.shape == (batch.size, 1, 24, 32)
            want = _expected_frames([1, 24, 32], batch.meta["event_id"], "float64")
            assert np.array_equal(images, want.astype(np.float32))
            assert np.allclose(batch.meta["wavelength_nm"], 0.1305)
            assert batch.meta["timestamp"].dtype == np.uint64
    finally:
        q1.destroy()


def test_nng_bind_npz_padded_frames_are_cropped(ray_session, unique_name):
    import ray

    q1 = ShardedQueue.create(unique_name)
    try:
        _, run, endpoint = _start(_cfg("nng", "npz"), q1)
        _push(
            f"--address {endpoint} --transport nng --format npz --compression gzip "
            "--num-frames 12 --batch-size 4 --shape 20 30 --pad-to 32 32 --peaks-per-frame 3"
        )
        batches = _drain(q1)
        summary = ray.get(run, timeout=60)
        assert summary.frames_out == 12 and _ids(batches) == list(range(12))
        for batch, images in zip(batches, ray.get([b.images for b in batches])):
            assert images.shape == (4, 1, 20, 30)  # cropped back from 32 x 32
            assert np.array_equal(images, _expected_frames([1, 20, 30], batch.meta["event_id"]))
    finally:
        q1.destroy()


@pytest.mark.parametrize("transport", ["zmq", "nng"])
def test_connect_mode_dials_a_binding_sender(ray_session, unique_name, transport):
    import ray

    pusher = _push(
        f"--mode bind --address {LOOPBACK} --transport {transport} --num-frames 10 "
        "--batch-size 5 --shape 16 16 --peaks-per-frame 0 --linger-s 20",
        wait=False,
    )
    q1 = ShardedQueue.create(unique_name)
    try:
        line = pusher.stdout.readline()
        assert "bound at" in line, pusher.stderr.read()
        address = line.split("bound at ")[1].strip()
        _, run, _ = _start(_cfg(transport, addresses=[address], mode="connect"), q1)
        batches = _drain(q1)
        summary = ray.get(run, timeout=60)
        assert pusher.wait(timeout=60) == 0
        assert summary.frames_out == 10 and _ids(batches) == list(range(10))
        # float32 frames are read in place from the received message, then stored by Ray
        for batch, images in zip(batches, ray.get([b.images for b in batches])):
            want = _expected_frames([1, 16, 16], batch.meta["event_id"], peaks=0)
            assert np.array_equal(images, want)
    finally:
        pusher.kill()
        q1.destroy()


def test_two_streams_at_once(ray_session, unique_name):
    import ray

    cfg = _cfg(addresses=[LOOPBACK, LOOPBACK])
    q1 = ShardedQueue.create(unique_name, num_shards=2)
    try:
        started = [_start(cfg, q1, index) for index in (0, 1)]
        sent = _push(
            f"--address {started[0][2]} --address {started[1][2]} --num-frames 16 "
            "--batch-size 4 --shape 16 16 --peaks-per-frame 0"
        )
        batches = _drain(q1)
        summaries = ray.get([run for _, run, _ in started], timeout=60)
        assert sent["streams"] == 2 and sent["frames"] == 32
        assert [s.frames_out for s in summaries] == [16, 16]
        by_source = {
            sid: _ids(b for b in batches if b.source_id == sid) for sid in ("socket-0", "socket-1")
        }
        assert by_source == {"socket-0": list(range(16)), "socket-1": list(range(16, 32))}
    finally:
        q1.destroy()


def test_events_without_an_id_are_numbered_per_actor_into_the_cxi_files(
    ray_session, unique_name, tmp_path
):
    """The pusher's ids travel in an extra field this config does not read: each actor
    numbers its own events, and (source id, event id) names every row of the files."""
    import ray

    cfg = _cfg(addresses=[LOOPBACK, LOOPBACK], hdf5={"extra": {}})
    q1 = ShardedQueue.create(unique_name, num_shards=2)
    try:
        started = [_start(cfg, q1, index) for index in (0, 1)]
        _push(
            f"--address {started[0][2]} --address {started[1][2]} --num-frames 12 "
            "--batch-size 4 --shape 16 16 --peaks-per-frame 2"
        )
        batches = _drain(q1)
        assert [s.frames_out for s in ray.get([run for _, run, _ in started], timeout=60)] == [
            12,
            12,
        ]
    finally:
        q1.destroy()
    writer = WriterStage(WriterConfig(min_peaks=0, images="all"), str(tmp_path), 0)
    for batch, images in zip(batches, ray.get([b.images for b in batches])):
        masks = (images > 100).astype(np.uint8)  # the injected peaks
        writer.process(Result(batch, "mask", masks.shape, "|u1", "infer-0"), images, masks)
    writer.close()
    rows = []
    for path in sorted(tmp_path.glob("*.cxi")):
        with h5py.File(path, "r") as f:
            assert f["/LCLS/event_id"].dtype == np.int64
            rows += zip(f["/peaknet/source_id"].asstr()[:], f["/LCLS/event_id"][:].tolist())
    assert sorted(rows) == [(sid, i) for sid in ("socket-0", "socket-1") for i in range(12)]


@pytest.mark.slow
def test_full_q1_blocks_the_sender_and_loses_nothing(ray_session, unique_name):
    """Q1 holds one record and the consumer takes one every 0.1 s: the sender (send
    high-water mark 5) must spend most of its time blocked, and every frame must arrive."""
    import ray

    q1 = ShardedQueue.create(unique_name, capacity_items=1)
    try:
        _, run, endpoint = _start(_cfg(recv_hwm=1), q1)
        pusher = _push(
            f"--address {endpoint} --num-frames 384 --batch-size 8 --shape 256 256 "
            "--peaks-per-frame 0",
            wait=False,
        )
        batches = _drain(q1, delay_s=0.1)
        out, err = pusher.communicate(timeout=60)
        sent = json.loads(out.strip().splitlines()[-1])
        summary = ray.get(run, timeout=60)
        assert _ids(batches) == list(range(384)) and summary.frames_out == 384
        # 48 messages of 2 MB take well under 0.5 s unthrottled on loopback; here the
        # consumer needs 4.8 s, and about 15-20 messages fit in all the buffers on the way.
        assert sent["elapsed_s"] > 1.5 and sent["send_s"] > 1.0, sent
        assert q1.stats()["put_blocked_s"] > 1.0
    finally:
        q1.destroy()


def test_stop_interrupts_a_source_waiting_forever(ray_session, unique_name):
    import ray

    q1 = ShardedQueue.create(unique_name)
    try:
        actor, run, _ = _start(_cfg(idle_timeout_s=None), q1)
        time.sleep(0.3)  # let it block in its receive loop
        t0 = time.monotonic()
        actor.stop.remote()
        summary = ray.get(run, timeout=30)
        assert time.monotonic() - t0 < 2.0
        assert summary.ended_by == "stopped" and summary.frames_out == 0
        with pytest.raises(EndOfStream):
            q1.get(timeout=10)
    finally:
        q1.destroy()


def test_max_frames_ends_the_stream(ray_session, unique_name):
    import ray

    q1 = ShardedQueue.create(unique_name)
    pusher = None
    try:
        _, run, endpoint = _start(_cfg(max_frames=16, idle_timeout_s=None), q1)
        pusher = _push(
            f"--address {endpoint} --num-frames 0 --batch-size 8 --shape 16 16 --peaks-per-frame 0",
            wait=False,
        )
        batches = _drain(q1)
        summary = ray.get(run, timeout=60)
        assert summary.ended_by.startswith("max frames") and summary.frames_out >= 16
        # Messages received before the receive thread stopped are ingested, not dropped.
        assert summary.frames_out == 8 * summary.messages
        assert summary.discarded_at_stop == 0
        assert _ids(batches) == list(range(summary.frames_out))
    finally:
        if pusher is not None:
            pusher.kill()
        q1.destroy()


def test_stop_ingests_every_message_already_received(ray_session, unique_name):
    # A full Q1 keeps received messages waiting in the source's inbox when stop() arrives:
    # they were read from the socket, so they must reach Q1, not be discarded.
    import ray

    q1 = ShardedQueue.create(unique_name, num_shards=1, capacity_items=1)
    pusher = None
    try:
        handle, run, endpoint = _start(_cfg(idle_timeout_s=None), q1)
        pusher = _push(
            f"--address {endpoint} --num-frames 0 --batch-size 8 --shape 16 16 --peaks-per-frame 0",
            wait=False,
        )
        first = q1.get(timeout=60)
        deadline = time.monotonic() + 30
        while ray.get(handle.stats.remote()).messages < 4 and time.monotonic() < deadline:
            time.sleep(0.05)  # wait (bounded) until messages are queued up behind the full Q1
        handle.stop.remote()
        batches = [first] + _drain(q1)
        summary = ray.get(run, timeout=60)
        assert summary.ended_by == "stopped"
        assert summary.messages >= 4 and summary.discarded_at_stop == 0
        assert summary.frames_out == 8 * summary.messages == sum(b.size for b in batches)
        assert _ids(batches) == list(range(summary.frames_out))
    finally:
        if pusher is not None:
            pusher.kill()
        q1.destroy()


def test_bind_failure_names_the_address(ray_session, unique_name):
    import ray

    q1 = ShardedQueue.create(unique_name)
    try:
        first, run, endpoint = _start(_cfg(), q1)
        actor = ray.remote(SocketSource).options(max_concurrency=4, num_cpus=0.5)
        second = actor.remote("socket-9", q1, _cfg(addresses=[endpoint]), 0)
        with pytest.raises(ray.exceptions.RayTaskError, match=endpoint.replace(".", r"\.")):
            ray.get(second.run.remote(), timeout=30)
        first.stop.remote()
        assert ray.get(run, timeout=30).ended_by == "stopped"
    finally:
        q1.destroy()


def test_start_timeout_ends_a_stream_that_never_began():
    """The ingest loop alone (no Ray): nobody sends within start_timeout_s."""
    source = SocketSource("socket-0", None, _cfg(start_timeout_s=0.3), 0)
    t0 = time.monotonic()
    source.ready()
    assert list(source.batches()) == []
    assert source.end_reason() == "start timeout (no message within 0.3 s)"
    assert 0.3 <= time.monotonic() - t0 < 3.0


def test_an_idle_socket_says_it_is_waiting_at_start_and_while_idle(caplog, monkeypatch):
    """The ingest loop alone (no Ray): a bound socket nobody sends to says where it waits,
    at once and then every WAITING_LOG_S, so a quiet stream is told from a stuck pipeline."""
    from peaknet_pipeline.sources import socket as socket_source

    monkeypatch.setattr(socket_source, "WAITING_LOG_S", 0.2)
    source = SocketSource("socket-0", None, _cfg(start_timeout_s=0.9), 0)
    source.ready()
    with caplog.at_level(logging.INFO, logger="peaknet_pipeline.sources.socket"):
        assert list(source.batches()) == []
    said = [r.getMessage() for r in caplog.records if "waiting for data" in r.getMessage()]
    assert said[0] == f"socket-0: waiting for data on {source.endpoint()}"
    assert len(said) >= 3, said
    assert all(
        m == f"socket-0: still waiting for data on {source.endpoint()}; the stream ends after 0.9 s"
        for m in said[1:]
    ), said
