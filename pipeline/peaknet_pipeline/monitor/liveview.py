"""The live page's writer side (monitor.live_page): bounded accumulators of what a writer
found, and the newest hits kept only while someone watches. Pure numpy, no Ray, no clock of
its own (injected), so the tests drive it directly.

What a writer keeps, for the current DAQ run (or the whole run where there are none; a new
DAQ run label starts the figures afresh):

- peaks per frame: a histogram of `found` (the count that decides a hit), 0 .. PEAK_BINS - 2,
  the last bin holding everything above;
- the peakogram: 2-D counts of peaks by distance from the beam centre (lab pixels, from
  writer.geometry's panel layout: the beam is the origin there) and log10 of the peak's total
  intensity (fixed decades, so that writers' figures add up);
- the virtual powder pattern: peak positions counted on the detector in lab pixels, on a grid
  of at most POWDER_CELLS cells along its long side.

Each Result adds its peaks with a few vectorised numpy calls (no copy of a frame). The newest
hits (a frame, its peaks, its event id) cost a frame copy, so they are kept only while the
driver's page server has asked for the view within WATCH_S (someone has the page open: the
server asks only then), at most one per HIT_EVERY_S and RING in all: with nobody watching, a
hit costs nothing more than its peaks' counts. The server asks with the number of the last hit
it holds and gets only newer ones, so a frame crosses to the driver once.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from ..writer.daqrun import daq_run_label
from ..writer.geometry import panel_layout

PEAK_BINS = 64  # peaks per frame 0..62, and 63 or more
RADIUS_BINS = 64
LOG_INTENSITY = (0.0, 7.0)  # decades of a peak's total intensity the peakogram spans
INTENSITY_BINS = 56  # 8 per decade
POWDER_CELLS = 256  # the powder grid's long side, at most
RING = 4  # newest hits kept per writer while watched
WATCH_S = 5.0  # a view asked for this recently: someone watches
HIT_EVERY_S = 0.25  # at most this often a hit's frame is copied
LONG_RUN_S = 30.0  # a random source expected to stream longer than this turns the page on


def live_page_on(cfg: Any) -> bool:
    """Whether the run serves the live page: monitor.live_page.enabled, or when it is null
    (auto) for runs that last: a service, a socket source, an endless random source or one
    whose num_frames / rate_hz exceeds LONG_RUN_S (replay and unpaced random runs end soon)."""
    enabled = cfg.monitor.live_page.enabled
    if enabled is not None:
        return bool(enabled)
    if cfg.runtime.service or cfg.source.kind == "socket":
        return True
    if cfg.source.kind == "random":
        r = cfg.source.random
        return r.num_frames == 0 or (r.rate_hz > 0 and r.num_frames / r.rate_hz > LONG_RUN_S)
    return False


class Layout:
    """Where each slab pixel sits in the lab (pixels, beam at the origin), and the grids the
    peakogram and powder pattern count on, for frames of shape (C, H, W)."""

    def __init__(self, geometry: Any, frame_shape: tuple[int, ...]) -> None:
        c, h, w = (1, *frame_shape) if len(frame_shape) == 2 else tuple(frame_shape)
        self.frame_shape = (c, h, w)
        self.panels = panel_layout(geometry, (c, h, w))
        corners = np.array([self._lab(p, fs, ss) for p in self.panels for fs, ss in _ends(p)])
        self.lo = np.floor(corners.min(axis=0))
        hi = np.ceil(corners.max(axis=0))
        span = hi - self.lo
        self.cell = max(1, math.ceil(float(span.max()) / POWDER_CELLS))
        self.grid = (int(math.ceil(span[1] / self.cell)), int(math.ceil(span[0] / self.cell)))
        self.r_max = max(1.0, float(np.hypot(corners[:, 0], corners[:, 1]).max()))
        self._h = h

    @staticmethod
    def _lab(p: Any, fs: float, ss: float) -> tuple[float, float]:
        return (p.corner_x + p.fs[0] * fs + p.ss[0] * ss, p.corner_y + p.fs[1] * fs + p.ss[1] * ss)

    def lab(self, row: np.ndarray, col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lab x, y (pixels from the beam) of slab coordinates (row = c * H + r, col)."""
        row, col = np.asarray(row, dtype=np.float64), np.asarray(col, dtype=np.float64)
        panel = np.clip((row // self._h).astype(np.intp), 0, len(self.panels) - 1)
        t = np.array([(p.corner_x, p.corner_y, *p.fs[:2], *p.ss[:2]) for p in self.panels])[panel]
        ss = row - panel * self._h
        return t[:, 0] + t[:, 2] * col + t[:, 4] * ss, t[:, 1] + t[:, 3] * col + t[:, 5] * ss

    def as_dict(self) -> dict[str, Any]:
        return {
            "frame_shape": list(self.frame_shape),
            "powder_cell_px": self.cell,
            "powder_origin_px": [float(self.lo[0]), float(self.lo[1])],  # lab x, y of cell 0
            "radius_max_px": self.r_max,
        }


def _ends(p: Any) -> Iterable[tuple[float, float]]:
    """The four corners of a panel in (fs, ss) pixel units."""
    w, h = p.max_fs - p.min_fs + 1, p.max_ss - p.min_ss + 1
    return ((0, 0), (w, 0), (0, h), (w, h))


class Figures:
    """One DAQ run's accumulated figures (the arrays the page draws)."""

    def __init__(self, layout: Layout, label: str | None) -> None:
        self.layout, self.label = layout, label
        self.per_frame = np.zeros(PEAK_BINS, dtype=np.int64)
        self.peakogram = np.zeros((RADIUS_BINS, INTENSITY_BINS), dtype=np.int64)
        self.powder = np.zeros(layout.grid, dtype=np.int32)  # half the bytes sent each second
        self.frames = self.hits = self.peaks = 0

    def add(self, found: np.ndarray, row: np.ndarray, col: np.ndarray, total: np.ndarray) -> None:
        """Frames with `found` peaks each, whose listed peaks are at (row, col) with `total`."""
        self.per_frame += np.bincount(np.minimum(found, PEAK_BINS - 1), minlength=PEAK_BINS)
        self.frames += int(found.size)
        self.peaks += int(row.size)
        if not row.size:
            return
        x, y = self.layout.lab(row, col)
        r = np.hypot(x, y)
        ri = np.clip((r / self.layout.r_max * RADIUS_BINS).astype(np.intp), 0, RADIUS_BINS - 1)
        lo, hi = LOG_INTENSITY
        with np.errstate(divide="ignore", invalid="ignore"):
            li = np.log10(np.maximum(np.nan_to_num(total, nan=1.0), 1.0))
        ii = np.clip(
            ((li - lo) / (hi - lo) * INTENSITY_BINS).astype(np.intp), 0, INTENSITY_BINS - 1
        )
        np.add.at(self.peakogram, (ri, ii), 1)
        gy = ((y - self.layout.lo[1]) // self.layout.cell).astype(np.intp)
        gx = ((x - self.layout.lo[0]) // self.layout.cell).astype(np.intp)
        inside = (gy >= 0) & (gy < self.powder.shape[0]) & (gx >= 0) & (gx < self.powder.shape[1])
        np.add.at(self.powder, (gy[inside], gx[inside]), 1)


class LiveView:
    """A writer's live figures and newest hits (WriterStage.live: called like the CrystFEL
    feed with each Result's peaks once written). `view()` answers the driver; thread-safe
    (the writer's stats thread asks while its main thread writes); never raises into the
    writer."""

    def __init__(
        self,
        geometry: Any,
        min_peaks: int,
        ring: int = RING,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.geometry, self.min_peaks = geometry, min_peaks
        self.clock, self.wall = clock, wall
        self.figures: Figures | None = None
        self.ring: deque[dict[str, Any]] = deque(maxlen=ring)
        self.hits_seen = 0  # number of the newest hit kept (1, 2, ...)
        self._asked = -math.inf
        self._copied = -math.inf
        self._layouts: dict[tuple, Layout] = {}
        self._lock = threading.Lock()
        self.errors = 0

    def watched(self) -> bool:
        return self.clock() - self._asked < WATCH_S

    def __call__(self, result: Any, peaks: list, hit: np.ndarray, images: Any) -> None:
        try:
            self.add(result.batch, peaks, hit, images)
        except Exception:  # noqa: BLE001 - a view must not fail the writer
            self.errors += 1

    def add(self, batch: Any, peaks: list, hit: np.ndarray, images: Any) -> None:
        """Count a Result's peaks; keep its newest hit's frame if someone watches."""
        shape = tuple(batch.shape[1:])
        label = daq_run_label(batch.meta)
        found = np.fromiter((p.found for p in peaks), dtype=np.int64, count=len(peaks))
        row = np.concatenate([p.row for p in peaks]) if peaks else np.zeros(0)
        col = np.concatenate([p.col for p in peaks]) if peaks else np.zeros(0)
        total = np.concatenate([p.total for p in peaks]) if peaks else np.zeros(0)
        with self._lock:
            f = self.figures
            if f is None or f.label != label or f.layout.frame_shape != _chw(shape):
                f = self.figures = Figures(self._layout(shape), label)
            f.add(found, row, col, total)
            f.hits += int(np.count_nonzero(hit))
            if not self.watched():
                self.ring.clear()  # nobody looks: hold no frames
                return
            now = self.clock()
            idx = np.flatnonzero(hit)
            if not idx.size or images is None or now - self._copied < HIT_EVERY_S:
                return
            self._copied = now
            i = int(idx[-1])
            self.hits_seen += 1
            self.ring.append(
                _hit(self.hits_seen, batch, i, peaks[i], images[i], label, self.wall())
            )

    def _layout(self, shape: tuple) -> Layout:
        if shape not in self._layouts:
            self._layouts = {shape: Layout(self.geometry, shape)}
        return self._layouts[shape]

    def view(self, since: int = 0) -> dict[str, Any] | None:
        """The figures (copies) and the hits newer than hit number `since`; marks the view as
        watched. None before the first Result."""
        with self._lock:
            self._asked = self.clock()
            f = self.figures
            if f is None:
                return None
            return {
                "daq_run": f.label,
                "updated": self.wall(),
                "layout": f.layout.as_dict(),
                "frames": f.frames,
                "hits": f.hits,
                "peaks": f.peaks,
                "min_peaks": self.min_peaks,
                "per_frame": f.per_frame.copy(),
                "peakogram": f.peakogram.copy(),
                "powder": f.powder.copy(),
                "newest": [h for h in self.ring if h["n"] > since],
                "hits_seen": self.hits_seen,
            }


def _chw(shape: tuple) -> tuple:
    return (1, *shape) if len(shape) == 2 else shape


def _hit(n: int, batch: Any, i: int, p: Any, image: np.ndarray, label: str | None, t: float):
    meta = batch.meta
    event = meta.get("event_id")
    stamp = meta.get("timestamp")
    return {
        "n": n,
        "event_id": int(event[i]) if event is not None else None,
        "source_id": batch.source_id,
        "t": float(stamp[i]) if stamp is not None and np.asarray(stamp).dtype.kind == "f" else t,
        "daq_run": label,
        "npeaks": int(p.found),
        "image": np.array(image, dtype=np.float32).reshape(-1, image.shape[-1]),  # the slab
        "row": p.row.copy(),
        "col": p.col.copy(),
        "total": p.total.copy(),
    }


def merge_views(views: Iterable[Mapping[str, Any] | None]) -> dict[str, Any] | None:
    """The writers' views as one: the DAQ run of the most recently updated view, and the
    figures of every view of that run (and frame shape) added together. Pure."""
    views = [v for v in views if v]
    if not views:
        return None
    newest = max(views, key=lambda v: v["updated"])
    same = [
        v for v in views if v["daq_run"] == newest["daq_run"] and v["layout"] == newest["layout"]
    ]
    out = {k: newest[k] for k in ("daq_run", "updated", "layout", "min_peaks")}
    for key in ("frames", "hits", "peaks", "per_frame", "peakogram", "powder"):
        out[key] = sum((v[key] for v in same[1:]), same[0][key])
    out["writers"] = len(same)
    return out
