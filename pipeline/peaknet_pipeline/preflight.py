"""What can be checked before Ray starts: the files a config reads and the place it writes.

`config validate` and `run` both call `check_inputs`, so a replay file that is not there, a
weights file that is not a state dict of this architecture, or an output directory that cannot
be created fails in about a second with the field named, instead of after Ray's start-up.
"""

from __future__ import annotations

import os
from pathlib import Path

from .config import PipelineConfig

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
    return problems


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
