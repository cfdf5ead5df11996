"""A service's directory across drivers: its state file, and taking over after a driver died.

A service (runtime.service) lives in one directory: its DAQ runs' folders, `index.json` and
`index.html` (monitor/daqruns.py), and `service-state.json`, which the driver rewrites
atomically at every progress sample: which driver it is (1, 2, ...), its process, and per DAQ
run its sources and writers still report, the frames placed into Q1 (`IngestStats.daq_runs`)
and each writer's state of it (`WriterStats.daq_runs`). A driver that ends normally writes it
a last time with state "stopped".

Starting the same service again continues its directory (`directory`): the one named by
`peaknet-pipeline run --continue DIR`, or, under runtime.service, writer.output_dir when it
already holds a service (a fixed runtime.run_id names the same directory each time). Before
anything starts, `take_over`:

1. refuses while the driver named in the state file still runs (this host, a live process);
2. keeps the last driver's own top-level files under new names (`report.json` ->
   `report.driver-1.json`), so the new driver's do not overwrite them;
3. for every DAQ run the state file lists, and every folder holding a `.cxi.part`: renames
   each `.cxi.part` to `.cxi.incomplete` (its writer was killed with the file open: HDF5 does
   not promise such a file is readable, and its events were never acknowledged; so neither
   CrystFEL, reading `*.cxi`, nor the pipeline reads it as data), counts the frames lost
   (`lost_frames`) and finalises the folder (summary.json, report.json, report.html) with
   `lost` and `ended_by: "driver died"` in its report and its index entry;
4. writes the state file as the new driver's (state "starting"), so that a second death is
   counted from the new driver's start, never twice.

A DAQ run the old driver left open whose events go on after the restart gets new files in
the same folder: the writer never reuses a file name (a sequence number with a `.cxi`,
`.cxi.part` or `.cxi.incomplete` is skipped) nor a summary part, and the folder's summary is
made again from all its parts and ledgers. One DAQ run stays one folder, as indexing and the
index expect, and its `lost` stays in the index when it closes again.

`lost` cannot see frames accepted after the old driver's last sample (at most one
`monitor.progress_interval_s`, plus the sample's own time), nor messages still in the socket's
buffers (never accepted; a zmq sender keeps them for the next connection). It is a lower
bound: the ingest count is the last sample's and the written count the folder's at take-over,
so frames accepted after that sample and committed before the driver died are subtracted
without having been counted (an actor that did not answer the sample keeps its older count:
lower still). It may read 0 while frames were lost, never more than were lost.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from .errors import StartupError
from .monitor.daqruns import (
    INDEX_HTML,
    INDEX_JSON,
    DaqRunTracker,
    folder_summary,
    iso,
    read_index,
    tracker_for,
    write_atomic,
    writer_states,
)
from .monitor.timeseries import SERIES_FILE, Sample, TimeSeries
from .placement import Role
from .processes import process_ended

log = logging.getLogger(__name__)

STATE_FILE = "service-state.json"
PART, ABANDONED = ".cxi.part", ".cxi.incomplete"  # a dead writer's open file, renamed
DIED = "driver died"
RUNNING, STARTING, STOPPED = "running", "starting", "stopped"
DRIVER_FILES = ("summary.json", "report.json", "report.html", SERIES_FILE)  # one driver's own


def is_service_dir(path: str | Path) -> bool:
    """Whether a service has written in `path` (its state file or its index)."""
    return (Path(path) / STATE_FILE).is_file() or (Path(path) / INDEX_JSON).is_file()


def read_state(path: str | Path) -> dict[str, Any] | None:
    """The state file in a service directory; None when there is none (or it is unreadable:
    said, and then treated as absent)."""
    try:
        return json.loads((Path(path) / STATE_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("%s unreadable (%s): what was in flight is not known", STATE_FILE, exc)
        return None


def directory(cfg: Any, continue_dir: str | None, new_id: Callable[[], str]) -> tuple[str, Path]:
    """(run id, absolute output directory) of a run. `continue_dir` (`run --continue DIR`)
    must be a service's directory; its run id is the one it had (unless runtime.run_id says
    otherwise), so `peaknet-pipeline stop` names it as before."""
    if continue_dir is None:
        run_id = cfg.runtime.run_id or new_id()
        return run_id, Path(cfg.writer.output_dir.format(run_id=run_id)).absolute()
    path = Path(continue_dir).absolute()
    if not cfg.runtime.service:
        raise StartupError(
            f"--continue {continue_dir}: only a service continues its directory "
            "(runtime.service: true, as in the config it was started with)"
        )
    if not path.is_dir():
        raise StartupError(f"--continue {continue_dir}: no such directory")
    if not is_service_dir(path):
        raise StartupError(
            f"--continue {continue_dir}: not a service's directory (no {STATE_FILE} or "
            f"{INDEX_JSON} in it); leave out --continue to start a new service"
        )
    known = (read_state(path) or {}).get("service") or _index_service(path)
    return cfg.runtime.run_id or known or path.name, path


def _index_service(path: Path) -> str | None:
    try:
        return json.loads((path / INDEX_JSON).read_text()).get("service")
    except (OSError, ValueError, AttributeError):
        return None


def still_running(state: Mapping[str, Any]) -> str | None:
    """Why a directory cannot be taken over: its driver still runs (on this host; another
    host's driver cannot be checked from here), else None."""
    pid, host = state.get("pid"), state.get("host")
    if state.get("state") == STOPPED or not pid or host != socket.gethostname():
        return None
    if pid == os.getpid():
        return None
    if process_ended(int(pid)):
        return None
    return (
        f"service {state.get('service')!r} is still running in this directory (driver pid "
        f"{pid}, last seen {state.get('updated')}): stop it first "
        f"(peaknet-pipeline stop {state.get('service')})"
    )


def lost_frames(ingested: int | None, base: int, committed: int) -> int | None:
    """Frames a driver's sources placed into Q1 for a DAQ run (`ingested`) that no closed
    file of its folder holds: `committed` now, less the `base` the folder held when that
    driver began. None when the ingest count is not known."""
    if ingested is None:
        return None
    return max(0, int(ingested) - (int(committed) - int(base)))


def ingested_by_label(actors: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Frames placed into Q1 per DAQ run, summed over the ingest actors of a sample."""
    counts: dict[str, int] = {}
    for actor in actors:
        if actor.get("role") == Role.INGEST:
            for label, frames in (actor.get("daq_runs") or {}).items():
                counts[label] = counts.get(label, 0) + int(frames)
    return counts


def state_doc(
    service: str,
    driver: int,
    started: float,
    base: Mapping[str, Mapping[str, Any]],
    actors: Iterable[Mapping[str, Any]],
    state: str = RUNNING,
) -> dict[str, Any]:
    """The state file's content (pure but for the clock): per DAQ run the sources and
    writers of `actors` (a sample's) report, the frames ingested, what the folder held when
    this driver began (`base`: the index entries then), and each writer's state of it."""
    actors = list(actors)
    ingested = ingested_by_label(actors)
    writers = writer_states(actors)
    labels = set(ingested) | {label for runs in writers.values() for label in runs}
    runs = {
        label: {
            "ingested": ingested.get(label, 0),
            "base": int((base.get(label) or {}).get("frames") or 0),
            "writers": {
                w: {"state": runs[label].state, "frames": runs[label].frames}
                for w, runs in sorted(writers.items())
                if label in runs
            },
            **_span([runs[label] for runs in writers.values() if label in runs]),
        }
        for label in sorted(labels)
    }
    now = time.time()
    return {
        "service": service,
        "driver": driver,
        "state": state,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": iso(started),
        "updated": iso(now),
        "updated_t": now,
        "daq_runs": runs,
    }


def _span(seen: list[Any]) -> dict[str, float]:
    """The writers' first and last frame of a DAQ run (when known): a run whose driver died
    before any writer closed it has no summary part to date it, and the next driver takes its
    span from here (its report and its place in the index, which lists the newest first)."""
    firsts = [s.first_t for s in seen if s.first_t]
    lasts = [s.last_t for s in seen if s.last_t]
    return {"first_t": min(firsts), "last_t": max(lasts)} if firsts and lasts else {}


def write_state(path: Path, doc: Mapping[str, Any]) -> None:
    write_atomic(Path(path) / STATE_FILE, json.dumps(doc, indent=2) + "\n")


def abandon_parts(folder: Path) -> list[str]:
    """Rename a folder's `.cxi.part` files to `.cxi.incomplete` (module doc); their names."""
    renamed = []
    for part in sorted(folder.glob(f"*{PART}")):
        target = part.with_name(part.name[: -len(PART)] + ABANDONED)
        os.replace(part, target)
        renamed.append(target.name)
    return renamed


def keep_driver_files(output: Path, driver: int) -> list[str]:
    """Rename the last driver's top-level files (`report.json` -> `report.driver-N.json`)."""
    kept = []
    for name in DRIVER_FILES:
        path = output / name
        if path.is_file():
            stem, dot, suffix = name.partition(".")
            target = output / f"{stem}.driver-{driver}{dot}{suffix}"
            os.replace(path, target)
            kept.append(target.name)
    return kept


def take_over(output: Path, run_id: str, cfg: Any) -> list[dict[str, Any]]:
    """Continue a service's directory (module doc, steps 1-4); what each DAQ run left open
    lost. Nothing to do for a finite run, or a service's first start."""
    if not cfg.runtime.service or not is_service_dir(output):
        return []
    state = read_state(output) or {}
    busy = still_running(state)
    if busy:
        raise StartupError(busy)
    previous = int(state.get("driver") or 1)
    kept = keep_driver_files(output, previous)
    tracker = DaqRunTracker(output, run_id, cfg.writer.file_prefix, pages=cfg.monitor.report_html)
    ended_by = DIED if state.get("state") != STOPPED else "driver stopped"
    listed = state.get("daq_runs") or {}
    left_open = {p.parent.name for p in output.glob(f"*/*{PART}")}
    losses = []
    for label in sorted(set(listed) | left_open):
        loss = close_left_open(tracker, label, listed.get(label) or {}, ended_by, previous)
        if loss is not None:
            losses.append(loss)
    write_state(output, state_doc(run_id, previous + 1, time.time(), {}, [], STARTING))
    log.info(
        "continuing service %s in %s (driver %d; %d DAQ runs so far%s)",
        run_id,
        output,
        previous + 1,
        len(tracker.index),
        f"; the last driver's {', '.join(kept)} kept" if kept else "",
    )
    for loss in losses:
        lost = "not known" if loss["lost"] is None else loss["lost"]
        log.warning(
            "DAQ run %s was open when driver %d ended (%s): closed, frames lost: %s "
            "(%s ingested, %s written)",
            loss["daq_run"],
            previous,
            ended_by,
            lost,
            loss["ingested"],
            loss["written"],
        )
    return losses


DRIVER_SEQ_SPAN = 1 << 32  # batch numbers one driver's socket stream may use


def first_batch_seq(output: Path) -> int:
    """Where this driver's socket batches start numbering: after every earlier driver's. A
    Result's key is (stream, batch number) and a DAQ run's folder keeps the keys its closed
    files committed (writer/ledger.py): a continued service that numbered from 0 again would
    have a Result delivered again after a writer failure taken for one an earlier driver wrote,
    and skipped. 0 for a service's first driver and for a finite run."""
    state = read_state(output) if is_service_dir(output) else None
    return (int(state.get("driver") or 1) - 1) * DRIVER_SEQ_SPAN if state else 0


def close_left_open(
    tracker: DaqRunTracker, label: str, listed: Mapping[str, Any], ended_by: str, driver: int
) -> dict[str, Any] | None:
    """Close one DAQ run a driver left (its `.part` files abandoned), count what it lost and
    finalise its folder; None when it was complete and finalised already."""
    folder = tracker.output_dir / label
    abandoned = abandon_parts(folder) if folder.is_dir() else []
    summary = folder_summary(folder, tracker.prefix) if folder.is_dir() else {}
    committed = int(summary.get("events", 0))
    base = int(listed.get("base") or 0)
    lost = lost_frames(listed.get("ingested"), base, committed)
    previous = tracker.index.get(label)
    finalised = previous is not None and previous.get("frames") == committed
    if not abandoned and not lost and (finalised or not folder.is_dir()):
        return None
    loss = {
        "daq_run": label,
        "driver": driver,
        "ingested": listed.get("ingested"),
        "written": committed - base,
        "lost": lost,
        "abandoned_files": abandoned,
    }
    before = int((previous or {}).get("lost") or 0)
    extra = {"lost": before + (lost or 0), "ended_by": ended_by, "interrupted": loss}
    if not summary.get("first_t") and listed.get("first_t"):  # no writer closed it: the state
        first, last = listed["first_t"], listed["last_t"]
        extra |= {"first_t": first, "last_t": last, "start": iso(first), "end": iso(last)}
        extra["duration_s"] = round(last - first, 3)
    tracker.finalise(label, extra=extra)
    return loss


class ServiceRun:
    """The driver's side of a running service: each DAQ run's folder finalised once its
    writers closed it (DaqRunTracker), and the state file written at every sample."""

    def __init__(self, tracker: DaqRunTracker, service: str) -> None:
        self.tracker, self.service = tracker, service
        state = read_state(tracker.output_dir) or {}
        mine = state.get("state") == STARTING and state.get("pid") == os.getpid()
        self.driver = int(state.get("driver") or 1) if mine else 1
        self.started = time.time()
        self.base = dict(tracker.index)  # what each folder held as this driver began

    def __getattr__(self, name: str) -> Any:
        """Whatever else the driver asks of the DAQ runs (their status) is the tracker's."""
        return getattr(self.tracker, name)

    def update(self, sample: Sample, series: TimeSeries | None = None) -> list[str]:
        done = self.tracker.update(sample, series)
        self.write(sample, RUNNING)
        return done

    def finish(self, sample: Sample, series: TimeSeries | None = None) -> list[str]:
        done = self.tracker.finish(sample, series)
        self.write(sample, STOPPED)
        return done

    def write(self, sample: Sample, state: str) -> None:
        """The state file now; a failure is logged (the service goes on without it)."""
        doc = state_doc(
            self.service, self.driver, self.started, self.base, sample.actors.values(), state
        )
        try:
            write_state(self.tracker.output_dir, doc)
        except OSError as exc:
            log.warning("%s not written: %s", STATE_FILE, exc)


def service_for(pipeline: Any) -> ServiceRun | None:
    """A service's tracker and state file (`runtime.service`), None for a finite run."""
    tracker = tracker_for(pipeline)
    return None if tracker is None else ServiceRun(tracker, pipeline.run_id)


def summary_fields(output: Path) -> dict[str, Any]:
    """The top-level summary.json of a service: its CXI files are in its DAQ runs' folders,
    so it lists those (from the index: every driver's, newest first)."""
    runs = list(read_index(output).values())
    keys = ("daq_run", "folder", "frames", "hits", "hit_rate", "complete", "lost")
    listed = sorted(runs, key=lambda e: (e.get("first_t") or 0.0, e["daq_run"]), reverse=True)
    return {
        "service": {
            "index": INDEX_JSON,
            "daq_runs": len(runs),
            "frames": sum(int(e.get("frames") or 0) for e in runs),
            "hits": sum(int(e.get("hits") or 0) for e in runs),
            "lost": sum(int(e.get("lost") or 0) for e in runs),
        },
        "daq_runs": [{k: e.get(k) for k in keys} for e in listed],
    }


def not_a_run(path: str | Path) -> str | None:
    """What `evaluate` says of a service's directory or one of its DAQ runs' folders (None:
    neither). It compares a finished random-source run's files with the peaks it injected;
    a service's DAQ runs have no such record."""
    path = Path(path)
    if is_service_dir(path):
        runs = len(read_index(path))
        return (
            f"{path} is a service's directory ({runs} DAQ runs, listed in {INDEX_JSON}, each in "
            "its own folder): evaluate reads a finished random-source run, not a service"
        )
    try:
        report = json.loads((path / "report.json").read_text())
    except (OSError, ValueError):
        return None
    if isinstance(report, dict) and "daq_run" in report:
        return (
            f"{path} is DAQ run {report['daq_run']} of service {report.get('service')}: "
            "evaluate reads a finished random-source run, not a service's DAQ run"
        )
    return None


def redraw(path: str | Path) -> list[Path] | None:
    """`peaknet-pipeline report` on a service: index.html from index.json (and the last
    driver's report.html when its files are there), or a DAQ run folder's report.html from
    its report.json and summary.json. None when `path` is neither."""
    from .monitor.daqrun_page import daq_run_html, index_html

    path = Path(path)
    if (path / INDEX_JSON).is_file():
        doc = json.loads((path / INDEX_JSON).read_text())
        write_atomic(path / INDEX_HTML, index_html(doc))
        drawn = [path / INDEX_HTML]
        if all((path / name).is_file() for name in DRIVER_FILES[:2] + DRIVER_FILES[3:]):
            from .monitor.page import render_run_dir

            drawn.append(render_run_dir(path))
        return drawn
    try:
        report = json.loads((path / "report.json").read_text())
        summary = json.loads((path / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if not (isinstance(report, dict) and "daq_run" in report):
        return None
    write_atomic(path / "report.html", daq_run_html(report, summary, [], path))
    return [path / "report.html"]
