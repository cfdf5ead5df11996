"""What can be checked before Ray starts: the files a config reads, the place it writes, and
the object-store budget when the store's size is in the config.

`config validate` and `run` both call `check_inputs`, so a replay file that is not there, a
weights file that is not a state dict of this architecture, an output directory that cannot
be created, or queues that would overflow a configured object store fail in about a second
with the field named, instead of after Ray's start-up. `check_budget` repeats the budget check
once Ray runs, against the store Ray reports (Ray's default size, or a cluster's).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .budget import InFlight, batch_bytes, budget_bytes, budget_problem, format_bytes, in_flight
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


def budget_problems(cfg: PipelineConfig) -> list[str]:
    """The budget check before Ray starts: only an embedded instance with
    ray.object_store_memory_bytes set has a known store, and only a known batch size fails."""
    store = cfg.ray.object_store_memory_bytes
    if cfg.ray.address != "local" or store is None:
        return []
    flight = run_in_flight(cfg)
    problem = budget_problem(cfg, flight, store, embedded=True)
    return [problem] if problem and not flight.batch.assumed else []


def check_budget(cfg: PipelineConfig, store_bytes: int, nodes: int) -> InFlight:
    """The budget check against the store Ray reports; raises StartupError when over budget.
    A batch size that had to be assumed (a socket source without inference.frame_shape) only
    warns: the check cannot know the frames that will arrive."""
    flight = run_in_flight(cfg, remote_copies=nodes > 1)
    log.info(
        "object store: the queues and buffers can hold %s of a %s budget "
        "(ray.object_store_budget_fraction=%g of %s)",
        flight.describe(),
        format_bytes(budget_bytes(cfg, store_bytes)),
        cfg.ray.object_store_budget_fraction,
        format_bytes(store_bytes),
    )
    problem = budget_problem(cfg, flight, store_bytes, embedded=cfg.ray.address == "local")
    if problem and flight.batch.assumed:
        log.warning("%s; set inference.frame_shape to check it for certain", problem)
    elif problem:
        raise StartupError(problem)
    return flight


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
