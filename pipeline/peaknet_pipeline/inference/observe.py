"""What an inference actor records about its batches besides its counters.

- Metrics: a recorder thread turns the actor's `stats()` into Ray metrics once a second
  (monitor.metrics), with each batch's compute seconds as a histogram and, on CUDA, the GPU's
  utilisation and memory through NVML (monitor.gpu).
- GPU use for the report: on CUDA (or wherever a reader is given: the tests' fake NVML), each
  `gpu_stats()` call reads the GPU once and keeps the run's mean and peaks (a tally), beside
  the runner's idle gaps (monitor.gpu_usage); the actor's stats carry it as `gpu`, so the
  time series holds each sample's reading next to Q1's depth. On the CPU it is None.
- `profile.torch`: a torch profiler trace of the actor's first batches. The compute loop starts
  the profiler before it issues the first batch (after warm-up, which is never in the trace)
  and stops it once `batches` batches are finished, or at the end of the stream if fewer came.
  The trace (Chrome trace JSON: chrome://tracing, ui.perfetto.dev) stays in the actor until the
  driver asks for it (`torch_trace()`) and writes it into the run directory: inference pods
  need not see the output volume. Each batch is a `batch <source>#<seq>` range around the
  model's operators; on CUDA the kernels are recorded too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
from collections import deque
from typing import Any

from ..config.models import PipelineConfig
from ..monitor.gpu_usage import Timeline, UsageTally, gpu_stats
from ..monitor.metrics import Reading, Recorder, run_of, stage_recorder
from ..placement import Role

log = logging.getLogger(__name__)


def trace_name(actor_id: str) -> str:
    """The trace's file name in the run directory."""
    return f"torch-trace-{actor_id}.json"


class TorchTrace:
    """Profiles the next `batches` batches of the thread that calls `batch()` and `finished()`."""

    def __init__(self, batches: int, cuda: bool, who: str) -> None:
        self.batches, self.cuda, self.who = batches, cuda, who
        self._profiler: Any = None
        self._done = 0
        self.trace: bytes | None = None

    @property
    def recording(self) -> bool:
        return self.trace is None

    def batch(self, label: str):
        """A context around one batch's issue: starts the profiler on the first."""
        import torch.profiler as tp

        if self._profiler is None:
            activities = [tp.ProfilerActivity.CPU]
            if self.cuda:
                activities.append(tp.ProfilerActivity.CUDA)
            self._profiler = tp.profile(activities=activities)
            self._profiler.__enter__()
            log.info("%s: torch profiler on for %d batches", self.who, self.batches)
        return tp.record_function(f"batch {label}")

    def finished(self) -> None:
        """One batch done; the last one stops the profiler and keeps the trace."""
        self._done += 1
        if self._done >= self.batches:
            self.stop()

    def stop(self) -> None:
        """Stop now (end of stream) and keep what was recorded; idempotent."""
        if self._profiler is None or self.trace is not None:
            return
        self._profiler.__exit__(None, None, None)
        fd, path = tempfile.mkstemp(suffix=".json", prefix="peaknet-trace-")
        os.close(fd)
        try:
            self._profiler.export_chrome_trace(path)
            with open(path, "rb") as fh:
                self.trace = fh.read()
        finally:
            os.unlink(path)
        log.info("%s: torch trace of %d batches recorded", self.who, self._done)


BATCH_TIMES_KEPT = 4096  # per-batch compute seconds waiting for the recorder


class Observer:
    """The metrics recorder, per-batch times and optional torch trace of one inference actor.
    `issuing` and `finished` are called from the compute loop, around each batch."""

    def __init__(
        self, cfg: PipelineConfig, actor_id: str, index: int, device: Any, reader: Any = None
    ) -> None:
        self.cfg, self.actor_id, self.device = cfg, actor_id, device
        self._times: deque = deque(maxlen=BATCH_TIMES_KEPT)
        self._recorder: Recorder | None = None
        self._gpu = reader is not None or device.type == "cuda"
        if reader is None and device.type == "cuda":
            from ..monitor.gpu import open_reader

            reader = open_reader(device, actor_id)
        self.reader = reader  # a monitor.gpu.GpuReader, or None: no NVML
        self._tally = UsageTally() if reader is not None else None
        self._tally_lock = threading.Lock()
        wanted = cfg.profile.torch
        self.trace = None
        if wanted is not None and wanted.actor == index:
            self.trace = TorchTrace(wanted.batches, device.type == "cuda", actor_id)

    def start(self, stats: Any, queue_name: str) -> None:
        """Start recording `stats()` (metrics off: nothing)."""
        extra = [self._drain_times]
        if self.cfg.monitor.metrics and self.reader is not None:
            from ..monitor.gpu import GpuProbe, gpu_label

            extra.append(GpuProbe(self.reader, gpu_label(self.device)).readings)
        self._recorder = stage_recorder(
            self.cfg.monitor.metrics,
            Role.INFERENCE,
            self.actor_id,
            run_of(queue_name),
            stats,
            lambda: [r for f in extra for r in f()],
        )

    def issuing(self, label: str):
        """A context around issuing one batch (a profiler range while tracing)."""
        if self.trace is not None and self.trace.recording:
            return self.trace.batch(label)
        return contextlib.nullcontext()

    def finished(self, seconds: float) -> None:
        """One batch's output is back, `seconds` after it was issued."""
        if self._recorder is not None:
            self._times.append(seconds)
        if self.trace is not None and self.trace.recording:
            self.trace.finished()

    def gpu_stats(self, timeline: Timeline | None) -> dict[str, Any] | None:
        """The stats' `gpu` entry (monitor.gpu_usage.gpu_stats), reading the GPU now; None
        on the CPU without a reader: nothing is said about a GPU there."""
        if not self._gpu:
            return None
        if self._tally is None:
            return gpu_stats(None, timeline)
        reading = None
        try:
            reading = self.reader.read() if self.reader is not None else None
        except Exception as exc:  # noqa: BLE001 - NVMLError: the report goes on without it
            log.warning("%s: GPU reading failed, none taken from now on: %s", self.actor_id, exc)
            self.reader = None
        with self._tally_lock:
            if reading is not None:
                self._tally.add(reading)
            return gpu_stats(self._tally, timeline)

    def _drain_times(self) -> list[Reading]:
        times = self._times
        return [Reading("peaknet_batch_seconds", {}, times.popleft()) for _ in range(len(times))]

    def stop_trace(self) -> None:
        if self.trace is not None:
            self.trace.stop()

    def close(self) -> None:
        """Stop the trace and record the metrics a last time."""
        self.stop_trace()
        if self._recorder is not None:
            self._recorder.close()
