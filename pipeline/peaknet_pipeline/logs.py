"""What a run prints: the project's own lines, in one format, from the driver and every actor.

Ray forwards each actor's output to the driver, by default behind a coloured `(Class pid=...)`
prefix, with repeated lines held back for seconds (so a socket source's "waiting for data"
line could appear only after the stream), and adds its own warnings. By default the pipeline
turns those off and every process logs `HH:MM:SS LEVEL stage: message`; `runtime.ray_logs`
(the CLI's `-v`) brings Ray's lines and prefixes back.
"""

from __future__ import annotations

import logging
import os
import sys

PACKAGE = "peaknet_pipeline"
FORMAT = "%(asctime)s %(levelname)s %(stage)s: %(message)s"
DATE_FORMAT = "%H:%M:%S"


class _Formatter(logging.Formatter):
    """Names the stage by its module path inside the package (`sources.socket`, `driver`)."""

    def format(self, record: logging.LogRecord) -> str:
        name = record.name
        record.stage = name[len(PACKAGE) + 1 :] if name.startswith(PACKAGE + ".") else name
        return super().format(record)


def setup_logging(level: str = "INFO") -> None:
    """Log the package's lines to stderr in the one format (idempotent; driver and actors).

    A host that configured logging itself (a notebook, pytest) keeps its own handlers: the
    package's lines go there, not twice.
    """
    logger = logging.getLogger(PACKAGE)
    logger.setLevel(level)
    ours = any(getattr(h, "peaknet", False) for h in logger.handlers)
    if ours or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(FORMAT, DATE_FORMAT))
    handler.peaknet = True
    logger.addHandler(handler)


def ray_output_env(ray_logs: bool, terminal: bool) -> dict[str, str]:
    """Environment for Ray's log forwarding, set before Ray is imported: never hold lines
    back; without `ray_logs`, no `(Class pid=...)` prefixes; colour codes only on a terminal."""
    env = {"RAY_DEDUP_LOGS": "0"}
    if not ray_logs:
        env["RAY_DISABLE_WORKER_LOG_PREFIX"] = "1"
    if not (ray_logs and terminal):
        env["RAY_COLOR_PREFIX"] = "0"
    return env


def configure_ray_output(ray_logs: bool) -> None:
    for key, value in ray_output_env(ray_logs, sys.stderr.isatty()).items():
        os.environ.setdefault(key, value)


def ray_log_level(ray_logs: bool) -> int:
    """Level of Ray's own logger in the driver: its warnings (token authentication, ...) are
    noise to a beamline user unless asked for."""
    return logging.INFO if ray_logs else logging.ERROR
