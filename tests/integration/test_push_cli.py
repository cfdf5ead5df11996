"""`peaknet-pipeline push` as a user runs it: the real command in a subprocess, what it says on
stderr while nobody listens or while it sends, its summary and its exit code."""

from __future__ import annotations

import argparse
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pynng
import pytest
import zmq

from helpers import STARTED_PUSHERS
from peaknet_pipeline.sources.push import add_push_arguments

CLI = Path(sys.executable).parent / "peaknet-pipeline"  # the installed console script


class _Lines:
    """Reads a pipe in a thread, so a test can wait for a line with a deadline."""

    def __init__(self, pipe) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, args=(pipe,), daemon=True).start()

    def _read(self, pipe) -> None:
        for line in pipe:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, text: str, timeout_s: float) -> str | None:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if text in line:
                return line
        return None

    def rest(self) -> list[str]:
        while self.wait_for("\0", 10.0) is not None:
            pass
        return self.seen


def _push(args: str) -> tuple[subprocess.Popen, _Lines]:
    pusher = subprocess.Popen(
        [str(CLI), "push", *args.split()],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    STARTED_PUSHERS.append(pusher)
    return pusher, _Lines(pusher.stderr)


def _refusing_port() -> socket.socket:
    """A port bound but never listening: every connection to it is refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


SMALL = "--batch-size 4 --shape 16 16 --peaks-per-frame 0"


@pytest.mark.slow  # about 4 s: the linger must outlast the first waiting line
@pytest.mark.parametrize("transport", ["zmq", "nng"])
def test_nobody_listening_is_reported_and_ends_with_exit_3(transport):
    with _refusing_port() as idle:
        address = f"tcp://127.0.0.1:{idle.getsockname()[1]}"
        pusher, err = _push(
            f"--address {address} --transport {transport} --num-frames 12 {SMALL} --linger-s 3"
        )
        waiting = err.wait_for("waiting for a receiver", timeout_s=15)
        assert waiting == (
            f"push: stream 0: waiting for a receiver at {address} (nothing has connected for 1 s)"
        ), err.seen
        assert pusher.poll() is None  # said while still waiting, not at exit
        out = pusher.stdout.read()
        assert pusher.wait(timeout=30) == 3
    lines = err.rest()
    assert (
        f"push: stream 0: no receiver ever connected to {address}; "
        "its 3 queued messages (12 frames) were not delivered"
    ) in lines
    assert out.strip().endswith(f"NOT DELIVERED: no receiver ever connected to {address}")


def test_nobody_listening_with_more_than_the_queue_holds_waits_until_ctrl_c():
    # 256 frames: the send queue fills and the pusher blocks in send; it used to say nothing.
    with _refusing_port() as idle:
        address = f"tcp://127.0.0.1:{idle.getsockname()[1]}"
        pusher, err = _push(f"--address {address} --num-frames 256 {SMALL} --linger-s 1")
        assert err.wait_for(f"waiting for a receiver at {address}", timeout_s=15), err.seen
        pusher.send_signal(signal.SIGINT)
        assert pusher.wait(timeout=30) == 130
    lines = err.rest()
    assert any(line.startswith("push: stopping; waiting up to 1.0 s") for line in lines), lines
    assert (
        f"push: stream 0: no receiver ever connected to {address}; "
        "its 5 queued messages (20 frames) were not delivered"
    ) in lines


class _Receivers:
    """Plain zmq PULL / nng Pull0 sockets bound on loopback ports, one per stream."""

    def __init__(self, transport: str, count: int) -> None:
        self.transport, self.socks, self.addresses = transport, [], []
        if transport == "zmq":
            self._ctx = zmq.Context()
        for _ in range(count):
            if transport == "zmq":
                sock = self._ctx.socket(zmq.PULL)
                sock.bind("tcp://127.0.0.1:*")
                self.addresses.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
            else:
                sock = pynng.Pull0(recv_timeout=50, recv_max_size=0)
                sock.listen("tcp://127.0.0.1:0")
                port = str(sock.listeners[0].local_address).rsplit(":", 1)[-1]
                self.addresses.append(f"tcp://127.0.0.1:{port}")
            self.socks.append(sock)

    def receive(self, per_socket: int, timeout_s: float = 30.0) -> list[int]:
        got, deadline = [0] * len(self.socks), time.monotonic() + timeout_s
        while min(got) < per_socket and time.monotonic() < deadline:
            for i, sock in enumerate(self.socks):
                if got[i] < per_socket and self._recv(sock):
                    got[i] += 1
        return got

    def _recv(self, sock) -> bool:
        if self.transport == "zmq":
            return bool(sock.poll(50)) and sock.recv() is not None
        try:
            return sock.recv() is not None
        except pynng.Timeout:
            return False

    def close(self) -> None:
        for sock in self.socks:
            sock.close()
        if self.transport == "zmq":
            self._ctx.term()


@pytest.mark.parametrize("transport", ["zmq", "nng"])
def test_sending_shows_progress_per_stream_and_a_summary(transport):
    receivers = _Receivers(transport, 2)
    try:
        addresses = " ".join(f"--address {a}" for a in receivers.addresses)
        pusher, err = _push(
            f"{addresses} --transport {transport} --num-frames 24 {SMALL} --rate-hz 16 "
            "--progress-s 0.4"
        )
        assert receivers.receive(per_socket=6) == [6, 6]
        out = pusher.stdout.read()
        assert pusher.wait(timeout=30) == 0, err.rest()
    finally:
        receivers.close()
    lines = err.rest()
    progress = [
        re.fullmatch(
            r"push: sent stream 0: (\d+)/24 frames, ([\d.]+) frames/s, [\d.]+ MB/s; "
            r"stream 1: (\d+)/24 frames, ([\d.]+) frames/s, [\d.]+ MB/s",
            line,
        )
        for line in lines
        if line.startswith("push: sent")
    ]
    assert progress and all(progress), lines  # 1.5 s of sending: a line every 0.4 s
    assert any(float(m[2]) > 0 and float(m[4]) > 0 for m in progress), lines
    assert not any("waiting for a receiver" in line for line in lines), lines
    assert re.fullmatch(
        r"push: 2 stream\(s\), 12 messages, 48 frames, .* all delivered", out.strip()
    ), out


def test_help_shows_every_default_and_the_exit_codes():
    done = subprocess.run([str(CLI), "push", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())  # argparse wraps lines at the terminal's width
    parser = argparse.ArgumentParser()
    add_push_arguments(parser)
    for action in parser._actions:
        if action.default is None or isinstance(action.default, bool) or action.dest == "help":
            continue
        assert f"(default: {action.default})" in text, action.dest
    assert "(default: tcp://127.0.0.1:12321)" in text  # --address, default None in argparse
    assert "Frames sent to each --address (per stream, not in total)" in text
    assert "3 no receiver ever connected to an address" in text
    assert "130 stopped by Ctrl-C" in text
