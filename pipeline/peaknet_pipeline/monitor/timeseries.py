"""The run's time series: what the driver samples once per progress interval.

Each `Sample` holds every actor's counters (its last `stats()`, or its summary once finished,
as a dict: the series is written as JSON),
both queues' totals and per-shard depths, the object store's use, the inference pool's state
and the driver's own memory (it must stay flat however long a run streams). The progress
line is made from the newest sample, the verdict from a window of them, `report.html` from all
of them; the run writes them to `timeseries.jsonl` (one JSON object a line) so
`peaknet-pipeline report RUN_DIR` can draw the page again later.

Memory stays bounded on long runs: past `max_samples`, every other sample of the older half is
dropped, so the series keeps its whole span, at a coarser step the older it is.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..placement import Role
from ..stats import frames_done, total
from .advice import Room

MAX_SAMPLES = 2000
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


def rss_bytes() -> int | None:
    """This process's resident memory now (Linux: /proc/self/statm), else None."""
    import os

    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class TimeSeries:
    """Samples in time order, bounded in number; `room` is what the Ray cluster could hold
    of inference actors while they were taken (the verdict's advice stops there), when
    known."""

    def __init__(self, max_samples: int = MAX_SAMPLES, room: Room | None = None) -> None:
        self.max_samples = max_samples
        self.room = room
        self.samples: list[Sample] = []

    def add(self, sample: Sample) -> None:
        self.samples.append(sample)
        if len(self.samples) > self.max_samples:
            half = len(self.samples) // 2
            self.samples = self.samples[:half:2] + self.samples[half:]

    def window(self, seconds: float) -> list[Sample]:
        """The samples of the last `seconds` (at least the newest one)."""
        if not self.samples:
            return []
        since = self.samples[-1].t - seconds
        return [s for s in self.samples if s.t >= since]

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
