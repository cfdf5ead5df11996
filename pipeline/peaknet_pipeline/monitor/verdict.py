"""The verdict: is inference fed, and if not, which stage holds it back? One word and a
sentence with its evidence, from a window of time-series samples.

Pure: `figures` turns a window into rates and time fractions (differences between the
window's first and last samples, queue fill averaged over its samples), `judge` turns those
into a `Verdict`. The same function serves the live display (`live_verdict`: the last
`LIVE_WINDOW_S`) and the report (`run_verdict`: the streaming window, `streaming_window`).

Only streaming is judged: start-up (before inference put out its first frame: the sender
not yet connected, the first batch's warm-up) and the idle tail after ingest's last frame (a
socket source waiting `idle_timeout_s` for more) say nothing about how the stages keep up,
and a few seconds of them outweigh a short run. A window shorter than `MIN_SPAN_S`,
`MIN_INTERVALS` sampling intervals or `MIN_BATCHES` inference batches' time is `too-short`
rather than a guess: counters move a batch at a time, so over a few batches one batch in
flight swings every fraction by its share, and one interval gives Q1's fill from one sample.

The words, in the order they are tested (the first that applies wins, because each one
explains the ones below it: a spilling store slows every stage; a full Q2 blocks inference,
which then fills Q1):

- `spilling`: the object store wrote objects to disk during the window (a fact at any span).
- `too-short`: the window is too short to judge; its figures are still the evidence.
- `writer-bound`: Q2 stayed near full, so the writers are the bottleneck.
- `backlogged`: Q1 stayed near full, or ingest delivered at least what inference can take at
  most (Q1 is filling), so inference is the bottleneck; says how much more inference capacity
  would keep up with what ingest could deliver, capped by what the machine holds (`Room`),
  and that on the CPU this is expected.
- `starved`: inference waited on Q1 while ingest was running, Q1 was not near full and ingest
  delivered less than inference can take, so ingest is the slower side; says whether ingest
  waits for input (receive-bound), spends its time making frames (decode-bound: decoding
  messages, generating or reading frames) or putting them into Q1 (put-bound).
- `ok`: none of these.

A side is named the slower one only when the rates in the evidence agree: ingest's delivered
rate (`ingest_fps`) is compared with what inference can take at most
(`inference_capacity_fps`, its frames per busy second).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..placement import Role
from .advice import Room, inference_room, more_inference, on_the_cpu
from .gpu_usage import busy_words, window_busy
from .timeseries import Sample, TimeSeries

__all__ = ["LIVE_WINDOW_S", "MIN_INTERVALS", "MIN_SPAN_S", "WORDS", "Figures", "Room", "Verdict"]
__all__ += ["figures", "inference_room", "judge", "live_verdict", "run_verdict"]
__all__ += ["streaming_window", "verdict"]

WORDS = ("ok", "starved", "backlogged", "writer-bound", "spilling", "too-short")
NEAR_FULL = 0.7  # a queue whose mean fill over the window is at least this "stays near full"
WAITING = 0.3  # inference waiting on Q1 for at least this fraction of its time is starved
LIVE_WINDOW_S = 20.0  # the live display judges the last this many seconds
MIN_SPAN_S = 1.5  # a shorter window is too short to judge
MIN_INTERVALS = 2  # and so is one of fewer sampling intervals
MIN_BATCHES = 10  # or one shorter than this many inference batches take
MB = 1e6


@dataclass(frozen=True)
class Verdict:
    word: str  # one of WORDS
    sentence: str  # what holds the pipeline back, with the numbers that show it
    evidence: dict[str, Any]  # the figures behind it (see `Figures`)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Figures:
    """What a window of samples shows. Rates are frames (events for writers) per second;
    fractions are of the stage's wall time summed over its actors."""

    span_s: float
    intervals: int  # sampling intervals in the window
    inference_batch_s: float | None  # an inference actor's busy time per batch
    ingest_running: bool  # some ingest actor was running at the start of every interval
    actors: dict[Role, float]  # role -> actors at work, averaged over the window
    ingest_fps: float
    inference_fps: float
    writer_fps: float
    ingest_capacity_fps: float | None  # what ingest could deliver if Q1 never blocked it
    inference_capacity_fps: float | None  # what inference could do if it never waited
    receive: float  # ingest: waiting for input (socket inbox empty, rate_hz pacing)
    decode: float  # ingest: decoding, generating or reading frames
    put: float  # ingest: putting batches into Q1 (and waiting while it is full)
    inference_busy: float  # inference compute loop: running the model
    inference_blocked: float  # inference compute loop: putting results into a full Q2
    inference_waiting: float  # the rest of inference's time: waiting for batches
    fetch: float  # inference prefetch: materialising images from the object store
    writer_busy: float
    q1_fill: float  # mean over the samples of max(depth / items, bytes / bytes capacity)
    q2_fill: float
    spilled_bytes: int  # spilled to disk during the window
    store_used_max: int | None
    store_capacity: int | None
    device: str  # the inference actors' device ("cpu", "cuda:0", ...)
    gpu_busy: float | None = None  # NVML's utilisation, mean over the window; None on the CPU


def figures(window: Sequence[Sample]) -> Figures | None:
    """The window's figures, or None when it spans no time (fewer than two samples)."""
    if len(window) < 2 or window[-1].t <= window[0].t:
        return None
    first, last = window[0], window[-1]
    span = last.t - first.t

    def delta(role: Role, key: str) -> float:
        return max(0.0, last.total(role, key) - first.total(role, key))

    actors = {role: _mean_running(window, role) for role in Role}
    ingest_t = span * max(actors[Role.INGEST], 1e-9)
    inference_t = span * max(actors[Role.INFERENCE], 1e-9)
    source, receive = delta(Role.INGEST, "source_s"), delta(Role.INGEST, "receive_s")
    busy = delta(Role.INFERENCE, "busy_s")
    blocked = delta(Role.INFERENCE, "q2_blocked_s")
    before, after = first.frames(), last.frames()
    done = {stage: max(0, after[stage] - before[stage]) for stage in after}
    frames_in, frames_out = done["ingested"], done["inferred"]
    batches = delta(Role.INFERENCE, "batches_out")
    used = [s.object_store["used_bytes"] for s in window if s.object_store]
    return Figures(
        span_s=span,
        intervals=len(window) - 1,
        inference_batch_s=busy / batches if batches > 0 else None,
        ingest_running=all(_running(s, Role.INGEST) for s in window[:-1]),
        actors=actors,
        ingest_fps=frames_in / span,
        inference_fps=frames_out / span,
        writer_fps=done["written"] / span,
        ingest_capacity_fps=frames_in / source * actors[Role.INGEST] if source > 0 else None,
        inference_capacity_fps=frames_out / busy * actors[Role.INFERENCE] if busy > 0 else None,
        receive=_frac(receive, ingest_t),
        decode=_frac(source - receive, ingest_t),
        put=_frac(delta(Role.INGEST, "put_s"), ingest_t),
        inference_busy=_frac(busy, inference_t),
        inference_blocked=_frac(blocked, inference_t),
        inference_waiting=max(0.0, 1.0 - _frac(busy + blocked, inference_t)),
        fetch=_frac(delta(Role.INFERENCE, "fetch_s"), inference_t),
        writer_busy=_frac(delta(Role.WRITER, "busy_s"), span * max(actors[Role.WRITER], 1e-9)),
        q1_fill=_mean_fill(window, "Q1"),
        q2_fill=_mean_fill(window, "Q2"),
        spilled_bytes=_spilled(first, last),
        store_used_max=max(used) if used else None,
        store_capacity=last.object_store["capacity_bytes"] if last.object_store else None,
        device=_device(last),
        gpu_busy=window_busy(window),
    )


def judge(f: Figures, room: Room | None = None) -> Verdict:
    """The first word that applies (see the module docstring), with its sentence; `room`
    caps the advice on inference actors (None: no cap known)."""
    evidence = _rounded(asdict(f))
    if f.spilled_bytes > 0:
        return Verdict("spilling", _spilling(f), evidence)
    if f.span_s < _min_span(f) or f.intervals < MIN_INTERVALS:
        return Verdict("too-short", _too_short(f), evidence)
    if f.q2_fill >= NEAR_FULL:
        return Verdict("writer-bound", _writer_bound(f), evidence)
    if f.q1_fill >= NEAR_FULL:
        return Verdict("backlogged", _backlogged(f, room), evidence)
    if f.ingest_running and f.inference_waiting >= WAITING:
        if _ingest_keeps_up(f):
            return Verdict("backlogged", _backlogged(f, room), evidence)
        return Verdict("starved", _starved(f), evidence)
    return Verdict("ok", _ok(f), evidence)


def verdict(window: Sequence[Sample], room: Room | None = None) -> Verdict | None:
    """The verdict on a window of samples, or None when it spans no time."""
    f = figures(window)
    return judge(f, room) if f is not None else None


def live_verdict(series: TimeSeries) -> Verdict | None:
    """The live display's verdict: the last `LIVE_WINDOW_S`, start-up left out."""
    return verdict(_after_startup(series.window(LIVE_WINDOW_S)), series.room)


def streaming_window(series: TimeSeries) -> list[Sample]:
    """The samples a whole run is judged on: from the first sample with a frame out of
    inference (start-up left out) to the first at which ingest had taken in its last frame
    (the idle tail left out: a socket source waiting for more), and never past the first
    sample without a running ingest actor (the drain: inference idle, queues emptying). A
    source that never delivered a frame is judged over all of its wait. At least two samples
    when the series has them, so a short run still shows its figures (as too short)."""
    window = []
    for sample in series.samples:
        window.append(sample)
        if not _running(sample, Role.INGEST):
            break
    if len(window) < 2:
        return window
    frames = [s.frames()["ingested"] for s in window]
    end = next(i for i, n in enumerate(frames) if n >= frames[-1])
    if frames[end] <= frames[0]:  # nothing arrived: the wait itself is the story
        end = len(window) - 1
    return _after_startup(window[: max(end, 1) + 1])


def run_verdict(series: TimeSeries) -> Verdict | None:
    """The verdict on a whole run (report.json, report.html)."""
    return verdict(streaming_window(series), series.room)


def _after_startup(window: Sequence[Sample]) -> list[Sample]:
    """`window` from its first sample with a frame out of inference, when none had come out
    before it (start-up is in the window); at least its last two samples."""
    out = [s.frames()["inferred"] for s in window]
    if len(window) < 2 or out[0] > 0:
        return list(window)
    first = next((i for i, n in enumerate(out) if n > 0), 0)
    return list(window[min(first, len(window) - 2) :])


def _min_span(f: Figures) -> float:
    """The shortest window judged: `MIN_SPAN_S`, and `MIN_BATCHES` batches' time."""
    return max(MIN_SPAN_S, MIN_BATCHES * (f.inference_batch_s or 0.0))


def _ingest_keeps_up(f: Figures) -> bool:
    """Ingest delivered at least what inference can take at most: inference's waiting is
    not ingest's doing (start-up, its own fetching), and Q1 is filling."""
    return f.inference_capacity_fps is not None and f.ingest_fps >= f.inference_capacity_fps


# -- sentences ------------------------------------------------------------------------------
def _spilling(f: Figures) -> str:
    use = ""
    if f.store_used_max is not None and f.store_capacity:
        use = f" (use peaked at {_mb(f.store_used_max)} of {_mb(f.store_capacity)})"
    return (
        f"the object store spilled {_mb(f.spilled_bytes)} to disk in {f.span_s:.0f} s{use}: "
        "the data in flight does not fit in it. Lower queue.q1/q2.capacity_bytes or "
        "writer.max_pending_batches, or give Ray a larger store (ray.object_store_memory_bytes)"
    )


def _too_short(f: Figures) -> str:
    intervals = f"{f.intervals} sampling interval{'s' if f.intervals != 1 else ''}"
    batches = ""
    if _min_span(f) > MIN_SPAN_S:
        batches = f", {MIN_BATCHES} inference batches' time"
    return (
        f"too short to judge: {f.span_s:.1f} s of streaming in {intervals}, and the verdict "
        f"needs at least {_min_span(f):.1f} s ({MIN_SPAN_S:g} s{batches}) and {MIN_INTERVALS} "
        "intervals (stream longer, or sample more often: monitor.progress_interval_s); over "
        f"it ingest did {f.ingest_fps:.1f} and inference {f.inference_fps:.1f} frames/s"
    )


def _writer_bound(f: Figures) -> str:
    return (
        f"Q2 stayed {f.q2_fill:.0%} full: the writers are the bottleneck "
        f"({f.writer_fps:.1f} events/s, busy {f.writer_busy:.0%} of their time) and inference "
        f"is blocked on Q2 {f.inference_blocked:.0%} of its time. Add writers "
        "(writer.num_actors) or make writing cheaper (writer.compression, writer.images)"
    )


def _backlogged(f: Figures, room: Room | None) -> str:
    if f.q1_fill >= NEAR_FULL:
        head = (
            f"Q1 stayed {f.q1_fill:.0%} full: inference is the bottleneck "
            f"({f.inference_fps:.1f} frames/s, busy {f.inference_busy:.0%} on {_on(f)})"
        )
    else:  # ingest keeps up (_ingest_keeps_up): Q1 fills, although inference also waited
        head = (
            f"inference is the slower side: ingest delivered {f.ingest_fps:.1f} frames/s and "
            f"inference can take at most {f.inference_capacity_fps:.1f} frames/s (busy "
            f"{f.inference_busy:.0%} on {_on(f)}), so Q1 is filling ({f.q1_fill:.0%} full "
            f"on average); inference also waited {f.inference_waiting:.0%} of its time, not "
            f"on ingest (its own fetching took {f.fetch:.0%})"
        )
    per_busy_s = f.inference_capacity_fps or f.inference_fps
    actors = max(1, round(f.actors[Role.INFERENCE]))
    return (
        head
        + more_inference(actors, f.ingest_capacity_fps, per_busy_s, room)
        + on_the_cpu(f.device)
    )


def _starved(f: Figures) -> str:
    can_take = ""
    if f.inference_capacity_fps is not None:
        can_take = f" where inference could take {f.inference_capacity_fps:.1f}"
    making = ""
    if f.ingest_capacity_fps and f.ingest_capacity_fps > f.ingest_fps * 1.05:
        making = (
            f" (making frames alone it could deliver {f.ingest_capacity_fps:.1f} frames/s; "
            f"putting them into Q1 takes {f.put:.0%} of its time)"
        )
    head = (
        f"inference waited for batches {f.inference_waiting:.0%} of its time "
        f"(busy {f.inference_busy:.0%} on {_on(f)}, Q1 {f.q1_fill:.0%} full): ingest is the "
        f"slower side: it delivered {f.ingest_fps:.1f} frames/s{can_take}{making}, and is "
    )
    bound = max(("receive", f.receive), ("decode", f.decode), ("put", f.put), key=lambda x: x[1])
    if bound[0] == "receive":
        return head + (
            f"receive-bound, waiting for input {f.receive:.0%} of its time: the sender (or "
            "source.*.rate_hz) sets the pace; more ingest actors help only if it has more to give"
        )
    if bound[0] == "decode":
        return head + (
            f"decode-bound, making frames (decoding, generating or reading) {f.decode:.0%} of "
            "its time: add ingest actors (more socket addresses or streamer ranks, "
            "source.random.num_actors)"
        )
    return head + (
        f"put-bound, putting batches into Q1 {f.put:.0%} of its time: send larger batches, "
        "or give Q1 more shards (queue.q1.num_shards)"
    )


def _ok(f: Figures) -> str:
    if not f.ingest_running:
        return "ingest has ended; the pipeline is draining what it accepted"
    return (
        f"inference busy {f.inference_busy:.0%} on {_on(f)} at {f.inference_fps:.1f} "
        f"frames/s; Q1 {f.q1_fill:.0%} and Q2 {f.q2_fill:.0%} full; nothing spilled: no stage "
        "holds inference back"
    )


# -- helpers --------------------------------------------------------------------------------
WORKING = ("running", "retiring")


def _running(sample: Sample, role: Role) -> bool:
    return any(a.get("phase") in WORKING for a in sample.of(role))


def _working(sample: Sample, role: Role) -> set[str]:
    return {
        k for k, a in sample.actors.items() if a.get("role") == role and a.get("phase") in WORKING
    }


def _mean_running(window: Sequence[Sample], role: Role) -> float:
    """Actors of `role` at work, averaged over the window weighted by time (the pool may
    change size); an actor counts for an interval when it was working at either end."""
    spans = [(b.t - a.t, len(_working(a, role) | _working(b, role))) for a, b in _pairs(window)]
    total = sum(dt for dt, _ in spans)
    return sum(dt * n for dt, n in spans) / total if total > 0 else 0.0


def _pairs(window: Sequence[Sample]) -> list[tuple[Sample, Sample]]:
    return list(zip(window[:-1], window[1:]))


def _fill(queue: dict[str, Any]) -> float:
    items = queue["depth"] / max(queue.get("capacity_items") or 1, 1)
    nbytes = queue.get("bytes", 0) / max(queue.get("capacity_bytes") or 1, 1)
    return max(items, nbytes)


def _mean_fill(window: Sequence[Sample], name: str) -> float:
    """Mean fill at the end of each interval (the first sample only starts the first one: at
    the start of a run it is the empty queue, not what the run was like)."""
    fills = [_fill(s.queues[name]) for s in window[1:] if name in s.queues]
    return sum(fills) / len(fills) if fills else 0.0


def _spilled(first: Sample, last: Sample) -> int:
    if not last.object_store:
        return 0
    before = first.object_store["spilled_bytes"] if first.object_store else 0
    return max(0, int(last.object_store["spilled_bytes"] - before))


def _on(f: Figures) -> str:
    """The device inference ran on, with how busy NVML saw the GPU: `cuda:0 (GPU 92% busy)`."""
    return f"{f.device} ({busy_words(f.gpu_busy)})" if f.gpu_busy is not None else f.device


def _device(sample: Sample) -> str:
    devices = sorted({str(a["device"]) for a in sample.of(Role.INFERENCE) if a.get("device")})
    return ", ".join(devices) or "cpu"


def _frac(part: float, whole: float) -> float:
    return min(1.0, part / whole) if whole > 0 else 0.0


def _mb(n: float) -> str:
    return f"{n / MB:,.0f} MB"


def _rounded(d: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (round(v, 3) if isinstance(v, float) else _rounded(v) if isinstance(v, dict) else v)
        for k, v in d.items()
    }
