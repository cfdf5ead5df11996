"""What each stage actor's `stats()` answers: one frozen record per role, in one vocabulary.

The vocabulary, the same for every role (the fields of `StageStats`):

- `actor_id`: the actor's own id (`random-0.1`, `inference-2`, `writer-0`); `index`: its index
  in the config (a source's or writer's; restarts keep it);
- `frames_in`, `batches_in`, `bytes_in`: what the actor took in; `frames_out`, `batches_out`,
  `bytes_out`: what it handed on. Ingest: frames its source made / placed into Q1 (a sealed
  Q1 refuses some: `frames_not_placed`); inference: taken from Q1 / put into Q2 as Results;
  writer: taken from Q2 / handled (written to a file, counted as a non-hit, or failed);
- `busy_s`: seconds spent working, not waiting on input or output;
- `rss_bytes`: the actor process's resident memory when the record was made (in the actor:
  a service's soak test holds every role to a flat line), None where it cannot be read.

Past the base, each role adds its own counters (`IngestStats`, `SocketStats`,
`InferenceStats`, `WriterStats`). The records cross Ray by pickle and stay typed inside the
pipeline; they become dicts only at the edges (report.json, summary.json, the time series,
metrics, the operator's status) through `as_dict`.

`FRAMES` is the one mapping from stage counters to the frames a run has ingested, inferred
and written, and `total` the one sum of a counter over actors; the progress line, the
verdict, the plots and the report all read them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .placement import Role


def rss_bytes() -> int | None:
    """This process's resident memory now (Linux: /proc/self/statm), else None."""
    import os

    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class StageStats:
    """The counters every stage actor keeps, under the names every role shares."""

    role: ClassVar[Role]

    actor_id: str
    index: int = 0
    frames_in: int = 0
    frames_out: int = 0
    batches_in: int = 0
    batches_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    busy_s: float = 0.0
    # Made in the actor: its memory. Not part of what the record says it counted (equality).
    rss_bytes: int | None = field(default_factory=rss_bytes, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """The record as plain data, with its role, for the edges (JSON, metrics, status)."""
        return {"role": str(self.role), **dataclasses.asdict(self)}


DAQ_RUNS_COUNTED = 16  # DAQ runs an ingest actor counts frames of (the most recent)


@dataclass(frozen=True)
class IngestStats(StageStats):
    """A source actor: `source_s` making batches (of which `receive_s` waiting for input),
    `put_s` putting them into Q1 (waiting while it is full included). Its `busy_s` is the
    rest of `source_s` (decoding, generating or reading), derived here so it cannot drift."""

    role: ClassVar[Role] = Role.INGEST

    source_id: str = ""
    start_seq: int = 0
    ended_by: str = "not started"
    elapsed_s: float = 0.0
    frames_expected: int | None = None
    frames_not_placed: int = 0
    source_s: float = 0.0
    receive_s: float = 0.0
    put_s: float = 0.0
    # Under runtime.service: frames placed into Q1 per DAQ run, for the last DAQ_RUNS_COUNTED
    # runs (a restarted service counts what a dead driver had in flight: service.py).
    daq_runs: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "busy_s", max(0.0, self.source_s - self.receive_s))


@dataclass(frozen=True)
class SocketStats(IngestStats):
    """The socket source: its endpoint, the messages it received and those it refused."""

    transport: str = ""
    address: str = ""
    endpoint: str | None = None
    messages: int = 0
    message_bytes: int = 0
    bad_messages: dict[str, int] = field(default_factory=dict)
    bad_total: int = 0
    discarded_at_stop: int = 0
    zeroed_pixels: int = 0
    decode_s: float = 0.0


@dataclass(frozen=True)
class InferenceStats(StageStats):
    """An inference actor: the compute loop's time (`busy_s`, `idle_s` waiting for a staged
    batch, `q2_blocked_s`), the prefetch thread's (`q1_wait_s`, `fetch_s`, `slot_wait_s`,
    `stage_s`), and the batches it rejected by reason. `wall_s` is set on its summary."""

    role: ClassVar[Role] = Role.INFERENCE

    state: str = "ready"
    device: str = ""
    error: str | None = None  # why it could not start (state "failed")
    rejected_frames: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    in_actor_batches: int = 0
    staged_batches: int = 0
    idle_s: float = 0.0
    q2_blocked_s: float = 0.0
    q1_wait_s: float = 0.0
    fetch_s: float = 0.0
    slot_wait_s: float = 0.0
    stage_s: float = 0.0
    warmup_s: float = 0.0
    wall_s: float | None = None
    gpu: dict[str, Any] | None = None  # NVML readings on a GPU (monitor/gpu_usage.py)


@dataclass(frozen=True)
class DaqRunState:
    """One DAQ run as one writer sees it (runtime.service): `state` "open" while its files
    take events, "closed" once this writer closed them (its part of the run's summary is then
    in the run's folder); `frames` and `hits` it handled, `first_t` and `last_t` the wall
    times (s since the epoch) of its first and last event here, `files` the CXI files it
    closed for the run. The driver's DAQ-run tracker reads these from every writer."""

    label: str
    state: str
    frames: int = 0
    hits: int = 0
    first_t: float = 0.0
    last_t: float = 0.0
    files: int = 0


@dataclass(frozen=True)
class WriterStats(StageStats):
    """A writer actor: what became of the frames it handled (hits, non-hits, failed by
    reason), its peaks, its files, the Results fetched or held ahead of writing, and the DAQ
    runs it writes."""

    role: ClassVar[Role] = Role.WRITER

    hits: int = 0
    non_hits: int = 0
    rows_written: int = 0
    peaks_found: int = 0
    peaks_written: int = 0
    peaks_dropped_max: int = 0
    peaks_too_small: int = 0
    peaks_too_large: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    files_closed: int = 0
    current_file: str | None = None
    current_file_events: int = 0
    pending: int = 0
    held: int = 0
    held_bytes: int = 0
    q2_wait_s: float = 0.0
    fetch_s: float = 0.0
    # Under runtime.service: the open DAQ runs and the last closed ones (writer/daqrun.py),
    # and the events of a DAQ run that reached this writer after it had closed the run.
    daq_runs: tuple[DaqRunState, ...] = ()
    daq_run_stragglers: int = 0
    # Arrival at ingest -> written, per event (writer/stage.py): the run's and the last
    # minute's count, median_s, p95_s, max_s, with the buckets that merge (monitor/latency.py).
    latency: dict[str, Any] = field(default_factory=dict)


# The frames a run has ingested, inferred and written: each stage's frames out.
FRAMES: dict[str, Role] = {
    "ingested": Role.INGEST,
    "inferred": Role.INFERENCE,
    "written": Role.WRITER,
}
FRAMES_KEY = "frames_out"


def frames_done(total: Callable[[Role, str], float]) -> dict[str, int]:
    """{"ingested", "inferred", "written": frames} from `total(role, counter)` (a sample's
    sum over the actors of a role)."""
    return {name: int(total(role, FRAMES_KEY)) for name, role in FRAMES.items()}


def as_dict(stats: StageStats | Mapping[str, Any] | None) -> dict[str, Any]:
    """A record (or a dict already at an edge: a cancelled actor's summary, a sample read
    back from timeseries.jsonl) as a dict; None as an empty one."""
    if stats is None:
        return {}
    if isinstance(stats, StageStats):
        return stats.as_dict()
    return dict(stats)


def total(records: Iterable[Mapping[str, Any]], key: str) -> float:
    """Sum of a counter over actors' records; a count kept by reason ({reason: n}) adds its
    reasons, a missing or None count adds nothing."""
    values = (r.get(key, 0) for r in records)
    return sum(sum(v.values()) if isinstance(v, Mapping) else (v or 0) for v in values)
