"""What every ingest actor shares: turn batches from somewhere into Q1 records.

A source subclass says how it opens (`open()`: check its files, bind its socket) and where
batches come from (`batches()`); this base puts them into Q1 through a QueueProducer whose
Outbox makes the queue the owner of the pixels, counts what went in, honours `stop()`, and
closes its producer id so consumers see end of stream. Like every stage actor it answers
`ready`, `run`, `stats` and `stop`: `ready()` opens the source, so a missing file or a port in
use is a start-up failure, reported before anything streams.

Where an ingest actor's time goes, for the verdict (monitor/verdict.py): `source_s` is spent
making the next batch (inside `batches()`), of which `receive_s` waiting for input (a socket's
empty inbox, pacing at `rate_hz`); the rest of `source_s` is decoding, generating or reading;
`put_s` is putting batches into Q1 (including waiting while Q1 is full). A phase still in
progress counts up to now, so a source stuck waiting for its first message shows it.
The metrics recorder turns these into Prometheus counters once a second (monitor.metrics);
with `profile.nvtx` the same spans are NVTX ranges (`source`, `q1_put`).

Every event carries `meta["arrival_t"]` (records.ARRIVAL_T), stamped here when its batch
was made, or by the socket source when its message was received: the writer measures the
run's latency from it (monitor/latency.py).

Under `runtime.service` every event carries `meta["daq_run"]` (daq_run.py). The socket source
labels its own events (run field or pauses); a finite source (random, replay) has no DAQ runs
of its own, so its whole stream is one, named from the time of its first batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..config import PipelineConfig
from ..logs import setup_logging
from ..monitor.metrics import run_of, stage_recorder
from ..nvtx import nvtx_range, nvtx_wanted
from ..placement import Role
from ..queue import Full, Outbox, PayloadOwner, QueueProducer, ShardedQueue
from ..records import ARRIVAL_T, Batch, ReadyInfo
from ..stats import DAQ_RUNS_COUNTED, IngestStats
from .daq_run import gap_label, label_array

log = logging.getLogger(__name__)

# IngestStats' counters: batches, frames and bytes made (_in) and placed into Q1 (_out), the
# frames Q1 refused (sealed), and the seconds of each phase (the module docstring).
_COUNTS = (*(f"{n}_{way}" for way in ("in", "out") for n in ("batches", "frames", "bytes")),)
_COUNTS += ("frames_not_placed", "source_s", "receive_s", "put_s")


def stamp_arrival(meta: dict[str, Any], count: int, now: float) -> dict[str, Any]:
    """`meta` with every event's arrival time (records.ARRIVAL_T): `now`, when the batch
    was made, unless the source stamped its events itself (the socket: its message's
    receipt, which may be earlier than decoding it)."""
    if ARRIVAL_T in meta:
        return meta
    return {**meta, ARRIVAL_T: np.full(count, now, dtype=np.float64)}


class IngestActor(PayloadOwner):
    """Base of the source actors; run as Ray actors with max_concurrency >= 3."""

    def __init__(
        self,
        source_id: str,
        q1: ShardedQueue,
        cfg: PipelineConfig,
        index: int,
        producer_id: str | None = None,
        start_seq: int = 0,
        fill_to: int = -1,
    ) -> None:
        """`source_id` names the stream (its records' keys); `producer_id` this actor (a
        restarted source is a new producer of the same stream, resuming at `start_seq`).
        `fill_to` is the highest batch its stream had placed when it resumed: a stop waits
        until this actor has sent it, so a stop leaves no gap in the stream (a batch its
        predecessor's put lost while a later one was accepted)."""
        setup_logging(cfg.runtime.log_level)
        self.source_id = source_id
        self.producer_id = producer_id or source_id
        self.start_seq = start_seq
        self.fill_to = fill_to
        self._sent_seq = start_seq - 1  # the last batch placed by this actor
        self._stop_asked = False
        self.cfg = cfg
        self.index = index
        self.outbox = Outbox()
        self.stopping = threading.Event()
        self._q1 = q1
        self._ended_by = "not started"
        self.reason = "end of data"  # why batches() ended; sources refine it as they end
        self._counts = dict.fromkeys(_COUNTS, 0)
        self._counts.update(source_s=0.0, receive_s=0.0, put_s=0.0)
        self._phase: tuple[str, float] | None = None  # (counter, since) of the running phase
        self._nvtx = nvtx_wanted(cfg.profile.nvtx, source_id)
        self._started = 0.0
        self._opened = False
        self._open_lock = threading.Lock()  # ready() may race with run() or endpoint()
        self._stream_label: str | None = None  # service: the DAQ run of an unlabelled stream
        self._daq_run_frames: dict[str, int] = {}  # service: frames placed into Q1 per DAQ run
        self.prepare()

    def prepare(self) -> None:
        """Set up what a source needs from its own section of `self.cfg`; runs last in
        `__init__`, so the sources share one constructor (and its signature). Acquires
        nothing: that is `open()`'s, so a start-up failure is reported by `ready()`."""

    def __repr__(self) -> str:  # Ray shows it as the actor's name (`ray list actors`, dashboard)
        return self.producer_id

    def open(self) -> None:
        """Acquire what the source reads from (files, a socket); raise naming what failed."""

    def expected_frames(self) -> int | None:
        """Frames this actor will send in all, when known (for percent done), else None."""
        return None

    def ready(self) -> ReadyInfo:
        """Open the source; raises its start-up error (the driver reports it, exit code 2)."""
        with self._open_lock:
            if not self._opened:
                self.open()
                self._opened = True
        return ReadyInfo.here(self.producer_id)

    def batches(self) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
        """Yield (images (B, C, H, W), metadata arrays of length B) until done, or soon after
        `self.stopping` is set (a source decides how: the socket source first ingests what it
        has already received)."""
        raise NotImplementedError

    def end_reason(self) -> str:
        """Why batches() ended, for the run report; sources set `self.reason` as they end."""
        return "stopped" if self.stopping.is_set() else self.reason

    def run(self) -> IngestStats:
        self.ready()
        producer = QueueProducer(self._q1, self.producer_id, self.outbox)
        self._started = time.monotonic()
        self._ended_by = "running"
        metrics = stage_recorder(
            self.cfg.monitor.metrics, Role.INGEST, self.source_id, run_of(self._q1.name), self.stats
        )
        batches = self.batches()
        try:
            for seq, (images, meta) in enumerate(self._timed(batches), start=self.start_seq):
                meta = stamp_arrival(meta, images.shape[0], time.time())
                if self.cfg.runtime.service and "daq_run" not in meta:
                    meta = {**meta, "daq_run": self._whole_stream_run(images.shape[0])}
                record = Batch.describe(images, meta, self.source_id, seq)
                self._count(record, +1)
                self._begin("put_s")
                try:
                    with nvtx_range("q1_put", self._nvtx):
                        producer.put(record, payload=images)
                except Full as exc:  # Q1 sealed: the driver is stopping the pipeline hard
                    self._refused(exc)
                    break
                else:
                    self._count_daq_run(meta, record.size)
                    self._placed(seq)
                finally:
                    self._end()
            if not self._counts["frames_not_placed"]:
                self._ended_by = self.end_reason()
        except BaseException as exc:
            # The producer id stays open: the driver closes it once a replacement's id is
            # registered, so consumers do not see the stream end while it resumes. Puts in
            # flight finish (the shards fetch from this process until the driver ends it).
            self._ended_by = f"error: {exc!r}"
            raise
        finally:
            batches.close()  # a source's own clean-up (the socket's receive thread) runs now
            if metrics is not None:
                metrics.close()
        self._begin("put_s")  # closing waits for the puts still in flight
        try:
            producer.close()
        except Full as exc:
            self._refused(exc)
        finally:
            self._end()
        log.info(
            "%s: %s after %d frames", self.source_id, self._ended_by, self._counts["frames_out"]
        )
        return self.stats()

    def _timed(self, batches: Iterator) -> Iterator:
        """`batches`, with the time spent making each batch counted as `source_s`."""
        try:
            while True:
                self._begin("source_s")
                try:
                    with nvtx_range("source", self._nvtx):
                        item = next(batches, None)
                finally:
                    self._end()
                if item is None:
                    return
                yield item
        finally:
            close = getattr(batches, "close", None)  # a generator's cleanup runs now, not at gc
            if close is not None:
                close()

    def _whole_stream_run(self, count: int) -> np.ndarray:
        """`daq_run` of a batch of a source that labels none: one DAQ run for its stream."""
        if self._stream_label is None:
            self._stream_label = gap_label(time.time())
        return label_array(self._stream_label, count)

    def _count_daq_run(self, meta: dict[str, Any], frames: int) -> None:
        """Frames placed into Q1 per DAQ run (service only), for the last DAQ_RUNS_COUNTED
        runs: a restarted service compares them with what reached its files (service.py)."""
        labels = meta.get("daq_run")
        if labels is None or not len(labels):
            return
        label = str(labels[0])
        self._daq_run_frames[label] = self._daq_run_frames.pop(label, 0) + frames  # newest last
        while len(self._daq_run_frames) > DAQ_RUNS_COUNTED:
            del self._daq_run_frames[next(iter(self._daq_run_frames))]

    def _begin(self, counter: str) -> None:
        self._phase = (counter, time.perf_counter())

    def _end(self) -> None:
        counter, since = self._phase
        self._phase = None
        self._counts[counter] += time.perf_counter() - since

    def waited(self, seconds: float) -> None:
        """A source's time waiting for input (counted as `receive_s`, part of `source_s`)."""
        self._counts["receive_s"] += seconds

    def _count(self, record: Batch, sign: int) -> None:
        """Count a record made (+1: in and out) or refused by Q1 (-1: out only)."""
        for way in ("in", "out") if sign > 0 else ("out",):
            self._counts[f"batches_{way}"] += sign
            self._counts[f"frames_{way}"] += sign * record.size
            self._counts[f"bytes_{way}"] += sign * record.nbytes

    def _refused(self, exc: Full) -> None:
        """Records Q1 refused (sealed) were never ingested: uncount them and report them."""
        for record in exc.rejected:
            self._count(record, -1)
            self._counts["frames_not_placed"] += record.size
        self._ended_by = f"Q1 sealed; {self._counts['frames_not_placed']} frames not placed"
        log.error("%s: %s", self.source_id, exc)

    def stop(self) -> None:
        """Finish the batch in hand, then end (the records already queued stay queued); a
        resumed source first sends up to `fill_to`."""
        self._stop_asked = True
        if self._sent_seq >= self.fill_to:
            self.stopping.set()

    def _placed(self, seq: int) -> None:
        """Batch `seq` is placed; a stop that waited for the gap to be filled takes effect."""
        self._sent_seq = seq
        if self._stop_asked and seq >= self.fill_to:
            self.stopping.set()

    def stats(self) -> IngestStats:
        return IngestStats(**self._stats_fields())

    def _stats_fields(self) -> dict[str, Any]:
        """The fields of this actor's IngestStats (a source adds its own: SocketStats)."""
        elapsed = time.monotonic() - self._started if self._started else 0.0
        counts = dict(self._counts)
        phase = self._phase  # read once: the run thread may end it meanwhile
        if phase is not None:
            counts[phase[0]] += time.perf_counter() - phase[1]
        return {
            "actor_id": self.producer_id,
            "index": self.index,
            "source_id": self.source_id,
            "start_seq": self.start_seq,
            "ended_by": self._ended_by,
            "elapsed_s": elapsed,
            "frames_expected": self.expected_frames(),
            **counts,
            "daq_runs": dict(self._daq_run_frames),
        }
