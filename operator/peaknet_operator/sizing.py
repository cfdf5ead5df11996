"""Object-store size of each pod role, from where the bytes of a run live.

The bounds themselves (how many batches a queue, an inference actor or a writer can hold, and
the bytes of one batch) are the pipeline's own, shared with the driver's start-up check:
peaknet_pipeline.budget, whose docstring has the formula. This module decides which pod holds
which of them.

Where bytes live (../shared/reference/ray-notes.md): a Q1 payload is the return value of the
ingest actor that produced it, so it sits in that ingest pod's object store, and stays there
until the writer has finished with the Result that keeps its image ref. An inference actor's
fetched batches are copies in its own pod's store, and the masks it returns stay there until
written. A writer fetches images and masks into its pod's store.

Notation: b, m, r = b + m, records(q, N, x), held_i = D + N1 + w + 1 batches per
inference actor and held_w = P + N2 - 1 Results per writer as in peaknet_pipeline.budget, with
frames of a socket source: spec.pipeline.source.socket.frames_per_message per batch (the
source splits longer messages, so the driver's start-up check uses the same bound), and frame
bytes (socket, replay) from inference.frame_shape (socket: its dtype, replay: float32) when
set, else sizing.expectedFrameBytes. u = the bytes one writer holds written but not yet
committed (peaknet_pipeline.budget.writer_uncommitted_bytes, in Results): their images stay in
the ingest pods' stores and their masks in the inference pods' until the file is committed. S source actors; I inference actors sized for (inference
maxReplicas x actorsPerWorker); W writer actors; N1, N2 the shards the effective config gets.

    ingest pod     records(q1, N1, b) x b + I x held_i x b + records(q2, N2, r) x b
                   + W x held_w x b + W x u x b / r
    inference pod  a x held_i x b + (records(q2, N2, r) + W x held_w) x m + W x u x m / r
    writer pod     v x held_w x r
    head           Ray's minimum (the head runs no actors)

    store = max(bytes x (1 + sizing.headroomFraction) rounded up to MiB, 75 MiB)
    fits when store + sizing.minHeap[role] <= the role's memory

Worst case per pod: any ingest pod may have produced every payload in flight (a faster pod
outruns the others), and the masks not yet written may all come from one inference pod. The
staged batches and the writer prefetch are per actor, and one pod holds at most the actors
that fit on it: a = min(I, Ray CPUs of the pod / inference.num_cpus_per_actor, and GPUs /
num_gpus_per_actor when it has GPUs), v = min(W, Ray CPUs / writer.num_cpus_per_actor).
Payloads a producer holds while its put waits for room are in the ingest actor's heap, not in
the store (the queue fetches a payload once it has room): sizing.minHeap covers them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from peaknet_pipeline.budget import (
    RAY_MIN_OBJECT_STORE_BYTES,
    BatchBytes,
    batch_bytes,
    derived_shards,
    inference_batches_held,
    queue_records,
    writer_results_held,
    writer_uncommitted_bytes,
)
from peaknet_pipeline.config import PipelineConfig

from .quantity import cpu_cores, format_memory, memory_bytes
from .spec import ClusterSpec, PeakNetPipelineSpec

MiB = 1 << 20

# Which settings a term of the formula comes from, for messages.
TERM_SETTINGS = {
    "Q1": "spec.pipeline.queue.q1.capacity_items / capacity_bytes",
    "inference buffers": "spec.pipeline.inference.buffer_depth",
    "Q2 images": "spec.pipeline.queue.q2.capacity_items / capacity_bytes",
    "writer prefetch": "spec.pipeline.writer.max_pending_batches",
    "staged batches": "spec.pipeline.inference.buffer_depth",
    "masks": "spec.pipeline.queue.q2, spec.pipeline.writer.max_pending_batches",
    "uncommitted images": "spec.pipeline.writer.max_uncommitted_bytes / events_per_file",
    "uncommitted masks": "spec.pipeline.writer.max_uncommitted_bytes / events_per_file",
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


def batch_of(cfg: PipelineConfig, cluster: ClusterSpec) -> BatchBytes:
    """One batch's bytes, as the driver's check counts it, with the sizing policy's frame bytes
    where the pipeline config does not say."""
    return batch_bytes(cfg, assumed_frame_bytes=cluster.sizing.expected_frame_bytes)


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
    batch = batch_of(cfg, cluster)
    b, m, r = batch.images, batch.outputs, batch.result
    inf, wcfg, q1, q2 = cfg.inference, cfg.writer, cfg.queue.q1, cfg.queue.q2
    n_src = source_actor_count(cfg, cluster)
    n_inf = cluster.inference.sized_replicas * cluster.inference.actors_per_worker
    n_wri = cluster.writer.replicas * cluster.writer.actors_per_worker
    n1 = derived_shards(q1.num_shards, n_src, n_inf, q1.capacity_items)
    n2 = derived_shards(q2.num_shards, n_inf, n_wri, q2.capacity_items)
    held_i, held_w = inference_batches_held(cfg, n1), writer_results_held(cfg, n2)
    q2_records = queue_records(q2, n2, r)
    uncommitted = n_wri * writer_uncommitted_bytes(cfg, batch)  # in Results: images + masks
    ingest = {
        "Q1": queue_records(q1, n1, b) * b,
        "inference buffers": n_inf * held_i * b,
        "Q2 images": q2_records * b,
        "writer prefetch": n_wri * held_w * b,
        "uncommitted images": math.ceil(uncommitted * b / r),
    }
    gpus = cluster.inference.gpus_per_worker if inf.device != "cpu" else 0
    a = _fit_on_pod(
        n_inf, cluster.inference.cpu, inf.num_cpus_per_actor, gpus, inf.num_gpus_per_actor
    )
    inference = {
        "staged batches": a * held_i * b,
        "masks": (q2_records + n_wri * held_w) * m,
        "uncommitted masks": math.ceil(uncommitted * m / r),
    }
    v = _fit_on_pod(n_wri, cluster.writer.cpu, wcfg.num_cpus_per_actor, 0, 0)
    writer = {"writer prefetch": v * held_w * r}
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
