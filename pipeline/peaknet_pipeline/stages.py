"""The running stages of one run: the two queues and every actor, and what happens when one
of them fails. The driver tells the story; this module keeps the bookkeeping.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .budget import blocked_calls_bound, derived_shards
from .cluster import check_resources
from .config import PipelineConfig, config_hash
from .control import start_control
from .errors import StartupError, describe
from .monitor.metrics import MetricSink, object_store_readings
from .monitor.objectstore import object_store_usage
from .monitor.timeseries import Sample, rss_bytes
from .placement import Role
from .pool import InferencePool, node_names
from .preflight import blocked_calls_message, check_budget
from .queue import ShardedQueue
from .records import ReadyInfo
from .supervision import Supervisor

log = logging.getLogger(__name__)

LAST_STATS_TIMEOUT_S = 5.0  # asking a failed actor for its last counts


@dataclass
class StageActor:
    """The driver's record of one actor of a stage. Every stage actor answers the same calls
    (records.StageProtocol): `ready()` (raises its start-up error), `run()` (returns its
    summary), `stats()` and `stop()`."""

    role: Role
    actor_id: str
    handle: Any
    run_ref: Any = None  # run() in flight; None while the actor is still starting
    summary: dict | None = None  # what run() returned
    error: str | None = None  # why run() failed, one line (errors.describe)
    last_stats: dict | None = None  # a failed actor's last counts, when it could still answer
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
        """Its final counts: the summary, else the last stats of a failed actor, else none."""
        return self.summary or self.last_stats or {}

    def took_ready(self, info: ReadyInfo, node_names: Mapping[str, str]) -> None:
        """Keep where its `ready()` says it runs: process, node (id and name: `node_names`,
        node id -> name) and device. The one reading of ready()'s answer, for actors started
        with the run, by the inference pool and as replacements alike."""
        if not isinstance(info, ReadyInfo):
            raise TypeError(f"{self.name}: ready() answered {type(info).__name__}, not ReadyInfo")
        self.pid, self.node_id, self.device = info.pid, info.node_id, info.device
        self.node_name = node_names.get(info.node_id)


@dataclass
class Pipeline:
    """The queues and actors of one run."""

    cfg: PipelineConfig
    run_id: str
    output_dir: Path
    actors: list[StageActor] = field(default_factory=list)
    q1: ShardedQueue | None = None
    q2: ShardedQueue | None = None
    ingest_stopped: str | None = None
    sealed: set[str] = field(default_factory=set)
    streaming_since: float | None = None  # time.time() once every actor is running
    pool: InferencePool | None = None
    supervisor: Supervisor | None = None
    metrics: MetricSink | None = None  # the driver's own metrics (object store)

    def start(self) -> None:
        """Queues first, then the stages downstream-first, every producer id registered
        before anything consumes; raises StartupError naming the stage, the actor and the
        cause when an actor cannot be placed or does not get ready."""
        import ray

        from .inference import inference_producer_id, start_inference_actors
        from .sources import source_ids, start_source_actors
        from .writer import start_writer_actors

        cfg = self.cfg
        resources = ray.cluster_resources()
        try:
            check_resources(cfg, resources)
        except ValueError as exc:
            raise StartupError(str(exc)) from None
        check_budget(cfg, int(resources.get("object_store_memory", 0)), store_nodes())
        sources = source_ids(cfg)
        n_infer, n_write = cfg.inference.num_actors, cfg.writer.num_actors
        limit = cfg.inference.pool_limit  # the queues are sized for the largest pool
        self.q1 = self._queue("q1", cfg.queue.q1, len(sources), limit)
        self.q2 = self._queue("q2", cfg.queue.q2, limit, n_write)
        try:
            control = start_control(self.run_id, limit)
        except ValueError as exc:  # the name is taken: a run with this id is running
            raise StartupError(f"runtime.run_id={self.run_id!r}: {exc}") from None
        self.pool = InferencePool(self, control)
        self.supervisor = Supervisor(self)
        for i in range(n_infer):
            self.q2.register_producer(inference_producer_id(i))
        for sid in sources:
            self.q1.register_producer(sid)

        writers = start_writer_actors(
            cfg, self.q2, str(self.output_dir), config_hash(cfg), list(range(n_write))
        )
        self._add(Role.WRITER, [f"writer-{i}" for i in range(n_write)], writers)
        for i, actor in enumerate(self.of(Role.WRITER)):
            actor.index = i
        infer = start_inference_actors(
            cfg,
            self.q1,
            self.q2,
            list(range(n_infer)),
            wait_ready=False,  # waited for below, with every other actor
            runtime_env=cfg.inference.runtime_env,
        )
        self._add(Role.INFERENCE, [inference_producer_id(i) for i in range(n_infer)], infer)
        handles = start_source_actors(cfg, self.q1, sources)
        self._add(Role.INGEST, list(handles), list(handles.values()))
        for i, actor in enumerate(self.of(Role.INGEST)):
            actor.index, actor.source_id = i, actor.actor_id
        self._wait_ready(cfg.runtime.startup_timeout_s)
        if cfg.monitor.metrics:
            self.metrics = MetricSink({"run": self.run_id})
            if not any((a.device or "").startswith("cuda") for a in self.of(Role.INFERENCE)):
                log.info("GPU metrics (peaknet_gpu_*) absent: inference runs on the CPU")
        for actor in self.actors:
            actor.run_ref = actor.handle.run.remote()
        log.info(
            "run %s: %d ingest, %d inference, %d writer actors; Q1 %d shards, Q2 %d shards",
            self.run_id,
            len(sources),
            n_infer,
            n_write,
            self.q1.num_shards,
            self.q2.num_shards,
        )
        self.streaming_since = time.time()

    def _wait_ready(self, timeout_s: float) -> None:
        """Every actor's `ready()`; the first failure ends the wait (a model still loading
        elsewhere is not waited for)."""
        import ray

        pending = {a.handle.ready.remote(): a for a in self.actors}
        answers: list[tuple[StageActor, ReadyInfo]] = []
        deadline = time.monotonic() + timeout_s
        while pending:
            done, _ = ray.wait(list(pending), timeout=max(0.0, deadline - time.monotonic()))
            if not done:
                names = ", ".join(a.name for a in pending.values())
                raise StartupError(
                    f"{names} not ready within runtime.startup_timeout_s={timeout_s:g} s: the "
                    "cluster cannot place them, or loading the model takes longer "
                    f"(free resources: {ray.available_resources()})"
                )
            for ref in done:
                actor = pending.pop(ref)
                try:
                    answers.append((actor, ray.get(ref)))
                except Exception as exc:  # noqa: BLE001 - any start-up failure, one line
                    raise StartupError(f"{actor.name}: {describe(exc)}") from None
        names = node_names()
        for actor, info in answers:
            actor.took_ready(info, names)

    def _queue(self, which: str, qcfg: Any, producers: int, consumers: int) -> ShardedQueue:
        needed = blocked_calls_bound(producers, consumers)
        if needed > qcfg.max_blocked_calls_per_shard:
            allowed = qcfg.max_blocked_calls_per_shard
            raise StartupError(blocked_calls_message(which, allowed, producers, consumers, needed))
        labels = {"run": self.run_id, "queue": which.upper()} if self.cfg.monitor.metrics else None
        return ShardedQueue.create(
            f"{self.run_id}-{which}",
            num_shards=derived_shards(qcfg.num_shards, producers, consumers, qcfg.capacity_items),
            capacity_items=qcfg.capacity_items,
            capacity_bytes=qcfg.capacity_bytes,
            persist=self.cfg.queue.persist,
            max_blocked_calls=qcfg.max_blocked_calls_per_shard,
            lease_s=self.cfg.queue.lease_s,
            max_deliveries=self.cfg.queue.max_deliveries,
            node_id=driver_node(),  # never on a worker pod that scaling may delete
            metrics_labels=labels,
        )

    def _add(self, role: Role, ids: list[str], handles: list[Any]) -> None:
        self.actors += [StageActor(role, aid, h) for aid, h in zip(ids, handles)]

    def add_actor(self, role: Role, actor_id: str, handle: Any) -> StageActor:
        """An actor started while the run goes on (the inference pool growing)."""
        actor = StageActor(role, actor_id, handle)
        self.actors.append(actor)
        return actor

    def fail_to_start(self, actor: StageActor, why: str) -> None:
        """An actor started mid-run that could not get ready: a failure like any other (it
        counts against the role's restarts; its replacement's ids are registered before its
        own close, so a queue cannot end early)."""
        actor.error = f"could not start: {why}"
        log.error("%s %s", actor.name, actor.error)
        self._failed(actor)

    @property
    def draining(self) -> bool:
        """Ingest has stopped, or every ingest actor has finished and none is being replaced:
        nothing new will come."""
        if self.ingest_stopped:
            return True
        return not self.of(Role.INGEST, running_only=True) and not self.supervisor.waiting(
            Role.INGEST
        )

    @property
    def alive(self) -> bool:
        """Some actor runs, or a failed one is still to be replaced: the run goes on."""
        return any(a.running for a in self.actors) or self.supervisor.busy()

    def of(self, role: Role, running_only: bool = False) -> list[StageActor]:
        return [a for a in self.actors if a.role == role and (a.running or not running_only)]

    # -- watching -----------------------------------------------------------------------------
    def wait(self, timeout_s: float) -> None:
        """Collect the actors whose run() ended within `timeout_s`, and whatever the pool
        waits on (new actors getting ready, scale requests); then let the pool act."""
        import ray

        pending = {a.run_ref: a for a in self.actors if a.running and a.run_ref is not None}
        refs = list(pending) + self.pool.pending() + self.supervisor.pending()
        if refs:
            done, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
            for ref in done:
                if not (self.pool.handle(ref) or self.supervisor.handle(ref)):
                    self._finished(pending[ref], ref)
        else:  # nothing runs: only replacements waiting out their back-off
            time.sleep(timeout_s)
        self.supervisor.step()
        self.pool.step()

    def _finished(self, actor: StageActor, ref: Any) -> None:
        import ray

        try:
            actor.summary = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - any actor failure is reported, not raised
            actor.error = actor.kill_reason or describe(exc)
            log.error("%s failed: %s", actor.name, actor.error)
        if actor.role == Role.INFERENCE:
            self.pool.finished(actor)
        if actor.summary is not None:
            return
        actor.last_stats = _last_stats(actor.handle) or actor.last_stats
        self._failed(actor)

    def _failed(self, actor: StageActor) -> None:
        """End a failed actor; what it held goes back, its ids are closed on its behalf, a
        replacement is planned; with no consumer of a queue left, the run drains what it can."""
        import ray

        ray.kill(actor.handle, no_restart=True)  # a failed actor must not keep consuming
        self.supervisor.failed(actor)
        for role, queue in ((Role.INFERENCE, self.q1), (Role.WRITER, self.q2)):
            if queue.name in self.sealed or self.of(role, running_only=True):
                continue
            if self.supervisor.waiting(role):
                continue
            if not queue.stats()["end_of_stream"]:
                log.error("no %s actor left: stopping ingest; queued data cannot drain", role)
                self.stop_ingest(f"every {role} actor failed")
                queue.seal()
                self.sealed.add(queue.name)

    def stop_ingest(self, reason: str, note: str = "") -> None:
        """Ask every source to finish its current batch and close (once). `reason` is what
        stopped the run, as the summary and report.json say it after `ended by` (`SIGTERM`,
        `peaknet-pipeline stop`); `note` is added to the log line only (what happens now)."""
        if self.ingest_stopped:
            return
        self.ingest_stopped = reason
        log.warning("stopping ingest: %s%s", reason, note)
        for actor in self.of(Role.INGEST, running_only=True):
            actor.handle.stop.remote()

    @property
    def stopped_early(self) -> bool:
        """Ingest was stopped while a source still streamed, so the run did not reach the end
        of its stream. A stop that arrives after every source ended (while the queues drain)
        does not count: that run is complete."""
        return self.ingest_stopped is not None and any(
            a.counts.get("ended_by") == "stopped" for a in self.of(Role.INGEST)
        )

    def sample(self) -> Sample:
        """Every actor's counters, both queues, the object store and the pool, now. Running
        actors are asked for fresh stats (cheap calls); one that does not answer (busy, or
        just died: `wait` will report it) keeps its last counts, which the report needs if it
        dies."""
        import ray

        running = [a for a in self.actors if a.running and a.run_ref is not None]
        refs = [a.handle.stats.remote() for a in running]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=2.0)
        for actor, ref in zip(running, refs):
            if ref in ready:
                try:
                    actor.last_stats = ray.get(ref)
                except ray.exceptions.RayError:
                    pass  # it just died: wait() reports it
        usage = object_store_usage()
        if usage is not None and self.metrics is not None:
            self.metrics.record(object_store_readings(usage.as_dict()))
        return Sample(
            t=time.time() - (self.streaming_since or time.time()),
            actors={
                a.actor_id: {"role": a.role, "phase": a.phase, **a.counts} for a in self.actors
            },
            queues={"Q1": queue_summary(self.q1.stats()), "Q2": queue_summary(self.q2.stats())},
            object_store=usage.as_dict() if usage else None,
            pool=vars(self.pool.state()),
            driver={"rss_bytes": rss_bytes()},
        )

    def save_torch_trace(self) -> None:
        """Write the torch trace of `profile.torch` into the run directory (the profiled actor
        keeps it until asked: the inference pods need not see the output volume)."""
        import ray

        from .inference.observe import trace_name

        wanted = self.cfg.profile.torch
        if wanted is None:
            return
        actor = next(
            (a for a in self.of(Role.INFERENCE) if a.actor_id.endswith(f"-{wanted.actor}")), None
        )
        try:
            trace = ray.get(actor.handle.torch_trace.remote(), timeout=60) if actor else None
        except Exception as exc:  # noqa: BLE001 - a dead actor took its trace with it
            log.warning(
                "profile.torch: no trace from inference-%d: %s", wanted.actor, describe(exc)
            )
            return
        if trace is None:
            log.warning("profile.torch: inference-%d recorded no trace (no batch)", wanted.actor)
            return
        path = self.output_dir / trace_name(actor.actor_id)
        path.write_bytes(trace)
        log.info("torch trace of %s: %s", actor.actor_id, path)

    def kill(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor.handle, no_restart=True)
        self.close_control()

    def close_control(self) -> None:
        """End the run's control actor (nothing can be scaled any more)."""
        import ray

        if self.pool is not None and self.pool.control is not None:
            ray.kill(self.pool.control, no_restart=True)
            self.pool.control = None

    def destroy_queues(self, even_if_persistent: bool = False) -> None:
        if self.cfg.queue.persist and not even_if_persistent:
            log.info("queues %s-q1/q2 persist (queue.persist is set)", self.run_id)
            return
        for queue in (self.q1, self.q2):
            if queue is not None:
                queue.destroy()


def driver_node() -> str:
    """The node this driver runs on (the head on Kubernetes)."""
    import ray

    return ray.get_runtime_context().get_node_id()


def queue_summary(stats: dict[str, Any]) -> dict[str, Any]:
    """A queue's totals, with its shards' depths and bytes as lists (for plots and the
    verdict: one hot shard shows)."""
    shards = stats["shards"]
    summary = {k: v for k, v in stats.items() if k != "shards"}
    summary["shard_depths"] = [s["depth"] for s in shards]
    summary["shard_bytes"] = [s["bytes"] for s in shards]
    return summary


def store_nodes() -> int:
    """Live nodes with an object store (more than one: consumers pull copies)."""
    import ray

    return sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("object_store_memory"))


def _last_stats(handle: Any) -> dict | None:
    """A failed actor's counts if its process still answers (run() raised), else None."""
    import ray

    try:
        return ray.get(handle.stats.remote(), timeout=LAST_STATS_TIMEOUT_S)
    except Exception:  # noqa: BLE001 - a dead or stuck actor has no counts to give
        return None
