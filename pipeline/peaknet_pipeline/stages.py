"""The running stages of one run: the two queues and every actor. This module wires the run
up (queues, then the stages downstream-first) and keeps its state in `Pipeline`; the actor
registry and failure handling are in registry.py, monitor sampling in sampling.py, the end of
the run in shutdown.py. The driver tells the story; these modules keep the bookkeeping.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from . import registry
from .budget import blocked_calls_bound, derived_shards
from .cluster import check_resources
from .config import PipelineConfig, config_hash
from .control import start_control
from .errors import StartupError, describe
from .inference import inference_producer_id, start_inference_actors
from .monitor.metrics import MetricSink
from .monitor.objectstore import UsageReader
from .placement import Role
from .pool import InferencePool, node_names
from .preflight import blocked_calls_message, check_budget
from .queue import ShardedQueue
from .records import ReadyInfo
from .registry import StageActor
from .sources import source_ids, start_source_actors
from .supervision import Supervisor
from .writer import start_writer_actors

log = logging.getLogger(__name__)

__all__ = ["Pipeline", "StageActor", "driver_node", "store_nodes"]


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
    store: UsageReader = field(default_factory=UsageReader)  # the object store's use, sampled
    first_seq: int = 0  # a continued service's socket batches number on from here (service.py)

    # -- start-up, in the driver's order (driver.start): queues, then the stages downstream-first
    def open_queues(self) -> None:
        """Check the cluster and the object store budget, create Q1 and Q2 (sized for the
        largest pool), the control actor, the pool and the supervisor; register every producer
        id before anything consumes, so no consumer sees an early end."""
        cfg = self.cfg
        resources = ray.cluster_resources()
        try:
            check_resources(cfg, resources)
        except ValueError as exc:
            raise StartupError(str(exc)) from None
        check_budget(cfg, int(resources.get("object_store_memory", 0)), store_nodes())
        sources = source_ids(cfg)
        limit = cfg.inference.pool_limit  # the queues are sized for the largest pool
        self.q1 = self._queue("q1", cfg.queue.q1, len(sources), limit)
        self.q2 = self._queue("q2", cfg.queue.q2, limit, cfg.writer.num_actors)
        try:
            control = start_control(self.run_id, limit)
        except ValueError as exc:  # the name is taken: a run with this id is running
            raise StartupError(f"runtime.run_id={self.run_id!r}: {exc}") from None
        self.pool = InferencePool(self, control)
        self.supervisor = Supervisor(self)
        for i in range(cfg.inference.num_actors):
            self.q2.register_producer(inference_producer_id(i))
        for sid in sources:
            self.q1.register_producer(sid)

    def start_writers(self) -> None:
        """The writer stage: Q2 -> CXI files, one actor per `writer.num_actors`."""
        cfg, n_write = self.cfg, self.cfg.writer.num_actors
        writers = start_writer_actors(
            cfg, self.q2, str(self.output_dir), config_hash(cfg), list(range(n_write))
        )
        self._add(Role.WRITER, [f"writer-{i}" for i in range(n_write)], writers)
        for i, actor in enumerate(self.of(Role.WRITER)):
            actor.index = i

    def start_inference(self) -> None:
        """The inference stage: Q1 -> PeakNet -> Q2, the pool's first `inference.num_actors`."""
        cfg, n_infer = self.cfg, self.cfg.inference.num_actors
        infer = start_inference_actors(
            cfg,
            self.q1,
            self.q2,
            list(range(n_infer)),
            wait_ready=False,  # waited for in run_stages, with every other actor
            runtime_env=cfg.inference.runtime_env,
        )
        self._add(Role.INFERENCE, [inference_producer_id(i) for i in range(n_infer)], infer)

    def start_ingest(self) -> None:
        """The ingest stage: one source actor per stream -> Q1."""
        first = self.first_seq if self.cfg.source.kind == "socket" else 0
        handles = start_source_actors(self.cfg, self.q1, source_ids(self.cfg), first)
        self._add(Role.INGEST, list(handles), list(handles.values()))
        for i, actor in enumerate(self.of(Role.INGEST)):
            actor.index, actor.source_id = i, actor.actor_id

    def run_stages(self) -> None:
        """Wait for every actor's `ready()`, then start every `run()`: the run streams. Raises
        StartupError naming the stage, the actor and the cause when an actor cannot be placed
        or does not get ready."""
        cfg = self.cfg
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
            len(self.of(Role.INGEST)),
            len(self.of(Role.INFERENCE)),
            len(self.of(Role.WRITER)),
            self.q1.num_shards,
            self.q2.num_shards,
        )
        self.streaming_since = time.time()

    def _wait_ready(self, timeout_s: float) -> None:
        """Every actor's `ready()`; the first failure ends the wait (a model still loading
        elsewhere is not waited for)."""
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

    # -- the registry's interface (registry.py): the pool, the supervisor and the report use it
    def add_actor(self, role: Role, actor_id: str, handle: Any) -> StageActor:
        """An actor started while the run goes on (the inference pool growing)."""
        actor = StageActor(role, actor_id, handle)
        self.actors.append(actor)
        return actor

    def of(self, role: Role, running_only: bool = False) -> list[StageActor]:
        """The actors of `role`, in the order they were added."""
        return registry.of(self.actors, role, running_only)

    def fail_to_start(self, actor: StageActor, why: str) -> None:
        """An actor started mid-run that could not get ready: a failure like any other."""
        registry.fail_to_start(self, actor, why)

    @property
    def draining(self) -> bool:
        """Nothing new will come: ingest stopped, or every source ended and none is replaced."""
        return registry.draining(self)

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


def driver_node() -> str:
    """The node this driver runs on (the head on Kubernetes)."""
    return ray.get_runtime_context().get_node_id()


def store_nodes() -> int:
    """Live nodes with an object store (more than one: consumers pull copies)."""
    return sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("object_store_memory"))
