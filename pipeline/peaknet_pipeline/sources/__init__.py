"""Sources feed Q1: `random` (synthetic frames with known peaks), `socket` (LCLStreamer over
zmq or nng), `replay` (frames from HDF5/CXI files). Each runs as one or more ingest actors."""

from __future__ import annotations

from typing import Any

from ..config import PipelineConfig
from ..placement import Role, actor_class, actor_options, ingest_port_resource


def source_ids(cfg: PipelineConfig) -> list[str]:
    """Producer ids of the ingest actors this config starts (the driver registers them first)."""
    kind = cfg.source.kind
    if kind == "random":
        count = cfg.source.random.num_actors
    elif kind == "socket":
        count = len(cfg.source.socket.addresses)
    else:
        count = 1
    return [f"{kind}-{i}" for i in range(count)]


def source_class(kind: str) -> type:
    """The ingest actor class of a source kind (imported only when used)."""
    if kind == "random":
        from .random import RandomSource

        return RandomSource
    if kind == "socket":
        from .socket import SocketSource

        return SocketSource
    if kind == "replay":
        from .replay import ReplaySource

        return ReplaySource
    raise ValueError(f"source.kind: unknown source {kind!r}")


def start_source_actors(
    cfg: PipelineConfig, q1: Any, ids: list[str], start_seq: int = 0
) -> dict[str, Any]:
    """Start one ingest actor per id, its batches numbered from `start_seq`; returns
    {id: actor handle}. Call `run()` on each."""
    return {
        sid: start_source_actor(cfg, q1, sid, i, start_seq=start_seq) for i, sid in enumerate(ids)
    }


def start_source_actor(
    cfg: PipelineConfig,
    q1: Any,
    source_id: str,
    index: int,
    producer_id: str | None = None,
    start_seq: int = 0,
    fill_to: int = -1,
) -> Any:
    """One ingest actor for stream `source_id` (the `index`-th of the config); a restarted
    one is a new producer of the same stream, resuming at batch `start_seq` and sending at
    least up to batch `fill_to` even if stopped (base.IngestActor)."""
    import ray

    actor = actor_class(source_class(cfg.source.kind))
    options = source_options(cfg, index, ray.cluster_resources())
    return actor.options(max_concurrency=4, **options).remote(
        source_id, q1, cfg, index, producer_id, start_seq, fill_to
    )


def source_options(cfg: PipelineConfig, index: int, resources: dict[str, float]) -> dict:
    """Ray options of the `index`-th ingest actor: a socket actor is pinned to its port's
    resource (one per ingest pod and port on Kubernetes); others take a share of the role's."""
    pinned = None
    if cfg.source.kind == "socket":
        pinned = ingest_port_resource(cfg.source.socket.addresses[index])
    return actor_options(
        Role.INGEST, cfg.source.num_cpus_per_actor, cluster_resources=resources, pinned=pinned
    )
