"""The object-store budget: how many bytes a config can hold in Ray's object store at once.

Frames travel between stages as ObjectRefs. A batch's pixels enter the object store when a Q1
shard accepts the batch and leave it when the writer that wrote its events drops the Result;
every place that holds them meanwhile is bounded by a setting, so the most a run can hold is a
sum of those bounds. The driver checks the sum against the store before Ray starts when the
store's size is known then (ray.object_store_memory_bytes, or Ray's default for this machine),
and again against the store Ray reports (over budget: exit code 2, with advice that holds:
peaknet_pipeline.budget_advice); the operator sizes each pod's store from the same terms
(peaknet_operator.sizing). docs/tuning.md explains how to use it; its formula block is
`formula_lines()` and its worked example `explain()`, by test.

Notation (all from the pipeline config):

    b    bytes of one Q1 batch: frames per batch x bytes per frame (`batch_bytes`)
    m    bytes of one batch's output: B x C x H x W x 1 for masks, x num_classes x 4 for logits
    r    b + m: what one Result keeps alive (its output and its input frames); Q2 counts r
    records(q, N, x)   most records of x bytes queue q holds on its N shards:
             sum over the shards s of min(items_s, max(1, bytes_s // x)), where items_s and
             bytes_s are the shard's share of capacity_items and capacity_bytes (a shard takes
             a record while its bytes fit, and always takes one when it is empty)
    N1, N2 Q1 and Q2 shards (queue.<q>.num_shards, else derived from the actor counts)
    I    inference.max_actors (else num_actors): the largest pool the queues are sized for
    D    inference.buffer_depth;   w  puts one producer keeps in flight (2)
    W    writer.num_actors;   P  writer.max_pending_batches
    B    frames per batch;   E  writer.events_per_file;   U  writer.max_uncommitted_bytes

    Q1               records(q1, N1, b) x b
    inference        I x (D + N1 + w + 1) x b
                       D staging slots, plus batches taken from Q1 and waiting for a slot (a
                       prefetch asks for the free slots split over the shards, at least one,
                       and a wait answered by several shards brings that many from each: at
                       most N1 beyond the slots), plus the inputs of the w + 1 Results on
                       their way into Q2
    Q2               records(q2, N2, r) x r
    writer prefetch  W x (P + N2 - 1) x r
                       fetched and not yet written (a wait answered by several shards at once
                       brings up to N2 - 1 more than P)
    writer uncommitted  W x min(U + r, (ceil(E / B) + 1) x r)
                       written and not yet committed: a writer holds each Result under its
                       lease until a closed file commits it (a file of E events; it closes
                       early once it holds more than U)
    copies           only on a cluster of several nodes: a consumer on another node pulls a
                       copy into its own store: I x (D + 1) x b + W x (P + N2 - 1) x r

    in flight = the sum of the terms;  it fits when in flight <= fraction x store, where
    fraction is ray.object_store_budget_fraction and store the object store's size (embedded:
    ray.object_store_memory_bytes or Ray's default; a cluster: the total Ray reports).

Not in the store, so not counted: payloads a producer holds while its put waits for room (the
queue fetches a payload only once it has room for it: that is the ingest actors' memory) and
the socket source's receive inbox (raw messages, also in the ingest actor's memory).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from .config import PipelineConfig, QueueConfig, SocketSourceConfig

MiB = 1 << 20
GiB = 1 << 30
MAX_DERIVED_SHARDS = 16
# Puts one producer keeps in flight unless told otherwise (QueueProducer's window). Here, not
# in the queue package, so that the operator, which has no Ray, needs none of that package.
DEFAULT_WINDOW = 2
DEFAULT_FRAME_BYTES = 4 * MiB  # a socket/replay frame of unknown shape (a 1 Mpixel float32)
# Frames in one LCLStreamer message: source.socket.frames_per_message's default.
DEFAULT_FRAMES_PER_MESSAGE = SocketSourceConfig.model_fields["frames_per_message"].default
RAY_MIN_OBJECT_STORE_BYTES = 75 * MiB
# Where to lower a term, for messages.
TERM_SETTINGS = {
    "Q1": "queue.q1.capacity_items / capacity_bytes",
    "inference": "inference.buffer_depth, inference.max_actors",
    "Q2": "queue.q2.capacity_items / capacity_bytes",
    "writer prefetch": "writer.max_pending_batches, writer.num_actors",
    "writer uncommitted": "writer.events_per_file, writer.max_uncommitted_bytes",
    "copies": "the actors' buffers on other nodes",
}
# The setting each source's frames per batch come from (a knob of the advice, too).
FRAMES_SETTING = {
    "random": "source.random.batch_size",
    "replay": "source.replay.batch_size",
    "socket": "source.socket.frames_per_message",
}


def derived_shards(configured: int | None, producers: int, consumers: int, capacity: int) -> int:
    """Shard count: as configured, else one per actor on the busier side (capped, and never
    more shards than the queue's capacity in records, which is split among them)."""
    derived = max(1, min(max(producers, consumers), MAX_DERIVED_SHARDS, capacity))
    return configured or derived


@dataclass(frozen=True)
class BatchBytes:
    """The size of one batch, and what was assumed to get it (empty: nothing)."""

    frames: int  # frames per batch
    frame_bytes: int  # bytes of one input frame
    pixels: int  # pixels of one frame (C x H x W)
    output_bytes_per_pixel: int  # 1 for masks, num_classes x 4 for logits
    assumed: str = ""
    frames_setting: str = ""  # the setting `frames` comes from (empty: given by the caller)

    @property
    def images(self) -> int:
        """b: the bytes of one batch's frames."""
        return self.frames * self.frame_bytes

    @property
    def outputs(self) -> int:
        """m: the bytes of one batch's output."""
        return self.frames * self.pixels * self.output_bytes_per_pixel

    @property
    def result(self) -> int:
        """r: the bytes one Result keeps alive."""
        return self.images + self.outputs

    def describe(self) -> str:
        """`8 frames of 8.25 MiB (source.socket.frames_per_message=8)`, and any assumption."""
        text = f"{self.frames} frames of {format_bytes(self.frame_bytes)}"
        if self.frames_setting:
            text += f" ({self.frames_setting}={self.frames})"
        return text + (f"; assumed {self.assumed}" if self.assumed else "")


def batch_bytes(
    cfg: PipelineConfig,
    frame: tuple[int, int] | None = None,
    frames_per_message: int | None = None,
    assumed_frame_bytes: int = DEFAULT_FRAME_BYTES,
) -> BatchBytes:
    """One batch's size. random: from its config. replay: `frame` (pixels, bytes per pixel,
    read from the files) or inference.frame_shape in float32. socket: inference.frame_shape
    in source.socket.dtype, source.socket.frames_per_message frames a batch (the socket
    source splits longer messages), or `frames_per_message` when given (the operator's
    sizing policy). A frame size that is not known is assumed (`assumed_frame_bytes`) and
    said so."""
    src, shape = cfg.source, cfg.inference.frame_shape
    out = cfg.model.num_classes * 4 if cfg.inference.output == "logits" else 1
    setting = FRAMES_SETTING[src.kind]
    if src.kind == "random":
        pixels = int(np.prod(src.random.frame_shape))
        itemsize = np.dtype(src.random.dtype).itemsize
        return BatchBytes(src.random.batch_size, pixels * itemsize, pixels, out, "", setting)
    assumed = ""
    if src.kind == "replay":
        frames = src.replay.batch_size
        itemsize = 4
    else:
        itemsize = np.dtype(src.socket.dtype).itemsize
        frames = frames_per_message or src.socket.frames_per_message
        setting = "" if frames_per_message else setting
    if frame is not None:
        pixels, itemsize = frame
    elif shape is not None:
        pixels = int(np.prod(shape))
    else:
        pixels = assumed_frame_bytes // itemsize
        assumed = f"{format_bytes(assumed_frame_bytes)} frames (inference.frame_shape unset)"
    return BatchBytes(frames, pixels * itemsize, pixels, out, assumed, setting)


def _share(total: int, parts: int, index: int) -> int:
    return total // parts + (1 if index < total % parts else 0)


def queue_records(qcfg: QueueConfig, shards: int, record_bytes: int) -> int:
    """Most records of `record_bytes` the queue holds at once over its `shards` shards."""
    total = 0
    for s in range(shards):
        items = _share(qcfg.capacity_items, shards, s)
        by_bytes = _share(qcfg.capacity_bytes, shards, s) // max(1, record_bytes)
        total += min(items, max(1, by_bytes))
    return total


def inference_batches_held(cfg: PipelineConfig, q1_shards: int) -> int:
    """Most batches one inference actor keeps alive: D + N1 + w + 1."""
    return cfg.inference.buffer_depth + q1_shards + DEFAULT_WINDOW + 1


def blocked_calls_bound(producers: int, consumers: int) -> int:
    """Most puts/gets that can wait on one shard at once: a consumer waits with one get per
    shard, a producer with its window of puts plus the one waiting for the oldest."""
    return consumers + producers * (DEFAULT_WINDOW + 1)


def writer_results_held(cfg: PipelineConfig, q2_shards: int) -> int:
    """Most Results one writer has fetched and not yet written: P + N2 - 1."""
    return cfg.writer.max_pending_batches + q2_shards - 1


def writer_uncommitted_bytes(cfg: PipelineConfig, batch: BatchBytes) -> int:
    """Most bytes one writer holds written but not yet committed (see the module docstring)."""
    r, w = batch.result, cfg.writer
    per_file = (math.ceil(w.events_per_file / batch.frames) + 1) * r
    return min(w.max_uncommitted_bytes + r, per_file)


def queue_shards(cfg: PipelineConfig) -> tuple[int, int]:
    """(N1, N2): the shards the driver creates for Q1 and Q2."""
    from .sources import source_ids

    sources, limit = len(source_ids(cfg)), cfg.inference.pool_limit
    q1, q2 = cfg.queue.q1, cfg.queue.q2
    return (
        derived_shards(q1.num_shards, sources, limit, q1.capacity_items),
        derived_shards(q2.num_shards, limit, cfg.writer.num_actors, q2.capacity_items),
    )


@dataclass(frozen=True)
class InFlight:
    """The bytes a run can hold in the object store, by term (the module docstring's)."""

    batch: BatchBytes
    terms: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.terms.values())

    def describe(self) -> str:
        parts = ", ".join(f"{k} {format_bytes(v)}" for k, v in self.terms.items() if v)
        return f"{format_bytes(self.total)} ({parts})"


def in_flight(cfg: PipelineConfig, batch: BatchBytes, remote_copies: bool = False) -> InFlight:
    """The terms of the formula for this config; with `remote_copies` (several nodes) also
    the copies consumers pull onto their own nodes."""
    n1, n2 = queue_shards(cfg)
    b, r = batch.images, batch.result
    actors, writers = cfg.inference.pool_limit, cfg.writer.num_actors
    held_w = writers * writer_results_held(cfg, n2)
    terms = {
        "Q1": queue_records(cfg.queue.q1, n1, b) * b,
        "inference": actors * inference_batches_held(cfg, n1) * b,
        "Q2": queue_records(cfg.queue.q2, n2, r) * r,
        "writer prefetch": held_w * r,
        "writer uncommitted": writers * writer_uncommitted_bytes(cfg, batch),
    }
    if remote_copies:
        terms["copies"] = actors * (cfg.inference.buffer_depth + 1) * b + held_w * r
    return InFlight(batch, terms)


def budget_bytes(cfg: PipelineConfig, store_bytes: int) -> int:
    return int(store_bytes * cfg.ray.object_store_budget_fraction)


def store_needed(cfg: PipelineConfig, total: int) -> int:
    """The smallest store (whole MiB, at least Ray's minimum) whose budget holds `total`."""
    need = math.ceil(total / cfg.ray.object_store_budget_fraction / MiB) * MiB
    return max(need, RAY_MIN_OBJECT_STORE_BYTES)


# The terms of in_flight, in the notation of the module docstring: docs/tuning.md shows
# formula_lines(), and explain() fills these same formulas in with a config's values.
FORMULAS = {
    "Q1": "records(q1, N1, b) x b",
    "inference": "I x (D + N1 + w + 1) x b",
    "Q2": "records(q2, N2, r) x r",
    "writer prefetch": "W x (P + N2 - 1) x r",
    "writer uncommitted": "W x min(U + r, (ceil(E / B) + 1) x r)",
    "copies": "I x (D + 1) x b + W x (P + N2 - 1) x r",
}
_NAME_WIDTH = 20


def formula_lines() -> list[str]:
    """The formula as docs/tuning.md shows it (tests/unit/test_tuning_doc.py)."""
    terms = [f"{name:<{_NAME_WIDTH}}{formula}" for name, formula in FORMULAS.items()]
    terms[-1] += "    (only with several nodes)"
    summed = " + ".join(name for name in FORMULAS if name != "copies")
    return [
        "records(q, N, x) = sum over the N shards s of min(items_s, max(1, bytes_s // x))",
        "    (items_s, bytes_s: the shard's share of capacity_items and capacity_bytes)",
        "",
        *terms,
        "",
        f"fits when  {summed} (+ copies)",
        "              <=  ray.object_store_budget_fraction x store",
    ]


def explain(cfg: PipelineConfig, flight: InFlight) -> list[str]:
    """`flight`'s terms with FORMULAS filled in, one line each, and the store it needs (what
    `peaknet-pipeline config budget` prints; docs/tuning.md's worked example)."""

    batch = flight.batch
    n1, n2 = queue_shards(cfg)
    mib = lambda n: f"{n / MiB:g} MiB"  # noqa: E731 - exact enough to recompute the lines
    values = {
        "records(q1, N1, b)": str(queue_records(cfg.queue.q1, n1, batch.images)),
        "records(q2, N2, r)": str(queue_records(cfg.queue.q2, n2, batch.result)),
        "I": str(cfg.inference.pool_limit),
        "D": str(cfg.inference.buffer_depth),
        "N1": str(n1),
        "N2": str(n2),
        "w": str(DEFAULT_WINDOW),
        "W": str(cfg.writer.num_actors),
        "P": str(cfg.writer.max_pending_batches),
        "U": mib(cfg.writer.max_uncommitted_bytes),
        "E": str(cfg.writer.events_per_file),
        "B": str(batch.frames),
        "b": mib(batch.images),
        "r": mib(batch.result),
    }
    token = re.compile(r"records\([^)]*\)|\b[A-Za-z]\w*\b")
    lines = [
        f"b = {batch.frames} x {mib(batch.frame_bytes)} = {mib(batch.images)}    "
        f"m = {batch.frames} x {batch.pixels} x {batch.output_bytes_per_pixel} B = "
        f"{mib(batch.outputs)}    r = {mib(batch.result)}",
        "    ".join(f"{k} = {values[k]}" for k in ("N1", "N2", "I", "D", "w", "W", "P", "E", "U")),
    ]
    for name, value in flight.terms.items():
        filled = token.sub(lambda t: values.get(t.group(0), t.group(0)), FORMULAS[name])
        lines.append(f"{name:<{_NAME_WIDTH}}{filled} = {mib(value)}")
    fraction = cfg.ray.object_store_budget_fraction
    lines.append(
        f"total {format_bytes(flight.total)}: at ray.object_store_budget_fraction={fraction:g} "
        f"the store must hold at least {format_bytes(store_needed(cfg, flight.total))}"
    )
    if batch.assumed:
        lines.append(f"(assumed {batch.assumed})")
    return lines


def config_section(cfg: PipelineConfig, dotted: str):
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def format_bytes(n: int) -> str:
    """1.5 GiB, 320 MiB, 12 KiB: binary units, three significant digits at most."""
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", 1 << 10)):
        if n >= size:
            value = n / size
            return f"{value:.3g} {unit}" if value < 1000 else f"{value:.0f} {unit}"
    return f"{n} B"
