"""The pure pieces of inference, without Ray: padding geometry and the staging copy, cropping
back, normalisation (statistics exclude the pad), the engine's forward/argmax path (multi-panel,
logits, autocast), staging slots, the batch checks with their reasons, and the compute loop's
issue/finish order (the GPU path keeps a batch in flight; the CPU tests cannot reach it)."""

from __future__ import annotations

import queue
import threading

import numpy as np
import pytest
import torch

from helpers import SMALL_MODEL
from peaknet_pipeline.config import ModelConfig
from peaknet_pipeline.inference.checks import REASONS, check_batch, check_record
from peaknet_pipeline.inference.engine import Engine, normalize_, to_output
from peaknet_pipeline.inference.geometry import (
    geometry,
    output_array,
    pad_into,
    padded_side,
)
from peaknet_pipeline.inference.runners import CpuRunner, Slot, pump
from peaknet_pipeline.model import build_model
from peaknet_pipeline.queue import EndOfStream
from peaknet_pipeline.records import Batch


def staged(images: np.ndarray, mode: str) -> tuple[np.ndarray, object]:
    geo = geometry(images.shape, mode)
    buf = np.full((geo.n, geo.padded_height, geo.padded_width), np.nan, np.float32)
    pad_into(buf, images, geo)
    return buf, geo


# -- geometry, padding, cropping ---------------------------------------------------------------
def test_padded_side_rounds_up_to_32():
    assert [padded_side(n) for n in (1, 31, 32, 33, 48, 64, 80, 1920)] == [
        32,
        32,
        32,
        64,
        64,
        64,
        96,
        1920,
    ]


def test_geometry_offsets_per_mode():
    center = geometry((2, 1, 48, 80), "center")
    assert (center.padded_height, center.padded_width, center.top, center.left) == (64, 96, 8, 8)
    odd = geometry((1, 1, 45, 70), "center")
    assert (odd.padded_height, odd.padded_width, odd.top, odd.left) == (64, 96, 9, 13)
    corner = geometry((2, 3, 48, 80), "bottom_right")
    assert (corner.top, corner.left, corner.n, corner.input_shape) == (0, 0, 6, (6, 1, 64, 96))
    exact = geometry((1, 1, 64, 96), "none")
    assert (exact.padded_height, exact.padded_width, exact.top, exact.left) == (64, 96, 0, 0)


def test_geometry_without_padding_refuses_other_sizes():
    with pytest.raises(ValueError, match=r"48x80 is not a multiple of 32.*pad_mode is none"):
        geometry((1, 1, 48, 80), "none")


@pytest.mark.parametrize("mode", ["center", "bottom_right"])
def test_pad_and_crop_round_trip(mode):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 1000, size=(3, 2, 45, 70)).astype(np.uint16)
    buf, geo = staged(images, mode)
    assert buf.dtype == np.float32
    inner = buf[:, geo.rows, geo.cols].reshape(images.shape)
    np.testing.assert_array_equal(inner, images.astype(np.float32))
    border = np.ones(buf.shape, bool)
    border[:, geo.rows, geo.cols] = False
    assert border.any() and (buf[border] == 0).all()  # the NaN garbage of a reused buffer is gone


def test_output_array_shapes_per_event_and_panel():
    geo = geometry((2, 3, 48, 80), "center")
    assert output_array(np.zeros((6, 48, 80), np.uint8), geo, "mask").shape == (2, 3, 48, 80)
    assert output_array(np.zeros((6, 2, 48, 80), np.float32), geo, "logits").shape == (
        2,
        3,
        2,
        48,
        80,
    )


# -- normalisation ---------------------------------------------------------------------------------
def test_normalisation_uses_real_pixels_only():
    rng = np.random.default_rng(1)
    images = (rng.normal(100, 7, size=(2, 1, 45, 70))).astype(np.float32)
    results = {}
    for mode in ("center", "bottom_right"):
        buf, geo = staged(images, mode)
        x = normalize_(torch.from_numpy(buf).unsqueeze(1), geo)
        real = x[:, 0, geo.rows, geo.cols].numpy()
        results[mode] = real
        for i in range(2):
            expected = (images[i, 0] - images[i, 0].mean()) / np.sqrt(images[i, 0].var() + 1e-6)
            np.testing.assert_allclose(real[i], expected, rtol=1e-4, atol=1e-4)
        # the pad stays raw zeros, expressed in the image's normalised units
        pad = x[:, 0, -1, -1].numpy() if mode == "bottom_right" else x[:, 0, 0, 0].numpy()
        expected_pad = -images.mean(axis=(1, 2, 3)) / np.sqrt(images.var(axis=(1, 2, 3)) + 1e-6)
        np.testing.assert_allclose(pad, expected_pad, rtol=1e-4)
    # So a frame's normalised pixels do not depend on where (or how much) it was padded.
    np.testing.assert_allclose(results["center"], results["bottom_right"], rtol=1e-5, atol=1e-5)


def test_normalisation_of_a_flat_image_is_finite():
    geo = geometry((1, 1, 32, 32), "none")
    x = normalize_(torch.full((1, 1, 32, 32), 7.0), geo)
    assert torch.isfinite(x).all() and (x == 0).all()


# -- engine ----------------------------------------------------------------------------------------
def test_to_output_crops_mask_and_logits():
    geo = geometry((1, 1, 48, 80), "center")
    logits = torch.zeros(1, 2, 64, 96)
    logits[0, 1, geo.top + 5, geo.left + 7] = 1.0
    mask = to_output(logits, geo, "mask")
    assert mask.dtype == torch.uint8 and mask.shape == (1, 48, 80)
    assert mask.nonzero().tolist() == [[0, 5, 7]]
    cropped = to_output(logits, geo, "logits")
    assert cropped.dtype == torch.float32 and cropped.shape == (1, 2, 48, 80)
    assert cropped[0, 1, 5, 7] == 1.0


@pytest.mark.parametrize("mode", ["center", "bottom_right"])
def test_threshold_engine_keeps_peaks_in_frame_coordinates(mode):
    images = np.zeros((2, 2, 48, 80), np.float32)  # two events, two panels each
    peaks = [(0, 0, 0, 0), (0, 1, 47, 79), (1, 0, 20, 33), (1, 1, 5, 70)]
    for p in peaks:
        images[p] = 500.0
    engine = Engine(build_model(ModelConfig(kind="threshold", threshold=50.0)), normalize=True)
    assert engine.normalize is False  # the oracle works on raw values
    buf, geo = staged(images, mode)
    out = output_array(engine.compute(torch.from_numpy(buf).unsqueeze(1), geo).numpy(), geo, "mask")
    assert out.shape == (2, 2, 48, 80) and out.dtype == np.uint8
    assert sorted(map(tuple, np.argwhere(out))) == sorted(peaks)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_peaknet_engine_runs_each_precision(precision):
    engine = Engine(build_model(ModelConfig(**SMALL_MODEL)), precision=precision, output="logits")
    images = np.random.default_rng(2).normal(size=(2, 1, 48, 80)).astype(np.float32)
    buf, geo = staged(images, "center")
    out = engine.compute(torch.from_numpy(buf).unsqueeze(1), geo)
    assert out.shape == (2, 2, 48, 80) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_channels_last_gives_the_same_mask():
    model = build_model(ModelConfig(**SMALL_MODEL))
    images = np.random.default_rng(3).normal(size=(2, 1, 64, 64)).astype(np.float32)
    outs = []
    for channels_last in (False, True):
        buf, geo = staged(images, "none")
        engine = Engine(model, output="logits", channels_last=channels_last)
        outs.append(engine.compute(torch.from_numpy(buf).unsqueeze(1), geo))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-4)


def test_cpu_slot_grows_and_is_reused():
    runner = CpuRunner(Engine(build_model(ModelConfig(kind="threshold", threshold=0.5))))
    slot: Slot = runner.new_slot(0)
    for shape in [(1, 1, 32, 32), (4, 2, 48, 80), (1, 1, 40, 40)]:
        images = np.ones(shape, np.float32)
        geo = geometry(shape, "center")
        slot.stage(images, geo)
        runner.issue(slot)
        out = runner.finish(slot)
        assert out.shape == shape and (out == 1).all()
    assert slot.host.numel() == 8 * 64 * 96  # grown once to the largest batch, then reused


# -- checks ----------------------------------------------------------------------------------------
def record_for(images: np.ndarray, meta=None) -> Batch:
    b = images.shape[0] if images.ndim else 0
    meta = {"event_id": np.arange(b)} if meta is None else meta
    return Batch("src", 7, tuple(images.shape), images.dtype.str, meta=meta, images="ref")


@pytest.mark.parametrize(
    "images,frame_shape,pad_mode,reason",
    [
        (np.zeros((2, 1, 64, 64), np.float32), [1, 64, 64], "center", None),
        (np.zeros((2, 64, 64), np.float32), None, "center", "rank"),
        (np.zeros((2, 1, 64, 64), "U1"), None, "center", "dtype"),
        (np.zeros((2, 1, 64, 64), np.complex64), None, "center", "dtype"),
        (np.zeros((2, 0, 64, 64), np.float32), None, "center", "channels"),
        (np.zeros((0, 1, 64, 64), np.float32), None, "center", "empty"),
        (np.zeros((2, 1, 32, 64), np.float32), [1, 64, 64], "center", "frame_shape"),
        (np.zeros((2, 2, 64, 64), np.float32), [1, 64, 64], "center", "frame_shape"),
        (np.zeros((2, 1, 48, 80), np.float32), None, "none", "not_multiple_of_32"),
        (np.zeros((2, 1, 48, 80), np.uint16), None, "center", None),
    ],
)
def test_check_batch_reasons(images, frame_shape, pad_mode, reason):
    problem = check_batch(record_for(images), images, frame_shape, pad_mode)
    assert (problem[0] if problem else None) == reason
    if problem:
        assert problem[0] in REASONS and "src#7" in problem[1]


def test_check_batch_metadata_and_declared_shape():
    images = np.zeros((2, 1, 64, 64), np.float32)
    bad_meta = record_for(images, meta={"event_id": np.arange(3)})
    assert check_batch(bad_meta, images, None, "center")[0] == "metadata"
    lying = record_for(np.zeros((3, 1, 64, 64), np.float32))
    assert check_batch(lying, images, None, "center")[0] == "shape_mismatch"


def test_check_record():
    assert check_record({"images": 1})[0] == "record"
    no_ref = Batch("src", 1, (1, 1, 32, 32), "<f4")
    assert check_record(no_ref)[0] == "record"
    assert check_record(record_for(np.zeros((1, 1, 32, 32), np.float32))) is None


# -- the compute loop's issue/finish order -----------------------------------------------------------
def run_pump(slots: list, max_in_flight: int, refuse=()) -> list[tuple[str, int]]:
    ready: queue.Queue = queue.Queue()
    for s in slots:
        ready.put(s)
    ready.put(EndOfStream())
    log: list[tuple[str, int]] = []

    def issue(s):
        log.append(("issue", s))
        return s not in refuse

    pump(ready, max_in_flight, issue, lambda s: log.append(("finish", s)))
    return log


@pytest.mark.parametrize("max_in_flight", [0, 1, 2])
def test_pump_finishes_every_issued_slot_once_in_order(max_in_flight):
    log = run_pump(list(range(7)), max_in_flight)
    assert [s for op, s in log if op == "finish"] == list(range(7))  # the last ones too
    for i in range(7 - max_in_flight):  # slot i is held until slot i + max_in_flight is issued
        assert log.index(("issue", i + max_in_flight)) < log.index(("finish", i))


def test_pump_does_not_finish_refused_slots():
    log = run_pump([0, 1, 2, 3], 1, refuse={2})
    assert [s for op, s in log if op == "finish"] == [0, 1, 3]


def test_pump_hands_out_the_last_batch_when_nothing_new_is_staged():
    ready: queue.Queue = queue.Queue()
    finished = threading.Event()
    worker = threading.Thread(
        target=pump, args=(ready, 1, lambda s: True, lambda s: finished.set()), daemon=True
    )
    worker.start()
    ready.put("only")
    assert finished.wait(10), "a queued batch was held back waiting for a successor"
    ready.put(EndOfStream())
    worker.join(10)
    assert not worker.is_alive()


def test_the_class_index_is_argmax_ties_and_nans_included():
    # Two classes are compared, not reduced (much faster on the CPU); the result must be
    # argmax's everywhere: ties go to class 0, a NaN class wins as argmax's first NaN does.
    from peaknet_pipeline.inference.engine import class_index
    from peaknet_pipeline.writer.peaks import masks_from_output

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 2, 17, 19, generator=generator)
    logits[0, 1, :4] = logits[0, 0, :4]  # ties
    nan = float("nan")
    logits[1, 0, 0, :3], logits[1, 1, 0, 2:5] = nan, nan  # NaN in one class, both, the other
    logits[2, :, 5, 5] = torch.tensor([float("inf"), float("inf")])
    expected = logits.argmax(dim=1).to(torch.uint8)
    assert torch.equal(class_index(logits), expected)
    assert torch.equal(class_index(logits.half()), logits.half().argmax(dim=1).to(torch.uint8))
    # NaN only among background logits: the CPU's short path (no NaN peak logit) must agree.
    background_nan = torch.randn(2, 2, 7, 9, generator=generator)
    background_nan[0, 0, 3, :4] = nan
    expected = background_nan.argmax(dim=1).to(torch.uint8)
    assert torch.equal(class_index(background_nan), expected)
    three = torch.randn(2, 3, 5, 5, generator=generator)
    assert torch.equal(class_index(three), three.argmax(dim=1).to(torch.uint8))
    # The writer's reading of logits output (B, C, K, H, W) agrees with the same rule.
    numpy_logits = logits.numpy()[:, None]
    masks = masks_from_output(numpy_logits, "logits")
    assert np.array_equal(masks, (numpy_logits.argmax(axis=2) == 1).astype(np.uint8))
