"""How many injected peaks came back: CXI peak lists against the random source's ground truth.

The random source places peaks at positions that are a pure function of (seed, event id), so
a finished run can be checked without having kept anything but its CXI files. Coordinates are
compared in the CXI raw layout: slab row = panel * H + row, column unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .config import RandomSourceConfig
from .sources.random import peak_positions
from .writer.layout import LCLS, RESULT

EVENT_IDS = f"{LCLS}/event_id"


def injected_slab_peaks(cfg: RandomSourceConfig, event_id: int) -> np.ndarray:
    """Injected peak centres of an event as (slab row, column) pairs."""
    peaks = peak_positions(cfg, event_id)
    height = cfg.frame_shape[1]
    return np.column_stack([peaks[:, 0] * height + peaks[:, 1], peaks[:, 2]])


def match(truth: np.ndarray, found: np.ndarray, tolerance_px: float) -> tuple[int, int]:
    """(truth peaks with a found peak within tolerance, found peaks with no truth within it)."""
    from scipy.spatial import cKDTree

    if not len(truth) or not len(found):
        return 0, len(found)
    recovered = np.isfinite(cKDTree(found).query(truth, distance_upper_bound=tolerance_px)[0])
    matched = np.isfinite(cKDTree(truth).query(found, distance_upper_bound=tolerance_px)[0])
    return int(recovered.sum()), int((~matched).sum())


def read_peak_lists(paths: Iterable[Path]) -> dict[int, np.ndarray]:
    """{event id: (n, 2) array of (row, col)} from CXI files written by this pipeline."""
    import h5py

    events: dict[int, np.ndarray] = {}
    for path in paths:
        with h5py.File(path, "r") as f:
            counts = f[f"{RESULT}/nPeaks"][:]
            rows, cols = f[f"{RESULT}/peakYPosRaw"][:], f[f"{RESULT}/peakXPosRaw"][:]
            for i, event in enumerate(f[EVENT_IDS][:]):
                n = int(counts[i])
                events[int(event)] = np.column_stack([rows[i, :n], cols[i, :n]])
    return events


def recovery(
    paths: Iterable[Path],
    cfg: RandomSourceConfig,
    event_ids: Iterable[int],
    tolerance_px: float = 1.5,
) -> dict[str, Any]:
    """Recovered and spurious peak fractions over `event_ids` (events absent from the files,
    e.g. non-hits, count as all of their peaks missed)."""
    found_by_event = read_peak_lists(paths)
    injected = recovered = spurious = found = events = 0
    for event in event_ids:
        truth = injected_slab_peaks(cfg, event)
        peaks = found_by_event.get(int(event), np.empty((0, 2)))
        hit, extra = match(truth, peaks, tolerance_px)
        injected, recovered, spurious = injected + len(truth), recovered + hit, spurious + extra
        found, events = found + len(peaks), events + 1
    return {
        "events": events,
        "events_in_files": len(found_by_event),
        "injected": injected,
        "recovered": recovered,
        "found": found,
        "spurious": spurious,
        "recovered_frac": recovered / injected if injected else 0.0,
        "spurious_frac": spurious / found if found else 0.0,
        "tolerance_px": tolerance_px,
    }


def generated_event_ids(cfg: RandomSourceConfig, frames_per_actor: dict[int, int]) -> list[int]:
    """Event ids the random source actually produced, given each actor's frame count (a run
    stopped early produced a prefix of each actor's sequence)."""
    from itertools import islice

    from .sources.random import event_ids_for

    return sorted(
        event
        for index, frames in frames_per_actor.items()
        for event in islice(event_ids_for(cfg, index), frames)
    )


def random_run_recovery(
    cfg: RandomSourceConfig, files: list[Path], source_summaries: list[dict]
) -> dict[str, Any]:
    """Recovery over every event a random-source run produced, from the run's CXI files."""
    frames = {int(s["id"].rsplit("-", 1)[1]): int(s["frames"]) for s in source_summaries}
    return recovery(files, cfg, generated_event_ids(cfg, frames))
