"""A writer's DAQ runs (runtime.service): one folder, one file series and one summary part each.

In service mode every event carries `meta["daq_run"]`, a folder name. A writer routes each
Result to the `CxiSeries` of its DAQ run, under `<output dir>/<daq_run>/`, so events of two
DAQ runs never share a file. A DAQ run closes in this writer once none of its events has
reached the writer for `writer.daq_run_close_s` (checked on every Result and on the writer's
idle tick, against an injected clock), and at the end of the stream: its open file closes with
every Result handled so far in its ledger (a file without rows if none is open: closing
commits, as everywhere in the writer), and the writer's part of the run's summary is written
as `summary-<consumer>.json` in the folder (summary.py merges the parts). Then everything the
writer kept for the run is dropped but a small `DaqRunState` among the last `CLOSED_KEPT`:
nothing the writer holds grows with the number of DAQ runs, and no file handle of a closed
run stays open.

An event of a DAQ run this writer has closed already (a straggler: its summary part is in the
folder) opens the run again: a new file in the same folder, counted as `daq_run_stragglers`,
and a further summary part (`summary-<consumer>_2.json`, ...) when it closes again.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..stats import DaqRunState
from .ledger import LedgerIndex
from .series import CxiSeries

KEY = "daq_run"  # the metadata field naming an event's DAQ run
LABEL = re.compile(r"[A-Za-z0-9._-]+")
CLOSED_KEPT = 16  # closed DAQ runs a writer's stats still list
PART_PREFIX = "summary-"  # summary-<consumer>[_N].json: one writer's part of a run's summary


def daq_run_label(meta: Mapping[str, np.ndarray]) -> str | None:
    """The DAQ run of a Result's events: None without `daq_run` in the metadata.

    Raises ValueError when the events name more than one DAQ run, or a label that is not a
    folder name (`[A-Za-z0-9._-]+`, not `.` or `..`): such a Result is refused, not written.
    """
    if KEY not in meta:
        return None
    values = np.asarray(meta[KEY]).ravel().tolist()
    labels = {v.decode() if isinstance(v, bytes) else v for v in values}
    if len(labels) != 1:
        shown = sorted(map(str, labels))[:4]
        raise ValueError(f"events of {len(labels)} DAQ runs in one batch: {shown}")
    (label,) = labels
    if not isinstance(label, str) or not LABEL.fullmatch(label) or label in (".", ".."):
        raise ValueError(f"DAQ run label {label!r} is not a folder name ([A-Za-z0-9._-]+)")
    return label


def part_name(consumer: str, part: int) -> str:
    """The file name of a writer's `part`-th summary part of one DAQ run (1 = the first)."""
    return f"{PART_PREFIX}{consumer}.json" if part == 1 else f"{PART_PREFIX}{consumer}_{part}.json"


def next_part(folder: str, consumer: str) -> int:
    """The first part number of `consumer` with no summary part in `folder` yet (a part
    already there means this writer closed the run before: the events now are stragglers)."""
    part = 1
    while os.path.exists(os.path.join(folder, part_name(consumer, part))):
        part += 1
    return part


@dataclass
class DaqRun:
    """What a writer keeps for one open DAQ run; dropped when the run closes."""

    label: str
    series: CxiSeries
    part: int  # which summary part this opening writes (> 1: reopened by stragglers)
    first_t: float
    seen: float  # the clock when an event of it last reached the writer
    last_t: float = 0.0
    counts: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)
    stragglers: int = 0
    before: DaqRunState | None = None  # this writer's figures of the run's earlier parts
    ledgers: LedgerIndex | None = None  # read only if a Result comes again (a writer died)

    def state(self, state: str = "open") -> DaqRunState:
        """The run as the writer's stats show it: earlier parts' figures included."""
        b = self.before or DaqRunState(self.label, state, first_t=self.first_t)
        return DaqRunState(
            self.label,
            state,
            frames=b.frames + int(self.counts["events"]),
            hits=b.hits + int(self.counts["hits"]),
            first_t=b.first_t,
            last_t=self.last_t,
            files=b.files + len(self.series.files),
        )

    def summary(self, writer: int, consumer: str, counted: tuple[str, ...]) -> dict[str, Any]:
        """This writer's part of the run's summary.json: what it wrote for the run since it
        (re)opened it, in the writers' summary shape (summary.merge_summaries)."""
        counts = {key: int(self.counts[key]) for key in counted}
        failed = dict(self.failed)
        notes = dict(self.series.notes)
        if self.stragglers:
            notes["daq_run_stragglers"] = self.stragglers
        return {
            "daq_run": self.label,
            "writer": writer,
            "consumer": consumer,
            "part": self.part,
            **counts,
            "failed": failed,
            "accounted": counts["hits"] + counts["non_hits"] + sum(failed.values())
            == counts["events"],
            "notes": notes,
            "files": list(self.series.files),
            "first_t": self.first_t,
            "last_t": self.last_t,
            "output_dir": self.series.output_dir,
        }


class DaqRuns:
    """A writer's open DAQ runs, closing each on quiet, and the last closed ones' states.

    `make_series(folder)` makes the file series of a run's folder; `clock` (monotonic) times
    the quiet, `wall` stamps first_t and last_t. Not thread-safe: the writer's lock guards it.
    """

    def __init__(
        self,
        output_dir: str,
        make_series: Callable[[str], CxiSeries],
        consumer: str,
        close_s: float,
        clock: Callable[[], float],
        wall: Callable[[], float],
    ) -> None:
        self.output_dir, self.consumer, self.close_s = output_dir, consumer, close_s
        self._make_series, self.clock, self.wall = make_series, clock, wall
        self.open: dict[str, DaqRun] = {}
        self.closed: deque[DaqRunState] = deque(maxlen=CLOSED_KEPT)
        self.stragglers = 0  # events of runs this writer had closed already
        self.files_closed = 0  # files of the runs closed (the open runs' are in their series)
        self.parts_written = 0
        self.notes: Counter[str] = Counter()  # the closed runs' notes, by kind

    def folder(self, label: str) -> str:
        return os.path.join(self.output_dir, label)

    def route(self, label: str, events: int, frame_shape: tuple | None) -> DaqRun:
        """The open run `label` (opened now if it is not), with `events` more reaching it."""
        now, wall = self.clock(), self.wall()
        run = self.open.get(label)
        if run is None:
            run = self._open(label, now, wall)
        if frame_shape is not None:
            run.series.write_geometry(tuple(frame_shape))  # once per folder, hits or not
        run.seen, run.last_t = now, wall
        if run.part > 1:
            run.stragglers += events
            self.stragglers += events
        return run

    def _open(self, label: str, now: float, wall: float) -> DaqRun:
        folder = self.folder(label)
        series = self._make_series(folder)
        part = next_part(folder, self.consumer)
        before = None
        if part > 1:  # reopened: continue from the figures of its closed state, if still kept
            kept = [s for s in self.closed if s.label == label]
            if kept:
                before = kept[-1]
                self.closed = deque((s for s in self.closed if s.label != label), CLOSED_KEPT)
        run = DaqRun(label, series, part, first_t=wall, seen=now, before=before)
        self.open[label] = run
        return run

    def quiet(self) -> list[DaqRun]:
        """The open runs none of whose events reached the writer for close_s."""
        now = self.clock()
        return [r for r in self.open.values() if now - r.seen >= self.close_s]

    def close(self, run: DaqRun, summary: dict[str, Any]) -> None:
        """Forget a run whose files are closed: write the writer's summary part (`summary`),
        keep its state among the last closed."""
        from .summary import write_run_summary  # summary.py imports the stage, which imports us

        write_run_summary(
            os.path.join(self.folder(run.label), part_name(self.consumer, run.part)), summary
        )
        self.parts_written += 1
        self.notes.update(summary["notes"])
        self.files_closed += len(run.series.files)
        self.closed.append(run.state("closed"))
        del self.open[run.label]

    def ledgers(self, label: str, prefix: str) -> LedgerIndex:
        """The ledgers of a run's folder (kept while the run is open)."""
        run = self.open.get(label)
        if run is None:
            return LedgerIndex(self.folder(label), prefix)
        if run.ledgers is None:
            run.ledgers = LedgerIndex(self.folder(label), prefix)
        return run.ledgers

    def summary(self) -> dict[str, Any]:
        """The writer's summary fields for its DAQ runs (none outside runtime.service): the
        summary parts it wrote (each run folder's summary lists the run's files), the
        stragglers' events, and its last word on each run (`daq_runs`, as in its stats): a
        finished writer's summary is its last counts, from which the driver learns that the
        runs it had open when the service stopped are closed."""
        if not (self.parts_written or self.open or self.closed):
            return {}
        return {
            "daq_run_parts": self.parts_written,
            "daq_run_stragglers": self.stragglers,
            "daq_runs": [dataclasses.asdict(s) for s in self.states()],
        }

    def states(self) -> tuple[DaqRunState, ...]:
        """The open runs and the last closed ones (each label once)."""
        return tuple(self.closed) + tuple(r.state() for r in self.open.values())
