"""The ConvNeXt-V2 backbone: transformers' `ConvNextV2Backbone` with one input channel.

transformers' module names are exactly those of upstream PeakNet checkpoints
(`backbone.embeddings.*`, `backbone.encoder.stages.{i}.*`, `backbone.hidden_states_norms.*`),
so using it as-is (not a re-implementation, not a wrapper that would add a name level) is what
keeps upstream state dicts loadable. It is always built from a config: nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

STAGES = ["stage1", "stage2", "stage3", "stage4"]


def build_backbone(hidden_sizes: Sequence[int], depths: Sequence[int]) -> nn.Module:
    """A randomly initialised backbone returning the four normalised stage outputs."""
    from transformers import ConvNextV2Backbone, ConvNextV2Config

    config = ConvNextV2Config(
        num_channels=1,
        hidden_sizes=list(hidden_sizes),
        depths=list(depths),
        out_features=list(STAGES),
        drop_path_rate=0.0,
    )
    return ConvNextV2Backbone(config)


def stage_features(backbone: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Feature maps at strides 4, 8, 16, 32 (finest first), each through its stage norm."""
    return list(backbone(x).feature_maps)
