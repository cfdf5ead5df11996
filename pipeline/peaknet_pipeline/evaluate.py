"""How many injected peaks came back: CXI peak lists against the random source's ground truth.

The random source places peaks at positions that are a pure function of (seed, event id), so
a finished run can be checked without having kept anything but its CXI files. A crystal run
(`source.random.crystal`) is checked the same way: its spots come from the same function. Coordinates are
compared in the CXI raw layout: slab row = panel * H + row, column unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import RandomSourceConfig
from .sources.random import peak_positions
from .writer.layout import LCLS, RESULT

EVENT_IDS = f"{LCLS}/event_id"
NO_PEAKS = np.empty((0, 2))


def injected_slab_peaks(cfg: RandomSourceConfig, event_id: int) -> np.ndarray:
    """Injected peak centres of an event as (slab row, column) pairs: the random peaks or a
    crystal's spots, whichever the source drew (`peak_positions`, the one ground truth)."""
    peaks = peak_positions(cfg, event_id)
    height = cfg.frame_shape[1]
    return np.column_stack([peaks[:, 0] * height + peaks[:, 1], peaks[:, 2]])


def match(truth: np.ndarray, found: np.ndarray, tolerance_px: float) -> tuple[int, int, np.ndarray]:
    """(truth peaks with a found peak within tolerance, found peaks with no truth within it,
    the distances in px from each recovered truth peak to its nearest found peak)."""
    from scipy.spatial import cKDTree

    if not len(truth) or not len(found):
        return 0, len(found), np.empty(0)
    nearest = cKDTree(found).query(truth, distance_upper_bound=tolerance_px)[0]
    matched = np.isfinite(cKDTree(truth).query(found, distance_upper_bound=tolerance_px)[0])
    recovered = nearest[np.isfinite(nearest)]
    return len(recovered), int((~matched).sum()), recovered


@dataclass
class Tally:
    """Recovery counts summed over events, and the positional errors of recovered peaks."""

    tolerance_px: float = 1.5
    events: int = 0
    injected: int = 0
    recovered: int = 0
    found: int = 0
    spurious: int = 0
    errors: list[np.ndarray] = field(default_factory=list)

    def add(self, truth: np.ndarray, found: np.ndarray) -> None:
        """One event: its injected (truth) and found peak positions, (n, 2) each."""
        hit, extra, distances = match(truth, found, self.tolerance_px)
        self.events += 1
        self.injected += len(truth)
        self.recovered += hit
        self.found += len(found)
        self.spurious += extra
        self.errors.append(distances)

    def stats(self) -> dict[str, Any]:
        """recovered_frac is the recall, 1 - spurious_frac the precision; the position error
        is over recovered peaks (null when none was)."""
        errors = np.concatenate(self.errors) if self.errors else np.empty(0)
        return {
            "events": self.events,
            "injected": self.injected,
            "recovered": self.recovered,
            "found": self.found,
            "spurious": self.spurious,
            "recovered_frac": self.recovered / self.injected if self.injected else 0.0,
            "spurious_frac": self.spurious / self.found if self.found else 0.0,
            "tolerance_px": self.tolerance_px,
            "position_error_px": _error_stats(errors),
        }


def _error_stats(errors: np.ndarray) -> dict[str, float] | None:
    if not errors.size:
        return None
    return {
        "mean": round(float(errors.mean()), 4),
        "median": round(float(np.median(errors)), 4),
        "p95": round(float(np.percentile(errors, 95)), 4),
    }


def read_peak_lists(paths: Iterable[Path]) -> dict[int, np.ndarray]:
    """{event id: (n, 2) array of (row, col)} from CXI files written by this pipeline."""
    import h5py

    events: dict[int, np.ndarray] = {}
    for path in paths:
        with h5py.File(path, "r") as f:
            if EVENT_IDS not in f:  # a file with no rows (it only commits non-hits)
                continue
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
    e.g. non-hits, count as all of their peaks missed), and the positional error."""
    found_by_event = read_peak_lists(paths)
    tally = Tally(tolerance_px)
    for event in event_ids:
        tally.add(injected_slab_peaks(cfg, event), found_by_event.get(int(event), NO_PEAKS))
    stats = tally.stats()
    return {"events": stats.pop("events"), "events_in_files": len(found_by_event), **stats}


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
    cfg: RandomSourceConfig,
    files: list[Path],
    source_summaries: list[dict],
    tolerance_px: float = 1.5,
) -> dict[str, Any]:
    """Recovery over every event a random-source run produced, from the run's CXI files.

    A source that was restarted resumed at a batch its predecessor had sent or was sending
    (frames_per_stream)."""
    frames = frames_per_stream(cfg.batch_size, source_summaries)
    return recovery(files, cfg, generated_event_ids(cfg, frames), tolerance_px)


def source_index(summary: Mapping[str, Any]) -> int | None:
    """The index of the stream a source actor produced (`random-0` -> 0), None for a summary
    with no id (an actor that died before its first stats). Read from `source_id`, the stream:
    a replacement keeps its predecessor's stream under an id of its own (`random-0.1`), so an
    id's restart suffix is cut, never parsed as the index."""
    stream = summary.get("source_id") or summary.get("actor_id")
    if stream is None:
        return None
    return int(stream.rsplit("-", 1)[1].partition(".")[0])


def frames_per_stream(
    batch_size: int, source_summaries: Iterable[Mapping[str, Any]]
) -> dict[int, int]:
    """{stream index: frames it produced} from the source actors' summaries (restarted ones
    included). A replacement resumed at batch `start_seq`, one its predecessor had sent or was
    sending, so a stream produced its first max(start_seq x batch size + frames) events over
    its actors. The one reading of a source's index and frames: summary.json's recovery and
    report.html's error figure (monitor/cxifacts.py) count the same events."""
    frames: dict[int, int] = {}
    for s in source_summaries:
        index = source_index(s)
        if index is None:
            continue
        sent = int(s.get("start_seq", 0)) * batch_size + int(s.get("frames_out", 0))
        frames[index] = max(frames.get(index, 0), sent)
    return frames


class RunDirError(ValueError):
    """RUN_DIR is not a finished run of the random source that can be evaluated."""


def _read_json(path: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunDirError(f"{path} does not exist (is this a run's output directory?)") from None
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{path} is not readable JSON: {exc}") from None


def run_files(run_dir: Path, summary: dict[str, Any]) -> list[Path]:
    """The run's complete CXI files, found next to summary.json (so a moved or copied run
    directory still works)."""
    files = [run_dir / Path(f["path"]).name for f in summary.get("files", [])]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise RunDirError(f"CXI files listed in summary.json are missing: {', '.join(missing)}")
    return files


def evaluate_run(run_dir: str | Path, tolerance_px: float = 1.5) -> dict[str, Any]:
    """Recovery of a finished random-source run from its directory: report.json gives the
    config and how many frames each source actor made, summary.json the CXI files. After a
    hard stop (`complete` false) events only in `.part` files count as missed."""
    from .config import PipelineConfig

    run_dir = Path(run_dir)
    report = _read_json(run_dir / "report.json")
    summary = _read_json(run_dir / "summary.json")
    cfg = PipelineConfig.model_validate(report["config"])
    if cfg.source.kind != "random":
        raise RunDirError(
            f"{run_dir}: source.kind is {cfg.source.kind!r}; only runs of the random source "
            "have injected peaks to compare with"
        )
    files = run_files(run_dir, summary)
    stats = random_run_recovery(cfg.source.random, files, report["ingest"], tolerance_px)
    model = {"kind": cfg.model.kind, "weights_path": cfg.model.weights_path}
    complete = bool(summary.get("complete", True))
    return {"run_id": report["run_id"], "complete": complete, "model": model, **stats}


def model_label(model: dict[str, Any]) -> str:
    """Which model found the peaks, for the lines below (a config's `model` section)."""
    if model["kind"] == "threshold":
        return "threshold oracle"
    if not model.get("weights_path"):
        return "PeakNet, random weights"
    return f"PeakNet, weights {Path(model['weights_path']).name}"


def recovery_lines(stats: dict[str, Any], model: dict[str, Any]) -> list[str]:
    """Recall, precision and positional error in words (end of a run and `evaluate`)."""
    lines = [
        f"{model_label(model)}: injected peaks recovered within {stats['tolerance_px']:g} px: "
        f"{stats['recovered']} of {stats['injected']} ({stats['recovered_frac']:.1%}); "
        f"spurious {stats['spurious']} of {stats['found']} found ({stats['spurious_frac']:.1%})"
    ]
    precision = f"{1 - stats['spurious_frac']:.1%}" if stats["found"] else "n/a (none found)"
    figures = f"recall {stats['recovered_frac']:.1%}, precision {precision}"
    err = stats.get("position_error_px")
    if err:
        figures += (
            f"; position error of recovered peaks: mean {err['mean']:.2f} px, "
            f"median {err['median']:.2f} px, 95th percentile {err['p95']:.2f} px"
        )
    lines.append(figures)
    if model["kind"] == "peaknet" and not model.get("weights_path"):
        lines.append(
            "(the model has random weights, so these numbers mean nothing; set "
            "model.weights_path, or --set model.kind=threshold to check the pipeline itself)"
        )
    return lines
