"""The story of a run.

1. Connect to Ray (embedded, or an existing cluster).
2. Create Q1 and Q2, then start the stages downstream-first (writers, inference, sources), with
   every producer id registered before anyone consumes, so no consumer sees an early end.
3. Watch: print progress, notice failed actors, stop ingest on Ctrl-C/SIGTERM or the time
   limit. End of stream then flows down by itself: sources close Q1, inference drains Q1 and
   closes Q2, writers drain Q2 and close their files.
4. Report: what each stage did, whether every accepted frame was written or accounted for
   (the exit code says so), and where the files are.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cluster import connect
from .config import PipelineConfig, config_hash
from .monitor import Snapshot, format_progress
from .monitor.report import build_report, format_summary, write_report
from .queue import ShardedQueue

log = logging.getLogger(__name__)

MAX_DERIVED_SHARDS = 16
HEARTBEAT_S = 30.0  # an unchanged progress line is repeated only this often


class StartupError(RuntimeError):
    """The pipeline could not start (missing weights, no GPUs, queue name taken, ...)."""


class HardStop(Exception):
    """Stop at once: a second Ctrl-C, or the drain did not finish in time."""


@dataclass
class StageActor:
    role: str  # "source", "inference" or "writer"
    actor_id: str
    handle: Any
    run_ref: Any = None
    summary: dict | None = None
    error: str | None = None

    @property
    def running(self) -> bool:
        return self.summary is None and self.error is None


class StopSignals:
    """First Ctrl-C (or SIGTERM) asks for a drain; the second stops at once.

    The handler only sets flags (an exception raised from a handler can land anywhere, even
    inside a logging call that swallows it); the supervise loop acts on them. After the second
    signal, SIGINT is Python's default again, so a third one interrupts whatever is blocking.
    """

    def __init__(self) -> None:
        self.drain_requested = False
        self.stop_now: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: the caller handles stopping
                break
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: object) -> None:
        if self.drain_requested:
            self.stop_now = f"second {signal.Signals(signum).name}"
            signal.signal(signal.SIGINT, signal.default_int_handler)
        else:
            self.drain_requested = True


def derived_shards(configured: int | None, producers: int, consumers: int) -> int:
    """Shard count: as configured, else one per actor on the busier side (capped)."""
    return configured or max(1, min(max(producers, consumers), MAX_DERIVED_SHARDS))


@dataclass
class Pipeline:
    """The queues and actors of one run."""

    cfg: PipelineConfig
    run_id: str
    output_dir: Path
    actors: list[StageActor] = field(default_factory=list)
    q1: ShardedQueue | None = None
    q2: ShardedQueue | None = None
    ingest_stopped: str | None = None
    streaming_since: float | None = None  # time.time() once every actor is running

    def start(self) -> None:
        import ray

        from .inference import inference_producer_id, start_inference_actors
        from .sources import source_ids, start_source_actors
        from .writer import start_writer_actors

        cfg = self.cfg
        sources = source_ids(cfg)
        n_infer, n_write = cfg.inference.num_actors, cfg.writer.num_actors
        self.q1 = self._queue("q1", cfg.queue.q1, len(sources), n_infer)
        self.q2 = self._queue("q2", cfg.queue.q2, n_infer, n_write)
        for i in range(n_infer):
            self.q2.register_producer(inference_producer_id(i))
        for sid in sources:
            self.q1.register_producer(sid)

        writers = start_writer_actors(
            cfg, self.q2, str(self.output_dir), config_hash(cfg), list(range(n_write))
        )
        self._add("writer", [f"writer-{i}" for i in range(n_write)], writers)
        infer = start_inference_actors(cfg, self.q1, self.q2, list(range(n_infer)))
        self._add("inference", [inference_producer_id(i) for i in range(n_infer)], infer)
        handles = start_source_actors(cfg, self.q1, sources)
        self._add("source", list(handles), list(handles.values()))
        for actor in self.actors:
            actor.run_ref = actor.handle.run.remote()
        log.info(
            "run %s: %d source, %d inference, %d writer actors; Q1 %d shards, Q2 %d shards",
            self.run_id,
            len(sources),
            n_infer,
            n_write,
            self.q1.num_shards,
            self.q2.num_shards,
        )
        ray.get([a.handle.stats.remote() for a in self.actors])
        self.streaming_since = time.time()

    def _queue(self, which: str, qcfg: Any, producers: int, consumers: int) -> ShardedQueue:
        return ShardedQueue.create(
            f"{self.run_id}-{which}",
            num_shards=derived_shards(qcfg.num_shards, producers, consumers),
            capacity_items=qcfg.capacity_items,
            capacity_bytes=qcfg.capacity_bytes,
            persist=self.cfg.queue.persist,
        )

    def _add(self, role: str, ids: list[str], handles: list[Any]) -> None:
        self.actors += [StageActor(role, aid, h) for aid, h in zip(ids, handles)]

    def of(self, role: str, running_only: bool = False) -> list[StageActor]:
        return [a for a in self.actors if a.role == role and (a.running or not running_only)]

    # -- watching -----------------------------------------------------------------------------
    def wait(self, timeout_s: float) -> None:
        """Collect the actors whose run() ended within `timeout_s`."""
        import ray

        pending = {a.run_ref: a for a in self.actors if a.running}
        if not pending:
            return
        done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=timeout_s)
        for ref in done:
            self._finished(pending[ref], ref)

    def _finished(self, actor: StageActor, ref: Any) -> None:
        import ray

        try:
            actor.summary = ray.get(ref)
            return
        except Exception as exc:  # noqa: BLE001 - any actor failure is reported, not raised
            actor.error = f"{type(exc).__name__}: {exc}"
        log.error("%s %s failed: %s", actor.role, actor.actor_id, actor.error)
        # Close on its behalf, so end of stream still reaches the consumers downstream.
        if actor.role == "source":
            self.q1.close_producer(actor.actor_id)
        elif actor.role == "inference":
            self.q2.close_producer(actor.actor_id)
        for role, queue in (("inference", self.q1), ("writer", self.q2)):
            if not self.of(role, running_only=True) and not queue.stats()["end_of_stream"]:
                log.error("no %s actor left: stopping ingest; queued data cannot drain", role)
                self.stop_ingest(f"every {role} actor failed")
                queue.seal()

    def stop_ingest(self, reason: str) -> None:
        """Ask every source to finish its current batch and close (once)."""
        if self.ingest_stopped:
            return
        self.ingest_stopped = reason
        log.warning("stopping ingest: %s", reason)
        for actor in self.of("source", running_only=True):
            actor.handle.stop.remote()

    def snapshot(self) -> Snapshot:
        """Counts per stage and queue fill, from the actors' cheap stats calls."""
        import ray

        running = [a for a in self.actors if a.running]
        refs = [a.handle.stats.remote() for a in running]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=2.0)
        live = {a.actor_id: ray.get(r) for a, r in zip(running, refs) if r in ready}
        stats = {a.actor_id: a.summary or live.get(a.actor_id, {}) for a in self.actors}

        def total(role: str, key: str) -> int:
            return sum(stats[a.actor_id].get(key, 0) for a in self.of(role))

        queues = {}
        for name, queue in (("Q1", self.q1), ("Q2", self.q2)):
            s = queue.stats()
            queues[name] = (s["depth"], s["capacity_items"])
        return Snapshot(
            counts={
                "ingested": total("source", "frames"),
                "inferred": total("inference", "frames_out"),
                "written": total("writer", "events"),
                "hits": total("writer", "hits"),
            },
            queues=queues,
        )

    def kill(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor.handle, no_restart=True)

    def destroy_queues(self) -> None:
        if self.cfg.queue.persist:
            log.info("queues %s-q1/q2 persist (queue.persist is set)", self.run_id)
            return
        for queue in (self.q1, self.q2):
            if queue is not None:
                queue.destroy()


def default_run_id() -> str:
    return time.strftime("run-%Y%m%d-%H%M%S")


def supervise(pipeline: Pipeline, signals: StopSignals) -> str:
    """Watch until every actor has finished; returns how ingest ended."""
    cfg = pipeline.cfg
    started = time.monotonic()
    last_check = last_print = started
    previous = None
    drain_deadline = math.inf
    while any(a.running for a in pipeline.actors):
        pipeline.wait(timeout_s=0.25)
        now = time.monotonic()
        if signals.stop_now:
            raise HardStop(f"{signals.stop_now}: stopping at once")
        if signals.drain_requested:
            pipeline.stop_ingest("interrupted: draining (Ctrl-C again to stop at once)")
        if cfg.runtime.max_run_time_s and now - started > cfg.runtime.max_run_time_s:
            pipeline.stop_ingest(f"runtime.max_run_time_s={cfg.runtime.max_run_time_s} reached")
        if not pipeline.of("source", running_only=True) and drain_deadline == math.inf:
            drain_deadline = now + cfg.runtime.drain_timeout_s
        if now > drain_deadline:
            raise HardStop("drain not finished within runtime.drain_timeout_s")
        if cfg.monitor.console and now - last_check >= cfg.monitor.progress_interval_s:
            last_check, snap = now, pipeline.snapshot()
            changed = previous is None or (snap.counts, snap.queues) != (
                previous.counts,
                previous.queues,
            )
            if changed or now - last_print >= HEARTBEAT_S:
                print(format_progress(snap, previous, started), flush=True)
                last_print, previous = now, snap
    return pipeline.ingest_stopped or "end of stream"


def write_outputs_summary(cfg: PipelineConfig, pipeline: Pipeline, report: dict) -> dict:
    """summary.json (every file with its events and hits) and, for synthetic frames, how many
    of the injected peaks the files contain."""
    from .writer import write_run_summary

    writers = [a.summary for a in pipeline.of("writer") if a.summary is not None]
    extra = {"run_id": pipeline.run_id, "config_hash": report["config_hash"]}
    summary = write_run_summary(str(pipeline.output_dir / "summary.json"), writers, extra)
    added: dict[str, Any] = {"files": [f["path"] for f in summary["files"]]}
    if cfg.source.kind == "random":
        from .evaluate import random_run_recovery

        sources = [a.summary for a in pipeline.of("source") if a.summary is not None]
        added["recovery"] = random_run_recovery(cfg.source.random, pipeline.output_dir, sources)
    return added


def run(cfg: PipelineConfig) -> dict[str, Any]:
    """Run the whole pipeline for `cfg`; returns the report (its `exit_code` included)."""
    run_id = cfg.runtime.run_id or default_run_id()
    output_dir = Path(cfg.writer.output_dir.format(run_id=run_id))
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with connect(cfg), StopSignals() as signals:
        pipeline = Pipeline(cfg, run_id, output_dir)
        try:
            pipeline.start()
        except Exception as exc:
            pipeline.kill()
            pipeline.destroy_queues()
            raise StartupError(f"{type(exc).__name__}: {exc}") from exc
        try:
            ended_by = supervise(pipeline, signals)
            hard_stop = None
        except (HardStop, KeyboardInterrupt) as exc:
            hard_stop = str(exc) or "interrupted"
            ended_by = f"hard stop: {hard_stop}"
            log.error("%s; in-flight data is lost", ended_by)
            pipeline.kill()
        report = build_report(cfg, pipeline, started, ended_by, hard_stop is not None)
        pipeline.destroy_queues()
    if hard_stop is None:
        report.update(write_outputs_summary(cfg, pipeline, report))
    if cfg.monitor.report_json:
        write_report(output_dir / "report.json", report)
    if cfg.monitor.console:
        print(format_summary(report), flush=True)
    return report
