"""Staging slots and the device runners that move a staged batch through the model.

A `Slot` is one of the N staging buffers of N-way buffering: the prefetch thread pads a batch
into a free slot's host buffer, the compute loop issues it and later finishes it, and only then
does the slot go back to the free list. Slot ownership is the synchronisation: nothing writes a
host buffer that a copy may still read.

`CudaRunner`: pinned host buffers, one stream each for host-to-device, compute and
device-to-host, events between them. `issue` only enqueues work; `finish` waits on that one
batch's last event (never a device-wide synchronize), so the next batch is already queued on
the GPU while the host hands the previous result to Q2. NVTX ranges name each stage for nsys.

`CpuRunner`: the same interface, computed synchronously in `issue`; the overlap on CPU comes
from the prefetch thread (queue I/O, materialising, padding) running beside the compute loop.
"""

from __future__ import annotations

import queue
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..nvtx import nvtx_range
from ..queue.consumer import QueueConsumer
from ..queue.eos import EndOfStream
from .engine import Engine
from .geometry import Geometry, output_array, pad_into


def _grow(buf: torch.Tensor | None, numel: int, dtype: torch.dtype, **kwargs) -> torch.Tensor:
    """`buf` if it holds `numel` elements of `dtype`, else a new flat buffer of that size."""
    if buf is not None and buf.numel() >= numel and buf.dtype == dtype:
        return buf
    return torch.empty(numel, dtype=dtype, **kwargs)


@dataclass
class Slot:
    """One staging buffer and the batch currently in it."""

    index: int
    pinned: bool = False
    host: torch.Tensor | None = None
    record: Any = None
    geo: Geometry | None = None
    times: dict[str, float] = field(default_factory=dict)
    # Filled by the runner between issue and finish.
    output: torch.Tensor | None = None
    device_in: torch.Tensor | None = None
    host_out: torch.Tensor | None = None
    events: dict[str, Any] = field(default_factory=dict)

    def stage(self, images: np.ndarray, geo: Geometry) -> None:
        """Pad `images` into this slot's host buffer (grown when a larger batch arrives)."""
        numel = int(np.prod(geo.input_shape))
        self.host = _grow(self.host, numel, torch.float32, pin_memory=self.pinned)
        view = self.host[:numel].view(geo.n, geo.padded_height, geo.padded_width)
        pad_into(view.numpy(), images, geo)
        self.geo = geo

    def host_input(self) -> torch.Tensor:
        return self.host[: int(np.prod(self.geo.input_shape))].view(self.geo.input_shape)

    def clear(self) -> None:
        self.record = None
        self.output = None
        self.times = {}


class CpuRunner:
    """Computes in `issue`; `finish` returns the output array (no copy: it is fresh memory)."""

    device = "cpu"
    max_in_flight = 0  # finish right after issue: there is no asynchronous device to feed

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def new_slot(self, index: int) -> Slot:
        return Slot(index)

    def issue(self, slot: Slot) -> None:
        slot.output = self.engine.compute(slot.host_input(), slot.geo)

    def finish(self, slot: Slot) -> np.ndarray:
        return output_array(slot.output.numpy(), slot.geo, self.engine.output)


class CudaRunner:
    """Three streams and per-slot events; see the module docstring."""

    max_in_flight = 1  # keep one batch queued on the GPU while the host finishes the previous

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.device = engine.device
        self.h2d = torch.cuda.Stream(self.device)
        self.compute = torch.cuda.Stream(self.device)
        self.d2h = torch.cuda.Stream(self.device)

    def new_slot(self, index: int) -> Slot:
        slot = Slot(index, pinned=True)
        slot.events = {k: torch.cuda.Event() for k in ("h2d", "compute", "d2h")}
        return slot

    def issue(self, slot: Slot) -> None:
        host = slot.host_input()
        ev = slot.events
        with nvtx_range("h2d", True), torch.cuda.stream(self.h2d):
            slot.device_in = _grow(slot.device_in, host.numel(), torch.float32, device=self.device)
            x = slot.device_in[: host.numel()].view(host.shape)
            x.copy_(host, non_blocking=True)
            ev["h2d"].record()
        self.compute.wait_event(ev["h2d"])
        with nvtx_range("compute", True), torch.cuda.stream(self.compute):
            out = self.engine.compute(x, slot.geo)
            ev["compute"].record()
        self.d2h.wait_event(ev["compute"])
        with nvtx_range("d2h", True), torch.cuda.stream(self.d2h):
            out.record_stream(self.d2h)  # allocated on the compute stream, read on this one
            slot.host_out = _grow(slot.host_out, out.numel(), out.dtype, pin_memory=True)
            host_out = slot.host_out[: out.numel()].view(out.shape)
            host_out.copy_(out, non_blocking=True)
            ev["d2h"].record()
        slot.output = host_out

    def finish(self, slot: Slot) -> np.ndarray:
        """Wait for this batch's copy back only; the copy out of the pinned buffer frees it."""
        with nvtx_range("d2h_wait", True):
            slot.events["d2h"].synchronize()
        return output_array(slot.output.numpy().copy(), slot.geo, self.engine.output)


def make_runner(engine: Engine) -> CpuRunner | CudaRunner:
    return CudaRunner(engine) if engine.device.type == "cuda" else CpuRunner(engine)


def pump(
    ready: queue.Queue | QueueConsumer,
    max_in_flight: int,
    issue: Callable[[Any], bool],
    finish: Callable[[Any], None],
    waited: Callable[[float], None] = lambda s: None,
) -> None:
    """Issue staged slots in order and finish every issued slot exactly once, oldest first.

    Up to `max_in_flight` issued slots stay unfinished while newer ones are issued (so the GPU
    always has a batch queued while the host hands out the previous result); when nothing new
    is staged, the oldest is finished at once instead of being held back. At the end-of-stream
    token everything still in flight is finished before returning: no batch is dropped at end
    of stream. `ready` reads like a queue.Queue (a QueueConsumer: get(block), queue.Empty).
    `issue` returns False when it refused the slot (it then finishes nothing for it).
    """
    in_flight: deque = deque()
    while True:
        t0 = time.perf_counter()
        try:
            slot = ready.get(block=not in_flight)
        except queue.Empty:
            finish(in_flight.popleft())
            continue
        waited(time.perf_counter() - t0)
        if isinstance(slot, EndOfStream):
            break
        if issue(slot):
            in_flight.append(slot)
        while len(in_flight) > max_in_flight:
            finish(in_flight.popleft())
    while in_flight:
        finish(in_flight.popleft())
