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
from pathlib import Path
from typing import Any

from . import kube
from .cluster import connect
from .config import PipelineConfig
from .monitor import ProgressLog
from .monitor.report import build_report, format_summary, write_report
from .stages import Pipeline

log = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """The pipeline could not start (missing weights, no GPUs, queue name taken, ...)."""


class HardStop(Exception):
    """Stop at once: a second Ctrl-C, or the drain did not finish in time."""


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


def default_run_id() -> str:
    return time.strftime("run-%Y%m%d-%H%M%S")


def supervise(pipeline: Pipeline, signals: StopSignals, publisher: Any = None) -> str:
    """Watch until every actor has finished; returns how ingest ended."""
    cfg = pipeline.cfg
    started = time.monotonic()
    last_check = started
    progress = ProgressLog(started)
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
        draining = pipeline.ingest_stopped or not pipeline.of("source", running_only=True)
        if draining and drain_deadline == math.inf:
            drain_deadline = now + cfg.runtime.drain_timeout_s
        if now > drain_deadline:
            raise HardStop(f"drain not finished within {cfg.runtime.drain_timeout_s} s")
        if now - last_check >= cfg.monitor.progress_interval_s:
            # Also keeps each actor's last counts, which the report needs if one dies.
            last_check, snap = now, pipeline.snapshot()
            if publisher is not None:
                publisher.progress(snap)
            line = progress.line(snap)
            if cfg.monitor.console and line:
                print(line, flush=True)
    return pipeline.ingest_stopped or "end of stream"


def write_outputs_summary(cfg: PipelineConfig, pipeline: Pipeline, report: dict) -> dict:
    """summary.json (every file with its events and hits) and, for synthetic frames, how many
    of the injected peaks the files contain."""
    from .writer import write_run_summary

    writers = [a.counts for a in pipeline.of("writer") if a.counts]
    extra = {"run_id": pipeline.run_id, "config_hash": report["config_hash"]}
    summary = write_run_summary(str(pipeline.output_dir / "summary.json"), writers, extra)
    files = [f["path"] for f in summary["files"]]
    added: dict[str, Any] = {"files": files}
    if cfg.source.kind == "random":
        from .evaluate import random_run_recovery

        sources = [a.counts for a in pipeline.of("source")]
        added["recovery"] = random_run_recovery(
            cfg.source.random, [Path(f) for f in files], sources
        )
    return added


def run(cfg: PipelineConfig) -> dict[str, Any]:
    """Run the whole pipeline for `cfg`; returns the report (its `exit_code` included)."""
    run_id = cfg.runtime.run_id or default_run_id()
    output_dir = Path(cfg.writer.output_dir.format(run_id=run_id))
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    publisher = kube.status_publisher()  # on Kubernetes: status.driver of the resource
    with connect(cfg):
        pipeline = Pipeline(cfg, run_id, output_dir)
        try:
            pipeline.start()  # plain Ctrl-C semantics until everything runs
        except BaseException as exc:
            pipeline.kill()
            pipeline.destroy_queues(even_if_persistent=True)
            publisher.failed(f"{type(exc).__name__}: {exc}")
            if isinstance(exc, Exception):
                raise StartupError(f"{type(exc).__name__}: {exc}") from exc
            raise
        publisher.started(pipeline)
        with StopSignals() as signals:
            try:
                ended_by = supervise(pipeline, signals, publisher)
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
    publisher.finish(report)
    return report
