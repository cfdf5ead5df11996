"""Progress lines: which snapshots are printed, and the rates they show."""

from __future__ import annotations

from peaknet_pipeline.monitor import ProgressLog, Snapshot


def snap(t: float, ingested: int, q1: int = 0) -> Snapshot:
    return Snapshot(t=t, counts={"ingested": ingested}, queues={"Q1": (q1, 16)})


def test_first_line_rates_are_since_the_start():
    log = ProgressLog(started=100.0)
    line = log.line(snap(102.0, 256, q1=16))
    assert line == "[    2.0 s] | ingested 256 (128.0/s) | Q1 16/16"


def test_rates_are_over_the_time_since_the_previous_line():
    log = ProgressLog(started=0.0)
    log.line(snap(2.0, 100))
    assert "ingested 160 (15.0/s)" in log.line(snap(6.0, 160))


def test_an_unchanged_snapshot_is_printed_only_as_a_heartbeat():
    log = ProgressLog(started=0.0, heartbeat_s=30.0)
    assert log.line(snap(2.0, 10)) is not None
    assert log.line(snap(4.0, 10)) is None
    assert log.line(snap(31.0, 10)) is None
    heartbeat = log.line(snap(32.0, 10))
    assert heartbeat == "[   32.0 s] | ingested 10 (0.0/s) | Q1 0/16"
    assert log.line(snap(33.0, 10)) is None
    assert log.line(snap(34.0, 11, q1=1)) is not None


def test_a_finite_run_shows_percent_done_of_the_frames_the_sources_will_send():
    log = ProgressLog(started=0.0)
    line = log.line(Snapshot(t=2.0, counts={"written": 64}, expected=256))
    assert line == "[    2.0 s] |  25% done | written 64 (32.0/s)"
    endless = log.line(Snapshot(t=4.0, counts={"written": 80}, expected=None))
    assert "% done" not in endless
