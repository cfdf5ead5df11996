"""Object-store size of each pod role, from where the bytes of a run live.

Where bytes live (../shared/reference/ray-notes.md): a Q1 payload is the return value of the
ingest actor that produced it, so it sits in that ingest pod's object store, and stays there
until the writer has finished with the Result that keeps its image ref. An inference actor's
fetched batches are copies in its own pod's store, and the masks it returns stay there until
written. A writer fetches images and masks into its pod's store.

Notation (spec.pipeline unless said otherwise):

    b   bytes of one Q1 batch: frames per batch x frame bytes
          random: batch_size x C*H*W x dtype size
          replay: batch_size x frame bytes;  socket: sizing.socketFramesPerMessage x frame bytes
          frame bytes (socket, replay): inference.frame_shape x dtype size (socket: its dtype,
          replay: float32) when set, else sizing.expectedFrameBytes
    m   bytes of one batch's output: mask B*C*H*W x 1, logits B*C*num_classes*H*W x 4
          (H, W of inference.frame_shape or of the frame bytes when the shape is unknown)
    S   source actors; I inference actors sized for (inference maxReplicas x actorsPerWorker);
        W writer actors
    D   inference.buffer_depth; P writer.max_pending_batches; w producer window (2 puts)
    Q1  min(queue.q1.capacity_items x b, queue.q1.capacity_bytes)
    Q2i min(queue.q2.capacity_items x b, queue.q2.capacity_bytes)  images Q2 Results keep alive
    Q2m min(queue.q2.capacity_items x m, queue.q2.capacity_bytes)  their masks

    ingest pod     S x w x b + Q1 + I x (D + 1) x b + Q2i + W x P x b
    inference pod  a x (D + 1) x b + (I + W x P) x m + Q2m
    writer pod     v x P x (b + m)
    head           Ray's minimum (the head runs no actors)

    store = max(bytes x (1 + sizing.headroomFraction) rounded up to MiB, 75 MiB)
    fits when store + sizing.minHeap[role] <= the role's memory

Worst case per pod: any ingest pod may have produced every payload in flight (a faster pod
outruns the others), and the masks not yet written may all come from one inference pod. The
staged batches and the writer prefetch are per actor, and one pod holds at most the actors
that fit on it: a = min(I, Ray CPUs of the pod / inference.num_cpus_per_actor, and GPUs /
num_gpus_per_actor when it has GPUs), v = min(W, Ray CPUs / writer.num_cpus_per_actor).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from peaknet_pipeline.config import PipelineConfig

from .spec import ClusterSpec, PeakNetPipelineSpec, cpu_cores, format_memory, memory_bytes

MiB = 1 << 20
RAY_MIN_OBJECT_STORE_BYTES = 75 * MiB
PRODUCER_WINDOW = 2  # puts one producer keeps in flight (peaknet_pipeline.queue.producer)

# Which settings a term of the formula comes from, for messages.
TERM_SETTINGS = {
    "source windows": "source actors x 2 batches",
    "Q1": "spec.pipeline.queue.q1.capacity_items / capacity_bytes",
    "inference buffers": "spec.pipeline.inference.buffer_depth",
    "Q2 images": "spec.pipeline.queue.q2.capacity_items / capacity_bytes",
    "writer prefetch": "spec.pipeline.writer.max_pending_batches",
    "staged batches": "spec.pipeline.inference.buffer_depth",
    "masks": "spec.pipeline.queue.q2, spec.pipeline.writer.max_pending_batches",
}


@dataclass(frozen=True)
class RoleSize:
    """One role's object store and whether it fits the pod's memory."""

    role: str
    terms: dict[str, int] = field(default_factory=dict)  # bytes in flight by term
    store_bytes: int = RAY_MIN_OBJECT_STORE_BYTES
    heap_bytes: int = 0
    memory_bytes: int = 0

    @property
    def needed_bytes(self) -> int:
        return self.store_bytes + self.heap_bytes

    @property
    def fits(self) -> bool:
        return self.needed_bytes <= self.memory_bytes


def ray_cpus(cpu: str) -> int:
    """Ray's logical CPUs of a worker pod: its CPU limit rounded up, at least 1."""
    return max(1, math.ceil(cpu_cores(cpu) - 1e-9))


def frame_geometry(cfg: PipelineConfig, cluster: ClusterSpec) -> tuple[int, int, int]:
    """(frames per batch, bytes per frame, pixels per frame) of the configured source."""
    src, shape = cfg.source, cfg.inference.frame_shape
    if src.kind == "random":
        pixels = int(np.prod(src.random.frame_shape))
        return src.random.batch_size, pixels * np.dtype(src.random.dtype).itemsize, pixels
    itemsize = np.dtype(src.socket.dtype).itemsize if src.kind == "socket" else 4
    frames = cluster.sizing.socket_frames_per_message
    if src.kind == "replay":
        frames = src.replay.batch_size
    if shape is not None:
        pixels = int(np.prod(shape))
        return frames, pixels * itemsize, pixels
    return frames, cluster.sizing.expected_frame_bytes, cluster.sizing.expected_frame_bytes // 4


def source_actor_count(cfg: PipelineConfig, cluster: ClusterSpec) -> int:
    """Source actors the effective config starts (socket bind: one per port per ingest pod)."""
    if cfg.source.kind == "random":
        return cluster.ingest.replicas * cluster.ingest.actors_per_worker
    if cfg.source.kind == "socket":
        ports = len(cfg.source.socket.addresses)
        return ports * (cluster.ingest.replicas if cfg.source.socket.mode == "bind" else 1)
    return 1


def _fit_on_pod(total: int, cpu: str, cpus_each: float, gpus: int, gpus_each: float) -> int:
    by_cpu = int(ray_cpus(cpu) // cpus_each) if cpus_each > 0 else total
    by_gpu = int(gpus // gpus_each) if gpus and gpus_each > 0 else total
    return max(1, min(total, by_cpu, by_gpu))


def _store(terms: dict[str, int], headroom: float) -> int:
    raw = sum(terms.values()) * (1.0 + headroom)
    return max(math.ceil(raw / MiB) * MiB, RAY_MIN_OBJECT_STORE_BYTES)


def size_roles(spec: PeakNetPipelineSpec) -> dict[str, RoleSize]:
    """Object store and memory check of head, ingest, inference and writer pods."""
    cfg, cluster = spec.pipeline, spec.cluster
    frames, frame_bytes, pixels = frame_geometry(cfg, cluster)
    b = frames * frame_bytes
    channels_out = cfg.model.num_classes * 4 if cfg.inference.output == "logits" else 1
    m = frames * pixels * channels_out
    inf, wcfg, q1, q2 = cfg.inference, cfg.writer, cfg.queue.q1, cfg.queue.q2
    n_src = source_actor_count(cfg, cluster)
    n_inf = cluster.inference.sized_replicas * cluster.inference.actors_per_worker
    n_wri = cluster.writer.replicas * cluster.writer.actors_per_worker
    per_actor = (inf.buffer_depth + 1) * b
    ingest = {
        "source windows": n_src * PRODUCER_WINDOW * b,
        "Q1": min(q1.capacity_items * b, q1.capacity_bytes),
        "inference buffers": n_inf * per_actor,
        "Q2 images": min(q2.capacity_items * b, q2.capacity_bytes),
        "writer prefetch": n_wri * wcfg.max_pending_batches * b,
    }
    gpus = cluster.inference.gpus_per_worker if inf.device != "cpu" else 0
    a = _fit_on_pod(
        n_inf, cluster.inference.cpu, inf.num_cpus_per_actor, gpus, inf.num_gpus_per_actor
    )
    inference = {
        "staged batches": a * per_actor,
        "masks": (n_inf + n_wri * wcfg.max_pending_batches) * m
        + min(q2.capacity_items * m, q2.capacity_bytes),
    }
    v = _fit_on_pod(n_wri, cluster.writer.cpu, wcfg.num_cpus_per_actor, 0, 0)
    writer = {"writer prefetch": v * wcfg.max_pending_batches * (b + m)}
    headroom, heap = cluster.sizing.headroom_fraction, cluster.sizing.min_heap
    sizes = {
        "head": RoleSize(
            "head",
            {},
            RAY_MIN_OBJECT_STORE_BYTES,
            memory_bytes(heap.head),
            memory_bytes(cluster.head.memory),
        )
    }
    for role, terms in (("ingest", ingest), ("inference", inference), ("writer", writer)):
        sizes[role] = RoleSize(
            role,
            terms,
            _store(terms, headroom),
            memory_bytes(getattr(heap, role)),
            memory_bytes(cluster.group(role).memory),
        )
    return sizes


def sizing_problems(sizes: dict[str, RoleSize], spec: PeakNetPipelineSpec) -> list[str]:
    """One message per role that does not fit, naming the settings and a memory that fits."""
    problems = []
    for role, size in sizes.items():
        if size.fits:
            continue
        memory = getattr(spec.cluster, role).memory
        message = (
            f"spec.cluster.{role}.memory={memory} cannot hold an object store of "
            f"{format_memory(size.store_bytes)} plus spec.cluster.sizing.minHeap.{role}="
            f"{format_memory(size.heap_bytes)}: set spec.cluster.{role}.memory to at least "
            f"{format_memory(size.needed_bytes)}"
        )
        if size.terms:
            term, n_bytes = max(size.terms.items(), key=lambda kv: kv[1])
            message += (
                f", or lower the largest part of the store, {term} "
                f"({format_memory(n_bytes)}: {TERM_SETTINGS[term]})"
            )
        problems.append(message)
    return problems
