"""sampling.py against a real Ray with one actor process stopped (SIGSTOP: a wedged or
swapping worker): the driver's samples go on without it. Its stats() call is made once and not
waited for again until it answers; the object store's use, which Ray reads only once every
worker has answered (5 s when one does not), keeps its newest reading meanwhile. Before this,
each sample waited 2 s for the actor and 5 s for the store and then had no store reading: the
driver's loop (stop signals, scaling) ran once every 7 s while any worker was stopped."""

from __future__ import annotations

import os
import signal
from types import SimpleNamespace

from peaknet_pipeline.monitor.objectstore import UsageReader
from peaknet_pipeline.placement import Role
from peaknet_pipeline.registry import StageActor
from peaknet_pipeline.sampling import sample
from peaknet_pipeline.stats import InferenceStats


class Counting:
    """Answers stats() with how many times it was asked."""

    def __init__(self) -> None:
        self.asked = 0

    def pid(self) -> int:
        return os.getpid()

    def stats(self) -> InferenceStats:
        self.asked += 1
        return InferenceStats(actor_id="", frames_in=self.asked)


def pipeline_of(actors: list[StageActor]) -> SimpleNamespace:
    queue = SimpleNamespace(stats=lambda: {"shards": []})
    pool = SimpleNamespace(state=lambda: SimpleNamespace(desired=len(actors)))
    return SimpleNamespace(
        actors=actors, q1=queue, q2=queue, pool=pool, store=UsageReader(), metrics=None,
        streaming_since=None,
    )  # fmt: skip


def test_a_stopped_actor_is_asked_once_and_the_samples_go_on_without_it(ray_session):
    ray = ray_session
    handles = [ray.remote(num_cpus=0)(Counting).remote() for _ in range(2)]
    live, stopped = (
        StageActor(Role.INFERENCE, f"inference-{i}", h, run_ref="running")
        for i, h in enumerate(handles)
    )
    pid = ray.get(handles[1].pid.remote())
    pipeline = pipeline_of([live, stopped])
    try:
        before = sample(pipeline)
        assert before.object_store is not None and before.object_store["capacity_bytes"] > 0
        assert [before.actors[a.actor_id]["frames_in"] for a in (live, stopped)] == [1, 1]

        os.kill(pid, signal.SIGSTOP)
        during = [sample(pipeline) for _ in range(3)]
        # The live actor's counts come in every sample; the stopped one keeps its last.
        assert [s.actors["inference-0"]["frames_in"] for s in during] == [2, 3, 4]
        assert [s.actors["inference-1"]["frames_in"] for s in during] == [1, 1, 1]
        # The store's newest reading, not none (its read is left to finish).
        assert all(s.object_store == before.object_store for s in during), during
        assert pipeline.store._thread is not None and pipeline.store._thread.is_alive()
    finally:
        os.kill(pid, signal.SIGCONT)
    # Its one outstanding call answers now: it was asked once while stopped, not thrice.
    ray.get(stopped.stats_ref, timeout=30)
    after = sample(pipeline)
    assert after.actors["inference-1"]["frames_in"] == 2
    assert ray.get(handles[1].stats.remote()).frames_in == 3
    for handle in handles:
        ray.kill(handle, no_restart=True)
