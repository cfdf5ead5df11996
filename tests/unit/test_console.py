"""The live display's content (rendered to text without a terminal), which console a run
gets, and the logging handlers it moves while it is up."""

from __future__ import annotations

import io
import logging
import sys

from rich.console import Console

from peaknet_pipeline.monitor import Sample, Snapshot
from peaknet_pipeline.monitor.console import (
    LiveConsole,
    PlainConsole,
    QuietConsole,
    live_view,
    make_console,
)
from peaknet_pipeline.monitor.verdict import Verdict


def _sample(t: float, ingested: int, inferred: int, busy_s: float, q1: int) -> Sample:
    return Sample(
        t=t,
        actors={
            "random-0": {"role": "ingest", "phase": "running", "frames_out": ingested},
            "random-1": {"role": "ingest", "phase": "running", "frames_out": 0},
            "inference-0": {
                "role": "inference",
                "phase": "running",
                "frames_out": inferred,
                "busy_s": busy_s,
                "device": "cpu",
            },
            "writer-0": {"role": "writer", "phase": "running", "frames_out": inferred, "hits": 5},
        },
        queues={
            "Q1": {"depth": q1, "capacity_items": 16, "bytes": 3_000_000, "shard_depths": [q1]},
            "Q2": {"depth": 0, "capacity_items": 8, "bytes": 0, "shard_depths": [0, 0]},
        },
        object_store={"used_bytes": 50e6, "spilled_bytes": 0, "capacity_bytes": 1e9},
        pool={"desired": 1, "running": 1, "starting": 0, "retiring": 0},
    )


def _text(renderable) -> str:
    console = Console(file=io.StringIO(), width=110, color_system=None)
    console.print(renderable)
    return console.file.getvalue()


def test_the_live_view_shows_counts_rates_fill_ratio_busy_pool_done_and_verdict():
    before, now = _sample(10.0, 100, 80, 4.0, 8), _sample(12.0, 180, 120, 5.8, 12)
    snap = Snapshot(
        t=112.0,
        counts={"ingested": 180, "inferred": 120, "written": 120, "hits": 5},
        expected=480,
    )
    judged = Verdict("backlogged", "Q1 stayed 80% full: inference is the bottleneck", {})
    text = _text(live_view("peaknet-pipeline r1", snap, [before, now], judged, started=100.0))
    assert "peaknet-pipeline r1" in text
    assert "in 180 (40.0/s)" in text and "inferred 120 (20.0/s)" in text
    assert "Q1 ███████████████░░░░░ 12/16 (3 MB, 1 shards)" in text
    assert "Q2 ░░░░░░░░░░░░░░░░░░░░ 0/8 (0 MB, 2 shards)" in text
    assert "2 ingest : 1 inference actors" in text
    assert "busy 90% on cpu" in text  # 1.8 s of model time in 2 s
    assert "1 running, 0 starting, 0 retiring (desired 1)" in text
    assert "50 of 1,000 MB, spilled 0 MB" in text
    assert "25% done" in text and "12 s" in text  # 120 of 480 written, 12 s after the start
    assert "backlogged: Q1 stayed 80% full" in text


def test_before_two_samples_the_view_says_the_verdict_is_still_to_come():
    snap = Snapshot(t=1.0, counts={"ingested": 0, "inferred": 0, "written": 0, "hits": 0})
    text = _text(live_view("r", snap, [_sample(0.0, 0, 0, 0.0, 0)], None, started=0.0))
    assert "judged after the first samples" in text
    assert "in 0   inferred 0" in text  # no rates yet


def test_a_terminal_gets_the_live_display_anything_else_plain_lines(monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    assert type(make_console(True, 0.0, "t")) is LiveConsole
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    assert type(make_console(True, 0.0, "t")) is PlainConsole
    assert type(make_console(False, 0.0, "t")) is QuietConsole


def test_the_live_display_moves_stream_handlers_of_the_real_streams_and_puts_them_back(
    monkeypatch,
):
    # rich replaces sys.stdout/sys.stderr while live; a handler still holding the real
    # stream would write under the display and be overwritten by its next redraw.
    real = io.StringIO()
    monkeypatch.setattr(sys, "__stderr__", real)
    monkeypatch.setattr(sys, "stderr", real)
    ours = logging.StreamHandler(real)
    other = logging.StreamHandler(io.StringIO())  # a file or other stream stays as it is
    logger = logging.getLogger("peaknet_pipeline.test_console")
    logger.addHandler(ours)
    logger.addHandler(other)
    try:
        with LiveConsole(0.0, "t", Console(file=io.StringIO(), force_terminal=True)):
            assert ours.stream is sys.stderr and sys.stderr is not real
            assert other.stream is not sys.stderr
        assert ours.stream is real and sys.stderr is real
    finally:
        logger.removeHandler(ours)
        logger.removeHandler(other)


def test_backlogged_on_the_cpu_is_not_shown_in_alarm_red_and_says_why():
    # The CPU demo's first screen: backlogged is expected there (the sentence says so).
    from helpers import QUEUE_CAPACITY, timeline
    from peaknet_pipeline.monitor.console import verdict_line
    from peaknet_pipeline.monitor.verdict import verdict

    ingest = {"frames_out": 20, "source_s": 0.1, "put_s": 0.9}
    samples = timeline(
        ingest=ingest, inference={"frames_out": 20, "busy_s": 1.0}, q1=QUEUE_CAPACITY
    )
    on_cpu = verdict_line(verdict(samples))
    assert on_cpu.plain.startswith("backlogged: Q1 stayed 100% full")
    assert "expected when inference runs on the CPU (as in the CPU demo)" in on_cpu.plain
    assert str(on_cpu.style) == "bold yellow"
    for sample in samples:
        sample.actors["inference-0"]["device"] = "cuda:0"
    on_gpu = verdict_line(verdict(samples))
    assert on_gpu.plain.startswith("backlogged") and "expected" not in on_gpu.plain
    assert str(on_gpu.style) == "bold red"


def test_a_window_too_short_to_judge_says_so_on_the_display():
    snap = Snapshot(t=2.0, counts={"ingested": 180, "inferred": 40, "written": 40, "hits": 5})
    from peaknet_pipeline.monitor.verdict import verdict

    recent = [_sample(0.0, 0, 0, 0.0, 0), _sample(1.0, 180, 40, 0.5, 4)]
    text = _text(live_view("r", snap, recent, verdict(recent), started=0.0))
    assert "too-short: too short to judge: 1.0 s of streaming" in text
