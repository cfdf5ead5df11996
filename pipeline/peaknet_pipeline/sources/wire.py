"""LCLStreamer message formats, both directions: in-memory HDF5 and NPZ (reference:
lclstreamer-wire.md). The pusher encodes with the same field mapping the ingest decodes with,
so a round trip is the test of both.

Decoding is defensive: every way a message can be wrong ends in one `WireError` whose `kind`
the ingest counts, never in another exception. Decoding is also the ingest's hot path, so the
buffer a socket hands over is read in place (`MemoryFile`), never copied to `bytes` first.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from typing import Any

import numpy as np

from ..config import SocketSourceConfig
from .daq_run import field_labels

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"
MIN_HDF5_BYTES = 96  # superblock and root group: anything shorter was cut off
KINDS = (
    "oversized",
    "truncated",
    "not_hdf5",
    "not_npz",
    "corrupt",
    "missing_field",
    "bad_rank",
    "bad_dtype",
    "batch_mismatch",
    "bad_shape",
    "empty",
    "non_finite",
)
OPTIONAL = {"original_shape"}  # present only when the streamer padded
# Metadata key of source.socket.daq_run.field: the socket source turns it into the events'
# `daq_run` labels (daq_run.py) and does not pass it on.
DAQ_RUN_FIELD = "daq_run_field"
NUMBER_KINDS = "fiu"
METADATA_KINDS = "fiuSU"


class WireError(ValueError):
    """A message that cannot become a batch. `kind` is one of KINDS; the text names the field."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


class MemoryFile(io.RawIOBase):
    """A read-only file over a buffer (a zmq frame, an nng message) without copying it:
    `io.BytesIO` would copy anything that is not `bytes`."""

    def __init__(self, buf: Any) -> None:
        self._view = memoryview(buf).cast("B")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = min(len(b), len(self._view) - self._pos)
        if n <= 0:
            return 0
        b[:n] = self._view[self._pos : self._pos + n]
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos


def wavelength_key(unit: str) -> str:
    """Metadata key of the wavelength field: the unit is configured, never guessed."""
    return {"nm": "wavelength_nm", "angstrom": "wavelength_angstrom"}[unit]


def field_map(cfg: SocketSourceConfig) -> dict[str, str]:
    """Metadata key (or "images" / "original_shape") -> dataset path or array name."""
    fields = cfg.hdf5 if cfg.format == "hdf5" else cfg.npz
    named = {
        "images": fields.images,
        "timestamp": fields.timestamp,
        wavelength_key(cfg.wavelength_unit): fields.wavelength,
        "photon_energy_ev": fields.photon_energy,
        "original_shape": getattr(fields, "original_shape", None),
        DAQ_RUN_FIELD: cfg.daq_run.field,
    }
    return {k: v for k, v in {**named, **fields.extra}.items() if v is not None}


# -- decode ------------------------------------------------------------------------------------
class Decoder:
    """Message bytes -> (images (B, C, H, W) in the configured dtype, metadata arrays of B)."""

    def __init__(self, cfg: SocketSourceConfig) -> None:
        self.format = cfg.format
        self.fields = field_map(cfg)
        self.dtype = np.dtype(cfg.dtype)
        self.non_finite = cfg.non_finite
        self.max_bytes = cfg.max_message_bytes
        self.zeroed_pixels = 0  # pixels set to 0 under non_finite="zero"

    def __call__(self, buf: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        view = memoryview(buf).cast("B")
        if len(view) > self.max_bytes:
            raise WireError("oversized", f"{len(view)} bytes > max_message_bytes {self.max_bytes}")
        read = _read_hdf5 if self.format == "hdf5" else _read_npz
        raw = read(view, self.fields, self.max_bytes)
        return self._assemble(raw)

    def _assemble(self, raw: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        path = self.fields["images"]
        images = raw.pop("images")
        if images.dtype.kind not in NUMBER_KINDS:
            raise WireError("bad_dtype", f"images {path!r} have dtype {images.dtype}, not numeric")
        if images.ndim == 3:
            images = images[:, None]
        if images.ndim != 4:
            raise WireError(
                "bad_rank",
                f"images {path!r} have shape {images.shape}, expected (B, H, W) or (B, C, H, W)",
            )
        if images.shape[0] == 0 or images.size == 0:
            raise WireError("empty", f"images {path!r} have shape {images.shape}")
        original = raw.pop("original_shape", None)
        if original is not None:
            images = crop_to_original(images, original, self.fields["original_shape"])
        batch = images.shape[0]
        meta = {key: self._metadata(key, arr, batch) for key, arr in raw.items()}
        with np.errstate(over="ignore"):  # out-of-range values become inf: checked next
            images = images.astype(self.dtype, order="C", copy=False)
        return self._check_finite(images, path), meta

    def _metadata(self, key: str, arr: np.ndarray, batch: int) -> np.ndarray:
        path = self.fields[key]
        if arr.dtype.kind not in METADATA_KINDS:
            raise WireError("bad_dtype", f"{key} {path!r} has dtype {arr.dtype}")
        if arr.ndim == 0 or (arr.ndim != 1 and key in ("timestamp", "photon_energy_ev")):
            raise WireError("bad_rank", f"{key} {path!r} has shape {arr.shape}, expected (B,)")
        if arr.shape[0] != batch:
            raise WireError(
                "batch_mismatch",
                f"{key} {path!r} has {arr.shape[0]} entries, images have B={batch}",
            )
        if key == DAQ_RUN_FIELD:
            try:
                field_labels(arr)
            except ValueError as exc:
                raise WireError("bad_dtype", f"DAQ run field {path!r}: {exc}") from None
        if key.startswith(("wavelength", "photon_energy")):
            if arr.ndim != 1 or arr.dtype.kind not in NUMBER_KINDS:
                raise WireError(
                    "bad_dtype", f"{key} {path!r} must be numbers (B,), got {arr.dtype} {arr.shape}"
                )
            return np.array(arr, dtype=np.float64)
        return np.array(arr)  # small, and owned: a view would keep the whole message alive

    def _check_finite(self, images: np.ndarray, path: str) -> np.ndarray:
        """`images`, or a copy with NaN/inf set to 0 (non_finite: zero); rejects otherwise."""
        if _all_finite(images):
            return images
        bad = ~np.isfinite(images)
        count = int(bad.sum())
        if self.non_finite == "reject":
            raise WireError(
                "non_finite",
                f"images {path!r}: {count} NaN/inf pixels (or beyond the {self.dtype} range)",
            )
        if not images.flags.writeable:  # read in place: the message itself is read-only
            images = images.copy()
        images[bad] = 0
        self.zeroed_pixels += count
        return images


def _all_finite(images: np.ndarray) -> bool:
    # One BLAS pass: NaN and inf survive a sum of squares, and an overflow of finite values
    # only costs the exact check. Three times faster than min() and max() here.
    flat = images.reshape(-1)
    fast = flat.sum(dtype=np.float32) if flat.dtype == np.float16 else np.vdot(flat, flat)
    return bool(np.isfinite(fast)) or bool(np.isfinite(images).all())


def crop_to_original(images: np.ndarray, original: np.ndarray, name: str) -> np.ndarray:
    """Undo the streamer's zero padding: it pads centred (top = dH // 2, left = dW // 2)."""
    shape = np.asarray(original).reshape(-1)
    if shape.size != 4 or shape.dtype.kind not in "iu":
        raise WireError("bad_shape", f"{name!r} is {original!r}, expected [B, C, H, W]")
    b, c, h, w = (int(n) for n in shape)
    if images.shape[:2] != (b, c) and images.shape[:2] == (b * c, 1):
        images = images.reshape(b, c, *images.shape[2:])  # streamers that stack panels
    if images.shape[:2] != (b, c) or not (0 < h <= images.shape[2] and 0 < w <= images.shape[3]):
        raise WireError(
            "bad_shape", f"{name!r} {[b, c, h, w]} does not fit images {list(images.shape)}"
        )
    top, left = (images.shape[2] - h) // 2, (images.shape[3] - w) // 2
    return images[:, :, top : top + h, left : left + w]


def _check_signature(view: memoryview, signature: bytes, kind: str, what: str) -> None:
    """A message must start with its format's signature; a prefix of it is a truncation."""
    head = bytes(view[: len(signature)])
    if head != signature:
        if len(view) < len(signature) and signature.startswith(head):
            raise WireError("truncated", f"{len(view)} bytes, shorter than {what} signature")
        raise WireError(kind, f"{len(view)} bytes without {what} signature")


def _read_hdf5(view: memoryview, fields: dict[str, str], limit: int) -> dict[str, np.ndarray]:
    import h5py
    import hdf5plugin  # noqa: F401 - registers bitshuffle/LZ4/zstd/zfp filters for reading

    _check_signature(view, HDF5_SIGNATURE, "not_hdf5", "an HDF5")
    try:
        f = h5py.File(MemoryFile(view), "r")
    except Exception as exc:  # noqa: BLE001 - any failure to open is a bad message
        short = "truncated" in str(exc) or len(view) < MIN_HDF5_BYTES
        kind = "truncated" if short else "corrupt"
        raise WireError(kind, f"HDF5 message ({len(view)} bytes) does not open: {exc}") from None
    raw = np.frombuffer(view, dtype=np.uint8)  # chunk addresses are offsets into this
    # Arrays read in place are views of the message: they keep its buffer alive.
    with f:
        return {key: _read_dataset(f, key, path, limit, raw) for key, path in fields.items()}


def _too_big(key: str, where: str, nbytes: int, limit: int) -> WireError:
    # A flipped dimension can declare terabytes; refuse before allocating anything.
    return WireError("oversized", f"{key} {where!r} declares {nbytes} bytes > {limit}")


def _read_dataset(f: Any, key: str, path: str, limit: int, raw: np.ndarray) -> np.ndarray:
    import h5py

    from .wire_chunks import check_filters, in_place

    try:
        obj = f.get(path)
        if obj is None:
            raise WireError("missing_field", f"{key}: no dataset {path!r} in the message")
        if not isinstance(obj, h5py.Dataset):
            raise WireError("missing_field", f"{key}: {path!r} is a group, not a dataset")
        if obj.dtype.kind == "O":
            if h5py.check_string_dtype(obj.dtype) is None:
                raise WireError("bad_dtype", f"{key}: {path!r} holds variable-length data")
            return np.asarray(obj.asstr()[()]).astype(str)
        if (obj.size or 0) * obj.dtype.itemsize > limit:
            raise _too_big(key, path, obj.size * obj.dtype.itemsize, limit)
        view = in_place(obj, raw)
        if view is not None:
            return view
        check_filters(obj, raw, f"{key} {path!r}")
        return np.asarray(obj[()])
    except WireError:
        raise
    except Exception as exc:  # noqa: BLE001 - broken chunks, filters, lengths: all bad input
        raise WireError("corrupt", f"{key}: dataset {path!r} unreadable: {exc}") from None


def _read_npz(view: memoryview, fields: dict[str, str], limit: int) -> dict[str, np.ndarray]:
    import zipfile

    _check_signature(view, ZIP_SIGNATURE, "not_npz", "a zip (npz)")
    try:
        archive = np.load(MemoryFile(view), allow_pickle=False)
    except zipfile.BadZipFile as exc:
        raise WireError(
            "truncated", f"NPZ message ({len(view)} bytes) does not open: {exc}"
        ) from None
    except Exception as exc:  # noqa: BLE001
        raise WireError(
            "corrupt", f"NPZ message ({len(view)} bytes) does not open: {exc}"
        ) from None
    with archive:
        present = set(archive.files)
        return {
            key: _read_member(archive, key, name, limit)
            for key, name in fields.items()
            if name in present or key not in OPTIONAL
        }


def _read_member(archive: Any, key: str, name: str, limit: int) -> np.ndarray:
    if name not in archive.files:
        raise WireError("missing_field", f"{key}: no array {name!r} in the message")
    member = f"{name}.npy" if f"{name}.npy" in archive.zip.namelist() else name
    size = archive.zip.getinfo(member).file_size
    if size > limit:
        raise _too_big(key, name, size, limit)
    try:
        return archive[name]
    except ValueError as exc:
        kind = "bad_dtype" if "allow_pickle" in str(exc) else "corrupt"
        raise WireError(kind, f"{key}: array {name!r} unreadable: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - CRC errors, zlib errors, bad headers
        raise WireError("corrupt", f"{key}: array {name!r} unreadable: {exc}") from None


# -- encode ------------------------------------------------------------------------------------
HDF5_COMPRESSION = ("none", "gzip", "lzf", "bitshuffle_lz4", "bitshuffle_zstd", "zstd")


def encode(
    images: np.ndarray,
    meta: dict[str, np.ndarray],
    cfg: SocketSourceConfig,
    compression: str = "none",
    pad_to: tuple[int, int] | None = None,
) -> bytes:
    """One message as LCLStreamer would send it; `decode` with the same `cfg` inverts it.

    `meta` keys are the decoded keys (timestamp, wavelength_nm or _angstrom per the unit,
    photon_energy_ev, extra keys); each goes to its configured path. `pad_to` (npz only)
    zero-pads frames centred to (H, W) and records the original shape, as the streamer does.
    """
    fields = field_map(cfg)
    unknown = sorted(set(meta) - set(fields))
    if unknown:
        raise ValueError(
            f"metadata {unknown} has no configured field in source.socket.{cfg.format}"
        )
    arrays = {fields[key]: np.asarray(value) for key, value in meta.items()}
    if pad_to is not None:
        if cfg.format != "npz" or "original_shape" not in fields:
            raise ValueError("pad_to needs format npz with an original_shape field")
        shape = images.shape if images.ndim == 4 else (images.shape[0], 1, *images.shape[1:])
        arrays[fields["original_shape"]] = np.array(shape, dtype=np.int64)
        images = pad_centred(images, pad_to)
    arrays = {fields["images"]: images, **arrays}
    if cfg.format == "npz":
        return _encode_npz(arrays, compression != "none")
    return _encode_hdf5(arrays, fields["images"], compression)


def pad_centred(images: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Zero-pad (B, C, H, W) frames to `shape`, centred like the streamer."""
    dh, dw = shape[0] - images.shape[-2], shape[1] - images.shape[-1]
    if dh < 0 or dw < 0:
        raise ValueError(f"pad_to {shape} is smaller than frames {images.shape[-2:]}")
    pad = [(0, 0)] * (images.ndim - 2) + [(dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2)]
    return np.pad(images, pad)


def _encode_npz(arrays: dict[str, np.ndarray], compressed: bool) -> bytes:
    out = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(out, **arrays)
    return out.getvalue()


def _hdf5_filter(compression: str) -> dict[str, Any]:
    import hdf5plugin

    if compression == "none":
        return {}
    if compression in ("gzip", "lzf"):
        return {"compression": compression}
    if compression.startswith("bitshuffle_"):
        return dict(hdf5plugin.Bitshuffle(cname=compression.split("_")[1]))
    if compression == "zstd":
        return dict(hdf5plugin.Zstd())
    raise ValueError(f"compression {compression!r}: expected one of {HDF5_COMPRESSION}")


def _encode_hdf5(arrays: dict[str, np.ndarray], images_path: str, compression: str) -> bytes:
    import h5py

    out = io.BytesIO()
    with h5py.File(out, "w") as f:
        for path, arr in arrays.items():
            if path == images_path:  # one chunk per event, as the streamer writes
                chunks = (1, *arr.shape[1:])
                f.create_dataset(path, data=arr, chunks=chunks, **_hdf5_filter(compression))
            elif arr.dtype.kind == "U":
                f.create_dataset(path, data=arr.astype(object), dtype=h5py.string_dtype())
            else:
                f.create_dataset(path, data=arr)
    return out.getvalue()


# -- accounting --------------------------------------------------------------------------------
class BadMessageLog:
    """Counts rejected messages by kind; logs the first of each kind with its reason, so a
    broken streamer is visible at once without flooding the log."""

    def __init__(self, who: str, logger: logging.Logger) -> None:
        self.who = who
        self.counts: Counter[str] = Counter()
        self._log = logger

    def record(self, err: WireError) -> None:
        self.counts[err.kind] += 1
        if self.counts[err.kind] == 1:
            self._log.warning(
                "%s: skipping bad message (%s); further %r messages are only counted",
                self.who,
                err,
                err.kind,
            )

    @property
    def total(self) -> int:
        return sum(self.counts.values())
