"""Padding geometry: where a (B, C, H, W) batch sits in the padded (B*C, 1, Hp, Wp) model
input, the staging copy into it, and the output's per-event shape (numpy only, no torch).

Every panel is its own model input: PeakNet sees (1, H, W) images. H and W are padded up to
multiples of 32 with zeros, centred or at the bottom/right, and outputs are cropped back with
the same offsets, so coordinates downstream are always those of the original frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

MULTIPLE = 32
PadMode = Literal["center", "bottom_right", "none"]
OutputKind = Literal["mask", "logits"]


def padded_side(n: int, multiple: int = MULTIPLE) -> int:
    return -(-n // multiple) * multiple


@dataclass(frozen=True)
class Geometry:
    """Where a (B, C, H, W) batch sits inside the padded (B*C, 1, Hp, Wp) model input."""

    batch: int
    channels: int
    height: int
    width: int
    padded_height: int
    padded_width: int
    top: int
    left: int

    @property
    def n(self) -> int:
        """Model inputs: every panel is its own (1, H, W) image."""
        return self.batch * self.channels

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.n, 1, self.padded_height, self.padded_width)

    @property
    def rows(self) -> slice:
        return slice(self.top, self.top + self.height)

    @property
    def cols(self) -> slice:
        return slice(self.left, self.left + self.width)

    def output_shape(self, kind: OutputKind, num_classes: int) -> tuple[int, ...]:
        """(B, C, H, W) for a mask, (B, C, K, H, W) for logits (records.py documents both)."""
        frame = (self.height, self.width)
        if kind == "mask":
            return (self.batch, self.channels, *frame)
        return (self.batch, self.channels, num_classes, *frame)


def geometry(shape: tuple[int, ...], pad_mode: PadMode) -> Geometry:
    """The padding of a (B, C, H, W) batch; ValueError when pad_mode is none and H or W is not
    a multiple of 32."""
    b, c, h, w = (int(n) for n in shape)
    hp, wp = padded_side(h), padded_side(w)
    if pad_mode == "none":
        if (hp, wp) != (h, w):
            raise ValueError(
                f"frame {h}x{w} is not a multiple of {MULTIPLE} and inference.pad_mode is none"
            )
        top = left = 0
    elif pad_mode == "center":
        top, left = (hp - h) // 2, (wp - w) // 2
    elif pad_mode == "bottom_right":
        top = left = 0
    else:
        raise ValueError(f"unknown inference.pad_mode {pad_mode!r}")
    return Geometry(b, c, h, w, hp, wp, top, left)


def pad_into(dst: np.ndarray, src: np.ndarray, geo: Geometry) -> None:
    """Copy (B, C, H, W) `src` into the (B*C, Hp, Wp) staging view `dst` (casting to its
    dtype) and zero the border; the rest of a reused buffer is left alone."""
    rows, cols = geo.rows, geo.cols
    dst[:, : rows.start] = 0
    dst[:, rows.stop :] = 0
    dst[:, rows, : cols.start] = 0
    dst[:, rows, cols.stop :] = 0
    np.copyto(dst[:, rows, cols], src.reshape(geo.n, geo.height, geo.width), casting="unsafe")


def output_array(out: np.ndarray, geo: Geometry, kind: OutputKind) -> np.ndarray:
    """The flat (n, ...) output viewed per event and panel: (B, C, H, W) or (B, C, K, H, W)."""
    return out.reshape(geo.output_shape(kind, out.shape[1] if kind == "logits" else 0))
