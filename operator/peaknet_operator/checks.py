"""Reading a resource's spec, and the cross-field rules the CRD schema cannot express.

The operator derives some pipeline settings from spec.cluster (where Ray runs, how many actors,
where files go). A value the user set explicitly that disagrees with the derived one is an
error naming both, never silently replaced. Everything here is pure; a spec with problems is
reported in status and nothing is created or changed.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from peaknet_pipeline.budget import blocked_calls_bound
from peaknet_pipeline.config.load import format_validation_error

from .sizing import ray_cpus, source_actor_count
from .spec import PeakNetPipelineSpec

BIND_HOSTS = {"0.0.0.0", "*", "[::]", "::"}
EMBEDDED_ONLY = ("num_cpus", "object_store_memory_bytes", "include_dashboard")


def parse_spec(raw: Mapping[str, Any] | None) -> tuple[PeakNetPipelineSpec | None, list[str]]:
    """The validated spec, or None and the problems (one per line, each naming its field)."""
    try:
        spec = PeakNetPipelineSpec.model_validate(dict(raw or {}))
    except ValidationError as exc:
        lines = format_validation_error(exc, "spec").splitlines()[1:]
        return None, [f"spec.{line.strip()}" for line in lines]
    return spec, spec_problems(spec)


def socket_ports(spec: PeakNetPipelineSpec) -> list[int]:
    """Ports of the socket source's addresses (bind mode), in order."""
    src = spec.pipeline.source
    if src.kind != "socket" or src.socket.mode != "bind":
        return []
    return [urlsplit(a).port or 0 for a in src.socket.addresses]


def _derived_counts(spec: PeakNetPipelineSpec) -> list[tuple[str, Any, int, str]]:
    cfg, cluster = spec.pipeline, spec.cluster
    counts = [
        ("inference", cfg.inference, cluster.inference, "inference"),
        ("writer", cfg.writer, cluster.writer, "writer"),
    ]
    if cfg.source.kind == "random":
        counts.append(("source.random", cfg.source.random, cluster.ingest, "ingest"))
    return [
        (path, section.num_actors, group.replicas * group.actors_per_worker, role)
        for path, section, group, role in counts
        if "num_actors" in section.model_fields_set
    ]


def _derived_problems(spec: PeakNetPipelineSpec) -> list[str]:
    cfg, problems = spec.pipeline, []
    for path, value, derived, role in _derived_counts(spec):
        if value != derived:
            problems.append(
                f"spec.pipeline.{path}.num_actors={value} disagrees with spec.cluster.{role} "
                f"(replicas x actorsPerWorker = {derived}); leave it out, it is derived"
            )
    inference, group = cfg.inference, spec.cluster.inference
    sized = group.sized_replicas * group.actors_per_worker
    if "max_actors" in inference.model_fields_set and inference.max_actors != sized:
        problems.append(
            f"spec.pipeline.inference.max_actors={inference.max_actors} disagrees with "
            f"spec.cluster.inference (maxReplicas x actorsPerWorker = {sized}); leave it out, "
            "it is derived"
        )
    if "address" in cfg.ray.model_fields_set and cfg.ray.address != "auto":
        problems.append(
            f"spec.pipeline.ray.address={cfg.ray.address!r}: the pipeline runs on its own "
            "RayCluster (address auto); leave it out"
        )
    for key in EMBEDDED_ONLY:
        if key in cfg.ray.model_fields_set:
            problems.append(
                f"spec.pipeline.ray.{key} applies to an embedded Ray only; on Kubernetes "
                "spec.cluster sets the pods (and spec.cluster.sizing their object stores)"
            )
    out, mount = cfg.writer.output_dir, spec.cluster.output.mount_path
    if out.startswith("/") and posixpath.commonpath([out, mount]) != mount:
        problems.append(
            f"spec.pipeline.writer.output_dir={out!r} is outside the output volume "
            f"(spec.cluster.output.mountPath={mount!r}); use a relative path"
        )
    return problems


def _socket_problems(spec: PeakNetPipelineSpec) -> list[str]:
    problems, ports = [], socket_ports(spec)
    for address in spec.pipeline.source.socket.addresses if ports else []:
        host = urlsplit(address).hostname or ""
        if host not in BIND_HOSTS and f"[{host}]" not in BIND_HOSTS:
            problems.append(
                f"spec.pipeline.source.socket.addresses: {address!r} must bind every "
                "interface of the ingest pod (tcp://0.0.0.0:PORT) so the Service reaches it"
            )
    if len(set(ports)) != len(ports) or 0 in ports:
        problems.append(
            "spec.pipeline.source.socket.addresses: each address needs its own explicit port "
            "(one socket actor per ingest pod and port)"
        )
    for entry in spec.cluster.ingest_service.ports or []:
        if entry.target_port not in ports:
            problems.append(
                f"spec.cluster.ingestService.ports: targetPort {entry.target_port} is not a "
                f"port of spec.pipeline.source.socket.addresses (bind mode: {ports})"
            )
    return problems


def _volume_problems(spec: PeakNetPipelineSpec) -> list[str]:
    """The head and every writer pod mount the output claim: a ReadWriteOncePod claim serves
    one pod, so the second would stay Pending for good."""
    modes = spec.cluster.output.access_modes
    if "ReadWriteOncePod" not in modes:
        return []
    return [
        f"spec.cluster.output.accessModes={modes}: the head and every writer pod mount the "
        "output claim, and a ReadWriteOncePod claim serves one pod only; use ReadWriteOnce "
        "(the writers then run on the head's node) or ReadWriteMany"
    ]


def _fit_problems(spec: PeakNetPipelineSpec) -> list[str]:
    """Every actor must fit its pods' Ray CPUs (and GPUs), or it would stay pending."""
    cfg, cluster, problems = spec.pipeline, spec.cluster, []
    per_pod = {
        "ingest": (
            len(socket_ports(spec)) or cluster.ingest.actors_per_worker,
            cfg.source.num_cpus_per_actor,
            "spec.pipeline.source.num_cpus_per_actor",
        ),
        "inference": (
            cluster.inference.actors_per_worker,
            cfg.inference.num_cpus_per_actor,
            "spec.pipeline.inference.num_cpus_per_actor",
        ),
        "writer": (
            cluster.writer.actors_per_worker,
            cfg.writer.num_cpus_per_actor,
            "spec.pipeline.writer.num_cpus_per_actor",
        ),
    }
    for role, (actors, cpus_each, field) in per_pod.items():
        have = ray_cpus(cluster.group(role).cpu)
        if actors * cpus_each > have + 1e-9:
            problems.append(
                f"{actors} {role} actors per pod x {field}={cpus_each:g} do not fit the "
                f"{have} Ray CPUs of a pod with spec.cluster.{role}.cpu={cluster.group(role).cpu}"
            )
    gpus = cluster.inference.gpus_per_worker
    if cfg.inference.device == "cuda" and gpus == 0:
        problems.append(
            "spec.pipeline.inference.device=cuda needs spec.cluster.inference.gpusPerWorker > 0"
        )
    wanted = cluster.inference.actors_per_worker * cfg.inference.num_gpus_per_actor
    if gpus and cfg.inference.device != "cpu" and wanted > gpus + 1e-9:
        problems.append(
            f"{cluster.inference.actors_per_worker} inference actors per pod x "
            f"spec.pipeline.inference.num_gpus_per_actor={cfg.inference.num_gpus_per_actor:g} "
            f"do not fit spec.cluster.inference.gpusPerWorker={gpus}"
        )
    return problems


def _queue_problems(spec: PeakNetPipelineSpec) -> list[str]:
    cfg, cluster, problems = spec.pipeline, spec.cluster, []
    n_src = source_actor_count(cfg, cluster)
    n_inf = cluster.inference.sized_replicas * cluster.inference.actors_per_worker
    n_wri = cluster.writer.replicas * cluster.writer.actors_per_worker
    for which, producers, consumers in (("q1", n_src, n_inf), ("q2", n_inf, n_wri)):
        bound = cfg.queue.q1 if which == "q1" else cfg.queue.q2
        needed = blocked_calls_bound(producers, consumers)
        if needed > bound.max_blocked_calls_per_shard:
            problems.append(
                f"spec.pipeline.queue.{which}.max_blocked_calls_per_shard="
                f"{bound.max_blocked_calls_per_shard} is too small for {producers} producers "
                f"and {consumers} consumers: set it to at least {needed}"
            )
    return problems


def _live_page_problems(spec: PeakNetPipelineSpec) -> list[str]:
    # imported here: the render package imports this module
    from .render.livepage import problems
    from .render.raycluster import HEAD_PORTS

    return problems(spec, HEAD_PORTS)


def spec_problems(spec: PeakNetPipelineSpec) -> list[str]:
    """Cross-field problems of a spec that validated; empty when it can be applied."""
    return (
        _derived_problems(spec)
        + _socket_problems(spec)
        + _volume_problems(spec)
        + _fit_problems(spec)
        + _queue_problems(spec)
        + _live_page_problems(spec)
    )
