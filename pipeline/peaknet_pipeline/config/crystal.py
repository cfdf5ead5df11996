"""`source.random.crystal`: the random source's peaks where a crystal puts its Bragg spots.

The physics is sources/crystal.py. The section holds what a crystallographer would write in a
CrystFEL cell file (libcrystfel/src/cell-utils.c, load_cell_from_file: lattice_type, centering,
unique_axis, a/b/c, al/be/ga) plus the beam's bandwidth, a resolution limit and a Wilson B.
The photon energy is the source's own `photon_energy_ev` (the value stamped on every event and
written to the CXI files, so CrystFEL indexes with the energy the spots were made with) and the
detector is `writer.geometry` (the CrystFEL geometry file the writer writes): neither is
repeated here, so they cannot disagree. PipelineConfig hands the geometry over (`bind`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr, model_validator

from .base import Section
from .geometry import GeometryConfig

LatticeType = Literal[
    "triclinic", "monoclinic", "orthorhombic", "tetragonal", "rhombohedral", "hexagonal", "cubic"
]
# CrystFEL's centering symbols (cell-utils.c, forbidden_reflection): H is a rhombohedral
# lattice on hexagonal axes (obverse), R the same lattice on its primitive rhombohedral axes.
Centering = Literal["P", "A", "B", "C", "I", "F", "R", "H"]
NEEDS_UNIQUE_AXIS = {"monoclinic", "tetragonal", "hexagonal"}  # load_cell_from_file refuses


class CellConfig(Section):
    """Unit cell parameters: lengths in angstrom, angles in degrees."""

    a: float = Field(gt=0, description="Cell edge a in angstrom.")
    b: float = Field(gt=0, description="Cell edge b in angstrom.")
    c: float = Field(gt=0, description="Cell edge c in angstrom.")
    alpha: float = Field(90.0, gt=0, lt=180, description="Angle between b and c in degrees.")
    beta: float = Field(90.0, gt=0, lt=180, description="Angle between a and c in degrees.")
    gamma: float = Field(90.0, gt=0, lt=180, description="Angle between a and b in degrees.")

    @model_validator(mode="after")
    def _sensible(self) -> CellConfig:
        # The cell_is_sensible test of cell-utils.c: each angle less than the sum of the others,
        # all three less than 360 degrees; otherwise no cell has these angles (zero volume).
        al, be, ga = self.alpha, self.beta, self.gamma
        if not (al + be + ga < 360 and al < be + ga and be < al + ga and ga < al + be):
            raise ValueError(
                f"alpha, beta, gamma = {al}, {be}, {ga}: no unit cell has these angles (each "
                "must be less than the sum of the other two, all three less than 360)"
            )
        return self

    def parameters(self) -> tuple[float, float, float, float, float, float]:
        """(a, b, c, alpha, beta, gamma): angstrom and degrees."""
        return self.a, self.b, self.c, self.alpha, self.beta, self.gamma


class CrystalConfig(Section):
    """A crystal in a random orientation per frame, reproducible from (seed, event id)."""

    cell: CellConfig = Field(description="Unit cell parameters (angstrom, degrees).")
    lattice_type: LatticeType = Field(
        "triclinic", description="Lattice type, as in a CrystFEL cell file."
    )
    centering: Centering = Field(
        "P",
        description="Lattice centering (CrystFEL's symbols): reflections it forbids are never "
        "drawn (A: k+l odd, B: h+l odd, C: h+k odd, I: h+k+l odd, F: mixed parity, H: "
        "-h+k+l not a multiple of 3; P and R forbid none).",
    )
    unique_axis: Literal["a", "b", "c"] | None = Field(
        None,
        description="Unique axis for monoclinic, tetragonal and hexagonal lattices (CrystFEL "
        "requires it there); null for the others.",
    )
    bandwidth: float = Field(
        0.01,
        gt=0,
        lt=0.5,
        description="Full width of the photon energy band as a fraction of photon_energy_ev "
        "(a top hat): a reflection is drawn when the energy that puts it on the Ewald sphere "
        "is within +-bandwidth/2 of the nominal. Stands in for bandwidth and mosaicity alike.",
    )
    resolution_limit_angstrom: float = Field(
        2.0, gt=0, description="Highest resolution drawn: reflections with d below this are not."
    )
    wilson_b: float = Field(
        10.0,
        ge=0,
        description="Wilson B factor in A^2: a spot's height is peak_amplitude x "
        "exp(-wilson_b s^2 / 2), s = 1/d, so spots fade with resolution.",
    )

    _detector: GeometryConfig | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _unique_axis_where_needed(self) -> CrystalConfig:
        if self.lattice_type in NEEDS_UNIQUE_AXIS and self.unique_axis is None:
            raise ValueError(
                f"unique_axis: a {self.lattice_type} lattice needs one (a, b or c), as in "
                "CrystFEL's cell files"
            )
        if self.lattice_type not in NEEDS_UNIQUE_AXIS and self.unique_axis is not None:
            raise ValueError(
                f"unique_axis: means nothing for a {self.lattice_type} lattice; leave it null"
            )
        return self

    def bind(self, geometry: GeometryConfig) -> None:
        """Take the run's detector (writer.geometry): PipelineConfig calls this on validation,
        so the frames, the evaluation and the CrystFEL geometry file share one detector."""
        self._detector = geometry

    @property
    def detector(self) -> GeometryConfig:
        """The bound detector geometry; an error when the section was built outside a
        PipelineConfig and nobody bound one (a default detector would give wrong spots)."""
        if self._detector is None:
            raise ValueError(
                "source.random.crystal has no detector: build it inside a PipelineConfig "
                "(writer.geometry) or call bind(geometry)"
            )
        return self._detector

    def cell_file(self) -> str:
        """The cell as a CrystFEL unit cell file (the format of cell-utils.c write_cell)."""
        a, b, c, al, be, ga = self.cell.parameters()
        lines = ["CrystFEL unit cell file version 1.0", "", f"lattice_type = {self.lattice_type}"]
        if self.unique_axis is not None:
            lines.append(f"unique_axis = {self.unique_axis}")
        lines += [f"centering = {self.centering}", ""]
        lines += [f"{k} = {v:.2f} A" for k, v in (("a", a), ("b", b), ("c", c))]
        lines += [f"{k} = {v:.2f} deg" for k, v in (("al", al), ("be", be), ("ga", ga))]
        return "\n".join(lines) + "\n"


def write_cell_file(crystal: CrystalConfig | None, output_dir: Path, prefix: str) -> Path | None:
    """A crystal run's CrystFEL cell file, `<prefix>.cell` next to the geometry file the
    writers put in `output_dir` (indexamajig -p); None when the source draws no crystal."""
    if crystal is None:
        return None
    path = Path(output_dir) / f"{prefix}.cell"
    path.write_text(crystal.cell_file())
    return path


def wavelength_angstrom(photon_energy_ev: float) -> float:
    """Photon wavelength in angstrom (hc = 12398.42 eV A)."""
    return 12398.419843320026 / photon_energy_ev
