"""Progress lines during a run: counts per stage, their rates, and queue fill.

Pure formatting over snapshots, so the driver's loop only collects numbers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..placement import Role
from .timeseries import Sample


@dataclass
class Snapshot:
    """Cumulative counts per stage and queue fill at one moment."""

    t: float = field(default_factory=time.monotonic)
    counts: dict[str, int] = field(default_factory=dict)
    queues: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (depth, capacity)
    expected: int | None = None  # frames the run will ingest in all, when the sources know
    done_key: str = "written"  # the count that reaches `expected` when the run is done
    verdict: str | None = None  # the live verdict's word (monitor/verdict.py), once judged
    verdict_sentence: str | None = None


def snapshot_of(sample: Sample, now: float) -> Snapshot:
    """The progress line's numbers from a time-series sample taken at monotonic time `now`."""
    expected = [a.get("frames_expected") for a in sample.of(Role.INGEST)]
    return Snapshot(
        t=now,
        expected=sum(expected) if expected and None not in expected else None,
        counts={**sample.frames(), "hits": int(sample.total(Role.WRITER, "hits"))},
        queues={name: (q["depth"], q["capacity_items"]) for name, q in sample.queues.items()},
    )


def rate(now: Snapshot, before: Snapshot | None, key: str) -> float:
    """Per-second rate of a count between two snapshots (0 without a previous one)."""
    if before is None or now.t <= before.t:
        return 0.0
    return (now.counts.get(key, 0) - before.counts.get(key, 0)) / (now.t - before.t)


def format_progress(now: Snapshot, before: Snapshot | None, started: float) -> str:
    """One line: elapsed time, percent done (finite runs), each count with its current rate,
    then each queue's fill."""
    parts = [f"[{now.t - started:7.1f} s]"]
    if now.expected:
        parts.append(f"{100 * now.counts.get(now.done_key, 0) / now.expected:3.0f}% done")
    for key, value in now.counts.items():
        parts.append(f"{key} {value} ({rate(now, before, key):.1f}/s)")
    for name, (depth, capacity) in now.queues.items():
        parts.append(f"{name} {depth}/{capacity}")
    return " | ".join(parts)


class ProgressLog:
    """Turns snapshots into progress lines: every change, and an unchanged line only every
    `heartbeat_s`, so a stalled run stays quiet but visibly alive. Rates are over the time
    since the previous line; the first line's are since `started` (all counts zero then)."""

    def __init__(self, started: float, heartbeat_s: float = 30.0) -> None:
        self.started = started
        self.heartbeat_s = heartbeat_s
        self._previous = Snapshot(t=started)

    def line(self, snap: Snapshot) -> str | None:
        """The line to print for `snap`, or None when nothing changed and no heartbeat is due."""
        before = self._previous
        changed = (snap.counts, snap.queues) != (before.counts, before.queues)
        if not changed and snap.t - before.t < self.heartbeat_s:
            return None
        self._previous = snap
        return format_progress(snap, before, self.started)
