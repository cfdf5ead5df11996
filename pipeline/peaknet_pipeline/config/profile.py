"""The `profile` section: what to record for a closer look at one run (off by default)."""

from __future__ import annotations

from pydantic import Field

from .base import Section


class TorchProfileConfig(Section):
    actor: int = Field(0, ge=0, description="Which inference actor to profile (inference-<n>).")
    batches: int = Field(
        5, ge=1, le=1000, description="Batches to record, from the first after warm-up."
    )


class ProfileConfig(Section):
    torch: TorchProfileConfig | None = Field(
        None,
        description="Record a torch profiler trace of one inference actor's batches, written "
        "as torch-trace-inference-<n>.json (Chrome trace format: chrome://tracing, Perfetto) "
        "into the run directory; null: no trace.",
    )
    nvtx: bool = Field(
        False,
        description="Mark NVTX ranges in ingest and writer actors too (receive, decode, queue "
        "waits, peak finding, writing) so one nsys capture shows the whole path; this loads "
        "torch in those actors. Inference marks its ranges whenever it runs on CUDA. Without "
        "a CUDA build of torch there is nothing to mark.",
    )
