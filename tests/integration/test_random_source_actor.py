"""The random source as a Ray actor feeding Q1: counts, short last batch, stop, ownership."""

from __future__ import annotations

import numpy as np
import pytest

from peaknet_pipeline.config import PipelineConfig
from peaknet_pipeline.queue import EndOfStream, ShardedQueue
from peaknet_pipeline.sources import source_ids, start_source_actors
from peaknet_pipeline.sources.random import FrameGenerator

pytestmark = pytest.mark.ray


def _cfg(**random):
    base = dict(frame_shape=[1, 32, 48], batch_size=4, num_frames=10, peaks_per_frame=3)
    return PipelineConfig.model_validate({"source": {"random": {**base, **random}}})


def _drain(q, timeout=30):
    batches = []
    try:
        while True:
            batches += q.get_many(8, timeout=timeout)
    except EndOfStream:
        return batches


def test_two_generators_fill_q1_and_end_the_stream(ray_session, unique_name):
    import ray

    cfg = _cfg(num_actors=2)
    q1 = ShardedQueue.create(unique_name, num_shards=2)
    try:
        ids = source_ids(cfg)
        assert ids == ["random-0", "random-1"]
        for sid in ids:
            q1.register_producer(sid)
        actors = start_source_actors(cfg, q1, ids)
        summaries = ray.get([a.run.remote() for a in actors.values()])
        for actor in actors.values():
            ray.kill(actor)  # the queue owns the frames: they must still be readable
        assert sorted(s.frames_out for s in summaries) == [5, 5]
        assert all(s.ended_by == "end of data" for s in summaries)
        batches = _drain(q1)
        # 5 events per actor in batches of 4: one full and one short batch each.
        assert sorted(b.size for b in batches) == [1, 1, 4, 4]
        events = np.concatenate([b.meta["event_id"] for b in batches])
        assert sorted(events) == list(range(10))
        gen = FrameGenerator(cfg.source.random)
        for batch, frames in zip(batches, ray.get([b.images for b in batches])):
            assert np.array_equal(frames, gen.batch(batch.meta["event_id"]))
            assert np.all(batch.meta["photon_energy_ev"] == cfg.source.random.photon_energy_ev)
    finally:
        q1.destroy()


def test_stop_ends_an_endless_source(ray_session, unique_name):
    import ray

    cfg = _cfg(num_frames=0, rate_hz=200)
    q1 = ShardedQueue.create(unique_name, num_shards=1, capacity_items=1000)
    try:
        (actor,) = start_source_actors(cfg, q1, ["random-0"]).values()
        run = actor.run.remote()
        first = q1.get(timeout=30)
        assert first.size == 4
        actor.stop.remote()
        summary = ray.get(run, timeout=30)
        assert summary.ended_by == "stopped"
        rest = _drain(q1)
        assert sum(b.size for b in rest) + first.size == summary.frames_out
    finally:
        q1.destroy()


def test_a_resumed_source_stopped_at_once_still_fills_its_streams_gap(ray_session, unique_name):
    """A replacement source resumes at the first batch Q1 lacks; its predecessor's later
    batches up to `fill_to` were accepted. A stop (the run is ending) waits until the gap is
    sent, or the written stream would miss a batch in its middle; without a gap it stops at
    once."""
    import ray

    from peaknet_pipeline.sources import start_source_actor

    cfg = _cfg(num_frames=0, rate_hz=0)
    q1 = ShardedQueue.create(unique_name, num_shards=2, capacity_items=1000)
    try:
        filler = start_source_actor(cfg, q1, "random-0", 0, "random-0.1", start_seq=3, fill_to=6)
        plain = start_source_actor(cfg, q1, "random-0", 0, "random-0.2", start_seq=7)
        ray.get([filler.stop.remote(), plain.stop.remote()])  # before they run
        filled, stopped = ray.get([filler.run.remote(), plain.run.remote()], timeout=60)
        assert filled.ended_by == stopped.ended_by == "stopped"
        assert filled.frames_out == 4 * 4 and stopped.frames_out == 0
        keys = sorted(b.key[1] for b in _drain(q1))
        assert keys == [3, 4, 5, 6]
    finally:
        q1.destroy()
