"""`writer.geometry`: the detector's physical layout, from which the writer renders the CrystFEL
geometry file next to its CXI files (writer/geometry.py; ../shared/reference/cxi-crystfel.md).

The pipeline itself never needs these numbers (peaks are found in pixel coordinates), so the
defaults are placeholders that give a file CrystFEL 0.12 accepts for any frame shape. Indexing
real data needs the real camera length, pixel size, beam centre and gain of the detector.

Coordinates follow CrystFEL: the lab frame has the beam along +z through x = y = 0, x and y in
pixel widths; `fs`/`ss` directions say where the fast-scan (column) and slow-scan (row) axes of
a panel's data point in the lab; a panel's corner is the outer corner of its first pixel.
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from .base import Section

_TERM = re.compile(r"\s*([+-]?)\s*(\d+\.?\d*|\.\d+)?\s*([xyz])\s*")


def parse_direction(text: str) -> tuple[float, float, float]:
    """A CrystFEL direction (`+1.0x`, `-y`, `+0.9998x -0.0175y`) as an (x, y, z) vector.

    Terms after the first need their sign, as in CrystFEL's parser, which splits on + and -.
    """
    vec = {"x": 0.0, "y": 0.0, "z": 0.0}
    pos, text = 0, text.strip()
    while pos < len(text):
        term = _TERM.match(text, pos)
        if term is None or term.end() == pos or (pos and not term.group(1)):
            raise ValueError(f"{text!r} is not a direction like '+1.0x' or '+0.98x -0.17y'")
        size = float(term.group(2)) if term.group(2) else 1.0
        vec[term.group(3)] += -size if term.group(1) == "-" else size
        pos = term.end()
    if not any(vec.values()):
        raise ValueError(f"{text!r} is not a direction (empty, or the zero vector)")
    return vec["x"], vec["y"], vec["z"]


def _direction(value: str) -> str:
    parse_direction(value)
    return value


class PanelGeometry(Section):
    """Where one panel (one C index of the (C, H, W) frames) sits in the lab frame."""

    corner_x_px: float = Field(
        description="Lab x of the panel's corner (outer corner of its first pixel), in pixels "
        "from the beam."
    )
    corner_y_px: float = Field(
        description="Lab y of the panel's corner (outer corner of its first pixel), in pixels "
        "from the beam."
    )
    fs_direction: str = Field(
        "+1.0x", description="Lab direction of the panel's fast-scan axis (columns), e.g. '-1.0y'."
    )
    ss_direction: str = Field(
        "+1.0y", description="Lab direction of the panel's slow-scan axis (rows), e.g. '+1.0x'."
    )

    _check_fs = field_validator("fs_direction")(_direction)
    _check_ss = field_validator("ss_direction")(_direction)

    @model_validator(mode="after")
    def _not_parallel(self) -> PanelGeometry:
        fx, fy, _ = parse_direction(self.fs_direction)
        sx, sy, _ = parse_direction(self.ss_direction)
        if abs(fx * sy - fy * sx) < 1e-9:
            raise ValueError(
                f"fs_direction {self.fs_direction!r} and ss_direction {self.ss_direction!r} "
                "are parallel in the detector plane: the panel would have no area"
            )
        return self


class GeometryConfig(Section):
    """The detector for CrystFEL: written to `<file_prefix>.geom` and stored in each CXI file."""

    camera_length_m: float = Field(
        0.1,
        gt=0,
        lt=100,
        description="Sample-to-detector distance in metres (CrystFEL clen). The default is a "
        "placeholder: set your detector's.",
    )
    pixel_size_m: float = Field(
        100e-6,
        gt=0,
        lt=0.01,
        description="Pixel size in metres (CrystFEL res = 1 / pixel_size_m). The default "
        "(ePix10k's 100 um) is a placeholder: set your detector's.",
    )
    beam_center_fs_px: float | None = Field(
        None,
        description="Beam position along the fast-scan axis (columns), in pixels from the outer "
        "edge of the first column (pixel i's centre is at i + 0.5). null: the frame centre, W/2. "
        "For the default layout only; with `panels`, the corners place the beam.",
    )
    beam_center_ss_px: float | None = Field(
        None,
        description="Beam position along the slow-scan axis (rows) of the slab (panels stacked "
        "as written), in pixels from the outer edge of the first row. null: the slab centre, "
        "C*H/2. For the default layout only.",
    )
    adu_per_photon: float | None = Field(
        1.0,
        gt=0,
        description="Detector gain in ADU per photon (CrystFEL adu_per_photon); used for "
        "CrystFEL's Poisson error estimates. The default 1.0 is a placeholder. Set this or "
        "adu_per_ev, not both (setting adu_per_ev alone replaces this default).",
    )
    adu_per_ev: float | None = Field(
        None,
        gt=0,
        description="Detector gain in ADU per eV of photon energy (CrystFEL adu_per_eV); the "
        "alternative to adu_per_photon.",
    )
    panels: list[PanelGeometry] | None = Field(
        None,
        min_length=1,
        description="One entry per panel (C of the (C, H, W) frames, in order): corner and "
        "fs/ss directions. null: the default layout, the slab as one flat image (panels "
        "stacked along +y in data order, fs = +x, ss = +y), centred on the beam unless "
        "beam_center_*_px say otherwise.",
    )

    @model_validator(mode="before")
    @classmethod
    def _ev_gain_replaces_default(cls, data):
        if isinstance(data, dict) and data.get("adu_per_ev") is not None:
            return {"adu_per_photon": None, **data}
        return data

    @model_validator(mode="after")
    def _one_gain_one_layout(self) -> GeometryConfig:
        if (self.adu_per_photon is None) == (self.adu_per_ev is None):
            raise ValueError(
                "adu_per_photon, adu_per_ev: set exactly one (got adu_per_photon="
                f"{self.adu_per_photon}, adu_per_ev={self.adu_per_ev})"
            )
        centre = {"beam_center_fs_px": self.beam_center_fs_px}
        centre["beam_center_ss_px"] = self.beam_center_ss_px
        given = [name for name, value in centre.items() if value is not None]
        if self.panels is not None and given:
            raise ValueError(
                f"{', '.join(given)}: applies to the default layout only; with panels, each "
                "panel's corner_x_px/corner_y_px place it relative to the beam"
            )
        return self

    def gain(self) -> tuple[str, float]:
        """The gain statement CrystFEL reads: ('adu_per_photon' | 'adu_per_eV', value)."""
        if self.adu_per_ev is not None:
            return "adu_per_eV", self.adu_per_ev
        return "adu_per_photon", float(self.adu_per_photon)
