"""Peaks found in torch (inference/peaks.py) equal the writer's CPU finder (writer/peaks.py):
on the random source's ground truth and on masks made to break a labelling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from peaknet_pipeline.config.models import RandomSourceConfig
from peaknet_pipeline.evaluate import Tally, injected_slab_peaks
from peaknet_pipeline.inference.peaks import component_labels, find_batch_peaks
from peaknet_pipeline.sources.random import FrameGenerator
from peaknet_pipeline.writer.peaks import PeakList, find_peaks

FIELDS = ("row", "col", "total", "max", "npix")
COUNTS = ("found", "dropped", "too_small", "too_large")


def both(images: np.ndarray, masks: np.ndarray, **rules) -> tuple[list, list[PeakList]]:
    """(the CPU finder's peaks per event, the torch finder's) for a (B, C, H, W) batch."""
    cpu = [find_peaks(images[i], masks[i], **rules) for i in range(images.shape[0])]
    device = find_batch_peaks(torch.from_numpy(masks), torch.from_numpy(images), **rules)
    return cpu, device.peak_lists()


def assert_same(cpu: list[PeakList], device: list[PeakList]) -> None:
    assert len(cpu) == len(device)
    for event, (a, b) in enumerate(zip(cpu, device)):
        for name in FIELDS:
            np.testing.assert_allclose(
                getattr(b, name), getattr(a, name), rtol=1e-12, atol=1e-12, err_msg=name
            )
        assert [getattr(b, n) for n in COUNTS] == [getattr(a, n) for n in COUNTS], event


def test_ground_truth_recovery_equals_the_cpu_finder():
    cfg = RandomSourceConfig(frame_shape=[2, 64, 96], peaks_per_frame=12, pool_size=2, seed=3)
    ids = np.arange(6)
    images = FrameGenerator(cfg).batch(ids)
    masks = (images > 60).astype(np.uint8)  # the threshold oracle's mask
    cpu, device = both(images, masks)
    assert_same(cpu, device)
    tallies = []
    for peaks in (cpu, device):
        tally = Tally()
        for event, p in zip(ids, peaks):
            tally.add(injected_slab_peaks(cfg, int(event)), np.column_stack([p.row, p.col]))
        tallies.append(tally.stats())
    a, b = tallies
    assert a["recovered_frac"] > 0.9  # the oracle finds them: the comparison means something
    assert abs(a["recovered_frac"] - b["recovered_frac"]) <= 0.05
    assert abs(a["spurious_frac"] - b["spurious_frac"]) <= 0.05
    err_a, err_b = a["position_error_px"], b["position_error_px"]
    assert abs(err_a["mean"] - err_b["mean"]) <= 0.05 and abs(err_a["p95"] - err_b["p95"]) <= 0.05


def test_diagonal_contact_is_one_peak_under_8_and_two_under_4():
    images = np.arange(36, dtype=np.float32).reshape(1, 1, 6, 6)
    masks = np.zeros((1, 1, 6, 6), np.uint8)
    masks[0, 0, 1, 1] = masks[0, 0, 2, 2] = masks[0, 0, 3, 1] = 1  # a V touching at corners
    masks[0, 0, 4:6, 4:6] = 1  # a square touching the V's arm nowhere
    for connectivity, n in ((8, 2), (4, 4)):
        cpu, device = both(images, masks, connectivity=connectivity)
        assert_same(cpu, device)
        assert device[0].n == n


def test_components_do_not_cross_panel_edges_or_the_frame_edge():
    images = np.ones((2, 3, 4, 5), np.float32)
    masks = np.zeros((2, 3, 4, 5), np.uint8)
    masks[0, 0, 3, :] = masks[0, 1, 0, :] = 1  # bottom row of panel 0 over top row of panel 1
    masks[0, 2, :, 4] = 1  # last column: must not wrap into column 0 of the next row
    masks[0, 2, 1:3, 0] = 1
    masks[1, 0, 0, 0] = masks[1, 0, 3, 4] = 1  # first and last pixel (the pad is cropped away)
    masks[1, 2, 3, 4] = 1  # last pixel of the last panel: not joined to event 0's first
    images[1, 2, 3, 4] = 7.0
    cpu, device = both(images, masks)
    assert_same(cpu, device)
    assert [p.n for p in device] == [4, 3]
    np.testing.assert_allclose(device[1].row, [0.0, 3.0, 2 * 4 + 3.0])


def test_one_pixel_peaks_and_the_size_filter():
    rng = np.random.default_rng(1)
    images = rng.normal(5, 3, (3, 2, 9, 11)).astype(np.float32)
    masks = (rng.random((3, 2, 9, 11)) < 0.2).astype(np.uint8)  # many lone pixels
    filtered = np.zeros(2, int)
    for rules in ({}, {"min_pixels": 2, "max_pixels": 3}, {"min_pixels": 1, "max_pixels": 1}):
        cpu, device = both(images, masks, **rules)
        assert_same(cpu, device)
        filtered += [sum(p.too_small for p in device), sum(p.too_large for p in device)]
    assert filtered.min() > 0  # both filters took something


def test_max_peaks_keeps_the_brightest_ties_in_raster_order():
    images = np.ones((2, 1, 8, 8), np.float32)
    masks = np.zeros((2, 1, 8, 8), np.uint8)
    masks[:, 0, ::2, ::2] = 1  # 16 one-pixel peaks per event
    images[0, 0, 6, 6] = images[0, 0, 0, 4] = 9.0  # two bright ones, the rest tie
    cpu, device = both(images, masks, max_peaks=5)
    assert_same(cpu, device)
    assert [(p.n, p.found, p.dropped) for p in device] == [(5, 16, 11)] * 2
    np.testing.assert_allclose(device[0].total, [1.0, 1.0, 9.0, 1.0, 9.0])  # (0,0) (0,2) (0,4)


def test_empty_masks_all_ones_and_awkward_values():
    images = np.zeros((3, 1, 5, 7), np.float32)
    masks = np.zeros((3, 1, 5, 7), np.uint8)
    masks[1] = 1  # all ones: one peak of 35 pixels
    images[1] = np.linspace(-2, 3, 35, dtype=np.float32).reshape(1, 5, 7)
    masks[2, 0, 1, 1:4] = 1
    images[2, 0, 1, 1:4] = [-1.0, np.nan, -2.0]  # no positive weight: the plain centroid
    for rules in ({}, {"max_pixels": 34}, {"max_peaks": 0}):
        cpu, device = both(images, masks, **rules)
        assert_same(cpu, device)
    nothing = find_batch_peaks(torch.zeros((2, 4, 4), dtype=torch.bool), torch.zeros((2, 4, 4)))
    assert nothing.counts.tolist() == [0, 0] and nothing.row.shape == (0,)


def test_random_masks_and_numpy_frames_equal_the_cpu_finder():
    rng = np.random.default_rng(7)
    for _ in range(15):
        b, c, h, w = (int(n) for n in [*rng.integers(1, 4, 2), *rng.integers(1, 16, 2)])
        images = rng.normal(size=(b, c, h, w)).astype(np.float32)
        masks = rng.random((b, c, h, w)) < rng.random()
        rules = {"connectivity": int(rng.choice([4, 8])), "max_peaks": int(rng.integers(0, 6))}
        cpu = [find_peaks(images[i], masks[i], **rules) for i in range(b)]
        # the CPU runner's form: frames as numpy arrays, only the masked pixels read
        assert_same(cpu, find_batch_peaks(torch.from_numpy(masks), images, **rules).peak_lists())


def test_a_serpent_converges_within_its_diameter():
    """A one-pixel-wide snake is the worst shape for propagation: the bound still holds."""
    on = torch.zeros((1, 9, 9), dtype=torch.bool)
    on[0, ::2, :] = True
    on[0, 1::4, 8] = on[0, 3::4, 0] = True  # 49 pixels in one path
    idx, label, rounds = component_labels(on)
    assert idx.numel() == 49 and bool((label == 0).all())
    assert rounds <= 49 + 1


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="differ"):
        find_batch_peaks(torch.zeros((1, 1, 4, 4)), torch.zeros((1, 1, 4, 5)))
    with pytest.raises(ValueError, match="connectivity"):
        find_batch_peaks(torch.zeros((1, 1, 4, 4)), torch.zeros((1, 1, 4, 4)), connectivity=6)
