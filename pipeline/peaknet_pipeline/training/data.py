"""Training frames: the random source's own generator and ground truth, prepared exactly as
inference prepares its input.

Frames come from `sources.random.FrameGenerator` and the labels from `peak_positions` (the
injected centres): a pixel is a peak pixel when its centre lies within `mask_radius_px` of an
injected centre. Every frame gets its own generator seed, peak amplitude, background level
and peak count (drawn from ranges; see `FrameRanges`), so the network sees many more
backgrounds than the source's pool of eight, and a range of contrasts around the config's.

Training generator seeds start at `TRAIN_SEED_BASE`; every evaluation (the demo's seed 0, the
tests' held-back seeds) uses seeds below it, so no evaluated frame was ever trained on.

`model_input` is the inference path's own preprocessing (inference/geometry.py padding,
inference/engine.py `normalize_`): per-panel images, zero-padded to multiples of 32,
normalised with statistics of the real pixels only.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..config import RandomSourceConfig
from ..inference.engine import normalize_
from ..inference.geometry import Geometry, PadMode, geometry, pad_into
from ..sources.random import FrameGenerator, peak_positions
from .settings import FrameRanges


def peak_mask(peaks: np.ndarray, shape: tuple[int, int, int], radius_px: float) -> np.ndarray:
    """Boolean (C, H, W): pixels whose centre is within `radius_px` of an injected centre
    (rows of `peaks` are (panel, row, col), pixel-index coordinates as the generator uses)."""
    mask = np.zeros(shape, dtype=bool)
    if not len(peaks):
        return mask
    reach = math.ceil(radius_px)
    off = np.arange(-reach, reach + 1)
    panel = peaks[:, 0].astype(np.intp)[:, None, None]
    rows = np.rint(peaks[:, 1]).astype(np.intp)[:, None, None] + off[None, :, None]
    cols = np.rint(peaks[:, 2]).astype(np.intp)[:, None, None] + off[None, None, :]
    near = (rows - peaks[:, 1, None, None]) ** 2 + (cols - peaks[:, 2, None, None]) ** 2
    near = near <= radius_px**2
    inside = near & (rows >= 0) & (rows < shape[1]) & (cols >= 0) & (cols < shape[2])
    rows, cols = np.broadcast_arrays(rows, cols)
    panel = np.broadcast_to(panel, rows.shape)
    mask[panel[inside], rows[inside], cols[inside]] = True
    return mask


def frame_config(base: RandomSourceConfig, ranges: FrameRanges, seed: int) -> RandomSourceConfig:
    """The generator config of one training frame: `base` (shape, peak width, separation,
    dtype) with this frame's own seed, amplitude, background and peak count, drawn from
    `seed` within `ranges` (factors of base's values)."""
    rng = np.random.default_rng((seed, 7))

    def log_uniform(low: float, high: float) -> float:
        return math.exp(rng.uniform(math.log(low), math.log(high)))

    low, high = ranges.peaks_per_frame
    return base.model_copy(
        update={
            "seed": seed,
            "peak_amplitude": base.peak_amplitude * log_uniform(*ranges.amplitude),
            "background_mean": base.background_mean * log_uniform(*ranges.background),
            "peaks_per_frame": int(
                rng.integers(
                    round(low * base.peaks_per_frame), round(high * base.peaks_per_frame) + 1
                )
            ),
            "pool_size": 1,
            "num_frames": 1,
        }
    )


def labelled_frames(
    base: RandomSourceConfig, ranges: FrameRanges, seeds: range, radius_px: float
) -> tuple[np.ndarray, np.ndarray]:
    """Frames (B, C, H, W) from the random source's generator and their peak masks, one
    generator seed per frame."""
    frames, masks = [], []
    for seed in seeds:
        cfg = frame_config(base, ranges, seed)
        frames.append(FrameGenerator(cfg).batch(np.zeros(1, dtype=np.int64))[0])
        masks.append(peak_mask(peak_positions(cfg, 0), tuple(cfg.frame_shape), radius_px))
    return np.stack(frames), np.stack(masks)


def model_input(frames: np.ndarray, pad_mode: PadMode) -> tuple[torch.Tensor, Geometry]:
    """(n, 1, Hp, Wp) float32 model input of (B, C, H, W) frames, padded and normalised as the
    inference engine does, with the geometry to crop outputs back."""
    geo = geometry(frames.shape, pad_mode)
    staged = np.empty(geo.input_shape[:1] + geo.input_shape[2:], dtype=np.float32)
    pad_into(staged, frames, geo)
    return normalize_(torch.from_numpy(staged)[:, None], geo), geo


def target_tensor(masks: np.ndarray, geo: Geometry) -> torch.Tensor:
    """(n, H, W) int64 class index per real pixel (1 = Bragg peak) of (B, C, H, W) masks."""
    return torch.from_numpy(masks.reshape(geo.n, geo.height, geo.width).astype(np.int64))
