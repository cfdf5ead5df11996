"""PeakNet: ConvNeXt-V2 backbone, BiFPN and a segmentation head (upstream weight layout).

Module names follow upstream checkpoints, so a state dict saved from the upstream model loads
here with ``strict=True``: `backbone.*`, `backbone_to_bifpn.{i}`, `bifpn.blocks.{b}.*`,
`seg_lateral_layers.{i}.layers.{k}.{0,1}`, `head_segmask`, `head_upsample_layer.0`.
Input (B, 1, H, W) with H, W multiples of 32; output logits (B, num_classes, H, W).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import nn

from .backbone import build_backbone
from .bifpn import BiFPN, resample

STRIDE = 32  # input sides must be multiples of this (stride-4 stem, three stride-2 stages)
GROUPS = 32  # GroupNorm groups in the segmentation head


@dataclass(frozen=True)
class PeakNetSpec:
    """The architecture hyper-parameters (upstream's flat names; defaults: the "tiny" model)."""

    hidden_sizes: Sequence[int] = (96, 192, 384, 768)
    depths: Sequence[int] = (3, 3, 9, 3)
    bifpn_num_blocks: int = 2
    bifpn_num_features: int = 256
    seg_out_channels: int = 256
    num_classes: int = 2
    uses_learned_upsample: bool = False

    @classmethod
    def from_config(cls, cfg) -> PeakNetSpec:
        """From a `ModelConfig` (or anything with the same attribute names): every field of
        the spec by its name, lists as tuples (the spec is frozen and hashable)."""
        values = {f.name: getattr(cfg, f.name) for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


class SegLateralLayer(nn.Module):
    """One head branch: `num_layers` x (conv 3x3 -> GroupNorm -> GELU [-> bilinear x2])."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, upsample: bool):
        super().__init__()
        self.upsample = upsample
        self.layers = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(in_channels if k == 0 else out_channels, out_channels, 3, padding=1),
                nn.GroupNorm(GROUPS, out_channels),
                nn.GELU(),
            )
            for k in range(num_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
            if self.upsample:
                x = resample(x, 2.0)
        return x


class PeakNet(nn.Module):
    def __init__(self, spec: PeakNetSpec | None = None) -> None:
        super().__init__()
        spec = spec or PeakNetSpec()
        self.spec = spec
        width, seg = spec.bifpn_num_features, spec.seg_out_channels
        self.backbone = build_backbone(spec.hidden_sizes, spec.depths)
        self.backbone_to_bifpn = nn.ModuleList(nn.Conv2d(c, width, 1) for c in spec.hidden_sizes)
        self.bifpn = BiFPN(width, spec.bifpn_num_blocks)
        # Branch i sees stride 4 * 2**i: i doublings bring it back to stride 4 (at least 1 conv).
        self.seg_lateral_layers = nn.ModuleList(
            SegLateralLayer(width, seg, num_layers=max(i, 1), upsample=i > 0) for i in range(4)
        )
        self.head_segmask = nn.Conv2d(seg, spec.num_classes, 1)
        if spec.uses_learned_upsample:
            self.head_upsample_layer = nn.Sequential(
                nn.ConvTranspose2d(seg, spec.num_classes, kernel_size=6, stride=4, padding=1)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x)
        features = self.backbone(x)  # strides 4, 8, 16, 32, finest first
        features = self.bifpn([conv(f) for conv, f in zip(self.backbone_to_bifpn, features)])
        # Summed coarsest first, the order upstream accumulates in (same rounding).
        branches = list(zip(self.seg_lateral_layers, features))[::-1]
        acc = branches[0][0](branches[0][1])
        for branch, feature in branches[1:]:
            acc = acc + branch(feature)
        logits = resample(self.head_segmask(acc), 4.0).float()
        if self.spec.uses_learned_upsample:
            logits = logits + self.head_upsample_layer(acc).float()
        return logits


def check_input(x: torch.Tensor) -> None:
    """A clear error instead of a shape mismatch deep inside the BiFPN."""
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"PeakNet expects input (B, 1, H, W), got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h % STRIDE or w % STRIDE:
        raise ValueError(
            f"PeakNet needs H and W to be multiples of {STRIDE}, got {h}x{w}; "
            "pad the frames (inference.pad_mode: center or bottom_right)"
        )
