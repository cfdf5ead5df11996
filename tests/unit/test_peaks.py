"""Peak finding on hand-made masks and images: components, centroids, filters, panels."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from peaknet_pipeline.writer.peaks import find_peaks, masks_from_output


def frame(h: int = 12, w: int = 10, c: int = 1, fill: float = 1.0):
    return np.full((c, h, w), fill, dtype=np.float32), np.zeros((c, h, w), dtype=np.uint8)


def test_diagonal_contact_merges_under_8_not_4_connectivity():
    image, mask = frame()
    mask[0, 3, 3] = mask[0, 4, 4] = 1  # touch only at a corner
    mask[0, 8, 1] = mask[0, 8, 2] = 1  # edge-adjacent: one peak under both
    p8 = find_peaks(image, mask, connectivity=8)
    p4 = find_peaks(image, mask, connectivity=4)
    assert p8.n == 2 and sorted(p8.npix.tolist()) == [2, 2]
    assert p4.n == 3 and sorted(p4.npix.tolist()) == [1, 1, 2]


def test_peaks_on_frame_edges_and_corners():
    image, mask = frame(h=6, w=5)
    mask[0, 0, 0] = 1  # top-left corner
    mask[0, 5, 3:5] = 1  # bottom edge, reaching the last column
    mask[0, 2:4, 4] = 1  # right edge, separate (row 4 is empty)
    image[0, 5, 4] = 3.0
    peaks = find_peaks(image, mask)
    assert peaks.n == 3
    # raster order of the first pixel: (0,0), (2,4), (5,3)
    np.testing.assert_allclose(peaks.row, [0.0, 2.5, 5.0])
    np.testing.assert_allclose(peaks.col, [0.0, 4.0, (3 * 1.0 + 4 * 3.0) / 4.0])


def test_weighted_centroid_total_and_max_are_exact():
    image, mask = frame(fill=0.0)
    pixels = {(2, 3): 1.0, (2, 4): 2.0, (3, 4): 3.0, (3, 3): 4.0}
    for (r, c), v in pixels.items():
        mask[0, r, c] = 1
        image[0, r, c] = v
    peaks = find_peaks(image, mask)
    total = sum(pixels.values())
    assert peaks.n == 1 and peaks.found == 1 and peaks.dropped == 0
    assert peaks.row[0] == pytest.approx(sum(r * v for (r, _), v in pixels.items()) / total)
    assert peaks.col[0] == pytest.approx(sum(c * v for (_, c), v in pixels.items()) / total)
    assert peaks.total[0] == pytest.approx(total)
    assert peaks.max[0] == pytest.approx(4.0)
    assert peaks.npix[0] == 4


def test_matches_scipy_measurements_on_random_masks():
    rng = np.random.default_rng(3)
    image = rng.uniform(0.5, 100.0, size=(1, 60, 70))
    mask = (rng.random((1, 60, 70)) > 0.8).astype(np.uint8)
    peaks = find_peaks(image, mask, max_pixels=10_000)
    labels, n = ndimage.label(mask[0], structure=np.ones((3, 3)))
    index = np.arange(1, n + 1)
    com = np.array(ndimage.center_of_mass(image[0], labels, index))
    assert peaks.n == n
    np.testing.assert_allclose(peaks.row, com[:, 0], rtol=1e-10)
    np.testing.assert_allclose(peaks.col, com[:, 1], rtol=1e-10)
    np.testing.assert_allclose(peaks.total, ndimage.sum(image[0], labels, index))
    np.testing.assert_allclose(peaks.max, ndimage.maximum(image[0], labels, index))
    np.testing.assert_array_equal(peaks.npix, np.bincount(labels.ravel())[1:])


def test_empty_frame_has_no_peaks():
    image, mask = frame()
    peaks = find_peaks(image, mask)
    assert peaks.n == 0 and peaks.found == 0 and peaks.dropped == 0
    for arr in (peaks.row, peaks.col, peaks.total, peaks.max, peaks.npix):
        assert arr.shape == (0,)


def test_max_peaks_keeps_the_brightest_and_counts_the_rest():
    image, mask = frame(h=4, w=40, fill=0.0)
    brightness = [5, 1, 9, 3, 7, 2, 8, 4, 6, 10]
    for i, b in enumerate(brightness):
        mask[0, 1, 4 * i] = 1
        image[0, 1, 4 * i] = b
    peaks = find_peaks(image, mask, max_peaks=4)
    assert peaks.found == 10 and peaks.dropped == 6 and peaks.n == 4
    assert sorted(peaks.total.tolist()) == [7, 8, 9, 10]
    assert list(peaks.col) == sorted(peaks.col)  # still in raster order


def test_pixel_count_filters():
    image, mask = frame(h=10, w=20)
    mask[0, 1, 1] = 1  # 1 pixel
    mask[0, 1, 5:7] = 1  # 2 pixels
    mask[0, 5:7, 5:8] = 1  # 6 pixels
    peaks = find_peaks(image, mask, min_pixels=2, max_pixels=5)
    assert peaks.npix.tolist() == [2]
    assert peaks.too_small == 1 and peaks.too_large == 1 and peaks.found == 1


def test_multi_panel_rows_are_offset_and_components_stop_at_panel_edges():
    h, w = 8, 6
    image, mask = frame(h=h, w=w, c=3)
    mask[0, h - 1, 2] = 1  # last row of panel 0 ...
    mask[1, 0, 2] = 1  # ... and first row of panel 1: adjacent in the slab, not one peak
    mask[2, 5, 1] = 1
    peaks = find_peaks(image, mask)
    assert peaks.n == 3
    np.testing.assert_array_equal(peaks.row, [h - 1, h, 2 * h + 5])
    np.testing.assert_array_equal(peaks.col, [2, 2, 1])


def test_non_positive_weights_keep_the_centroid_inside_the_peak():
    image, mask = frame(fill=0.0)
    mask[0, 2, 2:5] = 1
    image[0, 2, 2:5] = [-50.0, 0.0, 10.0]  # signed weights would put it at col 11
    mask[0, 6, 2:5] = 1
    image[0, 6, 2:5] = [-1.0, -2.0, -3.0]  # nothing positive: plain centroid
    mask[0, 9, 6:8] = 1
    image[0, 9, 6:8] = [np.nan, 4.0]  # NaN weighs nothing
    peaks = find_peaks(image, mask)
    np.testing.assert_allclose(peaks.col, [4.0, 3.0, 7.0])
    np.testing.assert_allclose(peaks.row, [2.0, 6.0, 9.0])
    np.testing.assert_allclose(peaks.total[:2], [-40.0, -6.0])  # intensities stay signed
    np.testing.assert_allclose(peaks.max[:2], [10.0, -1.0])


def test_mixed_sign_random_peaks_stay_in_their_bounding_box():
    rng = np.random.default_rng(7)
    image = rng.normal(0.0, 5.0, size=(2, 40, 40))
    mask = (rng.random((2, 40, 40)) > 0.7).astype(np.uint8)
    peaks = find_peaks(image, mask, max_pixels=10_000)
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = True
    labels, n = ndimage.label(mask, structure=structure)
    boxes = ndimage.find_objects(labels)
    assert peaks.n == n
    for i, (cs, rs, ks) in enumerate(boxes):
        row0 = cs.start * 40
        assert row0 + rs.start <= peaks.row[i] <= row0 + rs.stop - 1
        assert ks.start <= peaks.col[i] <= ks.stop - 1


def test_two_dimensional_frame_is_one_panel():
    image, mask = frame()
    mask[0, 4, 4] = 1
    peaks = find_peaks(image[0], mask[0])
    assert (peaks.row[0], peaks.col[0]) == (4.0, 4.0)


def test_shape_mismatch_and_bad_connectivity_are_errors():
    image, mask = frame()
    with pytest.raises(ValueError, match="mask shape"):
        find_peaks(image, mask[:, :-1])
    mask[0, 1, 1] = 1
    with pytest.raises(ValueError, match="connectivity"):
        find_peaks(image, mask, connectivity=6)


def test_masks_from_logits_take_the_argmax_class_one():
    logits = np.zeros((1, 1, 3, 2, 2), dtype=np.float32)
    logits[0, 0, 1, 0, 0] = 5.0  # class 1 wins
    logits[0, 0, 2, 1, 1] = 5.0  # class 2 wins: not a Bragg peak
    mask = masks_from_output(logits, "logits")
    np.testing.assert_array_equal(mask[0, 0], [[1, 0], [0, 0]])
    with pytest.raises(ValueError, match="output kind"):
        masks_from_output(logits, "probabilities")
