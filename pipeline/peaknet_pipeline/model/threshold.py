"""The threshold model: a documented test/debug oracle, not a peak finder.

It marks a pixel as a peak when its raw value exceeds `threshold` and returns logits-like
output (B, 2, H, W) so the inference path (argmax on the device, crop, mask) is the same as for
PeakNet. It reads the RAW frame: the inference engine skips normalisation for it
(`wants_raw_input`), because a threshold in detector units (ADU, photons) is what a test that
injects peaks of known amplitude can reason about, and it does not change with the frame's
statistics. Equality is not a peak (argmax picks class 0 on ties).
"""

from __future__ import annotations

import torch
from torch import nn


class ThresholdModel(nn.Module):
    wants_raw_input = True

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = float(threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"ThresholdModel expects (B, 1, H, W), got {tuple(x.shape)}")
        x = x.float()
        return torch.cat([torch.zeros_like(x), x - self.threshold], dim=1)
