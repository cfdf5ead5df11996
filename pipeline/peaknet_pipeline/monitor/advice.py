"""The verdict's advice on inference actors, bounded by what the machine can hold.

A backlogged run is told how many inference actors would keep up with what ingest could
deliver. Advice a machine cannot follow is worse than none (a 2-core laptop told to run 14
actors), so the count stops at the `Room` the Ray cluster has left after ingest and the
writers, and where it has none the verdict says the machine is the limit. Pure: the driver
reads the cluster's resources once and passes the `Room` in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Room:
    """What the Ray cluster can hold: inference actors at most (after what ingest and the
    writers reserve), and the cluster's CPUs and GPUs."""

    inference_actors: int
    cpus: float
    gpus: float


def inference_room(cfg: Any, resources: Mapping[str, float]) -> Room | None:
    """The room for inference actors in a cluster with `resources` (Ray's
    cluster_resources()) for the run configured by `cfg` (a PipelineConfig). None on a
    cluster whose inference pool grows by pods (Kubernetes: the `peaknet_infer` resource of
    the inference pods), where the resources of the moment are no limit."""
    from ..cluster import cpus_needed
    from ..pool_plan import SLOT

    if resources.get(SLOT, 0) > 0:
        return None
    inf = cfg.inference
    cpus, gpus = float(resources.get("CPU", 0.0)), float(resources.get("GPU", 0.0))
    fit = math.floor((cpus - cpus_needed(cfg, inference_actors=0)) / inf.num_cpus_per_actor)
    # The rule of inference/launch.py: uses_gpu (cuda, or auto on a cluster with GPUs).
    if inf.device == "cuda" or (inf.device == "auto" and gpus > 0):
        fit = min(fit, math.floor(gpus / inf.num_gpus_per_actor + 1e-9))
    return Room(inference_actors=max(0, fit), cpus=cpus, gpus=gpus)


def more_inference(
    actors: int, ingest_capacity_fps: float | None, inference_fps: float, room: Room | None
) -> str:
    """The clause after a backlogged verdict's evidence: how many inference actors (now
    `actors`, taking `inference_fps` frames/s at most together) would keep up with what
    ingest could deliver, at most what `room` holds (None: no limit known)."""
    if not ingest_capacity_fps or inference_fps <= 0:
        wanted = None
        need = "; more inference capacity would help"
    else:
        factor = max(1.0, ingest_capacity_fps / inference_fps)
        wanted = math.ceil(actors * factor - 1e-9)
        need = (
            f"; ingest could deliver {ingest_capacity_fps:.1f} frames/s, so about "
            f"{factor:.1f}x the inference capacity would keep up"
        )
    if room is None:
        if wanted is None:
            return need + " (inference.num_actors)"
        return f"{need} (inference.num_actors {actors} -> {wanted} at the current rate per actor)"
    plural = "s" if room.inference_actors != 1 else ""
    holds = (
        f"this Ray cluster holds at most {room.inference_actors} inference actor{plural} "
        f"({room.cpus:g} CPUs, {room.gpus:g} GPUs, after what ingest and the writers reserve)"
    )
    if room.inference_actors <= actors:
        return (
            f"{need}, but the machine is the limit: {holds}. A larger machine or a GPU "
            "would help, or less data in (a lower source rate)"
        )
    if wanted is not None and wanted <= room.inference_actors:
        return f"{need} (inference.num_actors {actors} -> {wanted}; {holds})"
    return (
        f"{need}; {holds}, so inference.num_actors {actors} -> {room.inference_actors}, and "
        "beyond that the machine is the limit"
    )


def on_the_cpu(device: str) -> str:
    """What backlogged means when inference runs on `device`: on the CPU it is expected
    (the CPU demo's first screen says so), on a GPU it is a finding."""
    if "cuda" in device:
        return ""
    return (
        ". Backlogged is expected when inference runs on the CPU (as in the CPU demo): PeakNet "
        "on a CPU segments far fewer frames per second than the source makes. On a GPU it "
        "would mean the GPUs do not keep up with ingest"
    )
