"""`peaknet-pipeline sweep`: the pipeline once per point of a grid of config values, then one
CSV and one plot of throughput, inference busy fraction and verdict per point.

The experiments users ran by hand (batch size, queue size, producer/consumer ratio) become one
command. Every point's config is built and validated before anything runs, so a typo in the
fifth value fails in a second, not after four runs. Each run keeps its own directory (CXI
files, report.json, report.html) under the sweep's directory.

Embedded runs (ray.address: local) share one Ray instance for the whole sweep, sized for the
largest point, unless the grid varies a `ray.*` setting: then each run starts its own.
"""

from __future__ import annotations

import csv
import itertools
import logging
import re
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from .config import ConfigError, PipelineConfig, load_config

log = logging.getLogger(__name__)

CSV_FILE, PLOT_FILE = "sweep.csv", "sweep.png"
COLUMNS = (
    "point",
    "run_id",
    "exit_code",
    "ended_by",
    "verdict",
    "frames_inferred",
    "streaming_s",
    "frames_per_s",
    "inference_busy",
    "ingest_fps",
    "inference_fps",
    "q1_fill",
    "q2_fill",
    "run_dir",
    "error",
)


@dataclass(frozen=True)
class Axis:
    key: str  # a dotted config key, e.g. source.random.batch_size
    values: tuple[Any, ...]  # YAML-typed, as --set would read them


@dataclass(frozen=True)
class Point:
    index: int
    settings: dict[str, Any]  # key -> value of every axis
    cfg: PipelineConfig

    @property
    def label(self) -> str:
        return ", ".join(f"{k.rsplit('.', 1)[-1]}={_text(v)}" for k, v in self.settings.items())

    @property
    def slug(self) -> str:
        """The run's directory name: index and settings, e.g. 01-batch_size-4_shape-1x64x64."""
        name = "_".join(f"{k.rsplit('.', 1)[-1]}-{_slug(v)}" for k, v in self.settings.items())
        return f"{self.index:02d}-{name[:80]}"


def _slug(value: Any) -> str:
    if isinstance(value, list):
        return "x".join(_slug(v) for v in value)
    return re.sub(r"[^A-Za-z0-9_.-]+", "", _text(value))


def _text(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


# -- the grid (pure) -------------------------------------------------------------------------
def split_values(text: str) -> list[str]:
    """`1,2,4` -> ['1', '2', '4']; commas inside brackets belong to a value (`[1,64,64]`)."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    parts.append(current.strip())
    if any(not p for p in parts):
        raise ConfigError(f"--values {text!r}: an empty value")
    return parts


def field_paths(model: type[BaseModel] = PipelineConfig, prefix: str = "") -> set[str]:
    """Every dotted key of the config schema that holds a value (sections recursed into)."""
    paths = set()
    for name, info in model.model_fields.items():
        kind = info.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            paths |= field_paths(kind, f"{prefix}{name}.")
        else:
            paths.add(f"{prefix}{name}")
    return paths


def check_key(key: str) -> None:
    """A sweep key must be a config field; say which fields have that name when it is not."""
    known = field_paths()
    if key in known:
        return
    leaf = key.rsplit(".", 1)[-1]
    alike = sorted(p for p in known if p.rsplit(".", 1)[-1] == leaf)
    hint = f"; did you mean {' or '.join(alike)}?" if alike else " (see `config schema`)"
    raise ConfigError(f"--param {key}: not a config field{hint}")


def axes_of(params: Sequence[str], values: Sequence[str]) -> list[Axis]:
    """Pair each --param with its --values, in the order given."""
    if not params or len(params) != len(values):
        raise ConfigError(
            f"sweep: give each --param one --values ({len(params)} --param, {len(values)} --values)"
        )
    if len(set(params)) != len(params):
        raise ConfigError("sweep: a --param is given twice")
    axes = []
    for key, text in zip(params, values):
        check_key(key)
        parsed = [yaml.safe_load(v) for v in split_values(text)]
        axes.append(Axis(key, tuple(parsed)))
    return axes


def grid(axes: Sequence[Axis]) -> list[dict[str, Any]]:
    """Every combination, the last axis varying fastest."""
    combos = itertools.product(*(a.values for a in axes))
    return [dict(zip((a.key for a in axes), combo)) for combo in combos]


def points(config: str | Path, overrides: Sequence[str], axes: Sequence[Axis]) -> list[Point]:
    """Every point's validated config; the first invalid one raises, naming its settings."""
    out = []
    for i, settings in enumerate(grid(axes)):
        sets = [f"{k}={_text(v)}" for k, v in settings.items()]
        try:
            cfg = load_config(config, [*overrides, *sets])
        except ConfigError as exc:
            raise ConfigError(f"sweep point {' '.join(sets)}: {exc}") from None
        out.append(Point(i, settings, cfg))
    return out


# -- running ---------------------------------------------------------------------------------
def run_point(point: Point, sweep_dir: Path, sweep_id: str) -> dict[str, Any]:
    """Run one point into its own directory; returns its CSV row (a start-up failure is a row
    with exit code 2 and the error, not the end of the sweep)."""
    from .driver import StartupError, run

    cfg = point.cfg.model_copy(deep=True)
    cfg.writer.output_dir = str(sweep_dir / point.slug)
    cfg.runtime.run_id = f"{sweep_id}-{point.index:02d}"
    row: dict[str, Any] = {"point": point.index, **point.settings, "run_id": cfg.runtime.run_id}
    row["run_dir"] = cfg.writer.output_dir
    try:
        report = run(cfg)
    except StartupError as exc:
        log.error("sweep point %s could not start: %s", point.label, exc)
        return {**row, "exit_code": 2, "error": str(exc)}
    return {**row, **row_of(report)}


def row_of(report: dict[str, Any]) -> dict[str, Any]:
    """The CSV figures of one run's report."""
    acc = report["accounting"]
    streaming = max(float(report.get("streaming_s") or 0.0), 1e-9)
    judged = report.get("verdict") or {}
    evidence = judged.get("evidence") or {}
    return {
        "exit_code": report["exit_code"],
        "ended_by": report["ended_by"],
        "verdict": judged.get("word", ""),
        "frames_inferred": acc["frames_inferred"],
        "streaming_s": round(streaming, 3),
        "frames_per_s": round(acc["frames_inferred"] / streaming, 3),
        **{k: evidence.get(k, "") for k in ("inference_busy", "ingest_fps", "inference_fps")},
        **{k: evidence.get(k, "") for k in ("q1_fill", "q2_fill")},
        "error": "; ".join(f"{e['role']} {e['id']}: {e['error']}" for e in report["errors"]),
    }


def shared_ray(pts: Sequence[Point], axes: Sequence[Axis]) -> PipelineConfig | None:
    """The config to start one embedded Ray with for every point, or None when each run
    must start its own (not embedded, or the grid varies a ray.* setting)."""
    first = pts[0].cfg
    if first.ray.address != "local" or any(a.key.startswith("ray.") for a in axes):
        return None
    from .cluster import embedded_cpus

    cfg = first.model_copy(deep=True)
    cfg.ray.num_cpus = max(embedded_cpus(p.cfg) for p in pts)
    return cfg


def sweep(
    config: str | Path,
    overrides: Sequence[str],
    axes: Sequence[Axis],
    sweep_dir: Path | None = None,
) -> tuple[Path, list[dict[str, Any]]]:
    """Run every point; write sweep.csv and sweep.png into the sweep's directory."""
    from .cluster import connect
    from .errors import StartupError

    pts = points(config, overrides, axes)
    sweep_id = time.strftime("sweep-%Y%m%d-%H%M%S")
    sweep_dir = Path(sweep_dir or Path("runs") / sweep_id).absolute()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    ray_cfg = shared_ray(pts, axes)
    try:
        with connect(ray_cfg) if ray_cfg is not None else nullcontext():
            for point in pts:
                log.info("sweep point %d of %d: %s", point.index + 1, len(pts), point.label)
                rows.append(run_point(point, sweep_dir, sweep_id))
                write_csv(sweep_dir / CSV_FILE, rows, [a.key for a in axes])
                if interrupted(rows[-1]):
                    log.warning(
                        "sweep stopped after point %d: %s", point.index + 1, rows[-1]["ended_by"]
                    )
                    break
    except StartupError as exc:
        raise ConfigError(f"sweep: {exc}") from None
    draw(sweep_dir / PLOT_FILE, rows, pts)
    return sweep_dir, rows


# How the report's `ended_by` starts for a run drained by a signal (driver.signal_name).
STOP_SIGNALS = ("SIGINT", "SIGTERM")


def interrupted(row: dict[str, Any]) -> bool:
    """The run was stopped by Ctrl-C or SIGTERM (drained, or stopped at once): the user wants
    the sweep to end too, with what has run so far written. A point stopped by its own
    runtime.max_run_time_s, or by `peaknet-pipeline stop RUN`, ends only that point."""
    ended = str(row.get("ended_by", ""))
    return row.get("exit_code") == 130 or ended.startswith((*STOP_SIGNALS, "hard stop"))


def sweep_exit_code(rows: Sequence[dict[str, Any]]) -> int:
    """The sweep's exit code, with the run's meanings: 130 a point was stopped at once; 1 a
    point failed, could not start, or had frames rejected (any exit code but 0 and 4); 4 a
    signal ended the sweep (the point it stopped drained: every accepted frame written); else 0.
    A point that exited 4 because its time limit or `peaknet-pipeline stop` ended it ran."""
    codes = [row.get("exit_code") for row in rows]
    if 130 in codes:
        return 130
    if any(code not in (0, 4) for code in codes):
        return 1
    return 4 if rows and interrupted(rows[-1]) else 0


def write_csv(path: Path, rows: list[dict[str, Any]], keys: Sequence[str]) -> None:
    columns = ["point", *keys, *COLUMNS[1:]]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k, "")) for k in columns})


def _cell(value: Any) -> Any:
    return _text(value) if isinstance(value, (list, dict)) else value


def draw(path: Path, rows: list[dict[str, Any]], pts: Sequence[Point]) -> None:
    """Throughput and inference busy fraction per point, each bar labelled with its verdict."""
    from matplotlib.figure import Figure

    from .monitor.page import COLOURS
    from .monitor.plots import png

    labels = [p.label for p in pts[: len(rows)]]
    fig = Figure(figsize=(9.0, 5.2), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    x = range(len(rows))
    colours = [COLOURS.get(str(r.get("verdict")), "#777") for r in rows]
    fps = [float(r.get("frames_per_s") or 0) for r in rows]
    busy = [float(r.get("inference_busy") or 0) for r in rows]
    top.bar(x, fps, color=colours)
    for i, row in enumerate(rows):
        word = row.get("verdict") or f"exit {row.get('exit_code')}"
        top.annotate(word, (i, fps[i]), ha="center", va="bottom", fontsize=8)
    top.set_ylabel("frames inferred / s")
    top.set_ylim(0, max(fps + [1.0]) * 1.2)
    bottom.bar(x, busy, color="tab:orange")
    bottom.set_ylim(0, 1.05)
    bottom.set_ylabel("inference busy")
    tilt = len(rows) > 4
    bottom.set_xticks(
        list(x), labels, rotation=20 if tilt else 0, ha="right" if tilt else "center", fontsize=8
    )
    fig.suptitle("sweep: throughput, inference busy fraction and verdict per point", fontsize=10)
    path.write_bytes(png(fig))
