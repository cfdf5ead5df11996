"""The figures of report.html, drawn with matplotlib (Agg, no display) as PNG bytes.

Each `*_figure` takes what it draws (time series, CXI facts) and returns a matplotlib Figure;
`png` turns one into bytes. Time is seconds since streaming started. The per-interval numbers
(rates, busy fractions) are pure functions over the samples, tested without drawing.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..placement import Role
from ..stats import FRAMES, FRAMES_KEY
from .cxifacts import FrameWithPeaks
from .timeseries import Sample

WIDTH_IN = 9.0  # at DPI: 900 px, the page's column width
DPI = 100
ROLE_COLOURS = {Role.INGEST: "tab:blue", Role.INFERENCE: "tab:orange", Role.WRITER: "tab:green"}
# What "busy" means per role in the timelines: the counters whose sum is the work done.
BUSY = {
    Role.INGEST: (("source_s", +1), ("receive_s", -1)),  # making frames (not waiting for input)
    Role.INFERENCE: (("busy_s", +1),),  # running the model
    Role.WRITER: (("busy_s", +1),),  # finding peaks and writing
}
# Where each role's time goes, for the stacked bars: (label, counters, colour).
SHARES = {
    Role.INGEST: [
        ("waiting for input", (("receive_s", +1),), "tab:gray"),
        ("making frames", (("source_s", +1), ("receive_s", -1)), "tab:blue"),
        ("put into Q1", (("put_s", +1),), "tab:purple"),
    ],
    Role.INFERENCE: [
        ("running the model", (("busy_s", +1),), "tab:orange"),
        ("blocked on Q2", (("q2_blocked_s", +1),), "tab:red"),
    ],
    Role.WRITER: [("finding peaks, writing", (("busy_s", +1),), "tab:green")],
}


def png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _legend(ax: Any, **kw: Any) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kw)


def _figure(height_in: float, rows: int = 1, cols: int = 1, **kw: Any) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH_IN, height_in), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, **kw)
    return fig, axes


# -- per-interval numbers (pure) -----------------------------------------------------------------
def _value(actor: dict[str, Any], terms: Sequence[tuple[str, int]]) -> float:
    return sum(sign * float(actor.get(key) or 0.0) for key, sign in terms)


def interval_rates(samples: Sequence[Sample], role: Role, key: str) -> tuple[np.ndarray, ...]:
    """(interval midpoints, per-second rate of the role's total `key`) between samples."""
    t = np.array([s.t for s in samples])
    v = np.array([s.total(role, key) for s in samples], dtype=float)
    dt = np.diff(t)
    ok = dt > 0
    return ((t[1:] + t[:-1]) / 2)[ok], (np.diff(v)[ok] / dt[ok])


def lifetime(samples: Sequence[Sample], actor_id: str) -> list[Sample]:
    """The samples an actor is in, up to the first after it finished (finished actors stay
    in later samples with their final counts, which must not dilute their fractions)."""
    seen = []
    for sample in samples:
        actor = sample.actors.get(actor_id)
        if actor is None:
            continue
        seen.append(sample)
        if actor.get("phase") in ("done", "failed"):
            break
    return seen


def _ids(samples: Sequence[Sample], role: Role) -> list[str]:
    return sorted({k for s in samples for k, a in s.actors.items() if a.get("role") == role})


def actor_fractions(
    samples: Sequence[Sample], terms: Sequence[tuple[str, int]], role: Role
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per actor of `role`: (interval midpoints, fraction of each interval spent on `terms`)."""
    out = {}
    for actor_id in _ids(samples, role):
        seen = [(s.t, _value(s.actors[actor_id], terms)) for s in lifetime(samples, actor_id)]
        if len(seen) < 2:
            continue
        t, v = np.array(seen).T
        dt = np.diff(t)
        ok = dt > 0
        out[actor_id] = (((t[1:] + t[:-1]) / 2)[ok], np.clip(np.diff(v)[ok] / dt[ok], 0, 1))
    return out


def actor_shares(samples: Sequence[Sample]) -> list[tuple[str, str, list[tuple[str, float, str]]]]:
    """Per actor over its lifetime: (id, role, [(label, fraction of its time, colour)])."""
    if len(samples) < 2:
        return []
    rows = []
    for role, shares in SHARES.items():
        for actor_id in _ids(samples, role):
            seen = lifetime(samples, actor_id)
            first, last = seen[0].actors[actor_id], seen[-1].actors[actor_id]
            span = _span(seen, first, last)
            if span <= 0:
                continue
            parts = [
                (label, max(0.0, (_value(last, terms) - _value(first, terms)) / span), colour)
                for label, terms, colour in shares
            ]
            rows.append((actor_id, role, parts))
    return rows


def _span(seen: Sequence[Sample], first: dict[str, Any], last: dict[str, Any]) -> float:
    """The time between an actor's first and last counts: its own clock when it keeps one
    (ingest's elapsed_s ends when it ended, not at the next sample), else the samples'."""
    if "elapsed_s" in first and "elapsed_s" in last:
        return float(last["elapsed_s"]) - float(first["elapsed_s"])
    return seen[-1].t - seen[0].t


# -- figures ------------------------------------------------------------------------------------
def queue_figure(samples: Sequence[Sample]) -> Any | None:
    """Depth of every shard of Q1 and Q2 over time, against the per-shard capacity."""
    if len(samples) < 2:
        return None
    fig, axes = _figure(4.2, 2, 1, sharex=True)
    for ax, name in zip(axes[:, 0], ("Q1", "Q2")):
        with_queue = [s for s in samples if name in s.queues]
        if not with_queue:
            continue
        t = [s.t for s in with_queue]
        depths = np.array([s.queues[name].get("shard_depths") or [] for s in with_queue])
        last = with_queue[-1].queues[name]
        cap = last.get("capacity_items", 0)
        shards = depths.shape[1] if depths.ndim == 2 else 0
        for i in range(shards):
            ax.plot(t, depths[:, i], marker=".", label=f"shard {i}")
        if shards:
            ax.axhline(cap / shards, color="k", ls="--", lw=1, label="capacity per shard")
        ax.set_ylabel(f"{name} records")
        ax.set_ylim(bottom=0)
        _legend(ax, loc="upper right", fontsize=8, ncol=min(6, shards + 1))
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("seconds since streaming started")
    return fig


def rates_figure(samples: Sequence[Sample]) -> Any | None:
    if len(samples) < 2:
        return None
    fig, axes = _figure(3.0)
    ax = axes[0, 0]
    for stage, label, style in (
        ("ingested", "ingest (frames in)", "-"),
        ("inferred", "inference (frames out)", "-"),
        ("written", "writers (events)", "--"),  # often on inference's line
    ):
        role = FRAMES[stage]
        t, r = interval_rates(samples, role, FRAMES_KEY)
        ax.plot(t, r, marker=".", ls=style, color=ROLE_COLOURS[role], label=label)
    ax.set_ylabel("per second")
    ax.set_xlabel("seconds since streaming started")
    ax.set_ylim(bottom=0)
    _legend(ax, fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def shares_figure(samples: Sequence[Sample]) -> Any | None:
    """Where each actor's time went over the run: one stacked horizontal bar per actor."""
    rows = actor_shares(samples)
    if len(samples) < 2:
        return None
    fig, axes = _figure(0.9 + 0.35 * max(len(rows), 1))
    ax = axes[0, 0]
    seen: set[str] = set()
    for y, (_id, _role, parts) in enumerate(rows):
        left = 0.0
        for label, frac, colour in parts:
            ax.barh(y, frac, left=left, color=colour, label=None if label in seen else label)
            if frac >= 0.06:
                ax.text(left + frac / 2, y, f"{frac:.0%}", ha="center", va="center", fontsize=8)
            seen.add(label)
            left += frac
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel(
        "fraction of the actor's time (the rest: inference waiting for batches, writers on Q2)"
    )
    if rows:  # below the axes, inside the figure (constrained layout makes room for it)
        fig.legend(fontsize=8, ncol=6, loc="outside lower center")
    return fig


def busy_figure(samples: Sequence[Sample]) -> Any | None:
    """Each actor's busy fraction per interval (BUSY says what busy means per role)."""
    if len(samples) < 2:
        return None
    fig, axes = _figure(3.2)
    ax = axes[0, 0]
    styles = ("-", "--", ":", "-.")
    for role, terms in BUSY.items():
        for i, (actor_id, (t, frac)) in enumerate(actor_fractions(samples, terms, role).items()):
            ax.plot(t, frac, ls=styles[i % 4], color=ROLE_COLOURS[role], label=actor_id)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("busy fraction")
    ax.set_xlabel("seconds since streaming started")
    _legend(ax, fontsize=8, ncol=4)
    ax.grid(alpha=0.3)
    return fig


def store_figure(samples: Sequence[Sample]) -> Any | None:
    sampled = [s for s in samples if s.object_store]
    if not sampled:
        return None
    fig, axes = _figure(2.8)
    ax = axes[0, 0]
    t = [s.t for s in sampled]
    used = [s.object_store["used_bytes"] / 1e6 for s in sampled]
    spilled = [s.object_store["spilled_bytes"] / 1e6 for s in sampled]
    ax.plot(t, used, marker=".", label=f"used (peak {max(used):,.0f} MB)")
    ax.plot(
        t, spilled, marker=".", label=f"spilled since the cluster started ({spilled[-1]:,.0f} MB)"
    )
    cap = sampled[-1].object_store["capacity_bytes"] / 1e6
    top = max(max(used), max(spilled), 1.0)
    if cap <= 4 * top:
        ax.axhline(cap, color="k", ls="--", lw=1, label=f"capacity {cap:,.0f} MB")
    else:  # a large store would flatten the use to the axis: say its size instead
        ax.set_ylim(0, top * 1.3)
        ax.set_title(f"capacity {cap:,.0f} MB (off the scale)", fontsize=9, loc="right")
    ax.set_ylabel("MB")
    ax.set_xlabel("seconds since streaming started")
    ax.set_ylim(bottom=0)
    _legend(ax, fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def hit_rate_figure(samples: Sequence[Sample]) -> Any | None:
    if len(samples) < 2:
        return None
    fig, axes = _figure(2.6)
    ax = axes[0, 0]
    t, events = interval_rates(samples, FRAMES["written"], FRAMES_KEY)
    _, hits = interval_rates(samples, Role.WRITER, "hits")
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(events > 0, hits / np.where(events > 0, events, 1), np.nan)
    ax.plot(t, rate, marker=".", color="tab:green")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("hits / events")
    ax.set_xlabel("seconds since streaming started")
    ax.grid(alpha=0.3)
    return fig


def peaks_histogram(peaks_per_row: np.ndarray, min_peaks: int) -> Any:
    fig, axes = _figure(2.6)
    ax = axes[0, 0]
    top = int(peaks_per_row.max()) if peaks_per_row.size else 1
    ax.hist(peaks_per_row, bins=np.arange(0, top + 2) - 0.5 if top <= 60 else 60)
    ax.axvline(min_peaks - 0.5, color="k", ls="--", lw=1, label=f"hit: >= {min_peaks} peaks")
    ax.set_xlabel("peaks in the row")
    ax.set_ylabel("rows written")
    _legend(ax, fontsize=8)
    return fig


def frames_figure(frames: Sequence[FrameWithPeaks]) -> Any:
    """Up to four frames side by side (two per row), each with its found peaks circled."""
    cols = min(2, len(frames))
    rows = -(-len(frames) // cols)
    aspect = frames[0].image.shape[0] / frames[0].image.shape[1]
    fig, axes = _figure(min(3.6 * rows * aspect + 0.5, 10.0), rows, cols)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, frame in zip(axes.flat, frames):
        low, high = np.percentile(frame.image, [1, 99.5])
        ax.imshow(frame.image, cmap="gray_r", vmin=low, vmax=high, interpolation="nearest")
        ax.scatter(frame.cols, frame.rows, s=60, facecolors="none", edgecolors="tab:red", lw=1)
        ax.set_title(frame.label, fontsize=8)
    return fig


def errors_histogram(errors: np.ndarray, tolerance_px: float) -> Any:
    fig, axes = _figure(2.4)
    ax = axes[0, 0]
    ax.hist(errors, bins=np.linspace(0, tolerance_px, 16))
    ax.set_xlabel("distance from an injected peak to the nearest found one (px)")
    ax.set_ylabel("recovered peaks")
    return fig
