"""Writer actors on a real local Ray: Results from a Q2, CXI files and summaries out."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from peaknet_pipeline.config import PipelineConfig
from peaknet_pipeline.placement import Role
from peaknet_pipeline.processes import process_ended
from peaknet_pipeline.queue import ShardedQueue
from peaknet_pipeline.records import Batch, Result
from peaknet_pipeline.registry import of
from peaknet_pipeline.shutdown import kill_at_once, wait_ended
from peaknet_pipeline.writer import merge_summaries, start_writer_actors, write_run_summary

pytestmark = pytest.mark.ray

B, C, H, W = 3, 1, 24, 24


def make_result(ray, seq: int, n_peaks: int = 4) -> Result:
    """A Result of B events with `n_peaks` single-pixel peaks each; payloads put from here."""
    images = np.full((B, C, H, W), 1.0, dtype=np.float32)
    masks = np.zeros((B, C, H, W), dtype=np.uint8)
    masks[:, 0, 2, 2 : 2 + 3 * n_peaks : 3] = 1
    meta = {"event_id": np.arange(B) + B * seq, "wavelength_nm": np.full(B, 0.13)}
    batch = Batch.describe(images, meta, "src", seq).with_payload(ray.put(images))
    result = Result(batch, "mask", masks.shape, masks.dtype.str, "inference-0")
    return result.with_payload(ray.put(masks))


def config(**writer) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {"writer": {"min_peaks": 3, "max_peaks": 32, "num_cpus_per_actor": 0.5, **writer}}
    )


def open_q2(ray, name: str) -> ShardedQueue:
    q2 = ShardedQueue.create(name, num_shards=2, capacity_items=64)
    q2.register_producer("test")
    return q2


def wait_for(predicate, timeout_s: float = 30.0):
    """Wait until predicate() is truthy (a condition wait with a deadline, not a sleep-to-pass)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


@pytest.mark.slow
def test_two_writers_drain_q2_write_files_and_end_at_end_of_stream(
    ray_session, unique_name, tmp_path
):
    ray = ray_session
    q2 = open_q2(ray, unique_name)
    cfg = config(events_per_file=4, images="all")
    writers = start_writer_actors(cfg, q2, str(tmp_path), "hash0", [0, 1])
    runs = [w.run.remote() for w in writers]
    q2.put_many([make_result(ray, 0)])
    # stats answer while run() is working, and show the first Result written
    wait_for(lambda: sum(s.frames_out for s in ray.get([w.stats.remote() for w in writers])) == B)
    q2.put_many([make_result(ray, seq, n_peaks=seq % 3 * 2) for seq in range(1, 8)])
    ready, _ = ray.wait(runs, timeout=1.0)
    assert not ready, "writers must keep running until the stream ends"
    q2.close_producer("test")
    summaries = ray.get(runs, timeout=60)

    doc = merge_summaries(summaries)
    write_run_summary(tmp_path / "summary.json", doc)
    assert doc["events"] == 8 * B and doc["accounted"] and doc["failed"] == {}
    # seq 0: 4 peaks (hit); others 0, 2, 4 peaks by seq % 3 -> hits at seq 2, 5 (and 0)
    assert doc["hits"] == 3 * B
    assert sorted(os.listdir(tmp_path)) == sorted(
        [os.path.basename(f["path"]) for f in doc["files"]] + ["peaknet.geom", "summary.json"]
    )
    ids = []
    for entry in doc["files"]:
        with h5py.File(entry["path"], "r") as f:
            assert len(f["/entry_1/result_1/nPeaks"]) == entry["events"] <= 4
            assert f.attrs["config_hash"] == "hash0"
            np.testing.assert_allclose(f["/LCLS/photon_energy_eV"][:], 1239.84198 / 0.13)
            ids.extend(f["/LCLS/event_id"][:].tolist())
    assert sorted(ids) == list(range(8 * B))  # images: all -> every event in exactly one file
    names = {os.path.basename(f["path"])[:11] for f in doc["files"]}
    assert names <= {"peaknet-w00", "peaknet-w01"}


@pytest.mark.slow
def test_unreadable_and_malformed_results_are_counted_not_fatal(ray_session, unique_name, tmp_path):
    ray = ray_session

    @ray.remote(num_cpus=0)
    class ShortLived:
        def make(self):
            return [ray.put(np.zeros((B, C, H, W), dtype=np.uint8))]  # owned by this actor

    owner = ShortLived.remote()
    [orphan] = ray.get(owner.make.remote())
    ray.kill(owner)
    lost = make_result(ray, 1)
    lost.output = orphan
    wrong_shape = make_result(ray, 2)
    wrong_shape.output = ray.put(np.zeros((B, C, H + 8, W), dtype=np.uint8))  # uncropped pad

    q2 = open_q2(ray, unique_name)
    q2.put_many([make_result(ray, 0), lost, wrong_shape, make_result(ray, 3)])
    q2.close_producer("test")
    [writer] = start_writer_actors(config(images="none"), q2, str(tmp_path), "h", [5])
    summary = ray.get(writer.run.remote(), timeout=60)

    assert summary["writer"] == 5 and summary["events"] == 4 * B
    assert summary["hits"] == 2 * B and summary["accounted"]
    assert summary["failed"] == {"unreadable:OwnerDiedError": B, "bad_output": B}
    # The two shards drain at different times: the writer commits what it holds at each,
    # so the rows may be in one file or two (never a Result split between them).
    ids = []
    for entry in summary["files"]:
        assert os.path.basename(entry["path"]).startswith("peaknet-w05-")
        with h5py.File(entry["path"], "r") as f:
            ids.extend(f["/LCLS/event_id"][:].tolist())
    assert sorted(ids) == [0, 1, 2, 9, 10, 11]


def test_a_hard_stop_returns_once_the_writers_processes_have_ended(
    ray_session, unique_name, tmp_path
):
    # ray.kill returns before the process ends; the driver lists the run directory right
    # after a hard stop, so the kill must wait (a writer once opened its next .part file after
    # the listing: summary.json did not name it).
    ray = ray_session
    q2 = open_q2(ray, unique_name)
    writers = start_writer_actors(config(), q2, str(tmp_path), "h", [0, 1, 2])
    runs = [w.run.remote() for w in writers]  # writing: blocked in Q2's get
    ready = ray.get([w.ready.remote() for w in writers])
    records = [
        SimpleNamespace(
            actor_id=info.actor_id, role=Role.WRITER, handle=w, pid=info.pid,
            node_id=info.node_id, running=True, run_ref=run,
        )
        for w, info, run in zip(writers, ready, runs, strict=True)
    ]  # fmt: skip
    here, elsewhere = records[:2], records[2:]
    pipeline = SimpleNamespace(actors=here, pool=None, of=lambda role: of(here, role))
    kill_at_once(pipeline)
    assert [process_ended(r.pid) for r in here] == [True, True]
    # A writer on another node is not watched by pid: its run() ending (it raises once the
    # actor is dead) ends the wait.
    ray.kill(elsewhere[0].handle, no_restart=True)
    assert wait_ended(elsewhere, "another-node", timeout_s=30) == []
    for run in runs:
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(run, timeout=30)
    q2.destroy()
