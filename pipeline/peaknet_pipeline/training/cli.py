"""`peaknet-pipeline train`: train the configured PeakNet on the random source's frames, write
its state dict and a sidecar JSON file saying how it was made and how well it does.

The architecture is the config's `model` section; the frames are the config's
`source.random` section (shape, peak width, separation) with amplitude, background and peak
count varied per frame (training/data.py). The weights go to a new run directory under the
config's `writer.output_dir` (`runs/demo/train-<time>/peaknet.pt` for the demo's), never over a file that exists:
the config's own `model.weights_path` is usually the shipped demo weights, and a few training
steps written over them silently ruin every later demo. `--output FILE --force` replaces a file
on purpose (`make demo-weights` does). The last line says how to run with the result.
After training, the model is measured on the config's own source seed, which training never
uses (data.TRAIN_SEED_BASE), at its amplitude and background and over a small sweep.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shlex
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from .. import __version__
from ..config import ConfigError, PipelineConfig, add_config_arguments, load_config
from .settings import TRAIN_SEED_BASE, TrainSettings

SIDECAR_SUFFIX = ".json"
FIRST_STEPS = 10  # losses kept at full precision in the sidecar (the reproducibility test)
CURVE_EVERY = 50  # then one loss in this many
EVAL_EVENTS = 256
SWEEP_EVENTS = 32
SWEEP_AMPLITUDES = (25.0, 50.0, 100.0, 200.0, 400.0)
SWEEP_BACKGROUNDS = (2.0, 10.0, 40.0)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    d = TrainSettings()
    add_config_arguments(parser, example="source.random.frame_shape=[1,128,128]")
    parser.add_argument(
        "--output",
        "-o",
        metavar="FILE",
        help="state dict to write (default: a new train-<time>/peaknet.pt where "
        "writer.output_dir puts a run); an existing file is replaced only with --force",
    )
    parser.add_argument(
        "--force", action="store_true", help="replace --output when it exists already"
    )
    parser.add_argument("--steps", type=int, default=d.steps, help=f"default {d.steps}")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="frames per step")
    parser.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    parser.add_argument("--seed", type=int, default=d.seed, help="initialisation and frames")
    parser.add_argument(
        "--mask-radius-px",
        type=float,
        default=d.mask_radius_px,
        help="pixels within this distance of an injected centre are labelled peak",
    )
    parser.add_argument(
        "--peak-weight", type=float, default=d.peak_weight, help="cross-entropy weight of peaks"
    )
    parser.add_argument("--dice-weight", type=float, default=d.dice_weight, help="of the Dice loss")
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="auto: CUDA when torch sees a GPU, else the CPU",
    )
    parser.add_argument(
        "--progress-every", type=int, default=25, metavar="STEPS", help="a progress line every"
    )
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation figures")


def settings_from(args: argparse.Namespace) -> TrainSettings:
    fields = ("steps", "batch_size", "lr", "seed", "mask_radius_px", "peak_weight")
    s = replace(
        TrainSettings(), dice_weight=args.dice_weight, **{f: getattr(args, f) for f in fields}
    )
    if s.steps < 1 or s.batch_size < 1 or s.lr <= 0 or s.mask_radius_px <= 0:
        raise ConfigError("--steps, --batch-size, --lr and --mask-radius-px must be positive")
    return s


def pick_device(choice: str) -> str:
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available to torch")
    return choice


def printer(steps: int, every: int) -> Callable[[Any], None]:
    """Progress lines: step, loss, learning rate, elapsed and estimated time left."""

    def show(r: Any) -> None:  # a loop.StepReport
        if r.step % every and r.step != steps - 1:
            return
        left = r.elapsed_s / (r.step + 1) * (steps - r.step - 1)
        print(
            f"step {r.step + 1:>5}/{steps}  loss {r.loss:.4f}  lr {r.lr:.2e}  "
            f"{r.elapsed_s:6.0f} s elapsed, about {left:.0f} s left",
            flush=True,
        )

    return show


def software() -> dict[str, str]:
    import numpy
    import torch

    return {
        "python": platform.python_version(),
        "peaknet_pipeline": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
    }


def evaluation(model, cfg: PipelineConfig) -> dict[str, Any]:
    """The sidecar's figures: the config's own source (held-back seed) and a sweep."""
    from .assess import assess, sweep

    source, writer, pad = cfg.source.random, cfg.writer, cfg.inference.pad_mode
    brief = ("recovered_frac", "spurious_frac", "position_error_px")
    rows = sweep(
        model, source, SWEEP_AMPLITUDES, SWEEP_BACKGROUNDS, range(SWEEP_EVENTS), writer, pad
    )
    return {
        "how": "in-process (training/assess.py): generator -> inference preprocessing -> "
        "argmax -> writer peak finder -> matching within 1.5 px; held-back source seed",
        "source_seed": source.seed,
        "config_source": assess(model, source, range(EVAL_EVENTS), writer, pad),
        "sweep": {
            "events_per_cell": SWEEP_EVENTS,
            "cells": [
                {k: row[k] for k in ("peak_amplitude", "background_mean", *brief)} for row in rows
            ],
        },
    }


def output_path(args: argparse.Namespace, cfg: PipelineConfig) -> Path:
    """Where the weights go: `--output` (an existing file only with `--force`), else a new
    training directory named like a run's, under writer.output_dir."""
    if args.output:
        out = Path(args.output)
        if out.exists() and not args.force:
            raise ConfigError(
                f"--output {out}: the file exists; pass --force to replace it (the weights "
                "it holds are lost)"
            )
        return out
    run_id = time.strftime("train-%Y%m%d-%H%M%S")
    out = Path(cfg.writer.output_dir.replace("{run_id}", run_id)) / "peaknet.pt"
    if out.exists():
        raise ConfigError(f"{out} exists already; give --output FILE")
    return out


def file_facts(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    return {"file": path.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def train_main(args: argparse.Namespace, argv: list[str]) -> int:
    import torch

    from ..model import count_parameters, save_weights
    from .loop import init_model, train

    cfg = load_config(args.config, args.overrides)
    if cfg.model.kind != "peaknet":
        raise ConfigError("model.kind: train needs a peaknet model, not the threshold oracle")
    out = output_path(args, cfg)
    if cfg.source.random.seed >= TRAIN_SEED_BASE:
        raise ConfigError(f"source.random.seed must be below {TRAIN_SEED_BASE} (training seeds)")
    s, device = settings_from(args), pick_device(args.device)
    model = init_model(cfg.model, s.seed)
    print(
        f"training PeakNet ({count_parameters(model):,} parameters) for {s.steps} steps of "
        f"{s.batch_size} frames {list(cfg.source.random.frame_shape)} on {device} "
        f"({torch.get_num_threads()} threads)",
        flush=True,
    )
    started = time.time()
    losses = train(
        model,
        cfg.source.random,
        s,
        cfg.inference.pad_mode,
        device,
        printer(s.steps, max(1, args.progress_every)),
    )
    wall = time.time() - started
    out.parent.mkdir(parents=True, exist_ok=True)
    save_weights(model.cpu(), out)
    print(f"wrote {out} ({out.stat().st_size:,} bytes) after {wall:.0f} s", flush=True)
    sidecar = {
        **file_facts(out),
        "parameters": count_parameters(model),
        "model": cfg.model.model_dump(mode="json", exclude={"weights_path", "seed", "threshold"}),
        "command": "peaknet-pipeline " + shlex.join(argv),
        "seed": s.seed,
        "settings": {**asdict(s), "ranges": asdict(s.ranges)},
        "source": cfg.source.random.model_dump(mode="json"),
        "pad_mode": cfg.inference.pad_mode,
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "wall_time_s": round(wall, 1),
        "software": software(),
        "loss_first_steps": losses[:FIRST_STEPS],
        "loss_every_50_steps": [round(v, 5) for v in losses[::CURVE_EVERY]],
        "loss_last": round(losses[-1], 5),
    }
    if not args.no_eval:
        sidecar["evaluation"] = evaluation(model, cfg)
        show_evaluation(sidecar["evaluation"])
    path = out.with_suffix(SIDECAR_SUFFIX)
    path.write_text(json.dumps(sidecar, indent=2) + "\n")
    print(f"wrote {path}")
    print(
        "run with these weights: peaknet-pipeline run --config "
        f"{shlex.quote(args.config)} --set model.weights_path={shlex.quote(str(out))}"
    )
    return 0


def show_evaluation(ev: dict[str, Any]) -> None:
    own = ev["config_source"]
    print(
        f"held-back seed {ev['source_seed']}: recovered {own['recovered_frac']:.1%} of "
        f"{own['injected']} injected peaks, spurious {own['spurious_frac']:.1%} of "
        f"{own['found']} found"
    )
    for cell in ev["sweep"]["cells"]:
        print(
            f"  amplitude {cell['peak_amplitude']:>6g} background {cell['background_mean']:>4g}: "
            f"recovered {cell['recovered_frac']:6.1%}  spurious {cell['spurious_frac']:6.1%}"
        )
