"""CXI files from the writer stage, re-opened with h5py and read the way CrystFEL reads them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import h5py
import hdf5plugin  # noqa: F401 - registers the bitshuffle/zstd filters for reading back
import numpy as np
import pytest

from peaknet_pipeline import __version__
from peaknet_pipeline.config import WriterConfig
from peaknet_pipeline.records import Batch, Result
from peaknet_pipeline.writer import (
    CxiSeries,
    Rows,
    WriterStage,
    compression_options,
    files_on_disk,
    find_peaks,
    merge_summaries,
    photon_energy_ev,
    write_run_summary,
)
from peaknet_pipeline.writer.ledger import read_ledger

C, H, W = 2, 16, 20
REQUIRED = ("nPeaks", "peakXPosRaw", "peakYPosRaw", "peakTotalIntensity")


def make_result(n_peaks: list[int], seq: int = 0, meta: dict | None = None, seed: int = 0):
    """A Result with one event per entry of n_peaks, each with that many 1-pixel peaks."""
    rng = np.random.default_rng(seed + seq)
    b = len(n_peaks)
    images = rng.uniform(1.0, 2.0, size=(b, C, H, W)).astype(np.float32)
    masks = np.zeros((b, C, H, W), dtype=np.uint8)
    for i, n in enumerate(n_peaks):
        spots = rng.choice((C * H // 2) * (W // 2), size=n, replace=False)  # on an even grid
        c, rest = np.divmod(spots, (H // 2) * (W // 2))
        r, k = np.divmod(rest, W // 2)
        masks[i, c, 2 * r, 2 * k] = 1
        images[i, c, 2 * r, 2 * k] = 100.0 + np.arange(n)
    meta = meta if meta is not None else {"event_id": np.arange(b) + 100 * seq}
    meta.setdefault("photon_energy_ev", np.full(b, 9500.0))
    batch = Batch.describe(images, meta, "src-a", seq)
    return Result(batch, "mask", masks.shape, "|u1", "inference-0"), images, masks


def read_like_crystfel(path: str) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per row (x, y, intensity) of the valid peaks, checking what CrystFEL relies on."""
    with h5py.File(path, "r") as f:
        group = f["/entry_1/result_1"]
        for name in REQUIRED:
            assert name in group, f"{name} missing from {path}"
        n = group["nPeaks"][:]
        x, y, inten = (group[k][:] for k in REQUIRED[1:])
        width = x.shape[1]
        assert y.shape[1] == width and inten.shape[1] == width
        assert len(n) == len(x) == len(y) == len(inten)
        out = []
        for i, count in enumerate(n):
            assert 0 <= count <= width
            assert not x[i, count:].any() and not inten[i, count:].any()  # zero padding
            assert np.all((x[i, :count] >= 0) & (x[i, :count] < W))
            assert np.all((y[i, :count] >= 0) & (y[i, :count] < C * H))
            out.append((x[i, :count], y[i, :count], inten[i, :count]))
        return out


def stage(tmp_path, index: int = 0, **kw) -> WriterStage:
    cfg = WriterConfig(**{"min_peaks": 3, "max_peaks": 16, **kw})
    return WriterStage(cfg, str(tmp_path), index, config_hash="cafe1234")


def cxi_files(directory) -> list[str]:
    return sorted(str(p) for p in directory.iterdir() if p.suffix == ".cxi")


def test_hits_written_in_cheetah_layout_and_read_back_like_crystfel(tmp_path):
    st = stage(tmp_path, images="hits")
    result, images, masks = make_result([5, 1, 3, 0])  # hits: events 0 and 2
    st.process(result, images, masks)
    st.close()
    [path] = cxi_files(tmp_path)
    rows = read_like_crystfel(path)
    assert [len(x) for x, _, _ in rows] == [5, 3]
    for (x, y, inten), i in zip(rows, [0, 2]):
        ref = find_peaks(images[i], masks[i])
        np.testing.assert_allclose(x, ref.col)
        np.testing.assert_allclose(y, ref.row)
        np.testing.assert_allclose(inten, ref.total, rtol=1e-6)
    with h5py.File(path, "r") as f:
        assert f["/entry_1/result_1/peakXPosRaw"].shape[1] == 16  # MAXP = max_peaks
        np.testing.assert_array_equal(f["/LCLS/event_id"][:], [0, 2])
        np.testing.assert_array_equal(f["/peaknet/batch_index"][:], [0, 2])
        np.testing.assert_array_equal(f["/entry_1/result_1/peakNPixels"][0, :5], 1)
        assert f["/entry_1/result_1/peakMaxIntensity"][0, :5].min() >= 100.0
        data = f["/entry_1/data_1/data"]
        assert data.shape == (2, C * H, W) and data.chunks == (1, C * H, W)
        np.testing.assert_array_equal(data[1], images[2].reshape(C * H, W))
        assert f.attrs["software_version"] == __version__
        assert f.attrs["config_hash"] == "cafe1234"
        assert f.attrs["creation_time"].endswith("+00:00")
    summary = st.summary()
    assert (summary["events"], summary["hits"], summary["non_hits"]) == (4, 2, 2)
    assert summary["accounted"] and summary["files"] == [{"path": path, "events": 2, "hits": 2}]


def test_images_all_writes_every_event_and_none_writes_no_frames(tmp_path):
    all_dir, none_dir = tmp_path / "all", tmp_path / "none"
    result, images, masks = make_result([5, 1, 3, 0])
    for directory, mode in ((all_dir, "all"), (none_dir, "none")):
        st = stage(directory, images=mode)
        st.process(result, images, masks)
        st.close()
    with h5py.File(cxi_files(all_dir)[0], "r") as f:
        np.testing.assert_array_equal(f["/entry_1/result_1/nPeaks"][:], [5, 1, 3, 0])
        np.testing.assert_array_equal(f["/peaknet/hit"][:], [True, False, True, False])
        assert f["/entry_1/data_1/data"].shape == (4, C * H, W)
    with h5py.File(cxi_files(none_dir)[0], "r") as f:
        np.testing.assert_array_equal(f["/entry_1/result_1/nPeaks"][:], [5, 3])
        assert "data_1" not in f["/entry_1"]


def test_peaks_beyond_maxp_are_dropped_and_counted(tmp_path):
    st = stage(tmp_path, max_peaks=4, images="none")
    result, images, masks = make_result([7, 2])
    st.process(result, images, masks)
    st.close()
    rows = read_like_crystfel(cxi_files(tmp_path)[0])
    assert [len(x) for x, _, _ in rows] == [4]  # 7 found, a hit, 4 kept
    summary = st.summary()
    assert summary["peaks_found"] == 9 and summary["peaks_dropped_max"] == 3
    assert summary["peaks_written"] == 4 and summary["hits"] == 1


@pytest.mark.parametrize(
    "meta, expected",
    [
        ({"wavelength_nm": np.array([0.1, 0.2])}, [12398.4198, 6199.2099]),
        ({"wavelength_angstrom": np.array([1.0, 2.0])}, [12398.4198, 6199.2099]),
        ({"photon_energy_ev": np.array([9000.0, 9100.0])}, [9000.0, 9100.0]),
    ],
)
def test_photon_energy_from_each_unit(tmp_path, meta, expected):
    np.testing.assert_allclose(photon_energy_ev(meta), expected)
    st = stage(tmp_path, min_peaks=0)
    result, images, masks = make_result([1, 1], meta=dict(meta))
    if "photon_energy_ev" not in meta:
        del result.batch.meta["photon_energy_ev"]
    st.process(result, images, masks)
    st.close()
    with h5py.File(cxi_files(tmp_path)[0], "r") as f:
        np.testing.assert_allclose(f["/LCLS/photon_energy_eV"][:], expected)


def test_missing_photon_energy_is_nan_and_noted(tmp_path):
    st = stage(tmp_path, min_peaks=0)
    result, images, masks = make_result([1, 1])
    del result.batch.meta["photon_energy_ev"]
    st.process(result, images, masks)
    st.close()
    with h5py.File(cxi_files(tmp_path)[0], "r") as f:
        assert np.isnan(f["/LCLS/photon_energy_eV"][:]).all()
    assert st.summary()["notes"] == {"no_photon_energy": 2}


def test_timestamps_are_kept_lossless_in_their_own_dtype(tmp_path):
    sec = np.array([1_700_000_000, 1_700_000_001], dtype=np.uint64)
    packed = (sec << np.uint64(32)) | np.array([999_999_999, 1], dtype=np.uint64)
    seconds = np.array([1_700_000_000.123456789, 1_700_000_001.000000001])
    strings = np.array(["2026-01-02T03:04:05.123456789Z", "run7:evt1"])
    for i, ts in enumerate((packed, seconds, strings)):
        st = stage(tmp_path / str(i), min_peaks=0)
        result, images, masks = make_result([1, 1], meta={"timestamp": ts})
        st.process(result, images, masks)
        st.close()
        with h5py.File(cxi_files(tmp_path / str(i))[0], "r") as f:
            dset = f["/LCLS/timestamp"]
            if ts.dtype.kind == "U":
                assert list(dset.asstr()[:]) == list(ts)
            else:
                assert dset.dtype == ts.dtype
                assert dset[:].tobytes() == ts.tobytes()  # bit for bit
            if ts.dtype == np.uint64:
                np.testing.assert_array_equal(f["/LCLS/machineTime"][:], sec)
                np.testing.assert_array_equal(
                    f["/LCLS/machineTimeNanoSeconds"][:], [999_999_999, 1]
                )


def test_rotation_keeps_each_results_rows_in_one_file_and_commits_it_there(tmp_path):
    # A Result never spans two files (a file that would overflow rotates first), so a
    # Result is committed by exactly the file that holds its rows.
    st = stage(tmp_path, events_per_file=4, images="all")
    for seq in range(4):  # batches of 3 rows into files of 4
        ids = {"event_id": np.arange(3) + 3 * seq}
        st.process(*make_result([1, 4, 0], seq=seq, meta=ids))
    result, images, masks = make_result([2, 2], seq=9, meta={"event_id": np.array([12, 13])})
    st.process(result, images, masks)
    assert st.committed() == [("src-a", s) for s in range(4)]  # closed so far (9 rotated)
    assert st.finish() == [("src-a", 9)]
    paths = cxi_files(tmp_path)
    assert len(paths) == 5
    ids, committed = [], []
    for path in paths:
        with h5py.File(path, "r") as f:
            ids.extend(f["/LCLS/event_id"][:].tolist())
            rows = len(f["/entry_1/result_1/nPeaks"])
            assert f.attrs["events"] == rows
            seqs = set(f["/peaknet/batch_seq"][:].tolist())
        keys, counts, consumer = read_ledger(path)
        assert {seq for _, seq in keys} == seqs and consumer == "writer-0"
        assert counts["events"] == counts["rows_written"] == rows  # images: all
        committed.extend(keys)
    assert sorted(ids) == list(range(14))
    assert sorted(committed) == [("src-a", s) for s in (0, 1, 2, 3, 9)]
    files = st.summary()["files"]
    assert [f["events"] for f in files] == [3, 3, 3, 3, 2]
    assert sum(f["hits"] for f in files) == st.summary()["hits"] == 4
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".part")]


@pytest.mark.parametrize("compression", ["none", "gzip", "lzf", "bitshuffle_lz4", "zstd"])
def test_compression_options_read_back(tmp_path, compression):
    st = stage(tmp_path, compression=compression, min_peaks=0)
    result, images, masks = make_result([2, 3])
    st.process(result, images, masks)
    st.close()
    with h5py.File(cxi_files(tmp_path)[0], "r") as f:
        np.testing.assert_array_equal(f["/entry_1/data_1/data"][:], images.reshape(2, C * H, W))
        filters = f["/entry_1/data_1/data"]._filters
    assert (compression == "none") == (not filters)


def test_bad_compression_level_names_the_field():
    with pytest.raises(ValueError, match="writer.compression_level"):
        compression_options("gzip", 12)
    with pytest.raises(ValueError, match="writer.compression_level"):
        compression_options("zstd", 0)


def test_schema_change_rotates_instead_of_casting(tmp_path):
    st = stage(tmp_path, min_peaks=0)
    for seq, ts in enumerate((np.array([1.5, 2.5]), np.array([7, 8], dtype=np.uint64))):
        result, images, masks = make_result([1, 1], seq=seq, meta={"timestamp": ts})
        st.process(result, images, masks)
    st.close()
    paths = cxi_files(tmp_path)
    assert len(paths) == 2
    with h5py.File(paths[1], "r") as f:
        assert f["/LCLS/timestamp"].dtype == np.uint64
    assert st.summary()["notes"]["rotated_on_schema_change"] == 1


def test_bad_output_is_counted_not_raised(tmp_path):
    st = stage(tmp_path)
    result, images, masks = make_result([3, 3])
    st.process(result, images, masks[:, :, :-1])  # mask not cropped back to the frame
    summary = st.summary()
    assert summary["failed"] == {"bad_output": 2} and summary["events"] == 2
    assert summary["accounted"] and summary["files"] == []


def test_existing_files_are_never_overwritten(tmp_path):
    (tmp_path / "peaknet-w00-0000.cxi").write_bytes(b"finished earlier")
    (tmp_path / "peaknet-w00-0001.cxi.part").write_bytes(b"crashed earlier")
    st = stage(tmp_path, min_peaks=0)
    result, images, masks = make_result([1])
    st.process(result, images, masks)
    st.close()
    assert st.summary()["files"][0]["path"].endswith("peaknet-w00-0002.cxi")
    assert (tmp_path / "peaknet-w00-0000.cxi").read_bytes() == b"finished earlier"


def test_camera_length_pixel_size_and_peak_units_are_stored(tmp_path):
    geometry = {"camera_length_m": 0.25, "pixel_size_m": 75e-6}
    st = stage(tmp_path, min_peaks=0, images="none", geometry=geometry)
    st.process(*make_result([2, 3, 1]))
    st.close()
    with h5py.File(cxi_files(tmp_path)[0], "r") as f:
        detector = f["/entry_1/instrument_1/detector_1"]
        for name, value in (("distance", 0.25), ("x_pixel_size", 75e-6), ("y_pixel_size", 75e-6)):
            assert detector[name][()] == pytest.approx(value)
            assert detector[name].attrs["units"] == "m"
        encoder = f["/LCLS/detector_1/EncoderValue"]
        np.testing.assert_allclose(encoder[:], [250.0, 250.0, 250.0])  # per event, in mm
        assert encoder.attrs["units"] == "mm"
        peaks = f["/entry_1/result_1"]
        for name in ("peakXPosRaw", "peakYPosRaw"):
            assert peaks[name].attrs["units"] == "pixel"
            convention = peaks[name].attrs["convention"]
            assert "no half-pixel shift" in convention and "--no-half-pixel-shift" in convention
            assert "rows c*H..(c+1)*H-1" in convention
        for name in ("peakTotalIntensity", "peakMaxIntensity"):
            assert peaks[name].attrs["units"] == "ADU"
        assert peaks["peakNPixels"].attrs["units"] == "pixel"
        assert peaks["nPeaks"].attrs["units"] == "count"


def test_frames_are_bitshuffle_lz4_by_default_and_read_back_exactly(tmp_path):
    assert WriterConfig().compression == "bitshuffle_lz4"
    st = stage(tmp_path, min_peaks=0, images="all")
    result, images, masks = make_result([2, 0, 3])
    st.process(result, images, masks)
    st.close()
    [path] = cxi_files(tmp_path)
    with h5py.File(path, "r") as f:
        data = f["/entry_1/data_1/data"]
        plist = data.id.get_create_plist()
        filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
        assert filters == [32008]  # the registered id of the bitshuffle filter
        assert plist.get_filter(0)[2][4] == 2  # its compression: LZ4
        np.testing.assert_array_equal(data[:], images.reshape(3, C * H, W))
    # What the README tells CrystFEL users: HDF5 finds the filter through HDF5_PLUGIN_PATH,
    # with no Python plugin registration (h5py alone, hdf5plugin never imported).
    code = (
        "import sys, h5py; f = h5py.File(sys.argv[1], 'r'); d = f['/entry_1/data_1/data'][:];"
        "print(float(d.sum()), 'hdf5plugin' in sys.modules)"
    )
    env = {**os.environ, "HDF5_PLUGIN_PATH": hdf5plugin.PLUGIN_PATH}
    out = subprocess.run(
        [sys.executable, "-c", code, path], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    total, imported = out.stdout.split()
    assert float(total) == pytest.approx(float(images.astype(np.float64).sum()), rel=1e-6)
    assert imported == "False"


CRASH_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from peaknet_pipeline.writer import CxiSeries, Rows, find_peaks
    series = CxiSeries(sys.argv[1], "peaknet", 3, events_per_file=100, max_peaks=8)
    image = np.ones((1, 8, 8), np.float32)
    mask = np.zeros((1, 8, 8), np.uint8); mask[0, 2, 2] = 1
    for seq in range(5):
        series.write(Rows([find_peaks(image, mask)], np.array([True]), {}, image[None],
                          "src", seq, np.array([0], np.int32)))
    print("WRITTEN", flush=True)
    time.sleep(60)
    """
)


def test_killed_writer_leaves_only_a_part_file(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASH_SCRIPT, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "WRITTEN"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    names = sorted(os.listdir(tmp_path))
    assert "peaknet-w03-0000.cxi.part" in names
    assert not [n for n in names if n.endswith(".cxi")]


def test_closed_series_leaves_no_part_file(tmp_path):
    series = CxiSeries(str(tmp_path), "peaknet", 3, events_per_file=100, max_peaks=8)
    peaks = find_peaks(np.ones((1, 4, 4)), np.eye(4, dtype=np.uint8)[None])
    series.write(Rows([peaks], np.array([True]), {}, None, "src", 0, np.array([0], np.int32)))
    series.close_file()
    assert sorted(os.listdir(tmp_path)) == ["peaknet-w03-0000.cxi"]


def test_run_summary_merges_writers_and_is_written_as_json(tmp_path):
    writers = []
    for index, n_peaks in ((0, [5, 0, 4]), (1, [1, 6])):
        st = stage(tmp_path, index, images="none")
        result, images, masks = make_result(n_peaks, seq=index)
        st.process(result, images, masks)
        st.fail(result, "unreadable:OwnerDiedError")
        st.close()
        writers.append(st.summary())
    broken = {"path": str(tmp_path / "peaknet-w02-0000.cxi.part"), "events": 4, "hits": 1}
    writers.append({"writer": 2, "accounted": True, "files": [broken]})
    doc = merge_summaries(writers)
    write_run_summary(tmp_path / "summary.json", doc)
    assert json.loads((tmp_path / "summary.json").read_text()) == doc
    assert doc["events"] == 10 and doc["hits"] == 3 and doc["non_hits"] == 2
    assert doc["failed"] == {"unreadable:OwnerDiedError": 5} and doc["failed_events"] == 5
    assert doc["accounted"]
    assert [os.path.basename(f["path"]) for f in doc["files"]] == [
        "peaknet-w00-0000.cxi",
        "peaknet-w01-0000.cxi",
    ]
    assert [f["hits"] for f in doc["files"]] == [2, 1]
    assert doc["incomplete_files"] == [broken]  # a file broken midway keeps its .part name
    assert "writers" not in doc  # per-writer counts are in report.json, once


def test_files_on_disk_lists_complete_files_and_what_is_known_of_open_ones(tmp_path):
    # After a hard stop the writers cannot report: complete files carry their own counts,
    # an open .part file has only what its writer last reported.
    st = stage(tmp_path, 0, images="none")
    result, images, masks = make_result([5, 0, 4], seq=0)
    st.process(result, images, masks)
    st.close()
    part = tmp_path / "peaknet-w01-0003.cxi.part"
    part.write_bytes(b"killed mid-write")
    (tmp_path / "other-w00-0000.cxi").write_bytes(b"another prefix: not this run's")
    complete, incomplete = files_on_disk(tmp_path, "peaknet", {str(part): 7})
    assert complete == [{"path": str(tmp_path / "peaknet-w00-0000.cxi"), "events": 2, "hits": 2}]
    assert incomplete == [{"path": str(part), "events_known": 7}]
    _, unknown = files_on_disk(tmp_path, "peaknet", {})
    assert unknown == [{"path": str(part), "events_known": None}]


def test_a_write_failing_midway_never_reaches_the_final_name(tmp_path):
    series = CxiSeries(str(tmp_path), "peaknet", 0, events_per_file=100, max_peaks=2)
    image, mask = np.ones((1, 4, 8)), np.zeros((1, 4, 8), np.uint8)
    mask[0, 1, ::2] = 1  # 4 peaks: more than this series' max_peaks allows in a row
    too_many = find_peaks(image, mask, max_peaks=4)
    good = find_peaks(image, mask, max_peaks=2)
    series.write(Rows([good], np.array([True]), {}, None, "src", 0, np.array([0], np.int32)))
    with pytest.raises(ValueError):
        series.write(Rows([too_many], np.array([True]), {}, None, "src", 1, np.array([0])))
    series.close_file()
    assert series.files[0]["path"].endswith(".cxi.part")
    assert sorted(os.listdir(tmp_path)) == ["peaknet-w00-0000.cxi.part"]


def test_unwritable_or_clashing_metadata_is_skipped_and_noted(tmp_path):
    meta = {
        "when": np.array(["2026-01-01", "2026-01-02"], dtype="datetime64[D]"),
        "machineTime": np.array([1, 2]),
        "pulse_id": np.array([10, 11]),
        "nothing": np.zeros((2, 0)),
        "a/b": np.array([1, 2]),
        "": np.array([1, 2]),
        "detector_1": np.array([1, 2]),
    }
    st = stage(tmp_path, min_peaks=0)
    st.process(*make_result([1, 1], meta=meta))
    st.close()
    with h5py.File(cxi_files(tmp_path)[0], "r") as f:
        np.testing.assert_array_equal(f["/LCLS/pulse_id"][:], [10, 11])
        assert set(f["/LCLS"]) == {"pulse_id", "photon_energy_eV", "detector_1"}
        assert set(f["/LCLS/detector_1"]) == {"EncoderValue"}  # the writer's, not the metadata
    assert st.summary()["notes"] == {
        "metadata_not_written:when": 2,
        "metadata_not_written:nothing": 2,
        "metadata_name_unusable:machineTime": 2,
        "metadata_name_unusable:a/b": 2,
        "metadata_name_unusable:": 2,
        "metadata_name_unusable:detector_1": 2,
    }
    assert st.summary()["accounted"] and st.summary()["rows_written"] == 2


def test_a_failed_write_fails_its_events_and_the_writer_goes_on(tmp_path):
    # A string that cannot be encoded as UTF-8 (a malformed field off the wire) makes HDF5
    # fail mid-write: those events are failed by reason, the broken file keeps its .part
    # name, and the next Result goes into a fresh file.
    st = stage(tmp_path, min_peaks=0)
    bad = {"event_id": np.array([0, 1]), "comment": np.array(["fine", "\udcff"])}
    st.process(*make_result([1, 1], seq=0, meta=bad))
    good = {"event_id": np.array([2, 3]), "comment": np.array(["fine", "also fine"])}
    st.process(*make_result([1, 1], seq=1, meta=good))
    st.close()
    summary = st.summary()
    assert summary["failed"] == {"write_error:UnicodeEncodeError": 2}
    assert summary["rows_written"] == 2 and summary["accounted"]
    (written,) = cxi_files(tmp_path)
    with h5py.File(written, "r") as f:
        np.testing.assert_array_equal(f["/LCLS/event_id"][:], [2, 3])
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_peak_finding_errors_are_counted_per_result(tmp_path):
    st = stage(tmp_path)
    result, images, masks = make_result([2, 2])
    not_numbers = np.empty(images.shape, dtype=object)
    not_numbers.fill({})
    st.process(result, not_numbers, masks)
    assert st.summary()["failed"] == {"peak_finding_error:TypeError": 2}
