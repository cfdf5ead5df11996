"""`label_pixels` (labelling only the rows that hold peak pixels, packed) equals labelling the
whole frame, pixel for pixel and label for label, so `find_peaks` gives identical peak lists."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest
from scipy import ndimage

from peaknet_pipeline.writer import peaks
from peaknet_pipeline.writer.peaks import PeakList, find_peaks, label_pixels


def whole_frame(on: np.ndarray, connectivity: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The labelling find_peaks did before: the whole (C, H, W) frame in one `label` call."""
    labels, n = ndimage.label(on, structure=peaks._structure(connectivity))
    flat = np.flatnonzero(on)
    return flat, labels.ravel()[flat], n


def masks() -> list[np.ndarray]:
    """Sparse, dense and adversarial (C, H, W) masks: rows on both sides of a panel edge,
    alternating rows (a gap at every row), diagonal contact across a skipped row's edge,
    full and single-pixel panels."""
    rng = np.random.default_rng(7)
    out = [
        rng.random((c, h, w)) < p
        for c, h, w, p in [
            (1, 40, 50, 0.01),
            (1, 40, 50, 0.3),
            (3, 16, 20, 0.05),
            (4, 9, 7, 0.5),
            (2, 5, 5, 0.9),
        ]
    ]
    edge = np.zeros((3, 6, 8), bool)
    edge[0, 5, 2:5] = edge[1, 0, 3:6] = edge[1, 5, 0] = edge[2, 0, 1] = True  # touch only
    alternating = np.zeros((2, 10, 6), bool)
    alternating[:, ::2] = True
    diagonal = np.zeros((1, 6, 6), bool)
    diagonal[0, 1, 1] = diagonal[0, 2, 2] = diagonal[0, 4, 3] = True
    single = np.zeros((2, 1, 1), bool)
    single[1] = True
    return [*out, edge, alternating, diagonal, np.ones((2, 3, 4), bool), single]


@pytest.mark.parametrize("connectivity", [4, 8])
def test_packed_rows_label_like_the_whole_frame(connectivity):
    for on in masks():
        flat, lab, n = label_pixels(on, connectivity)
        ref_flat, ref_lab, ref_n = whole_frame(on, connectivity)
        assert n == ref_n and np.array_equal(flat, ref_flat), on.shape
        assert np.array_equal(lab, ref_lab), on.shape


def test_find_peaks_is_identical_to_whole_frame_labelling(monkeypatch):
    rng = np.random.default_rng(3)
    cases = []
    for on in masks():
        image = rng.normal(5.0, 20.0, on.shape)  # signed: the weighted centroid's edge case
        cases.append((image, on.astype(np.uint8)))
    new = [find_peaks(image, mask, 8, 1, 6, 5) for image, mask in cases]
    monkeypatch.setattr(peaks, "label_pixels", whole_frame)
    old = [find_peaks(image, mask, 8, 1, 6, 5) for image, mask in cases]
    for a, b in zip(new, old, strict=True):
        for f in fields(PeakList):
            x, y = getattr(a, f.name), getattr(b, f.name)
            assert np.array_equal(x, y) and np.asarray(x).dtype == np.asarray(y).dtype, f.name
