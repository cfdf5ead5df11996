"""The torch side of inference: normalisation, the forward pass under autocast, argmax on the
device and cropping back to the original frame (padding geometry is in geometry.py).

Nothing here knows about queues or threads, so each piece is unit-tested on its own.

Normalisation (per model input, i.e. per panel (1, H, W)): statistics come from the REAL pixels
only, then the whole padded image (pad included) is normalised with them. The pad is raw zeros,
as upstream pads, but because it does not enter the statistics, a frame's normalised values
(and so its peaks) do not depend on how much padding its size needed or where it went.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from .geometry import Geometry, OutputKind

NORM_EPS = 1e-6
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def normalize_(x: torch.Tensor, geo: Geometry, eps: float = NORM_EPS) -> torch.Tensor:
    """In place on (n, 1, Hp, Wp): (x - mean) / sqrt(var + eps), statistics over the real pixels
    of each image only (see the module docstring)."""
    real = x[:, :, geo.rows, geo.cols]
    var, mean = torch.var_mean(real, dim=(1, 2, 3), correction=0, keepdim=True)
    return x.sub_(mean).div_(torch.sqrt(var + eps))


def class_index(logits: torch.Tensor) -> torch.Tensor:
    """argmax over dim 1 of (n, K, H, W) logits as uint8, equal to `logits.argmax(dim=1)`
    everywhere, ties (class 0) and NaN (the first NaN class) included. Two classes are
    compared rather than reduced: on the CPU, argmax over a dimension of size 2 is a strided
    reduction that took 275 ms a 1691x1691 frame on one thread, the comparison a few ms
    (bench/argmax_bench.py)."""
    if logits.shape[1] != 2:
        return logits.argmax(dim=1).to(torch.uint8)
    background, peak = logits[:, 0], logits[:, 1]
    if logits.device.type == "cpu" and not bool(peak.isnan().any()):
        # Without a NaN peak logit the comparison alone is argmax (a NaN background compares
        # False: class 0, as argmax says); the NaN terms are most of the cost on the CPU. The
        # check reads a value back, so a GPU (where the terms are cheap) skips it.
        return (peak > background).to(torch.uint8)
    return ((peak > background) | (peak.isnan() & ~background.isnan())).to(torch.uint8)


def to_output(logits: torch.Tensor, geo: Geometry, kind: OutputKind) -> torch.Tensor:
    """Cropped compact output, still on the logits' device: the uint8 class index per pixel
    (n, H, W) (1 = Bragg peak), or float32 logits (n, K, H, W)."""
    if kind == "mask":
        return class_index(logits[:, :, geo.rows, geo.cols])
    return logits[:, :, geo.rows, geo.cols].float().contiguous()


ENGINE_SETTINGS = ("precision", "output", "normalize", "channels_last", "compile")
"""The fields of the config's `inference` section that choose how the engine runs."""


class Engine:
    """The model plus how to run it: device, autocast precision, memory format, output kind."""

    def __init__(
        self,
        model: torch.nn.Module,
        device: str = "cpu",
        precision: str = "fp32",
        output: OutputKind = "mask",
        normalize: bool = True,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        self.device = torch.device(device)
        self.output = output
        # The threshold oracle compares raw detector values; normalising would change its units.
        self.normalize = normalize and not getattr(model, "wants_raw_input", False)
        self.channels_last = channels_last
        self.autocast_dtype = AUTOCAST_DTYPES[precision]
        model = model.to(self.device).eval()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = torch.compile(model) if compile else model

    @classmethod
    def of_settings(cls, model: torch.nn.Module, device: str, settings: Any) -> Engine:
        """An engine as the config's `inference` section asks (any object with its fields, so
        this module needs no pydantic)."""
        return cls(
            model,
            device,
            **{name: getattr(settings, name) for name in ENGINE_SETTINGS},
        )

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def compute(self, x: torch.Tensor, geo: Geometry) -> torch.Tensor:
        """Padded input (n, 1, Hp, Wp) on the device (normalised in place) -> cropped output."""
        with torch.inference_mode():
            if self.normalize:
                normalize_(x, geo)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self.autocast():
                logits = self.model(x)
            return to_output(logits, geo, self.output)

    def warmup(self, geo: Geometry, iters: int) -> None:
        """Run `iters` forward passes on a zero batch of this geometry (allocations, kernels,
        compilation) so the first real batch is not the slow one."""
        x = torch.zeros(geo.input_shape, device=self.device)
        for _ in range(iters):
            self.compute(x.clone(), geo)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
