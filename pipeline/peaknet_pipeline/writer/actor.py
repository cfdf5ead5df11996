"""Writer actors: pull Results from Q2, fetch their arrays, find peaks, write CXI files.

Two threads per actor. A fetch thread (the queue's `QueueConsumer`) takes Results from Q2 and
fetches all their arrays with one `ray.get` per step; the main thread (`run`) finds peaks and
writes.
At most `writer.max_pending_batches` Results are fetched and not yet written (exceeded by at
most num_shards - 1 when several Q2 shards answer one wait at once), which bounds the memory a
writer pins in the object store. A Result whose arrays cannot be read (its owner died, the
object was lost) is counted as failed by reason, never fatal.

A writer holds its Results under leases until a closed file commits them (series.py,
ledger.py), and only then acknowledges them: if it dies, another writer writes them again,
once. It closes its file early when the Results it holds pin `writer.max_uncommitted_bytes`,
and when Q2 says only leases keep the stream open (Drained). A Result delivered again whose key
a closed file already committed (its writer died between the rename and the ack) is skipped.
The actor ends when Q2 reports end of stream: it closes its last file and returns its summary.
Under runtime.service it writes each DAQ run into its own folder (daqrun.py): its loop wakes
at least every `tick_s` while Q2 is quiet, so that a DAQ run whose events stopped closes
within writer.daq_run_close_s (+ one tick) even when no further Result comes.
Besides the stage's counters it counts Results taken (`batches_in`, `frames_in`,
`bytes_in`) and the fetch thread's time waiting on Q2 (`q2_wait_s`) and fetching arrays
(`fetch_s`); its `stats()` is a WriterStats (stats.py); a recorder turns them into metrics
(monitor.metrics) and, with `profile.nvtx`, they are NVTX ranges (q2_get, fetch).
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
from typing import Any, NamedTuple

from ..config.models import PipelineConfig
from ..logs import setup_logging
from ..monitor.liveview import LiveView, live_page_on
from ..monitor.metrics import run_of, stage_recorder
from ..nvtx import nvtx_wanted
from ..placement import Role, actor_class, actor_options
from ..queue import EndOfStream, QueueConsumer, ShardedQueue
from ..records import ReadyInfo, Result
from ..stats import WriterStats
from .feed import live_offers
from .stage import WriterStage

log = logging.getLogger("peaknet_pipeline.writer")

FETCH_TIMEOUT_S = 600.0  # a fetch that takes longer is counted as failed, not waited on forever


def tick_s(close_s: float) -> float:
    """How long the loop waits for a Result before it looks for quiet DAQ runs: a quarter of
    writer.daq_run_close_s, between 50 ms and 1 s (a run closes at most this late)."""
    return max(0.05, min(1.0, close_s / 4))


class Failure(NamedTuple):
    """Why a Result's arrays could not be fetched."""

    reason: str
    detail: str = ""


class Settle(NamedTuple):
    """The fetch thread asks the main thread to commit what it holds (Q2 is drained)."""

    done: threading.Event


class WriterActor:
    """One writer (created through `start_writer_actors`, with max_concurrency=2 so that
    `stats` answers while `run` works). `consumer` is its Q2 consumer id (a restarted writer
    gets a new one; its files keep the index)."""

    def __init__(
        self,
        cfg: PipelineConfig,
        q2: ShardedQueue,
        output_dir: str,
        config_hash: str,
        index: int,
        consumer: str | None = None,
    ) -> None:
        setup_logging(cfg.runtime.log_level)
        self.index = index
        self.consumer = consumer or f"writer-{index}"
        # Writers spread over shards, steal when empty, and hold what they take under leases.
        self.q2 = q2.with_home(index).as_consumer(self.consumer)
        self.max_pending = cfg.writer.max_pending_batches
        self.max_uncommitted = cfg.writer.max_uncommitted_bytes
        workers = max(1, int(cfg.writer.num_cpus_per_actor))
        self.metrics = cfg.monitor.metrics
        self.nvtx = nvtx_wanted(cfg.profile.nvtx, self.consumer)
        self.stage = WriterStage(
            cfg.writer, output_dir, index, config_hash, workers, self.nvtx, self.consumer
        )
        self.tick_s = tick_s(cfg.writer.daq_run_close_s)
        self.stage.feed = live_offers(cfg.writer, output_dir, run_of(q2.name))
        if live_page_on(cfg):  # monitor.live_page: peaks counted, newest hits while watched
            self.stage.live = LiveView(cfg.writer.geometry, cfg.writer.min_peaks)
        self._held: dict[tuple[str, int], Result] = {}  # handled, not yet acknowledged
        self._held_bytes = 0
        self.duplicates_skipped = 0
        # Hands run() (result, arrays | Failure) per Result, Settle, and at last EndOfStream.
        self.fetcher = QueueConsumer(
            self.q2,
            functools.partial(_refs_of, self.stage),
            bound=self.max_pending,
            prepare=_arrays_or_failure,
            on_drained=self._ask_settle,
            fetch_timeout_s=FETCH_TIMEOUT_S,
            nvtx=self.nvtx,
            get_range="q2_get",
            name="q2-fetch",
        )

    def __repr__(self) -> str:  # Ray shows it as the actor's name (`ray list actors`, dashboard)
        return self.consumer

    # -- the stage protocol: ready, run, stats, stop --------------------------------------------
    def ready(self) -> ReadyInfo:
        """Check the output directory takes files now, not at the first hit."""
        import tempfile

        with tempfile.NamedTemporaryFile(dir=self.stage.output_dir, prefix=".writable-"):
            pass
        return ReadyInfo.here(self.consumer)

    def stop(self) -> None:
        """Nothing to do: a writer ends at Q2's end of stream, once everything queued upstream
        is written (ending earlier would strand Results in Q2)."""

    # -- fetch thread -------------------------------------------------------------------------
    def _ask_settle(self) -> None:
        """Q2 is drained but for leases, ours among them: have run() commit what it holds
        (after the Results already fetched), then let the shards see the acks before the
        next get."""
        settle = Settle(threading.Event())
        self.fetcher.put(settle)
        settle.done.wait()
        self.q2.flush_acks()

    def _fetched(self) -> dict[str, Any]:
        """Results taken (`batches_in`, `frames_in`, `bytes_in`) and the fetch thread's time
        on Q2 and arrays, under the stats' names (stats.py)."""
        c = self.fetcher.counts()
        return {
            "actor_id": self.consumer,
            "index": self.index,
            "batches_in": c["batches"],
            "frames_in": c["frames"],
            "bytes_in": c["bytes"],
            "q2_wait_s": c["wait_s"],
            "fetch_s": c["fetch_s"],
        }

    # -- main thread --------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Write until Q2's end of stream; returns this writer's summary."""
        self.fetcher.start()
        run = run_of(self.q2.name)
        metrics = stage_recorder(self.metrics, Role.WRITER, f"writer-{self.index}", run, self.stats)
        try:
            while True:
                try:
                    item = self.fetcher.get(timeout=self.tick_s)
                except queue.Empty:  # Q2 is quiet: close the DAQ runs that are
                    self.stage.close_quiet()
                    self._acknowledge(self.stage.committed())
                    continue
                if isinstance(item, EndOfStream):
                    if item.error is not None:
                        raise item.error
                    break
                if isinstance(item, Settle):
                    self._settle()
                    item.done.set()
                    continue
                self._handle(*item)
                del item
                self.fetcher.done()
        finally:
            self.fetcher.stop()  # fetch nothing more (run() ended, perhaps with an error)
            if metrics is not None:
                metrics.close()
        # Only a writer that got to the end closes its file: a failed one leaves it .part,
        # its Results unacknowledged (another writer writes them).
        self._acknowledge(self.stage.finish())
        self.q2.flush_acks()
        # summary.json's record of this writer: the stage's (`events` as in its files), and
        # the stats' names for the frames it took and handled.
        summary = {**self.stage.summary(), **self._fetched()}
        summary.update(frames_out=summary["events"], duplicates_skipped=self.duplicates_skipped)
        log.info(
            "writer %d done: %d events, %d hits, %d failed, %d files",
            self.index,
            summary["events"],
            summary["hits"],
            sum(summary["failed"].values()),
            len(summary["files"]),
        )
        return summary

    def _handle(self, result: Result, got: Any) -> None:
        """Write one Result (or count its failure), unless a closed file committed it
        already; acknowledge whatever a file closing has committed."""
        if self.q2.previous_consumers(result) and self.stage.committed_before(result):
            self.duplicates_skipped += 1  # its first writer died after committing it
            self.q2.ack([result])
            return
        if isinstance(got, Failure):
            self.stage.fail(result, got.reason, got.detail)
        else:
            self.stage.process(result, *got)
        self._held[result.key] = result
        self._held_bytes += result.nbytes
        if self._held_bytes > self.max_uncommitted:
            self._commit(force=False)
        else:
            self._acknowledge(self.stage.committed())

    def _settle(self) -> None:
        """Q2 is drained but for leases: commit the open file, and let go of the Results
        handled without rows that wait for one (they stay in this writer's counts; only if
        it died in the moments before it returns would they be missing from the summary)."""
        self._commit(force=False)
        self._acknowledge(self.stage.uncommitted())

    def _commit(self, force: bool) -> None:
        """Close the open file now (with `force`, write one for Results without rows too)."""
        self.stage.commit_now(force)
        self._acknowledge(self.stage.committed())

    def _acknowledge(self, keys: list[tuple[str, int]]) -> None:
        done = [self._held.pop(key) for key in keys if key in self._held]
        self._held_bytes -= sum(r.nbytes for r in done)
        self.q2.ack(done)

    def live_view(self, since: int = 0) -> dict[str, Any] | None:
        """The live page's figures and the hits newer than `since` (monitor/liveview.py);
        None when the page is off or before the first Result."""
        return None if self.stage.live is None else self.stage.live.view(since)

    def stats(self) -> WriterStats:
        """Live counters, plus how many Results are fetched ahead of the writer."""
        pending = self.fetcher.counts()["pending"]
        stage = self.stage.stats()
        return WriterStats(
            **self._fetched(),
            frames_out=stage.pop("events"),
            **{k: v for k, v in stage.items() if k != "writer"},
            pending=pending,
            held=len(self._held),
            held_bytes=self._held_bytes,
        )


def _refs_of(stage: WriterStage, result: Result) -> tuple | None:
    """A Result's arrays to fetch: its batch's images and its output (None if it lacks one).
    A Result of peak lists (inference.peaks_on_device) carries its output: its images are
    fetched only when a row to write takes a frame (WriterStage.wants_frames)."""
    if result.peaks is not None:
        if not stage.wants_frames(result):
            return ()
        return None if result.batch.images is None else (result.batch.images,)
    if result.output is None or result.batch.images is None:
        return None
    return (result.batch.images, result.output)


def _arrays_or_failure(result: Result, got: Any, taken: float) -> tuple[Result, Any]:
    """What run() receives for a Result: (images, output), or the Failure saying why not."""
    if got is None:
        return result, Failure("no_payload_ref")
    if isinstance(got, BaseException):
        detail = str(got).strip().splitlines()[0] if str(got).strip() else ""
        return result, Failure(f"unreadable:{type(got).__name__}", detail)
    return result, got


def start_writer_actors(
    cfg: PipelineConfig,
    q2: ShardedQueue,
    output_dir: str,
    config_hash: str,
    indices: list[int],
    consumers: dict[int, str] | None = None,
) -> list[Any]:
    """Start one writer actor per index (file names carry the index, so indices must be
    unique within a run; a restarted writer keeps its index under a new `consumers` id).
    Call `run.remote()` on each; it returns when Q2's stream ends."""
    consumers = consumers or {}
    import ray

    options = actor_options(
        Role.WRITER, cfg.writer.num_cpus_per_actor, cluster_resources=ray.cluster_resources()
    )
    actor = actor_class(WriterActor).options(**options, max_concurrency=2)
    return [actor.remote(cfg, q2, output_dir, config_hash, i, consumers.get(i)) for i in indices]
