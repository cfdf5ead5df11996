"""How well a model finds the random source's peaks, measured in-process (no Ray, no files).

The same steps as a pipeline run, as plain function calls: the random source's frames, the
inference engine's preprocessing (`model_input`), argmax, the writer's peak finder
(`writer.peaks.find_peaks` with the writer config's connectivity and size limits) and the
evaluation's matching (`evaluate.Tally`). Unlike a run's CXI files, events with fewer than
`writer.min_peaks` peaks are counted too (this measures detection, not the hit filter), so
figures at low contrast say what the network does rather than what the writer keeps.
Used for the figures in the weights' sidecar file and the README's table; `peaknet-pipeline
evaluate RUN_DIR` measures a real run from its files.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import RandomSourceConfig, WriterConfig
from ..evaluate import Tally, injected_slab_peaks
from ..inference.engine import class_index
from ..inference.geometry import PadMode
from ..sources.random import FrameGenerator
from ..writer.peaks import find_peaks, peak_rules
from .data import model_input

EVAL_BATCH = 8


def peak_masks(model: nn.Module, frames: np.ndarray, pad_mode: PadMode) -> np.ndarray:
    """uint8 peak masks (B, C, H, W) of frames (B, C, H, W), as inference computes them."""
    x, geo = model_input(frames, pad_mode)
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(x.to(device))
    masks = class_index(logits[:, :, geo.rows, geo.cols]).cpu().numpy()
    return masks.reshape(frames.shape)


def assess(
    model: nn.Module,
    source: RandomSourceConfig,
    event_ids: Iterable[int],
    writer: WriterConfig | None = None,
    pad_mode: PadMode = "center",
    tolerance_px: float = 1.5,
) -> dict[str, Any]:
    """Recall (recovered_frac), spurious fraction and positional error of `model` on the
    frames `source` generates for `event_ids`."""
    writer = writer or WriterConfig()
    generator = FrameGenerator(source)
    ids = np.fromiter(event_ids, dtype=np.int64)
    tally = Tally(tolerance_px)
    model.eval()
    for start in range(0, len(ids), EVAL_BATCH):
        chunk = ids[start : start + EVAL_BATCH]
        frames = generator.batch(chunk)
        for event, frame, mask in zip(chunk, frames, peak_masks(model, frames, pad_mode)):
            peaks = find_peaks(frame, mask, **peak_rules(writer))
            tally.add(
                injected_slab_peaks(source, int(event)), np.column_stack([peaks.row, peaks.col])
            )
    return tally.stats()


def sweep(
    model: nn.Module,
    source: RandomSourceConfig,
    amplitudes: Sequence[float],
    backgrounds: Sequence[float],
    event_ids: Sequence[int],
    writer: WriterConfig | None = None,
    pad_mode: PadMode = "center",
) -> list[dict[str, Any]]:
    """`assess` at every (peak amplitude, background mean) pair, other settings from `source`."""
    rows = []
    for background in backgrounds:
        for amplitude in amplitudes:
            cfg = source.model_copy(
                update={"peak_amplitude": float(amplitude), "background_mean": float(background)}
            )
            stats = assess(model, cfg, event_ids, writer, pad_mode)
            rows.append({"peak_amplitude": amplitude, "background_mean": background, **stats})
    return rows
