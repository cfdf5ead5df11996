"""A test-side indexamajig: what CrystFEL does with the live feed's messages, in Python.

src/im-zmq.c: a REQ socket sends the --zmq-request string and receives one message part.
libcrystfel/src/image-msgpack.c: find_msgpack_kv matches a map key that is a prefix of the
name looked up (strncmp over the key's length), so `lookup` refuses a map where the match is
not exactly one key; load_msgpack_data and image_msgpack_read_peaks check the types read
below (the numbers read `via.f64` must be MsgPack floats, the shape `via.u64` ints).
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import zmq


def lookup(obj: dict, name: str) -> Any:
    """find_msgpack_kv: the value of the one key that matches `name` as CrystFEL matches."""
    matches = [k for k in obj if isinstance(k, str | bytes) and name.startswith(_text(k))]
    assert matches, f"{name!r} not in the map ({sorted(map(str, obj))})"
    assert len(matches) == 1 and _text(matches[0]) == name, f"{name!r} is ambiguous: {matches}"
    return obj[matches[0]]


def _text(key: str | bytes) -> str:
    return key.decode() if isinstance(key, bytes) else key


def geometry_keys(text: str) -> dict[str, str]:
    """The MsgPack keys a feed geometry names: data, peak_list, photon_energy, clen (the
    key and its unit, as datatemplate.c parses `KEY unit`)."""
    keys: dict[str, str] = {}
    for line in text.splitlines():
        line = line.split(";", 1)[0].strip()
        if "=" not in line:
            continue
        name, value = (part.strip() for part in line.split("=", 1))
        name = name.rsplit("/", 1)[-1]
        if name in ("data", "peak_list", "photon_energy", "clen"):
            assert keys.get(name, value) == value, f"panels disagree on {name}"
            keys[name] = value
    return keys


def read_frame(raw: bytes, geometry_text: str) -> dict[str, Any]:
    """Decode one reply as indexamajig would; every check CrystFEL makes is an assertion.
    Returns the image (slow, fast), the peaks (fs, ss, intensity as sent, and fs/ss after
    indexamajig's default half-pixel shift), the photon energy and clen, the whole map."""
    assert len(raw) > 15, "indexamajig drops a reply of 15 bytes or fewer"
    keys = geometry_keys(geometry_text)
    energy_key, energy_unit = keys["photon_energy"].split(" ")
    clen_key, clen_unit = keys["clen"].split(" ")
    assert (energy_unit, clen_unit) == ("eV", "mm")
    top = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    assert isinstance(top, dict), "find_main_object: one map"
    arr = lookup(top, keys["data"])
    assert isinstance(arr, dict)
    dtype, shape, data = lookup(arr, "type"), lookup(arr, "shape"), lookup(arr, "data")
    assert dtype in ("<f4", "<i4") and isinstance(dtype, str)
    assert isinstance(shape, list) and len(shape) == 2
    assert all(isinstance(n, int) and n > 0 for n in shape)
    assert isinstance(data, bytes) and len(data) == 4 * shape[0] * shape[1]
    image = np.frombuffer(data, dtype=dtype).reshape(shape)
    peaks = lookup(top, keys["peak_list"])
    fs, ss, inten = lookup(peaks, "fs"), lookup(peaks, "ss"), lookup(peaks, "intensity")
    assert isinstance(fs, list) and isinstance(ss, list) and isinstance(inten, list)
    assert len(fs) == len(ss) == len(inten), "Peak list arrays do not have equal size"
    assert all(isinstance(v, float) for v in fs + ss + inten), "read via.f64: floats only"
    energy, clen = lookup(top, energy_key), lookup(top, clen_key)
    assert isinstance(energy, float | int) and isinstance(clen, float | int)
    return {
        "image": image,
        "fs": np.array(fs),
        "ss": np.array(ss),
        "intensity": np.array(inten),
        "fs_crystfel": np.array(fs) + 0.5,  # image_msgpack_read_peaks, half_pixel_shift=1
        "ss_crystfel": np.array(ss) + 0.5,
        "photon_energy_ev": float(energy),
        "clen_mm": float(clen),
        "map": top,
    }


class Worker:
    """One indexamajig worker: a REQ socket that asks with `request` and waits for a frame."""

    def __init__(self, ctx: zmq.Context, address: str, request: bytes = b"next") -> None:
        self.sock = ctx.socket(zmq.REQ)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(address)
        self.request = request
        self.waiting = False

    def ask(self) -> None:
        if not self.waiting:
            self.sock.send(self.request)
            self.waiting = True

    def receive(self, timeout_ms: int) -> bytes | None:
        """The reply, or None if none came within `timeout_ms` (the request stays sent,
        as im_zmq_fetch keeps it)."""
        if not self.sock.poll(timeout_ms):
            return None
        self.waiting = False
        return self.sock.recv()

    def close(self) -> None:
        self.sock.close(linger=0)
