"""The elastic inference pool: as many inference actors as asked for, while the stream runs.

A desired count comes from the run's control actor (`peaknet-pipeline scale`) or, on
Kubernetes, from the resource's spec; it is clamped to 1..inference.max_actors.

- Growing: a new actor (a fresh id `inference-<n>`, never reused, so its Q2 producer id is
  new) registers with Q2, is started where there is room, loads and warms its model, and only
  then runs: it joins as one more Q1 consumer. On a cluster whose inference pods declare
  `peaknet_infer` (one unit per actor slot), the pool places it on a node with a free slot
  that is not being released; elsewhere it waits until the cluster has the CPUs (or GPUs).
- Shrinking: actors are retired, not killed. A retiring actor takes no new batches, finishes
  every batch it holds and hands the Results to Q2, closes its Q2 producer id and returns its
  summary, like an actor at end of stream; only then is its process ended. On a cluster the
  pool retires whole pods (every actor on the node) and, once all of a pod's actors are done,
  lists the pod as released: the operator deletes exactly those pods. A retiring actor that
  fails, or is not done within runtime.drain_timeout_s, is reported as failed and not
  replaced, never waited on forever; the batches it held go back to Q1 for the others.
- A failed actor is replaced (supervision.py): its replacement's Q2 id is registered at once,
  before the failed actor's id closes, so Q2 cannot end in between.
- A request arriving while actors are still retiring is merged: the pool compares the target
  with the actors that are neither retiring nor finished.
- Once ingest has stopped, requests are ignored: the pool keeps its size while the stream
  ends (it still replaces an actor that fails, so what that actor held is processed).

`plan_step`, `choose_retirees` and `free_slots` are pure (pool_plan.py); `InferencePool` does
the Ray calls.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

import ray

from .errors import describe
from .inference import inference_producer_id, start_inference_actors
from .inference.launch import uses_gpu
from .placement import Role
from .pool_plan import SLOT, Member, PoolState, choose_retirees, free_slots, plan_step

log = logging.getLogger(__name__)


class InferencePool:
    """The inference actors of one run and the count they should have; lives in the driver
    (`Pipeline.pool`). The pipeline's watch loop hands it the calls it waits on."""

    def __init__(self, pipeline: Any, control: Any = None) -> None:
        self.pipeline = pipeline
        self.cfg = pipeline.cfg
        self.limit = self.cfg.inference.pool_limit
        self.desired = self.cfg.inference.num_actors
        self.control = control
        self._next_index = self.cfg.inference.num_actors
        self._starting: dict[Any, Any] = {}  # ready() ref -> StageActor
        self._control_ref: Any = None
        self._control_version = 0
        self._releasing: set[str] = set()  # node names whose actors are retiring for release
        self._released: list[str] = []  # node names given up, until they leave the cluster
        self._waiting_said = False
        self._grow_after = 0.0  # back-off after a failure
        self.frozen = False  # inference restarts used up: start nothing more
        # One (index, id) per failed actor still to replace, even while the stream ends: its
        # Q2 producer id is registered already, so Q2 cannot reach end of stream between the
        # failed actor's id closing and its replacement starting.
        self._reserved: list[tuple[int, str]] = []
        self._last_state: PoolState | None = None
        if control is not None:
            self._control_ref = control.changed.remote(0)

    # -- what the watch loop waits on ---------------------------------------------------------
    def pending(self) -> list[Any]:
        refs = list(self._starting)
        return refs + ([self._control_ref] if self._control_ref is not None else [])

    def handle(self, ref: Any) -> bool:
        """Act on a finished pending call; False when it is not the pool's."""
        if ref is self._control_ref or ref == self._control_ref:
            self._on_control(ref)
            return True
        if ref in self._starting:
            self._on_ready(ref, self._starting.pop(ref))
            return True
        return False

    def request(self, count: int, source: str) -> None:
        """A new desired count (clamped to 1..max_actors)."""
        count = max(1, min(int(count), self.limit))
        if self.pipeline.draining:  # the pool keeps its size while the stream ends
            if count != self.desired:
                log.info("inference pool: %d actors requested (%s), but ingest has stopped: "
                         "the pool keeps %d", count, source, self.desired)  # fmt: skip
            return
        if count != self.desired:
            log.info("inference pool: %d -> %d actors (%s)", self.desired, count, source)
            self.desired = count

    # -- the loop's step ----------------------------------------------------------------------
    def step(self) -> None:
        """Start or retire actors toward the desired count; retire overdue retirees; forget
        released pods that have left the cluster; report changes."""
        active = self.active()
        may_start = time.monotonic() >= self._grow_after and not self.frozen
        todo = plan_step(
            self.desired, len(active), len(self._reserved), self.pipeline.draining, may_start
        )
        if todo.start:
            self._grow(todo.start)
        elif todo.retire:
            self._shrink(active, todo.retire)
        if todo.drop_owed:
            self._unreserve()
        now = time.monotonic()
        for actor in self._actors():
            if actor.retiring and actor.running and now > actor.retire_deadline:
                actor.kill_reason = (
                    f"did not finish retiring within runtime.drain_timeout_s="
                    f"{self.cfg.runtime.drain_timeout_s:g} s"
                )
                ray.kill(actor.handle, no_restart=True)
        if self._released:
            alive = {n["NodeName"] for n in ray.nodes() if n["Alive"]}
            self._released = [name for name in self._released if name in alive]
        self._report()

    def finished(self, actor: Any) -> None:
        """An inference actor's run() ended (returned or failed): end a retired actor's process
        and release its pod once every actor there is done."""
        if not actor.retiring:
            return
        ray.kill(actor.handle, no_restart=True)  # its summary is in; free its slot
        if actor.summary is not None:  # a failure is logged as one already
            asked = actor.retire_deadline - self.cfg.runtime.drain_timeout_s
            log.info(
                "inference pool: %s retired: finished its batches (%d frames in all) %.1f s "
                "after it was asked to stop",
                actor.actor_id,
                actor.counts.get("frames_out", 0),
                time.monotonic() - asked,
            )
        node = actor.node_name
        if node in self._releasing and not any(
            a.running for a in self._actors() if a.node_name == node
        ):
            self._releasing.discard(node)
            self._released.append(node)
            log.info("inference pool: pod %s released", node)

    def state(self) -> PoolState:
        actors = [a for a in self._actors() if a.running]

        def phase(a: Any) -> str:
            return "retiring" if a.retiring else ("starting" if a.run_ref is None else "running")

        return PoolState(
            desired=self.desired,
            running=sum(1 for a in actors if phase(a) == "running"),
            starting=sum(1 for a in actors if phase(a) == "starting"),
            retiring=sum(1 for a in actors if phase(a) == "retiring"),
            released_pods=sorted(self._released),
            actors={
                a.actor_id: {"state": phase(a), "node": a.node_name, "pid": a.pid} for a in actors
            },  # fmt: skip
        )

    # -- growing --------------------------------------------------------------------------------
    def _grow(self, count: int) -> int:
        """Start up to `count` actors where there is room; returns how many started."""
        pipeline = self.pipeline
        for started in range(count):
            node_id = None
            if ray.cluster_resources().get(SLOT, 0) > 0:
                node_id = self._free_node()
                if node_id is None:
                    self._say_waiting(f"a node with a free {SLOT} slot")
                    return started
            elif not self._room_for_one():
                self._say_waiting("CPUs (or GPUs) for one more inference actor")
                return started
            self._waiting_said = False
            if self._reserved:  # its Q2 id is registered already
                index, actor_id = self._reserved.pop(0)
            else:
                index, actor_id = self._new_id()
            [handle] = start_inference_actors(
                self.cfg,
                pipeline.q1,
                pipeline.q2,
                [index],
                wait_ready=False,
                runtime_env=self.cfg.inference.runtime_env,
                node_id=node_id,
            )
            actor = pipeline.add_actor(Role.INFERENCE, actor_id, handle)
            actor.node_id = node_id  # the slot it takes, until ready() says where it is
            self._starting[handle.ready.remote()] = actor
            log.info("inference pool: starting %s", actor_id)
        return count

    def _free_node(self) -> str | None:
        nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get(SLOT, 0) > 0]
        slots = {n["NodeID"]: n["Resources"][SLOT] for n in nodes}
        used = Counter(a.node_id for a in self._actors() if a.running)
        closed = {n["NodeID"] for n in nodes if n["NodeName"] in self._closed_names()}
        free = free_slots(slots, used, closed)
        return free[0] if free else None

    def _room_for_one(self) -> bool:
        inf, free = self.cfg.inference, ray.available_resources()
        if free.get("CPU", 0.0) < inf.num_cpus_per_actor:
            return False
        return not uses_gpu(self.cfg, ray.cluster_resources()) or (
            free.get("GPU", 0.0) >= inf.num_gpus_per_actor
        )

    def _say_waiting(self, what: str) -> None:
        if not self._waiting_said:
            log.info("inference pool: %d of %d actors; waiting for %s", len(self.active()),
                     self.desired, what)  # fmt: skip
            self._waiting_said = True

    def _on_ready(self, ref: Any, actor: Any) -> None:
        try:
            info = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - a failed start is reported, not raised
            self.pipeline.fail_to_start(actor, describe(exc))
            return
        actor.took_ready(info, node_names())
        actor.run_ref = actor.handle.run.remote()
        log.info(
            "inference pool: %s joined on %s (%d running)",
            actor.actor_id,
            actor.node_name,
            self.state().running,
        )

    # -- shrinking ------------------------------------------------------------------------------
    def _shrink(self, active: list[Any], count: int) -> None:
        whole_nodes = ray.cluster_resources().get(SLOT, 0) > 0
        members = [
            Member(a.actor_id, a.node_name if a.run_ref is not None else None, a.started)
            for a in active
        ]
        chosen = set(choose_retirees(members, count, whole_nodes))
        for actor in active:
            if actor.actor_id not in chosen:
                continue
            if actor.run_ref is None:
                self._cancel(actor, "not needed any more")
                continue
            if whole_nodes and actor.node_name:
                self._releasing.add(actor.node_name)
            self.retire(actor)

    def retire(self, actor: Any) -> None:
        actor.retiring = True
        actor.retire_deadline = time.monotonic() + self.cfg.runtime.drain_timeout_s
        actor.handle.stop.remote()
        log.info("inference pool: retiring %s on %s", actor.actor_id, actor.node_name)

    def _cancel(self, actor: Any, why: str) -> None:
        """End an actor that never ran: it took nothing, so it only has to close its id."""
        self._starting = {r: a for r, a in self._starting.items() if a is not actor}
        ray.kill(actor.handle, no_restart=True)
        self.pipeline.q2.close_producer(actor.actor_id)
        actor.summary = {"actor_id": actor.actor_id, "state": "cancelled", "reason": why}
        log.info("inference pool: %s cancelled (%s)", actor.actor_id, why)

    # -- helpers --------------------------------------------------------------------------------
    def _actors(self) -> list[Any]:
        return self.pipeline.of(Role.INFERENCE)

    def active(self) -> list[Any]:
        """Actors that count toward the target: starting or running, not retiring."""
        return [a for a in self._actors() if a.running and not a.retiring]

    def freeze(self, why: str) -> None:
        """Start no more actors (failed ones are not replaced any more)."""
        if not self.frozen:
            self.frozen = True
            self._unreserve()
            log.error("inference pool: no more actors will be started: %s", why)

    @property
    def owes(self) -> bool:
        """A failed actor is still to be replaced."""
        return bool(self._reserved)

    def replace_failed(self, when: float) -> None:
        """An actor failed: start one in its place, not before `when` (back-off). Its Q2
        producer id is registered now, before the failed actor's id is closed."""
        self._grow_after = max(self._grow_after, when)
        self._reserved.append(self._new_id())

    def _new_id(self) -> tuple[int, str]:
        """A fresh (index, id), registered as a Q2 producer."""
        index, self._next_index = self._next_index, self._next_index + 1
        actor_id = inference_producer_id(index)
        self.pipeline.q2.register_producer(actor_id)
        return index, actor_id

    def _unreserve(self) -> None:
        """Close the ids of the reserved replacements: they will not start."""
        while self._reserved:
            _, actor_id = self._reserved.pop()
            self.pipeline.q2.close_producer(actor_id)

    def _closed_names(self) -> set[str]:
        return self._releasing | set(self._released)

    def _on_control(self, ref: Any) -> None:
        try:
            self._control_version, desired, stop = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - the control actor is gone: stop listening
            log.warning("inference pool: the control actor failed (%s); scaling by it stops", exc)
            self._control_ref = None
            return
        if stop is not None:
            self.pipeline.stop_ingest(stop)  # ended by "peaknet-pipeline stop"
        if desired is not None:
            self.request(desired, "peaknet-pipeline scale")
        if self.control is not None:
            self._control_ref = self.control.changed.remote(self._control_version)

    def _report(self) -> None:
        state = self.state()
        if state != self._last_state:
            self._last_state = state
            if self.control is not None:
                self.control.report_pool.remote(vars(state))

    def changed_since(self, state: PoolState | None) -> bool:
        return self.state() != state


def node_names() -> dict[str, str]:
    """Node id -> node name (the pod name under KubeRay when it passes --node-name)."""
    return {n["NodeID"]: n["NodeName"] for n in ray.nodes()}
