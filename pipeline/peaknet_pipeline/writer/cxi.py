"""CXI files in the Cheetah layout CrystFEL reads (reference/cxi-crystfel.md).

One row per written event. Under `/entry_1/result_1`: `nPeaks` (N,) and the per-peak tables
`peakXPosRaw`, `peakYPosRaw`, `peakTotalIntensity`, `peakMaxIntensity`, `peakNPixels`, each
(N, MAXP) zero-padded (MAXP = writer.max_peaks). Frames go to `/entry_1/data_1/data`
(N, C*H, W) float32, one event per chunk, compressed as configured. `/LCLS/photon_energy_eV`
holds the photon energy; every other metadata key is kept verbatim in its own dtype under
`/LCLS/<key>` (so timestamps stay lossless: float64 seconds, uint64 (sec << 32) | nsec, or
strings); a uint64 `timestamp` also gets Cheetah's `machineTime`/`machineTimeNanoSeconds`.
`/peaknet` records where each row came from (source id, batch seq and index) and whether it
was a hit (rows of non-hits exist with images: all). Every peak dataset carries its units and
coordinate convention as attributes (pixel indices, no half-pixel shift; intensities in the
frames' detector units). The camera length and pixel size of `writer.geometry` are stored in
`/entry_1/instrument_1/detector_1/{distance,x_pixel_size,y_pixel_size}` (metres) and per event
in `/LCLS/detector_1/EncoderValue` (mm); the CrystFEL geometry file `<prefix>.geom` that reads
these files is written next to them once the frame shape is known (geometry.py).

A file is written as `<name>.cxi.part` and renamed to `<name>.cxi` only once complete and
closed, so a reader (or CrystFEL) globbing `*.cxi` never sees a half-written file. Files rotate
after `events_per_file` rows, and also when the frame shape or metadata schema changes (a
file's datasets have one shape and dtype each). The peak tables are mostly padding, so they are
always deflate-compressed (level 1; deflate is built into every HDF5, CrystFEL reads it).
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..config.geometry import GeometryConfig
from ..config.models import COMPRESSION_LEVELS
from .layout import (
    DATA,
    DETECTOR,
    ENCODER,
    LCLS,
    PEAK_ATTRS,
    PEAK_TABLES,
    PROV,
    PROVENANCE,
    RESULT,
    TIMESTAMP_ENCODING,
)
from .ledger import write_ledger
from .peaks import PeakList

log = logging.getLogger("peaknet_pipeline.writer")

HC_EV_NM = 1239.84198  # photon energy (eV) = HC_EV_NM / wavelength (nm)
HC_EV_ANGSTROM = 12398.4198
TABLE_ROWS_PER_CHUNK = 64
TABLE_COMPRESSION = {"compression": "gzip", "compression_opts": 1}


def photon_energy_ev(meta: dict[str, np.ndarray]) -> np.ndarray | None:
    """Photon energy in eV from whichever unit the source gave; None when none is present.

    Units are part of the key, never guessed: `wavelength_nm` and `wavelength_angstrom`
    differ by a factor of ten (an earlier writer took nm for Angstrom). Non-positive
    wavelengths give NaN.
    """
    if "photon_energy_ev" in meta:
        return np.asarray(meta["photon_energy_ev"], dtype=np.float64)
    for key, hc in (("wavelength_nm", HC_EV_NM), ("wavelength_angstrom", HC_EV_ANGSTROM)):
        if key in meta:
            wl = np.asarray(meta[key], dtype=np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where(wl > 0, hc / wl, np.nan)
    return None


def compression_options(compression: str, level: int | None) -> dict[str, Any]:
    """h5py create_dataset keywords for writer.compression / writer.compression_level.

    lzf is an h5py-only filter: CrystFEL (plain HDF5) cannot read lzf frames; bitshuffle_lz4
    and zstd need the hdf5plugin filters on the reader's side too.
    """
    if compression == "none":
        return {}
    if compression == "lzf":
        return {"compression": "lzf"}
    if level is not None:
        low, high = COMPRESSION_LEVELS.get(compression, (level, level - 1))
        if not low <= level <= high:
            raise ValueError(
                f"writer.compression_level: {level} does not fit compression={compression!r} "
                f"(levels: {COMPRESSION_LEVELS})"
            )
    if compression == "gzip":
        level = 4 if level is None else level
        return {"compression": "gzip", "compression_opts": level, "shuffle": True}
    import hdf5plugin

    if compression == "bitshuffle_lz4":
        return dict(hdf5plugin.Bitshuffle(cname="lz4"))
    if compression == "zstd":
        return dict(hdf5plugin.Zstd(clevel=3 if level is None else level))
    raise ValueError(f"writer.compression: unknown value {compression!r}")


@dataclass
class Rows:
    """Events to write as rows, all from one Result (one source id and batch seq)."""

    peaks: list[PeakList]
    hit: np.ndarray  # bool (k,)
    meta: dict[str, np.ndarray]  # per-event metadata, first dimension k
    images: np.ndarray | None  # (k, C, H, W), None when frames are not written
    source_id: str
    batch_seq: int
    batch_index: np.ndarray  # int (k,): position of each event in its batch
    frame_shape: tuple[int, int, int] | None = None  # (C, H, W), for the geometry file

    def __len__(self) -> int:
        return len(self.peaks)

    def take(self, start: int, stop: int) -> Rows:
        s = slice(start, stop)
        return replace(
            self,
            peaks=self.peaks[s],
            hit=self.hit[s],
            meta={k: v[s] for k, v in self.meta.items()},
            images=None if self.images is None else self.images[s],
            batch_index=self.batch_index[s],
        )


def metadata_column(arr: np.ndarray) -> tuple[np.ndarray, str] | None:
    """(values to write, type label) for one metadata array; None if HDF5 cannot hold it.

    The label is the numpy dtype string for numbers (kept exactly), "str" or "bytes" for
    text (variable-length in the file, so batches with different string lengths share a file).
    """
    if arr.ndim > 1 and 0 in arr.shape[1:]:
        return None  # (B, 0): nothing per event to write, and HDF5 cannot chunk it
    if arr.dtype.kind in "biuf":
        return arr, arr.dtype.str
    if arr.dtype.kind == "U" or (
        arr.dtype.kind == "O" and all(isinstance(v, str) for v in arr.ravel())
    ):
        return arr.astype(object), "str"
    if arr.dtype.kind == "S":
        return arr.astype(object), "bytes"
    return None


def _h5_dtype(label: str) -> Any:
    import h5py

    if label == "str":
        return h5py.string_dtype("utf-8")
    if label == "bytes":
        return h5py.string_dtype("ascii")
    return np.dtype(label)


def meta_schema(rows: Rows) -> tuple:
    """What a file's datasets are shaped by: frame shape and each metadata column's type."""
    cols = []
    for key, arr in sorted(rows.meta.items()):
        col = metadata_column(arr)
        if col is not None:
            cols.append((key, col[1], arr.shape[1:]))
    frame = None if rows.images is None else tuple(rows.images.shape[1:])
    return frame, tuple(cols)


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CxiFile:
    """One CXI file being written under its `.part` name; `close` renames it into place."""

    def __init__(
        self,
        path: str,
        schema: tuple,
        max_peaks: int,
        image_opts: dict,
        attrs: dict,
        geometry: GeometryConfig,
    ) -> None:
        import h5py

        self.path, self.part = path, path + ".part"
        self.schema, self.max_peaks = schema, max_peaks
        self.camera_length_mm = geometry.camera_length_m * 1e3
        self.rows = self.hits = 0
        self.broken = False  # an append failed midway: the file is never renamed into place
        self._h5 = h5py.File(self.part, "w")
        self._h5.attrs.update(attrs)
        self._h5.attrs["creation_time"] = datetime.datetime.now(datetime.timezone.utc).isoformat()
        self._h5["cxi_version"] = 150
        chunk = (TABLE_ROWS_PER_CHUNK, max_peaks)
        self._grow(f"{RESULT}/nPeaks", (), np.int32).attrs.update(PEAK_ATTRS["nPeaks"])
        for name, (_, dtype) in PEAK_TABLES.items():
            dset = self._grow(f"{RESULT}/{name}", (max_peaks,), dtype, chunk, **TABLE_COMPRESSION)
            dset.attrs.update(PEAK_ATTRS[name])
        self._grow(f"{LCLS}/photon_energy_eV", (), np.float64).attrs["units"] = "eV"
        self._describe_detector(geometry)
        for name, dtype in PROVENANCE.items():
            self._grow(f"{PROV}/{name}", (), _h5_dtype(dtype))
        frame, cols = schema
        if frame is not None:
            c, h, w = frame
            self._grow(DATA, (c * h, w), np.float32, chunks=(1, c * h, w), **image_opts)
        for key, label, rest in cols:
            dset = self._grow(f"{LCLS}/{key.replace('/', '_')}", rest, _h5_dtype(label))
            if key == "timestamp":
                dset.attrs["encoding"] = TIMESTAMP_ENCODING.get(label, "as received")
        if any(key == "timestamp" and label == "<u8" for key, label, _ in cols):
            self._grow(f"{LCLS}/machineTime", (), np.uint32)
            self._grow(f"{LCLS}/machineTimeNanoSeconds", (), np.uint32)

    def _describe_detector(self, geometry: GeometryConfig) -> None:
        """Camera length and pixel size where CXI and Cheetah readers look for them: the CXI
        detector group (metres, constant) and Cheetah's per-event encoder value (mm, the unit
        CrystFEL assumes for `clen = /LCLS/detector_1/EncoderValue`)."""
        for name, value in (
            ("distance", geometry.camera_length_m),
            ("x_pixel_size", geometry.pixel_size_m),
            ("y_pixel_size", geometry.pixel_size_m),
        ):
            self._h5[f"{DETECTOR}/{name}"] = value
            self._h5[f"{DETECTOR}/{name}"].attrs["units"] = "m"
        encoder = self._grow(ENCODER, (), np.float64)
        encoder.attrs["units"] = "mm"
        encoder.attrs["description"] = "camera length (writer.geometry.camera_length_m)"

    def _grow(self, name: str, rest: tuple, dtype: Any, chunks: tuple | None = None, **opts):
        chunks = chunks or (TABLE_ROWS_PER_CHUNK * 16, *rest)
        return self._h5.create_dataset(
            name, shape=(0, *rest), maxshape=(None, *rest), dtype=dtype, chunks=chunks, **opts
        )

    def _append(self, name: str, values: np.ndarray) -> None:
        dset = self._h5[name]
        dset.resize(self.rows + len(values), axis=0)
        dset[self.rows :] = values

    def append(self, rows: Rows, energy: np.ndarray) -> None:
        """Write `rows` (same schema as the file) as the next rows of every dataset."""
        try:
            self._append_rows(rows, energy)
        except BaseException:
            self.broken = True
            raise

    def _append_rows(self, rows: Rows, energy: np.ndarray) -> None:
        k, maxp = len(rows), self.max_peaks
        counts = np.array([p.n for p in rows.peaks], dtype=np.int32)
        self._append(f"{RESULT}/nPeaks", counts)
        for name, (field, dtype) in PEAK_TABLES.items():
            table = np.zeros((k, maxp), dtype=dtype)
            for i, p in enumerate(rows.peaks):
                table[i, : p.n] = getattr(p, field)
            self._append(f"{RESULT}/{name}", table)
        self._append(f"{LCLS}/photon_energy_eV", energy)
        self._append(ENCODER, np.full(k, self.camera_length_mm))
        self._append(f"{PROV}/source_id", np.array([rows.source_id] * k, dtype=object))
        self._append(f"{PROV}/batch_seq", np.full(k, rows.batch_seq, dtype=np.int64))
        self._append(f"{PROV}/batch_index", rows.batch_index)
        self._append(f"{PROV}/hit", rows.hit)
        self._append(f"{PROV}/peaks_dropped", [p.dropped for p in rows.peaks])
        if rows.images is not None:
            frames = rows.images.reshape(k, -1, rows.images.shape[-1])
            self._append(DATA, frames.astype(np.float32, copy=False))
        for key, _, _ in self.schema[1]:
            values, _ = metadata_column(rows.meta[key])
            self._append(f"{LCLS}/{key.replace('/', '_')}", values)
            if key == "timestamp" and values.dtype == np.uint64:
                self._append(f"{LCLS}/machineTime", (values >> 32).astype(np.uint32))
                nsec = (values & 0xFFFFFFFF).astype(np.uint32)
                self._append(f"{LCLS}/machineTimeNanoSeconds", nsec)
        self.rows += k
        self.hits += int(rows.hit.sum())

    def close(self, ledger: list | None = None, consumer: str = "") -> dict[str, Any]:
        """Write the ledger of the Results this file commits (ledger.py), close, flush to disk
        and rename to the final name: the rename commits rows and ledger at once. Returns the
        file's entry.

        A broken file (a write failed midway, datasets may disagree in length) keeps its
        `.part` name, and its entry names that path; it commits nothing.
        """
        if self.broken:
            self._h5.close()
            log.error("%s: a write failed midway; left as %s", self.path, self.part)
            return {"path": self.part, "events": self.rows, "hits": self.hits}
        if ledger is not None:
            write_ledger(self._h5, ledger, consumer)
        self._h5.attrs["events"] = self.rows
        self._h5.attrs["hits"] = self.hits
        self._h5.close()
        _fsync_path(self.part)
        os.replace(self.part, self.path)
        _fsync_path(os.path.dirname(self.path) or ".")
        return {"path": self.path, "events": self.rows, "hits": self.hits}
