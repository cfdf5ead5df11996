"""What an inference actor records about its batches besides its counters.

- Metrics: a recorder thread turns the actor's `stats()` into Ray metrics once a second
  (monitor.metrics), with each batch's compute seconds as a histogram and, on CUDA, the GPU's
  utilisation and memory through NVML (monitor.gpu).
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
from collections import deque
from typing import Any

from ..config.models import PipelineConfig
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

    def __init__(self, cfg: PipelineConfig, actor_id: str, index: int, device: Any) -> None:
        self.cfg, self.actor_id, self.device = cfg, actor_id, device
        self._times: deque = deque(maxlen=BATCH_TIMES_KEPT)
        self._recorder: Recorder | None = None
        wanted = cfg.profile.torch
        self.trace = None
        if wanted is not None and wanted.actor == index:
            self.trace = TorchTrace(wanted.batches, device.type == "cuda", actor_id)

    def start(self, stats: Any, queue_name: str) -> None:
        """Start recording `stats()` (metrics off: nothing)."""
        extra = [self._drain_times]
        if self.cfg.monitor.metrics and self.device.type == "cuda":
            from ..monitor.gpu import GpuProbe

            probe = GpuProbe.open(self.device, self.actor_id)
            if probe is not None:
                extra.append(probe.readings)
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
