"""The CrystFEL geometry file for the CXI files the writer produces: pure text rendering.

What CrystFEL 0.12 demands (../shared/reference/cxi-crystfel.md, checked by running it on this
project's files): a camera length (`clen`, top level only), and for every panel its pixel range
in the data block, fs/ss directions, corner, pixel size (`res`) and gain (`adu_per_photon` or
`adu_per_eV`). Statements without a panel prefix are defaults for the panels defined AFTER them,
so every global statement comes before the first panel line; CrystFEL rejects a file whose
trailing globals apply to no panel.

Panels are laid out in the slab the CXI files store: frames (C, H, W) are written as (C*H, W),
so panel c occupies rows c*H .. (c+1)*H - 1 and every column. Where each panel sits in the lab
comes from `writer.geometry` (config/geometry.py): its `panels` list, or by default the slab as
one flat image centred on the beam.
"""

from __future__ import annotations

from typing import NamedTuple

from ..config.geometry import GeometryConfig, parse_direction
from .layout import DATA, LCLS, RESULT

Vector = tuple[float, float, float]


class Panel(NamedTuple):
    """One panel of the geometry file: its pixel range in the slab and its place in the lab."""

    name: str
    min_fs: int
    max_fs: int
    min_ss: int
    max_ss: int
    fs: Vector
    ss: Vector
    corner_x: float
    corner_y: float


def panel_layout(geometry: GeometryConfig, frame_shape: tuple[int, int, int]) -> list[Panel]:
    """The panels of (C, H, W) frames: configured corners, or the default stacked layout."""
    c, h, w = frame_shape
    if geometry.panels is not None and len(geometry.panels) != c:
        raise ValueError(
            f"writer.geometry.panels lists {len(geometry.panels)} panels, but the frames "
            f"{list(frame_shape)} have {c} (one entry per C of (C, H, W))"
        )
    panels = []
    for i in range(c):
        rows = (f"p{i}", 0, w - 1, i * h, (i + 1) * h - 1)
        if geometry.panels is not None:
            p = geometry.panels[i]
            fs, ss = parse_direction(p.fs_direction), parse_direction(p.ss_direction)
            panels.append(Panel(*rows, fs, ss, p.corner_x_px, p.corner_y_px))
            continue
        # Default: the slab is one image with fs = +x, ss = +y; the beam at the given
        # (fs, ss) point of it, by default its centre. Panel i starts i*H rows further down.
        beam_fs = w / 2 if geometry.beam_center_fs_px is None else geometry.beam_center_fs_px
        beam_ss = c * h / 2 if geometry.beam_center_ss_px is None else geometry.beam_center_ss_px
        panels.append(Panel(*rows, (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), -beam_fs, i * h - beam_ss))
    return panels


def _number(value: float) -> str:
    return f"{value:.10g}"


def _direction(vec: Vector) -> str:
    x, y, z = vec
    text = f"{x:+.6g}x {y:+.6g}y"
    return f"{text} {z:+.6g}z" if z else text


def crystfel_geometry(geometry: GeometryConfig, frame_shape: tuple[int, int, int]) -> str:
    """A complete CrystFEL 0.12 geometry file for CXI files of (C, H, W) frames."""
    gain_key, gain = geometry.gain()
    panels = panel_layout(geometry, frame_shape)
    lines = [
        "; CrystFEL geometry for the CXI files peaknet_pipeline wrote next to it (CrystFEL 0.12",
        "; reads it as is). Physical values come from the writer.geometry config section; its",
        "; defaults are placeholders: set the camera length, pixel size, beam centre and gain",
        "; of your detector there (or edit this file) before trusting an indexing result.",
        "; Global statements come first: CrystFEL applies them to the panels defined after them.",
        f"clen = {_number(geometry.camera_length_m)} m",
        f"; pixel size {_number(geometry.pixel_size_m)} m",
        f"res = {_number(1.0 / geometry.pixel_size_m)}",
        f"{gain_key} = {_number(gain)}",
        f"photon_energy = {LCLS}/photon_energy_eV eV",
        f"data = {DATA}",
        "dim0 = %",
        "dim1 = ss",
        "dim2 = fs",
        f"peak_list = {RESULT}",
        "peak_list_type = cxi",
        "; Peaks are stored as pixel indices (no half-pixel shift): CrystFEL adds 0.5 unless",
        "; indexamajig runs with --no-half-pixel-shift.",
    ]
    return "\n".join(lines + panel_lines(panels)) + "\n"


def panel_lines(panels: list[Panel]) -> list[str]:
    """The panel blocks of a CrystFEL geometry file (and `group_all` for several panels), the
    same for the CXI files' geometry and the live feed's."""
    lines: list[str] = []
    for p in panels:
        lines += [
            "",
            f"{p.name}/min_fs = {p.min_fs}",
            f"{p.name}/max_fs = {p.max_fs}",
            f"{p.name}/min_ss = {p.min_ss}",
            f"{p.name}/max_ss = {p.max_ss}",
            f"{p.name}/fs = {_direction(p.fs)}",
            f"{p.name}/ss = {_direction(p.ss)}",
            f"{p.name}/corner_x = {_number(p.corner_x)}",
            f"{p.name}/corner_y = {_number(p.corner_y)}",
        ]
    if len(panels) > 1:  # the hierarchy CrystFEL builds itself for a single panel
        lines += ["", f"group_all = {','.join(p.name for p in panels)}"]
    return lines
