"""Training on the random source: labels from the injected positions, the preprocessing
inference applies, the loss's answer to class imbalance, the schedule, and reproducibility
(two runs with one seed give one loss curve). Tiny frames and a tiny model: seconds."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from helpers import SMALL_MODEL
from peaknet_pipeline.config import ModelConfig, RandomSourceConfig
from peaknet_pipeline.inference.engine import Engine
from peaknet_pipeline.inference.geometry import geometry, pad_into
from peaknet_pipeline.sources.random import FrameGenerator, peak_positions
from peaknet_pipeline.training.data import (
    frame_config,
    labelled_frames,
    model_input,
    peak_mask,
)
from peaknet_pipeline.training.loop import (
    init_model,
    learning_rate,
    segmentation_loss,
    train,
)
from peaknet_pipeline.training.settings import TRAIN_SEED_BASE, FrameRanges, TrainSettings

TINY = RandomSourceConfig(frame_shape=[1, 64, 64], peaks_per_frame=4)
TINY_SETTINGS = TrainSettings(steps=3, batch_size=2, warmup_steps=2)


def brute_force_mask(peaks: np.ndarray, shape: tuple[int, int, int], radius: float) -> np.ndarray:
    c, h, w = np.indices(shape)
    mask = np.zeros(shape, dtype=bool)
    for panel, row, col in peaks:
        mask |= (c == panel) & ((h - row) ** 2 + (w - col) ** 2 <= radius**2)
    return mask


# -- labels ------------------------------------------------------------------------------------
@pytest.mark.parametrize("radius", [0.5, 1.0, 1.5, 2.5])
def test_peak_mask_is_every_pixel_within_the_radius_of_an_injected_centre(radius):
    cfg = RandomSourceConfig(frame_shape=[2, 40, 50], peaks_per_frame=12, seed=3)
    for event in range(4):
        peaks = peak_positions(cfg, event)
        expected = brute_force_mask(peaks, (2, 40, 50), radius)
        assert np.array_equal(peak_mask(peaks, (2, 40, 50), radius), expected)


def test_peak_mask_of_a_pixel_centred_peak():
    peaks = np.array([[0.0, 10.0, 20.0]])
    assert peak_mask(peaks, (1, 32, 32), 1.0).sum() == 5  # the pixel and its 4 neighbours
    assert peak_mask(peaks, (1, 32, 32), 1.5).sum() == 9  # and the diagonals (1.41 px)
    assert not peak_mask(np.empty((0, 3)), (1, 32, 32), 1.5).any()


def test_training_frames_are_the_random_sources_frames_and_ground_truth():
    frames, masks = labelled_frames(
        TINY, FrameRanges(), range(TRAIN_SEED_BASE, TRAIN_SEED_BASE + 3), 1.5
    )
    for i, seed in enumerate(range(TRAIN_SEED_BASE, TRAIN_SEED_BASE + 3)):
        cfg = frame_config(TINY, FrameRanges(), seed)
        assert np.array_equal(frames[i], FrameGenerator(cfg).batch(np.array([0]))[0])
        assert np.array_equal(masks[i], peak_mask(peak_positions(cfg, 0), (1, 64, 64), 1.5))
    assert not np.array_equal(frames[0], frames[1])


def test_frame_settings_stay_within_the_ranges_around_the_config():
    base = RandomSourceConfig(peak_amplitude=200.0, background_mean=10.0, peaks_per_frame=20)
    drawn = [frame_config(base, FrameRanges(), TRAIN_SEED_BASE + i) for i in range(200)]
    amps = [c.peak_amplitude for c in drawn]
    backgrounds = [c.background_mean for c in drawn]
    counts = [c.peaks_per_frame for c in drawn]
    assert 40 <= min(amps) < 60 and 700 < max(amps) <= 1000
    assert 1 <= min(backgrounds) < 1.5 and 30 < max(backgrounds) <= 40
    assert min(counts) == 0 and max(counts) == 40
    assert {c.seed for c in drawn} == set(range(TRAIN_SEED_BASE, TRAIN_SEED_BASE + 200))


def test_model_input_is_what_the_inference_engine_computes_on():
    """Padding (centre, non-multiple-of-32 frames) and normalisation as the CPU runner does."""
    frames = FrameGenerator(RandomSourceConfig(frame_shape=[2, 50, 70])).batch(np.arange(3))
    x, geo = model_input(frames, "center")
    ref_geo = geometry(frames.shape, "center")
    staged = np.empty((ref_geo.n, ref_geo.padded_height, ref_geo.padded_width), np.float32)
    pad_into(staged, frames, ref_geo)
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, inp):
            seen.append(inp.clone())
            return torch.zeros(inp.shape[0], 2, *inp.shape[2:])

    Engine(Recorder()).compute(torch.from_numpy(staged)[:, None], ref_geo)
    assert geo == ref_geo and x.shape == (6, 1, 64, 96)
    assert torch.equal(x, seen[0])


# -- loss and schedule -------------------------------------------------------------------------
def test_predicting_no_peaks_is_not_cheap_despite_class_imbalance():
    """Peaks are ~0.2% of pixels: plain cross-entropy of an all-background answer is tiny;
    with the peak weight and Dice it costs more than a fat but complete answer."""
    target = torch.zeros(1, 128, 128, dtype=torch.int64)
    target[0, 60:63, 60:63] = 1  # one 3x3 peak: 0.05% of the pixels
    confident = 8.0

    def logits(peak_pixels: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(1, 2, 128, 128)
        out[:, 0] = confident
        out[0, 1][peak_pixels] = 2 * confident
        return out

    nothing = logits(torch.zeros(128, 128, dtype=torch.bool))
    exact = logits(target[0].bool())
    fat = torch.zeros(128, 128, dtype=torch.bool)
    fat[58:65, 58:65] = True  # 49 pixels for 9
    plain_ce = torch.nn.functional.cross_entropy(nothing, target)
    assert plain_ce < 0.01  # what an unweighted loss would teach: predict nothing
    loss = {
        name: segmentation_loss(lg, target, peak_weight=5.0, dice_weight=1.0)
        for name, lg in (("nothing", nothing), ("exact", exact), ("fat", logits(fat)))
    }
    assert loss["exact"] < loss["fat"] < loss["nothing"]
    assert loss["nothing"] > 0.9  # Dice of no overlap is 1


def test_learning_rate_warms_up_then_decays_to_a_floor():
    s = TrainSettings(steps=100, warmup_steps=10, lr=1e-3)
    rates = [learning_rate(step, s) for step in range(100)]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(rates[9:], rates[10:]))
    assert math.isclose(rates[-1], 1e-3 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * 89 / 90))))


# -- reproducibility ---------------------------------------------------------------------------
def _tiny_run(seed: int) -> tuple[list[float], dict[str, torch.Tensor]]:
    settings = replace(TINY_SETTINGS, seed=seed)
    model = init_model(ModelConfig(**SMALL_MODEL), seed)
    losses = train(model, TINY, settings)
    return losses, model.state_dict()


def test_a_short_training_run_is_reproducible_from_its_seed():
    first, weights = _tiny_run(seed=5)
    again, weights_again = _tiny_run(seed=5)
    other, _ = _tiny_run(seed=6)
    assert first == again  # bit for bit, step by step
    assert all(torch.equal(weights[k], weights_again[k]) for k in weights)
    assert other != first  # the seed matters: this is not a constant curve
    assert len(first) == 3 and all(math.isfinite(v) for v in first)


def test_training_leaves_torch_deterministic_mode_as_it_found_it():
    assert not torch.are_deterministic_algorithms_enabled()
    train(init_model(ModelConfig(**SMALL_MODEL), 0), TINY, TINY_SETTINGS, stop_after=1)
    assert not torch.are_deterministic_algorithms_enabled()


def test_training_lowers_the_loss():
    """Not a quality test (see test_demo_weights.py and test_peaknet_end_to_end.py), only that the steps move downhill."""
    settings = TrainSettings(steps=12, batch_size=2, warmup_steps=2, lr=3e-3)
    losses = train(init_model(ModelConfig(**SMALL_MODEL), 0), TINY, settings)
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
