"""Inference actors on the real local Ray (CPU path): N-way exactness at end of stream,
metadata alignment per event, padding/cropping in frame coordinates, multi-panel frames,
variable batch sizes, logits output, refusal of bad batches, stop(), outputs that outlive the
actor, and start-up errors.

Most tests use the threshold model (a documented oracle: mask == raw frame > threshold), so the
expected mask of every event is known exactly; one test runs a small PeakNet and compares its
logits with a local run of the same weights.
"""

from __future__ import annotations

import numpy as np
import pytest

from helpers import SMALL_MODEL
from peaknet_pipeline.config import PipelineConfig
from peaknet_pipeline.inference import inference_producer_id, start_inference_actors
from peaknet_pipeline.queue import Empty, EndOfStream, ShardedQueue
from peaknet_pipeline.records import Batch, Result

pytestmark = pytest.mark.ray

THRESHOLD = 50.0
SMALL_PEAKNET = dict(kind="peaknet", **SMALL_MODEL)


def make_cfg(model: dict | None = None, **inference) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "model": model or {"kind": "threshold", "threshold": THRESHOLD},
            "inference": {"num_cpus_per_actor": 0.5, "device": "cpu", **inference},
        }
    )


def make_queues(name: str, num_shards: int):
    q1 = ShardedQueue.create(f"{name}-q1", num_shards=num_shards, capacity_items=32)
    q2 = ShardedQueue.create(f"{name}-q2", num_shards=num_shards, capacity_items=32)
    return q1, q2


@pytest.fixture
def queues(ray_session, unique_name):
    """Q1 and Q2 with one shard each (every shard is an actor process: keep tests quick)."""
    q1, q2 = make_queues(unique_name, 1)
    yield q1, q2
    q1.destroy()
    q2.destroy()


@pytest.fixture
def sharded_queues(ray_session, unique_name):
    """Q1 and Q2 with two shards each: records cross shards, so order is not FIFO."""
    q1, q2 = make_queues(unique_name, 2)
    yield q1, q2
    q1.destroy()
    q2.destroy()


@pytest.fixture
def actors(ray_session):
    """Actors started by a test, killed after it."""
    started: list = []
    yield started
    for actor in started:
        ray_session.kill(actor)


def start(cfg, q1, q2, index, actors) -> object:
    (actor,) = start_inference_actors(cfg, q1, q2, [index])
    actors.append(actor)
    return actor


def put_batches(q1: ShardedQueue, batches: list[tuple[np.ndarray, dict]], close=True) -> list:
    """Put (images, meta) batches as source "src"; returns the records (with their refs)."""
    import ray

    q1.register_producer("src")
    records = [
        Batch.describe(images, meta, "src", seq).with_payload(ray.put(images))
        for seq, (images, meta) in enumerate(batches)
    ]
    q1.put_many(records)
    if close:
        q1.close_producer("src")
    return records


def drain(q2: ShardedQueue, timeout_s: float = 60.0) -> list[Result]:
    results = []
    while True:
        try:
            results.extend(q2.get_many(16, timeout=timeout_s))
        except EndOfStream:
            return results
        except Empty:
            pytest.fail(f"no result or end of stream from Q2 within {timeout_s} s")


def peak_at(event_id: int, h: int, w: int) -> tuple[int, int]:
    """A distinct pixel per event, so a mask row names the event it belongs to."""
    return (event_id * 7) % h, (event_id * 13) % w


def events_batch(first_id: int, size: int, shape=(1, 48, 80)) -> tuple[np.ndarray, dict]:
    images = np.full((size, *shape), 10.0, np.float32)
    ids = np.arange(first_id, first_id + size)
    for i, e in enumerate(ids):
        images[(i, 0, *peak_at(int(e), *shape[1:]))] = 500.0
    return images, {"event_id": ids, "photon_energy_ev": np.full(size, 9500.0)}


def masks(results: list[Result]):
    import ray

    return ray.get([r.output for r in results])


# -- N-way exactness ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_every_batch_gives_exactly_one_result_with_its_own_events(sharded_queues, actors, depth):
    q1, q2 = sharded_queues
    sizes = [3, 1, 4, 2, 3, 3, 1]  # 7 batches (not a multiple of 2 or 3), a short last batch
    starts = np.cumsum([0, *sizes[:-1]])
    actor = start(make_cfg(buffer_depth=depth), q1, q2, depth, actors)
    run = actor.run.remote()
    records = put_batches(q1, [events_batch(int(s), n) for s, n in zip(starts, sizes)])
    results = drain(q2)
    summary = run.future().result(timeout=60)

    assert sorted(r.batch.seq for r in results) == list(range(7))
    by_seq = {r.batch.seq: r for r in results}
    for record, out in zip(records, masks([by_seq[rec.seq] for rec in records])):
        result = by_seq[record.seq]
        assert result.batch.images == record.images  # the input ref itself, no copy
        np.testing.assert_array_equal(result.batch.meta["event_id"], record.meta["event_id"])
        assert result.actor_id == inference_producer_id(depth) == f"inference-{depth}"
        assert out.shape == (record.size, 1, 48, 80) and out.dtype == np.uint8
        assert result.output_shape == out.shape and result.output_kind == "mask"
        for row, event in zip(out, record.meta["event_id"]):  # the right event in each row
            assert np.argwhere(row[0]).tolist() == [list(peak_at(int(event), 48, 80))]
    assert summary.batches_in == summary.batches_out == 7
    assert summary.frames_in == summary.frames_out == sum(sizes)
    assert summary.rejected == {} and summary.actor_id == f"inference-{depth}"
    frame_pixels = 1 * 48 * 80
    assert summary.bytes_in == sum(sizes) * frame_pixels * 4  # float32 images taken
    assert summary.bytes_out == sum(sizes) * frame_pixels  # uint8 masks put
    assert summary.state == "done"
    assert summary.in_actor_batches == summary.staged_batches == 0
    # Each thread's times are disjoint parts of the run: each was spent, none counted twice.
    compute = ("busy_s", "idle_s", "q2_blocked_s", "warmup_s")
    prefetch = ("q1_wait_s", "fetch_s", "slot_wait_s", "stage_s")
    assert all(getattr(summary, key) > 0 for key in (*compute[:3], *prefetch[:2], "stage_s")), (
        summary
    )
    assert sum(getattr(summary, key) for key in compute) <= summary.wall_s, summary
    assert sum(getattr(summary, key) for key in prefetch) <= summary.wall_s, summary


# -- padding, cropping, panels, variable shapes ---------------------------------------------------
@pytest.mark.parametrize("pad_mode", ["center", "bottom_right"])
def test_peaks_come_back_in_frame_coordinates(queues, actors, pad_mode):
    q1, q2 = queues
    rng = np.random.default_rng(4)
    shapes = [(2, 1, 48, 80), (3, 2, 48, 80), (1, 1, 64, 64), (1, 2, 45, 70)]
    batches = []
    for shape in shapes:
        images = rng.uniform(0, 20, size=shape).astype(np.float32)
        images[..., 0, 0] = images[..., -1, -1] = 300.0  # corners: lost if cropped wrongly
        for _ in range(5):
            images[tuple(rng.integers(0, n) for n in shape)] = 300.0
        batches.append((images, {"event_id": np.arange(shape[0])}))
    actor = start(make_cfg(pad_mode=pad_mode), q1, q2, 0, actors)
    run = actor.run.remote()
    put_batches(q1, batches)
    results = sorted(drain(q2), key=lambda r: r.batch.seq)
    run.future().result(timeout=60)
    assert [r.output_shape for r in results] == shapes
    for (images, _), out in zip(batches, masks(results)):
        np.testing.assert_array_equal(out, (images > THRESHOLD).astype(np.uint8))


# -- a real (small) PeakNet, logits output -----------------------------------------------------------
@pytest.mark.slow
def test_peaknet_logits_match_a_local_run_of_the_same_weights(queues, actors):
    import torch

    from peaknet_pipeline.inference.engine import Engine
    from peaknet_pipeline.inference.geometry import geometry, output_array
    from peaknet_pipeline.inference.runners import Slot
    from peaknet_pipeline.model import build_model

    q1, q2 = queues
    cfg = make_cfg(model={**SMALL_PEAKNET, "seed": 11}, output="logits", pad_mode="center")
    rng = np.random.default_rng(5)
    batches = [
        (rng.normal(10, 3, size=s).astype(np.float32), {"event_id": np.arange(s[0])})
        for s in [(2, 1, 48, 80), (1, 2, 48, 80)]
    ]
    actor = start(cfg, q1, q2, 0, actors)
    run = actor.run.remote()
    put_batches(q1, batches)
    results = sorted(drain(q2), key=lambda r: r.batch.seq)
    run.future().result(timeout=60)

    engine = Engine(build_model(cfg.model), output="logits", normalize=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the actor's thread count (num_cpus_per_actor 0.5 -> 1)
    try:
        for (images, _), result, got in zip(batches, results, masks(results)):
            assert result.output_kind == "logits" and got.dtype == np.float32
            assert got.shape == (*images.shape[:2], 2, *images.shape[2:])
            slot, geo = Slot(0), geometry(images.shape, "center")
            slot.stage(images, geo)
            want = output_array(engine.compute(slot.host_input(), geo).numpy(), geo, "logits")
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    finally:
        torch.set_num_threads(threads)


# -- refusals -------------------------------------------------------------------------------------
def test_bad_batches_are_refused_counted_and_the_actor_keeps_going(queues, actors):
    import ray

    q1, q2 = queues
    good_a, good_b = events_batch(0, 2, (1, 64, 64)), events_batch(2, 1, (1, 64, 64))

    seqs = iter(range(100, 200))  # every batch its own key: a queue accepts a key once

    def raw(images: np.ndarray, meta: dict | None = None) -> Batch:
        meta = {"event_id": np.arange(len(images))} if meta is None else meta
        shape = tuple(images.shape)
        return Batch("src", next(seqs), shape, images.dtype.str, meta, ray.put(images))

    bad = [
        raw(np.zeros((2, 64, 64), np.float32)),  # rank
        raw(np.zeros((1, 1, 32, 32), np.float32)),  # frame_shape
        raw(np.full((1, 1, 64, 64), "x")),  # dtype
        raw(np.zeros((2, 1, 64, 64), np.float32), {"event_id": np.arange(3)}),  # metadata
        raw(np.zeros((1, 2, 64, 64), np.float32)),  # frame_shape (2 panels)
        raw(np.zeros((3, 64, 64), np.float32)),  # rank again: counted, not logged again
    ]
    cfg = make_cfg(frame_shape=[1, 64, 64])
    actor = start(cfg, q1, q2, 0, actors)
    run = actor.run.remote()
    q1.register_producer("src")
    q1.put_many(bad[:3])
    records = put_batches(q1, [good_a], close=False)
    q1.put_many(bad[3:])
    q1.put(Batch.describe(good_b[0], good_b[1], "src", 9).with_payload(ray.put(good_b[0])))
    q1.close_producer("src")
    results = drain(q2)
    summary = run.future().result(timeout=60)

    assert sorted(r.batch.seq for r in results) == [records[0].seq, 9]
    assert summary.rejected == {"rank": 2, "frame_shape": 2, "dtype": 1, "metadata": 1}
    assert summary.rejected_frames == 2 + 1 + 1 + 2 + 1 + 3
    assert summary.batches_in == 8 and summary.batches_out == 2
    assert summary.warmup_s > 0  # frame_shape given: warmed up before the first batch
    assert ray.get(actor.stats.remote()).state == "done"  # alive and answering


# -- stop, and outputs that outlive the actor --------------------------------------------------------
def test_stop_finishes_taken_batches_and_outputs_outlive_the_actor(queues, actors):
    import ray

    q1, q2 = queues
    actor = start(make_cfg(buffer_depth=2), q1, q2, 5, actors)
    run = actor.run.remote()
    batches = [events_batch(3 * i, 3) for i in range(3)]
    put_batches(q1, batches, close=False)  # the source stays open: only stop() ends the run
    results = []
    while len(results) < 3:
        results.extend(q2.get_many(3, timeout=60))
    actor.stop.remote()
    summary = run.future().result(timeout=30)
    assert summary.batches_in == summary.batches_out == 3
    with pytest.raises(EndOfStream):  # the actor closed its Q2 producer
        q2.get_many(1, timeout=30)

    ray.kill(actor)
    results.sort(key=lambda r: r.batch.seq)
    for (images, _), out in zip(batches, masks(results)):
        np.testing.assert_array_equal(out, (images > THRESHOLD).astype(np.uint8))


# -- start-up errors ------------------------------------------------------------------------------
def test_missing_weights_file_fails_the_start_naming_the_path(queues, tmp_path):
    from peaknet_pipeline.model import WeightsError

    q1, q2 = queues
    path = tmp_path / "missing" / "peaknet.pt"
    cfg = make_cfg(model={**SMALL_PEAKNET, "weights_path": str(path)})
    with pytest.raises(WeightsError, match=rf"{path}.*does not exist"):
        start_inference_actors(cfg, q1, q2, [0])


def test_cuda_without_gpus_in_the_cluster_is_a_clear_error(queues):
    q1, q2 = queues
    with pytest.raises(
        ValueError, match="inference.device is cuda but the Ray cluster has no GPUs"
    ):
        start_inference_actors(make_cfg(device="cuda"), q1, q2, [0])
