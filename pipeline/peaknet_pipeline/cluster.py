"""Connecting to Ray: an embedded instance for local runs, or an existing cluster."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .config import PipelineConfig

log = logging.getLogger(__name__)


def cpus_needed(cfg: PipelineConfig) -> float:
    """Logical CPUs the configured actors reserve in total."""
    sources = {"random": cfg.source.random.num_actors, "socket": len(cfg.source.socket.addresses)}
    return (
        sources.get(cfg.source.kind, 1) * cfg.source.num_cpus_per_actor
        + cfg.inference.num_actors * cfg.inference.num_cpus_per_actor
        + cfg.writer.num_actors * cfg.writer.num_cpus_per_actor
    )


def embedded_cpus(cfg: PipelineConfig) -> int:
    """CPUs to declare for an embedded instance: the machine's, or enough for every actor.

    Declaring more logical CPUs than cores oversubscribes a small laptop instead of leaving
    actors unscheduled forever; it is logged.
    """
    if cfg.ray.num_cpus:
        return cfg.ray.num_cpus
    cores = os.cpu_count() or 1
    needed = math.ceil(cpus_needed(cfg))
    if needed > cores:
        log.info("declaring %d logical CPUs on %d cores so every actor can start", needed, cores)
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
    common = dict(namespace=cfg.ray.namespace, logging_level=logging.WARNING)
    if cfg.ray.address == "local":
        ray.init(
            num_cpus=embedded_cpus(cfg),
            object_store_memory=cfg.ray.object_store_memory_bytes,
            include_dashboard=cfg.ray.include_dashboard,
            **common,
        )
    else:
        ray.init(address=cfg.ray.address, **common)
    try:
        yield ray.cluster_resources()
    finally:
        ray.shutdown()
