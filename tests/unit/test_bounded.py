"""Bounded for days (issue 23, item 3): nothing the driver or a queue keeps grows with the
length of a service. The time series (full rate for the newest samples, merged points of
doubling span before them, a fixed size), the restart records and dead letters (the newest
kept, the rest counted), the metric labels (none carries a DAQ run), and each actor's memory
in its stats (what the soak test holds flat). Ray-free."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from types import SimpleNamespace

import pytest

from helpers import timeline
from peaknet_pipeline.driver import ended_by
from peaknet_pipeline.monitor import Sample, TimeSeries, metrics
from peaknet_pipeline.monitor.metrics import MetricSink, stage_readings
from peaknet_pipeline.monitor.timeseries import RECENT_SAMPLES, Point, settle
from peaknet_pipeline.monitor.verdict import live_verdict, streaming_window
from peaknet_pipeline.queue.leases import DEAD_LETTERS_KEPT, Entry, LeaseBook
from peaknet_pipeline.registry import StageActor
from peaknet_pipeline.restarts import RestartLog, RestartRecord, recovered_ids
from peaknet_pipeline.stats import DaqRunState, SocketStats, WriterStats, rss_bytes


def _rate(t: int) -> int:
    """Frames per second at second t: changes every 1000 s, so merged spans cover changes."""
    return 1 + (t // 1000) % 7


def _stream(n: int) -> list[Sample]:
    """n samples a second apart whose inference total grows at `_rate`."""
    samples, total = [], 0
    for t in range(n):
        total += _rate(t)
        actors = {
            role: {"role": role, "phase": "running", "frames_out": total}
            for role in ("ingest", "inference")
        }
        samples.append(Sample(t=float(t), actors=actors, driver={"rss_bytes": 1}))
    return samples


N = 100_000


@pytest.fixture(scope="module")
def long_series() -> tuple[TimeSeries, list[Sample]]:
    samples, series = _stream(N), TimeSeries()
    for s in samples:
        series.add(s)
    return series, samples


def test_the_series_stays_within_its_size_after_a_hundred_thousand_samples(long_series):
    series, _ = long_series
    assert len(series) == len(series.samples) <= series.max_samples
    assert series.added == N
    kept = series.samples
    assert kept[0].t == 0.0 and kept[-1].t == N - 1  # the whole span, start to now
    assert [s.t for s in kept] == sorted({s.t for s in kept})  # in order, each once


def test_a_million_samples_keep_the_same_size_in_the_same_time_per_sample():
    # The top level merges in place: the size is fixed however long the series grows.
    levels, started = (), time.perf_counter()
    for i in range(200_000):
        levels = settle(levels, Point(i), per_level=4, max_levels=3)
    assert sum(map(len, levels)) <= 12
    assert sum(p.weight for level in levels for p in level) == 200_000
    assert time.perf_counter() - started < 5.0


def test_each_merged_point_is_the_exact_total_at_its_edge_and_rates_between_points_hold(
    long_series,
):
    series, originals = long_series
    kept = series.samples
    for s in kept:  # a point is a real sample: the running totals at its edge, exact
        assert s is originals[int(s.t)]
    for a, b in zip(kept, kept[1:]):  # the mean rate between two points: exact
        span = range(int(a.t) + 1, int(b.t) + 1)
        rate = (b.total("inference", "frames_out") - a.total("inference", "frames_out")) / (
            b.t - a.t
        )
        assert math.isclose(rate, sum(_rate(t) for t in span) / len(span))


def test_older_points_stand_for_more_samples_and_every_sample_is_counted_once(long_series):
    series, _ = long_series
    weights = [p.weight for level in reversed(series._levels) for p in level]
    assert weights == sorted(weights, reverse=True)  # coarser the older: spans double
    assert len(set(weights)) > 5 and max(weights) >= 64
    assert 1 + sum(weights) + len(series._recent) == N  # the first, the merged, the recent


def test_the_newest_samples_stay_at_full_rate_for_the_verdicts(long_series):
    series, _ = long_series
    recent = series.samples[-RECENT_SAMPLES:]
    assert [s.t for s in recent] == list(map(float, range(N - RECENT_SAMPLES, N)))
    assert [s.t for s in series.window(20.0)] == list(map(float, range(N - 21, N)))
    window = streaming_window(series)  # a whole run's: its recent part still a second apart
    assert [s.t for s in window[-RECENT_SAMPLES:]] == [s.t for s in recent]


def test_a_bounded_series_is_judged_like_the_same_run_kept_whole():
    whole = timeline(
        seconds=400,
        ingest={"frames_out": 40, "source_s": 0.3, "put_s": 0.7},
        inference={"frames_out": 40, "busy_s": 0.95},
        writer={"frames_out": 40, "busy_s": 0.3},
    )
    kept_all, bounded = TimeSeries(max_samples=10_000), TimeSeries(max_samples=100)
    for s in whole:
        kept_all.add(s)
        bounded.add(s)
    assert len(bounded) <= 100 < len(kept_all)
    assert live_verdict(bounded).word == live_verdict(kept_all).word == "ok"
    assert live_verdict(bounded).evidence == live_verdict(kept_all).evidence


def test_a_bounded_series_reads_back_as_it_was_written(long_series, tmp_path):
    series, _ = long_series
    series.write(tmp_path / "timeseries.jsonl")
    again = TimeSeries.read(tmp_path / "timeseries.jsonl")
    assert again.samples == series.samples


# -- restart records and dead letters ---------------------------------------------------------
def _record(i: int, recovered: bool = True) -> RestartRecord:
    return RestartRecord(
        "writer", f"writer-0.{i}", "ActorDiedError: gone", 0,
        replaced_by=f"writer-0.{i + 1}" if recovered else None,
    )  # fmt: skip


def test_the_restart_records_keep_the_newest_and_count_the_rest():
    log = RestartLog(kept=10)
    for i in range(1000):
        log.append(_record(i))
    assert len(log) == 10 and log.dropped == 990
    assert [r.actor_id for r in log] == [f"writer-0.{i}" for i in range(990, 1000)]


def test_an_unrecovered_failure_is_never_dropped_and_alone_names_the_end():
    log = RestartLog(kept=10)
    log.append(_record(0, recovered=False))
    for i in range(1, 500):
        log.append(_record(i))
    assert log[0].actor_id == "writer-0.0" and len(log) == 10 and log.dropped == 490
    assert "writer-0.7" in recovered_ids(log)  # dropped, still known as recovered
    actors = [StageActor("writer", f"writer-0.{i}", None, error="gone") for i in range(500)]
    run = SimpleNamespace(
        actors=actors, supervisor=SimpleNamespace(restarts=log), stopped_early=False
    )
    assert ended_by(run) == "writer writer-0.0 failed: gone"


def test_dead_letters_keep_the_newest_and_count_them_all():
    book = LeaseBook(lease_s=10, max_deliveries=1)
    for seq in range(1000):
        book.lease(Entry(SimpleNamespace(key=("s", seq), size=2), nbytes=1), "a", 0.0)
    book.release("a")
    assert len(book.dead_letters) == DEAD_LETTERS_KEPT
    assert book.dead_letters[-1]["record"] == ["s", 999]
    assert book.stats["dead_lettered"] == 1000 and book.stats["frames_dead"] == 2000


def test_the_summary_counts_the_dead_letters_and_restarts_it_no_longer_names():
    from test_report import ONE_FILE, _report

    from peaknet_pipeline.monitor.report import format_summary

    letter = {"record": ["s", 999], "deliveries": 3, "consumers": ["a"]}
    report = _report(
        restarts=[_record(7).as_dict()], restarts_dropped=40,
        dead_letters=[letter] * DEAD_LETTERS_KEPT, dead_letters_dropped=900, exit_code=1,
    )  # fmt: skip
    lines = format_summary(report, ONE_FILE)
    assert "and 40 earlier failures, recovered" in lines
    assert (
        f"1000 records given up after too many deliveries (dead letters, the newest {DEAD_LETTERS_KEPT} named"
        in lines
    )


# -- metric labels ------------------------------------------------------------------------------
def _writer_after(runs: int) -> WriterStats:
    """A writer's stats after `runs` DAQ runs: the last 16 closed and one open, listed."""
    states = tuple(
        DaqRunState(f"cxi12345-r{n:04d}", "closed" if n < runs else "open", 10, 3)
        for n in range(max(1, runs - 16), runs + 1)
    )
    return WriterStats(
        "writer-0", frames_in=10 * runs, hits=3 * runs, non_hits=7 * runs, daq_runs=states,
        daq_run_stragglers=runs, failed={"cxi_write": runs}, files_closed=runs,
    )  # fmt: skip


def _socket_after(runs: int) -> SocketStats:
    return SocketStats(
        "socket-0", frames_out=10 * runs, messages=runs, bad_messages={"shape": runs},
        discarded_at_stop=0, address="tcp://daq:5555",
    )  # fmt: skip


def test_metric_labels_do_not_grow_with_daq_runs(monkeypatch):
    series_made: dict[str, set] = defaultdict(set)

    class Metric:
        def __init__(self, name: str) -> None:
            self.name = name

        def inc(self, value, tags):
            series_made[self.name].add(tuple(sorted(tags.items())))

        set = observe = inc

    monkeypatch.setattr(metrics, "_metric", Metric)
    sinks = {
        role: MetricSink({"run": "beamtime", "stage": role, "actor": f"{role}-0"})
        for role in ("writer", "ingest")
    }

    def after(runs: int) -> int:
        for n in range(1, runs + 1):
            sinks["writer"].record(stage_readings("writer", _writer_after(n).as_dict()))
            sinks["ingest"].record(stage_readings("ingest", _socket_after(n).as_dict()))
        return sum(map(len, series_made.values()))

    first = after(3)
    assert after(300) == first  # the same series after 300 DAQ runs as after 3
    values = {v for made in series_made.values() for tags in made for _, v in tags}
    assert not any("r0" in v or "cxi12345" in v for v in values), values
    assert all(len(s._totals) <= first for s in sinks.values())


# -- each actor's memory --------------------------------------------------------------------
def test_every_stage_record_carries_the_memory_of_the_process_that_made_it():
    made = WriterStats("writer-0")
    assert made.rss_bytes == pytest.approx(rss_bytes(), rel=0.5) and made.rss_bytes > 0
    assert made.as_dict()["rss_bytes"] == made.rss_bytes
