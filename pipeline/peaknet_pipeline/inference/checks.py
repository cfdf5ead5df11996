"""Which batches the inference actor refuses, and why (pure functions, no Ray, no torch).

A refused batch is counted under its reason and logged once per reason; it never stops the
actor. Reasons are short stable names, used as keys in the actor's summary and stats.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..records import Batch, check_meta
from .geometry import MULTIPLE

REASONS = {
    "record": "the Q1 item is not a Batch with an images reference",
    "payload": "the batch's images could not be read from the object store",
    "rank": "images are not 4-D (B, C, H, W)",
    "dtype": "images are not a real numeric dtype (bool, int, uint, float)",
    "empty": "the batch has no events or no pixels (B, H or W is 0)",
    "channels": "the channel (panel) count is 0",
    "frame_shape": "the frame shape (C, H, W) differs from inference.frame_shape",
    "shape_mismatch": "the images' shape differs from the shape the record declares",
    "metadata": "a metadata field does not have one value per event",
    "not_multiple_of_32": "H or W is not a multiple of 32 and inference.pad_mode is none",
    "inference": "the model failed on this batch",
    "aborted": "the actor's compute loop failed before this batch could run",
}


def check_record(item: Any) -> tuple[str, str] | None:
    """Before fetching: is this something we can fetch at all?"""
    if not isinstance(item, Batch):
        return "record", f"got {type(item).__name__}"
    if item.images is None:
        return "record", f"batch {item.source_id}#{item.seq} has no images reference"
    return None


def check_batch(
    record: Batch,
    images: Any,
    frame_shape: Sequence[int] | None,
    pad_mode: str,
) -> tuple[str, str] | None:
    """After fetching: (reason, detail) if `images` cannot be run, else None."""
    where = f"batch {record.source_id}#{record.seq}"
    if not isinstance(images, np.ndarray):
        return "payload", f"{where}: images are a {type(images).__name__}, not a numpy array"
    if images.ndim != 4:
        return "rank", f"{where}: images have shape {images.shape}, expected (B, C, H, W)"
    if images.dtype.kind not in "biuf":
        return "dtype", f"{where}: images have dtype {images.dtype}"
    b, c, h, w = images.shape
    if c == 0:
        return "channels", f"{where}: images have shape {images.shape} (no panels)"
    if 0 in (b, h, w):
        return "empty", f"{where}: images have shape {images.shape}"
    if tuple(record.shape) != images.shape:
        return (
            "shape_mismatch",
            f"{where}: record says {tuple(record.shape)}, images are {images.shape}",
        )
    if frame_shape is not None and (c, h, w) != tuple(frame_shape):
        return (
            "frame_shape",
            f"{where}: frames are {(c, h, w)}, inference.frame_shape is {tuple(frame_shape)}",
        )
    if pad_mode == "none" and (h % MULTIPLE or w % MULTIPLE):
        return "not_multiple_of_32", f"{where}: frames are {h}x{w} and inference.pad_mode is none"
    try:
        check_meta(record.meta, b)
    except ValueError as exc:
        return "metadata", f"{where}: {exc}"
    return None
