"""The ConvNeXt-V2 backbone with one input channel, written here from its published structure.

Module names are those of upstream PeakNet checkpoints, which were saved from transformers'
`ConvNextV2Backbone` (`backbone.embeddings.*`, `backbone.encoder.stages.{i}.*`,
`backbone.hidden_states_norms.stage{n}.*`), so their state dicts load here with `strict=True`
and give the same feature maps (tests/unit/test_backbone.py holds it to transformers' own
module). Why not import transformers' module: importing it costs about 2 s of CPU in every
process that builds or sizes a model (the driver and each inference actor), most of it
torch.distributed, sympy and scipy pulled in by transformers' model-loading machinery.
The structure is in ../shared/reference/peaknet-model.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .bifpn import LayerNorm2d

STAGES = ["stage1", "stage2", "stage3", "stage4"]
EPS = 1e-6  # every norm of the backbone
PATCH = 4  # the stem's kernel and stride
INIT_STD = 0.02  # random weights: conv and linear weights ~ N(0, 0.02), biases 0 (as upstream)


class GRN(nn.Module):
    """Global response normalisation over (B, H, W, C): each channel's spatial L2 norm,
    relative to the mean over channels, scales the input; `weight` and `bias` start at 0 so a
    new layer is the identity."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.bias = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = torch.linalg.vector_norm(x, ord=2, dim=(1, 2), keepdim=True)
        relative = norm / (norm.mean(dim=-1, keepdim=True) + EPS)
        return self.weight * (x * relative) + self.bias + x


class Block(nn.Module):
    """dwconv 7x7 -> LayerNorm -> Linear(d, 4d) -> GELU -> GRN -> Linear(4d, d), plus the input.
    The pointwise part runs channels-last (Linear layers), as the checkpoints store it."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.layernorm = nn.LayerNorm(dim, eps=EPS)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.grn = GRN(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layernorm(self.dwconv(x).permute(0, 2, 3, 1))
        y = self.pwconv2(self.grn(self.act(self.pwconv1(y))))
        return x + y.permute(0, 3, 1, 2)


class Stage(nn.Module):
    """`depth` blocks, after a LayerNorm + 2x2 stride-2 conv in every stage but the first
    (the first's `downsampling_layer` is empty: the stem already brought it to stride 4)."""

    def __init__(self, in_dim: int, out_dim: int, depth: int, downsample: bool) -> None:
        super().__init__()
        self.downsampling_layer = nn.ModuleList(
            [LayerNorm2d(in_dim, EPS), nn.Conv2d(in_dim, out_dim, kernel_size=2, stride=2)]
            if downsample
            else []
        )
        self.layers = nn.ModuleList(Block(out_dim) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.downsampling_layer:
            x = layer(x)
        for layer in self.layers:
            x = layer(x)
        return x


class Embeddings(nn.Module):
    """The stem: a 4x4 stride-4 conv from the one input channel, then a channels-first norm."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.patch_embeddings = nn.Conv2d(1, dim, kernel_size=PATCH, stride=PATCH)
        self.layernorm = LayerNorm2d(dim, EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layernorm(self.patch_embeddings(x))


class Encoder(nn.Module):
    def __init__(self, hidden_sizes: Sequence[int], depths: Sequence[int]) -> None:
        super().__init__()
        ins = [hidden_sizes[0], *hidden_sizes[:-1]]
        self.stages = nn.ModuleList(
            Stage(i, o, d, downsample=n > 0)
            for n, (i, o, d) in enumerate(zip(ins, hidden_sizes, depths))
        )


class ConvNeXtV2Backbone(nn.Module):
    """The four stage outputs (strides 4, 8, 16, 32), each through its own channels-first
    norm, finest first."""

    def __init__(self, hidden_sizes: Sequence[int], depths: Sequence[int]) -> None:
        super().__init__()
        if len(hidden_sizes) != len(STAGES) or len(depths) != len(STAGES):
            raise ValueError(
                f"the backbone has {len(STAGES)} stages: hidden_sizes {list(hidden_sizes)} "
                f"and depths {list(depths)} must each have {len(STAGES)} entries"
            )
        self.embeddings = Embeddings(hidden_sizes[0])
        self.encoder = Encoder(hidden_sizes, depths)
        self.hidden_states_norms = nn.ModuleDict(
            {name: LayerNorm2d(dim, EPS) for name, dim in zip(STAGES, hidden_sizes)}
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.embeddings(x)
        features = []
        for name, stage in zip(STAGES, self.encoder.stages):
            x = stage(x)
            features.append(self.hidden_states_norms[name](x))
        return features

    @torch.no_grad()
    def init_random_(self) -> None:
        """Upstream's random initialisation: conv and linear weights N(0, 0.02) with zero
        biases over PyTorch's defaults, norms at weight 1 and bias 0, GRN at 0. The encoder is
        drawn before the stem, the order transformers' module draws in, so that a seed gives
        the weights it gave (the demo weights' training is reproducible from its sidecar)."""
        for part in (self.encoder, self.embeddings):
            for module in part.modules():
                if isinstance(module, nn.Conv2d | nn.Linear):
                    nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
                    nn.init.zeros_(module.bias)


def build_backbone(hidden_sizes: Sequence[int], depths: Sequence[int]) -> nn.Module:
    """A randomly initialised backbone returning the four normalised stage outputs."""
    backbone = ConvNeXtV2Backbone(hidden_sizes, depths)
    # Meta tensors (weights.meta_model, with which the driver checks a weights file) hold no
    # values to draw, and drawing there loads torch's compiler stack: 0.8 s of CPU per driver.
    if not next(backbone.parameters()).is_meta:
        backbone.init_random_()
    return backbone
