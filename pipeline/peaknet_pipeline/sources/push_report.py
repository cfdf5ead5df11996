"""What `peaknet-pipeline push` tells its user while it runs: waiting, progress, and the end.

A pusher with nobody listening used to block in send, or linger, without a word. The stream
threads only count; the main thread calls `Reporter.tick()` a few times a second, and the
reporter writes to stderr: "waiting for a receiver at ADDRESS" once a stream has had no peer
for WAIT_FIRST_S (and every WAIT_EVERY_S while that lasts), and the frames sent per stream with
their rate. On a terminal that is one live line redrawn in place; otherwise (a log, a pipe) a
plain line every PROGRESS_EVERY_S. Whether a peer is connected comes from the transport (zmq
socket monitor, nng pipe callbacks), not from timeouts. The line texts and the exit summary
(which says which addresses never had a receiver) are pure functions.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, TextIO

WAIT_FIRST_S = 1.0  # no peer for this long: say so
WAIT_EVERY_S = 10.0  # and again this often while it lasts
PROGRESS_EVERY_S = 5.0  # plain progress lines (stderr is not a terminal)
LIVE_EVERY_S = 0.5  # redraws of the live line (stderr is a terminal)
RATE_WINDOW_S = 5.0  # rates are over about this much recent time

CLEAR_LINE = "\r\x1b[K"


def waiting_line(stream: int, address: str, waited_s: float, ever_connected: bool) -> str:
    """The line for a stream whose messages have nowhere to go."""
    since = (
        f"the receiver disconnected {waited_s:.0f} s ago"
        if ever_connected
        else f"nothing has connected for {waited_s:.0f} s"
    )
    return f"push: stream {stream}: waiting for a receiver at {address} ({since})"


def stream_progress(stream: int, frames: int, total: int, fps: float, bytes_per_s: float) -> str:
    """'stream 0: 128/256 frames, 25.3 frames/s, 12.1 MB/s' (no total when endless)."""
    done = f"{frames}/{total}" if total else f"{frames}"
    return f"stream {stream}: {done} frames, {fps:.1f} frames/s, {bytes_per_s / 1e6:.1f} MB/s"


def undelivered_line(stream: int, address: str, counts: dict[str, Any]) -> str:
    """The exit line for a stream whose queued messages never left: nobody ever connected."""
    return (
        f"push: stream {stream}: no receiver ever connected to {address}; "
        f"its {counts['messages']} queued messages ({counts['frames']} frames) were not delivered"
    )


def summarize(results: list[dict], addresses: list[str]) -> dict[str, Any]:
    """The run in one dict (the --json line): totals, rates, and which addresses never had a
    receiver while messages were left for them."""
    total = {k: sum(r.get(k, 0) for r in results) for k in ("messages", "frames", "bytes")}
    elapsed = max((r.get("elapsed_s", 0.0) for r in results), default=0.0)
    return {
        "streams": len(results),
        **total,
        "elapsed_s": round(elapsed, 4),
        "send_s": round(max((r.get("send_s", 0.0) for r in results), default=0.0), 4),
        "linger_s": round(max((r.get("linger_s", 0.0) for r in results), default=0.0), 4),
        "frames_per_s": round(total["frames"] / elapsed, 2) if elapsed else 0.0,
        "gbytes_per_s": round(total["bytes"] / elapsed / 1e9, 4) if elapsed else 0.0,
        "delivered": all(r.get("delivered", False) for r in results),
        "no_receiver": [
            address
            for r, address in zip(results, addresses, strict=True)
            if not r.get("delivered", False) and not r.get("ever_connected", False)
        ],
    }


def describe(s: dict[str, Any]) -> str:
    """The summary as the one line printed at exit."""
    if s["delivered"]:
        delivery = "all delivered"
    elif s["no_receiver"]:
        delivery = "NOT DELIVERED: no receiver ever connected to " + ", ".join(s["no_receiver"])
    else:
        delivery = "SOME MAY BE LOST (a receiver connected, but the linger expired)"
    return (
        f"push: {s['streams']} stream(s), {s['messages']} messages, {s['frames']} frames, "
        f"{s['bytes'] / 1e6:.1f} MB in {s['elapsed_s']:.2f} s ({s['frames_per_s']:.1f} frames/s, "
        f"{s['gbytes_per_s']:.3f} GB/s); blocked in send {s['send_s']:.2f} s; {delivery}"
    )


def rates(
    old: tuple[float, list[int], list[int]], new: tuple[float, list[int], list[int]]
) -> list[tuple[float, float]]:
    """(frames/s, bytes/s) per stream between two (time, frames, bytes) samples."""
    dt = new[0] - old[0]
    if dt <= 0:
        return [(0.0, 0.0) for _ in new[1]]
    return [
        ((f1 - f0) / dt, (b1 - b0) / dt)
        for f0, f1, b0, b1 in zip(old[1], new[1], old[2], new[2], strict=True)
    ]


class Reporter:
    """Writes the pusher's waiting and progress lines; `say()` serialises every other line
    (from any thread) with them, so a live line never runs into a plain one."""

    def __init__(
        self,
        senders: list[Any],
        counts: list[dict[str, Any]],
        total_frames: int,
        out: TextIO,
        live: bool,
        every_s: float = PROGRESS_EVERY_S,
    ) -> None:
        self.senders = senders
        self.counts = counts
        self.total = total_frames
        self.out = out
        self.live = live
        self.every_s = LIVE_EVERY_S if live else every_s  # 0: no progress lines
        self._lock = threading.Lock()
        self._live_shown = False
        self._no_peer_since: list[float | None] = [None] * len(senders)
        self._said_waiting: list[float | None] = [None] * len(senders)
        self._samples: deque[tuple[float, list[int], list[int]]] = deque()
        self._last_progress: float | None = None
        self._last_frames = [0] * len(senders)

    def say(self, text: str) -> None:
        with self._lock:
            self._write(text + "\n")

    def finish(self) -> None:
        """End the live line, so what follows starts on a line of its own."""
        with self._lock:
            self._write("")

    def tick(self, now: float) -> None:
        self._check_peers(now)
        self._sample(now)
        if not self.every_s:
            return
        if self._last_progress is None:
            self._last_progress = now  # the first line once there is a rate to show
        elif now - self._last_progress >= self.every_s:
            self._last_progress = now
            self._progress()

    def _write(self, text: str) -> None:
        if self._live_shown:
            self.out.write(CLEAR_LINE)
            self._live_shown = False
        self.out.write(text)
        self.out.flush()

    def _check_peers(self, now: float) -> None:
        for i, sender in enumerate(self.senders):
            if self.counts[i].get("closed"):
                continue
            if sender.peers:
                if self._said_waiting[i] is not None:
                    self.say(f"push: stream {i}: receiver connected at {sender.endpoint}")
                self._no_peer_since[i] = self._said_waiting[i] = None
                continue
            since = self._no_peer_since[i]
            if since is None:
                self._no_peer_since[i] = since = now
            said = self._said_waiting[i]
            if now - since >= WAIT_FIRST_S and (said is None or now - said >= WAIT_EVERY_S):
                self._said_waiting[i] = now
                self.say(waiting_line(i, sender.endpoint, now - since, sender.ever_connected))

    def _sample(self, now: float) -> None:
        frames = [c["frames"] for c in self.counts]
        sizes = [c["bytes"] for c in self.counts]
        self._samples.append((now, frames, sizes))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW_S:
            self._samples.popleft()

    def _progress(self) -> None:
        oldest, newest = self._samples[0], self._samples[-1]
        frames = newest[1]
        waiting = any(s is not None for s in self._said_waiting)
        if frames == self._last_frames and waiting and not self.live:
            return  # nothing moved, and the waiting lines already say why
        self._last_frames = frames
        parts = [
            stream_progress(i, frames[i], self.total, fps, bps)
            for i, (fps, bps) in enumerate(rates(oldest, newest))
        ]
        line = "push: sent " + "; ".join(parts)
        with self._lock:
            if self.live:
                self._write(line)
                self._live_shown = True
            else:
                self._write(line + "\n")
