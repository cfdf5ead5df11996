"""The rotating sequence of CXI files one writer owns, and what each file commits.

Files are written as `<prefix>-wNN-SSSS.cxi.part` and renamed when complete (cxi.py). A
Result's rows never span two files: a file rotates before a Result that does not fit (or
whose metadata schema differs), and one Result larger than `events_per_file` gets a file of
its own. Every Result handled, with rows or without, joins the commit of the file that is
open, and closing the file commits them all (ledger.py); `committed()` hands the keys of
committed Results to the writer, which then acknowledges them. Results without rows while no
file is open wait for the next file; when they alone reach `events_per_file` events, a file
with no rows is written to commit them (a writer that sees no hits for a long time does not
hold ever more Results).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import replace
from typing import Any

import numpy as np

from ..config.geometry import GeometryConfig
from .cxi import CxiFile, Rows, compression_options, meta_schema, metadata_column, photon_energy_ev
from .geometry import crystfel_geometry
from .layout import RESERVED_LCLS
from .ledger import LedgerEntry

log = logging.getLogger("peaknet_pipeline.writer")


class CxiSeries:
    """The rotating sequence of files one writer owns: `<prefix>-wNN-SSSS.cxi`.

    A sequence number whose `.cxi`, `.cxi.part` or `.cxi.incomplete` (a `.part` a restarted
    service set aside) already exists is skipped, so a restarted writer never overwrites a
    finished file or hides the remains of a crashed one.
    """

    def __init__(
        self,
        output_dir: str,
        prefix: str,
        writer_index: int,
        events_per_file: int,
        max_peaks: int,
        compression: str = "bitshuffle_lz4",
        compression_level: int | None = None,
        attrs: dict | None = None,
        geometry: GeometryConfig | None = None,
        consumer: str = "",
    ) -> None:
        self.output_dir, self.prefix, self.index = output_dir, prefix, writer_index
        self.events_per_file, self.max_peaks = events_per_file, max_peaks
        self.image_opts = compression_options(compression, compression_level)
        self.geometry = geometry or GeometryConfig()
        self.attrs = {**(attrs or {}), "writer_index": writer_index}
        self.files: list[dict[str, Any]] = []
        self.notes: Counter[str] = Counter()  # events affected by something worth knowing
        self._seq = 0
        self._file: CxiFile | None = None
        self._geometry_written = False
        self._geometry_problem: str | None = None  # why <prefix>.geom could not be written
        self.consumer = consumer  # stamped on each file with its ledger
        self._open_commit: list[LedgerEntry] = []  # handled since the last file closed
        self._committed: list[tuple[str, int]] = []  # keys committed, not yet handed out
        os.makedirs(output_dir, exist_ok=True)

    def _note(self, kind: str, count: int, detail: str) -> None:
        if kind not in self.notes:
            log.warning("writer %d: %s (%s); counted in the summary", self.index, kind, detail)
        self.notes[kind] += count

    def _next_path(self) -> tuple[str, int]:
        while True:
            seq, self._seq = self._seq, self._seq + 1
            name = f"{self.prefix}-w{self.index:02d}-{seq:04d}.cxi"
            path = os.path.join(self.output_dir, name)
            taken = (path, path + ".part", path + ".incomplete")  # .incomplete: service.py
            if not any(os.path.exists(p) for p in taken):
                return path, seq

    def _open(self, schema: tuple, frame_shape: tuple | None) -> CxiFile:
        frame_shape = schema[0] or frame_shape
        if frame_shape is not None and not self._geometry_written:
            self._write_geometry(tuple(frame_shape))
        path, seq = self._next_path()
        attrs = {**self.attrs, "file_index": seq}
        return CxiFile(path, schema, self.max_peaks, self.image_opts, attrs, self.geometry)

    def write_geometry(self, frame_shape: tuple[int, int, int]) -> None:
        """Write `<prefix>.geom` now if it is not written yet (a DAQ run's folder gets one
        with its first Result, hits or not); a geometry that does not fit is tried once."""
        if not self._geometry_written and self._geometry_problem is None:
            self._write_geometry(frame_shape)

    def _write_geometry(self, frame_shape: tuple[int, int, int]) -> None:
        """Write `<prefix>.geom` (every writer writes the same text; each replaces it whole).

        A geometry that does not fit the frames (panels listed for another C) leaves the CXI
        files intact: their rows are counted under the note `geometry_not_written`.
        """
        try:
            text = crystfel_geometry(self.geometry, frame_shape)
        except ValueError as exc:
            self._geometry_problem = str(exc)
            return
        path = os.path.join(self.output_dir, f"{self.prefix}.geom")
        tmp = f"{path}.w{self.index:02d}.tmp"
        with open(tmp, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
        self._geometry_written, self._geometry_problem = True, None

    def _clean_meta(self, rows: Rows) -> Rows:
        meta = {}
        for key, arr in rows.meta.items():
            if key == "photon_energy_ev":
                continue  # written as /LCLS/photon_energy_eV
            if not key or "/" in key or key in RESERVED_LCLS:
                self._note(
                    f"metadata_name_unusable:{key}", len(rows), "empty, has '/', or is reserved"
                )
                continue
            if metadata_column(arr) is None:
                self._note(f"metadata_not_written:{key}", len(rows), f"dtype {arr.dtype}")
                continue
            meta[key] = arr
        return replace(rows, meta=meta)

    def write(self, rows: Rows, entry: LedgerEntry | None = None) -> None:
        """Append the rows of one Result (and its ledger entry to the open commit), rotating
        first when they do not fit the open file or its schema; close the file once full."""
        energy = photon_energy_ev(rows.meta)
        if energy is None:
            self._note("no_photon_energy", len(rows), "no photon_energy_ev or wavelength key")
            energy = np.full(len(rows), np.nan)
        rows = self._clean_meta(rows)
        schema = meta_schema(rows)
        if self._file is not None and self._file.schema != schema:
            self._note("rotated_on_schema_change", 1, f"new schema {schema}")
            self.close_file()
        if self._file is not None and self._file.rows + len(rows) > self.events_per_file:
            self.close_file()
        if self._file is None:
            self._file = self._open(schema, rows.frame_shape)
        self._file.append(rows, energy)
        if entry is not None:
            self._open_commit.append(entry)
        if self._geometry_problem is not None:
            self._note("geometry_not_written", len(rows), self._geometry_problem)
        if self._file.rows >= self.events_per_file:
            self.close_file()

    def record(self, entry: LedgerEntry) -> None:
        """A Result handled without rows (non-hits, a failure) joins the open commit."""
        self._open_commit.append(entry)
        waiting = sum(e.counts["events"] for e in self._open_commit)
        if self._file is None and waiting >= self.events_per_file:
            self._file = self._open((None, ()), None)  # a file with no rows, for the ledger
            self.close_file()

    def close_file(self, force: bool = False) -> list[LedgerEntry]:
        """Close the open file, committing what it accounts for; with `force`, Results
        without rows waiting for a file get one with no rows. A broken file (a write failed
        midway) commits nothing; the entries it would have committed are returned, and stay
        in the open commit for the writer to settle."""
        if self._file is None and force and self._open_commit:
            self._file = self._open((None, ()), None)
        if self._file is None:
            return []
        broken = self._file.broken
        self.files.append(self._file.close(None if broken else self._open_commit, self.consumer))
        self._file = None
        if broken:
            return list(self._open_commit)
        self._committed += [e.key for e in self._open_commit]
        self._open_commit = []
        return []

    def committed(self) -> list[tuple[str, int]]:
        """Keys of the Results committed since the last call."""
        keys, self._committed = self._committed, []
        return keys

    def uncommitted(self) -> list[LedgerEntry]:
        """Take the Results handled and not committed (at the end, with no file to close)."""
        entries, self._open_commit = self._open_commit, []
        return entries

    @property
    def current_path(self) -> str | None:
        return None if self._file is None else self._file.part

    @property
    def current_rows(self) -> int:
        """Events written to the open file so far (0 when none is open)."""
        return 0 if self._file is None else self._file.rows
