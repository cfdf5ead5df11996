"""The crystal source's spots against the geometry itself (issue 24, item 1): each spot
recomputed here from its orientation and Miller indices by other formulas (Bragg's law and
the azimuth, the metric tensor, the Ewald construction from the pixel's own direction)."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest

from peaknet_pipeline.config import PipelineConfig, RandomSourceConfig, load_config
from peaknet_pipeline.evaluate import injected_slab_peaks
from peaknet_pipeline.sources.crystal import crystal_spots, lattice, orientation, reciprocal_basis
from peaknet_pipeline.sources.random import FrameGenerator, peak_positions

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "configs" / "crystal.yaml"
EVENTS = range(24)


@pytest.fixture(scope="module")
def example() -> PipelineConfig:
    return load_config(EXAMPLE)


def with_crystal(example: PipelineConfig, frame_shape: list[int], **crystal) -> PipelineConfig:
    data = example.model_dump()
    data["source"]["random"]["frame_shape"] = frame_shape
    data["source"]["random"]["crystal"].update(crystal)
    if frame_shape[0] > 1:  # the default layout centres the stacked panels on the beam
        data["writer"]["geometry"].update(beam_center_fs_px=None, beam_center_ss_px=None)
    return PipelineConfig.model_validate(data)


def lab_spots(cfg: PipelineConfig, event: int) -> np.ndarray:
    """Where each spot should be, in pixel-index (row, col) of a single panel, by Bragg's law:
    2 theta from |q| and the spot's wavelength, azimuth from q, r = clen tan(2 theta)."""
    src, geo = cfg.source.random, cfg.writer.geometry
    spots = crystal_spots(src, event)
    a, b, c = (src.crystal.cell.a, src.crystal.cell.b, src.crystal.cell.c)  # tetragonal: axes
    q = (spots.hkl / np.array([a, b, c])) @ spots.rotation.T  # a* = x / a, ...
    k = -np.sum(q * q, axis=1) / (2 * q[:, 2])
    two_theta = 2 * np.arcsin(np.linalg.norm(q, axis=1) / (2 * k))
    r = geo.camera_length_m / geo.pixel_size_m * np.tan(two_theta)
    phi = np.arctan2(q[:, 1], q[:, 0])
    col = geo.beam_center_fs_px + r * np.cos(phi) - 0.5
    row = geo.beam_center_ss_px + r * np.sin(phi) - 0.5
    return np.column_stack([row, col])


def test_spots_lie_where_the_projection_of_the_lattice_says(example):
    for event in EVENTS:
        spots = crystal_spots(example.source.random, event)
        assert len(spots.positions) and (spots.positions[:, 0] == 0).all()
        np.testing.assert_allclose(spots.positions[:, 1:], lab_spots(example, event), atol=1e-6)


def test_the_ewald_condition_holds_within_the_bandwidth_for_every_spot(example):
    src, geo = example.source.random, example.writer.geometry
    k0 = src.photon_energy_ev / 12398.419843320026
    half = src.crystal.bandwidth / 2
    basis = reciprocal_basis(src.crystal.cell.parameters())
    for event in EVENTS:
        spots = crystal_spots(src, event)
        q = spots.hkl @ basis @ spots.rotation.T
        # The pixel's direction from the sample; k_out = k u, so q = k (u - z).
        x = spots.positions[:, 2] + 0.5 - geo.beam_center_fs_px
        y = spots.positions[:, 1] + 0.5 - geo.beam_center_ss_px
        u = np.column_stack([x, y, np.full_like(x, geo.camera_length_m / geo.pixel_size_m)])
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        d = u - np.array([0.0, 0.0, 1.0])
        k = np.sum(q * d, axis=1) / np.sum(d * d, axis=1)
        np.testing.assert_allclose(q, k[:, None] * d, atol=1e-9)
        assert (np.abs(k / k0 - 1) <= half + 1e-12).all()
        # Spot heights fall off with resolution: Wilson exp(-B s^2 / 2).
        s2 = np.sum(q * q, axis=1)
        expected = src.peak_amplitude * np.exp(-src.crystal.wilson_b * s2 / 2)
        np.testing.assert_allclose(spots.amplitudes, expected)
        assert (1 / np.sqrt(s2) >= src.crystal.resolution_limit_angstrom).all()


def test_the_reciprocal_basis_gives_the_metric_tensors_d_spacings():
    cell = (51.0, 62.0, 73.0, 81.0, 97.0, 104.0)  # triclinic
    a, b, c = cell[:3]
    ca, cb, cg = (math.cos(math.radians(x)) for x in cell[3:])
    metric = np.array(
        [
            [a * a, a * b * cg, a * c * cb],
            [a * b * cg, b * b, b * c * ca],
            [a * c * cb, b * c * ca, c * c],
        ]
    )
    hkl, q = lattice(cell, "P", 6.0)
    inv_d2 = np.einsum("ij,jk,ik->i", hkl, np.linalg.inv(metric), hkl)
    np.testing.assert_allclose(np.sum(q * q, axis=1), inv_d2, rtol=1e-10)
    assert (inv_d2 <= 1 / 36 + 1e-12).all() and len(hkl) > 100


@pytest.mark.parametrize("frame_shape", [[1, 512, 512], [2, 256, 512]], ids=["one", "two"])
def test_no_spot_lies_outside_the_frame(example, frame_shape):
    cfg = with_crystal(example, frame_shape)
    src = cfg.source.random
    margin = math.ceil(3 * src.peak_sigma_px) + 1
    panels = set()
    for event in EVENTS:
        positions = peak_positions(src, event)
        panels |= set(positions[:, 0].astype(int))
        assert (positions[:, 1:] >= margin).all()
        assert (positions[:, 1] <= frame_shape[1] - 1 - margin).all()
        assert (positions[:, 2] <= frame_shape[2] - 1 - margin).all()
    assert panels == set(range(frame_shape[0]))


def test_stacked_panels_see_the_slab_the_writers_geometry_describes(example):
    """Two 256-row panels in the default layout are the 512-row slab cut in two: the spots
    (in slab rows) are the single panel's, less those too near the cut to be whole."""
    one, two = with_crystal(example, [1, 512, 512]), with_crystal(example, [2, 256, 512])
    for event in EVENTS:
        whole = injected_slab_peaks(one.source.random, event)
        split = injected_slab_peaks(two.source.random, event)
        near_cut = np.abs(whole[:, 0] + 0.5 - 256) < 6
        assert len(split) >= (~near_cut).sum() - 1  # a kept neighbour may fall to the cut
        assert {tuple(p) for p in np.round(split, 6)} <= {tuple(p) for p in np.round(whole, 6)}


@pytest.mark.parametrize(
    "centering, rule",
    [
        ("I", lambda h, k, l_: (h + k + l_) % 2 == 0),
        ("F", lambda h, k, l_: ((h + k) % 2 == 0) & ((k + l_) % 2 == 0) & ((h + l_) % 2 == 0)),
        ("C", lambda h, k, l_: (h + k) % 2 == 0),
        ("A", lambda h, k, l_: (k + l_) % 2 == 0),
    ],
)
def test_absences_obey_the_centering(example, centering, rule):
    cfg = with_crystal(example, [1, 512, 512], centering=centering, bandwidth=0.1)
    primitive = lattice(cfg.source.random.crystal.cell.parameters(), "P", 2.5)[0]
    assert not rule(*primitive.T).all()  # the test would see a forbidden reflection
    seen = 0
    for event in EVENTS:
        hkl = crystal_spots(cfg.source.random, event).hkl
        assert rule(*hkl.T).all(), centering
        seen += len(hkl)
    assert seen > 100


def test_the_same_event_id_gives_the_same_frame(example):
    src = pickle.loads(pickle.dumps(example)).source.random  # as Ray ships it to an actor
    frames = FrameGenerator(src).batch(np.array([5, 5, 6]))
    assert np.array_equal(frames[0], frames[1]) and not np.array_equal(frames[0], frames[2])
    again = crystal_spots(example.source.random, 5)
    for mine, theirs in zip(crystal_spots(src, 5), again):
        assert np.array_equal(mine, theirs)
    assert not np.allclose(orientation(src.seed, 5), orientation(src.seed, 6))
    truth = injected_slab_peaks(src, 5)  # what the evaluation compares with
    assert np.array_equal(truth, again.positions[:, 1:])
    row, col = np.rint(truth[0]).astype(int)
    assert frames[0, 0, row, col] > src.background_mean + 0.3 * src.peak_amplitude


def test_orientations_are_rotations_spread_over_all_directions():
    rotations = np.stack([orientation(0, e) for e in range(3000)])
    eye = np.einsum("nij,nkj->nik", rotations, rotations)
    np.testing.assert_allclose(eye, np.broadcast_to(np.eye(3), eye.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(rotations), 1.0)
    assert np.abs(rotations.mean(axis=0)).max() < 0.05  # E[R] = 0 for the uniform measure


def test_the_example_gives_30_to_150_spots_a_frame(example):
    counts = [len(peak_positions(example.source.random, e)) for e in range(64)]
    assert 30 <= min(counts) and max(counts) <= 150, counts


def test_a_crystal_without_a_detector_is_an_error():
    src = RandomSourceConfig.model_validate(
        {"crystal": {"cell": {"a": 50, "b": 50, "c": 50}, "lattice_type": "cubic"}}
    )
    with pytest.raises(ValueError, match="no detector"):
        peak_positions(src, 0)
    with pytest.raises(ValueError, match="unique_axis"):
        RandomSourceConfig.model_validate(
            {"crystal": {"cell": {"a": 50, "b": 50, "c": 30}, "lattice_type": "tetragonal"}}
        )


def test_a_crystal_run_writes_its_cell_file_next_to_the_geometry(tmp_path):
    # indexamajig needs the cell with -p: a crystal run leaves <prefix>.cell in its directory,
    # equal to the example's shipped cell file; a run without a crystal writes none.
    from peaknet_pipeline.config.crystal import write_cell_file

    cfg = load_config(EXAMPLE)
    path = write_cell_file(cfg.source.random.crystal, tmp_path, cfg.writer.file_prefix)
    assert path == tmp_path / "peaknet.cell"
    assert path.read_text() == (EXAMPLE.parent / "lysozyme.cell").read_text()
    assert write_cell_file(None, tmp_path / "none", "peaknet") is None
    assert not (tmp_path / "none").exists()
