"""The BiFPN that fuses the four backbone levels (weight-compatible with upstream PeakNet).

Levels are named 4..7 (finest to coarsest; `base_level = 4`). A block runs a top-down path
(`m` convs) and a bottom-up path (`q` convs), each step a fast normalised fusion of its inputs,
a conv block and a residual add of the level's input. Resampling runs in fp32 so autocast to
bf16/fp16 keeps the interpolation exact enough at large frame sizes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BASE_LEVEL = 4
NUM_LEVELS = 4
FUSION_EPS = 1e-5
NORM_EPS = 1e-6


def resample(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Bilinear resampling computed in fp32, returned in the input's dtype."""
    y = F.interpolate(x.float(), scale_factor=scale, mode="bilinear", align_corners=False)
    return y.to(x.dtype)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over channels of a (B, C, H, W) map (ConvNeXt's channels-first norm)."""

    def __init__(self, channels: int, eps: float = NORM_EPS) -> None:
        super().__init__(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(
            x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps
        )
        return y.permute(0, 3, 1, 2)


class SeparableConv(nn.Module):
    """Depthwise then pointwise conv, no bias (upstream uses kernel size 1 for both)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.depthwise_conv = nn.Conv2d(channels, channels, 1, groups=channels, bias=False)
        self.pointwise_conv = nn.Conv2d(channels, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


def conv_block(channels: int) -> nn.Sequential:
    """Names `.0.depthwise_conv`, `.0.pointwise_conv`, `.1` (norm) as in upstream checkpoints."""
    return nn.Sequential(SeparableConv(channels), LayerNorm2d(channels), nn.GELU())


def fuse(weights: torch.Tensor, inputs: list[torch.Tensor]) -> torch.Tensor:
    """Fast normalised fusion: sum(w_i * x_i) / (sum(w) + eps) with w = relu(weights)."""
    w = torch.relu(weights)
    total = w[0] * inputs[0]
    for wi, xi in zip(w[1:], inputs[1:]):
        total = total + wi * xi
    return total / (w.sum() + FUSION_EPS)


class BiFPNBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        levels = range(BASE_LEVEL, BASE_LEVEL + NUM_LEVELS)
        self.levels = list(levels)
        self.conv = nn.ModuleDict()
        for level in self.levels[:-1]:
            self.conv[f"m{level}"] = conv_block(channels)
        for level in self.levels[1:]:
            self.conv[f"q{level}"] = conv_block(channels)
        steps = NUM_LEVELS - 1
        self.w_m = nn.Parameter(torch.ones(steps, 2))
        self.w_q = nn.Parameter(torch.ones(steps, 3))
        # At the coarsest level the level input and the top-down result are the same map,
        # so the first of the three bottom-up weights is switched off there.
        mask = torch.ones(steps, 3, dtype=torch.bool)
        mask[-1, 0] = False
        self.register_buffer("w_q_mask", mask)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        p = dict(zip(self.levels, features))
        lo, hi = self.levels[0], self.levels[-1]
        m = {hi: p[hi]}
        for step, level in enumerate(range(hi - 1, lo - 1, -1)):
            fused = fuse(self.w_m[step], [p[level], resample(m[level + 1], 2.0)])
            m[level] = self.conv[f"m{level}"](fused) + p[level]
        q = {lo: m[lo]}
        w_q = self.w_q * self.w_q_mask
        for step, level in enumerate(range(lo + 1, hi + 1)):
            fused = fuse(w_q[step], [p[level], m[level], resample(q[level - 1], 0.5)])
            q[level] = self.conv[f"q{level}"](fused) + p[level]
        return [q[level] for level in self.levels]


class BiFPN(nn.Module):
    def __init__(self, channels: int, num_blocks: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(BiFPNBlock(channels) for _ in range(num_blocks)))

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.blocks(features)
