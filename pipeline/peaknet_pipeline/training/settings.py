"""Training settings (no torch import: the CLI parser reads the defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field

# Generator seeds of training frames start here; every evaluation (the demo's source seed,
# the tests' held-back seeds) uses seeds below it, so no evaluated frame was trained on.
TRAIN_SEED_BASE = 1 << 40


@dataclass(frozen=True)
class FrameRanges:
    """How each training frame departs from the config's source, as factors of its
    `peak_amplitude`, `background_mean` and `peaks_per_frame`. Amplitude and background are
    drawn log-uniformly (contrast goes by ratio), the peak count uniformly (0 included: empty
    frames teach the network that a frame need not have peaks). The demo's source (amplitude
    200, background 10, 20 peaks) gives amplitudes 40-1000, backgrounds 1-40, 0-40 peaks."""

    amplitude: tuple[float, float] = (0.2, 5.0)
    background: tuple[float, float] = (0.1, 4.0)
    peaks_per_frame: tuple[float, float] = (0.0, 2.0)


@dataclass(frozen=True)
class TrainSettings:
    """Everything a training run depends on besides the architecture and the source shape."""

    steps: int = 600
    batch_size: int = 8
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    peak_weight: float = 5.0
    dice_weight: float = 1.0
    mask_radius_px: float = 1.5
    seed: int = 0
    ranges: FrameRanges = field(default_factory=FrameRanges)
