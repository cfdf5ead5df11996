"""What can be checked before Ray starts: the files a config reads, the place it writes, the
CPUs and queue concurrency of an embedded instance, and the object-store budget.

`config validate` and `run` both call `check_inputs`, so a replay file that is not there, a
weights file that is not a state dict of this architecture, an output directory that cannot
be created, an embedded instance with fewer CPUs than the actors reserve, queues whose shards
cannot take every blocked call, or queues that would overflow the object store fail in about a
second with the field named, instead of after Ray's start-up. The store's size is known before
Ray starts for an embedded instance: ray.object_store_memory_bytes, or Ray's default for this
machine, computed by Ray's own rule. `check_budget` repeats the budget check once Ray runs,
against the store Ray reports (a cluster's is known only then).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from .budget import (
    InFlight,
    batch_bytes,
    blocked_calls_bound,
    budget_bytes,
    format_bytes,
    in_flight,
)
from .budget_advice import budget_problem
from .config import PipelineConfig
from .errors import StartupError

log = logging.getLogger(__name__)

RUN_ID_PLACEHOLDER = "run-id"  # stands for {run_id} when the output directory is checked


def resolve_paths(cfg: PipelineConfig) -> PipelineConfig:
    """`cfg` with the files it reads as absolute paths, symlinks resolved: actors run in other
    processes (other working directories), and `runs/latest` must mean the run that was
    latest when this one started, not this one once it has started."""
    cfg = cfg.model_copy(deep=True)
    if cfg.source.kind == "replay":
        cfg.source.replay.paths = [os.path.realpath(p) for p in cfg.source.replay.paths]
    if cfg.model.weights_path is not None:
        cfg.model.weights_path = os.path.realpath(cfg.model.weights_path)
    return cfg


def check_inputs(cfg: PipelineConfig) -> list[str]:
    """Problems with the files and directories `cfg` names, one line each (none: usable)."""
    problems = []
    if cfg.source.kind == "replay":
        problems += _replay_problems(cfg)
    if cfg.model.kind == "peaknet" and cfg.model.weights_path is not None:
        problems += _weights_problems(cfg)
    problems += output_dir_problems(cfg.writer.output_dir)
    problems += cpu_problems(cfg) + blocked_calls_problems(cfg)
    if not problems:
        problems += budget_problems(cfg)
    return problems


def run_in_flight(cfg: PipelineConfig, remote_copies: bool = False) -> InFlight:
    """The object-store bytes `cfg` can hold at once (peaknet_pipeline.budget); a replay
    source's frame size is read from its files."""
    frame = None
    if cfg.source.kind == "replay":
        from .sources.replay import frame_size

        frame = frame_size(cfg.source.replay)
    return in_flight(cfg, batch_bytes(cfg, frame=frame), remote_copies)


def _ray_runs_here() -> bool:
    """Ray is initialised in this process (a test session, a notebook): the run uses it as
    is, so its store is the one to check, once the run asks for it."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def embedded_store(cfg: PipelineConfig) -> tuple[int, bool] | None:
    """(bytes, whether it is Ray's default) of the store an embedded instance will get, or
    None when it is not known before Ray starts (a cluster, or a Ray already running here).
    Unset, it is what ray.init would choose: Ray's resolve_object_store_memory (a share of
    the memory available now, capped by /dev/shm), in ray/_private/resource_and_label_spec.py
    ResourceAndLabelSpec; the available memory can change before the run starts, so the
    check is repeated against the store Ray reports."""
    if cfg.ray.address != "local" or _ray_runs_here():
        return None
    if cfg.ray.object_store_memory_bytes is not None:
        return cfg.ray.object_store_memory_bytes, False
    try:  # Ray's private API: should it move, the check once Ray runs still holds
        from ray._private.utils import estimate_available_memory, resolve_object_store_memory
    except ImportError:
        return None
    return resolve_object_store_memory(estimate_available_memory()), True


def machine_memory_bytes() -> int:
    """This machine's memory as Ray counts it (a container's limit where there is one)."""
    from ray._common.utils import get_system_memory

    return get_system_memory()


def budget_problems(cfg: PipelineConfig) -> list[str]:
    """The budget check before Ray starts, for an embedded instance (its store is known). A
    frame size that had to be assumed (a socket source without inference.frame_shape) is only
    warned about, by check_budget once Ray runs."""
    store = embedded_store(cfg)
    if store is None:
        return []
    flight = run_in_flight(cfg)
    if flight.batch.assumed:
        return []
    problem = budget_problem(
        cfg, flight, store[0], True, machine_bytes=machine_memory_bytes(), default_store=store[1]
    )
    return [problem] if problem else []


def check_budget(cfg: PipelineConfig, store_bytes: int, nodes: int) -> InFlight:
    """The budget check against the store Ray reports; raises StartupError when over budget,
    for every source kind. Only a frame size that had to be assumed (a socket source without
    inference.frame_shape: the frames that will arrive are not known) warns instead, naming
    the assumption."""
    flight = run_in_flight(cfg, remote_copies=nodes > 1)
    log.info(
        "object store: the queues and buffers can hold %s of a %s budget "
        "(ray.object_store_budget_fraction=%g of %s)",
        flight.describe(),
        format_bytes(budget_bytes(cfg, store_bytes)),
        cfg.ray.object_store_budget_fraction,
        format_bytes(store_bytes),
    )
    embedded = cfg.ray.address == "local"
    machine = machine_memory_bytes() if embedded else None
    problem = budget_problem(cfg, flight, store_bytes, embedded, machine_bytes=machine)
    if problem and flight.batch.assumed:
        log.warning("%s; set inference.frame_shape to check it for certain", problem)
    elif problem:
        raise StartupError(problem)
    return flight


def cpu_problems(cfg: PipelineConfig) -> list[str]:
    """An embedded instance with ray.num_cpus set must hold every actor the run starts with
    (unset, the driver declares enough); a cluster's CPUs are known only once joined."""
    if cfg.ray.address != "local" or cfg.ray.num_cpus is None or _ray_runs_here():
        return []
    from .cluster import cpu_shortfall

    problem = cpu_shortfall(cfg, cfg.ray.num_cpus, "ray.num_cpus is")
    return [problem] if problem else []


def blocked_calls_problems(cfg: PipelineConfig) -> list[str]:
    """Each queue's shards take every put and get that can wait on them at once
    (queue.<q>.max_blocked_calls_per_shard), for the actor counts the queues are sized for."""
    from .sources import source_ids

    limit = cfg.inference.pool_limit
    sides = {"q1": (len(source_ids(cfg)), limit), "q2": (limit, cfg.writer.num_actors)}
    problems = []
    for which, (producers, consumers) in sides.items():
        allowed = getattr(cfg.queue, which).max_blocked_calls_per_shard
        needed = blocked_calls_bound(producers, consumers)
        if needed > allowed:
            problems.append(blocked_calls_message(which, allowed, producers, consumers, needed))
    return problems


def blocked_calls_message(
    which: str, allowed: int, producers: int, consumers: int, needed: int
) -> str:
    return (
        f"queue.{which}.max_blocked_calls_per_shard={allowed} is too small: {producers} "
        f"producers and {consumers} consumers can block {needed} calls on one shard"
    )


def _replay_problems(cfg: PipelineConfig) -> list[str]:
    from .sources.replay import check_files

    try:
        check_files(cfg.source.replay)
    except (OSError, KeyError, ValueError) as exc:
        return [str(exc.args[0]) if exc.args else str(exc)]
    return []


def _weights_problems(cfg: PipelineConfig) -> list[str]:
    """The file is a state dict whose keys and shapes fit the configured architecture (the
    model is built on the meta device: no memory, no time)."""
    from .model.weights import (
        WeightsError,
        describe,
        meta_model,
        read_state_dict,
        state_dict_mismatch,
    )

    try:
        state = read_state_dict(cfg.model.weights_path)
    except WeightsError as exc:
        return [str(exc)]
    model = meta_model(cfg.model)
    mismatch = state_dict_mismatch(model, state)
    if mismatch:
        return [
            f"model.weights_path {cfg.model.weights_path!r} does not match the model config "
            f"({describe(model)}): " + "; ".join(mismatch)
        ]
    return []


def output_dir_problems(template: str) -> list[str]:
    """writer.output_dir can be created and written: a directory can be made in its nearest
    existing ancestor (made and removed at once: permission bits do not tell root the truth,
    and a read-only mount says so only when written)."""
    import tempfile

    path = Path(template.format(run_id=RUN_ID_PLACEHOLDER)).absolute()
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return [f"writer.output_dir {template!r}: {existing} is a file, not a directory"]
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".peaknet-check-", dir=existing))
    except OSError as exc:
        return [
            f"writer.output_dir {template!r}: cannot create directories in {existing} "
            f"({exc.strerror or exc})"
        ]
    return []
