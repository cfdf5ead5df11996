"""Bragg spots of a crystal on the run's detector: pure functions of (config, event id).

Conventions (the same as the CrystFEL geometry file writer/geometry.py writes, so CrystFEL
indexing the CXI files sees the crystal that made them):

- Lab frame: the beam travels along +z through x = y = 0; the detector plane's points are
  `corner + fs_coord * fs + ss_coord * ss` at z = clen, in pixel widths (CrystFEL's
  detgeom), where (fs_coord, ss_coord) are measured from the outer corner of the panel's first
  pixel: pixel i's centre is at i + 0.5.
- Frames and peak lists use pixel-index coordinates (pixel i's centre at i): the generator
  draws a spot at (row, col) = (ss_coord - 0.5, fs_coord - 0.5), and CrystFEL adds the 0.5
  back when it reads the CXI peak list.
- Reciprocal space without 2 pi: |q| = 1/d, k = 1/lambda. The incident wave vector is
  (0, 0, k); a reflection with lab vector q diffracts along k_out = q + (0, 0, k) when
  |k_out| = k, that is at k_q = -|q|^2 / (2 q_z) (q_z < 0). It is drawn when k_q is within
  the bandwidth of the nominal k (a top-hat spectrum), along k_out at k = k_q.
- Cell axes in the crystal frame as CrystFEL sets them up (cell-utils.c): a along x, b in
  the xy plane, c completing a right-handed set; reciprocal basis = inverse transpose.
- Orientation: a rotation R uniform on SO(3), from a unit quaternion of four normal deviates
  seeded by (seed, event id); lab q = R (h a* + k b* + l c*).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from ..config import RandomSourceConfig
from ..config.crystal import CrystalConfig, wavelength_angstrom
from ..writer.geometry import panel_layout

ORIENTATION_STREAM = 0x0C7A  # rng stream of the orientation, apart from the random peaks'


class Spots(NamedTuple):
    """One frame's ground truth: orientation, where each spot is and what made it."""

    rotation: np.ndarray  # (3, 3): lab = rotation @ crystal frame
    hkl: np.ndarray  # (n, 3) int Miller indices
    positions: np.ndarray  # (n, 3) (panel, row, col), pixel-index coordinates
    amplitudes: np.ndarray  # (n,) peak heights above background
    wavenumbers: np.ndarray  # (n,) k = 1/lambda (1/A) at which each reflection diffracts


def direct_basis(cell: tuple[float, ...]) -> np.ndarray:
    """Rows a, b, c (angstrom) of the cell (a, b, c, alpha, beta, gamma in degrees)."""
    a, b, c = cell[:3]
    al, be, ga = (math.radians(x) for x in cell[3:])
    cy = (math.cos(al) - math.cos(be) * math.cos(ga)) / math.sin(ga)
    cz = math.sqrt(1.0 - math.cos(be) ** 2 - cy**2)
    return np.array(
        [
            [a, 0.0, 0.0],
            [b * math.cos(ga), b * math.sin(ga), 0.0],
            [c * math.cos(be), c * cy, c * cz],
        ]
    )


def reciprocal_basis(cell: tuple[float, ...]) -> np.ndarray:
    """Rows a*, b*, c* (1/A): a* . a = 1, a* . b = 0, and so on."""
    return np.linalg.inv(direct_basis(cell)).T


def allowed(hkl: np.ndarray, centering: str) -> np.ndarray:
    """Reflections the lattice centering allows (CrystFEL's forbidden_reflection, negated)."""
    h, k, l = (hkl[:, i] for i in range(3))  # noqa: E741
    rules = {
        "A": (k + l) % 2 == 0,
        "B": (h + l) % 2 == 0,
        "C": (h + k) % 2 == 0,
        "I": (h + k + l) % 2 == 0,
        "F": ((h + k) % 2 == 0) & ((h + l) % 2 == 0),
        "H": (-h + k + l) % 3 == 0,
    }
    return rules.get(centering, np.ones(len(hkl), dtype=bool))


@lru_cache(maxsize=8)
def lattice(cell: tuple[float, ...], centering: str, d_min: float) -> tuple[np.ndarray, np.ndarray]:
    """(hkl (n, 3), crystal-frame q (n, 3)) of every allowed reflection with d >= d_min.

    |h| <= |a| / d_min bounds the search (h = q . a); computed once per cell."""
    basis = direct_basis(cell)
    reach = [int(math.floor(np.linalg.norm(v) / d_min)) for v in basis]
    axes = [np.arange(-n, n + 1) for n in reach]
    hkl = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    q = hkl @ reciprocal_basis(cell)
    keep = (np.einsum("ij,ij->i", q, q) <= 1.0 / d_min**2) & hkl.any(axis=1)
    keep &= allowed(hkl, centering)
    hkl, q = hkl[keep], q[keep]
    hkl.flags.writeable = q.flags.writeable = False
    return hkl, q


def orientation(seed: int, event_id: int) -> np.ndarray:
    """A rotation uniform on SO(3), reproducible from (seed, event id): the normalised
    quaternion of four standard normal deviates (isotropic on the 3-sphere)."""
    w, x, y, z = np.random.default_rng((seed, int(event_id), ORIENTATION_STREAM)).normal(size=4)
    n = math.sqrt(w * w + x * x + y * y + z * z)
    w, x, y, z = w / n, x / n, y / n, z / n
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def reflecting(q: np.ndarray, k0: float, bandwidth: float) -> tuple[np.ndarray, np.ndarray]:
    """(mask, k_q): reflections whose Ewald wavenumber k_q = -|q|^2 / (2 q_z) lies within
    k0 (1 +- bandwidth / 2); k_q is nan where q_z >= 0 (never on the sphere)."""
    qz = q[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        kq = np.where(qz < 0, -np.einsum("ij,ij->i", q, q) / (2 * qz), np.nan)
    mask = np.abs(kq / k0 - 1.0) <= bandwidth / 2
    return mask, kq


def project(
    directions: np.ndarray, crystal: CrystalConfig, frame_shape: tuple[int, int, int]
) -> np.ndarray:
    """(n, 3) (panel, ss_coord, fs_coord) where rays from the sample along `directions` meet
    the detector (CrystFEL panel coordinates, pixel centres at i + 0.5); panel -1 where a ray
    meets no panel."""
    geo = crystal.detector
    clen_px = geo.camera_length_m / geo.pixel_size_m
    _, height, width = frame_shape
    out = np.full((len(directions), 3), np.nan)
    out[:, 0] = -1
    for index, p in enumerate(panel_layout(geo, frame_shape)):
        fs, ss = np.array(p.fs), np.array(p.ss)
        origin = np.array([p.corner_x, p.corner_y, clen_px])
        normal = np.cross(fs, ss)
        along = directions @ normal
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (origin @ normal) / along
        points = t[:, None] * directions - origin
        # (fs_coord, ss_coord) solving points = fs_coord * fs + ss_coord * ss.
        coords = points @ np.linalg.pinv(np.stack([fs, ss], axis=1)).T
        on = (t > 0) & (out[:, 0] < 0)
        on &= (coords[:, 0] >= 0) & (coords[:, 0] < width)
        on &= (coords[:, 1] >= 0) & (coords[:, 1] < height)
        out[on] = np.column_stack([np.full(on.sum(), index), coords[on, 1], coords[on, 0]])
    return out


def crystal_spots(cfg: RandomSourceConfig, event_id: int) -> Spots:
    """The spots of event `event_id`: reflections within the resolution limit on the Ewald
    sphere within the bandwidth, on a panel with a margin of 3 sigma + 1 px from its edges,
    at least `min_peak_separation_px` apart on a panel (the brighter kept, so every spot is
    a separate, whole one, as the random peaks are)."""
    crystal = cfg.crystal
    hkl, q_crystal = lattice(
        crystal.cell.parameters(), crystal.centering, crystal.resolution_limit_angstrom
    )
    rotation = orientation(cfg.seed, event_id)
    q = q_crystal @ rotation.T
    k0 = 1.0 / wavelength_angstrom(cfg.photon_energy_ev)
    mask, kq = reflecting(q, k0, crystal.bandwidth)
    hkl, q, kq = hkl[mask], q[mask], kq[mask]
    k_out = q + kq[:, None] * np.array([0.0, 0.0, 1.0])
    where = project(k_out, crystal, tuple(cfg.frame_shape))
    # Pixel-index coordinates, kept whole on the panel.
    positions = where - np.array([0.0, 0.5, 0.5])
    margin = math.ceil(3 * cfg.peak_sigma_px) + 1
    _, height, width = cfg.frame_shape
    inside = (where[:, 0] >= 0) & (positions[:, 1] >= margin) & (positions[:, 2] >= margin)
    inside &= (positions[:, 1] <= height - 1 - margin) & (positions[:, 2] <= width - 1 - margin)
    s2 = np.einsum("ij,ij->i", q, q)
    amplitudes = cfg.peak_amplitude * np.exp(-crystal.wilson_b * s2 / 2)
    order = np.flatnonzero(inside)[np.argsort(-amplitudes[inside], kind="stable")]
    kept = _separated(positions[order], cfg.min_peak_separation_px)
    chosen = np.sort(order[kept])
    return Spots(rotation, hkl[chosen], positions[chosen], amplitudes[chosen], kq[chosen])


def _separated(positions: np.ndarray, min_px: float) -> np.ndarray:
    """Indices of rows to keep, greedily in the given order: each kept row at least `min_px`
    from every kept row before it on the same panel."""
    kept: list[int] = []
    for i, (panel, row, col) in enumerate(positions):
        prior = positions[kept]
        near = (prior[:, 0] == panel) & (
            (prior[:, 1] - row) ** 2 + (prior[:, 2] - col) ** 2 < min_px**2
        )
        if not near.any():
            kept.append(i)
    return np.array(kept, dtype=np.intp)
