"""What report.html shows of the output files: a few frames with the peaks found on them,
and the number of peaks of every row written.

Read from the run's CXI files (found next to summary.json, so a moved run directory still
works). Frames are stored for hits by default (`writer.images: hits`); with `images: none`
there are peak lists but no frames, and the page says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..writer.layout import DATA, LCLS, RESULT

MAX_FRAMES = 4


@dataclass
class FrameWithPeaks:
    image: np.ndarray  # the slab (C*H, W) as written
    rows: np.ndarray  # peak positions, slab row
    cols: np.ndarray
    label: str  # which file and event


@dataclass
class OutputFacts:
    peaks_per_row: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    frames: list[FrameWithPeaks] = field(default_factory=list)
    images_stored: bool = False
    files: int = 0
    problems: list[str] = field(default_factory=list)  # files that could not be read


def output_files(run_dir: Path, summary: dict[str, Any]) -> list[Path]:
    """The run's complete CXI files that are present next to summary.json."""
    names = [Path(f["path"]).name for f in summary.get("files", [])]
    return [run_dir / n for n in names if (run_dir / n).is_file()]


def read_outputs(paths: Sequence[Path], max_frames: int = MAX_FRAMES) -> OutputFacts:
    """Peaks per written row over every file; the first rows with a stored frame, spread
    over the files (at most `max_frames`)."""
    import h5py
    import hdf5plugin  # noqa: F401 - the frames' compression filters

    facts = OutputFacts(files=len(paths))
    counts = []
    per_file = max(1, -(-max_frames // max(len(paths), 1)))
    for path in paths:
        try:
            with h5py.File(path, "r") as f:
                n_peaks = f[f"{RESULT}/nPeaks"][:]
                counts.append(n_peaks)
                if DATA in f and f[DATA].shape[0]:
                    facts.images_stored = True
                    take = max_frames - len(facts.frames)
                    facts.frames += _frames(f, path.name, n_peaks, min(per_file, take))
        except (OSError, KeyError) as exc:
            facts.problems.append(f"{path.name}: {exc}")
    if counts:
        facts.peaks_per_row = np.concatenate(counts).astype(np.int64)
    return facts


def _frames(f: Any, name: str, n_peaks: np.ndarray, count: int) -> list[FrameWithPeaks]:
    """The `count` rows with the most peaks among the file's first rows."""
    if count <= 0:
        return []
    rows = np.argsort(-n_peaks[: 64 * count], kind="stable")[:count]
    events = f[f"{LCLS}/event_id"][:] if f"{LCLS}/event_id" in f else None
    out = []
    for row in sorted(int(r) for r in rows):
        n = int(n_peaks[row])
        event = f" (event {int(events[row])})" if events is not None else ""
        out.append(
            FrameWithPeaks(
                image=np.asarray(f[DATA][row], dtype=np.float32),
                rows=f[f"{RESULT}/peakYPosRaw"][row, :n],
                cols=f[f"{RESULT}/peakXPosRaw"][row, :n],
                label=f"{name} row {row}{event}: {n} peaks",
            )
        )
    return out


def recovery_errors(
    report: dict[str, Any], paths: Sequence[Path], max_events: int
) -> tuple[np.ndarray | None, int]:
    """Position errors (px) of the injected peaks recovered in the first `max_events` events
    of a random-source run, and how many events that was (None, 0 for other sources)."""
    from ..config import PipelineConfig
    from ..evaluate import (
        Tally,
        frames_per_stream,
        generated_event_ids,
        injected_slab_peaks,
        read_peak_lists,
    )

    cfg = PipelineConfig.model_validate(report["config"])
    if cfg.source.kind != "random" or not paths:
        return None, 0
    frames = frames_per_stream(cfg.source.random.batch_size, report["ingest"])
    found = read_peak_lists(paths)
    tally = Tally()
    events = generated_event_ids(cfg.source.random, frames)[:max_events]
    for event in events:
        truth = injected_slab_peaks(cfg.source.random, event)
        tally.add(truth, found.get(int(event), np.empty((0, 2))))
    return (np.concatenate(tally.errors) if tally.errors else np.empty(0)), len(events)
