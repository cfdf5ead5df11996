"""Wire formats: encode/decode round trips, units and padding, and every kind of bad message."""

from __future__ import annotations

import io
import logging
import zipfile

import h5py
import numpy as np
import pytest

from peaknet_pipeline.config import SocketSourceConfig
from peaknet_pipeline.sources.wire import BadMessageLog, Decoder, WireError, encode, wavelength_key

B, H, W = 3, 12, 10


def _cfg(fmt: str = "hdf5", **kw) -> SocketSourceConfig:
    extra = {"event_id": "/data/event_id" if fmt == "hdf5" else "event_id"}
    return SocketSourceConfig.model_validate({"format": fmt, fmt: {"extra": extra}, **kw})


def _frames(dtype=np.float32, b: int = B, c: int = 1) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 500, (b, c, H, W)).astype(dtype)


def _meta(b: int = B, unit: str = "nm", timestamp=None) -> dict[str, np.ndarray]:
    ts = np.linspace(1.7e9, 1.7e9 + 1, b) if timestamp is None else timestamp
    return {"timestamp": ts, wavelength_key(unit): np.full(b, 0.13), "event_id": np.arange(b)}


def _hdf5(datasets: dict[str, np.ndarray]) -> bytes:
    out = io.BytesIO()
    with h5py.File(out, "w") as f:
        for path, arr in datasets.items():
            f.create_dataset(path, data=arr)
    return out.getvalue()


def _good_hdf5(b: int = B, **override) -> dict[str, np.ndarray]:
    return {
        "/data/data": _frames(b=b)[:, 0],
        "/data/timestamp": np.arange(b, dtype=np.float64),
        "/data/wavelength": np.full(b, 0.13),
        "/data/event_id": np.arange(b),
        **override,
    }


def _kind(cfg: SocketSourceConfig, buf) -> str:
    with pytest.raises(WireError) as info:
        Decoder(cfg)(buf)
    return info.value.kind


# -- round trips ---------------------------------------------------------------------------------
HDF5_FILTERS = ["none", "gzip", "lzf", "bitshuffle_lz4", "bitshuffle_zstd", "zstd"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "fmt,compression", [("hdf5", c) for c in HDF5_FILTERS] + [("npz", "none"), ("npz", "zip")]
)
def test_round_trip_keeps_frames_and_metadata(fmt, compression, dtype):
    cfg = _cfg(fmt)
    frames, meta = _frames(dtype), _meta()
    buf = encode(frames, meta, cfg, compression)
    images, got = Decoder(cfg)(buf)
    assert images.shape == (B, 1, H, W) and images.dtype == np.float32
    assert np.array_equal(images, frames.astype(np.float32))
    assert set(got) == {"timestamp", "wavelength_nm", "event_id"}
    for key, value in meta.items():
        assert np.array_equal(got[key], value) and got[key].dtype == value.dtype, key
    assert _compressed(buf, fmt) == (compression != "none")


def _compressed(buf: bytes, fmt: str) -> bool:
    if fmt == "npz":
        with zipfile.ZipFile(io.BytesIO(buf)) as archive:
            return archive.getinfo("detector_data.npy").compress_type == zipfile.ZIP_DEFLATED
    with h5py.File(io.BytesIO(buf), "r") as f:
        return f["/data/data"].id.get_create_plist().get_nfilters() > 0


@pytest.mark.parametrize("fmt", ["hdf5", "npz"])
@pytest.mark.parametrize(
    "timestamp",
    [
        np.array([1.7e9 + 1e-6, 1.7e9 + 2e-6, 1.7e9 + 3e-6]),
        np.array([(1_700_000_000 << 32) | 999_999_999] * 3, dtype=np.uint64),
        np.array(["2026-01-01T00:00:00.000000001", "b", "c"]),
    ],
)
def test_timestamps_arrive_lossless_in_any_encoding(fmt, timestamp):
    cfg = _cfg(fmt)
    _, meta = Decoder(cfg)(encode(_frames(), _meta(timestamp=timestamp), cfg))
    assert meta["timestamp"].dtype.kind == timestamp.dtype.kind
    assert meta["timestamp"].tolist() == timestamp.tolist()


def test_rank_three_images_gain_a_channel_and_several_channels_stay():
    cfg = _cfg()
    images, _ = Decoder(cfg)(encode(_frames()[:, 0], _meta(), cfg))
    assert images.shape == (B, 1, H, W)
    images, _ = Decoder(cfg)(encode(_frames(c=4), _meta(), cfg))
    assert images.shape == (B, 4, H, W)


def test_float16_target_dtype():
    cfg = _cfg(dtype="float16")
    images, _ = Decoder(cfg)(encode(_frames(np.float64), _meta(), cfg))
    assert images.dtype == np.float16


@pytest.mark.parametrize("unit", ["nm", "angstrom"])
def test_wavelength_key_carries_the_configured_unit(unit):
    cfg = _cfg(wavelength_unit=unit)
    _, meta = Decoder(cfg)(encode(_frames(), _meta(unit=unit), cfg))
    other = "wavelength_angstrom" if unit == "nm" else "wavelength_nm"
    assert wavelength_key(unit) in meta and other not in meta
    assert np.allclose(meta[wavelength_key(unit)], 0.13)  # the number as sent, never rescaled


def test_photon_energy_field_becomes_photon_energy_ev():
    cfg = SocketSourceConfig.model_validate(
        {"hdf5": {"wavelength": None, "photon_energy": "/data/energy"}}
    )
    buf = encode(_frames(), {"timestamp": np.zeros(B), "photon_energy_ev": np.full(B, 9500)}, cfg)
    _, meta = Decoder(cfg)(buf)
    assert meta["photon_energy_ev"].dtype == np.float64 and set(meta["photon_energy_ev"]) == {9500}
    assert not any(key.startswith("wavelength") for key in meta)


@pytest.mark.parametrize("pad_to", [(16, 13), (12, 10), (17, 15)])
def test_npz_padding_is_cropped_back_centred(pad_to):
    cfg = _cfg("npz")
    frames = _frames()
    buf = encode(frames, _meta(), cfg, pad_to=pad_to)
    with np.load(io.BytesIO(buf)) as sent:
        assert sent["detector_data"].shape[-2:] == pad_to
        top, left = (pad_to[0] - H) // 2, (pad_to[1] - W) // 2  # centred, as the streamer pads
        assert np.array_equal(sent["detector_data"][:, :, top : top + H, left : left + W], frames)
    images, _ = Decoder(cfg)(buf)
    assert np.array_equal(images, frames)


def test_npz_original_shape_of_stacked_panels_is_restored():
    cfg = _cfg("npz")
    frames = _frames(c=2)
    arrays = {
        "detector_data": np.pad(frames.reshape(B * 2, 1, H, W), [(0, 0)] * 2 + [(2, 2), (1, 1)]),
        "detector_data_original_shape": np.array([B, 2, H, W]),
        "timestamp": np.zeros(B),
        "photon_wavelength": np.ones(B),
        "event_id": np.arange(B),
    }
    out = io.BytesIO()
    np.savez(out, **arrays)
    images, _ = Decoder(cfg)(out.getvalue())
    assert np.array_equal(images, frames)


def _write_images(frames: np.ndarray, **layout) -> bytes:
    out = io.BytesIO()
    with h5py.File(out, "w") as f:
        f.create_dataset("/data/data", data=frames, **layout)
        for path, arr in _good_hdf5(len(frames)).items():
            if path != "/data/data":
                f[path] = arr
    return out.getvalue()


@pytest.mark.parametrize(
    "layout", [{}, {"chunks": (1, 1, H, W)}, {"chunks": (2, 1, H, W)}, {"chunks": (3, 1, H, W)}]
)
def test_unfiltered_frames_are_read_in_place(layout):
    frames = _frames(b=5)  # 5 rows: chunks of 2 or 3 rows leave a partial last chunk
    buf = _write_images(frames, **layout)
    images, _ = Decoder(_cfg())(buf)
    assert np.array_equal(images, frames)
    assert np.shares_memory(images, np.frombuffer(buf, np.uint8)), "copied, not read in place"


@pytest.mark.parametrize(
    "frames,layout",
    [
        (_frames(), {"chunks": (1, 1, H, W), "compression": "gzip"}),
        (_frames(), {"chunks": (1, 1, H // 2, W)}),  # a frame split over chunks
        (_frames().astype(">f4"), {}),  # big-endian: HDF5 converts
    ],
)
def test_other_layouts_are_read_by_hdf5(frames, layout):
    buf = _write_images(frames, **layout)
    images, _ = Decoder(_cfg())(buf)
    assert np.array_equal(images, frames) and not np.shares_memory(
        images, np.frombuffer(buf, np.uint8)
    )


def test_encode_refuses_metadata_without_a_field():
    with pytest.raises(ValueError, match="photon_energy_ev"):
        encode(_frames(), {**_meta(), "photon_energy_ev": np.ones(B)}, _cfg())


# -- bad messages ----------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["hdf5", "npz"])
def test_truncated_and_random_bytes(fmt):
    cfg = _cfg(fmt)
    buf = encode(_frames(), _meta(), cfg)
    for cut in (3, len(buf) // 2, len(buf) - 1):
        assert _kind(cfg, buf[:cut]) == "truncated", cut
    noise = np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    assert _kind(cfg, noise) == f"not_{fmt}"
    assert _kind(cfg, b"") == "truncated"


def test_missing_renamed_or_group_fields_name_the_path():
    cfg = _cfg()
    good = _good_hdf5()
    renamed = {("/data/wl" if k == "/data/wavelength" else k): v for k, v in good.items()}
    with pytest.raises(WireError, match="'/data/wavelength'") as info:
        Decoder(cfg)(_hdf5(renamed))
    assert info.value.kind == "missing_field"
    no_images = {k: v for k, v in good.items() if k != "/data/data"}
    assert _kind(cfg, _hdf5({**no_images, "/data/data/x": np.zeros((B, 2, 2))})) == "missing_field"
    assert _kind(cfg, _hdf5(no_images)) == "missing_field"


def test_npz_missing_field():
    cfg = _cfg("npz")
    out = io.BytesIO()
    np.savez(out, detector_data=_frames(), timestamp=np.zeros(B), event_id=np.arange(B))
    with pytest.raises(WireError, match="photon_wavelength"):
        Decoder(cfg)(out.getvalue())


@pytest.mark.parametrize(
    "override,kind,named",
    [
        ({"/data/data": np.zeros((B, H))}, "bad_rank", "/data/data"),
        ({"/data/data": np.zeros((B, 1, 1, H, W))}, "bad_rank", "/data/data"),
        ({"/data/timestamp": np.zeros((B, 2))}, "bad_rank", "/data/timestamp"),
        ({"/data/wavelength": np.float64(0.13)}, "bad_rank", "/data/wavelength"),
        ({"/data/data": np.full((B, H, W), b"x")}, "bad_dtype", "/data/data"),
        ({"/data/data": np.zeros((B, H, W), bool)}, "bad_dtype", "/data/data"),
        ({"/data/wavelength": np.full(B, 1 + 1j)}, "bad_dtype", "/data/wavelength"),
        ({"/data/wavelength": np.full(B, b"0.13")}, "bad_dtype", "/data/wavelength"),
        ({"/data/timestamp": np.zeros(B + 1)}, "batch_mismatch", "/data/timestamp"),
        ({"/data/event_id": np.arange(B - 1)}, "batch_mismatch", "/data/event_id"),
        ({"/data/data": np.zeros((0, H, W))}, "empty", "/data/data"),
    ],
)
def test_structural_errors(override, kind, named):
    with pytest.raises(WireError, match=named) as info:
        Decoder(_cfg())(_hdf5(_good_hdf5(**override)))
    assert info.value.kind == kind


def test_npz_object_arrays_are_refused_without_unpickling():
    out = io.BytesIO()
    np.savez(
        out,
        detector_data=_frames(),
        timestamp=np.array([{"a": 1}] * B, dtype=object),
        photon_wavelength=np.ones(B),
        event_id=np.arange(B),
    )
    assert _kind(_cfg("npz"), out.getvalue()) == "bad_dtype"


def test_bad_original_shape():
    cfg = _cfg("npz")
    for original in ([B, 1, H + 5, W], [B, 1, H], [B + 1, 1, H, W]):
        out = io.BytesIO()
        np.savez(
            out,
            detector_data=_frames(),
            detector_data_original_shape=np.array(original),
            timestamp=np.zeros(B),
            photon_wavelength=np.ones(B),
            event_id=np.arange(B),
        )
        assert _kind(cfg, out.getvalue()) == "bad_shape", original


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e300])
def test_non_finite_pixels_reject_or_zero(bad):
    frames = _frames(np.float64)
    frames[1, 0, 2, 3] = bad  # 1e300 is finite in float64 but not in the float32 delivered
    buf = encode(frames, _meta(), _cfg())
    with pytest.raises(WireError, match="1 NaN/inf") as info:
        Decoder(_cfg())(buf)
    assert info.value.kind == "non_finite"
    decoder = Decoder(_cfg(non_finite="zero"))
    images, _ = decoder(buf)
    assert images[1, 0, 2, 3] == 0 and decoder.zeroed_pixels == 1
    frames[1, 0, 2, 3] = 0
    assert np.array_equal(images, frames.astype(np.float32))


def test_non_finite_pixels_are_zeroed_in_frames_read_in_place():
    frames = _frames()
    frames[0, 0, 1, 1] = np.nan
    frames[2, 0, 3, 4] = -np.inf
    buf = encode(frames, _meta(), _cfg())  # float32, unfiltered: decoded as a view of buf
    images, _ = Decoder(_cfg(non_finite="zero"))(buf)
    assert images[0, 0, 1, 1] == 0 and images[2, 0, 3, 4] == 0 and np.isfinite(images).all()


def test_integer_frames_are_always_finite_and_converted():
    cfg = _cfg()
    images, _ = Decoder(cfg)(encode(np.full((B, 1, H, W), 65535, np.uint16), _meta(), cfg))
    assert images.dtype == np.float32 and images.max() == 65535


def test_oversized_messages_and_declared_sizes():
    small = _cfg(max_message_bytes=1024)
    buf = encode(_frames(), _meta(), _cfg())
    with pytest.raises(WireError, match=f"{len(buf)} bytes > max_message_bytes 1024") as info:
        Decoder(small)(buf)
    assert info.value.kind == "oversized"
    # A compressed dataset may declare far more bytes than the message holds.
    zeros = np.zeros((B, 1, 64, 64), np.float32)
    packed = encode(zeros, _meta(), _cfg(), "gzip")
    assert len(packed) < 8000 < zeros.nbytes
    assert _kind(_cfg(max_message_bytes=8000), packed) == "oversized"


def test_corrupt_compressed_chunk_is_reported_not_crashed():
    """Bitshuffle trusts the sizes in a chunk (a corrupted one crashed the process before
    wire_chunks checked it). Plain zstd frames carry no checksum: garbage can decode, so
    zstd is not in this list."""
    frames = np.random.default_rng(3).poisson(5, (B, 1, 64, 64)).astype(np.float32)
    for compression in ("gzip", "bitshuffle_lz4", "bitshuffle_zstd"):
        buf = bytearray(encode(frames, _meta(), _cfg(), compression))
        with h5py.File(io.BytesIO(bytes(buf)), "r") as f:
            info = f["/data/data"].id.get_chunk_info(1)
        middle = info.byte_offset + info.size // 2
        buf[middle : middle + 8] = b"\xff" * 8
        assert _kind(_cfg(), bytes(buf)) == "corrupt", compression


def test_bad_message_log_counts_every_kind_and_logs_each_once(caplog):
    bad = BadMessageLog("socket-7", logging.getLogger("test.wire"))
    with caplog.at_level(logging.WARNING, logger="test.wire"):
        for kind in ["truncated", "truncated", "missing_field", "truncated"]:
            bad.record(WireError(kind, f"reason for {kind}"))
    assert bad.counts == {"truncated": 3, "missing_field": 1} and bad.total == 4
    assert len(caplog.records) == 2
    assert "socket-7" in caplog.text and "reason for missing_field" in caplog.text
