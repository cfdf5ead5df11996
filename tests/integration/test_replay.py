"""Replay source: frames from real HDF5/CXI files, in order, with clear errors for bad paths."""

from __future__ import annotations

import logging

import h5py
import numpy as np
import pytest

from peaknet_pipeline.config import PipelineConfig
from peaknet_pipeline.sources.replay import ReplaySource, check_files

IMAGES = "/entry_1/data_1/data"
ENERGY = "/LCLS/photon_energy_eV"


def _cxi(path, frames: int, energy: bool = True, channels: int = 0):
    shape = (frames, channels, 6, 5) if channels else (frames, 6, 5)
    data = np.arange(np.prod(shape), dtype=np.float32).reshape(shape) + 1000 * frames
    with h5py.File(path, "w") as f:
        f.create_dataset(IMAGES, data=data, chunks=(1, *shape[1:]), compression="gzip")
        if energy:
            f.create_dataset(ENERGY, data=np.linspace(9000, 9100, frames))
        f.create_dataset("/LCLS/machineTime", data=np.arange(frames, dtype=np.uint64) + 7)
    return str(path), data


def _cfg(paths, **replay):
    section = {"paths": [str(p) for p in paths], "batch_size": 2, **replay}
    return PipelineConfig.model_validate({"source": {"kind": "replay", "replay": section}})


def test_files_stream_in_order_with_provenance(tmp_path):
    a, frames_a = _cxi(tmp_path / "a.cxi", 5)
    b, frames_b = _cxi(tmp_path / "b.cxi", 3, channels=2)
    source = ReplaySource(
        "replay-0", None, _cfg([a, b], repeat=2, timestamp_dataset="/LCLS/machineTime"), 0
    )
    source.ready()
    batches = list(source.batches())
    assert [len(images) for images, _ in batches] == [2, 2, 1, 2, 1] * 2  # no batch spans files
    events = np.concatenate([m["event_id"] for _, m in batches])
    assert events.tolist() == list(range(16))
    files = np.concatenate([m["file_index"] for _, m in batches])
    rows = np.concatenate([m["frame_index"] for _, m in batches])
    assert (
        files.tolist() == ([0] * 5 + [1] * 3) * 2 and rows.tolist() == [0, 1, 2, 3, 4, 0, 1, 2] * 2
    )
    first_a = np.concatenate([images for images, _ in batches[:3]])
    assert first_a.shape == (5, 1, 6, 5) and np.array_equal(first_a[:, 0], frames_a)
    assert np.array_equal(np.concatenate([im for im, _ in batches[3:5]]), frames_b)
    energy = np.concatenate([m["photon_energy_ev"] for _, m in batches[:3]])
    assert np.allclose(energy, np.linspace(9000, 9100, 5)) and energy.dtype == np.float64
    assert batches[0][1]["timestamp"].tolist() == [7, 8]
    assert source.end_reason() == "end of data (16 frames)"


def test_missing_file_or_dataset_is_named(tmp_path):
    good, _ = _cxi(tmp_path / "good.cxi", 2)
    missing = tmp_path / "nope.cxi"
    with pytest.raises(FileNotFoundError, match=r"paths\[1\] .*nope\.cxi: no such file"):
        check_files(_cfg([good, missing]).source.replay)
    with pytest.raises(KeyError, match=r"good\.cxi: no dataset '/data/frames'"):
        check_files(_cfg([good], images_dataset="/data/frames").source.replay)
    (tmp_path / "text.cxi").write_text("not hdf5")
    with pytest.raises(OSError, match=r"text\.cxi: not readable as HDF5"):
        check_files(_cfg([tmp_path / "text.cxi"]).source.replay)
    with pytest.raises(ValueError, match="paths is empty"):
        check_files(_cfg([]).source.replay)


def test_mismatched_metadata_length_is_an_error(tmp_path):
    path, _ = _cxi(tmp_path / "a.cxi", 4)
    with h5py.File(path, "a") as f:
        del f[ENERGY]
        f[ENERGY] = np.ones(3)
    with pytest.raises(ValueError, match="photon_energy_eV.*4 frames"):
        check_files(_cfg([path]).source.replay)


def test_optional_photon_energy_may_be_absent(tmp_path, caplog):
    path, _ = _cxi(tmp_path / "a.cxi", 3, energy=False)
    with caplog.at_level(logging.WARNING):
        source = ReplaySource("replay-0", None, _cfg([path]), 0)
        source.ready()
        batches = list(source.batches())
    assert sum(len(images) for images, _ in batches) == 3
    assert all("photon_energy_ev" not in meta for _, meta in batches)
    assert "photon_energy_eV" in caplog.text


@pytest.mark.ray
def test_replay_actor_fills_q1(ray_session, unique_name, tmp_path):
    import ray

    from peaknet_pipeline.queue import EndOfStream, ShardedQueue
    from peaknet_pipeline.sources import source_ids, start_source_actors

    path, frames = _cxi(tmp_path / "a.cxi", 7)
    cfg = _cfg([path], batch_size=3)
    q1 = ShardedQueue.create(unique_name)
    try:
        ids = source_ids(cfg)
        q1.register_producer(ids[0])
        (actor,) = start_source_actors(cfg, q1, ids).values()
        summary = ray.get(actor.run.remote(), timeout=60)
        ray.kill(actor)  # queued frames belong to the queue, not to the source
        batches = []
        with pytest.raises(EndOfStream):
            while True:
                batches += q1.get_many(8, timeout=30)
        assert summary.frames_out == 7 and summary.ended_by == "end of data (7 frames)"
        images = np.concatenate(ray.get([b.images for b in batches]))
        assert np.array_equal(images[:, 0], frames)
    finally:
        q1.destroy()
