"""What each stage's counters become as metrics (pure), and how the sink records them.

The sink's Ray metric objects are replaced by a recording stand-in here (it reproduces the
calls made: inc, set, observe with their tags; not Ray's export). The real export, scraped from
Ray's Prometheus endpoint, is tests/integration/test_metrics_export.py.
"""

from __future__ import annotations

from collections import defaultdict

import pytest

from peaknet_pipeline.monitor import metrics
from peaknet_pipeline.monitor.metrics import (
    SPECS,
    MetricSink,
    Reading,
    Recorder,
    object_store_readings,
    run_of,
    shard_readings,
    stage_readings,
)
from peaknet_pipeline.stats import InferenceStats, IngestStats, SocketStats, WriterStats


def as_dict(readings: list[Reading]) -> dict[tuple, float]:
    return {(r.name, tuple(sorted(r.labels.items()))): r.value for r in readings}


def test_every_metric_follows_prometheus_conventions():
    for name, (kind, description, labels) in SPECS.items():
        assert name.startswith("peaknet_") and description
        assert name.endswith("_total") == (kind == "counter"), name
        assert "stage" not in labels or labels[:3] == ("run", "stage", "actor")


def test_socket_ingest_counters():
    stats = SocketStats(
        "socket-0",
        frames_out=16,
        batches_out=2,
        bytes_out=1600,
        message_bytes=2000,
        put_s=0.5,
        source_s=3.0,
        receive_s=2.0,
        decode_s=0.9,
        bad_messages={"not_hdf5": 3},
        frames_not_placed=0,
        discarded_at_stop=1,
    )
    got = as_dict(stage_readings("ingest", stats.as_dict()))
    ingest = (("stage", "ingest"),)
    assert got[("peaknet_frames_total", (("direction", "out"), *ingest))] == 16
    assert got[("peaknet_bytes_total", (("direction", "in"), *ingest))] == 2000
    assert got[("peaknet_blocked_seconds_total", (("on", "get"), *ingest))] == 2.0
    assert got[("peaknet_blocked_seconds_total", (("on", "put"), *ingest))] == 0.5
    assert got[("peaknet_busy_seconds_total", ingest)] == pytest.approx(1.0)  # source - waits
    assert got[("peaknet_errors_total", (("reason", "bad_message:not_hdf5"), *ingest))] == 3
    assert got[("peaknet_errors_total", (("reason", "discarded_at_stop"), *ingest))] == 1


def test_random_ingest_counts_waiting_for_its_rate_as_waiting_for_input():
    stats = IngestStats("random-0", frames_out=8, source_s=2.0, receive_s=1.5)
    got = as_dict(stage_readings("ingest", stats.as_dict()))
    ingest = (("stage", "ingest"),)
    assert got[("peaknet_blocked_seconds_total", (("on", "get"), *ingest))] == 1.5
    assert got[("peaknet_busy_seconds_total", ingest)] == pytest.approx(0.5)


def test_inference_and_writer_counters():
    inference = {
        "frames_in": 10,
        "frames_out": 8,
        "batches_in": 5,
        "batches_out": 4,
        "bytes_in": 100,
        "bytes_out": 25,
        "busy_s": 3.0,
        "idle_s": 1.0,
        "q1_wait_s": 0.7,
        "q2_blocked_s": 0.2,
        "slot_wait_s": 0.1,
        "rejected": {"shape": 2},
    }
    got = as_dict(stage_readings("inference", InferenceStats("inference-0", **inference).as_dict()))
    inf = (("stage", "inference"),)
    assert got[("peaknet_frames_total", (("direction", "in"), *inf))] == 10
    assert got[("peaknet_bytes_total", (("direction", "out"), *inf))] == 25
    assert got[("peaknet_blocked_seconds_total", (("on", "staged"), *inf))] == 1.0
    assert got[("peaknet_blocked_seconds_total", (("on", "slot"), *inf))] == 0.1
    assert got[("peaknet_errors_total", (("reason", "shape"), *inf))] == 2

    writer = {"frames_in": 12, "frames_out": 12, "hits": 5, "non_hits": 6}
    writer |= {"failed": {"bad_output": 1}, "batches_in": 3, "bytes_in": 300, "busy_s": 2.0}
    writer |= {"q2_wait_s": 4.0, "peaks_found": 77}
    got = as_dict(stage_readings("writer", WriterStats("writer-0", **writer).as_dict()))
    w = (("stage", "writer"),)
    assert got[("peaknet_frames_total", (("direction", "in"), *w))] == 12
    assert got[("peaknet_frames_total", (("direction", "out"), *w))] == 11  # hits + non-hits
    assert got[("peaknet_hits_total", w)] == 5 and got[("peaknet_peaks_total", w)] == 77
    assert got[("peaknet_errors_total", (("reason", "bad_output"), *w))] == 1


def test_queue_and_object_store_readings():
    shard = {"depth": 3, "bytes": 30, "capacity_items": 8, "capacity_bytes": 80}
    shard |= {"puts": 10, "gets": 7, "put_blocked_s": 1.5, "get_blocked_s": 0.5}
    got = as_dict(shard_readings(shard))
    assert got[("peaknet_queue_depth", ())] == 3
    assert got[("peaknet_queue_records_total", (("op", "get"),))] == 7
    assert got[("peaknet_queue_blocked_seconds_total", (("op", "put"),))] == 1.5
    usage = {"used_bytes": 5, "spilled_bytes": 0, "capacity_bytes": 9}
    assert as_dict(object_store_readings(usage))[("peaknet_object_store_used_bytes", ())] == 5


def test_run_of_a_queue_name():
    assert run_of("run-20260101-120000-ab12-q1") == "run-20260101-120000-ab12"
    assert run_of("bench-q2") == "bench"
    assert run_of("plain") == "plain"


class Recording:
    """Stand-in for one Ray metric object: keeps every call."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def inc(self, value, tags):
        self.calls.append(("inc", value, tags))

    def set(self, value, tags):
        self.calls.append(("set", value, tags))

    def observe(self, value, tags):
        self.calls.append(("observe", value, tags))


@pytest.fixture
def recorded(monkeypatch):
    made: dict[str, Recording] = defaultdict(Recording)
    monkeypatch.setattr(metrics, "_metric", lambda name: made[name])
    return made


def test_the_sink_records_counter_growth_once_and_never_down(recorded):
    sink = MetricSink({"run": "r", "stage": "writer", "actor": "writer-0"})
    frames = lambda n: Reading("peaknet_frames_total", {"direction": "in"}, n)  # noqa: E731
    sink.record([frames(5), Reading("peaknet_queue_depth", {}, 2)])
    sink.record([frames(5)])  # nothing new
    sink.record([frames(3)])  # a total that shrank (ingest uncounting refused records)
    sink.record([frames(9)])
    tags = {"run": "r", "stage": "writer", "actor": "writer-0", "direction": "in"}
    assert recorded["peaknet_frames_total"].calls == [("inc", 5.0, tags), ("inc", 4.0, tags)]
    # Every label the metric declares is given; labels it does not declare are dropped.
    assert recorded["peaknet_queue_depth"].calls == [
        ("set", 2.0, {"run": "r", "queue": "", "shard": ""})
    ]


def test_the_recorder_adds_the_busy_ratio_of_each_interval(recorded, monkeypatch):
    busy = iter([1.0, 1.5, 3.5])
    clock = iter([10.0, 11.0, 12.0])
    monkeypatch.setattr(metrics.time, "monotonic", lambda: next(clock))
    recorder = Recorder(
        {"run": "r", "stage": "inference", "actor": "inference-0"},
        lambda: [Reading("peaknet_busy_seconds_total", {"stage": "inference"}, next(busy))],
    )
    for _ in range(3):
        recorder.flush()
    ratios = [value for _, value, _ in recorded["peaknet_busy_ratio"].calls]
    assert ratios == [0.5, 1.0]  # 0.5 s busy in 1 s; 2 s in 1 s is capped at 1


def test_a_failing_recording_is_logged_once_and_not_raised(recorded, caplog):
    def broken():
        raise RuntimeError("stats gone")

    recorder = Recorder({"run": "r"}, broken)
    recorder.flush()
    recorder.flush()
    assert caplog.text.count("not recorded: stats gone") == 1


def test_the_writers_latency_becomes_one_observation_per_event_in_its_bucket(recorded):
    import numpy as np

    from peaknet_pipeline.monitor.latency import LatencyTracker

    tracker = LatencyTracker()
    sink = MetricSink({"run": "r", "stage": "writer", "actor": "writer-0"})

    def record(latencies: list[float]) -> None:
        tracker.observe(100.0 - np.array(latencies), 100.0)
        stats = WriterStats("writer-0", hits=tracker.run.count, latency=tracker.as_dict(100.0))
        sink.record(stage_readings("writer", stats.as_dict()))

    record([0.003, 0.2, 0.21, 5.0])
    record([])  # nothing new: nothing observed again
    record([0.2, 300.0])
    calls = recorded["peaknet_latency_seconds"].calls
    assert len(calls) == 6  # one observation per event, however often it was recorded
    assert {tuple(c[2].items()) for c in calls} == {(("run", "r"), ("actor", "writer-0"))}
    # each observed value lies in the same Prometheus bucket as the event's true latency
    edges = metrics.LATENCY_SECONDS_BOUNDARIES
    which = lambda v: sum(v > e for e in edges)  # noqa: E731
    got = sorted(which(value) for _, value, _ in calls)
    assert got == sorted(which(v) for v in [0.003, 0.2, 0.21, 5.0, 0.2, 300.0])
