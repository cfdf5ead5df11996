"""Supervision: what the driver does when an actor dies, so that no accepted frame is lost.

- Its leases come back first: a dead inference actor's batches go back to the front of Q1, a
  dead writer's Results to the front of Q2 (the queues hold every record until it is
  acknowledged: queue/leases.py), for the others or the replacement.
- Its producer id is closed on its behalf (so end of stream can still come), after the
  replacement's id is registered (so it cannot come too early).
- It is replaced within the role's budget, with back-off (restarts.py): inference by the pool
  growing back to its desired count; a writer by a writer with the same file index under a new
  consumer id; a source by a source that resumes: random and replay from the first batch Q1
  does not have (what was already accepted and is sent again is dropped there), a socket after
  the last batch Q1 accepted (messages the dead actor had received, or that were in the
  transport's buffers, are gone: the report says so).
- A role out of restarts is not replaced; when no actor of a consuming role is left, ingest
  stops and the queue is sealed, so the run drains what it can and ends (exit code 1).

What differs between the roles is one strategy object per role (`STRATEGIES`), each answering
the same three calls: `failed` (give back, close, plan), `start` (start a planned replacement)
and `waiting` (is a replacement of the role on its way).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

import ray

from .config import config_hash
from .errors import describe
from .placement import Role
from .pool import node_names
from .restarts import RestartBudget, RestartLog, RestartRecord
from .sources import start_source_actor
from .writer import start_writer_actors

log = logging.getLogger(__name__)


@dataclass
class Replacement:
    """A failed actor's replacement, due at `due` (back-off)."""

    role: Role
    index: int  # the source index, or the writer index
    source_id: str  # ingest: the stream; writer: unused
    actor_id: str  # the replacement's id (producer or consumer id)
    due: float


class Supervisor:
    """Lives in the driver next to the pool (`Pipeline.supervisor`)."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline
        self.cfg = pipeline.cfg
        self.budget = RestartBudget(self.cfg.runtime.restarts)
        self._due: list[Replacement] = []
        self._starting: dict[Any, tuple[Any, Replacement]] = {}  # ready() ref -> (actor, why)
        self.restarts = RestartLog()  # for the report, in the order they failed (bounded)

    # -- an actor died ---------------------------------------------------------------------
    def failed(self, actor: Any) -> None:
        """Give back what it held, close its producer id, and plan its replacement."""
        STRATEGIES[actor.role].failed(self, actor)

    def _plan(self, replacement: Replacement, actor: Any) -> None:
        self._due.append(replacement)
        log.warning(
            "%s failed: %s; %s replaces it in %.1f s",
            actor.name,
            actor.error,
            replacement.actor_id,
            max(0.0, replacement.due - time.monotonic()),
        )

    def _note(
        self,
        actor: Any,
        given_back: int,
        replaced_by: str | None = None,
        pool_replaces: bool = False,
        retiring: bool = False,
    ) -> None:
        note = None
        if actor.role == Role.INGEST and self.cfg.source.kind == "socket":
            note = (
                "messages this actor had received, and those in the transport's buffers, "
                "were lost with it; the streamer's own count tells how many"
            )
        self.restarts.append(
            RestartRecord(
                actor.role,
                actor.actor_id,
                actor.error,
                given_back,
                replaced_by=replaced_by,
                pool_replaces=pool_replaces,
                retiring=retiring,
                note=note,
            )
        )

    # -- the loop's step ---------------------------------------------------------------------
    def pending(self) -> list[Any]:
        return list(self._starting)

    def handle(self, ref: Any) -> bool:
        """A replacement answered ready() (or failed to): start it, or report it."""
        if ref not in self._starting:
            return False
        actor, _ = self._starting.pop(ref)
        try:
            info = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - its own failure, reported like any
            self.pipeline.fail_to_start(actor, describe(exc))
            return True
        actor.took_ready(info, node_names())
        actor.run_ref = actor.handle.run.remote()
        log.info("%s started in place of a failed actor", actor.name)
        return True

    def step(self) -> None:
        """Start the replacements that are due."""
        now = time.monotonic()
        for replacement in [r for r in self._due if r.due <= now]:
            self._due.remove(replacement)
            self._start(replacement)

    def busy(self) -> bool:
        """A replacement is due or starting, or the pool owes one."""
        return bool(self._due or self._starting) or self.pipeline.pool.owes

    def waiting(self, role: Role) -> bool:
        """A replacement of `role` is due or starting (the role is not gone for good)."""
        return STRATEGIES[role].waiting(self, role)

    def planned(self, role: Role) -> bool:
        """A replacement of `role` is due, or started and not yet ready."""
        return any(r.role == role for r in self._due) or any(
            a.role == role for a, _ in self._starting.values()
        )

    def _start(self, r: Replacement) -> None:
        handle = STRATEGIES[r.role].start(self, r)
        if handle is None:
            return
        actor = self.pipeline.add_actor(r.role, r.actor_id, handle)
        actor.index, actor.source_id = r.index, r.source_id or None
        self._starting[handle.ready.remote()] = (actor, r)

    def _amend(self, replacement_id: str, **changes: Any) -> None:
        """Amend the record of the failure that `replacement_id` replaces: where the source
        resumed (`resumed_at_seq`), or that no replacement was needed after all (ingest
        stopped, nothing missing: `replaced_by=None, retiring=True`, it was leaving with the
        stream anyway)."""
        i = next(i for i, x in enumerate(self.restarts) if x.replaced_by == replacement_id)
        self.restarts[i] = dataclasses.replace(self.restarts[i], **changes)


class ReplacementStrategy(Protocol):
    """How one role's failed actor is made good."""

    def failed(self, sup: Supervisor, actor: Any) -> None:
        """Give back what `actor` held, close its producer id (after registering its
        replacement's, if it has one), note the failure and plan the replacement."""

    def start(self, sup: Supervisor, r: Replacement) -> Any | None:
        """Start the planned replacement `r`; its actor handle, or None when it is no longer
        needed."""

    def waiting(self, sup: Supervisor, role: Role) -> bool:
        """A replacement of the role is on its way (the role is not gone for good)."""


class IngestReplacement:
    """A source is replaced by a source of the same stream under a new producer id, resuming
    where Q1 says: random and replay at the first batch Q1 lacks, a socket after the last one
    it accepted.

    A stop does not leave a gap: a dead source may have lost a put in flight while a later one
    was accepted, so a random or replay source is replaced even once ingest was stopped, and
    its replacement sends up to the highest batch Q1 holds before it stops (`fill_to`); with
    no gap there is nothing to send, and the failure is noted as retiring with the stream. A
    socket source is not replaced once ingest was stopped (what it had received is gone)."""

    def failed(self, sup: Supervisor, actor: Any) -> None:
        p = sup.pipeline
        due = sup.budget.take(actor.role, time.monotonic())
        source = actor.source_id or actor.actor_id
        if due is None or (p.ingest_stopped and sup.cfg.source.kind == "socket"):
            sup._note(actor, 0)
        else:
            new_id = f"{source}.{sup.budget.used[Role.INGEST]}"
            sup._note(actor, 0, replaced_by=new_id)
            p.q1.register_producer(new_id)  # before the old id closes: no early end
            sup._plan(Replacement(Role.INGEST, actor.index, source, new_id, due), actor)
        p.q1.close_producer(actor.actor_id)

    def start(self, sup: Supervisor, r: Replacement) -> Any | None:
        p, cfg = sup.pipeline, sup.cfg
        first_gap, highest = p.q1.resume_point(r.source_id)
        if cfg.source.kind == "socket":
            start_seq, fill_to = highest + 1, -1
        else:
            start_seq, fill_to = first_gap, highest
        if p.ingest_stopped and start_seq > fill_to:  # stopped, and nothing is missing
            p.q1.close_producer(r.actor_id)
            sup._amend(r.actor_id, replaced_by=None, retiring=True)
            return None
        handle = start_source_actor(cfg, p.q1, r.source_id, r.index, r.actor_id, start_seq, fill_to)
        if p.ingest_stopped:  # only the gap is sent, then it stops
            handle.stop.remote()
        sup._amend(r.actor_id, resumed_at_seq=start_seq)
        return handle

    def waiting(self, sup: Supervisor, role: Role) -> bool:
        return sup.planned(role)


class InferenceReplacement:
    """An inference actor is replaced by the pool growing back to its desired count (the pool
    registers the new actor's Q2 id first); a retiring one was leaving anyway. With the role's
    restarts used up, the pool freezes at what is left."""

    def failed(self, sup: Supervisor, actor: Any) -> None:
        p = sup.pipeline
        if actor.retiring:  # leaving anyway: not replaced
            back = p.q1.release_consumer(actor.actor_id)
            p.q2.close_producer(actor.actor_id)
            sup._note(actor, back, retiring=True)
            return
        due = sup.budget.take(actor.role, time.monotonic())
        back = p.q1.release_consumer(actor.actor_id)
        if due is None:
            p.pool.freeze(f"runtime.restarts.inference={sup.budget.limit(Role.INFERENCE)} used up")
        else:
            p.pool.replace_failed(due)  # registers the replacement's Q2 id first
        p.q2.close_producer(actor.actor_id)
        sup._note(actor, back, pool_replaces=due is not None)

    def start(self, sup: Supervisor, r: Replacement) -> Any | None:
        raise AssertionError(f"{r.actor_id}: the pool starts inference replacements")

    def waiting(self, sup: Supervisor, role: Role) -> bool:
        return not sup.pipeline.pool.frozen  # the pool grows back what failed


class WriterReplacement:
    """A writer is replaced by a writer with the same file index under a new consumer id; its
    leased Results go back to the front of Q2 for it and the other writers."""

    def failed(self, sup: Supervisor, actor: Any) -> None:
        back = sup.pipeline.q2.release_consumer(actor.actor_id)
        due = sup.budget.take(actor.role, time.monotonic())
        if due is None:
            sup._note(actor, back)
            return
        new_id = f"writer-{actor.index}.{sup.budget.used[Role.WRITER]}"
        sup._note(actor, back, replaced_by=new_id)
        sup._plan(Replacement(Role.WRITER, actor.index, "", new_id, due), actor)

    def start(self, sup: Supervisor, r: Replacement) -> Any | None:
        p, cfg = sup.pipeline, sup.cfg
        [handle] = start_writer_actors(
            cfg, p.q2, str(p.output_dir), config_hash(cfg), [r.index], {r.index: r.actor_id}
        )
        return handle

    def waiting(self, sup: Supervisor, role: Role) -> bool:
        return sup.planned(role)


STRATEGIES: dict[Role, ReplacementStrategy] = {
    Role.INGEST: IngestReplacement(),
    Role.INFERENCE: InferenceReplacement(),
    Role.WRITER: WriterReplacement(),
}
