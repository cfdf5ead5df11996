"""The writer stage without Ray: Results in, peak lists and CXI files out, every event counted.

The writer actor runs exactly this per Result once it has fetched the arrays; the benchmark
and the tests call it directly. Every event that enters is accounted for once: written as a
hit, not a hit, or failed (by reason), and `summary()` checks that the three add up. Each
Result handled becomes a ledger entry committed by the next file that closes (series.py,
ledger.py); `committed()` gives the keys to acknowledge. Results whose events carry
`meta["daq_run"]` (runtime.service) go to their DAQ run's own folder and file series, each
closed once quiet (daqrun.py); a Result whose events name two DAQ runs, or no usable folder
name, is refused (failed as `daq_run_refused`, committed in the output directory's own series).

Latency (monitor/latency.py, `stats()["latency"]`): for each event handled without failure,
the wall-clock time from its arrival at ingest (`meta["arrival_t"]`, records.ARRIVAL_T) to
"written": the moment `process()` has appended its Result's rows to the open CXI file (the
append returned; the file is not yet closed or renamed into place) or, for an event that gets
no row (a non-hit under images "hits" or "none"), added its Result to the open commit. All
events of a Result are written at the same moment. Failed events are not observed; an event
whose file later breaks on closing keeps its observation. Across nodes the figure assumes
synchronised clocks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .. import __version__
from ..config.models import WriterConfig
from ..monitor.latency import LatencyTracker
from ..nvtx import nvtx_range
from ..records import ARRIVAL_T, Result
from .cxi import Rows
from .daqrun import DaqRun, DaqRuns, daq_run_label
from .ledger import LedgerEntry, LedgerIndex
from .peaks import PeakList, find_peaks, masks_from_output
from .series import CxiSeries

log = logging.getLogger("peaknet_pipeline.writer")

COUNTS = (
    "events",
    "hits",
    "non_hits",
    "rows_written",
    "peaks_found",
    "peaks_written",
    "peaks_dropped_max",
    "peaks_too_small",
    "peaks_too_large",
)
# The writer settings every CXI file carries as attributes, so a file says which rows it keeps
# and how its peaks were found.
FILE_SETTINGS = (
    "images",
    "min_peaks",
    "max_peaks",
    "connectivity",
    "min_pixels_per_peak",
    "max_pixels_per_peak",
)


class WriterStage:
    """Peak finding and CXI writing for one writer index (which owns its own file sequence).

    `workers` > 1 finds the peaks of a Result's events in that many threads (scipy releases
    the GIL for part of the work); at most one Result's events are in flight, so the work
    pending is bounded by the batch size. With `nvtx`, peak finding and writing are NVTX
    ranges (find_peaks, write_cxi). `clock` (monotonic) times a DAQ run's quiet and `wall`
    stamps its first and last event; tests inject them.
    """

    def __init__(
        self,
        cfg: WriterConfig,
        output_dir: str,
        writer_index: int,
        config_hash: str = "",
        workers: int = 1,
        nvtx: bool = False,
        consumer: str = "",
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.nvtx = nvtx
        self.index = writer_index
        self.output_dir = output_dir
        self.consumer = consumer or f"writer-{writer_index}"
        self._attrs = {
            "software": "peaknet_pipeline",
            "software_version": __version__,
            "config_hash": config_hash,
            **{name: getattr(cfg, name) for name in FILE_SETTINGS},
        }
        self.series = self._series_in(output_dir)  # events without a DAQ run (and refused)
        self.ledgers = LedgerIndex(output_dir, cfg.file_prefix)
        self.daq_runs = DaqRuns(
            output_dir, self._series_in, self.consumer, cfg.daq_run_close_s, clock, wall
        )
        self._settled: list[tuple[str, int]] = []  # committed by DAQ runs closed since
        self.counts: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.busy_s = 0.0
        self._wall = wall
        self.latency = LatencyTracker()  # arrival at ingest -> written (module docstring)
        self._lock = threading.Lock()  # stats() may read while process() runs
        self._pool = ThreadPoolExecutor(workers, "peaks") if workers > 1 else None
        self._closed = False
        # writer.live_feed: called with each Result's peaks once written (feed.FeedOffers)
        self.feed: Any = None
        # monitor.live_page: the same call, counting peaks for the page (monitor/liveview.py)
        self.live: Any = None

    def _series_in(self, folder: str) -> CxiSeries:
        """The file series of this writer in `folder` (the output directory or a DAQ run's)."""
        c = self.cfg
        return CxiSeries(
            folder,
            c.file_prefix,
            self.index,
            c.events_per_file,
            c.max_peaks,
            c.compression,
            c.compression_level,
            self._attrs,
            c.geometry,
            self.consumer,
        )

    def _route(self, result: Result) -> DaqRun | None:
        """The DAQ run `result` belongs to (None: the output directory's own series); raises
        ValueError for a Result this writer refuses (daqrun.daq_run_label)."""
        label = daq_run_label(result.batch.meta)
        if label is None:
            return None
        with self._lock:
            return self.daq_runs.route(label, result.size, tuple(result.batch.shape[1:]))

    def close_quiet(self) -> None:
        """Close the DAQ runs none of whose events reached this writer for
        writer.daq_run_close_s (called on every Result and on the writer's idle tick)."""
        with self._lock:
            quiet = self.daq_runs.quiet()
        for run in quiet:
            self._close_run(run)

    def _close_run(self, run: DaqRun) -> None:
        """Close a DAQ run's files, committing every Result handled for it (in a file without
        rows if none is open), write this writer's part of its summary, and forget it."""
        lost = run.series.close_file(force=True)
        if lost:  # the open file broke: its Results commit as failures in a file of their own
            self._refail(lost, "write_error:close", run)
            run.series.close_file(force=True)
        keys = run.series.committed() + [e.key for e in run.series.uncommitted()]
        summary = run.summary(self.index, self.consumer, COUNTS)
        with self._lock:
            self.daq_runs.close(run, summary)
        self._settled += keys

    def committed_before(self, result: Result) -> bool:
        """Whether a closed file of `result`'s folder (its DAQ run's, or the output
        directory) committed it already (its first writer died before acknowledging it)."""
        try:
            label = daq_run_label(result.batch.meta)
        except ValueError:
            label = None
        if label is None:
            return self.ledgers.contains(result.key)
        return self.daq_runs.ledgers(label, self.cfg.file_prefix).contains(result.key)

    def _find(self, images: np.ndarray, masks: np.ndarray) -> list[PeakList]:
        c = self.cfg

        def one(i: int) -> PeakList:
            return find_peaks(
                images[i],
                masks[i],
                c.connectivity,
                c.min_pixels_per_peak,
                c.max_pixels_per_peak,
                c.max_peaks,
            )

        events = range(images.shape[0])
        return list(self._pool.map(one, events) if self._pool else map(one, events))

    def wants_frames(self, result: Result) -> bool:
        """Whether a row written for `result` takes a frame: with peak lists from inference
        (result.peaks) the writer fetches the images only then (images: all, or hits and one
        event is a hit)."""
        if self.cfg.images == "none":
            return False
        found = result.peaks.found if result.peaks is not None else None
        return (
            found is None or self.cfg.images == "all" or bool((found >= self.cfg.min_peaks).any())
        )

    def process(
        self, result: Result, images: np.ndarray | None = None, output: np.ndarray | None = None
    ) -> None:
        """Find the peaks of every event of `result` and write the rows this config keeps.
        A Result of peak lists (output_kind "peaks") brings its peaks; `images` is then given
        only when wants_frames(result), and there is no `output`."""
        t0 = time.perf_counter()
        self.close_quiet()
        try:
            run = self._route(result)
        except ValueError as exc:
            self._fail(result, "daq_run_refused", str(exc), None)
            return
        series = self.series if run is None else run.series
        try:
            if result.peaks is not None:
                peaks = result.peaks.peak_lists()
                if len(peaks) != result.size:
                    raise ValueError(f"peak lists of {len(peaks)} events for {result.size}")
                if images is not None and images.shape[0] != result.size:
                    raise ValueError(f"{images.shape[0]} frames for {result.size} events")
            else:
                masks = masks_from_output(output, result.output_kind)
                if images.shape != masks.shape:
                    raise ValueError(f"images {images.shape} and peak masks {masks.shape} differ")
                if images.shape[0] != result.size:
                    raise ValueError(f"{images.shape[0]} frames for {result.size} events")
                with nvtx_range("find_peaks", self.nvtx):
                    peaks = self._find(images, masks)
        except ValueError as exc:
            self._fail(result, "bad_output", str(exc), run)
            return
        except Exception as exc:  # noqa: BLE001 - a bad Result must not end the stream
            self._fail(result, f"peak_finding_error:{type(exc).__name__}", str(exc), run)
            return
        hit = np.array([p.found >= self.cfg.min_peaks for p in peaks], dtype=bool)
        keep = np.arange(len(peaks)) if self.cfg.images == "all" else np.flatnonzero(hit)
        n_hits = int(hit.sum())
        entry = LedgerEntry(*result.key)
        entry.counts.update(
            events=len(peaks),
            hits=n_hits,
            non_hits=len(peaks) - n_hits,
            rows_written=int(keep.size),
            peaks_found=sum(p.found for p in peaks),
            peaks_written=sum(peaks[i].n for i in keep),
            peaks_dropped_max=sum(p.dropped for p in peaks),
            peaks_too_small=sum(p.too_small for p in peaks),
            peaks_too_large=sum(p.too_large for p in peaks),
        )
        try:
            if keep.size:
                with nvtx_range("write_cxi", self.nvtx):
                    series.write(self._rows(result, peaks, hit, keep, images), entry)
            else:
                series.record(entry)
        except Exception as exc:  # noqa: BLE001 - disk full, odd metadata: not the end
            # A broken file keeps its .part name; what it held is failed, not written.
            lost = series.close_file()
            self._refail(lost, f"write_error:{type(exc).__name__}", run)
            self._fail(result, f"write_error:{type(exc).__name__}", str(exc), run)
            return
        written = self._wall()
        with self._lock:
            if ARRIVAL_T in result.batch.meta:
                self.latency.observe(result.batch.meta[ARRIVAL_T], written)
            self.counts.update(entry.counts)
            if run is not None:
                run.counts.update(entry.counts)
            self.busy_s += time.perf_counter() - t0
        if self.feed is not None:  # after the rows are written: the files stay the record
            self.feed(result, peaks, hit, images)
        if self.live is not None:
            self.live(result, peaks, hit, images)

    def _rows(
        self,
        result: Result,
        peaks: list[PeakList],
        hit: np.ndarray,
        keep: np.ndarray,
        images: np.ndarray | None,
    ) -> Rows:
        return Rows(
            peaks=[peaks[i] for i in keep],
            hit=hit[keep],
            meta={k: v[keep] for k, v in result.batch.meta.items() if k != ARRIVAL_T},
            images=self._frames(images, keep),
            source_id=result.batch.source_id,
            batch_seq=result.batch.seq,
            batch_index=keep.astype(np.int32),
            frame_shape=tuple(result.batch.shape[1:] if images is None else images.shape[1:]),
        )

    def _frames(self, images: np.ndarray | None, keep: np.ndarray) -> np.ndarray | None:
        """The frames to write (no copy when every event is kept)."""
        if self.cfg.images == "none" or images is None:
            return None
        return images if keep.size == images.shape[0] else images[keep]

    def fail(self, result: Result, reason: str, detail: str = "") -> None:
        """Count every event of `result` as failed for `reason`; log the first of each kind.
        The failure is committed like any handled Result (it would fail again elsewhere), in
        its DAQ run's files when it has one."""
        self.close_quiet()
        try:
            run = self._route(result)
        except ValueError:
            run = None
        self._fail(result, reason, detail, run)

    def _fail(self, result: Result, reason: str, detail: str, run: DaqRun | None) -> None:
        entry = LedgerEntry(*result.key)
        entry.counts["events"] = result.size
        entry.failed[reason] = result.size
        with self._lock:
            if reason not in self.failed:
                log.warning(
                    "writer %d: %d events of %s seq %d failed: %s (%s); further events failing "
                    "this way are counted, not logged",
                    self.index,
                    result.size,
                    result.batch.source_id,
                    result.batch.seq,
                    reason,
                    detail,
                )
            self.failed[reason] += result.size
            self.counts["events"] += result.size
            if run is not None:
                run.failed[reason] += result.size
                run.counts["events"] += result.size
        (self.series if run is None else run.series).record(entry)

    def _refail(self, entries: list[LedgerEntry], reason: str, run: DaqRun | None) -> None:
        """Results whose rows were in a file that broke: counted as failed instead, and left
        in the open commit as failures."""
        tallies = [(self.counts, self.failed)] + ([(run.counts, run.failed)] if run else [])
        with self._lock:
            for entry in entries:
                events = entry.counts["events"]
                for counts, failed in tallies:
                    counts.subtract({k: v for k, v in entry.counts.items() if k != "events"})
                    failed[reason] += events
                entry.counts = Counter(events=events)
                entry.failed[reason] += events

    def _all_series(self) -> list[tuple[CxiSeries, DaqRun | None]]:
        return [(self.series, None)] + [(r.series, r) for r in self.daq_runs.open.values()]

    def commit_now(self, force: bool = False) -> None:
        """Close the open files early (with `force`: also commit Results waiting without rows
        in a file of their own); open DAQ runs stay open."""
        for series, run in self._all_series():
            self._refail(series.close_file(force), "write_error:close", run)

    def committed(self) -> list[tuple[str, int]]:
        """Keys of the Results committed (in closed files) since the last call."""
        keys, self._settled = self._settled, []
        return keys + [k for series, _ in self._all_series() for k in series.committed()]

    def uncommitted(self) -> list[tuple[str, int]]:
        """Take the keys of the Results handled and waiting without rows for a file to commit
        them (the writer lets go of them when Q2 is drained; its counts keep them)."""
        return [e.key for series, _ in self._all_series() for e in series.uncommitted()]

    def finish(self) -> list[tuple[str, int]]:
        """Close the open files and DAQ runs; every Result handled is then settled. Returns
        the keys to acknowledge (those committed by the last files, and any handled with no
        file left to commit them: the writer's own summary counts them)."""
        self.close()
        return self.committed() + self.uncommitted()

    def close(self) -> None:
        """Close (and rename into place) the open files, every DAQ run's too; idempotent."""
        if not self._closed:
            for run in list(self.daq_runs.open.values()):
                self._close_run(run)
            self.series.close_file()
            if self.feed is not None:
                self.feed.close()
            if self._pool is not None:
                self._pool.shutdown()
            self._closed = True

    def stats(self) -> dict[str, Any]:
        """Live counters (cheap; safe to call from another thread)."""
        with self._lock:
            runs = self.daq_runs
            recent = sorted(runs.open.values(), key=lambda r: r.seen, reverse=True)
            current = next(
                (s for s in [self.series] + [r.series for r in recent] if s.current_path),
                self.series,
            )
            return {
                "writer": self.index,
                **{key: int(self.counts[key]) for key in COUNTS},
                "failed": dict(self.failed),
                "files_closed": len(self.series.files)
                + runs.files_closed
                + sum(len(r.series.files) for r in recent),
                "current_file": current.current_path,
                "current_file_events": current.current_rows,
                "busy_s": self.busy_s,
                "daq_runs": runs.states(),
                "daq_run_stragglers": runs.stragglers,
                "latency": self.latency.as_dict(self._wall()),
            }

    def summary(self) -> dict[str, Any]:
        """Per-writer summary; `accounted` is True when hits + non-hits + failed == events."""
        with self._lock:
            counts = {key: int(self.counts[key]) for key in COUNTS}
            failed = dict(self.failed)
            return {
                "writer": self.index,
                **counts,
                "failed": failed,
                "accounted": counts["hits"] + counts["non_hits"] + sum(failed.values())
                == counts["events"],
                "notes": dict(sum((s.notes for s, _ in self._all_series()), self.daq_runs.notes)),
                # the files outside a closed DAQ run (each run's folder summary lists its own)
                "files": [f for series, _ in self._all_series() for f in series.files],
                "busy_s": round(self.busy_s, 6),
                "output_dir": self.output_dir,
                "latency": self.latency.as_dict(self._wall()),
                **self.daq_runs.summary(),
            }
