"""Training a PeakNet on synthetic frames: loss, optimiser, schedule and the loop.

Recipe (chosen for a small network that must learn in a few minutes on two CPU cores):

- Loss: cross-entropy with the peak class weighted `peak_weight` times, plus a soft Dice loss
  on the peak class. Peak pixels are about 0.2% of a frame. Plain cross-entropy is then
  minimised by predicting almost no peaks (recall collapses at low contrast); weighting the
  peak class alone pushes the other way and fattens masks until faint noise blobs become
  spurious peaks. Dice scores the overlap of predicted and true peak pixels, so it does not
  care how many background pixels there are and balances the two: recall and precision are
  both what the peak finder downstream needs, since every component of the mask is a peak.
- Optimiser: AdamW (lr `lr`, weight decay `weight_decay`) with a linear warm-up over the
  first `warmup_steps` and a cosine decay to 5% of `lr`: the warm-up keeps the first steps
  of a freshly initialised LayerNorm/GRN network from diverging, the decay settles it.
- Augmentation: every frame is a fresh draw from the random source's generator (its own seed,
  so its own Poisson background, peak positions and, via `FrameRanges`, amplitude, background
  level and peak count). The generator flips its backgrounds already; no other augmentation
  is needed for synthetic data of unlimited supply.

Determinism: the model is initialised from `seed`, every frame's content is a pure function
of (seed, step, index), and torch runs deterministic kernels; on a given machine and thread
count a rerun reproduces the loss curve (other thread counts change float sums slightly).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig, RandomSourceConfig
from ..inference.geometry import PadMode
from ..model import PeakNet, PeakNetSpec
from .data import labelled_frames, model_input, target_tensor
from .settings import TRAIN_SEED_BASE, TrainSettings

DICE_SMOOTH = 1.0
FINAL_LR_FRACTION = 0.05


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, peak_weight: float, dice_weight: float
) -> torch.Tensor:
    """Weighted cross-entropy + soft Dice of the peak class (see the module docstring).
    `logits` (n, 2, H, W), `target` (n, H, W) int64 with 1 = peak."""
    weight = torch.tensor([1.0, peak_weight], device=logits.device)
    ce = F.cross_entropy(logits, target, weight=weight)
    peak = logits.softmax(dim=1)[:, 1]
    truth = target.to(peak.dtype)
    overlap = (peak * truth).sum()
    dice = 1 - (2 * overlap + DICE_SMOOTH) / (peak.sum() + truth.sum() + DICE_SMOOTH)
    return ce + dice_weight * dice


def learning_rate(step: int, s: TrainSettings) -> float:
    """Linear warm-up, then cosine decay to FINAL_LR_FRACTION of the peak rate."""
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    done = (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps)
    return s.lr * (
        FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * done))
    )


def init_model(model_cfg: ModelConfig, seed: int) -> PeakNet:
    """A freshly initialised PeakNet of the configured architecture, from `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return PeakNet(PeakNetSpec.from_config(model_cfg))


def batch_seeds(s: TrainSettings, step: int) -> range:
    """Generator seeds of the frames of `step`: distinct for every (seed, step, frame)."""
    first = TRAIN_SEED_BASE + (s.seed * 1_000_003 + step) * s.batch_size
    return range(first, first + s.batch_size)


@dataclass
class StepReport:
    step: int
    loss: float
    lr: float
    elapsed_s: float


def train(
    model: nn.Module,
    source: RandomSourceConfig,
    s: TrainSettings,
    pad_mode: PadMode = "center",
    device: str = "cpu",
    on_step: Callable[[StepReport], None] | None = None,
    stop_after: int | None = None,
) -> list[float]:
    """Train `model` in place for `s.steps` steps (or only the first `stop_after` of them,
    with the same schedule); returns the loss of every step."""
    with deterministic_kernels():
        losses = _steps(model, source, s, pad_mode, torch.device(device), on_step, stop_after)
    model.eval()
    return losses


@contextlib.contextmanager
def deterministic_kernels() -> Iterator[None]:
    """torch's deterministic kernels (they matter on CUDA) for the duration, then as before."""
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)


def _steps(
    model: nn.Module,
    source: RandomSourceConfig,
    s: TrainSettings,
    pad_mode: PadMode,
    dev: torch.device,
    on_step: Callable[[StepReport], None] | None,
    stop_after: int | None,
) -> list[float]:
    model.to(dev).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    losses: list[float] = []
    t0 = time.perf_counter()
    for step in range(s.steps if stop_after is None else min(stop_after, s.steps)):
        frames, masks = labelled_frames(source, s.ranges, batch_seeds(s, step), s.mask_radius_px)
        x, geo = model_input(frames, pad_mode)
        target = target_tensor(masks, geo).to(dev)
        lr = learning_rate(step, s)
        for group in optimiser.param_groups:
            group["lr"] = lr
        logits = model(x.to(dev))[:, :, geo.rows, geo.cols]
        loss = segmentation_loss(logits, target, s.peak_weight, s.dice_weight)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(StepReport(step, losses[-1], lr, time.perf_counter() - t0))
    return losses
