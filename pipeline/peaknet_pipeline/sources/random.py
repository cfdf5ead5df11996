"""Synthetic frames with Bragg-like peaks at known positions, to check the pipeline end to end.

Generation must be cheaper than inference: a small pool of Poisson backgrounds is drawn once
and each event picks and flips one, then small Gaussian peaks are added at positions that are
a pure function of (seed, event id) — so any later stage can recompute the ground truth.
With `crystal` set, the peaks are a crystal's Bragg spots in a random orientation per event
(sources/crystal.py), drawn with the same profile, their heights falling off with resolution.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from itertools import islice
from typing import Any

import numpy as np

from ..config import RandomSourceConfig
from .base import IngestActor
from .crystal import crystal_spots
from .pacing import pace


def peak_positions(cfg: RandomSourceConfig, event_id: int) -> np.ndarray:
    """Injected peak centres of one event as rows (panel, row, col); reproducible. The one
    ground truth: the frames, the evaluation and training all read it.

    Peaks keep a margin of 3 sigma from the panel edges and `min_peak_separation_px` from
    each other on the same panel, so each is a separate, whole spot. With `crystal` set they
    are the crystal's spots (`crystal_spots` has their Miller indices and orientation too).
    """
    if cfg.crystal is not None:
        return crystal_spots(cfg, event_id).positions
    wanted = cfg.peaks_per_frame
    if not wanted:
        return np.empty((0, 3))
    channels, height, width = cfg.frame_shape
    margin = math.ceil(3 * cfg.peak_sigma_px) + 1
    rng = np.random.default_rng((cfg.seed, int(event_id)))
    candidates = np.column_stack(
        [
            rng.integers(0, channels, 8 * wanted + 8),
            rng.uniform(margin, height - 1 - margin, 8 * wanted + 8),
            rng.uniform(margin, width - 1 - margin, 8 * wanted + 8),
        ]
    )
    chosen: list[np.ndarray] = []
    for cand in candidates:
        if len(chosen) == wanted:
            break
        if all(
            p[0] != cand[0] or math.dist(p[1:], cand[1:]) >= cfg.min_peak_separation_px
            for p in chosen
        ):
            chosen.append(cand)
    return np.array(chosen, dtype=np.float64).reshape(-1, 3)


class FrameGenerator:
    """Makes batches of frames for given event ids, from a pre-generated background pool."""

    def __init__(self, cfg: RandomSourceConfig) -> None:
        self.cfg = cfg
        rng = np.random.default_rng((cfg.seed, 1 << 32))
        shape = (cfg.pool_size, *cfg.frame_shape)
        self.pool = rng.poisson(cfg.background_mean, shape).astype(np.float32)
        radius = math.ceil(4 * cfg.peak_sigma_px)
        self._offsets = np.arange(-radius, radius + 1)

    def batch(self, event_ids: np.ndarray) -> np.ndarray:
        """Frames `(len(event_ids), C, H, W)` in the configured dtype."""
        cfg = self.cfg
        frames = np.empty((len(event_ids), *cfg.frame_shape), dtype=np.float32)
        for i, event_id in enumerate(event_ids):
            pick = int(event_id) % cfg.pool_size
            flips = tuple(
                ax for ax, bit in ((1, 1), (2, 2)) if (int(event_id) // cfg.pool_size) & bit
            )
            frames[i] = np.flip(self.pool[pick], flips) if flips else self.pool[pick]
            self._add_peaks(frames[i], *self._peaks(int(event_id)))
        return _cast(frames, cfg.dtype)

    def _peaks(self, event_id: int) -> tuple[np.ndarray, np.ndarray | float]:
        """(positions, heights) of an event's peaks: a crystal's spots fade with resolution."""
        if self.cfg.crystal is not None:
            spots = crystal_spots(self.cfg, event_id)
            return spots.positions, spots.amplitudes[:, None, None]
        return peak_positions(self.cfg, event_id), self.cfg.peak_amplitude

    def _add_peaks(self, frame: np.ndarray, peaks: np.ndarray, heights: np.ndarray | float) -> None:
        if not len(peaks):
            return
        sigma, off = self.cfg.peak_sigma_px, self._offsets
        panel = peaks[:, 0].astype(np.intp)[:, None, None]
        rows = np.floor(peaks[:, 1]).astype(np.intp)[:, None, None] + off[None, :, None]
        cols = np.floor(peaks[:, 2]).astype(np.intp)[:, None, None] + off[None, None, :]
        dist2 = (rows - peaks[:, 1, None, None]) ** 2 + (cols - peaks[:, 2, None, None]) ** 2
        values = heights * np.exp(-dist2 / (2 * sigma**2))
        rows, cols = np.broadcast_arrays(rows, cols)
        inside = (rows >= 0) & (rows < frame.shape[1]) & (cols >= 0) & (cols < frame.shape[2])
        panel = np.broadcast_to(panel, rows.shape)
        np.add.at(frame, (panel[inside], rows[inside], cols[inside]), values[inside])


def _cast(frames: np.ndarray, dtype: str) -> np.ndarray:
    if np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(frames), info.min, info.max).astype(dtype)
    return frames.astype(dtype, copy=False)


def event_ids_for(cfg: RandomSourceConfig, index: int) -> Iterator[int]:
    """Event ids of generator `index`: interleaved, so every actor covers the same time span."""
    step = cfg.num_actors
    if cfg.num_frames == 0:
        event = index
        while True:
            yield event
            event += step
    yield from range(index, cfg.num_frames, step)


class RandomSource(IngestActor):
    """Ingest actor emitting synthetic batches (see FrameGenerator), optionally rate-limited."""

    def prepare(self) -> None:
        self.gen_cfg = self.cfg.source.random
        self.generator = FrameGenerator(self.gen_cfg)

    def expected_frames(self) -> int | None:
        cfg = self.gen_cfg
        if not cfg.num_frames:
            return None
        mine = len(range(self.index, cfg.num_frames, cfg.num_actors))
        return max(0, mine - self.start_seq * cfg.batch_size)

    def batches(self) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
        cfg = self.gen_cfg
        # A restarted source resumes at batch start_seq: its events are a pure function of
        # (seed, event id), so the batches sent again are the very same batches.
        ids = islice(event_ids_for(cfg, self.index), self.start_seq * cfg.batch_size, None)
        t0, done = time.monotonic(), 0
        while not self.stopping.is_set():
            chunk = np.fromiter((e for _, e in zip(range(cfg.batch_size), ids)), dtype=np.int64)
            if not len(chunk):
                return
            self.waited(pace(self.stopping, t0, done, cfg.rate_hz))
            images = self.generator.batch(chunk)
            meta = {
                "event_id": chunk,
                "timestamp": np.full(len(chunk), time.time(), dtype=np.float64),
                "photon_energy_ev": np.full(len(chunk), cfg.photon_energy_ev),
            }
            done += len(chunk)
            yield images, meta
