"""Building the configured model and loading its weights strictly.

A configured weights path that does not exist, cannot be read, or does not match the
architecture is an error naming the path (and the missing/unexpected keys); it never falls
back to a random model. Only `weights_path: null` runs random weights, and says so.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .peaknet import PeakNet, PeakNetSpec
from .threshold import ThresholdModel

log = logging.getLogger(__name__)

SHOW_KEYS = 8  # keys listed per kind in a mismatch error; the rest are counted


class WeightsError(ValueError):
    """The weights file is missing, unreadable or does not fit the model config."""


def random_weights_warning(cfg) -> str | None:
    """What to tell the user when a `ModelConfig` runs PeakNet with random weights, or None."""
    if cfg.kind != "peaknet" or cfg.weights_path is not None:
        return None
    return (
        f"model.weights_path is null: PeakNet runs RANDOM weights (seed {cfg.seed}); its peaks "
        "mean nothing. Set model.weights_path to a checkpoint for real segmentation."
    )


def build_model(cfg, warn_random: bool = True) -> nn.Module:
    """The model for a `ModelConfig`, on the CPU, in eval mode, weights loaded or seeded.
    `warn_random=False` for the pipeline's inference actors: the driver warns once per run
    (`random_weights_warning`), not every actor."""
    if cfg.kind == "threshold":
        return ThresholdModel(cfg.threshold).eval()
    spec = PeakNetSpec.from_config(cfg)
    if cfg.weights_path is not None:
        state = read_state_dict(cfg.weights_path)  # fail before spending time on the build
        model = PeakNet(spec)
        load_weights(model, state, cfg.weights_path)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = PeakNet(spec)
        if warn_random:
            log.warning("%s", random_weights_warning(cfg))
    return model.eval()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A plain `state_dict()` file (tensors only, no pickled code) as a dict of tensors.

    Files in torch's zip format are memory-mapped, so checking a multi-GB checkpoint before a
    run costs little. Errors say what is wrong with the file, not how to load unsafe pickles.
    """
    import zipfile

    p = Path(path)
    where = f"model.weights_path {str(p)!r}"
    if not p.is_file():
        raise WeightsError(f"{where} {'is not a file' if p.exists() else 'does not exist'}")
    zipped = zipfile.is_zipfile(p)
    # A damaged file can make torch warn before it fails (bytes that read as an unknown pickle
    # protocol): that warning would print above the one-line error. Kept only if it loads.
    with warnings.catch_warnings(record=True) as heard:
        warnings.simplefilter("always")
        try:
            state = torch.load(p, map_location="cpu", weights_only=True, mmap=zipped)
            loaded = True
        except Exception:  # noqa: BLE001 - torch's text advises unsafe loading; say what it is
            loaded = False
    if not loaded:
        why = (
            "it holds pickled Python objects, not only tensors (save model.state_dict(), "
            "not the model or a training checkpoint)"
            if zipped
            else "it is not a file written by torch.save, or it is damaged"
        )
        raise WeightsError(f"{where} is not a readable state dict: {why}")
    for caught in heard:
        warnings.warn_explicit(caught.message, caught.category, caught.filename, caught.lineno)
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise WeightsError(
            f"{where} holds a {type(state).__name__}, not a plain state_dict() of tensors"
        )
    return dict(state)


def state_dict_mismatch(model: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    """Human-readable problems between `state` and `model` (empty when they fit exactly)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    for name, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", wrong),
    ):
        if items:
            more = f" ... and {len(items) - SHOW_KEYS} more" if len(items) > SHOW_KEYS else ""
            problems.append(f"{name} ({len(items)}): {', '.join(items[:SHOW_KEYS])}{more}")
    return problems


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Strict load: every key present with the right shape, nothing extra."""
    problems = state_dict_mismatch(model, state)
    if problems:
        raise WeightsError(
            f"model.weights_path {str(path)!r} does not match the model config "
            f"({describe(model)}): " + "; ".join(problems)
        )
    model.load_state_dict(state, strict=True)


def save_weights(model: nn.Module, path: str | Path) -> None:
    """Save a plain state dict, the checkpoint format upstream and `build_model` use."""
    torch.save(model.state_dict(), Path(path))


def describe(model: nn.Module) -> str:
    spec = getattr(model, "spec", None)
    if spec is None:
        return type(model).__name__
    return (
        f"hidden_sizes={list(spec.hidden_sizes)}, depths={list(spec.depths)}, "
        f"bifpn={spec.bifpn_num_blocks}x{spec.bifpn_num_features}, "
        f"seg_out_channels={spec.seg_out_channels}, "
        f"uses_learned_upsample={spec.uses_learned_upsample}"
    )


def meta_model(cfg) -> nn.Module:
    """The architecture on the meta device: shapes and counts without allocating weights."""
    with torch.device("meta"):
        return PeakNet(PeakNetSpec.from_config(cfg))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
