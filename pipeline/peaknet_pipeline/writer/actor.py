"""Writer actors: pull Results from Q2, fetch their arrays, find peaks, write CXI files.

Two threads per actor. A fetch thread takes Results from Q2 (`get_many`) and fetches all
their arrays with one `ray.get` per step; the main thread (`run`) finds peaks and writes.
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
Besides the stage's counters it counts Results taken (`batches`, `bytes_in`) and the fetch
thread's time waiting on Q2 (`q2_wait_s`) and fetching arrays (`fetch_s`); a recorder turns them
into metrics (monitor.metrics) and, with `profile.nvtx`, they are NVTX ranges (q2_get, fetch).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any, NamedTuple

from ..config.models import PipelineConfig
from ..logs import setup_logging
from ..monitor.metrics import run_of, stage_recorder
from ..nvtx import nvtx_range, nvtx_wanted
from ..queue import Drained, EndOfStream, ShardedQueue
from ..records import Result
from .ledger import LedgerIndex
from .stage import WriterStage

log = logging.getLogger("peaknet_pipeline.writer")

FETCH_TIMEOUT_S = 600.0  # a fetch that takes longer is counted as failed, not waited on forever
_END = object()


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
        self.ledgers = LedgerIndex(output_dir, cfg.writer.file_prefix)
        self._held: dict[tuple[str, int], Result] = {}  # handled, not yet acknowledged
        self._held_bytes = 0
        self.duplicates_skipped = 0
        self._fetched = {"batches": 0, "bytes_in": 0, "q2_wait_s": 0.0, "fetch_s": 0.0}
        self._ready: deque = deque()  # (result, arrays | Failure) | Settle | exception | _END
        self._cond = threading.Condition()
        self._pending = 0  # fetched or being fetched, not yet written
        self._stop = False  # run() ended (with an error): fetch nothing more

    def __repr__(self) -> str:  # Ray shows it as the actor's name (`ray list actors`, dashboard)
        return self.consumer

    # -- the stage protocol: ready, run, stats, stop --------------------------------------------
    def ready(self) -> dict[str, Any]:
        """Check the output directory takes files now, not at the first hit."""
        import tempfile

        from ..sources.base import where_am_i

        with tempfile.NamedTemporaryFile(dir=self.stage.output_dir, prefix=".writable-"):
            pass
        return where_am_i(self.consumer)

    def stop(self) -> None:
        """Nothing to do: a writer ends at Q2's end of stream, once everything queued upstream
        is written (ending earlier would strand Results in Q2)."""

    # -- fetch thread -------------------------------------------------------------------------
    def _fetch_loop(self) -> None:
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._pending < self.max_pending or self._stop)
                    if self._stop:
                        return
                    room = self.max_pending - self._pending
                t0 = time.perf_counter()
                try:  # get_many may answer from several shards, each up to this many
                    with nvtx_range("q2_get", self.nvtx):
                        results = self.q2.get_many(max(1, room))
                except Drained:  # only leases, ours among them, keep Q2 open: commit
                    settle = Settle(threading.Event())
                    self._deliver([settle])
                    settle.done.wait()
                    self.q2.flush_acks()  # the shards must see them before the next get
                    continue
                except EndOfStream:
                    self._deliver([_END])
                    return
                finally:
                    self._count(q2_wait_s=time.perf_counter() - t0)
                with self._cond:
                    self._pending += len(results)
                t0 = time.perf_counter()
                with nvtx_range("fetch", self.nvtx):
                    fetched = self._fetch(results)
                self._count(
                    fetch_s=time.perf_counter() - t0,
                    batches=len(results),
                    bytes_in=sum(r.nbytes for r in results),
                )
                self._deliver(fetched)
        except BaseException as exc:  # noqa: BLE001 - handed to run(), which raises it
            self._deliver([exc])

    def _fetch(self, results: list[Result]) -> list[tuple[Result, Any]]:
        """Each Result, in order, with (images, output) or the Failure saying why not."""
        import ray

        readable = [r for r in results if r.output is not None and r.batch.images is not None]
        refs = [ref for r in readable for ref in (r.batch.images, r.output)]
        try:
            arrays = iter(ray.get(refs, timeout=FETCH_TIMEOUT_S))
            fetched = {id(r): (next(arrays), next(arrays)) for r in readable}
        except ray.exceptions.RayError:  # error path only: find which Results are unreadable
            fetched = {id(r): _fetch_one(r) for r in readable}
        return [(r, fetched.get(id(r), Failure("no_payload_ref"))) for r in results]

    def _count(self, **amounts: float) -> None:
        with self._cond:
            for key, amount in amounts.items():
                self._fetched[key] += amount

    def _deliver(self, items: list) -> None:
        with self._cond:
            self._ready.extend(items)
            self._cond.notify_all()

    # -- main thread --------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Write until Q2's end of stream; returns this writer's summary."""
        fetcher = threading.Thread(target=self._fetch_loop, name="q2-fetch", daemon=True)
        fetcher.start()
        run = run_of(self.q2.name)
        metrics = stage_recorder(self.metrics, "writer", f"writer-{self.index}", run, self.stats)
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: bool(self._ready))
                    item = self._ready.popleft()
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, Settle):
                    self._settle()
                    item.done.set()
                    continue
                self._handle(*item)
                del item
                with self._cond:
                    self._pending -= 1
                    self._cond.notify_all()
        finally:
            with self._cond:
                self._stop = True
                self._cond.notify_all()
            if metrics is not None:
                metrics.close()
        # Only a writer that got to the end closes its file: a failed one leaves it .part,
        # its Results unacknowledged (another writer writes them).
        self._acknowledge(self.stage.finish())
        self.q2.flush_acks()
        summary = {**self.stage.summary(), **self._fetched}
        summary["duplicates_skipped"] = self.duplicates_skipped
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
        if self.q2.previous_consumers(result) and self.ledgers.contains(result.key):
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
        self._acknowledge([entry.key for entry in self.stage.series.uncommitted()])

    def _commit(self, force: bool) -> None:
        """Close the open file now (with `force`, write one for Results without rows too)."""
        self.stage.commit_now(force)
        self._acknowledge(self.stage.committed())

    def _acknowledge(self, keys: list[tuple[str, int]]) -> None:
        done = [self._held.pop(key) for key in keys if key in self._held]
        self._held_bytes -= sum(r.nbytes for r in done)
        self.q2.ack(done)

    def stats(self) -> dict[str, Any]:
        """Live counters, plus how many Results are fetched ahead of the writer."""
        with self._cond:
            pending, fetched = self._pending, dict(self._fetched)
        held = {"held": len(self._held), "held_bytes": self._held_bytes}
        return {**self.stage.stats(), **fetched, "pending": pending, **held}


def _fetch_one(result: Result) -> tuple | Failure:
    import ray

    try:
        return tuple(ray.get([result.batch.images, result.output], timeout=FETCH_TIMEOUT_S))
    except ray.exceptions.RayError as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return Failure(f"unreadable:{type(exc).__name__}", detail)


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

    from ..placement import actor_options

    options = actor_options(
        "writer", cfg.writer.num_cpus_per_actor, cluster_resources=ray.cluster_resources()
    )
    actor = ray.remote(WriterActor).options(**options, max_concurrency=2)
    return [actor.remote(cfg, q2, output_dir, config_hash, i, consumers.get(i)) for i in indices]
