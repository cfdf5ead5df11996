"""Connecting to Ray: an embedded instance for local runs, or an existing cluster."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from .config import PipelineConfig
from .errors import StartupError, describe
from .logs import ray_log_level

log = logging.getLogger(__name__)


def cpus_needed(cfg: PipelineConfig, inference_actors: int | None = None) -> float:
    """Logical CPUs the configured actors reserve in total (with `inference_actors` in the
    pool; by default the count the run starts with)."""
    from .sources import source_ids

    inference = cfg.inference.num_actors if inference_actors is None else inference_actors
    return (
        len(source_ids(cfg)) * cfg.source.num_cpus_per_actor
        + inference * cfg.inference.num_cpus_per_actor
        + cfg.writer.num_actors * cfg.writer.num_cpus_per_actor
    )


def check_resources(cfg: PipelineConfig, resources: Mapping[str, float]) -> None:
    """Fail before starting anything when the cluster cannot hold every actor (otherwise
    Ray keeps the extra actors pending forever), naming the fields to change."""
    from .inference.launch import uses_gpu

    problem = cpu_shortfall(cfg, resources.get("CPU", 0.0))
    if problem:
        raise ValueError(problem)
    if uses_gpu(cfg, resources):
        gpus = cfg.inference.num_actors * cfg.inference.num_gpus_per_actor
        if gpus > resources.get("GPU", 0.0):
            raise ValueError(
                f"inference.num_actors x inference.num_gpus_per_actor = {gpus:g} GPUs, but the "
                f"Ray cluster has {resources.get('GPU', 0.0):g}"
            )


def cpu_shortfall(cfg: PipelineConfig, have: float, has: str = "the Ray cluster has") -> str | None:
    """Why `have` CPUs cannot hold the actors the run starts with (None: they can); `has`
    says where the count comes from."""
    needed = cpus_needed(cfg)
    if needed <= have:
        return None
    return (
        f"the actors reserve {needed:g} CPUs (source.num_cpus_per_actor, "
        "inference.num_actors x inference.num_cpus_per_actor, writer.num_actors x "
        f"writer.num_cpus_per_actor) but {has} {have:g}"
    )


def embedded_cpus(cfg: PipelineConfig) -> int:
    """CPUs to declare for an embedded instance: the machine's, or enough for every actor of
    the largest pool (inference.max_actors).

    Declaring more logical CPUs than cores oversubscribes a small laptop instead of leaving
    actors unscheduled forever; it is logged.
    """
    if cfg.ray.num_cpus:
        return cfg.ray.num_cpus
    cores = os.cpu_count() or 1
    needed = math.ceil(cpus_needed(cfg, cfg.inference.pool_limit))
    if needed > cores:
        log.debug("declaring %d logical CPUs on %d cores so every actor can start", needed, cores)
    return max(cores, needed)


@contextmanager
def connect(cfg: PipelineConfig) -> Iterator[dict[str, Any]]:
    """Connect for the duration of a run; yields the cluster's resources.

    An already initialised Ray (a test session, a notebook) is used as is and left running.
    """
    import ray

    if ray.is_initialized():
        yield ray.cluster_resources()
        return
    common = dict(namespace=cfg.ray.namespace, logging_level=ray_log_level(cfg.runtime.ray_logs))
    try:
        if cfg.ray.address == "local":
            ray.init(
                # "local", not None: ray.init() without an address joins the cluster named by
                # RAY_ADDRESS or the newest `ray start` on this machine, and then refuses
                # num_cpus (ray/_private/worker.py: init, "address").
                address="local",
                num_cpus=embedded_cpus(cfg),
                object_store_memory=cfg.ray.object_store_memory_bytes,
                include_dashboard=cfg.ray.include_dashboard,
                _metrics_export_port=cfg.ray.metrics_export_port,
                **common,
            )
        else:
            ray.init(address=cfg.ray.address, **common)
    except Exception as exc:  # noqa: BLE001 - any failure to connect is a start-up failure
        raise StartupError(f"ray.address={cfg.ray.address!r}: {_connect_failure(exc)}") from None
    try:
        yield ray.cluster_resources()
    finally:
        ray.shutdown()


def _connect_failure(exc: Exception) -> str:
    """Why ray.init failed, in one line, with what to do when no cluster is running."""
    if isinstance(exc, ConnectionError) and "Could not find any running Ray" in str(exc):
        return (
            "no running Ray cluster found on this machine (start one with `ray start --head`, "
            "or use ray.address: local for an embedded instance)"
        )
    return describe(exc)
