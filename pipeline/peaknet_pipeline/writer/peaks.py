"""Peak finding on one event: connected components of the peak mask, measured on the image.

Pure functions of numpy arrays, so the writer actor, the benchmark and the tests run the same
code. Frames are `(C, H, W)` with C detector panels; components never cross a panel edge, and
coordinates are reported in the CXI "raw" slab layout CrystFEL reads (panels stacked along the
slow-scan axis): row = c * H + r, col = col, pixel-index units (origin at the first pixel's
index; CrystFEL adds its own half-pixel shift).

Work is vectorised per event: the mask's rows that hold peak pixels are labelled once
(scipy.ndimage, `label_pixels`), then only the masked pixels are visited, with `np.bincount` for sums and one sort + `np.maximum.reduceat` for maxima.
There is no loop over labels and no full-image pass per label.

Non-positive weights (background-subtracted images, dead pixels stored as negatives, NaN):
the weighted centroid uses w = max(value, 0) (NaN counts as 0), so every weight is >= 0 and the
centroid is a convex combination of the peak's pixel coordinates: it lies inside the peak's
bounding box (clipped to it against float rounding), never outside the peak as a mean weighted
by signed values can. A peak
whose pixels are all <= 0 gets the plain (unweighted) centroid of its pixels. Total and
maximum intensity are reported from the original, unclipped values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# Pixel connectivity -> 2-D structuring element; the 3-D element has an empty panel axis so
# one `label` call handles all panels without letting a component cross from one to the next.
_STRUCTURES: dict[int, np.ndarray] = {}


def _structure(connectivity: int) -> np.ndarray:
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity!r}")
    if connectivity not in _STRUCTURES:
        from scipy import ndimage

        s = np.zeros((3, 3, 3), dtype=bool)
        s[1] = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
        _STRUCTURES[connectivity] = s
    return _STRUCTURES[connectivity]


def label_pixels(on: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, np.ndarray, int]:
    """(flat indices of the True pixels of the (C, H, W) `on`, ascending; their component
    labels; the number of components n), equal to labelling the whole frame with
    `_structure(connectivity)` and reading the labels at `np.flatnonzero(on)`.

    Why not label the whole frame: at 1691x1691 with 30 peaks, `ndimage.label` of the frame
    took 5.2 ms, nearly all of peak finding, to visit ~99% empty pixels. Only the rows that
    hold a True pixel are labelled here, packed in order into a smaller image with one empty
    row wherever rows were skipped or a panel begins, so no two pixels touch in the packed
    image that do not touch in the frame (components never join across a gap or a panel
    edge), and components keep the raster order of their first pixel, which is the order
    `label` numbers them in (0.4 ms for the same frame; bench/detector_bench.py).
    """
    from scipy import ndimage

    c, h, w = on.shape
    slab = on.reshape(c * h, w)
    rows = np.flatnonzero(slab.any(axis=1))  # raw slab rows holding a peak pixel, ascending
    gap = np.zeros(rows.size, dtype=np.intp)  # an empty row before this one in the packing
    gap[1:] = (np.diff(rows) != 1) | (rows[1:] % h == 0)
    packed_at = np.arange(rows.size) + np.cumsum(gap)
    packed = np.zeros((int(packed_at[-1]) + 1 if rows.size else 0, w), dtype=bool)
    packed[packed_at] = slab[rows]
    labels, n = ndimage.label(packed, structure=_structure(connectivity)[1])
    at = np.flatnonzero(packed)
    raw_row = np.zeros(packed.shape[0], dtype=np.intp)
    raw_row[packed_at] = rows
    flat = raw_row[at // w] * w + at % w
    return flat, labels.ravel()[at], int(n)


@dataclass
class PeakList:
    """Peaks of one event, in raster order of their first pixel (panel, row, col).

    `found` counts peaks that passed the size filter (what decides a hit); `dropped` of those
    were beyond `max_peaks` and are not in the arrays (the weakest by total intensity go first).
    """

    row: np.ndarray  # float64, slow-scan raw coordinate (c * H + r)
    col: np.ndarray  # float64, fast-scan coordinate
    total: np.ndarray  # float64, sum of the peak's pixel values
    max: np.ndarray  # float64, largest pixel value
    npix: np.ndarray  # int64, pixel count
    found: int = 0
    dropped: int = 0
    too_small: int = 0
    too_large: int = 0

    @property
    def n(self) -> int:
        return int(self.row.shape[0])

    @classmethod
    def empty(cls) -> PeakList:
        z = np.zeros(0, dtype=np.float64)
        return cls(z, z, z, z, np.zeros(0, dtype=np.int64))


def as_panels(frame: np.ndarray) -> np.ndarray:
    """View a frame as (C, H, W); an (H, W) frame is one panel."""
    if frame.ndim == 2:
        return frame[None]
    if frame.ndim != 3:
        raise ValueError(f"frame must be (C, H, W) or (H, W), got shape {frame.shape}")
    return frame


def peak_rules(writer: Any) -> dict[str, int]:
    """`find_peaks`'s rules as the config's `writer` section sets them (any object with its
    fields), for every finder that must agree with the writer's: the writer, the device-side
    finder, the training assessment."""
    return {
        "connectivity": writer.connectivity,
        "min_pixels": writer.min_pixels_per_peak,
        "max_pixels": writer.max_pixels_per_peak,
        "max_peaks": writer.max_peaks,
    }


def find_peaks(
    image: np.ndarray,
    mask: np.ndarray,
    connectivity: int = 8,
    min_pixels: int = 1,
    max_pixels: int = 1000,
    max_peaks: int = 2048,
) -> PeakList:
    """Peaks of one event: components of `mask` (non-zero = peak pixel), measured on `image`.

    `image` and `mask` are (C, H, W) (or (H, W)) of the same shape. Components with fewer than
    `min_pixels` or more than `max_pixels` pixels are not peaks (counted in too_small/too_large).
    At most `max_peaks` are returned, the brightest by total intensity; the rest are counted.
    """
    image, mask = as_panels(image), as_panels(mask)
    if image.shape != mask.shape:
        raise ValueError(f"image shape {image.shape} != mask shape {mask.shape}")
    on = mask != 0  # bool: label and flatnonzero are several times faster than on uint8
    if not on.any():
        return PeakList.empty()
    flat, lab, n = label_pixels(on, connectivity)
    vals = image.ravel()[flat].astype(np.float64, copy=False)

    npix = np.bincount(lab, minlength=n + 1)[1:]
    total = np.bincount(lab, weights=vals, minlength=n + 1)[1:]
    order = np.argsort(lab, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(lab[order]) != 0])
    vmax = np.maximum.reduceat(vals[order], starts)  # labels 1..n all occur, in order

    w = image.shape[-1]
    rows = flat // w  # c * H + r: the raw slab row
    cols = flat % w
    weight = np.where(vals > 0, vals, 0.0)  # NaN and non-positive values weigh nothing
    wsum = np.bincount(lab, weights=weight, minlength=n + 1)[1:]
    wrow = np.bincount(lab, weights=weight * rows, minlength=n + 1)[1:]
    wcol = np.bincount(lab, weights=weight * cols, minlength=n + 1)[1:]
    plain = wsum <= 0
    if plain.any():  # all pixels <= 0: unweighted centroid
        wrow[plain] = np.bincount(lab, weights=rows, minlength=n + 1)[1:][plain]
        wcol[plain] = np.bincount(lab, weights=cols, minlength=n + 1)[1:][plain]
        wsum[plain] = npix[plain]
    # Clip to the peak's bounding box: float rounding must not put a centroid outside it.
    srow, scol = rows[order], cols[order]
    row = np.clip(wrow / wsum, np.minimum.reduceat(srow, starts), np.maximum.reduceat(srow, starts))
    col = np.clip(wcol / wsum, np.minimum.reduceat(scol, starts), np.maximum.reduceat(scol, starts))

    small, large = npix < min_pixels, npix > max_pixels
    keep = np.flatnonzero(~small & ~large)
    found = int(keep.size)
    if found > max_peaks:
        brightest = np.argsort(-total[keep], kind="stable")[:max_peaks]
        keep = np.sort(keep[brightest])
    return PeakList(
        row=row[keep],
        col=col[keep],
        total=total[keep],
        max=vmax[keep],
        npix=npix[keep],
        found=found,
        dropped=found - int(keep.size),
        too_small=int(small.sum()),
        too_large=int(large.sum()),
    )


def masks_from_output(output: np.ndarray, kind: str) -> np.ndarray:
    """Peak masks (B, C, H, W) from a Result's output: the uint8 mask itself, or the argmax of
    float logits (B, C, K, H, W) over the K classes equal to class 1 (Bragg peak)."""
    if kind == "mask":
        if output.ndim != 4:
            raise ValueError(f"mask output must be (B, C, H, W), got shape {output.shape}")
        return output
    if kind == "logits":
        if output.ndim != 5:
            raise ValueError(f"logits output must be (B, C, K, H, W), got shape {output.shape}")
        if output.shape[2] != 2:
            return (output.argmax(axis=2) == 1).astype(np.uint8)
        background, peak = output[:, :, 0], output[:, :, 1]  # as inference/engine.class_index
        return ((peak > background) | (np.isnan(peak) & ~np.isnan(background))).astype(np.uint8)
    raise ValueError(f"unknown output kind {kind!r}; expected 'mask' or 'logits'")
