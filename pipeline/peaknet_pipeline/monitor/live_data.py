"""What the live page's endpoints answer, made from what the driver already has: its time
series (the samples of sampling.py), the live verdict, the pool and the restarts, and the
writers' live views (monitor/liveview.py) as the page server last fetched them. No Ray call
here: `LiveState` is filled by the server's refresher and read by its request threads.

Every document is plain JSON data (numbers, strings, lists; NaN and infinity as null).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..placement import Role
from .latency import Histogram, merge_latency
from .live_png import CMAPS, counts_png, frame_png
from .liveview import INTENSITY_BINS, LOG_INTENSITY, RADIUS_BINS, merge_views
from .timeseries import Sample, TimeSeries
from .verdict import live_verdict

HITS_KEPT = 8  # newest hit frames the server holds (all writers together)
SERIES_S = 900.0  # /api/series: the last 15 minutes
RATE_S = 5.0  # frames/s in the summary: over about the last 5 s of samples

Views = Callable[[Mapping[str, int]], Mapping[str, Any]]  # writer id -> its view (or None)


def clean(obj: Any) -> Any:
    """`obj` as strict JSON data: numpy values and arrays as numbers and lists, NaN and
    infinities as None (a browser's JSON.parse refuses them)."""
    if isinstance(obj, Mapping):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, np.ndarray):  # counts need no cleaning: one C call for the whole grid
        return obj.tolist() if obj.dtype.kind in "iub" else clean(obj.tolist())
    if isinstance(obj, np.generic):
        return clean(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _samples(series: TimeSeries | None, seconds: float | None = None) -> list[Sample]:
    """The series' samples (the last `seconds` of them), read while the driver may add one:
    a copy taken again if the deque changed under it."""
    if series is None:
        return []
    for _ in range(5):
        try:
            return series.window(seconds) if seconds is not None else series.samples
        except RuntimeError:  # "deque mutated during iteration": the driver just added one
            continue
    return []


def _fill(q: Mapping[str, Any]) -> float:
    items = q.get("depth", 0) / max(1, q.get("capacity_items", 1))
    cap = q.get("capacity_bytes") or 0
    return max(items, q.get("bytes", 0) / cap if cap else 0.0)


def _rate(a: Sample, b: Sample, key: str) -> float:
    dt = b.t - a.t
    return (b.frames()[key] - a.frames()[key]) / dt if dt > 0 else 0.0


class LiveState:
    """The page's data. `views(known)` fetches the writers' live views (the server's refresher
    calls `refresh()` about once a second while someone watches); `pipeline` (the driver's
    Pipeline, None in tests) gives the run's state, pool and restarts."""

    def __init__(
        self,
        run_id: str,
        min_peaks: int,
        views: Views | None = None,
        pipeline: Any = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.run_id, self.min_peaks = run_id, min_peaks
        self.views, self.pipeline, self.wall = views, pipeline, wall
        self.series: TimeSeries | None = None
        self.started = wall()
        self.view: dict[str, Any] | None = None
        self.hits: deque[dict[str, Any]] = deque(maxlen=HITS_KEPT)
        self.known: dict[str, int] = {}  # writer id -> the number of its newest hit held
        self._next = 1
        self._lock = threading.Lock()

    # -- filled by the refresher ----------------------------------------------------------------
    def refresh(self) -> None:
        """Fetch the writers' views (only their hits not held yet) and keep the merge."""
        if self.views is None:
            return
        got = dict(self.views(dict(self.known)))
        if not any(got.values()):
            return
        new = []
        for writer, v in got.items():
            if v:
                self.known[writer] = v["hits_seen"]
                new += v["newest"]
        with self._lock:
            for hit in sorted(new, key=lambda h: h["t"]):
                self.hits.append({**hit, "id": self._next})
                self._next += 1
            merged = merge_views(got.values())
            if merged is not None:
                self.view = merged

    # -- the documents --------------------------------------------------------------------------
    def state(self) -> str:
        p = self.pipeline
        if p is None:
            return "streaming" if self.series is not None else "starting"
        if p.actors and not any(a.running for a in p.actors):
            return "ended"
        if getattr(p, "streaming_since", None) is None:
            return "starting"
        return "draining" if p.draining else "streaming"

    def summary(self) -> dict[str, Any]:
        now = self.wall()
        samples = _samples(self.series, RATE_S)
        last = samples[-1] if samples else None
        frames = last.frames() if last else {"ingested": 0, "inferred": 0, "written": 0}
        hits = int(last.total(Role.WRITER, "hits")) if last else 0
        handled = (
            int(last.total(Role.WRITER, "hits") + last.total(Role.WRITER, "non_hits"))
            if last
            else 0
        )
        latency = merge_latency(a.get("latency") for a in last.of(Role.WRITER)) if last else {}
        minute = Histogram.from_dict(latency.get("last_minute")).summary()
        judged = live_verdict(self.series) if self.series is not None else None
        with self._lock:
            newest = self.hits[-1]["t"] if self.hits else None
            view = self.view
        expected = [a.get("frames_expected") for a in last.of(Role.INGEST)] if last else []
        return clean(
            {
                "run_id": self.run_id,
                "state": self.state(),
                "now": now,
                "elapsed_s": now - self.started,
                "streaming_s": last.t if last else 0.0,
                "daq_run": view["daq_run"] if view else None,
                "frames": frames,
                "frames_expected": sum(expected) if expected and None not in expected else None,
                "hits": hits,
                "events_handled": handled,
                "hit_rate": hits / handled if handled else None,
                "hit_rate_last_minute": _hit_rate(_samples(self.series, 60.0)),
                "min_peaks": self.min_peaks,
                "fps": {
                    "in": _rate(samples[0], last, "ingested") if len(samples) > 1 else 0.0,
                    "written": _rate(samples[0], last, "written") if len(samples) > 1 else 0.0,
                },
                "verdict": {"word": judged.word, "sentence": judged.sentence} if judged else None,
                "latency": {"last_minute": minute, "run": Histogram.from_dict(latency).summary()},
                "newest_frame_age_s": now - newest if newest is not None else None,
            }
        )

    def series_doc(self) -> dict[str, Any]:
        """Per sampling interval of the last SERIES_S: frames/s in and written, the hit rate
        of the events written in it, each queue's fill."""
        samples = _samples(self.series, SERIES_S)
        rows: dict[str, list] = {
            k: [] for k in ("t", "in_fps", "written_fps", "hit_rate", "q1_fill", "q2_fill")
        }
        for a, b in zip(samples, samples[1:]):
            handled = sum(
                b.total(Role.WRITER, k) - a.total(Role.WRITER, k) for k in ("hits", "non_hits")
            )
            rows["t"].append(b.t)
            rows["in_fps"].append(_rate(a, b, "ingested"))
            rows["written_fps"].append(_rate(a, b, "written"))
            dh = b.total(Role.WRITER, "hits") - a.total(Role.WRITER, "hits")
            rows["hit_rate"].append(dh / handled if handled else None)
            rows["q1_fill"].append(_fill(b.queues.get("Q1", {})))
            rows["q2_fill"].append(_fill(b.queues.get("Q2", {})))
        return clean({"min_peaks": self.min_peaks, "window_s": SERIES_S, **rows})

    def peaks_doc(self) -> dict[str, Any]:
        with self._lock:
            v = self.view
        if v is None:
            return {"daq_run": None, "frames": 0, "per_frame": [], "peakogram": None}
        return clean(
            {
                "daq_run": v["daq_run"],
                "frames": v["frames"],
                "hits": v["hits"],
                "peaks": v["peaks"],
                "min_peaks": v["min_peaks"],
                "per_frame": v["per_frame"],  # frames with 0, 1, ... peaks; the last: and more
                "peakogram": {
                    "counts": v["peakogram"],  # [radius bin][log10 intensity bin]
                    "radius_px": [0.0, v["layout"]["radius_max_px"]],
                    "radius_bins": RADIUS_BINS,
                    "log10_intensity": list(LOG_INTENSITY),
                    "intensity_bins": INTENSITY_BINS,
                },
            }
        )

    def powder_doc(self) -> dict[str, Any]:
        with self._lock:
            v = self.view
        if v is None:
            return {"daq_run": None, "peaks": 0, "counts": None}
        return clean(
            {
                "daq_run": v["daq_run"],
                "peaks": v["peaks"],
                "counts": v["powder"],  # [row][col] on the downsampled lab grid
                **v["layout"],
                "image": "/powder.png",
            }
        )

    def health_doc(self) -> dict[str, Any]:
        samples = _samples(self.series, RATE_S)
        last = samples[-1] if samples else None
        judged = live_verdict(self.series) if self.series is not None else None
        queues = {
            name: {
                "depth": q.get("depth"),
                "capacity_items": q.get("capacity_items"),
                "bytes": q.get("bytes"),
                "fill": _fill(q),
                "dead_lettered": q.get("dead_lettered", 0),
            }
            for name, q in (last.queues.items() if last else ())
        }
        restarts = list(getattr(getattr(self.pipeline, "supervisor", None), "restarts", []) or [])
        return clean(
            {
                "state": self.state(),
                "queues": queues,
                "verdict": judged.as_dict() if judged else None,
                "inference": _inference(samples),
                "pool": {
                    k: (last.pool or {}).get(k)
                    for k in ("desired", "running", "starting", "retiring")
                }
                if last
                else {},
                "restarts": len(restarts),
                "restarts_recovered": sum(1 for r in restarts if getattr(r, "recovered", False)),
                "lost": _lost(last),
            }
        )

    def hits_doc(self) -> list[dict[str, Any]]:
        now = self.wall()
        with self._lock:
            hits = list(self.hits)
        return clean(
            [
                {
                    "id": h["id"],
                    "event_id": h["event_id"],
                    "source_id": h["source_id"],
                    "t": h["t"],
                    "age_s": now - h["t"],
                    "daq_run": h["daq_run"],
                    "npeaks": h["npeaks"],
                    "shape": list(h["image"].shape),
                    "image": f"/hits/{h['id']}.png",
                }
                for h in reversed(hits)
            ]
        )

    # -- pictures -------------------------------------------------------------------------------
    def hit_png(self, hit_id: int, lo: float, hi: float, cmap: str, max_side: int) -> bytes | None:
        """The hit's PNG, or None when it is no longer held."""
        with self._lock:
            hit = next((h for h in self.hits if h["id"] == hit_id), None)
        if hit is None:
            return None
        return frame_png(hit["image"], hit["row"], hit["col"], lo, hi, cmap, max_side)

    def powder_png(self, cmap: str) -> bytes | None:
        with self._lock:
            v = self.view
        return None if v is None else counts_png(v["powder"], cmap)


def _hit_rate(samples: Sequence[Sample]) -> float | None:
    """Hits over events handled between the first and last of `samples` (None: none)."""
    if len(samples) < 2:
        return None
    a, b = samples[0], samples[-1]
    hits = b.total(Role.WRITER, "hits") - a.total(Role.WRITER, "hits")
    handled = hits + b.total(Role.WRITER, "non_hits") - a.total(Role.WRITER, "non_hits")
    return hits / handled if handled else None


def _inference(samples: Sequence[Sample]) -> dict[str, Any]:
    """Inference busy over the last samples (fraction of the running actors' time in the
    model), the device, and NVML's utilisation where there is one (mean of the actors')."""
    if not samples:
        return {"busy": None, "device": None, "gpu_util": None, "actors": 0}
    a, b = samples[0], samples[-1]
    now = b.of(Role.INFERENCE)
    running = [x for x in now if x.get("phase") == "running"]
    dt = b.t - a.t
    busy = (
        (b.total(Role.INFERENCE, "busy_s") - a.total(Role.INFERENCE, "busy_s"))
        / (dt * max(1, len(running)))
        if dt > 0
        else None
    )
    utils = [
        x["gpu"]["util"]
        for x in now
        if isinstance(x.get("gpu"), Mapping) and x["gpu"].get("util") is not None
    ]
    devices = sorted({str(x.get("device")) for x in now if x.get("device")})
    return {
        "busy": None if busy is None else min(1.0, max(0.0, busy)),
        "device": ", ".join(devices) or None,
        "gpu_util": sum(utils) / len(utils) if utils else None,
        "actors": len(running),
    }


def _lost(last: Sample | None) -> dict[str, int]:
    """Frames not written so far, by where: writers' failures, frames a sealed Q1 refused,
    batches inference rejected, records dead-lettered by the queues."""
    if last is None:
        return {}
    return {
        "writer_failed": int(last.total(Role.WRITER, "failed")),
        "not_placed": int(last.total(Role.INGEST, "frames_not_placed")),
        "rejected": int(last.total(Role.INFERENCE, "rejected_frames")),
        "dead_lettered": int(sum(q.get("dead_lettered", 0) for q in last.queues.values())),
    }


def query_png(params: Mapping[str, list[str]]) -> tuple[float, float, str, int]:
    """(lo, hi, cmap, max) from a hit image's query (?lo=&hi= percentiles, cmap=, max=);
    raises ValueError for anything else or out of range."""
    allowed = {"lo", "hi", "cmap", "max"}
    if set(params) - allowed or any(len(v) != 1 for v in params.values()):
        raise ValueError(f"parameters: {sorted(allowed)}, each once")
    lo = float(params.get("lo", ["1"])[0])
    hi = float(params.get("hi", ["99.5"])[0])
    cmap = params.get("cmap", ["inferno"])[0]
    side = int(params.get("max", ["1024"])[0])
    if not (0 <= lo < hi <= 100):
        raise ValueError("need 0 <= lo < hi <= 100 (percentiles)")
    if cmap not in CMAPS:
        raise ValueError(f"cmap: one of {list(CMAPS)}")
    if not 16 <= side <= 4096:
        raise ValueError("max: 16 to 4096 pixels")
    return lo, hi, cmap, side
