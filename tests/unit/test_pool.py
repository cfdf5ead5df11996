"""Which inference actors the pool retires, and where it may start new ones (pure rules)."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest

from peaknet_pipeline.config import PipelineConfig
from peaknet_pipeline.pool import InferencePool
from peaknet_pipeline.pool_plan import Member, StepPlan, choose_retirees, free_slots, plan_step
from peaknet_pipeline.registry import StageActor


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

    import ray

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


# -- the pool's state rules, without Ray ---------------------------------------------------------
def test_a_step_starts_what_is_missing_and_retires_what_is_over():
    assert plan_step(3, 1, owed=0, draining=False, may_start=True) == StepPlan(2, 0, False)
    assert plan_step(1, 3, owed=0, draining=False, may_start=True) == StepPlan(0, 2, True)
    assert plan_step(2, 2, owed=0, draining=False, may_start=True) == StepPlan(0, 0, True)


def test_during_the_back_off_or_once_frozen_a_step_starts_nothing_and_keeps_what_is_owed():
    assert plan_step(3, 1, owed=1, draining=False, may_start=False) == StepPlan(0, 0, False)


def test_while_the_stream_ends_only_failed_actors_come_back():
    # A target raised after ingest stopped starts nothing; a failed actor is still replaced.
    assert plan_step(4, 2, owed=0, draining=True, may_start=True) == StepPlan(0, 0, True)
    assert plan_step(4, 1, owed=1, draining=True, may_start=True) == StepPlan(1, 0, False)
    assert plan_step(2, 1, owed=3, draining=True, may_start=True) == StepPlan(1, 0, False)


def test_on_a_cluster_starting_actors_go_first_and_equal_pods_go_newest_first():
    members = [
        Member("inference-0", "pod-a", 1.0),
        Member("inference-1", "pod-a", 2.0),
        Member("inference-2", "pod-b", 3.0),
        Member("inference-3", "pod-b", 4.0),
        Member("inference-4", None, 5.0),
    ]
    assert choose_retirees(members, 1, whole_nodes=True) == ["inference-4"]
    assert choose_retirees(members, 2, whole_nodes=True) == [
        "inference-4",
        "inference-2",
        "inference-3",
    ]
    assert choose_retirees(members, 9, whole_nodes=False) == [
        "inference-4",
        "inference-3",
        "inference-2",
        "inference-1",
        "inference-0",
    ]


class FakeHandle:
    """An actor handle that records the calls made on it."""

    def __init__(self, calls: list) -> None:
        self.calls = calls
        self.ready = SimpleNamespace(remote=lambda: ("ready", self))
        self.stop = SimpleNamespace(remote=lambda: calls.append(("stop", self)))


class FakePipeline:
    """What InferencePool uses of the driver's Pipeline: its config, actors and Q2's ids."""

    def __init__(self, num_actors: int = 1, max_actors: int = 4, draining: bool = False):
        self.cfg = PipelineConfig.model_validate(
            {"inference": {"num_actors": num_actors, "max_actors": max_actors}}
        )
        self.draining = draining
        self.actors: list[StageActor] = []
        self.calls: list = []  # Q2 producer ids registered and closed, actors started
        self.q1 = SimpleNamespace(name="q1")
        self.q2 = SimpleNamespace(
            register_producer=lambda pid: self.calls.append(("register", pid)),
            close_producer=lambda pid: self.calls.append(("close", pid)),
        )

    def of(self, role: str) -> list[StageActor]:
        return [a for a in self.actors if a.role == role]

    def add_actor(self, role: str, actor_id: str, handle) -> StageActor:
        actor = StageActor(role, actor_id, handle)
        self.actors.append(actor)
        return actor

    def running(self, *ids: str, node: str = "node-a") -> list[StageActor]:
        """Actors that joined and run (ready() answered, run() in flight)."""
        for actor_id in ids:
            started = float(len(self.actors))  # in the order the test adds them
            actor = self.add_actor("inference", actor_id, FakeHandle(self.calls))
            actor.run_ref, actor.node_name, actor.started = object(), node, started
        return self.actors


@pytest.fixture
def fake_ray(monkeypatch):
    """A local cluster with room for 8 CPU actors; starts and kills recorded, nothing runs."""
    import ray

    import peaknet_pipeline.pool as pool

    killed: list = []
    started: list = []

    def start(cfg, q1, q2, indices, **kw):
        started.extend(indices)
        return [FakeHandle([]) for _ in indices]

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0})
    monkeypatch.setattr(ray, "available_resources", lambda: {"CPU": 8.0})
    monkeypatch.setattr(ray, "kill", lambda handle, no_restart: killed.append(handle))
    monkeypatch.setattr(ray, "nodes", lambda: [])
    monkeypatch.setattr(pool, "start_inference_actors", start)
    return SimpleNamespace(killed=killed, started=started)


def test_requests_are_clamped_to_one_and_the_pool_limit():
    pool = InferencePool(FakePipeline(num_actors=2, max_actors=4))
    pool.request(0, "test")
    assert pool.desired == 1
    pool.request(9, "test")
    assert pool.desired == 4
    pool.request(3, "test")
    assert pool.desired == 3


def test_once_ingest_has_stopped_requests_are_ignored():
    pipeline = FakePipeline(num_actors=2)
    pool = InferencePool(pipeline)
    pipeline.draining = True
    pool.request(4, "test")
    assert pool.desired == 2


def test_a_failed_actors_replacement_id_is_registered_at_once_and_used_by_its_replacement(
    fake_ray, monkeypatch
):
    pipeline = FakePipeline(num_actors=2)
    pool = InferencePool(pipeline)
    pipeline.running("inference-0")  # inference-1 has just failed: one active of two
    monkeypatch.setattr("peaknet_pipeline.pool.time.monotonic", lambda: 10.0)
    pool.replace_failed(when=12.0)
    assert pipeline.calls == [("register", "inference-2")] and pool.owes
    pool.step()  # within the back-off: nothing starts, the id stays reserved
    assert fake_ray.started == [] and pool.owes
    monkeypatch.setattr("peaknet_pipeline.pool.time.monotonic", lambda: 12.0)
    pool.step()
    assert fake_ray.started == [2] and not pool.owes
    assert [a.actor_id for a in pool.active()] == ["inference-0", "inference-2"]
    assert pipeline.calls == [("register", "inference-2")]  # no second id, none closed
    state = pool.state()
    assert (state.desired, state.running, state.starting, state.retiring) == (2, 1, 1, 0)


def test_a_pool_at_its_target_or_frozen_closes_the_ids_it_no_longer_owes(fake_ray):
    pipeline = FakePipeline(num_actors=1)
    pool = InferencePool(pipeline)
    pipeline.running("inference-0")
    pool.replace_failed(when=0.0)  # a failure, but the pool is at its target
    pool.step()
    assert fake_ray.started == [] and not pool.owes
    assert pipeline.calls == [("register", "inference-1"), ("close", "inference-1")]
    pipeline.calls.clear()
    pool.request(3, "test")
    pool.replace_failed(when=0.0)
    pool.freeze("inference restarts used up")
    assert pipeline.calls == [("register", "inference-2"), ("close", "inference-2")]
    pool.step()
    assert fake_ray.started == [] and pool.frozen and not pool.owes


def test_shrinking_cancels_starting_actors_and_retires_the_newest_running_ones(fake_ray):
    pipeline = FakePipeline(num_actors=4)
    pool = InferencePool(pipeline)
    old, mid, new = pipeline.running("inference-0", "inference-1", "inference-2")
    starting = pipeline.add_actor("inference", "inference-3", FakeHandle(pipeline.calls))
    starting.started = 9.0
    pool.request(1, "test")
    pool.step()
    assert starting.summary["state"] == "cancelled" and fake_ray.killed == [starting.handle]
    assert ("close", "inference-3") in pipeline.calls  # it never ran: only its id to close
    assert [a.actor_id for a in pipeline.actors if a.retiring] == ["inference-1", "inference-2"]
    assert ("stop", new.handle) in pipeline.calls and ("stop", old.handle) not in pipeline.calls
    state = pool.state()
    assert (state.desired, state.running, state.starting, state.retiring) == (1, 1, 0, 2)
    assert state.as_status() == {"desired": 1, "running": 1, "retiring": 2}
    assert set(state.actors) == {"inference-0", "inference-1", "inference-2"}


def test_a_request_while_actors_retire_counts_only_those_not_retiring(fake_ray):
    pipeline = FakePipeline(num_actors=3)
    pool = InferencePool(pipeline)
    pipeline.running("inference-0", "inference-1", "inference-2")
    pool.request(1, "test")
    pool.step()  # two retiring
    pool.request(2, "test")
    pool.step()  # one more is needed: a new actor, the retiring ones are not taken back
    assert fake_ray.started == [3]
    assert sum(a.retiring for a in pipeline.actors) == 2
    assert [a.actor_id for a in pool.active()] == ["inference-0", "inference-3"]


def test_a_retiring_actor_past_its_deadline_is_killed_with_its_reason(fake_ray, monkeypatch):
    pipeline = FakePipeline(num_actors=2)
    pool = InferencePool(pipeline)
    pipeline.running("inference-0", "inference-1")
    monkeypatch.setattr("peaknet_pipeline.pool.time.monotonic", lambda: 100.0)
    pool.request(1, "test")
    pool.step()
    [retiring] = [a for a in pipeline.actors if a.retiring]
    assert retiring.retire_deadline == 100.0 + pipeline.cfg.runtime.drain_timeout_s
    pool.step()
    assert fake_ray.killed == []  # still within runtime.drain_timeout_s
    monkeypatch.setattr("peaknet_pipeline.pool.time.monotonic", lambda: 1e6)
    pool.step()
    assert fake_ray.killed == [retiring.handle]
    assert retiring.kill_reason.startswith("did not finish retiring within")


def test_a_pod_is_released_once_every_actor_on_it_has_finished(fake_ray, monkeypatch):
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0, "peaknet_infer": 4.0})
    pipeline = FakePipeline(num_actors=4)
    pool = InferencePool(pipeline)
    pipeline.running("inference-0", "inference-1", node="pod-a")
    a2, a3 = pipeline.running("inference-2", "inference-3", node="pod-b")[2:]
    pool.request(2, "test")
    pool.step()  # two pods of two: the newer, pod-b, retires whole
    assert {a.actor_id for a in pipeline.actors if a.retiring} == {"inference-2", "inference-3"}
    a2.summary = {"actor_id": "inference-2", "frames_out": 8}
    pool.finished(a2)
    assert pool.state().released_pods == []  # inference-3 still finishing on pod-b
    a3.summary = {"actor_id": "inference-3", "frames_out": 8}
    pool.finished(a3)
    assert pool.state().released_pods == ["pod-b"]
    assert fake_ray.killed == [a2.handle, a3.handle]  # each process ended once it finished
