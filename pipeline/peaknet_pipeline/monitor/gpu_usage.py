"""How busy an inference actor's GPU was, when it sat idle, and whether Q1 was to blame. Pure.

Three sources, each with its own question:

- NVML readings (monitor/gpu.py), taken whenever the actor's stats are read (the driver's
  progress interval, the metrics recorder's second): utilisation, memory used and total.
  `UsageTally` keeps their mean and peaks over the run. NVML's utilisation is the fraction of
  its last sampling period during which any kernel ran: a GPU "92% busy" may still have most
  of its cores idle, but one 10% busy is certainly waiting.
- The runner's own timing of each batch's compute (inference/runners.py): CUDA events on the
  compute stream on a GPU, the host clock on the CPU (so the suite runs the same code).
  `Timeline` turns consecutive (start, end) intervals into idle gaps: the time from one
  batch's compute end to the next one's start, when the device had nothing to do. Gaps
  shorter than `IDLE_GAP_MIN_S` are launch and bookkeeping, not waiting, and are not counted
  (their time is still in `idle_s`).
- The run's time series (monitor/timeseries.py): each sample holds the actor's last reading
  beside Q1's depth, so `q1_correlation` can tell a starved GPU (idle while Q1 was empty:
  ingest is slow) from a saturated one (busy while Q1 held batches: the GPU is the limit)
  and from a badly fed one (idle although Q1 held batches: the host side of inference is).

Samples are read through their attributes (`actors`, `queues`) and the actors' entries as
mappings, so this module depends on nothing but the shape of the stats' `gpu` entry, which
`gpu_stats` makes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Reading = tuple[float, int, int]  # utilisation ratio 0..1, memory used bytes, total bytes

IDLE_GAP_MIN_S = 1e-3  # a shorter gap between two batches' compute is not counted as idle
SATURATED = 0.8  # busy at least this while Q1 held batches: the GPU itself is the limit
UNDERFED = 0.5  # busy less than this while Q1 held batches: the host side does not feed it


@dataclass
class UsageTally:
    """NVML readings of one GPU over a run: count, mean and peak utilisation, peak memory;
    `last` is the newest reading (what the time series samples)."""

    readings: int = 0
    util_sum: float = 0.0
    util_peak: float = 0.0
    memory_peak_bytes: int = 0
    last: Reading | None = None

    def add(self, reading: Reading) -> None:
        util, used, _ = reading
        self.readings += 1
        self.util_sum += util
        self.util_peak = max(self.util_peak, util)
        self.memory_peak_bytes = max(self.memory_peak_bytes, used)
        self.last = reading

    def as_dict(self) -> dict[str, Any]:
        util, used, total = self.last if self.last is not None else (None, None, None)
        mean = self.util_sum / self.readings if self.readings else None
        return {
            "util": util,
            "memory_used_bytes": used,
            "memory_total_bytes": total,
            "readings": self.readings,
            "util_mean": _round(mean),
            "util_peak": self.util_peak if self.readings else None,
            "memory_peak_bytes": self.memory_peak_bytes if self.readings else None,
        }


@dataclass
class Timeline:
    """The device's busy and idle time between batches, from the runner's timing of each
    batch's compute. Gaps of at least `min_gap_s` are counted, with the longest."""

    min_gap_s: float = IDLE_GAP_MIN_S
    batches: int = 0
    busy_s: float = 0.0
    idle_s: float = 0.0
    gaps: int = 0
    longest_gap_s: float = 0.0
    _last_end: float | None = None

    def add(self, busy_s: float, gap_s: float | None) -> None:
        """One batch's compute took `busy_s`, `gap_s` after the previous one's ended (None
        for the first batch: there is no gap before it)."""
        self.batches += 1
        self.busy_s += max(0.0, busy_s)
        if gap_s is None:
            return
        gap = max(0.0, gap_s)  # one stream: a negative gap is clock noise
        self.idle_s += gap
        if gap >= self.min_gap_s:
            self.gaps += 1
            self.longest_gap_s = max(self.longest_gap_s, gap)

    def add_interval(self, start: float, end: float) -> None:
        """One batch's compute from `start` to `end` on one clock (seconds)."""
        gap = start - self._last_end if self._last_end is not None else None
        self.add(end - start, gap)
        self._last_end = end

    def as_dict(self) -> dict[str, Any]:
        span = self.busy_s + self.idle_s
        return {
            "batches_timed": self.batches,
            "device_busy_s": _round(self.busy_s),
            "idle_s": _round(self.idle_s),
            "device_busy": _round(self.busy_s / span) if span > 0 else None,
            "idle_gaps": self.gaps,
            "longest_idle_gap_s": _round(self.longest_gap_s) if self.gaps else None,
            "idle_gap_min_s": self.min_gap_s,
        }


def idle_gaps(
    intervals: Iterable[tuple[float, float]], min_gap_s: float = IDLE_GAP_MIN_S
) -> Timeline:
    """The timeline of consecutive compute intervals (start, end), in issue order."""
    timeline = Timeline(min_gap_s=min_gap_s)
    for start, end in intervals:
        timeline.add_interval(start, end)
    return timeline


def gpu_stats(tally: UsageTally | None, timeline: Timeline | None) -> dict[str, Any]:
    """The `gpu` entry of an inference actor's stats: the newest reading, the run's means
    and peaks so far, and the idle gaps. Keys of a source that is missing are None."""
    readings = (tally or UsageTally()).as_dict()
    if tally is None:
        readings["readings"] = None
    gaps = timeline.as_dict() if timeline is not None else dict.fromkeys(Timeline().as_dict())
    return {**readings, **gaps}


def _util(entry: Mapping[str, Any] | None) -> float | None:
    gpu = entry.get("gpu") if entry else None
    return gpu.get("util") if isinstance(gpu, Mapping) else None


def _q1_depth(sample: Any) -> int | None:
    q1 = getattr(sample, "queues", {}).get("Q1")
    return int(q1["depth"]) if q1 and q1.get("depth") is not None else None


def q1_correlation(samples: Sequence[Any], actor_id: str) -> dict[str, Any]:
    """Utilisation of `actor_id`'s GPU against Q1's depth over `samples`: its mean while Q1
    held batches and while it was empty, and the correlation coefficient of the two series
    (None where a side had no sample, or a series did not vary)."""
    pairs = []
    for sample in samples:
        util, depth = _util(getattr(sample, "actors", {}).get(actor_id)), _q1_depth(sample)
        if util is not None and depth is not None:
            pairs.append((util, depth))
    held = [u for u, d in pairs if d > 0]
    empty = [u for u, d in pairs if d == 0]
    return {
        "samples": len(pairs),
        "samples_q1_held": len(held),
        "samples_q1_empty": len(empty),
        "util_q1_held": _round(_mean(held)),
        "util_q1_empty": _round(_mean(empty)),
        "util_q1_depth_r": _round(_pearson(pairs)),
    }


def diagnosis(c: Mapping[str, Any]) -> str | None:
    """What `q1_correlation`'s figures say, in words; None without samples."""
    held, empty = c.get("util_q1_held"), c.get("util_q1_empty")
    if held is not None and held >= SATURATED:
        return (
            f"saturated: GPU {held:.0%} busy while Q1 held batches: the GPU is the limit "
            "(more inference GPUs, or a cheaper precision)"
        )
    if held is not None and held < UNDERFED:
        return (
            f"underfed: GPU only {held:.0%} busy while Q1 held batches: the host side of "
            "inference (fetching, staging, copying, launching) does not keep it fed"
        )
    if empty is not None and c["samples_q1_empty"] >= c["samples_q1_held"]:
        return (
            f"starved: Q1 was empty in {c['samples_q1_empty']} of {c['samples']} samples "
            f"and the GPU {empty:.0%} busy then: ingest does not keep it fed"
        )
    if held is not None:
        return f"GPU {held:.0%} busy while Q1 held batches"
    return None


def gpu_section(
    samples: Sequence[Any], finals: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any] | None:
    """report.json's `gpu`: per inference actor whose stats carry a `gpu` entry (`finals`:
    actor id -> its last stats), its readings, idle gaps and their relation to Q1 over
    `samples`; None when no actor had a GPU (the CPU path)."""
    section = {}
    for actor_id, stats in finals.items():
        gpu = stats.get("gpu") if stats else None
        if not isinstance(gpu, Mapping):
            continue
        q1 = q1_correlation(samples, actor_id)
        summary = {k: v for k, v in gpu.items() if k not in ("util", "memory_used_bytes")}
        section[actor_id] = {**summary, "vs_q1": q1, "reading": diagnosis(q1)}
    return section or None


def window_busy(samples: Sequence[Any]) -> float | None:
    """Mean GPU utilisation over a window (every actor's reading at the end of each
    interval, as queue fill is averaged), None when no actor had a reading: the verdict's
    `gpu_busy`."""
    utils = [
        u
        for sample in samples[1:]
        for entry in getattr(sample, "actors", {}).values()
        if (u := _util(entry)) is not None
    ]
    return _round(_mean(utils))


def busy_words(busy: float | None) -> str:
    """`GPU 92% busy`, or nothing without a reading."""
    return f"GPU {busy:.0%} busy" if busy is not None else ""


GPU_CAPTION = (
    "per inference actor: NVML's utilisation (the share of time a kernel ran) and memory, read "
    "at every sample; utilisation while Q1 held batches and while it was empty; and the idle "
    "gaps between batches on the device's own clock (CUDA events around each batch's compute)"
)


def gpu_rows(section: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str]]:
    """report.json's `gpu` section in words, one row per actor (report.html)."""
    return [(actor_id, "; ".join(_gpu_words(entry))) for actor_id, entry in section.items()]


def _gpu_words(e: Mapping[str, Any]) -> list[str]:
    words = []
    if e.get("util_mean") is not None:
        words.append(f"{busy_words(e['util_mean'])} on average (peak {e['util_peak']:.0%})")
    if e.get("memory_peak_bytes") is not None and e.get("memory_total_bytes"):
        gb = 1e9
        words.append(
            f"memory peak {e['memory_peak_bytes'] / gb:.1f} of {e['memory_total_bytes'] / gb:.1f} GB"
        )
    q1 = e.get("vs_q1") or {}
    sides = [
        f"{q1[key]:.0%} {when}"
        for key, when in (
            ("util_q1_held", "while Q1 held batches"),
            ("util_q1_empty", "while empty"),
        )
        if q1.get(key) is not None
    ]
    if sides:
        words.append("busy " + ", ".join(sides))
    if e.get("batches_timed"):
        longest = e.get("longest_idle_gap_s")
        words.append(
            f"{e['idle_gaps']} idle gaps of at least {e['idle_gap_min_s'] * 1e3:g} ms between "
            f"{e['batches_timed']} batches"
            + (f", the longest {longest * 1e3:.1f} ms" if longest is not None else "")
        )
    if e.get("device_busy") is not None:
        words.append(f"device busy {e['device_busy']:.0%} from first to last batch")
    if e.get("reading"):
        words.append(e["reading"])
    return words or ["no readings (NVML unavailable)"]


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _pearson(pairs: Sequence[tuple[float, float]]) -> float | None:
    if len(pairs) < 3:
        return None
    mx = sum(x for x, _ in pairs) / len(pairs)
    my = sum(y for _, y in pairs) / len(pairs)
    sxy = sum((x - mx) * (y - my) for x, y in pairs)
    sxx = sum((x - mx) ** 2 for x, _ in pairs)
    syy = sum((y - my) ** 2 for _, y in pairs)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else None


def _round(value: float | None) -> float | None:
    return round(value, 4) if value is not None else None
