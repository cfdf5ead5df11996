"""The two records that travel through the queues, `Batch` (Q1) and `Result` (Q2), what
every stage actor's `ready()` answers to the driver (`ReadyInfo`), and the calls every stage
actor answers (`StageProtocol`).

Records are small: pixels stay in the Ray object store and records carry ObjectRefs to them.
Metadata is a dict of numpy arrays of length B (B may differ from batch to batch); keys carry
their unit (``photon_energy_ev``, ``wavelength_nm``, ``wavelength_angstrom``). Every event
carries `ARRIVAL_T`: when it arrived at ingest (sources/base.py), so that the writer can say
how long it took to be written (monitor/latency.py); the CXI files do not keep it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from .stats import StageStats

# meta key: wall-clock seconds since the epoch (float64) when the event arrived at its ingest
# actor: a socket message's receipt, or a finite source's batch being made.
ARRIVAL_T = "arrival_t"


def check_meta(meta: dict[str, Any], batch_size: int) -> dict[str, np.ndarray]:
    """Return `meta` as arrays of length `batch_size`, naming the first field that disagrees."""
    checked = {}
    for key, value in meta.items():
        arr = np.asarray(value)
        if arr.ndim == 0 or arr.shape[0] != batch_size:
            raise ValueError(
                f"metadata field {key!r} has shape {arr.shape}, expected first dimension "
                f"{batch_size} (one value per event)"
            )
        checked[key] = arr
    return checked


@dataclass
class Batch:
    """A Q1 item: B frames `(B, C, H, W)` in the object store and their per-event metadata."""

    source_id: str
    seq: int
    shape: tuple[int, int, int, int]
    dtype: str
    meta: dict[str, np.ndarray] = field(default_factory=dict)
    images: Any = None  # ObjectRef of the (B, C, H, W) array; set when the payload is stored

    @classmethod
    def describe(cls, images: np.ndarray, meta: dict[str, Any], source_id: str, seq: int) -> Batch:
        """A record describing `images` (not yet stored); the queue attaches the payload."""
        if images.ndim != 4:
            raise ValueError(f"images must be (B, C, H, W), got shape {images.shape}")
        return cls(
            source_id=source_id,
            seq=seq,
            shape=tuple(int(n) for n in images.shape),
            dtype=images.dtype.str,
            meta=check_meta(meta, images.shape[0]),
        )

    @property
    def size(self) -> int:
        """Number of events B."""
        return self.shape[0]

    @property
    def key(self) -> tuple[str, int]:
        """(source id, sequence number): unique in a run; the queues accept a key once."""
        return self.source_id, self.seq

    @property
    def nbytes(self) -> int:
        """Object-store bytes this record keeps alive while queued."""
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize

    def with_payload(self, ref: Any) -> Batch:
        return dataclasses.replace(self, images=ref)


@dataclass
class Result:
    """A Q2 item: the input batch passed through (same image ref, same metadata) and the
    segmentation output: a uint8 peak mask `(B, C, H, W)` or float32 logits `(B, C, K, H, W)`,
    or (output_kind "peaks") the peak lists found on the device, in `peaks`.
    """

    batch: Batch
    output_kind: str
    output_shape: tuple[int, ...]
    output_dtype: str
    actor_id: str
    # seconds inside the inference actor (inference/actor.py); bench/inference_bench.py
    # reads compute_s. The run's latency is measured per event instead (ARRIVAL_T).
    timings_s: dict[str, float] = field(default_factory=dict)
    output: Any = None  # ObjectRef of the output array; set when the payload is stored
    # output_kind "peaks" (inference.peaks_on_device): the batch's peak lists, carried in the
    # record itself (inference.peaks.BatchPeaks); no output payload then.
    peaks: Any = None

    @property
    def size(self) -> int:
        return self.batch.size

    @property
    def key(self) -> tuple[str, int]:
        """The key of the batch it was made from: one Result per batch reaches Q2."""
        return self.batch.key

    @property
    def nbytes(self) -> int:
        """Output bytes plus the input frames it keeps alive in the object store."""
        out = int(np.prod(self.output_shape)) * np.dtype(self.output_dtype).itemsize
        out += self.peaks.nbytes if self.peaks is not None else 0
        return out + self.batch.nbytes

    def with_payload(self, ref: Any) -> Result:
        return dataclasses.replace(self, output=ref)


@dataclass(frozen=True)
class ReadyInfo:
    """What a stage actor's `ready()` answers once it can work: where it runs. The driver
    keeps it on the actor's record (registry.StageActor.took_ready) for the pool (it retires
    actors by node), the report, the metrics and fault-injection tests (they kill by pid)."""

    actor_id: str
    pid: int
    node_id: str
    device: str | None = None  # inference: "cpu" or "cuda:<n>"; other roles use no device

    @classmethod
    def here(cls, actor_id: str, device: str | None = None) -> ReadyInfo:
        """This process, on this Ray node (called inside the actor). Called outside Ray (a
        source's loop tested alone) the node is "": asking Ray's runtime context would start
        a whole local Ray just to name it."""
        import os

        import ray

        node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
        return cls(actor_id, os.getpid(), node_id, device)


@runtime_checkable
class StageProtocol(Protocol):
    """The calls the driver makes on every stage actor (ingest, inference, writer), so that
    start-up, supervision and shutdown treat the three roles alike (stages.py, registry.py,
    supervision.py, shutdown.py). A structural type: the actor classes do not inherit it;
    tests/unit/test_stage_protocol.py holds them to it."""

    def ready(self) -> ReadyInfo:
        """Once the actor can work, where it runs; raises the actor's start-up error."""
        ...

    def run(self) -> StageStats | dict[str, Any]:
        """Work until the stream ends or `stop()`; returns the actor's summary: its final
        stats (a writer: its summary.json record, which holds them)."""
        ...

    def stats(self) -> StageStats:
        """Counters so far, in the one vocabulary of stats.py (the monitor samples them while
        `run()` is in flight)."""
        ...

    def stop(self) -> None:
        """Take nothing new and let `run()` return once what is in hand is finished (a writer
        ignores it: it ends at Q2's end of stream, so nothing queued upstream is stranded)."""
        ...
