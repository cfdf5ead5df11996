"""A run with inference.peaks_on_device writes the same peaks per event as one without."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from runs import DriverThread, random_run

from peaknet_pipeline.evaluate import read_peak_lists

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _start(tmp_path: Path, run_id: str, on: bool) -> DriverThread:
    overrides = (
        f"inference.peaks_on_device={str(on).lower()}",
        "source.random.peaks_per_frame=6",
        "writer.min_peaks=4",
    )
    thread = DriverThread(random_run(tmp_path, run_id, 24, 0.0, overrides))
    thread.start()
    return thread


def test_peaks_on_device_write_the_same_peaks_as_the_writer_finds(
    ray_session, tmp_path, unique_name
):
    # The two runs side by side in the one Ray session (their start-up is most of the time).
    runs = {on: _start(tmp_path, f"{unique_name}-{on}", on) for on in (False, True)}
    report_off, report_on = (runs[on].finish() for on in (False, True))
    off, on = (
        read_peak_lists(sorted((tmp_path / f"{unique_name}-{flag}").glob("*.cxi")))
        for flag in (False, True)
    )
    assert off and sorted(on) == sorted(off)
    for event, peaks in off.items():
        np.testing.assert_allclose(on[event], peaks, rtol=0, atol=1e-6, err_msg=str(event))
    # the peaks did travel as lists: Q2 took far fewer bytes than the 64x64 masks
    sent_on, sent_off = (
        sum(a["bytes_out"] for a in r["inference"]) for r in (report_on, report_off)
    )
    assert sent_off == 24 * 64 * 64 and sent_on < sent_off / 4
