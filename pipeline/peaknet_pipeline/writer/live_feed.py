"""The live CrystFEL feed's pure parts: one hit as the MsgPack map indexamajig reads, the
geometry file that tells indexamajig where in that map to look, and the bounded buffer of
the newest hits. No sockets and no Ray here (feed.py serves them).

What indexamajig does with the feed (CrystFEL, github.com/taw10/crystfel @ 80f2485):
- src/im-zmq.c, im_zmq_connect (lines 73-94) and im_zmq_fetch (131-171): with
  `--zmq-request=STR` each worker opens a REQ socket, sends STR and receives ONE message
  part, the whole frame; it waits in 3 s slices (ZMQ_RCVTIMEO 3000) without sending again,
  so a request may be held until a hit arrives. src/indexamajig.c (571-576) drops a reply of
  15 bytes or fewer. doc/articles/online.rst lines 37-60: use REQ, not SUB, with `-j N`.
- libcrystfel/src/image-msgpack.c, find_main_object (49-69): the message is one map (or an
  array whose first element is that map). find_msgpack_kv (72-105) compares the first
  len(map key) bytes only: a map key that is a prefix of a looked-up name matches it, so no
  key of ours is a prefix of another name CrystFEL looks up (`KEYS_UNAMBIGUOUS` checks it).
- load_msgpack_data (318-439): the panel's `data` key names a map with `type` (a str, "<f4"
  or "<i4"), `shape` (an array of exactly two unsigned ints: [slow, fast]) and `data` (a
  binary object, row-major); no `dimN` line may appear in the geometry (330-336).
- image_msgpack_read_header_to_cache (245-315): `photon_energy` and `clen` keys hold a
  float64/float32 or an int.
- image_msgpack_read_peaks (131-229): the `peak_list` key names a map of arrays `fs`, `ss`,
  `intensity` of equal length, each element read as `via.f64`: they must be MsgPack floats
  (an int element would be read as garbage), so we send float64.
- Half-pixel convention (image-msgpack.c 121-126, 146, 214-215; src/im-argparse.c 792 and
  394-395): indexamajig ADDS 0.5 to fs and ss unless run with --no-half-pixel-shift, because
  CrystFEL measures peaks from the pixel's corner while Cheetah-like producers give pixel
  indices (0.0 = centre of the first pixel). The feed sends pixel indices, exactly the
  numbers of the CXI files' peakXPosRaw/peakYPosRaw (writer/layout.py PIXEL_INDEX), so
  indexamajig's default shift is right for both; do not pass --no-half-pixel-shift.
- Geometry syntax (libcrystfel/src/datatemplate.c): `photon_energy = KEY eV`
  (parse_photon_energy, 780-809), `clen = KEY mm` (top level only: parse_toplevel 869,
  im_get_length 1825-1900 takes "mm" or "m"), `peak_list = KEY` (887), `PANEL/data = KEY`
  (parse_field_for_panel 560). MsgPack keys are plain names, not HDF5 paths.

Multi-panel frames: CrystFEL's MsgPack reader takes one 2-D array, so (C, H, W) frames are
sent as the (C*H, W) slab of the CXI files, panel c at rows c*H .. (c+1)*H - 1, and the
feed's geometry lists the same panels as the CXI geometry (geometry.panel_layout); peak rows
are already slab rows (peaks.py). All panels share one `data` key, as --peaks=msgpack
requires (online.rst 148-152).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..config.geometry import GeometryConfig
from .geometry import _number, panel_layout, panel_lines

GEOMETRY_FILE = "peaknet-live.geom"
IMAGE_KEY = "peaknet_image"  # the panel's `data` key: the serialised NumPy map
PEAKS_KEY = "peaknet_peaks"  # `peak_list`: {fs, ss, intensity}
ENERGY_KEY = "photon_energy_ev"  # `photon_energy = photon_energy_ev eV`
CLEN_KEY = "detector_distance_mm"  # `clen = detector_distance_mm mm`
ID_KEYS = ("source_id", "batch_seq", "batch_index")  # where the frame came from (CXI /peaknet)
LOOKED_UP = (IMAGE_KEY, PEAKS_KEY, ENERGY_KEY, CLEN_KEY)  # what CrystFEL asks the top map for
MIN_REPLY_BYTES = 16  # indexamajig.c drops a message of 15 bytes or fewer


def prefix_clashes(keys: list[str], names: tuple[str, ...]) -> list[tuple[str, str]]:
    """(map key, looked-up name) pairs where find_msgpack_kv would take the key for another
    name: the key is a proper prefix of the name (empty keys match everything)."""
    return [(k, n) for n in names for k in keys if k != n and n.startswith(k)]


KEYS_UNAMBIGUOUS = not prefix_clashes([*LOOKED_UP, *ID_KEYS], LOOKED_UP)


def slab(image: np.ndarray) -> np.ndarray:
    """A (C, H, W) or (H, W) frame as the (C*H, W) float32 slab the CXI files store."""
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim == 3:
        arr = arr.reshape(arr.shape[0] * arr.shape[1], arr.shape[2])
    if arr.ndim != 2:
        raise ValueError(f"a frame must be (C, H, W) or (H, W), not {arr.shape}")
    return np.ascontiguousarray(arr)


def frame_map(
    image: np.ndarray,
    fs: np.ndarray,
    ss: np.ndarray,
    intensity: np.ndarray,
    photon_energy_ev: float,
    clen_mm: float,
    ident: Mapping[str, Any],
) -> dict[str, Any]:
    """One hit as the map indexamajig reads (before packing). fs/ss are pixel indices of
    the slab (no half-pixel shift: indexamajig adds 0.5); every number a Python float so
    that MsgPack stores float64 where CrystFEL reads `via.f64`."""
    data = slab(image)
    if not len(fs) == len(ss) == len(intensity):
        raise ValueError(f"peak arrays differ in length: {len(fs)}, {len(ss)}, {len(intensity)}")
    return {
        IMAGE_KEY: {
            "type": "<f4",
            "shape": [int(data.shape[0]), int(data.shape[1])],
            "data": data.astype("<f4", copy=False).tobytes(),
        },
        PEAKS_KEY: {
            "fs": [float(v) for v in fs],
            "ss": [float(v) for v in ss],
            "intensity": [float(v) for v in intensity],
        },
        ENERGY_KEY: float(photon_energy_ev),
        CLEN_KEY: float(clen_mm),
        **{k: ident[k] for k in ID_KEYS if k in ident},
    }


def pack(message: Mapping[str, Any]) -> bytes:
    """MsgPack bytes of a frame map: str keys, `bin` for bytes (use_bin_type), float64."""
    import msgpack

    return msgpack.packb(message, use_bin_type=True, use_single_float=False)


def feed_geometry(geometry: GeometryConfig, frame_shape: tuple[int, int, int]) -> str:
    """The CrystFEL geometry file for the feed's messages: the CXI geometry's panels and
    physics (geometry.crystfel_geometry), with MsgPack keys instead of HDF5 paths and no
    `dimN` lines (image-msgpack.c load_msgpack_data refuses them)."""
    gain_key, gain = geometry.gain()
    lines = [
        "; CrystFEL geometry for peaknet_pipeline's live feed (indexamajig --zmq-input ...",
        "; --data-format=msgpack --peaks=msgpack). Each message is one MsgPack map; the keys",
        "; below name its parts. Panels are laid out as in the CXI files' geometry: (C, H, W)",
        "; frames arrive as one (C*H, W) array, panel c at rows c*H .. (c+1)*H - 1.",
        "; Peaks are pixel indices: indexamajig adds 0.5 (keep its default half-pixel shift).",
        f"clen = {CLEN_KEY} mm",
        f"photon_energy = {ENERGY_KEY} eV",
        f"; pixel size {_number(geometry.pixel_size_m)} m",
        f"res = {_number(1.0 / geometry.pixel_size_m)}",
        f"{gain_key} = {_number(gain)}",
        f"data = {IMAGE_KEY}",
        f"peak_list = {PEAKS_KEY}",
    ]
    return "\n".join(lines + panel_lines(panel_layout(geometry, frame_shape))) + "\n"


class NewestBuffer:
    """At most `size` packed frames, the newest kept: an offer that does not fit pushes out
    the oldest (counted as skipped), and a request takes the newest (a live view wants the
    latest crystals, not a backlog). Thread-safe; never blocks."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("the buffer holds at least one frame")
        self._items: deque[bytes] = deque()
        self.size = size
        self.skipped = 0
        self._lock = threading.Lock()

    def offer(self, item: bytes) -> None:
        with self._lock:
            self._items.append(item)
            while len(self._items) > self.size:
                self._items.popleft()
                self.skipped += 1

    def take(self) -> bytes | None:
        """The newest frame (removed), or None when empty."""
        with self._lock:
            return self._items.pop() if self._items else None

    def drain(self) -> int:
        """Forget what is left (the feed ends), counting it as skipped; returns how many."""
        with self._lock:
            left = len(self._items)
            self._items.clear()
            self.skipped += left
            return left

    def __len__(self) -> int:
        return len(self._items)
