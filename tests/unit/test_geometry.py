"""The CrystFEL geometry file, read back the way CrystFEL 0.12 reads it.

`read_geometry` is a small model of CrystFEL's geometry parser (libcrystfel datatemplate.c,
as described in crystfel_geometry(5) and ../shared/reference/cxi-crystfel.md): `key = value`
lines, `;` starts a comment, `panel/key` sets a panel property, a key without a panel is either
a top-level property (clen, photon_energy, peak_list, group_...) or a default for the panels
defined AFTER it. It reports what CrystFEL rejects: a missing camera length or wavelength, a
panel without its pixel range, fs/ss directions, corner, res or gain, dimensions without fs
after ss, `pN/clen`, and defaults that no panel follows. It does not model masks, bad regions
or reading the data; CrystFEL itself is not available here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pytest

from peaknet_pipeline.config import ConfigError, WriterConfig, load_config
from peaknet_pipeline.config.geometry import GeometryConfig
from peaknet_pipeline.records import Batch, Result
from peaknet_pipeline.writer import CxiSeries, Rows, WriterStage, crystfel_geometry, find_peaks

TOP_LEVEL = {
    "clen",
    "photon_energy",
    "wavelength",
    "electron_voltage",
    "peak_list",
    "peak_list_type",
    "bandwidth",
    "detector_shift_x",
    "detector_shift_y",
}
PANEL_KEYS = {
    "min_fs",
    "max_fs",
    "min_ss",
    "max_ss",
    "corner_x",
    "corner_y",
    "fs",
    "ss",
    "res",
    "adu_per_eV",
    "adu_per_photon",
    "data",
    "coffset",
    "max_adu",
    "no_index",
    "mask_edge_pixels",
}
REQUIRED_PER_PANEL = ("min_fs", "max_fs", "min_ss", "max_ss", "fs", "ss", "corner_x", "corner_y")


def _panel_key(key: str) -> bool:
    return key in PANEL_KEYS or re.fullmatch(r"dim\d+", key) is not None


@dataclass
class Geometry:
    top: dict[str, str] = field(default_factory=dict)
    panels: dict[str, dict[str, str]] = field(default_factory=dict)
    late_globals: list[str] = field(default_factory=list)  # defaults after the first panel
    problems: list[str] = field(default_factory=list)


def read_geometry(text: str) -> Geometry:
    """Statements of a geometry file as CrystFEL reads them, and what it would reject."""
    g, defaults, unused_defaults = Geometry(), {}, False
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(";", 1)[0].strip()
        if not line:
            continue
        if "=" not in line:
            g.problems.append(f"line {number}: bad line {line!r}")
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        if "/" not in key:
            if key in TOP_LEVEL or key.startswith("group_"):
                g.top[key] = value
            elif _panel_key(key):
                defaults[key], unused_defaults = value, True
                if g.panels:
                    g.late_globals.append(key)
            else:
                g.problems.append(f"line {number}: unrecognised top-level {key!r}")
            continue
        name, prop = key.split("/", 1)
        if name not in g.panels:
            g.panels[name], unused_defaults = dict(defaults), False
        if prop == "clen":
            g.problems.append(f"{key}: 'clen' is a top-level property")
        elif not _panel_key(prop):
            g.problems.append(f"{key}: unrecognised field")
        g.panels[name][prop] = value
    if unused_defaults:
        g.problems.append("statements at the end have no effect (no panel follows them)")
    _check(g)
    return g


def _check(g: Geometry) -> None:
    if "clen" not in g.top:
        g.problems.append("Geometry file must specify the camera length")
    if not {"photon_energy", "wavelength", "electron_voltage"} & set(g.top):
        g.problems.append("Geometry file must specify the wavelength")
    if not g.panels:
        g.problems.append("No panel descriptions in geometry file")
    for name, p in g.panels.items():
        for key in REQUIRED_PER_PANEL + ("res",):
            if key not in p:
                g.problems.append(f"{name}: no {key}")
        if "adu_per_eV" not in p and "adu_per_photon" not in p:
            g.problems.append(f"{name}: no adu_per_eV or adu_per_photon")
        dims = {v: int(k[3:]) for k, v in p.items() if re.fullmatch(r"dim\d+", k)}
        dims = dims or {"ss": 0, "fs": 1}
        if "fs" not in dims or "ss" not in dims or dims["ss"] >= dims["fs"]:
            g.problems.append(f"{name}: dimensions need ss before fs, got {dims}")


def direction(text: str) -> np.ndarray:
    """A CrystFEL direction as a vector: terms split on their signs, as CrystFEL does."""
    text = text.replace(" ", "")
    text = text if text[:1] in "+-" else "+" + text
    vec = {"x": 0.0, "y": 0.0, "z": 0.0}
    for sign, size, axis in re.findall(r"([+-])([\d.]*)([xyz])", text):
        vec[axis] += (-1 if sign == "-" else 1) * (float(size) if size else 1.0)
    return np.array([vec["x"], vec["y"]])


def lab(panel: dict[str, str], fs: float, ss: float) -> np.ndarray:
    """Lab (x, y) in pixels of the point (fs, ss) of a panel, measured from its corner."""
    corner = np.array([float(panel["corner_x"]), float(panel["corner_y"])])
    return corner + fs * direction(panel["fs"]) + ss * direction(panel["ss"])


def beam_in_slab(panel: dict[str, str]) -> np.ndarray:
    """(fs, ss) of the point of the panel's data where the beam (lab 0, 0) falls."""
    basis = np.column_stack([direction(panel["fs"]), direction(panel["ss"])])
    local = np.linalg.solve(basis, -np.array([float(panel["corner_x"]), float(panel["corner_y"])]))
    return local + [int(panel["min_fs"]), int(panel["min_ss"])]


# -- the file the writer writes ----------------------------------------------------------------
def test_the_demo_geometry_file_is_complete_for_crystfel(tmp_path):
    """The demo's frames (one 256 x 256 panel) with the default config: nothing to edit."""
    stage = WriterStage(WriterConfig(images="none", min_peaks=0), str(tmp_path), 0)
    images = np.ones((1, 1, 256, 256), np.float32)
    masks = np.zeros(images.shape, np.uint8)
    masks[0, 0, 10, 10] = 1
    batch = Batch.describe(images, {"event_id": np.arange(1)}, "random-0", 0)
    stage.process(Result(batch, "mask", masks.shape, "|u1", "infer-0"), images, masks)
    stage.close()
    g = read_geometry((tmp_path / "peaknet.geom").read_text())
    assert g.problems == [] and g.late_globals == []
    assert g.top["clen"] == "0.1 m"
    assert g.top["photon_energy"] == "/LCLS/photon_energy_eV eV"
    assert (g.top["peak_list"], g.top["peak_list_type"]) == ("/entry_1/result_1", "cxi")
    [(name, p0)] = g.panels.items()
    assert name == "p0" and float(p0["res"]) == pytest.approx(1e4)
    assert float(p0["adu_per_photon"]) == 1.0
    assert p0["data"] == "/entry_1/data_1/data"
    assert (p0["dim0"], p0["dim1"], p0["dim2"]) == ("%", "ss", "fs")
    assert [int(p0[k]) for k in ("min_fs", "max_fs", "min_ss", "max_ss")] == [0, 255, 0, 255]
    np.testing.assert_allclose(beam_in_slab(p0), [128, 128])  # the frame centre


def test_every_global_comes_before_the_first_panel():
    text = crystfel_geometry(GeometryConfig(), (1, 32, 32))
    lines = text.splitlines()
    first_panel = next(i for i, line in enumerate(lines) if line.startswith("p0/"))
    statements = [line.split(";")[0].split("=")[0].strip() for line in lines[first_panel:]]
    assert not [key for key in statements if key and "/" not in key and key in PANEL_KEYS]
    assert read_geometry(text).problems == []
    # The reader catches what CrystFEL rejects, so a clean result above means something:
    res = next(line for line in lines if line.startswith("res ="))
    moved = read_geometry("\n".join([line for line in lines if line != res] + [res]))
    assert moved.late_globals == ["res"]
    assert "p0: no res" in moved.problems and any("no effect" in p for p in moved.problems)
    per_panel = read_geometry(text.replace("clen =", "p0/clen ="))
    assert "p0/clen: 'clen' is a top-level property" in per_panel.problems
    assert "Geometry file must specify the camera length" in per_panel.problems


def test_default_multi_panel_layout_is_the_slab_as_one_image():
    c, h, w = 4, 8, 10
    g = read_geometry(crystfel_geometry(GeometryConfig(), (c, h, w)))
    assert g.problems == [] and g.late_globals == []
    assert list(g.panels) == ["p0", "p1", "p2", "p3"]
    assert g.top["group_all"] == "p0,p1,p2,p3"
    for i, p in enumerate(g.panels.values()):
        assert [int(p[k]) for k in ("min_fs", "max_fs", "min_ss", "max_ss")] == [
            0,
            w - 1,
            i * h,
            (i + 1) * h - 1,
        ]
        np.testing.assert_allclose(beam_in_slab(p), [w / 2, c * h / 2])  # one beam for all
    panels = list(g.panels.values())
    for upper, lower in zip(panels, panels[1:]):  # each panel continues where the last ends
        np.testing.assert_allclose(lab(upper, 0, h), lab(lower, 0, 0))


def test_configured_beam_centre_and_panels_are_placed_as_given():
    single = GeometryConfig(beam_center_fs_px=100.5, beam_center_ss_px=30.0)
    [p0] = read_geometry(crystfel_geometry(single, (1, 64, 128))).panels.values()
    np.testing.assert_allclose(beam_in_slab(p0), [100.5, 30.0])

    rotated = GeometryConfig(
        panels=[
            {
                "corner_x_px": -200,
                "corner_y_px": 12.5,
                "fs_direction": "-1.0y",
                "ss_direction": "+x",
            },
            {"corner_x_px": 15, "corner_y_px": 7, "fs_direction": "+0.5x -0.866y"},
        ]
    )
    g = read_geometry(crystfel_geometry(rotated, (2, 16, 24)))
    assert g.problems == [] and g.late_globals == []
    p0, p1 = g.panels.values()
    np.testing.assert_allclose(lab(p0, 0, 0), [-200, 12.5])
    np.testing.assert_allclose(direction(p0["fs"]), [0, -1])
    np.testing.assert_allclose(direction(p0["ss"]), [1, 0])
    np.testing.assert_allclose(direction(p1["fs"]), [0.5, -0.866])
    np.testing.assert_allclose(direction(p1["ss"]), [0, 1])  # the default
    assert [int(p1[k]) for k in ("min_ss", "max_ss")] == [16, 31]


def test_adu_per_ev_alone_replaces_the_default_gain():
    geometry = load_config(None, ["writer.geometry.adu_per_ev=0.0033"]).writer.geometry
    [p0] = read_geometry(crystfel_geometry(geometry, (1, 8, 8))).panels.values()
    assert p0["adu_per_eV"] == "0.0033" and "adu_per_photon" not in p0


def test_panels_that_do_not_fit_the_frames_leave_the_cxi_files_and_say_why(tmp_path):
    geometry = GeometryConfig(panels=[{"corner_x_px": 0, "corner_y_px": 0}])
    with pytest.raises(ValueError, match=r"writer.geometry.panels lists 1 panels.*have 2"):
        crystfel_geometry(geometry, (2, 8, 8))
    series = CxiSeries(str(tmp_path), "peaknet", 0, 10, 4, "none", geometry=geometry)
    image = np.ones((1, 2, 8, 8), np.float32)
    peaks = find_peaks(image[0], np.ones_like(image[0], dtype=np.uint8))
    rows = Rows([peaks], np.array([True]), {}, image, "src", 0, np.array([0], np.int32))
    series.write(rows)
    series.close_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["peaknet-w00-0000.cxi"]
    assert series.notes["geometry_not_written"] == 1  # the row written without a geometry


# -- the config section ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["writer.geometry.adu_per_ev=0.003", "writer.geometry.adu_per_photon=2"],
            "writer.geometry: Value error, adu_per_photon, adu_per_ev: set exactly one",
        ),
        (["writer.geometry.adu_per_photon=null"], "adu_per_photon, adu_per_ev: set exactly one"),
        (["writer.geometry.pixel_size_m=75"], "writer.geometry.pixel_size_m: Input should be less"),
        (["writer.geometry.camera_length_m=0"], "writer.geometry.camera_length_m: Input should"),
        (
            ["writer.geometry.panels=[{corner_x_px: 0, corner_y_px: 0, fs_direction: 1x 1y}]"],
            "writer.geometry.panels.0.fs_direction: Value error, '1x 1y' is not a direction",
        ),
        (
            ["writer.geometry.panels=[{corner_x_px: 0, corner_y_px: 0, ss_direction: -2x}]"],
            "are parallel in the detector plane",
        ),
        (
            ["writer.geometry.panels=[{corner_x_px: 0}]"],
            "writer.geometry.panels.0.corner_y_px: Field required",
        ),
        (
            [
                "writer.geometry.beam_center_fs_px=10",
                "writer.geometry.panels=[{corner_x_px: 0, corner_y_px: 0}]",
            ],
            "beam_center_fs_px: applies to the default layout only",
        ),
        (
            ["writer.geometry.pixel_sise_m=1e-4"],
            "writer.geometry.pixel_sise_m: unknown key",
        ),
        (
            [
                "source.random.frame_shape=[2, 64, 64]",
                "writer.geometry.panels=[{corner_x_px: 0, corner_y_px: 0}]",
            ],
            "writer.geometry.panels lists 1 panels, but frames of shape [2, 64, 64] have 2",
        ),
    ],
)
def test_geometry_config_errors_name_the_field(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert message in str(err.value)


def test_geometry_defaults_are_described_as_placeholders():
    fields = GeometryConfig.model_fields
    for name in ("camera_length_m", "pixel_size_m", "adu_per_photon"):
        assert "placeholder" in fields[name].description
