"""The story of a run.

1. Check what needs no Ray: the files the config reads and the directory it writes.
2. Connect to Ray (embedded, or an existing cluster).
3. Create Q1 and Q2, then start the stages downstream-first (`start`: writers, inference,
   ingest), with every producer id registered before anyone consumes, so no consumer sees an
   early end; wait until every actor is ready. Any failure so far is a start-up failure (exit
   code 2) and leaves no empty run directory behind.
4. Watch (`supervise`): print progress (sampling.py), notice failed actors (registry.py,
   supervision.py), stop ingest on Ctrl-C/SIGTERM or the time limit. End of stream then
   flows down by itself: sources close Q1, inference drains Q1 and closes Q2, writers drain
   Q2 and close their files. A service (runtime.service) runs until stopped; as its writers
   close each DAQ run, that run's folder gets its summary and reports, and the service's
   index lists it (monitor/daqruns.py).
5. Report: summary.json (what the files hold) and report.json (what each stage did, whether
   every accepted frame was written or accounted for, whether the run was stopped before the
   end of its stream; the exit code says so); then end every actor (shutdown.py).

A frame's path: sources/ (ingest) -> Q1 (queue/) -> inference/ -> Q2 -> writer/ -> CXI files;
stages.py wires them up. Imports are at the top, except torch's (model.weights), which only a
run with random PeakNet weights loads.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import kube, service
from .cluster import connect
from .config import PipelineConfig, config_hash
from .config.crystal import write_cell_file
from .control import reachable
from .errors import StartupError, describe
from .evaluate import random_run_recovery
from .monitor import TimeSeries, snapshot_of
from .monitor.console import make_console
from .monitor.live_server import (
    attach_series,
    final_views,
    page_url,
    start_live_page,
    stop_live_page,
)
from .monitor.page import write_page
from .monitor.report import build_report, format_summary, write_report
from .monitor.timeseries import SERIES_FILE
from .monitor.verdict import inference_room, live_verdict, run_verdict, streaming_window
from .placement import Role
from .preflight import check_inputs, resolve_paths
from .registry import alive, wait
from .restarts import recovered_ids
from .sampling import sample
from .shutdown import destroy_queues, kill, kill_at_once, save_torch_trace
from .stages import Pipeline
from .writer import files_on_disk, merge_summaries, write_run_summary
from .writer.feed import start_live_feed, stop_live_feed
from .writer.summary import unfinished_writer

log = logging.getLogger(__name__)

__all__ = ["HardStop", "StartupError", "run"]


SCALE_POLL_S = 2.0  # how often a driver on Kubernetes reads the desired inference count


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
        self.drained_by: str | None = None  # the first signal, as the summary names it
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
            self.stop_now = f"second {signal_name(signum)}"
            signal.signal(signal.SIGINT, signal.default_int_handler)
        else:
            self.drain_requested = True
            self.drained_by = signal_name(signum)


def signal_name(signum: int) -> str:
    """`SIGINT (Ctrl-C)`, `SIGTERM`: how the summary and report.json name a stop signal."""
    name = signal.Signals(signum).name
    return f"{name} (Ctrl-C)" if signum == signal.SIGINT else name


def default_run_id() -> str:
    """The start time, and a random suffix: two runs started in the same second (on a shared
    cluster, or one after the other in a script) must not share queue names or a directory."""
    return f"{time.strftime('run-%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}"


def supervise(
    pipeline: Pipeline, signals: StopSignals, publisher: kube.NullPublisher, series: TimeSeries
) -> str:
    """Watch until every actor has finished; returns how the run ended. Each progress
    interval adds a sample to `series` (the first is taken now, as streaming starts);
    progress and the live verdict go to the console and, on Kubernetes, to the resource's
    status. A service (runtime.service) makes each DAQ run's folder complete once its
    writers have closed it, and the last ones at the end (monitor/daqruns.py)."""
    started = time.monotonic()
    series.add(sample(pipeline))
    daq_runs = service.service_for(pipeline)  # None unless a service
    title = f"peaknet-pipeline {pipeline.run_id}"
    with make_console(pipeline.cfg.monitor.console, started, title) as console:
        _watch(pipeline, signals, publisher, series, console, started, daq_runs)
        series.add(sample(pipeline))  # the end: every actor's final counts
        if daq_runs is not None:
            daq_runs.finish(series.samples[-1], series)
            publisher.daq_runs(daq_runs.status())
        # The display's last frame: the final counts, with the whole run's rates and verdict.
        end = snapshot_of(series.samples[-1], time.monotonic())
        console.show(end, series.samples, run_verdict(series))
    return ended_by(pipeline)


def _watch(
    pipeline: Pipeline,
    signals: StopSignals,
    publisher: kube.NullPublisher,
    series: TimeSeries,
    console: Any,
    started: float,
    daq_runs: service.ServiceRun | None = None,
) -> None:
    cfg = pipeline.cfg
    last_check = last_scale_poll = started
    drain_deadline = math.inf
    followed, pool_state = None, pipeline.pool.state()
    while alive(pipeline):
        wait(pipeline, timeout_s=0.25)
        now = time.monotonic()
        if now - last_scale_poll >= SCALE_POLL_S:  # on Kubernetes: the resource's replicas
            last_scale_poll, wanted = now, publisher.desired_inference()
            if wanted is not None and wanted != followed:
                followed = wanted
                pipeline.pool.request(wanted, "the resource's spec.cluster.inference")
        if pipeline.pool.changed_since(pool_state):
            pool_state = pipeline.pool.state()
            publisher.pool_changed(pool_state)
        if signals.stop_now:
            raise HardStop(signals.stop_now)
        if signals.drain_requested:
            pipeline.stop_ingest(
                signals.drained_by or "a signal", ": draining (Ctrl-C again to stop at once)"
            )
        if cfg.runtime.max_run_time_s and now - started > cfg.runtime.max_run_time_s:
            pipeline.stop_ingest(f"runtime.max_run_time_s={cfg.runtime.max_run_time_s}", " reached")
        if pipeline.draining and drain_deadline == math.inf:
            drain_deadline = now + cfg.runtime.drain_timeout_s
        if now > drain_deadline:
            raise HardStop(f"drain not finished within {cfg.runtime.drain_timeout_s} s")
        if now - last_check >= cfg.monitor.progress_interval_s:
            last_check, reading = now, sample(pipeline)
            series.add(reading)
            if daq_runs is not None:  # a service: finalise closed DAQ runs, save its state
                daq_runs.update(reading, series)
                publisher.daq_runs(daq_runs.status())  # on Kubernetes: status.driver.daqRuns
            snap = snapshot_of(reading, now)
            judged = live_verdict(series)
            if judged is not None:
                snap.verdict, snap.verdict_sentence = judged.word, judged.sentence
            publisher.progress(snap)
            console.show(snap, series.samples[-2:], judged)


def ended_by(pipeline: Pipeline) -> str:
    """How a run that was not stopped hard ended, as the summary's `ended by ...` says it: a
    failed actor that was not replaced, what stopped ingest (`SIGTERM`, `peaknet-pipeline
    stop`, `runtime.max_run_time_s=60`), or the end of the stream (also when a stop came only
    after every source had ended). A failure that was recovered (replaced, or an actor
    retiring anyway) did not end the run: report.json lists it under `restarts`."""
    recovered = recovered_ids(pipeline.supervisor.restarts)  # dropped records too
    failed = [a for a in pipeline.actors if a.error is not None and a.actor_id not in recovered]
    if failed:
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        return f"{failed[0].name} failed: {failed[0].error}{more}"
    return pipeline.ingest_stopped if pipeline.stopped_early else "end of stream"


def write_html(output_dir: Path, report: dict, summary: dict, series: TimeSeries) -> bool:
    """report.html; a failure to draw it is logged, never the run's failure (the data and the
    JSON reports are written already; `peaknet-pipeline report` can try again). Whether it
    was written."""
    try:
        write_page(output_dir, report, summary, series)
    except Exception as exc:  # noqa: BLE001 - the page is a view of a finished run
        log.warning("report.html not written: %s", describe(exc))
        return False
    return True


def outputs_summary(cfg: PipelineConfig, pipeline: Pipeline, complete: bool) -> dict[str, Any]:
    """summary.json: every file with its events and hits, the writers' totals and, for
    synthetic frames, how many of the injected peaks the files contain. A writer that did not
    finish counts by what its closed files committed; its open file is listed as incomplete
    (abandoned: its Results went to another writer). After a hard stop the files are listed
    as found on disk, with what the writers last reported."""
    prefix = cfg.writer.file_prefix
    finished = [a.summary for a in pipeline.of(Role.WRITER) if a.summary is not None]
    unfinished = [a for a in pipeline.of(Role.WRITER) if a.summary is None]
    writers = finished + [
        unfinished_writer(pipeline.output_dir, prefix, a.actor_id) for a in unfinished
    ]
    doc = {
        "run_id": pipeline.run_id,
        "config_hash": config_hash(cfg),
        "complete": complete,
        **merge_summaries(writers),
    }
    open_files = {
        a.counts["current_file"]: a.counts.get("current_file_events")
        for a in unfinished
        if a.counts.get("current_file")
    }
    if not complete:
        doc["files"], doc["incomplete_files"] = files_on_disk(
            pipeline.output_dir, prefix, open_files
        )
    else:  # any .part left is a dead writer's, whether or not its last stats named it
        _, parts = files_on_disk(pipeline.output_dir, prefix, open_files)
        doc["incomplete_files"] = [{**part, "abandoned": True} for part in parts]
    if cfg.runtime.service:  # its files are in its DAQ runs' folders: list those
        doc.update(service.summary_fields(pipeline.output_dir))
    if cfg.source.kind == "random" and complete:
        files = [Path(f["path"]) for f in doc["files"]]
        sources = [a.counts for a in pipeline.of(Role.INGEST)]
        doc["recovery"] = random_run_recovery(cfg.source.random, files, sources)
    return doc


@contextmanager
def run_directory(path: Path) -> Iterator[Path]:
    """Create the run's output directory; if the run fails before it ends, remove what was
    created here and is still empty (a failed start leaves nothing behind)."""
    created = [p for p in (path, *path.parents) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"writer.output_dir: cannot create {path}: {exc.strerror}") from None
    try:
        yield path
    except BaseException:
        for directory in created:  # deepest first
            try:
                directory.rmdir()
            except OSError:
                break  # not empty: something was written, keep it
        raise


def mark_latest(output_dir: Path, template: str) -> None:
    """Point `<parent>/latest` at this run's directory when run directories are named by run
    id (the default `runs/{run_id}`), so the newest run is easy to find and to replay."""
    if Path(template).name != "{run_id}":
        return
    link = output_dir.parent / "latest"
    if link.exists() and not link.is_symlink():
        log.debug("%s exists and is not a symlink; not marking the latest run", link)
        return
    tmp = output_dir.parent / f".latest-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(output_dir.name)
    os.replace(tmp, link)


def warn_random_weights(cfg: PipelineConfig) -> None:
    """Say once per run, here, that PeakNet runs random weights; the inference actors do not
    repeat it (one line per actor, and again per replacement, said nothing new)."""
    if cfg.model.kind == "peaknet" and cfg.model.weights_path is None:
        from .model.weights import random_weights_warning  # imports torch: only when needed

        log.warning("%s", random_weights_warning(cfg.model))


def start(pipeline: Pipeline) -> None:
    """Start every stage, downstream-first, so that nothing produces before its consumer
    exists; on any failure kill what was started and raise StartupError. The data path:
    ingest -> Q1 -> inference -> Q2 -> writers -> CXI files."""
    try:  # plain Ctrl-C semantics until everything runs
        pipeline.open_queues()  # Q1 and Q2, every producer id registered first
        pipeline.start_writers()  # Q2 -> CXI files (writer/)
        pipeline.start_inference()  # Q1 -> PeakNet -> Q2 (inference/)
        pipeline.start_ingest()  # each stream -> Q1 (sources/)
        pipeline.run_stages()  # every ready(), then every run()
    except BaseException as exc:
        kill(pipeline)
        destroy_queues(pipeline, even_if_persistent=True)
        if isinstance(exc, StartupError):
            raise
        if isinstance(exc, Exception):
            raise StartupError(describe(exc)) from exc
        raise


def run(cfg: PipelineConfig, continue_dir: str | None = None) -> dict[str, Any]:
    """Run the whole pipeline for `cfg`; returns the report (its `exit_code` included).
    Raises StartupError, one line naming the cause, when the pipeline cannot start.
    `continue_dir`: a service's directory to continue (`run --continue DIR`, service.py)."""
    publisher = kube.status_publisher()  # on Kubernetes: status.driver of the resource
    try:
        report = _run(cfg, publisher, continue_dir)
    except StartupError as exc:
        publisher.failed(str(exc))
        raise
    publisher.finish(report)
    return report


def _run(
    cfg: PipelineConfig, publisher: kube.NullPublisher, continue_dir: str | None = None
) -> dict[str, Any]:
    problems = check_inputs(cfg)
    if problems:
        raise StartupError("; ".join(problems))
    cfg = resolve_paths(cfg)
    warn_random_weights(cfg)
    # Absolute: actors in other processes (or on other nodes) do not share our working directory.
    run_id, output = service.directory(cfg, continue_dir, default_run_id)
    service.take_over(output, run_id, cfg)  # a service continued after its last driver ended
    started = time.time()
    with run_directory(output) as output_dir, connect(cfg) as resources:
        pipeline = Pipeline(cfg, run_id, output_dir, first_seq=service.first_batch_seq(output))
        write_cell_file(cfg.source.random.crystal, output_dir, cfg.writer.file_prefix)
        feed = start_live_feed(cfg, run_id)  # writer.live_feed (None when off)
        page = start_live_page(cfg, run_id, pipeline)  # monitor.live_page: prints its address
        try:
            start(pipeline)
        except BaseException:
            stop_live_feed(feed)
            stop_live_page(page)
            raise
        mark_latest(output_dir, cfg.writer.output_dir)
        publisher.started(pipeline)
        if page is not None:  # on Kubernetes: status.driver.livePage (status.livePage)
            publisher.live_page(page_url(cfg.monitor.live_page.bind, page.url_port))
        series = TimeSeries(room=inference_room(cfg, resources))  # the verdict's advice
        attach_series(page, series)
        with StopSignals() as signals, reachable(output_dir, run_id):  # control.json
            try:
                how = supervise(pipeline, signals, publisher, series)
                hard_stop = None
            except (HardStop, KeyboardInterrupt) as exc:
                hard_stop = str(exc) or "interrupted"
                how = f"hard stop: {hard_stop}"
                log.error("%s: stopping at once; in-flight data is lost", how)
                kill_at_once(pipeline)
        final_views(page)  # the writers' last figures, before their actors end
        live_feed = stop_live_feed(feed)  # the writers have reported what they never offered
        summary = outputs_summary(cfg, pipeline, complete=hard_stop is None)
        judged = run_verdict(series)
        stopped = pipeline.stopped_early
        report = build_report(
            cfg, pipeline, started, how, summary, hard_stop is not None, judged, stopped,
            samples=streaming_window(series), live_feed=live_feed,
        )  # fmt: skip
        if hard_stop is None:
            save_torch_trace(pipeline)
        kill(pipeline)  # every actor has reported: end their processes now, not at exit
        destroy_queues(pipeline)
    write_run_summary(output_dir / "summary.json", summary)
    series.write(output_dir / SERIES_FILE)
    written = ["summary.json"]
    if cfg.monitor.report_json:
        write_report(output_dir / "report.json", report)
        written.append("report.json")
    if cfg.monitor.report_html and write_html(output_dir, report, summary, series):
        written.append("report.html")
    stop_live_page(page)  # served until the reports are written
    if cfg.monitor.console:
        print(format_summary(report, summary, written), flush=True)
    return report
