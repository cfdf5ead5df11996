"""Synthetic frames: reproducible peak positions, peaks where they are said to be."""

from __future__ import annotations

import math

import numpy as np
import pytest

from peaknet_pipeline.config import RandomSourceConfig
from peaknet_pipeline.sources.random import FrameGenerator, event_ids_for, peak_positions


def test_positions_are_a_function_of_seed_and_event():
    cfg = RandomSourceConfig(frame_shape=[2, 128, 96], peaks_per_frame=15)
    a = peak_positions(cfg, 17)
    assert np.array_equal(a, peak_positions(cfg, 17))
    assert not np.array_equal(a, peak_positions(cfg, 18))
    other_seed = cfg.model_copy(update={"seed": 1})
    assert not np.array_equal(a, peak_positions(other_seed, 17))


def test_positions_respect_panels_margins_and_separation():
    cfg = RandomSourceConfig(frame_shape=[2, 128, 96], peaks_per_frame=25, peak_sigma_px=1.5)
    margin = math.ceil(3 * cfg.peak_sigma_px) + 1
    for event in range(20):
        peaks = peak_positions(cfg, event)
        assert peaks.shape == (25, 3)
        assert set(peaks[:, 0]) <= {0, 1}
        assert np.all((peaks[:, 1] >= margin) & (peaks[:, 1] <= 128 - 1 - margin))
        assert np.all((peaks[:, 2] >= margin) & (peaks[:, 2] <= 96 - 1 - margin))
        for i in range(len(peaks)):
            for j in range(i):
                if peaks[i, 0] == peaks[j, 0]:
                    assert math.dist(peaks[i, 1:], peaks[j, 1:]) >= cfg.min_peak_separation_px


def test_frames_have_their_peaks_at_the_recorded_positions():
    cfg = RandomSourceConfig(frame_shape=[1, 96, 128], peaks_per_frame=10, background_mean=5)
    frames = FrameGenerator(cfg).batch(np.array([3, 4]))
    assert frames.shape == (2, 1, 96, 128) and frames.dtype == np.float32
    for frame, event in zip(frames, (3, 4)):
        for panel, row, col in peak_positions(cfg, event):
            r, c = int(round(row)), int(round(col))
            window = frame[int(panel), r - 1 : r + 2, c - 1 : c + 2]
            assert window.max() > cfg.peak_amplitude * 0.6 + cfg.background_mean
    # Away from the peaks the background stays near its mean.
    assert abs(np.median(frames) - cfg.background_mean) < 2


def test_frames_vary_between_events_and_repeat_for_the_same_event():
    gen = FrameGenerator(RandomSourceConfig(frame_shape=[1, 32, 32], pool_size=2))
    a, b = gen.batch(np.array([0, 1]))
    assert not np.array_equal(a, b)
    assert np.array_equal(gen.batch(np.array([5]))[0], gen.batch(np.array([5]))[0])


@pytest.mark.parametrize("dtype", ["float16", "uint16", "int32", "float64"])
def test_dtype(dtype):
    cfg = RandomSourceConfig(frame_shape=[1, 16, 16], dtype=dtype, peaks_per_frame=1)
    frames = FrameGenerator(cfg).batch(np.arange(2))
    assert frames.dtype == np.dtype(dtype)


def test_event_ids_are_split_between_actors():
    cfg = RandomSourceConfig(num_frames=10, num_actors=3)
    split = [list(event_ids_for(cfg, i)) for i in range(3)]
    assert sorted(sum(split, [])) == list(range(10))
    endless = event_ids_for(cfg.model_copy(update={"num_frames": 0}), 2)
    assert [next(endless) for _ in range(3)] == [2, 5, 8]


def test_frames_too_small_for_the_peaks_are_a_config_error():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="frame_shape .* too small .* peak_sigma_px"):
        RandomSourceConfig(frame_shape=[1, 8, 64], peaks_per_frame=3)
    tiny = RandomSourceConfig(frame_shape=[1, 4, 4], peaks_per_frame=0)
    assert FrameGenerator(tiny).batch(np.arange(2)).shape == (2, 1, 4, 4)
    assert peak_positions(tiny, 0).shape == (0, 3)
