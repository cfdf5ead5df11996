"""The live page's pure parts: the writer's accumulators (peaks per frame, peakogram, powder
pattern, newest hits only while watched), their merge across writers, the auto rule, and the
PNG encoder (decoded here with zlib, chunk by chunk, as a browser would)."""

from __future__ import annotations

import struct
import zlib
from types import SimpleNamespace

import numpy as np
import pytest

from peaknet_pipeline.config import PipelineConfig
from peaknet_pipeline.config.geometry import GeometryConfig
from peaknet_pipeline.monitor import live_png
from peaknet_pipeline.monitor.liveview import (
    HIT_EVERY_S,
    PEAK_BINS,
    RADIUS_BINS,
    WATCH_S,
    LiveView,
    live_page_on,
    merge_views,
)
from peaknet_pipeline.writer.peaks import PeakList


def decode_png(data: bytes) -> np.ndarray:
    """An 8-bit grey or RGB PNG with filter 0 rows, checked chunk by chunk (CRC included)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n : pos + 12 + n])
        assert crc == zlib.crc32(kind + body), kind
        chunks.append((kind, body))
        pos += 12 + n
    assert [k for k, _ in chunks][0] == b"IHDR" and chunks[-1] == (b"IEND", b"")
    w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert depth == 8 and interlace == 0 and ctype in (0, 2)
    raw = zlib.decompress(b"".join(b for k, b in chunks if k == b"IDAT"))
    ch = 3 if ctype == 2 else 1
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(h, 1 + w * ch)
    assert (rows[:, 0] == 0).all()
    return rows[:, 1:].reshape(h, w, ch) if ch == 3 else rows[:, 1:].reshape(h, w)


def peaks(rows, cols, totals, found=None) -> PeakList:
    r = np.asarray(rows, dtype=np.float64)
    p = PeakList(r, np.asarray(cols, float), np.asarray(totals, float), r * 0, r.astype(np.int64))
    p.found = len(r) if found is None else found
    return p


def result(event_ids, shape=(1, 64, 64), label=None, t=1000.0):
    meta = {"event_id": np.asarray(event_ids), "timestamp": np.full(len(event_ids), t)}
    if label:
        meta["daq_run"] = np.array([label] * len(event_ids))
    batch = SimpleNamespace(shape=(len(event_ids), *shape), meta=meta, source_id="random-0")
    return SimpleNamespace(batch=batch)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def view_of(clock=None) -> LiveView:
    return LiveView(GeometryConfig(), min_peaks=2, clock=clock or Clock(), wall=lambda: 5.0)


def test_peaks_per_frame_peakogram_and_powder_count_every_peak_around_the_beam_centre():
    live = view_of()
    # 64 x 64: the beam at the centre (32, 32). One peak on it, one 20 px to the right.
    ps = [
        peaks([32, 32], [32, 52], [10.0, 1000.0]),
        peaks([], [], []),
        peaks([1] * 70, [1] * 70, [5] * 70),
    ]
    live(result([0, 1, 2]), ps, np.array([True, False, True]), None)
    v = live.view()
    assert v["frames"] == 3 and v["hits"] == 2 and v["peaks"] == 72
    assert v["per_frame"][0] == 1 and v["per_frame"][2] == 1 and v["per_frame"][PEAK_BINS - 1] == 1
    pg = v["peakogram"]
    assert pg.sum() == 72 and pg.shape[0] == RADIUS_BINS
    r_max = v["layout"]["radius_max_px"]
    assert r_max == pytest.approx(np.hypot(32, 32))
    assert pg[0].sum() == 1  # the peak on the beam: radius bin 0, log10(10) = 1 decade
    assert pg[int(20 / r_max * RADIUS_BINS)].sum() == 1
    powder = v["powder"]
    assert powder.sum() == 72 and powder.shape == (64, 64)  # 64 px: one cell per pixel
    ox, oy = v["layout"]["powder_origin_px"]
    assert powder[int(32 - 32 - oy), int(52 - 32 - ox)] == 1  # lab y, x of the second peak
    assert v["newest"] == []  # nobody watched when the hit came


def test_newest_hits_are_kept_only_while_watched_at_most_one_per_interval():
    clock = Clock()
    live = view_of(clock)
    frame = np.arange(64 * 64, dtype=np.float32).reshape(1, 1, 64, 64)
    live(result([7]), [peaks([3], [4], [9.0])], np.array([True]), frame)
    assert live.view()["newest"] == []  # not watched then; this call starts watching
    live(result([8]), [peaks([3], [4], [9.0])], np.array([True]), frame)
    clock.t += HIT_EVERY_S / 2
    live(result([9]), [peaks([3], [4], [9.0])], np.array([True]), frame)  # too soon: skipped
    got = live.view()["newest"]
    assert [h["event_id"] for h in got] == [8] and got[0]["image"].shape == (64, 64)
    assert live.view(since=got[0]["n"])["newest"] == []  # the server holds it already
    clock.t += WATCH_S + 1  # nobody asked since: frames are let go at the next Result
    live(result([10]), [peaks([3], [4], [9.0])], np.array([True]), frame)
    assert not live.ring


def test_a_new_daq_run_starts_the_figures_afresh_and_merge_adds_writers_of_the_newest_run():
    a, b = view_of(), view_of()
    a(result([0], label="r1"), [peaks([1], [1], [5.0])], np.array([False]), None)
    b(result([1], label="r1"), [peaks([2, 3], [2, 3], [5.0, 5.0])], np.array([True]), None)
    merged = merge_views([a.view(), b.view(), None])
    assert merged["frames"] == 2 and merged["peaks"] == 3 and merged["writers"] == 2
    a(result([2], label="r2"), [peaks([], [], [])], np.array([False]), None)
    va = a.view()
    assert va["daq_run"] == "r2" and va["frames"] == 1 and va["peaks"] == 0
    va["updated"] = 9.0  # the newer one
    assert merge_views([va, b.view()])["daq_run"] == "r2"


def test_a_bad_result_never_reaches_the_writer():
    live = view_of()
    live(SimpleNamespace(batch=None), [], np.array([]), None)
    assert live.errors == 1


@pytest.mark.parametrize(
    ("change", "on"),
    [
        ({}, False),  # 256 frames as fast as possible: ends soon
        ({"source": {"random": {"num_frames": 0}}}, True),
        ({"source": {"random": {"num_frames": 600, "rate_hz": 10}}}, True),
        ({"source": {"random": {"num_frames": 100, "rate_hz": 10}}}, False),
        ({"source": {"kind": "socket"}}, True),
        ({"monitor": {"live_page": {"enabled": False}}, "source": {"kind": "socket"}}, False),
        ({"monitor": {"live_page": {"enabled": True}}}, True),
    ],
)
def test_the_auto_rule_serves_the_page_for_runs_that_last(change, on):
    assert live_page_on(PipelineConfig.model_validate(change)) is on


def test_png_round_trips_grey_and_rgb():
    grey = (np.arange(30 * 17) % 256).astype(np.uint8).reshape(17, 30)
    assert (decode_png(live_png.encode_png(grey)) == grey).all()
    rgb = np.random.default_rng(0).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    assert (decode_png(live_png.encode_png(rgb)) == rgb).all()
    with pytest.raises(ValueError):
        live_png.encode_png(np.zeros((2, 2, 4), np.uint8))


def test_a_frame_is_clipped_to_its_percentiles_and_its_peaks_circled():
    image = np.zeros((100, 120))
    image[50, 60] = 1e6  # one hot pixel must not wash the frame out
    image[:, :10] = np.nan
    image[10:20, 10:20] = 5.0
    png = live_png.frame_png(image, np.array([50.0]), np.array([60.0]), 1, 99, "grey")
    px = decode_png(png)
    assert px.shape == (100, 120, 3)
    assert tuple(px[50, 65]) == live_png.PEAK_RGB  # the circle, 5 px from the peak
    assert tuple(px[15, 15]) == (255, 255, 255)  # 5.0 is past the 99th percentile: white
    assert tuple(px[40, 40]) == (0, 0, 0)


def test_a_large_frame_is_reduced_by_block_maxima_keeping_its_peaks():
    image = np.zeros((4000, 300))
    image[3001, 7] = 50.0
    small, f = live_png.reduce(image, 1000)
    assert f == 4 and small.shape == (1000, 75) and small[750, 1] == 50.0
    assert decode_png(live_png.frame_png(image, [], [], max_side=1000)).shape == (1000, 75, 3)


def test_powder_counts_on_a_log_scale():
    px = decode_png(live_png.counts_png(np.array([[0, 1], [10, 1000]]), "grey"))
    assert px[0, 0, 0] == 0 and px[1, 1, 0] == 255 and 0 < px[0, 1, 0] < px[1, 0, 0] < 255


def test_make_demo_serves_the_page():
    """`make demo` runs examples/configs/demo.yaml: 256 unpaced frames, which the auto rule
    would leave off, so the demo turns the page on itself (its address is printed first)."""
    from pathlib import Path

    from peaknet_pipeline.config import load_config

    demo = Path(__file__).parents[2] / "examples" / "configs" / "demo.yaml"
    cfg = load_config(demo)
    assert cfg.monitor.live_page.enabled is True and live_page_on(cfg)
    assert (cfg.monitor.live_page.bind, cfg.monitor.live_page.port) == ("127.0.0.1", 8642)
