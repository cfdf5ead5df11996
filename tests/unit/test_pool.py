"""Which inference actors the pool retires, and where it may start new ones (pure rules)."""

from __future__ import annotations

from collections import Counter

from peaknet_pipeline.pool import Member, choose_retirees, free_slots


def test_actors_still_starting_are_retired_first_then_the_newest():
    members = [
        Member("inference-0", "node-a", started=1.0),
        Member("inference-1", "node-a", started=2.0),
        Member("inference-2", None, started=3.0),  # not ready yet: nothing to drain
    ]
    assert choose_retirees(members, 1, whole_nodes=False) == ["inference-2"]
    assert choose_retirees(members, 2, whole_nodes=False) == ["inference-2", "inference-1"]


def test_on_a_cluster_whole_pods_are_released_smallest_and_newest_first():
    members = [
        Member("inference-0", "pod-a", 1.0),
        Member("inference-1", "pod-a", 2.0),
        Member("inference-2", "pod-b", 3.0),
        Member("inference-3", "pod-b", 4.0),
        Member("inference-4", "pod-c", 5.0),
    ]
    assert choose_retirees(members, 1, whole_nodes=True) == ["inference-4"]
    assert sorted(choose_retirees(members, 2, whole_nodes=True)) == [
        "inference-2",
        "inference-3",
        "inference-4",
    ]  # pod-c (1 actor) and then the newest full pod: never half a pod
    assert choose_retirees(members, 0, whole_nodes=True) == []


def test_free_slots_leave_out_full_nodes_and_nodes_being_released():
    slots = {"n1": 2.0, "n2": 1.0, "n3": 1.0}
    used = Counter({"n1": 1, "n2": 1})
    assert free_slots(slots, used, closed=set()) == ["n1", "n3"]
    assert free_slots(slots, used, closed={"n3"}) == ["n1"]


def test_a_retired_actor_says_when_it_finished(monkeypatch, caplog):
    import logging
    from types import SimpleNamespace

    import ray

    from peaknet_pipeline.config import PipelineConfig
    from peaknet_pipeline.pool import InferencePool
    from peaknet_pipeline.stages import StageActor

    monkeypatch.setattr(ray, "kill", lambda handle, no_restart: None)
    actor = StageActor("inference", "inference-1", handle=None, retiring=True)
    cfg = PipelineConfig.model_validate({"inference": {"max_actors": 2}})
    actor.retire_deadline = 70.0 + cfg.runtime.drain_timeout_s  # asked to stop at t = 70 s
    actor.summary = {"actor_id": "inference-1", "frames_out": 96}
    pipeline = SimpleNamespace(cfg=cfg, of=lambda role: [actor])
    monkeypatch.setattr("peaknet_pipeline.pool.time.monotonic", lambda: 72.5)
    with caplog.at_level(logging.INFO, logger="peaknet_pipeline.pool"):
        InferencePool(pipeline).finished(actor)
    assert (
        "inference pool: inference-1 retired: finished its batches (96 frames in all) "
        "2.5 s after it was asked to stop" in caplog.text
    )
