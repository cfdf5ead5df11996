"""The pusher (`python -m peaknet_pipeline.sources.push`): delivery at exit, replay, options."""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from helpers import STARTED_PUSHERS
from peaknet_pipeline.sources.push import add_push_arguments, frame_batches, main, wire_config
from peaknet_pipeline.sources.transport import open_pull
from peaknet_pipeline.sources.wire import Decoder


def _pusher(args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "peaknet_pipeline.sources.push", "--json", *args.split()]
    pusher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    STARTED_PUSHERS.append(pusher)
    return pusher


def _receive(sock, count: int, pusher=None, timeout_s: float = 30.0) -> list[bytes]:
    got, deadline = [], time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline:
        if pusher is not None and pusher.poll():
            pytest.fail(f"pusher failed: {pusher.stderr.read()}")
        message = sock.recv()
        if message is not None:
            got.append(bytes(message[1]))
    return got


@pytest.mark.parametrize("transport", ["zmq", "nng"])
def test_pusher_waits_at_exit_until_queued_messages_are_delivered(transport):
    """LINGER 0 (what LCLStreamer uses) discards what is still queued at close. The pusher
    waits instead: here every message is still queued when it starts waiting (nobody listens
    yet), and a receiver that appears only then gets every frame."""
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))  # keeps the port ours until the receiver binds it
        address = f"tcp://127.0.0.1:{reserved.getsockname()[1]}"
        pusher = _pusher(
            f"--address {address} --transport {transport} --num-frames 12 --batch-size 4 "
            "--shape 16 16 --peaks-per-frame 0 --linger-s 30"
        )
        lines = [pusher.stderr.readline()]  # the first line, unless the waiting line beat it
        while lines[-1] and "messages sent; waiting" not in lines[-1]:
            lines.append(pusher.stderr.readline())
        assert "3 messages sent; waiting" in lines[-1], lines
    sock = open_pull(transport, address, "bind", 8)
    try:
        messages = _receive(sock, 3, pusher)
        out, err = pusher.communicate(timeout=60)
        assert pusher.returncode == 0, err
        summary = json.loads(out)
        assert summary["delivered"] and summary["frames"] == 12
        decoder = Decoder(wire_config("hdf5"))
        ids = np.concatenate([decoder(m)[1]["event_id"] for m in messages])
        assert ids.tolist() == list(range(12))
    finally:
        sock.close()


@pytest.mark.slow  # about 4 s: messages due 1 and 2 s after the first
@pytest.mark.parametrize("transport", ["zmq", "nng"])
def test_pusher_reports_possible_loss_when_the_receiver_left(transport):
    """A receiver takes the first message and goes away; the next two (due 1 and 2 s later at
    --rate-hz 4) have nowhere to go. The pusher says it waits because the receiver left, and at
    exit that messages may be lost (exit 1: a receiver did connect, unlike exit 3)."""
    sock = open_pull(transport, "tcp://127.0.0.1:0", "bind", 8)
    try:
        pusher = _pusher(
            f"--address {sock.endpoint} --transport {transport} --num-frames 12 --batch-size 4 "
            "--shape 16 16 --peaks-per-frame 0 --rate-hz 4 --linger-s 1"
        )
        assert len(_receive(sock, 1, pusher)) == 1
    finally:
        sock.close()
    out, err = pusher.communicate(timeout=60)
    assert pusher.returncode == 1, err
    assert f"waiting for a receiver at {sock.endpoint} (the receiver disconnected" in err
    assert "no receiver ever connected" not in err
    summary = json.loads(out)
    assert summary["messages"] == 3 and summary["delivered"] is False
    assert summary["no_receiver"] == []


def test_replayed_frames_are_sent_as_stored(tmp_path):
    # Compressed as the writer stores frames by default (bitshuffle + LZ4, an HDF5 plugin).
    from peaknet_pipeline.writer import compression_options

    path = tmp_path / "run.cxi"
    frames = np.random.default_rng(0).uniform(0, 100, (5, 12, 16)).astype(np.float32)
    with h5py.File(path, "w") as f:
        opts = compression_options("bitshuffle_lz4", None)
        f.create_dataset("/entry_1/data_1/data", data=frames, chunks=(1, 12, 16), **opts)
    sock = open_pull("nng", "tcp://127.0.0.1:0", "bind", 4)
    try:
        pusher = _pusher(
            f"--address {sock.endpoint} --transport nng --format npz --replay {path} "
            "--num-frames 0 --batch-size 2 --dtype float64"
        )
        messages = _receive(sock, 3, pusher)
        assert pusher.wait(timeout=60) == 0
        decoder = Decoder(wire_config("npz"))
        images = np.concatenate([decoder(m)[0] for m in messages])
        assert np.array_equal(images[:, 0], frames)
    finally:
        sock.close()


def test_each_stream_sends_its_own_event_ids():
    parser = argparse.ArgumentParser()
    add_push_arguments(parser)
    args = parser.parse_args("--num-frames 6 --batch-size 4 --shape 16 16 --seed 3".split())
    streams = [list(frame_batches(args, s)) for s in (0, 1)]
    assert [ids.tolist() for _, ids, _ in streams[0]] == [[0, 1, 2, 3], [4, 5]]
    assert [ids.tolist() for _, ids, _ in streams[1]] == [[6, 7, 8, 9], [10, 11]]
    assert streams[0][0][0].shape == (4, 16, 16)  # H W given: sent as (B, H, W)


@pytest.mark.parametrize(
    "args,message",
    [
        ("--pad-to 32 32", "--pad-to needs --format npz"),
        ("--shape 1 1 16 16", "--shape takes C H W or H W"),
        ("--daq-run-field run_info", "--daq-run-field run_info needs --format npz"),
        ("--address tcp://127.0.0.1:1 --address nonsense://x", "connect 'nonsense://x' failed"),
    ],
)
def test_bad_options_exit_2(args, message, capsys):
    assert main(args.split()) == 2
    assert message in capsys.readouterr().err


def test_rate_limit_paces_each_stream():
    sock = open_pull("zmq", "tcp://127.0.0.1:0", "bind", 8)
    try:
        pusher = _pusher(
            f"--address {sock.endpoint} --num-frames 20 --batch-size 5 --shape 16 16 "
            "--peaks-per-frame 0 --rate-hz 50"
        )
        assert len(_receive(sock, 4, pusher)) == 4
        out, _ = pusher.communicate(timeout=60)
        summary = json.loads(out)
        # messages are due at 0, 0.1, 0.2 and 0.3 s: 20 frames at 50 Hz
        assert 0.3 <= summary["elapsed_s"] < 2.0 and summary["frames_per_s"] < 70
    finally:
        sock.close()
