"""Pictures for the live page, made on request: a detector frame scaled the way detector
viewers do (a clipped intensity range, set by percentiles), a colour map, peaks marked with
small circles, and the PNG bytes. Pure numpy and the standard library (zlib, struct): no
imaging package on the driver's path, and nothing is drawn unless a browser asks.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

MAX_SIDE = 1024  # a frame's long side is reduced (block maxima) to at most this many pixels
# A perceptual map from dark to bright (the shape of matplotlib's "inferno": black, purple,
# red, orange, pale yellow), interpolated between these anchors.
_INFERNO = np.array(
    [
        (0, 0, 4),
        (40, 11, 84),
        (101, 21, 110),
        (159, 42, 99),
        (212, 72, 66),
        (245, 125, 21),
        (250, 193, 39),
        (252, 255, 164),
    ],
    dtype=np.float64,
)
PEAK_RGB = (0, 230, 255)  # cyan circles: apart from every colour of the map
CMAPS = ("inferno", "grey")


def _lut(name: str) -> np.ndarray:
    x = np.linspace(0, 1, 256)
    if name == "grey":
        return np.repeat((x * 255).round().astype(np.uint8)[:, None], 3, axis=1)
    at = np.linspace(0, 1, len(_INFERNO))
    return (
        np.stack([np.interp(x, at, _INFERNO[:, k]) for k in range(3)], axis=1)
        .round()
        .astype(np.uint8)
    )


LUTS = {name: _lut(name) for name in CMAPS}


def reduce(image: np.ndarray, max_side: int = MAX_SIDE) -> tuple[np.ndarray, int]:
    """`image` (2-D) with its long side at most `max_side`: blocks of f x f pixels replaced by
    their maximum (a peak stays visible, as in a detector viewer's zoomed-out view); and f."""
    h, w = image.shape
    f = max(1, -(-max(h, w) // max_side))
    if f == 1:
        return image, 1
    ph, pw = -(-h // f) * f, -(-w // f) * f
    padded = np.full((ph, pw), -np.inf, dtype=np.float64)
    padded[:h, :w] = image
    return padded.reshape(ph // f, f, pw // f, f).max(axis=(1, 3)), f


def scale(
    image: np.ndarray, lo_pct: float = 1.0, hi_pct: float = 99.5
) -> tuple[np.ndarray, float, float]:
    """The image as 0..255 over the intensity range between its `lo_pct` and `hi_pct`
    percentiles (finite pixels; values outside are clipped), and that range."""
    v = np.asarray(image, dtype=np.float64)
    finite = v[np.isfinite(v)]
    if not finite.size:
        return np.zeros(v.shape, dtype=np.uint8), 0.0, 0.0
    lo, hi = (float(x) for x in np.percentile(finite, [lo_pct, hi_pct]))
    if hi <= lo:
        hi = lo + 1.0
    out = (np.clip(np.nan_to_num(v, nan=lo, neginf=lo, posinf=hi), lo, hi) - lo) / (hi - lo)
    return (out * 255).round().astype(np.uint8), lo, hi


def log_scale(counts: np.ndarray) -> np.ndarray:
    """Counts as 0..255 on a log scale (the powder pattern: a ring of a few counts shows
    beside a spot of many); zero stays 0."""
    c = np.log1p(np.asarray(counts, dtype=np.float64))
    top = c.max() if c.size else 0.0
    return (
        np.zeros(c.shape, dtype=np.uint8) if top <= 0 else (c / top * 255).round().astype(np.uint8)
    )


def colour(grey: np.ndarray, cmap: str = "inferno") -> np.ndarray:
    """(H, W) uint8 to (H, W, 3) RGB through the named map."""
    return LUTS[cmap][grey]


def mark(rgb: np.ndarray, rows: np.ndarray, cols: np.ndarray, radius: float = 5.0) -> np.ndarray:
    """`rgb` with a one-pixel circle of `radius` around each (row, col) (in its pixels)."""
    out = rgb.copy()
    if not len(rows):
        return out
    h, w = out.shape[:2]
    angles = np.linspace(0, 2 * np.pi, max(16, int(2 * np.pi * radius * 1.5)), endpoint=False)
    ys = (np.asarray(rows, dtype=np.float64)[:, None] + radius * np.sin(angles)).round()
    xs = (np.asarray(cols, dtype=np.float64)[:, None] + radius * np.cos(angles)).round()
    ys, xs = ys.astype(np.intp).ravel(), xs.astype(np.intp).ravel()
    inside = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
    out[ys[inside], xs[inside]] = PEAK_RGB
    return out


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of an (H, W) grey or (H, W, 3) RGB uint8 image: 8-bit, no interlace, every
    row with filter type 0, one zlib stream (PNG spec, ISO/IEC 15948: IHDR, IDAT, IEND)."""
    a = np.ascontiguousarray(pixels, dtype=np.uint8)
    if a.ndim == 2:
        colour_type, channels = 0, 1
    elif a.ndim == 3 and a.shape[2] == 3:
        colour_type, channels = 2, 3
    else:
        raise ValueError(f"a PNG needs (H, W) or (H, W, 3) pixels, got {a.shape}")
    h, w = a.shape[:2]
    rows = np.zeros((h, 1 + w * channels), dtype=np.uint8)  # a 0 filter byte, then the row
    rows[:, 1:] = a.reshape(h, w * channels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", w, h, 8, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
        + chunk(b"IEND", b"")
    )


def frame_png(
    image: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    lo_pct: float = 1.0,
    hi_pct: float = 99.5,
    cmap: str = "inferno",
    max_side: int = MAX_SIDE,
) -> bytes:
    """A hit frame (2-D slab) as a PNG: reduced, scaled to its percentile range, coloured,
    its peaks (slab rows and columns) circled."""
    small, f = reduce(np.asarray(image, dtype=np.float64), max_side)
    grey, _, _ = scale(small, lo_pct, hi_pct)
    rgb = colour(grey, cmap)
    return encode_png(mark(rgb, np.asarray(rows) / f, np.asarray(cols) / f, radius=5.0))


def counts_png(counts: np.ndarray, cmap: str = "inferno") -> bytes:
    """Counts on a grid (the powder pattern) as a log-scaled PNG."""
    return encode_png(colour(log_scale(counts), cmap))
