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


def test_the_time_series_stays_bounded_and_keeps_its_whole_span(tmp_path):
    from peaknet_pipeline.monitor import Sample, TimeSeries

    series = TimeSeries(max_samples=100)
    for i in range(1000):
        series.add(
            Sample(t=float(i), actors={"inference-0": {"role": "inference", "frames_out": i}})
        )
    assert len(series.samples) <= 100
    assert series.samples[0].t == 0.0 and series.samples[-1].t == 999.0
    assert [s.t for s in series.samples] == sorted(s.t for s in series.samples)
    assert [s.t for s in series.window(3.0)] == [996.0, 997.0, 998.0, 999.0]
    series.write(tmp_path / "timeseries.jsonl")
    again = TimeSeries.read(tmp_path / "timeseries.jsonl")
    assert again.samples == series.samples
    assert again.samples[-1].total("inference", "frames_out") == 999


def test_progress_numbers_come_from_a_sample():
    from peaknet_pipeline.monitor import Sample, snapshot_of

    sample = Sample(
        t=3.0,
        actors={
            "random-0": {"role": "ingest", "frames_out": 40, "frames_expected": 64},
            "random-1": {"role": "ingest", "frames_out": 24, "frames_expected": 64},
            "inference-0": {"role": "inference", "frames_out": 32},
            "writer-0": {"role": "writer", "frames_out": 30, "hits": 12},
        },
        queues={"Q1": {"depth": 3, "capacity_items": 16}, "Q2": {"depth": 0, "capacity_items": 8}},
    )
    snap = snapshot_of(sample, now=10.0)
    assert snap.counts == {"ingested": 64, "inferred": 32, "written": 30, "hits": 12}
    assert snap.expected == 128 and snap.queues == {"Q1": (3, 16), "Q2": (0, 8)}
