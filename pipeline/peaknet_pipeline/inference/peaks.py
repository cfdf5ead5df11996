"""Peaks taken where the mask is: a batch of masks reduced to peak lists in torch, on whatever
device holds them, so that Q2 carries peak lists instead of a uint8 mask per pixel.

The rules are those of the writer's CPU finder (writer/peaks.find_peaks), which this equals:
components of the mask's non-zero pixels under 4- or 8-connectivity that never cross a panel
edge nor the frame's edge (the pad is cropped before this), the size filter (min_pixels <=
npix <= max_pixels; the rest counted as too small / too large), at most `max_peaks` per event,
the brightest by total intensity (ties: earlier first pixel) and the rest counted as dropped,
peaks in raster order of their first pixel, total and maximum from the original values, the
centroid weighted by max(value, 0) (NaN weighs nothing; a peak with no positive pixel gets its
plain centroid) and clipped to the peak's bounding box, in the CXI raw slab layout (row = c * H
+ r).

Labelling is exact and works on the masked pixels only (K of them, found with one nonzero
pass): each pixel's 8 (or 4) neighbours are looked up by binary search in the sorted pixel
indices, every pixel starts labelled with its own position, and each round takes the smallest
label among a pixel and its neighbours, then jumps each label to its label's label (pointer
jumping). Labels only decrease and stay inside their component, so when a round changes
nothing every pixel holds its component's first pixel. A round moves a component's smallest
label at least one step further, so there are at most D + 1 rounds, D the largest component's
geodesic diameter (<= K); pointer jumping makes compact blobs converge in a handful. Each round
is O(K) tensor work and one host sync (the stability test); there is no loop per peak or pixel.

Torch is imported inside the functions: the writer unpickles `BatchPeaks` without loading it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ..writer.peaks import PeakList

_COUNTS = ("counts", "found", "dropped", "too_small", "too_large")


@dataclass
class BatchPeaks:
    """The peaks of a batch of B events, the compact record Q2 carries: per-event counts
    (B,) and the peaks of all events one after the other (P,), event by event."""

    counts: np.ndarray  # int32 (B,): peaks kept per event (the arrays' rows of each event)
    found: np.ndarray  # int32 (B,): peaks that passed the size filter (what decides a hit)
    dropped: np.ndarray  # int32 (B,): found beyond max_peaks, not in the arrays
    too_small: np.ndarray  # int32 (B,)
    too_large: np.ndarray  # int32 (B,)
    row: np.ndarray  # float64 (P,)
    col: np.ndarray  # float64 (P,)
    total: np.ndarray  # float64 (P,)
    max: np.ndarray  # float64 (P,)
    npix: np.ndarray  # int64 (P,)

    @property
    def size(self) -> int:
        return int(self.counts.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays: what Q2 carries for the batch instead of its mask."""
        return sum(getattr(self, f.name).nbytes for f in fields(self))

    def peak_lists(self) -> list[PeakList]:
        """One writer PeakList per event (views into the arrays: a loop over events only)."""
        ends = np.cumsum(self.counts)
        starts = ends - self.counts
        return [
            PeakList(
                row=self.row[a:b],
                col=self.col[a:b],
                total=self.total[a:b],
                max=self.max[a:b],
                npix=self.npix[a:b],
                found=int(self.found[i]),
                dropped=int(self.dropped[i]),
                too_small=int(self.too_small[i]),
                too_large=int(self.too_large[i]),
            )
            for i, (a, b) in enumerate(zip(starts.tolist(), ends.tolist()))
        ]


def _offsets(connectivity: int) -> list[tuple[int, int]]:
    if connectivity == 4:
        return [(-1, 0), (1, 0), (0, -1), (0, 1)]
    if connectivity == 8:
        return [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)]
    raise ValueError(f"connectivity must be 4 or 8, got {connectivity!r}")


def component_labels(on: Any, connectivity: int = 8) -> tuple[Any, Any, int]:
    """Label the non-zero pixels of `on` (N, H, W), each image on its own.

    Returns (idx, label, rounds): idx (K,) the flat indices of the pixels in raster order,
    label (K,) for each the position in idx of its component's first pixel, and the rounds
    the propagation took (module docstring: at most the largest geodesic diameter + 1).
    """
    import torch

    offsets = _offsets(connectivity)
    _, h, w = on.shape
    flat = on.reshape(-1)
    idx = torch.nonzero(flat if flat.dtype == torch.bool else flat.bool()).squeeze(1)
    k = idx.numel()
    own = torch.arange(k, device=idx.device)
    if k == 0:
        return idx, own, 0
    r = (idx // w) % h
    c = idx % w
    neighbours = []
    for dr, dc in offsets:
        inside = (r + dr >= 0) & (r + dr < h) & (c + dc >= 0) & (c + dc < w)
        want = idx + (dr * w + dc)
        pos = torch.searchsorted(idx, want).clamp_(max=k - 1)
        hit = inside & (idx[pos] == want)
        neighbours.append(torch.where(hit, pos, own))
    nbr = torch.stack(neighbours)  # (8, K): a missing neighbour is the pixel itself
    label = own
    rounds = 0
    while True:
        rounds += 1
        new = torch.minimum(label, label[nbr].amin(0))
        new = new[new]  # pointer jumping: a label's label is in the same component
        if torch.equal(new, label):
            return idx, label, rounds
        label = new


def find_batch_peaks(
    masks: Any,
    images: Any,
    connectivity: int = 8,
    min_pixels: int = 1,
    max_pixels: int = 1000,
    max_peaks: int = 2048,
) -> BatchPeaks:
    """Peaks of every event of a batch: masks and images (B, C, H, W) (or (B, H, W), one
    panel): torch tensors on one device, or on the CPU `images` as a numpy array (then only
    the masked pixels are read); the rules of writer/peaks.find_peaks, event by event.
    """
    import torch

    if masks.ndim == 3:
        masks, images = masks[:, None], images[:, None]
    if tuple(masks.shape) != tuple(images.shape) or masks.ndim != 4:
        raise ValueError(f"masks {tuple(masks.shape)} and images {tuple(images.shape)} differ")
    b, ch, h, w = masks.shape
    dev = masks.device
    idx, label, _ = component_labels(masks.reshape(b * ch, h, w), connectivity)
    i64, f64 = dict(dtype=torch.int64, device=dev), dict(dtype=torch.float64, device=dev)
    roots = torch.nonzero(label == torch.arange(idx.numel(), device=dev)).squeeze(1)
    n = roots.numel()
    comp = torch.empty(idx.numel(), **i64)
    comp[roots] = torch.arange(n, device=dev)
    comp = comp[label]  # component number per pixel, components in raster order
    frame_px = ch * h * w
    if isinstance(images, np.ndarray):  # the CPU path: frames as they came, read in place
        vals = torch.from_numpy(images.reshape(-1)[idx.numpy()].astype(np.float64))
    else:
        vals = images.reshape(-1)[idx].to(torch.float64)
    within = idx % frame_px
    rows, cols = (within // w).to(torch.float64), (within % w).to(torch.float64)

    def add(x: Any) -> Any:
        return torch.zeros(n, **f64).index_add_(0, comp, x)

    def reduce(x: Any, how: str) -> Any:
        return torch.empty(n, **f64).scatter_reduce_(0, comp, x, how, include_self=False)

    npix = torch.bincount(comp, minlength=n)
    total, vmax = add(vals), reduce(vals, "amax")
    weight = torch.where(vals > 0, vals, torch.zeros_like(vals))  # NaN and <= 0 weigh nothing
    wsum, wrow, wcol = add(weight), add(weight * rows), add(weight * cols)
    plain = wsum <= 0  # no positive pixel: the plain centroid
    wrow = torch.where(plain, add(rows), wrow)
    wcol = torch.where(plain, add(cols), wcol)
    wsum = torch.where(plain, npix.to(torch.float64), wsum)
    row = torch.clamp(wrow / wsum, reduce(rows, "amin"), reduce(rows, "amax"))
    col = torch.clamp(wcol / wsum, reduce(cols, "amin"), reduce(cols, "amax"))

    event = idx[roots] // frame_px
    small, large = npix < min_pixels, npix > max_pixels
    ok = ~small & ~large

    def per_event(sel: Any) -> Any:
        return torch.bincount(event[sel], minlength=b)

    found = per_event(ok)
    # MAXP: within each event the brightest first (stable: ties keep raster order), then keep
    # the first max_peaks of each event, back in raster order.
    cand = torch.nonzero(ok).squeeze(1)
    order = torch.sort(-total[cand], stable=True).indices
    order = order[torch.sort(event[cand][order], stable=True).indices]
    ranked = cand[order]
    start = torch.cumsum(found, 0) - found
    rank = torch.arange(ranked.numel(), device=dev) - start[event[ranked]]
    keep = torch.sort(ranked[rank < max_peaks]).values
    counts = per_event(keep)

    # Two copies to the host (one integer, one float64), not one per array.
    ints = torch.cat([counts, found, per_event(small), per_event(large), npix[keep]]).cpu()
    reals = torch.stack([row[keep], col[keep], total[keep], vmax[keep]]).cpu().numpy()
    ints = ints.numpy()
    counts_, found_, small_, large_ = (ints[i * b : (i + 1) * b].astype(np.int32) for i in range(4))
    return BatchPeaks(
        counts=counts_,
        found=found_,
        dropped=found_ - counts_,
        too_small=small_,
        too_large=large_,
        row=reals[0],
        col=reals[1],
        total=reals[2],
        max=reals[3],
        npix=ints[4 * b :].astype(np.int64),
    )
