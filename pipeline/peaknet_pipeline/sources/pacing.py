"""Pacing a stream to a frame rate: shared by the ingest actors and `peaknet-pipeline push`,
which must import without Ray (the CLI builds its parser before Ray's output is configured)."""

from __future__ import annotations

import threading
import time


def pace(stopping: threading.Event, t0: float, frames_done: int, rate_hz: float) -> float:
    """Sleep until `frames_done` frames are due at `rate_hz` (0: no pacing); wakes on stop.
    Returns the seconds slept."""
    if rate_hz > 0:
        delay = t0 + frames_done / rate_hz - time.monotonic()
        if delay > 0:
            started = time.monotonic()
            stopping.wait(delay)
            return time.monotonic() - started
    return 0.0
