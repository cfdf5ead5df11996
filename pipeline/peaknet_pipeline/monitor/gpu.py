"""GPU utilisation and memory through NVML, for the inference actor's metrics.

NVML comes from `nvidia-ml-py` (imported as `pynvml`), an optional dependency (the `gpu`
extra); without it, or without an NVIDIA driver, there are no GPU metrics and the actor says
so once in its log. NVML numbers devices physically and ignores CUDA_VISIBLE_DEVICES, so the
CUDA device is found by its UUID (as torch reports it), else by the index CUDA_VISIBLE_DEVICES
gives it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from .metrics import Reading

log = logging.getLogger(__name__)


class GpuProbe:
    """Readings of one CUDA device: utilisation ratio, memory used and total."""

    def __init__(self, nvml: Any, handle: Any, label: str) -> None:
        self.nvml, self.handle, self.label = nvml, handle, label

    @classmethod
    def open(cls, device: Any, who: str) -> GpuProbe | None:
        """A probe of torch device `device`, or None (the reason logged once) when NVML is
        not there."""
        try:
            import pynvml
        except ImportError:
            log.info("%s: no GPU metrics: nvidia-ml-py is not installed (the gpu extra)", who)
            return None
        try:
            pynvml.nvmlInit()
            handle = _handle(pynvml, device)
        except Exception as exc:  # noqa: BLE001 - NVMLError and friends: no metrics, said once
            log.info("%s: no GPU metrics: NVML unavailable (%s)", who, exc)
            return None
        return cls(pynvml, handle, str(getattr(device, "index", 0) or 0))

    def readings(self) -> list[Reading]:
        util = self.nvml.nvmlDeviceGetUtilizationRates(self.handle)
        memory = self.nvml.nvmlDeviceGetMemoryInfo(self.handle)
        labels = {"gpu": self.label}
        return [
            Reading("peaknet_gpu_utilization_ratio", labels, util.gpu / 100.0),
            Reading("peaknet_gpu_memory_used_bytes", labels, memory.used),
            Reading("peaknet_gpu_memory_total_bytes", labels, memory.total),
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
