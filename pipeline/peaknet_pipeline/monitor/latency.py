"""Arrival-to-written latency: a bounded summary of many observations (pure; no Ray, no clock).

Latency here is the time from an event's arrival at ingest (`meta["arrival_t"]`, records.py:
a socket message's receipt, or a finite source's batch being made) to the moment its writer
has handled it (writer/stage.py says exactly when). Each writer observes every event it
handles; the run's summary (report.json, report.html, WriterStats, Prometheus) needs the
median, the 95th percentile and the maximum, over the whole run and over the last minute, for
one writer and for all writers together.

Keeping every value would grow with the run, and percentiles of several writers cannot be
merged from their percentiles. So values go into logarithmic buckets: bucket `i` holds the
values in (2^((i-1)/8), 2^(i/8)] seconds, a width of 9 % (`RATIO`); a percentile is read as
its bucket's geometric middle (held inside the exact minimum and maximum), so it is within
4.5 % of the true order statistic. Bucket indices are clamped to [`LOWEST`, `HIGHEST`]
(about 1 microsecond to 36 hours): at most 297 buckets, however many values. A value at or
below zero (the ingest and writer nodes' clocks disagree) counts in the lowest bucket; the
exact minimum says so. Merging two summaries adds their bucket counts: the merge of two is
exactly the summary of the union of their values.

`Window` keeps the last `window_s` seconds as one histogram per `slot_s` slot (a ring, so
also bounded); `LatencyTracker` keeps both, the run's and the window's.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PER_OCTAVE = 8  # buckets per doubling
RATIO = 2 ** (1 / PER_OCTAVE)  # a bucket's upper edge over its lower edge
LOWEST = -20 * PER_OCTAVE  # bucket (.., 2^-20 s]: about 1 microsecond and below
HIGHEST = 17 * PER_OCTAVE  # bucket (.., 2^17 s]: about 36 hours and above
WINDOW_S = 60.0  # "the last minute"
SLOT_S = 1.0  # the window moves on in steps of this


def bucket_of(values: np.ndarray) -> np.ndarray:
    """Bucket index of each value (seconds): the i with 2^((i-1)/8) < v <= 2^(i/8), clamped."""
    v = np.asarray(values, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        idx = np.ceil(np.log2(np.where(v > 0, v, 0.0)) * PER_OCTAVE)
    idx = np.nan_to_num(idx, nan=LOWEST, neginf=LOWEST, posinf=HIGHEST)
    return np.clip(idx, LOWEST, HIGHEST).astype(np.int64)


def upper_edge(index: int) -> float:
    """The largest value of bucket `index` (seconds)."""
    return 2.0 ** (index / PER_OCTAVE)


def middle(index: int) -> float:
    """The geometric middle of bucket `index`: what a percentile in it reads as."""
    return 2.0 ** ((index - 0.5) / PER_OCTAVE)


@dataclass
class Histogram:
    """Counts of values by bucket, with their exact count, sum, minimum and maximum."""

    buckets: Counter[int] = field(default_factory=Counter)
    count: int = 0
    sum_s: float = 0.0
    min_s: float = math.inf
    max_s: float = -math.inf

    def add(self, values: np.ndarray) -> None:
        """Add values (seconds)."""
        v = np.asarray(values, dtype=np.float64).ravel()
        if not v.size:
            return
        idx, n = np.unique(bucket_of(v), return_counts=True)
        self.buckets.update(dict(zip(idx.tolist(), n.tolist(), strict=True)))
        self.count += int(v.size)
        self.sum_s += float(v.sum())
        self.min_s = min(self.min_s, float(v.min()))
        self.max_s = max(self.max_s, float(v.max()))

    def merge(self, other: Histogram) -> None:
        """Add `other`'s values (as if they had been added here)."""
        self.buckets.update(other.buckets)
        self.count += other.count
        self.sum_s += other.sum_s
        self.min_s = min(self.min_s, other.min_s)
        self.max_s = max(self.max_s, other.max_s)

    def quantile(self, q: float) -> float | None:
        """The value of rank ceil(q * count) (1-based; q in (0, 1]), read as its bucket's
        middle held inside [min, max] (the top rank: the exact maximum); None without values."""
        if not self.count:
            return None
        rank = max(1, math.ceil(q * self.count))
        if rank >= self.count:
            return self.max_s  # the largest value is known exactly
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                return min(self.max_s, max(self.min_s, middle(index)))
        return self.max_s

    def summary(self) -> dict[str, Any]:
        """count, median_s, p95_s, max_s (None without values): what pages and reports show."""
        return {
            "count": self.count,
            "median_s": self.quantile(0.5),
            "p95_s": self.quantile(0.95),
            "max_s": self.max_s if self.count else None,
        }

    def as_dict(self) -> dict[str, Any]:
        """The summary plus what merging needs (sum, minimum, buckets), as plain JSON data:
        bucket indices become strings, as JSON keys are."""
        return {
            **self.summary(),
            "sum_s": self.sum_s,
            "min_s": self.min_s if self.count else None,
            "buckets": {str(i): n for i, n in sorted(self.buckets.items()) if n},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Histogram:
        """The histogram `as_dict()` wrote (an empty one for None or an empty dict)."""
        if not d or not d.get("count"):
            return cls()
        return cls(
            Counter({int(i): int(n) for i, n in d.get("buckets", {}).items()}),
            int(d["count"]),
            float(d.get("sum_s", 0.0)),
            float(d["min_s"]),
            float(d["max_s"]),
        )


def merged(histograms: Iterable[Histogram]) -> Histogram:
    """One histogram of all the values of `histograms`."""
    out = Histogram()
    for h in histograms:
        out.merge(h)
    return out


class Window:
    """The values of the last `window_s` seconds, as one Histogram per `slot_s` slot. A slot
    is dropped once its whole span is older than the window, so the window covers between
    `window_s` and `window_s + slot_s` seconds. Times are the caller's (any clock)."""

    def __init__(self, window_s: float = WINDOW_S, slot_s: float = SLOT_S) -> None:
        self.window_s, self.slot_s = window_s, slot_s
        self._slots: dict[int, Histogram] = {}

    def _prune(self, now: float) -> None:
        oldest = math.floor((now - self.window_s) / self.slot_s)
        for slot in [s for s in self._slots if s < oldest]:
            del self._slots[slot]

    def add(self, values: np.ndarray, now: float) -> None:
        self._prune(now)
        self._slots.setdefault(math.floor(now / self.slot_s), Histogram()).add(values)

    def histogram(self, now: float) -> Histogram:
        self._prune(now)
        return merged(self._slots.values())

    def __len__(self) -> int:
        return len(self._slots)


class LatencyTracker:
    """The run's latencies and the last minute's. Not thread-safe: its owner locks."""

    def __init__(self, window_s: float = WINDOW_S, slot_s: float = SLOT_S) -> None:
        self.run = Histogram()
        self.window = Window(window_s, slot_s)

    def observe(self, arrival_t: np.ndarray, now: float) -> None:
        """Events that arrived at `arrival_t` (wall seconds) handled at `now` (same clock)."""
        latency = now - np.asarray(arrival_t, dtype=np.float64)
        self.run.add(latency)
        self.window.add(latency, now)

    def as_dict(self, now: float) -> dict[str, Any]:
        """{run summary and buckets..., "last_minute": {the same for the window}}."""
        return {**self.run.as_dict(), "last_minute": self.window.histogram(now).as_dict()}


def merge_latency(records: Iterable[Mapping[str, Any] | None]) -> dict[str, Any]:
    """Merge `LatencyTracker.as_dict()` records (several writers): the run's buckets added,
    and the last minutes' (each writer's last minute, up to when it reported)."""
    records = [r for r in records if r]
    run = merged(Histogram.from_dict(r) for r in records)
    minute = merged(Histogram.from_dict(r.get("last_minute")) for r in records)
    return {**run.as_dict(), "last_minute": minute.as_dict()}


DEFINITION = (
    "seconds from an event's arrival at ingest (a socket message received, or a batch made) "
    "to its writer having appended its row to the open CXI file (or, for an event without a "
    "row, counted it); events that failed are not counted"
)


def _numbers(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record's summary without its buckets, and its last minute's too."""
    run = Histogram.from_dict(record).summary()
    return {**run, "last_minute": Histogram.from_dict(record.get("last_minute")).summary()}


def latency_report(writers: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """report.json's `latency`: for all writers together (their buckets merged) and for each
    (by actor id), count, median_s, p95_s and max_s over the run, and `last_minute` the same
    for the minute before each writer's last report (its end)."""
    records = {str(w.get("actor_id", i)): w.get("latency") for i, w in enumerate(writers)}
    return {
        "definition": DEFINITION,
        **_numbers(merge_latency(records.values())),
        "writers": {actor: _numbers(r or {}) for actor, r in records.items()},
    }
