"""Staging slots and the device runners that move a staged batch through the model.

A `Slot` is one of the N staging buffers of N-way buffering: the prefetch thread pads a batch
into a free slot's host buffer, the compute loop issues it and later finishes it, and only then
does the slot go back to the free list. Slot ownership is the synchronisation: nothing writes a
host buffer that a copy may still read.

`CudaRunner`: pinned host buffers, one stream each for host-to-device, compute and
device-to-host, events between them. `issue` only enqueues work; `finish` waits on that one
batch's last event (never a device-wide synchronize), so the next batch is already queued on
the GPU while the host hands the previous result to Q2. NVTX ranges name each stage for nsys.
Two timing events around each batch's compute let `timeline` (monitor/gpu_usage.py) count the
compute stream's idle gaps between batches on the device's own clock.

`CpuRunner`: the same interface, computed synchronously in `issue`; the overlap on CPU comes
from the prefetch thread (queue I/O, materialising, padding) running beside the compute loop.
Its `timeline` is kept on the host clock around each batch's compute.
"""

from __future__ import annotations

import queue
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..monitor.gpu_usage import Timeline
from ..nvtx import nvtx_range
from ..queue.eos import EndOfStream
from .engine import Engine
from .geometry import Geometry, output_array, pad_into

if TYPE_CHECKING:  # the consumer imports Ray; the runner imports without it (bench/gpu_check.py)
    from ..queue.consumer import QueueConsumer


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
    images: np.ndarray | None = None  # the batch as it came from Q1 (for peaks on the device)
    device_raw: torch.Tensor | None = None  # CUDA: the frames before normalisation

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
        self.images = self.device_raw = None
        self.times = {}


class CpuRunner:
    """Computes in `issue`; `finish` returns the output array (no copy: it is fresh memory),
    or with `peaks` set (inference/peaks.py) the batch's peak lists, found on the mask and
    the frames as they came from Q1."""

    device = "cpu"
    max_in_flight = 0  # finish right after issue: there is no asynchronous device to feed

    def __init__(self, engine: Engine, peaks: Callable | None = None) -> None:
        self.engine = engine
        self.peaks = peaks
        self.timeline = Timeline()

    def new_slot(self, index: int) -> Slot:
        return Slot(index)

    def issue(self, slot: Slot) -> None:
        start = time.perf_counter()
        slot.output = self.engine.compute(slot.host_input(), slot.geo)
        self.timeline.add_interval(start, time.perf_counter())

    def finish(self, slot: Slot) -> Any:
        if self.peaks is not None:
            mask = slot.output.view(slot.geo.output_shape("mask", 0))
            return self.peaks(mask, slot.images)
        return output_array(slot.output.numpy(), slot.geo, self.engine.output)


class CudaRunner:
    """Three streams and per-slot events; see the module docstring."""

    max_in_flight = 1  # keep one batch queued on the GPU while the host finishes the previous

    def __init__(self, engine: Engine, peaks: Callable | None = None) -> None:
        self.engine = engine
        self.peaks = peaks  # as CpuRunner's, on the device; then only the peaks come back
        self.device = engine.device
        self.h2d = torch.cuda.Stream(self.device)
        self.compute = torch.cuda.Stream(self.device)
        self.d2h = torch.cuda.Stream(self.device)
        # Compute's (start, end) timing events come from a ring in issue order, not from the
        # slot: a gap is measured from the previous batch's end event when this one finishes,
        # and by then the previous slot may be issued again. Batches finish in issue order,
        # at most max_in_flight + 1 issued after the previous one: a ring of max_in_flight + 2
        # is never re-recorded while still needed.
        self.timeline = Timeline()
        self._ring = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            for _ in range(self.max_in_flight + 2)
        ]
        self._issued = 0
        self._last_end: Any = None

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
            if self.peaks is not None:  # compute normalises x in place
                slot.device_raw = x[:, 0, slot.geo.rows, slot.geo.cols].clone()
            ev["timing"] = self._ring[self._issued % len(self._ring)]
            self._issued += 1
            ev["timing"][0].record()
            out = self.engine.compute(x, slot.geo)
            ev["compute"].record()
            ev["timing"][1].record()
        if self.peaks is not None:
            slot.output = out  # finish() finds the peaks on the device, behind this event
            return
        self.d2h.wait_event(ev["compute"])
        with nvtx_range("d2h", True), torch.cuda.stream(self.d2h):
            out.record_stream(self.d2h)  # allocated on the compute stream, read on this one
            slot.host_out = _grow(slot.host_out, out.numel(), out.dtype, pin_memory=True)
            host_out = slot.host_out[: out.numel()].view(out.shape)
            host_out.copy_(out, non_blocking=True)
            ev["d2h"].record()
        slot.output = host_out

    def finish(self, slot: Slot) -> Any:
        """Wait for this batch's copy back only; the copy out of the pinned buffer frees it.
        With `peaks`: find them on the d2h stream once this batch's compute is done (the next
        batch computes meanwhile); only the peak arrays are copied back."""
        if self.peaks is not None:
            with nvtx_range("peaks", True), torch.cuda.stream(self.d2h):
                self.d2h.wait_event(slot.events["compute"])
                shape = slot.geo.output_shape("mask", 0)
                found = self.peaks(slot.output.view(shape), slot.device_raw.view(shape))
            self._time(*slot.events["timing"])
            return found
        with nvtx_range("d2h_wait", True):
            slot.events["d2h"].synchronize()
        self._time(*slot.events["timing"])
        return output_array(slot.output.numpy().copy(), slot.geo, self.engine.output)

    def _time(self, start: Any, end: Any) -> None:
        """Add a finished batch's compute to the timeline (waits for its end event only: the
        batch's output needed it anyway). After a failed batch the next one's gap is unknown."""
        try:
            end.synchronize()
            gap = self._last_end.elapsed_time(start) / 1e3 if self._last_end is not None else None
            self.timeline.add(start.elapsed_time(end) / 1e3, gap)
            self._last_end = end
        except RuntimeError:  # an event of a failed batch was never recorded
            self._last_end = None


def make_runner(engine: Engine, peaks: Callable | None = None) -> CpuRunner | CudaRunner:
    """The runner for the engine's device; `peaks(mask, frames)` reduces each batch's mask
    to peak lists where it was computed (inference.peaks_on_device)."""
    runner = CudaRunner if engine.device.type == "cuda" else CpuRunner
    return runner(engine, peaks)


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
