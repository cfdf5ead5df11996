"""The DAQ runs of a service: each one's folder made complete, and the service's index.

In service mode (`runtime.service`) every writer reports, in its stats, the DAQ runs it has
open and the last ones it closed (`WriterStats.daq_runs`: label, state, frames, hits, first
and last frame's time, files). The driver feeds each progress sample to a `DaqRunTracker`;
a DAQ run whose label is closed in every writer that saw it, and open in none, is finalised:

1. `<service dir>/<label>/summary.json`: what its files hold, merged over the writers from
   the ledgers of its closed files (writer/ledger.py: exact, whichever writer wrote them);
2. `report.html`: its figures, and the service's time series cut to its span;
3. `report.json`: its figures, with `complete_after_s`, the delay from its last frame
   written to this moment (the folder complete but for the index entry, written next);
4. `<service dir>/index.json` and `index.html`: every DAQ run, newest first.

Each file is written to a temporary name and renamed, so a reader (an indexing script
polling index.json) never sees half of one; the index is written last, so a DAQ run listed
there has its whole folder. A straggler (a frame of a finalised DAQ run that reaches a writer
late: the writer opens the run again) makes the run due once more when it closes again: its
summary, report and index entry are written again with the new figures.

The tracker holds one small record per DAQ run a writer still reports, and one index entry
per DAQ run of the service: nothing else grows with the service's length.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import describe
from ..placement import Role
from .timeseries import Sample, TimeSeries

log = logging.getLogger(__name__)

INDEX_JSON, INDEX_HTML = "index.json", "index.html"
OPEN, CLOSED = "open", "closed"
LABEL = re.compile(r"[A-Za-z0-9._-]+")  # a DAQ run's label is its folder's name (daq.md)
ISO = "%Y-%m-%dT%H:%M:%SZ"
PART_GLOB = "summary-*.json"  # a writer's part of a DAQ run's summary (writer/daqrun.py)


@dataclass(frozen=True)
class Seen:
    """One writer's last word on one DAQ run (its `DaqRunState`, as the driver keeps it)."""

    state: str
    frames: int = 0
    hits: int = 0
    first_t: float | None = None
    last_t: float | None = None
    files: int = 0


def as_seen(state: Any) -> tuple[str, Seen]:
    """(label, Seen) from a `DaqRunState`, or the dict it becomes at the edges (a sample's
    actors are `as_dict`-ed; a finished writer's summary is a dict)."""

    def get(name: str, default: Any = None) -> Any:
        if isinstance(state, Mapping):
            return state.get(name, default)
        return getattr(state, name, default)

    files = get("files", 0)
    count = files if isinstance(files, int) else len(files or ())
    seen = Seen(
        str(get("state")),
        int(get("frames", 0) or 0),
        int(get("hits", 0) or 0),
        get("first_t") or None,  # 0.0: not known
        get("last_t") or None,
        count,
    )
    return str(get("label")), seen


def writer_states(actors: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Seen]]:
    """writer id -> label -> Seen, from the writers' counts in a sample (`Sample.actors`
    values). A failed writer's open DAQ runs are left out: what it had not committed goes to
    another writer, and its `.part` file will never close."""
    states: dict[str, dict[str, Seen]] = {}
    for actor in actors:
        if actor.get("role") != Role.WRITER:
            continue
        runs = dict(as_seen(s) for s in actor.get("daq_runs") or ())
        if actor.get("phase") == "failed":
            runs = {label: s for label, s in runs.items() if s.state == CLOSED}
        states[str(actor["actor_id"])] = runs
    return states


@dataclass
class DaqRun:
    """The driver's view of one DAQ run: each writer's last word on it, and what was
    finalised last (None: not yet)."""

    label: str
    seen: dict[str, Seen] = field(default_factory=dict)
    done: tuple | None = None

    def fingerprint(self) -> tuple:
        return tuple(sorted((w, s.state, s.frames, s.hits, s.last_t) for w, s in self.seen.items()))

    def closed(self) -> bool:
        """Closed in every writer that saw it, open in none."""
        return bool(self.seen) and all(s.state == CLOSED for s in self.seen.values())

    def due(self) -> bool:
        """Closed, and not finalised as it is now (never, or before a straggler)."""
        return self.closed() and self.done != self.fingerprint()


def observe(runs: dict[str, DaqRun], states: Mapping[str, Mapping[str, Seen]]) -> list[str]:
    """Take in the writers' states (`writer_states`); the labels due for finalising, in the
    order their first frames came. Pure but for updating `runs`.

    A writer that still reports but no longer lists a DAQ run it had open (a writer replaced
    under the same id) is no longer waited for; a closed one it stopped listing (it keeps the
    last few) stays as it was. A finalised DAQ run no writer lists any more is forgotten
    (the index keeps its figures)."""
    for writer, by_label in states.items():
        for label, seen in by_label.items():
            runs.setdefault(label, DaqRun(label)).seen[writer] = seen
    listed = {label for by_label in states.values() for label in by_label}
    for label, run in list(runs.items()):
        for writer in [w for w in run.seen if w in states and label not in states[w]]:
            if run.seen[writer].state == OPEN:
                del run.seen[writer]
        if label not in listed and run.done is not None and not run.due():
            del runs[label]
    due = [run for run in runs.values() if run.due()]
    return [run.label for run in sorted(due, key=lambda r: (_first(r.seen.values()), r.label))]


def _get(record: Any, name: str) -> Any:
    return record.get(name) if isinstance(record, Mapping) else getattr(record, name)


def _first(seen: Iterable[Seen]) -> float:
    return min((s.first_t for s in seen if s.first_t is not None), default=float("inf"))


def iso(t: float | None) -> str | None:
    """A time as report.json and the index say it: UTC, to the second."""
    return None if t is None else time.strftime(ISO, time.gmtime(t))


def folder_summary(folder: Path, prefix: str) -> dict[str, Any]:
    """summary.json of one DAQ run's folder: the writers' parts (`summary-<writer>*.json`,
    each written as a writer closes the run: writer/daqrun.py) merged, with the closed files
    no part lists (a writer that died before it closed the run) counted from their ledgers,
    exact as for any writer that did not finish; and any `.part` left (not complete)."""
    from ..writer.ledger import committed_counts, read_ledger
    from ..writer.summary import files_on_disk, merge_summaries

    parts = [json.loads(p.read_text()) for p in sorted(folder.glob(PART_GLOB))]
    listed = {Path(f["path"]).name for part in parts for f in part.get("files", [])}
    on_disk, incomplete = files_on_disk(folder, prefix, {})
    orphans: dict[str, list[dict]] = {}
    for entry in on_disk:
        if Path(entry["path"]).name not in listed:
            orphans.setdefault(read_ledger(entry["path"])[2] or "", []).append(entry)
    for consumer, entries in sorted(orphans.items()):
        counts = committed_counts([e["path"] for e in entries], {consumer})
        parts.append({**counts, "consumer": consumer, "files": entries})
    merged = merge_summaries(parts)
    firsts = [p["first_t"] for p in parts if p.get("first_t")]
    lasts = [p["last_t"] for p in parts if p.get("last_t")]
    return {
        **merged,
        "complete": not incomplete,
        "incomplete_files": incomplete,
        "first_t": min(firsts, default=None),
        "last_t": max(lasts, default=None),
        "writer_parts": len(parts),
    }


def daq_run_report(
    label: str,
    service: str,
    folder: Path,
    seen: Mapping[str, Seen],
    summary: Mapping[str, Any],
    previous: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """report.json of one DAQ run (without `complete_after_s`, measured as it is written):
    frames and hits as its files committed them, its span from the writers' first and last
    frames (their stats, their summary parts, and a previous finalising's, for a straggler),
    its files, each writer's last state."""
    known = [*seen.values(), summary, previous or {}]
    firsts = [t for k in known if (t := _get(k, "first_t"))]
    lasts = [t for k in known if (t := _get(k, "last_t"))]
    first, last = min(firsts, default=None), max(lasts, default=None)
    frames, hits = int(summary.get("events", 0)), int(summary.get("hits", 0))
    return {
        "daq_run": label,
        "service": service,
        "folder": str(folder),
        "start": iso(first),
        "end": iso(last),
        "first_t": first,
        "last_t": last,
        "duration_s": None if first is None or last is None else round(last - first, 3),
        "frames": frames,
        "hits": hits,
        "hit_rate": hits / frames if frames else 0.0,
        "complete": bool(summary.get("complete", True)),
        "accounted": bool(summary.get("accounted", True)),
        "failed_events": int(summary.get("failed_events", 0)),
        "files": [Path(f["path"]).name for f in summary.get("files", [])],
        "writers": {w: vars(s) for w, s in sorted(seen.items())},
        "finalised": 1 + int((previous or {}).get("finalised", 0)),
        "summary": "summary.json",
        # frames a driver that died had accepted and no closed file holds (service.py): kept
        # when the DAQ run goes on under the next driver and closes again
        "lost": int((previous or {}).get("lost") or 0),
    }


INDEX_KEYS = ("start", "end", "first_t", "last_t", "frames", "hits", "hit_rate")
INDEX_KEYS += ("complete", "complete_after_s", "finalised", "lost", "ended_by")


def index_entry(report: Mapping[str, Any]) -> dict[str, Any]:
    """A DAQ run's line in the index: its figures, and its folder relative to the index."""
    return {
        "daq_run": report["daq_run"],
        "folder": Path(report["folder"]).name,
        **{k: report.get(k) for k in INDEX_KEYS},
    }


def index_doc(service: str, entries: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """index.json: every DAQ run of the service, newest first (by its first frame)."""
    ordered = sorted(entries, key=lambda e: (e.get("first_t") or 0.0, e["daq_run"]), reverse=True)
    return {
        "service": service,
        "updated": iso(time.time()),
        "daq_runs": len(ordered),
        "frames": sum(int(e.get("frames") or 0) for e in ordered),
        "hits": sum(int(e.get("hits") or 0) for e in ordered),
        "runs": [dict(e) for e in ordered],
    }


def read_index(output_dir: Path) -> dict[str, dict[str, Any]]:
    """The index a previous driver of this service left (a restart continues it), by label."""
    try:
        doc = json.loads((output_dir / INDEX_JSON).read_text())
        return {e["daq_run"]: e for e in doc.get("runs", [])}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, KeyError) as exc:
        log.warning("%s unreadable (%s): starting a new index", output_dir / INDEX_JSON, exc)
        return {}


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path` and rename it into place: a reader sees
    the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def span_samples(samples: Sequence[Sample], since: float | None, first: Any, last: Any) -> list:
    """The samples of one DAQ run's span (wall times `first`..`last`; `since` is when the
    series' t=0 was), with one sample either side so its rates cover the whole span."""
    if since is None or first is None or last is None:
        return []
    inside = [i for i, s in enumerate(samples) if first <= since + s.t <= last]
    before = [i for i, s in enumerate(samples) if since + s.t < first][-1:]
    after = [i for i, s in enumerate(samples) if since + s.t > last][:1]
    picked = before + inside + after
    return [samples[i] for i in range(picked[0], picked[-1] + 1)] if picked else []


class DaqRunTracker:
    """Finalises each DAQ run of a service once its writers have closed it (module doc)."""

    def __init__(
        self,
        output_dir: Path,
        service: str,
        prefix: str,
        streaming_since: float | None = None,
        pages: bool = True,
    ) -> None:
        self.output_dir, self.service, self.prefix = Path(output_dir), service, prefix
        self.streaming_since, self.pages = streaming_since, pages
        self.runs: dict[str, DaqRun] = {}
        self.index = read_index(self.output_dir)
        self.failed: set[str] = set()  # labels whose last finalising failed (retried at end)

    def status(self, recent: int = 5) -> dict[str, Any]:
        """What the resource's status shows on Kubernetes (kube.py): the DAQ run being written
        (the newest one still open in a writer), the last `recent` completed ones and the
        service's totals (the index, earlier drivers' runs included, plus the open ones)."""
        live = []  # (first frame's time, label, frames, hits) of each DAQ run still open
        for r in self.runs.values():
            if any(s.state == OPEN for s in r.seen.values()):
                seen = r.seen.values()
                live.append(
                    (_first(seen), r.label, sum(s.frames for s in seen), sum(s.hits for s in seen))
                )
        done = sorted(self.index.values(), key=lambda e: e.get("first_t") or 0.0, reverse=True)
        fresh = [run for run in live if run[1] not in self.index]
        current = None
        if live:
            first, label, frames, hits = max(live)
            since = iso(first) if first != float("inf") else None
            rate = hits / frames if frames else 0.0
            current = {
                "name": label,
                "frames": frames,
                "hits": hits,
                "hit_rate": rate,
                "since": since,
            }
        short = ("daq_run", "frames", "hits", "hit_rate", "start", "end")
        frames = sum(int(e.get("frames") or 0) for e in done) + sum(r[2] for r in fresh)
        hits = sum(int(e.get("hits") or 0) for e in done) + sum(r[3] for r in fresh)
        return {
            "current": current,
            "recent": [{k: e.get(k) for k in short} for e in done[:recent]],
            "totals": {"daq_runs": len(done) + len(fresh), "frames": frames, "hits": hits},
        }

    def update(self, sample: Sample, series: TimeSeries | None = None) -> list[str]:
        """Take in a sample; finalise every DAQ run now due. The labels finalised."""
        due = observe(self.runs, writer_states(sample.actors.values()))
        return [label for label in due if self.finalise(label, series)]

    def finish(self, sample: Sample, series: TimeSeries | None = None) -> list[str]:
        """The service has ended (every writer finished or failed): finalise what is due,
        what failed to finalise before, and what will now never close (a writer that did not
        finish left its `.part`: that DAQ run's summary says it is not complete)."""
        observe(self.runs, writer_states(sample.actors.values()))
        left = [r.label for r in self.runs.values() if r.done != r.fingerprint() and r.seen]
        left += [label for label in sorted(self.failed) if label not in left]
        return [label for label in left if self.finalise(label, series)]

    def finalise(
        self, label: str, series: TimeSeries | None = None, extra: Mapping | None = None
    ) -> bool:
        """Write the DAQ run's summary.json, report.html, report.json, then the index (module
        doc); whether it was done. A failure is logged and tried again at the end: a service
        must not stop for one DAQ run's report. `extra`: fields for its report and index entry
        (a restarted service's `lost` and `ended_by`: service.py)."""
        run = self.runs.get(label) or DaqRun(label)
        run.done = run.fingerprint()  # tried: not again until it changes
        if not LABEL.fullmatch(label) or label in (".", ".."):
            log.error("DAQ run %r: not a folder name; its folder is not finalised", label)
            return False
        try:
            self._write(label, run, series, extra or {})
        except Exception as exc:  # noqa: BLE001 - logged; the service goes on
            log.error("DAQ run %s: its folder was not finalised: %s", label, describe(exc))
            self.failed.add(label)
            return False
        self.failed.discard(label)
        return True

    def _write(self, label: str, run: DaqRun, series: TimeSeries | None, extra: Mapping) -> None:
        folder = self.output_dir / label
        folder.mkdir(parents=True, exist_ok=True)
        summary = {"daq_run": label, "service": self.service, **folder_summary(folder, self.prefix)}
        previous = self.index.get(label)
        report = daq_run_report(label, self.service, folder, run.seen, summary, previous)
        report.update(extra)
        write_atomic(folder / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
        if self.pages:
            self._page(folder, report, summary, series)
        done = time.time()
        if report["last_t"] is not None:
            report["complete_after_s"] = round(done - report["last_t"], 3)
        write_atomic(folder / "report.json", json.dumps(report, indent=2, default=str) + "\n")
        self.index[label] = index_entry(report)
        self.write_index()
        log.info(
            "DAQ run %s complete: %d frames, %d hits, in %s (%s s after its last frame)",
            label,
            report["frames"],
            report["hits"],
            folder,
            report.get("complete_after_s"),
        )

    def _page(self, folder: Path, report: dict, summary: dict, series: TimeSeries | None) -> None:
        from .daqrun_page import daq_run_html

        samples = series.samples if series is not None else []
        cut = span_samples(samples, self.streaming_since, report["first_t"], report["last_t"])
        try:
            write_atomic(folder / "report.html", daq_run_html(report, summary, cut, folder))
        except Exception as exc:  # noqa: BLE001 - the page is a view; the JSON is written
            log.warning("DAQ run %s: report.html not written: %s", report["daq_run"], exc)

    def write_index(self) -> None:
        """index.json and index.html, each atomically (the JSON first)."""
        from .daqrun_page import index_html

        doc = index_doc(self.service, self.index.values())
        write_atomic(self.output_dir / INDEX_JSON, json.dumps(doc, indent=2) + "\n")
        write_atomic(self.output_dir / INDEX_HTML, index_html(doc))


def tracker_for(pipeline: Any) -> DaqRunTracker | None:
    """A service's tracker (`runtime.service`), None for a finite run."""
    cfg = pipeline.cfg
    if not cfg.runtime.service:
        return None
    return DaqRunTracker(
        pipeline.output_dir,
        pipeline.run_id,
        cfg.writer.file_prefix,
        pipeline.streaming_since,
        pages=cfg.monitor.report_html,
    )
