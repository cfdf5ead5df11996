"""Starting inference actors: Ray options per role and device, and start-up errors raised
in the driver with their own type (a missing weights file is a WeightsError naming the path)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..config.models import PipelineConfig
from ..placement import ROLE_RESOURCES, Role, actor_class, actor_options
from ..queue import ShardedQueue
from .actor import InferenceActor

MAX_CONCURRENCY = 4  # run + take_payload (shards fetching outputs) + stats + stop


def uses_gpu(cfg: PipelineConfig, resources: Mapping[str, float]) -> bool:
    """GPU actors when the device is cuda, or auto on a cluster with GPUs; cuda on a cluster
    without GPUs is an error naming the field."""
    gpus_in_cluster = resources.get("GPU", 0) > 0
    if cfg.inference.device == "cuda" and not gpus_in_cluster:
        raise ValueError("inference.device is cuda but the Ray cluster has no GPUs")
    return cfg.inference.device == "cuda" or (cfg.inference.device == "auto" and gpus_in_cluster)


def start_inference_actors(
    cfg: PipelineConfig,
    q1: ShardedQueue,
    q2: ShardedQueue,
    indices: list[int],
    wait_ready: bool = True,
    runtime_env: Mapping[str, Any] | None = None,
    ready_timeout_s: float | None = None,
    node_id: str | None = None,
) -> list:
    """Start one inference actor per index (GPU actors when the device is cuda, or auto on a
    cluster with GPUs). With `wait_ready`, start-up errors (a missing weights file, ...) are
    raised here with their own type after the started actors are killed. `runtime_env` (e.g.
    an nsight profiler entry) is merged into the actors' options, never replacing them. On a
    cluster whose inference pods declare `peaknet_infer`, each actor takes one whole unit (the
    pod's actor slots); `node_id` places it on that node (the pool picks a free one)."""
    import ray
    from ray.exceptions import GetTimeoutError

    resources = ray.cluster_resources()
    inf = cfg.inference
    options = actor_options(
        role=Role.INFERENCE,
        num_cpus=inf.num_cpus_per_actor,
        num_gpus=inf.num_gpus_per_actor if uses_gpu(cfg, resources) else 0.0,
        cluster_resources=resources,
        runtime_env=runtime_env,
        pinned=ROLE_RESOURCES[Role.INFERENCE],
    )
    if node_id is not None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id, soft=False)
    remote_cls = actor_class(InferenceActor).options(
        **options, max_concurrency=MAX_CONCURRENCY, max_restarts=0
    )
    actors = [remote_cls.remote(cfg, q1, q2, i) for i in indices]
    if wait_ready:
        try:
            ray.get([a.ready.remote() for a in actors], timeout=ready_timeout_s)
        except GetTimeoutError:
            for actor in actors:
                ray.kill(actor)
            raise TimeoutError(
                f"inference actors not ready within {ready_timeout_s} s "
                "(runtime.startup_timeout_s): the cluster cannot place them, or loading the "
                "model takes longer"
            ) from None
        except Exception as exc:
            for actor in actors:
                ray.kill(actor)
            cause = getattr(exc, "cause", None)
            raise (cause if isinstance(cause, Exception) else exc) from None
    return actors
