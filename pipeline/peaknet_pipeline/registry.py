"""The actor registry of one run: the driver's record of every stage actor, and what happens
when one of them ends or fails (its ids closed on its behalf, a replacement planned, a queue
sealed when no consumer is left). Functions take the run's `Pipeline` (stages.py), which keeps
the actors and queues; the pool and the supervisor reach them through its methods.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import ray

from .errors import describe
from .placement import Role
from .records import ReadyInfo
from .sampling import last_stats
from .stats import StageStats, as_dict

if TYPE_CHECKING:
    from .stages import Pipeline

log = logging.getLogger(__name__)


@dataclass
class StageActor:
    """The driver's record of one actor of a stage. Every stage actor answers the same calls
    (records.StageProtocol): `ready()` (raises its start-up error), `run()` (returns its
    summary), `stats()` and `stop()`."""

    role: Role
    actor_id: str
    handle: Any
    run_ref: Any = None  # run() in flight; None while the actor is still starting
    summary: StageStats | dict | None = None  # what run() returned (a writer: a dict)
    error: str | None = None  # why run() failed, one line (errors.describe)
    last_stats: StageStats | None = None  # its newest stats() answer (kept when it fails)
    stats_ref: Any = None  # a stats() call not answered yet (sampling.py asks one at a time)
    started: float = field(default_factory=time.monotonic)
    index: int = 0  # the source's or writer's index in the config (restarts keep it)
    source_id: str | None = None  # ingest: the stream it produces (restarts keep it)
    node_id: str | None = None  # where it runs (inference: the pool retires by node)
    device: str | None = None  # inference: cpu or cuda:<n>
    node_name: str | None = None
    pid: int | None = None
    retiring: bool = False  # told to stop by the pool (scale-down), still finishing
    retire_deadline: float = float("inf")
    kill_reason: str | None = None  # why the driver ended it, when it did

    @property
    def running(self) -> bool:
        return self.summary is None and self.error is None

    @property
    def name(self) -> str:
        return f"{self.role} {self.actor_id}"

    @property
    def phase(self) -> str:
        """starting, running, retiring, done or failed."""
        if self.error is not None:
            return "failed"
        if self.summary is not None:
            return "done"
        if self.retiring:
            return "retiring"
        return "starting" if self.run_ref is None else "running"

    @property
    def counts(self) -> dict:
        """Its final counts: the summary, else the last stats of a failed actor, else none;
        as a dict (stats.as_dict): the report, the time series and the status read them."""
        return as_dict(self.summary or self.last_stats)

    def took_ready(self, info: ReadyInfo, node_names: Mapping[str, str]) -> None:
        """Keep where its `ready()` says it runs: process, node (id and name: `node_names`,
        node id -> name) and device. The one reading of ready()'s answer, for actors started
        with the run, by the inference pool and as replacements alike."""
        if not isinstance(info, ReadyInfo):
            raise TypeError(f"{self.name}: ready() answered {type(info).__name__}, not ReadyInfo")
        self.pid, self.node_id, self.device = info.pid, info.node_id, info.device
        self.node_name = node_names.get(info.node_id)


def of(actors: Iterable[StageActor], role: Role, running_only: bool = False) -> list[StageActor]:
    """The actors of one role, in the order they were added (only running ones if asked)."""
    return [a for a in actors if a.role == role and (a.running or not running_only)]


def draining(pipeline: Pipeline) -> bool:
    """Ingest has stopped, or every ingest actor has finished and none is being replaced:
    nothing new will come."""
    if pipeline.ingest_stopped:
        return True
    return not pipeline.of(Role.INGEST, running_only=True) and not pipeline.supervisor.waiting(
        Role.INGEST
    )


def alive(pipeline: Pipeline) -> bool:
    """Some actor runs, or a failed one is still to be replaced: the run goes on."""
    return any(a.running for a in pipeline.actors) or pipeline.supervisor.busy()


def wait(pipeline: Pipeline, timeout_s: float) -> None:
    """Collect the actors whose run() ended within `timeout_s`, and whatever the pool
    waits on (new actors getting ready, scale requests); then let the pool act."""
    pending = {a.run_ref: a for a in pipeline.actors if a.running and a.run_ref is not None}
    refs = list(pending) + pipeline.pool.pending() + pipeline.supervisor.pending()
    if refs:
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        for ref in done:
            if not (pipeline.pool.handle(ref) or pipeline.supervisor.handle(ref)):
                finished(pipeline, pending[ref], ref)
    else:  # nothing runs: only replacements waiting out their back-off
        time.sleep(timeout_s)
    pipeline.supervisor.step()
    pipeline.pool.step()


def finished(pipeline: Pipeline, actor: StageActor, ref: Any) -> None:
    """An actor's run() returned or raised: keep its summary, or its error and last counts."""
    try:
        actor.summary = ray.get(ref)
    except Exception as exc:  # noqa: BLE001 - any actor failure is reported, not raised
        actor.error = actor.kill_reason or describe(exc)
        log.error("%s failed: %s", actor.name, actor.error)
    if actor.role == Role.INFERENCE:
        pipeline.pool.finished(actor)
    if actor.summary is not None:
        return
    actor.last_stats = last_stats(actor.handle) or actor.last_stats
    failed(pipeline, actor)


def fail_to_start(pipeline: Pipeline, actor: StageActor, why: str) -> None:
    """An actor started mid-run that could not get ready: a failure like any other (it
    counts against the role's restarts; its replacement's ids are registered before its
    own close, so a queue cannot end early)."""
    actor.error = f"could not start: {why}"
    log.error("%s %s", actor.name, actor.error)
    failed(pipeline, actor)


def failed(pipeline: Pipeline, actor: StageActor) -> None:
    """End a failed actor; what it held goes back, its ids are closed on its behalf, a
    replacement is planned; with no consumer of a queue left, the run drains what it can."""
    ray.kill(actor.handle, no_restart=True)  # a failed actor must not keep consuming
    pipeline.supervisor.failed(actor)
    for role, queue in ((Role.INFERENCE, pipeline.q1), (Role.WRITER, pipeline.q2)):
        if queue.name in pipeline.sealed or pipeline.of(role, running_only=True):
            continue
        if pipeline.supervisor.waiting(role):
            continue
        if not queue.stats()["end_of_stream"]:
            log.error("no %s actor left: stopping ingest; queued data cannot drain", role)
            pipeline.stop_ingest(f"every {role} actor failed")
            queue.seal()
            pipeline.sealed.add(queue.name)
