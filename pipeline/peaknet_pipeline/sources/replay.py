"""Replay source: frames from HDF5/CXI files into Q1, for runs that can be repeated exactly.

Files are checked when the actor opens (`ready()`), and by `config validate` and the driver
before Ray starts, so a wrong path or dataset name fails the start with the name in the
message instead of after minutes of streaming. Batches do not span
files (a file's last batch may be short). Each event carries `event_id` (running over all
files and repeats), `file_index` and `frame_index` (its row in that file), so any output can be
traced back to its source frame.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ReplaySourceConfig
from .base import IngestActor
from .pacing import pace

log = logging.getLogger(__name__)


def check_files(cfg: ReplaySourceConfig) -> list[int]:
    """Frames per file; raises naming the file and dataset that is missing or unusable."""
    import h5py
    import hdf5plugin  # noqa: F401 - compressed CXI frames

    if not cfg.paths:
        raise ValueError("source.replay.paths is empty: name at least one HDF5/CXI file")
    counts = []
    for i, path in enumerate(cfg.paths):
        where = f"source.replay.paths[{i}] {path}"
        if not Path(path).is_file():
            raise FileNotFoundError(f"{where}: no such file")
        try:
            f = h5py.File(path, "r")
        except OSError as exc:
            raise OSError(f"{where}: not readable as HDF5 ({exc})") from None
        with f:
            data = f.get(cfg.images_dataset)
            if not isinstance(data, h5py.Dataset):
                raise KeyError(
                    f"{where}: no dataset {cfg.images_dataset!r} (source.replay.images_dataset)"
                )
            if data.ndim not in (3, 4):
                raise ValueError(
                    f"{where}: {cfg.images_dataset!r} has shape {data.shape}, "
                    "expected (N, H, W) or (N, C, H, W)"
                )
            for name in _metadata_datasets(cfg).values():
                meta = f.get(name)
                if meta is not None and meta.shape[:1] != data.shape[:1]:
                    raise ValueError(
                        f"{where}: {name!r} has shape {meta.shape}, but "
                        f"{cfg.images_dataset!r} has {data.shape[0]} frames"
                    )
            counts.append(data.shape[0])
    return counts


def frame_size(cfg: ReplaySourceConfig) -> tuple[int, int]:
    """(pixels, bytes per pixel) of the largest frame in the files (for the object-store
    budget); call after check_files."""
    import h5py

    sizes = []
    for path in cfg.paths:
        with h5py.File(path, "r") as f:
            data = f[cfg.images_dataset]
            sizes.append((int(np.prod(data.shape[1:])), data.dtype.itemsize))
    return max(sizes, key=lambda s: s[0] * s[1])


def _metadata_datasets(cfg: ReplaySourceConfig) -> dict[str, str]:
    named = {"photon_energy_ev": cfg.photon_energy_dataset, "timestamp": cfg.timestamp_dataset}
    return {key: path for key, path in named.items() if path}


class ReplaySource(IngestActor):
    """Ingest actor streaming `source.replay.paths` in order, `repeat` times."""

    def prepare(self) -> None:
        self.rcfg = self.cfg.source.replay
        self.reason = "not started"
        self._file_frames: list[int] = []

    def open(self) -> None:
        self._file_frames = check_files(self.rcfg)

    def expected_frames(self) -> int | None:
        if not self._file_frames:
            return None
        total = sum(self._file_frames) * self.rcfg.repeat
        return total - sum(n for _, _, _, n in self._plan()[: self.start_seq])

    def _plan(self) -> list[tuple[int, str, int, int]]:
        """Every batch in order: (file index, path, first frame, frames)."""
        size = self.rcfg.batch_size
        return [
            (file_index, path, start, min(size, frames - start))
            for _ in range(self.rcfg.repeat)
            for file_index, (path, frames) in enumerate(zip(self.rcfg.paths, self._file_frames))
            for start in range(0, frames, size)
        ]

    def batches(self) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
        cfg, counts = self.rcfg, self._file_frames
        log.info(
            "%s: replaying %d file(s), %d frames, %d time(s)",
            self.source_id,
            len(counts),
            sum(counts),
            cfg.repeat,
        )
        # A restarted source resumes at batch start_seq (batches never span files).
        plan = self._plan()
        event = sum(n for _, _, _, n in plan[: self.start_seq])
        t0, sent = time.monotonic(), 0
        for file_index, path, first, _ in _file_runs(plan[self.start_seq :]):
            for images, meta in self._file_batches(path, first):
                if self.stopping.is_set():
                    return
                self.waited(pace(self.stopping, t0, sent, cfg.rate_hz))
                n = images.shape[0]
                meta["event_id"] = np.arange(event, event + n, dtype=np.int64)
                meta["file_index"] = np.full(n, file_index, dtype=np.int32)
                event, sent = event + n, sent + n
                yield images, meta
        self.reason = f"end of data ({event} frames)"

    def _file_batches(
        self, path: str, first: int = 0
    ) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
        import h5py

        cfg = self.rcfg
        with h5py.File(path, "r") as f:
            data = f[cfg.images_dataset]
            extra = {}
            for key, name in _metadata_datasets(cfg).items():
                if name in f:
                    extra[key] = f[name][()]
                else:
                    log.warning(
                        "%s: %s has no %r; its events carry no %s", self.source_id, path, name, key
                    )
            for start in range(first, data.shape[0], cfg.batch_size):
                stop = min(start + cfg.batch_size, data.shape[0])
                images = data[start:stop]
                meta = {key: np.asarray(arr[start:stop]) for key, arr in extra.items()}
                if "photon_energy_ev" in meta:
                    meta["photon_energy_ev"] = meta["photon_energy_ev"].astype(np.float64)
                meta["frame_index"] = np.arange(start, stop, dtype=np.int64)
                yield (images[:, None] if images.ndim == 3 else images), meta


def _file_runs(plan: list[tuple[int, str, int, int]]) -> list[tuple[int, str, int, int]]:
    """The batches of a plan grouped into runs of one file (each pass over a file, from the
    first frame still to send): the first batch of each run."""
    runs: list[tuple[int, str, int, int]] = []
    for batch in plan:
        file_index, _, start, _ = batch
        if runs and runs[-1][0] == file_index and start > runs[-1][2]:
            continue
        runs.append(batch)
    return runs
