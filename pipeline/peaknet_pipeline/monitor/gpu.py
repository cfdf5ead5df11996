"""GPU utilisation and memory through NVML, for the inference actor's metrics and report.

NVML comes from `nvidia-ml-py` (imported as `pynvml`), an optional dependency (the `gpu`
extra); without it, or without an NVIDIA driver, there are no GPU metrics and the actor says
so once in its log. NVML numbers devices physically and ignores CUDA_VISIBLE_DEVICES, so the
CUDA device is found by its UUID (as torch reports it), else by the index CUDA_VISIBLE_DEVICES
gives it.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Protocol

from .metrics import Reading

log = logging.getLogger(__name__)


class GpuReader(Protocol):
    """Where a GPU's readings come from: NVML on a GPU (`NvmlReader`), a fake in tests (no
    GPU exists where the suite runs, and the report must still be tested end to end)."""

    def read(self) -> tuple[float, int, int]:
        """(utilisation ratio 0..1, memory used bytes, memory total bytes), now."""
        ...


class NvmlReader:
    """One CUDA device through NVML. Utilisation is NVML's: the fraction of its last sampling
    period (1/6 s to 1 s, by card) during which a kernel ran, not how much of the GPU it
    used."""

    def __init__(self, nvml: Any, handle: Any) -> None:
        self.nvml, self.handle = nvml, handle

    def read(self) -> tuple[float, int, int]:
        util = self.nvml.nvmlDeviceGetUtilizationRates(self.handle)
        memory = self.nvml.nvmlDeviceGetMemoryInfo(self.handle)
        return util.gpu / 100.0, int(memory.used), int(memory.total)


def open_reader(device: Any, who: str) -> NvmlReader | None:
    """A reader of torch device `device`, or None (the reason logged once) when NVML is not
    there."""
    try:
        import pynvml
    except ImportError:
        log.info("%s: no GPU readings: nvidia-ml-py is not installed (the gpu extra)", who)
        return None
    try:
        pynvml.nvmlInit()
        handle = _handle(pynvml, device)
    except Exception as exc:  # noqa: BLE001 - NVMLError and friends: no readings, said once
        log.info("%s: no GPU readings: NVML unavailable (%s)", who, exc)
        return None
    return NvmlReader(pynvml, handle)


def gpu_label(device: Any) -> str:
    """The `gpu` label of a device's metrics: its CUDA index."""
    return str(getattr(device, "index", 0) or 0)


class GpuProbe:
    """The Prometheus readings of one CUDA device: utilisation ratio, memory used and total."""

    def __init__(self, reader: GpuReader, label: str) -> None:
        self.reader, self.label = reader, label

    @classmethod
    def open(cls, device: Any, who: str) -> GpuProbe | None:
        """A probe of torch device `device`, or None when NVML is not there."""
        reader = open_reader(device, who)
        return cls(reader, gpu_label(device)) if reader is not None else None

    def readings(self) -> list[Reading]:
        util, used, total = self.reader.read()
        labels = {"gpu": self.label}
        return [
            Reading("peaknet_gpu_utilization_ratio", labels, util),
            Reading("peaknet_gpu_memory_used_bytes", labels, used),
            Reading("peaknet_gpu_memory_total_bytes", labels, total),
        ]


def _handle(nvml: Any, device: Any) -> Any:
    import torch

    index = device.index if getattr(device, "index", None) is not None else 0
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    if uuid is not None:
        text = str(uuid)
        return nvml.nvmlDeviceGetHandleByUUID(text if text.startswith("GPU-") else f"GPU-{text}")
    visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    physical = visible[index] if index < len(visible) else str(index)
    if physical.startswith(("GPU-", "MIG-")):
        return nvml.nvmlDeviceGetHandleByUUID(physical)
    return nvml.nvmlDeviceGetHandleByIndex(int(physical))
