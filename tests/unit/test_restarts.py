"""What the supervisor records of each failure (RestartRecord), what an actor's `ready()`
answers (ReadyInfo) and how the driver reads both: report.json's `restarts` entries, the one
reading of ready() for every actor, and the run's end named only by a failure that was not
recovered. Ray-free: the queues and the pool are stand-ins that record what they are told."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from peaknet_pipeline.config import PipelineConfig
from peaknet_pipeline.driver import ended_by
from peaknet_pipeline.placement import Role
from peaknet_pipeline.records import ReadyInfo
from peaknet_pipeline.registry import StageActor
from peaknet_pipeline.restarts import RestartRecord
from peaknet_pipeline.supervision import STRATEGIES, Supervisor


class _Queue:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def release_consumer(self, actor_id: str) -> int:
        self.calls.append(("release", actor_id))
        return 3

    def close_producer(self, actor_id: str) -> None:
        self.calls.append(("close", actor_id))

    def register_producer(self, actor_id: str) -> None:
        self.calls.append(("register", actor_id))


class _Pool:
    owes = frozen = False

    def replace_failed(self, due: float) -> None:
        pass

    def freeze(self, why: str) -> None:
        self.frozen = True


def _pipeline(restarts: int = 1, kind: str = "random") -> Any:
    cfg = PipelineConfig.model_validate(
        {"source": {"kind": kind}, "runtime": {"restarts": {"ingest": restarts,
         "inference": restarts, "writer": restarts, "backoff_s": 0.0}}}
    )  # fmt: skip
    p = SimpleNamespace(cfg=cfg, q1=_Queue(), q2=_Queue(), pool=_Pool(), ingest_stopped=None)
    p.supervisor = Supervisor(p)
    return p


def _failed(role: str, actor_id: str, **kw: Any) -> StageActor:
    return StageActor(role, actor_id, handle=None, error="ActorDiedError: gone", **kw)


def test_each_way_a_failure_is_made_good_is_its_own_field_and_reads_as_documented():
    p = _pipeline()
    sup = p.supervisor
    sup.failed(_failed("inference", "inference-0"))
    sup.failed(_failed("writer", "writer-0"))
    sup.failed(_failed("ingest", "random-0", source_id="random-0"))
    sup.failed(_failed("inference", "inference-1", retiring=True))
    sup.failed(_failed("writer", "writer-0.1"))  # the writers' one restart is used up
    pool, writer, source, retiring, lost = sup.restarts
    assert pool.pool_replaces and pool.replaced_by is None
    assert writer.replaced_by == "writer-0.1" and not writer.pool_replaces
    assert source.replaced_by == "random-0.1" and ("register", "random-0.1") in p.q1.calls
    assert [r.recovered for r in sup.restarts] == [True, True, True, True, False]
    assert [r.as_dict()["replacement"] for r in sup.restarts] == [
        "replaced by the pool", "writer-0.1", "random-0.1", None, None
    ]  # fmt: skip
    assert pool.as_dict() == {
        "role": "inference",
        "id": "inference-0",
        "error": "ActorDiedError: gone",
        "records_given_back": 3,
        "replacement": "replaced by the pool",
    }
    assert retiring.as_dict()["retiring"] is True and "retiring" not in lost.as_dict()


def test_a_replacement_sources_resume_point_lands_on_its_predecessors_record():
    p = _pipeline(kind="socket")
    p.supervisor.failed(_failed("ingest", "socket-0", source_id="socket-0"))
    p.supervisor._amend("socket-0.1", resumed_at_seq=17)
    [record] = p.supervisor.restarts
    entry = record.as_dict()
    assert entry["resumed_at_seq"] == 17 and "transport's buffers" in entry["note"]


def _run(actors: list[StageActor], restarts: list[RestartRecord]) -> Any:
    return SimpleNamespace(
        actors=actors,
        supervisor=SimpleNamespace(restarts=restarts),
        ingest_stopped=None,
        stopped_early=False,
    )


def test_a_recovered_failure_does_not_name_the_runs_end():
    dead, replacement = _failed("ingest", "random-0"), StageActor("ingest", "random-0.1", None)
    replacement.summary = {"frames": 10}
    record = RestartRecord("ingest", "random-0", dead.error, 0, replaced_by="random-0.1")
    assert ended_by(_run([dead, replacement], [record])) == "end of stream"


def test_only_the_unrecovered_failures_name_the_runs_end():
    first, second, third = (_failed("ingest", f"replay-0{s}") for s in ("", ".1", ".2"))
    records = [
        RestartRecord("ingest", "replay-0", first.error, 0, replaced_by="replay-0.1"),
        RestartRecord("ingest", "replay-0.1", second.error, 0),
        RestartRecord("ingest", "replay-0.2", third.error, 0),
    ]
    ended = ended_by(_run([first, second, third], records))
    assert ended == "ingest replay-0.1 failed: ActorDiedError: gone (and 1 more)"


def test_the_one_reading_of_ready_keeps_process_node_and_device():
    actor = StageActor("inference", "inference-0", None)
    actor.took_ready(ReadyInfo("inference-0", 41, "n1", "cuda:0"), {"n1": "gpu-node"})
    assert (actor.pid, actor.node_id, actor.node_name, actor.device) == (
        41, "n1", "gpu-node", "cuda:0"
    )  # fmt: skip
    writer = StageActor("writer", "writer-0", None)
    writer.took_ready(ReadyInfo("writer-0", 7, "n2"), {})
    assert (writer.pid, writer.node_id, writer.node_name, writer.device) == (7, "n2", None, None)
    with pytest.raises(TypeError, match="ready\\(\\) answered dict"):
        writer.took_ready({"pid": 7, "node_id": "n2"}, {})


def test_every_role_has_one_replacement_strategy_and_says_when_one_is_on_its_way():
    p = _pipeline()
    sup = p.supervisor
    assert set(STRATEGIES) == set(Role)
    assert not sup.waiting(Role.WRITER) and sup.waiting(Role.INFERENCE)  # the pool grows back
    sup.failed(_failed("writer", "writer-0"))
    assert sup.waiting(Role.WRITER) and not sup.waiting(Role.INGEST)
    sup.failed(_failed("inference", "inference-0"))
    sup.failed(_failed("inference", "inference-1"))  # the one restart is used: the pool freezes
    assert not sup.waiting(Role.INFERENCE)


class _Handle:
    def __init__(self, calls: list) -> None:
        self.stop = SimpleNamespace(remote=lambda: calls.append("stop"))


def _started_after_stop(monkeypatch, kind: str, resume_point: tuple[int, int]) -> tuple:
    """A source fails, ingest is stopped, then its planned replacement is due: what starts."""
    import peaknet_pipeline.supervision as supervision

    p = _pipeline(kind=kind)
    p.q1.resume_point = lambda source: resume_point
    started: list = []

    def start(cfg, q1, source_id, index, actor_id, start_seq, fill_to):  # noqa: ANN001
        started.append((actor_id, start_seq, fill_to))
        return _Handle(started)

    monkeypatch.setattr(supervision, "start_source_actor", start)
    p.supervisor.failed(_failed("ingest", f"{kind}-0", source_id=f"{kind}-0"))
    p.ingest_stopped = "peaknet-pipeline stop"
    [due] = p.supervisor._due
    handle = STRATEGIES[Role.INGEST].start(p.supervisor, due)
    return p, handle, started


def test_a_source_lost_before_a_stop_with_a_gap_behind_it_is_replaced_to_fill_the_gap(
    monkeypatch,
):
    # Batch 516 was in flight when the source died, 517 was accepted: Q1's first gap is 516.
    p, handle, started = _started_after_stop(monkeypatch, "random", (516, 517))
    assert handle is not None and started == [("random-0.1", 516, 517), "stop"]
    [record] = p.supervisor.restarts
    assert record.replaced_by == "random-0.1" and record.resumed_at_seq == 516


def test_a_source_lost_at_a_stop_with_nothing_missing_was_leaving_anyway(monkeypatch):
    p, handle, started = _started_after_stop(monkeypatch, "random", (518, 517))
    assert handle is None and started == []
    assert ("close", "random-0.1") in p.q1.calls
    [record] = p.supervisor.restarts
    assert record.recovered and record.retiring and record.replaced_by is None


def test_a_socket_source_lost_after_a_stop_is_not_replaced():
    p = _pipeline(kind="socket")
    p.ingest_stopped = "SIGTERM"
    p.supervisor.failed(_failed("ingest", "socket-0", source_id="socket-0"))
    assert not p.supervisor._due
    [record] = p.supervisor.restarts
    assert not record.recovered and ("close", "socket-0") in p.q1.calls
