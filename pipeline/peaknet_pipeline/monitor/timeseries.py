"""The run's time series: what the driver samples once per progress interval.

Each `Sample` holds every actor's counters (its last `stats()`, or its summary once finished,
as a dict: the series is written as JSON),
both queues' totals and per-shard depths, the object store's use, the inference pool's state
and the driver's own memory (it must stay flat however long a run streams). The progress
line is made from the newest sample, the verdict from a window of them, `report.html` from all
of them; the run writes them to `timeseries.jsonl` (one JSON object a line) so
`peaknet-pipeline report RUN_DIR` can draw the page again later.

Memory stays bounded however long a service runs (issue 23): the newest `recent` samples are
kept as they came (full rate: the live verdict, the progress line and the DAQ run that just
ended read them), the first sample is kept (the run's start), and older samples are merged
into points of doubling span (`settle`): at most `SPAN_POINTS` points of each span, and never
more than `max_samples` samples in all. A merged point is the newest sample of its span:
every counter in a sample is a running total, so totals at each point, and the mean rate
between any two points, are exact; a gauge (a queue's depth, memory) is its reading at the
point.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..placement import Role
from ..stats import frames_done, total
from ..stats import rss_bytes as rss_bytes  # the driver's reading (sampling.py), as actors'
from .advice import Room

MAX_SAMPLES = 2000  # samples kept in all (about 20 kB each with one actor of each role)
RECENT_SAMPLES = 600  # kept at full rate: 20 minutes at the default progress interval (2 s)
SPAN_POINTS = 64  # merged points of each span (1, 2, 4, ... samples) before two merge
SERIES_FILE = "timeseries.jsonl"


@dataclass
class Sample:
    t: float  # seconds since streaming started
    actors: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> role, state, counts
    queues: dict[str, dict[str, Any]] = field(default_factory=dict)  # "Q1"/"Q2" -> totals
    object_store: dict[str, int] | None = None  # used_bytes, spilled_bytes, capacity_bytes
    pool: dict[str, Any] = field(default_factory=dict)  # the inference pool's state
    driver: dict[str, Any] = field(default_factory=dict)  # the driver process: rss_bytes

    def of(self, role: Role) -> list[dict[str, Any]]:
        """The counters of every actor of `role`."""
        return [a for a in self.actors.values() if a.get("role") == role]

    def total(self, role: Role, key: str) -> float:
        """Sum of a counter over the actors of `role` (stats.total)."""
        return total(self.of(role), key)

    def frames(self) -> dict[str, int]:
        """Frames ingested, inferred and written so far (stats.FRAMES)."""
        return frames_done(self.total)


@dataclass(frozen=True)
class Point:
    """An older part of the series: `sample`, the newest of the `weight` samples it stands for."""

    sample: Sample
    weight: int = 1


Levels = tuple[tuple[Point, ...], ...]  # levels[k]: points of 2**k samples, oldest first


def settle(levels: Levels, point: Point, per_level: int, max_levels: int) -> Levels:
    """`levels` with `point` (the oldest sample leaving the full-rate part) added as the newest
    of level 0. A level holding more than `per_level` points merges its two oldest into one
    point of the next level (its newest one: the next level's points are all older); the top
    level (`max_levels` - 1) merges them in place instead, so the size stays fixed however
    long the series grows: at most `per_level * max_levels` points. Pure."""
    out = list(levels) + [()] * max(0, 1 - len(levels))
    out[0] = (*out[0], point)
    for k in range(len(out)):
        if len(out[k]) <= per_level:
            break
        a, b, *rest = out[k]
        merged = Point(b.sample, a.weight + b.weight)
        if k + 1 < max_levels:
            out[k] = tuple(rest)
            if k + 1 == len(out):
                out.append(())
            out[k + 1] = (*out[k + 1], merged)
        else:
            out[k] = (merged, *rest)
    return tuple(out)


def older_samples(levels: Levels) -> list[Sample]:
    """The merged points' samples in time order (the highest level holds the oldest)."""
    return [p.sample for level in reversed(levels) for p in level]


class TimeSeries:
    """Samples in time order, bounded in number (module doc: full rate for the newest
    `recent`, merged points of doubling span before them); `room` is what the Ray cluster
    could hold of inference actors while they were taken (the verdict's advice stops there),
    when known."""

    def __init__(
        self,
        max_samples: int = MAX_SAMPLES,
        room: Room | None = None,
        recent: int | None = None,
        per_level: int = SPAN_POINTS,
    ) -> None:
        self.max_samples = max_samples
        self.room = room
        self.recent = min(recent or RECENT_SAMPLES, max(1, max_samples * 3 // 10))
        older = max(2, max_samples - self.recent - 1)  # 1: the first sample
        self.per_level = max(2, min(per_level, older // 2))
        self.max_levels = max(1, older // self.per_level)
        self._first: Sample | None = None
        self._levels: Levels = ()
        self._recent: deque[Sample] = deque()
        self.added = 0  # samples ever added (those merged away included)

    @property
    def samples(self) -> list[Sample]:
        """Every sample kept, oldest first: the first, the merged points, the recent ones."""
        first = [self._first] if self._first is not None else []
        return first + older_samples(self._levels) + list(self._recent)

    @samples.setter
    def samples(self, samples: Sequence[Sample]) -> None:
        """Samples as they were kept (read back from timeseries.jsonl): as they are."""
        samples = list(samples)
        self._first = samples[0] if samples else None
        split = max(1, len(samples) - self.recent)
        self._levels = (tuple(Point(s) for s in samples[1:split]),) if split > 1 else ()
        self._recent = deque(samples[split:] if samples else [])
        self.added = len(samples)

    def add(self, sample: Sample) -> None:
        self.added += 1
        if self._first is None:
            self._first = sample
            return
        self._recent.append(sample)
        if len(self._recent) > self.recent:
            point = Point(self._recent.popleft())
            self._levels = settle(self._levels, point, self.per_level, self.max_levels)

    def __len__(self) -> int:
        return (self._first is not None) + sum(map(len, self._levels)) + len(self._recent)

    def window(self, seconds: float) -> list[Sample]:
        """The samples of the last `seconds` (at least the newest one)."""
        samples = self.samples
        if not samples:
            return []
        since = samples[-1].t - seconds
        return [s for s in samples if s.t >= since]

    def write(self, path: str | Path) -> None:
        with open(path, "w") as fh:
            for sample in self.samples:
                fh.write(json.dumps(asdict(sample), default=str) + "\n")

    @classmethod
    def read(cls, path: str | Path) -> TimeSeries:
        series = cls()
        series.samples = list(_samples(Path(path).read_text().splitlines()))
        return series


def _samples(lines: Iterable[str]) -> Iterable[Sample]:
    for line in lines:
        if line.strip():
            yield Sample(**json.loads(line))
