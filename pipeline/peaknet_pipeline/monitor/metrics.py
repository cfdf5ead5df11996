"""Ray metrics of a run, recorded where the numbers are made, exported by Ray to Prometheus.

Every stage actor already counts what it does (frames, batches, bytes, seconds busy and
waiting) for its `stats()`. A `Recorder` thread in the actor reads those counters once a second
and records the change as Ray metrics (`ray.util.metrics`): no call per batch, no round trip to
a central actor. Queue shards record their own depth and bytes the same way, and the driver
records the object store's use each progress interval. Ray's metrics agent on each node serves
them on its Prometheus endpoint (`ray.metrics_export_port` for an embedded instance) and the
dashboard; Ray prefixes every name with `ray_` (peaknet_frames_total is scraped as
ray_peaknet_frames_total) and adds its own labels (node, worker, session).

Names follow Prometheus conventions: counters end in `_total`, units are in the name
(`_seconds_total`, `_bytes`, `_ratio`); labels: run, stage (ingest, inference, writer), actor,
direction (in, out), on (what a stage waited for: get its input, put into the next queue, a
free staging slot, a staged batch), reason, queue (Q1, Q2), shard, op (put, get), gpu.

The mapping from a stage's counters to metrics (`stage_readings`, `shard_readings`,
`object_store_readings`) is pure; `MetricSink` and `Recorder` do the Ray calls.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from ..placement import Role
from ..stats import StageStats, as_dict
from .latency import middle as latency_middle

log = logging.getLogger(__name__)

INTERVAL_S = 1.0  # how often an actor or shard records its counters
STAGE = ("run", "stage", "actor")
QUEUE = ("run", "queue", "shard")
# name -> (kind, description, label names)
SPECS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "peaknet_frames_total": (
        "counter",
        "Frames into (direction=in) and out of (direction=out) a stage actor.",
        (*STAGE, "direction"),
    ),
    "peaknet_batches_total": (
        "counter",
        "Batches into and out of a stage actor.",
        (*STAGE, "direction"),
    ),
    "peaknet_bytes_total": (
        "counter",
        "Payload bytes into and out of a stage actor (frames, and outputs after inference).",
        (*STAGE, "direction"),
    ),
    "peaknet_busy_seconds_total": ("counter", "Seconds a stage actor spent working.", STAGE),
    "peaknet_blocked_seconds_total": (
        "counter",
        "Seconds a stage actor waited: for its input (on=get), for room in the next queue "
        "(on=put), for a free staging slot (on=slot), for a staged batch (on=staged: the "
        "device idles).",
        (*STAGE, "on"),
    ),
    "peaknet_busy_ratio": (
        "gauge",
        "Share of the last interval a stage actor spent working (0..1).",
        STAGE,
    ),
    "peaknet_errors_total": (
        "counter",
        "Frames rejected or failed (inference, writer), messages malformed (socket ingest), or "
        "frames not placed or discarded (ingest), by reason.",
        (*STAGE, "reason"),
    ),
    "peaknet_hits_total": ("counter", "Events with at least writer.min_peaks peaks.", STAGE),
    "peaknet_peaks_total": ("counter", "Peaks found by the writers.", STAGE),
    "peaknet_batch_seconds": (
        "histogram",
        "Seconds from issuing a batch to the device to its output (inference).",
        STAGE,
    ),
    "peaknet_latency_seconds": (
        "bucket_totals",
        "Seconds from an event's arrival at ingest to its writer having written it "
        "(writer/stage.py), one observation per event.",
        ("run", "actor"),
    ),
    "peaknet_queue_depth": ("gauge", "Records in a queue shard.", QUEUE),
    "peaknet_queue_bytes": ("gauge", "Payload bytes a queue shard's records keep alive.", QUEUE),
    "peaknet_queue_capacity_items": ("gauge", "Most records a queue shard holds.", QUEUE),
    "peaknet_queue_capacity_bytes": ("gauge", "Most payload bytes a queue shard holds.", QUEUE),
    "peaknet_queue_records_total": (
        "counter",
        "Records put into / got from a shard.",
        (*QUEUE, "op"),
    ),
    "peaknet_queue_blocked_seconds_total": (
        "counter",
        "Seconds puts waited for room (op=put) and gets waited for records (op=get).",
        (*QUEUE, "op"),
    ),
    "peaknet_object_store_used_bytes": (
        "gauge",
        "Bytes in Ray's object store (all nodes).",
        ("run",),
    ),
    "peaknet_object_store_capacity_bytes": (
        "gauge",
        "Size of Ray's object store (all nodes).",
        ("run",),
    ),
    "peaknet_object_store_spilled_bytes_total": (
        "counter",
        "Bytes Ray spilled from its object store to disk.",
        ("run",),
    ),
    "peaknet_live_feed_served_total": (
        "counter",
        "Hits the live CrystFEL feed (writer.live_feed) handed to an indexamajig request.",
        ("run",),
    ),
    "peaknet_live_feed_skipped_total": (
        "counter",
        "Hits the live feed did not serve: no request came in time (pushed out of its buffer, "
        "or not offered while nobody read); the CXI files keep them.",
        ("run",),
    ),
    "peaknet_gpu_utilization_ratio": (
        "gauge",
        "Share of time the GPU ran a kernel, as NVML reports it (0..1).",
        ("run", "actor", "gpu"),
    ),
    "peaknet_gpu_memory_used_bytes": (
        "gauge",
        "GPU memory in use (NVML).",
        ("run", "actor", "gpu"),
    ),
    "peaknet_gpu_memory_total_bytes": (
        "gauge",
        "GPU memory in all (NVML).",
        ("run", "actor", "gpu"),
    ),
}
BATCH_SECONDS_BOUNDARIES = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0]
# Powers of two, 1/128 s to 128 s: edges of monitor/latency.py's own buckets, so that an
# event's bucket there decides its Prometheus bucket exactly (`_sum` is within 4.5 %).
LATENCY_SECONDS_BOUNDARIES = [2.0**k for k in range(-7, 8)]
BOUNDARIES = {
    "peaknet_batch_seconds": BATCH_SECONDS_BOUNDARIES,
    "peaknet_latency_seconds": LATENCY_SECONDS_BOUNDARIES,
}


class Reading(NamedTuple):
    """One value for one metric: a counter's running total, a gauge's value, or one
    observation of a histogram. `labels` are those beyond the recorder's own (run, actor)."""

    name: str
    labels: dict[str, str]
    value: float


def run_of(queue_name: str) -> str:
    """The run id of a queue named `<run id>-q1` or `<run id>-q2` (the whole name otherwise)."""
    base, _, suffix = queue_name.rpartition("-")
    return base if base and suffix in ("q1", "q2") else queue_name


# -- what each stage's counters mean ----------------------------------------------------------
def _flow(direction: str, frames: Any, batches: Any, nbytes: Any) -> list[Reading]:
    labels = {"direction": direction}
    values = (("frames", frames), ("batches", batches), ("bytes", nbytes))
    return [Reading(f"peaknet_{n}_total", labels, v) for n, v in values if v is not None]


def _waits(**seconds: float) -> list[Reading]:
    return [Reading("peaknet_blocked_seconds_total", {"on": on}, s) for on, s in seconds.items()]


def _errors(by_reason: Mapping[str, int]) -> list[Reading]:
    return [Reading("peaknet_errors_total", {"reason": r}, n) for r, n in by_reason.items()]


def _ingest(s: Mapping[str, Any]) -> list[Reading]:
    waited_input = s.get("receive_s", 0.0)
    out = _flow("out", s.get("frames_out"), s.get("batches_out"), s.get("bytes_out"))
    if "message_bytes" in s:
        out.append(Reading("peaknet_bytes_total", {"direction": "in"}, s["message_bytes"]))
    out += _waits(get=waited_input, put=s.get("put_s", 0.0))
    out.append(Reading("peaknet_busy_seconds_total", {}, s.get("busy_s", 0.0)))
    errors = {f"bad_message:{k}": v for k, v in (s.get("bad_messages") or {}).items()}
    errors["not_placed"] = s.get("frames_not_placed", 0)
    errors["discarded_at_stop"] = s.get("discarded_at_stop", 0)
    return out + _errors(errors)


def _inference(s: Mapping[str, Any]) -> list[Reading]:
    out = _flow("in", s.get("frames_in"), s.get("batches_in"), s.get("bytes_in"))
    out += _flow("out", s.get("frames_out"), s.get("batches_out"), s.get("bytes_out"))
    out.append(Reading("peaknet_busy_seconds_total", {}, s.get("busy_s", 0.0)))
    out += _waits(
        get=s.get("q1_wait_s", 0.0),
        put=s.get("q2_blocked_s", 0.0),
        slot=s.get("slot_wait_s", 0.0),
        staged=s.get("idle_s", 0.0),
    )
    return out + _errors(s.get("rejected") or {})


def _writer(s: Mapping[str, Any]) -> list[Reading]:
    failed = s.get("failed") or {}
    out = _flow("in", s.get("frames_in"), s.get("batches_in"), s.get("bytes_in"))
    written = s.get("hits", 0) + s.get("non_hits", 0)
    out.append(Reading("peaknet_frames_total", {"direction": "out"}, written))
    out.append(Reading("peaknet_busy_seconds_total", {}, s.get("busy_s", 0.0)))
    out += _waits(get=s.get("q2_wait_s", 0.0))
    out.append(Reading("peaknet_hits_total", {}, s.get("hits", 0)))
    out.append(Reading("peaknet_peaks_total", {}, s.get("peaks_found", 0)))
    # the run's latency buckets (monitor/latency.py) as running totals, one reading a bucket
    buckets = (s.get("latency") or {}).get("buckets") or {}
    out += [Reading("peaknet_latency_seconds", {"bucket": i}, n) for i, n in buckets.items()]
    return out + _errors(failed)


STAGES: dict[Role, Callable[[Mapping[str, Any]], list[Reading]]] = {
    Role.INGEST: _ingest,
    Role.INFERENCE: _inference,
    Role.WRITER: _writer,
}


def stage_readings(stage: Role, stats: Mapping[str, Any]) -> list[Reading]:
    """A stage actor's `stats()` as metric readings (counters as running totals); the role's
    name is the `stage` label's value."""
    label = Role(stage).value
    return [Reading(r.name, {"stage": label, **r.labels}, r.value) for r in STAGES[stage](stats)]


def shard_readings(stats: Mapping[str, Any]) -> list[Reading]:
    """A queue shard's `stats()` as readings."""
    return [
        Reading("peaknet_queue_depth", {}, stats["depth"]),
        Reading("peaknet_queue_bytes", {}, stats["bytes"]),
        Reading("peaknet_queue_capacity_items", {}, stats["capacity_items"]),
        Reading("peaknet_queue_capacity_bytes", {}, stats["capacity_bytes"]),
        Reading("peaknet_queue_records_total", {"op": "put"}, stats["puts"]),
        Reading("peaknet_queue_records_total", {"op": "get"}, stats["gets"]),
        Reading("peaknet_queue_blocked_seconds_total", {"op": "put"}, stats["put_blocked_s"]),
        Reading("peaknet_queue_blocked_seconds_total", {"op": "get"}, stats["get_blocked_s"]),
    ]


def object_store_readings(usage: Mapping[str, int]) -> list[Reading]:
    """The object store's use (monitor.objectstore.ObjectStoreUsage.as_dict())."""
    return [
        Reading("peaknet_object_store_used_bytes", {}, usage["used_bytes"]),
        Reading("peaknet_object_store_capacity_bytes", {}, usage["capacity_bytes"]),
        Reading("peaknet_object_store_spilled_bytes_total", {}, usage["spilled_bytes"]),
    ]


def live_feed_readings(stats: Mapping[str, Any]) -> list[Reading]:
    """The live feed's counts (writer/feed.py FeedServer.stats) as readings."""
    return [
        Reading("peaknet_live_feed_served_total", {}, stats["served"]),
        Reading("peaknet_live_feed_skipped_total", {}, stats["skipped"]),
    ]


# -- recording --------------------------------------------------------------------------------
_metrics: dict[str, Any] = {}
_metrics_lock = threading.Lock()


def _metric(name: str) -> Any:
    """The Ray metric object for `name`, made once per process."""
    with _metrics_lock:
        if name not in _metrics:
            from ray.util import metrics

            kind, description, labels = SPECS[name]
            if kind in ("histogram", "bucket_totals"):
                _metrics[name] = metrics.Histogram(
                    name, description, BOUNDARIES[name], tag_keys=labels
                )
            else:
                cls = metrics.Counter if kind == "counter" else metrics.Gauge
                _metrics[name] = cls(name, description, tag_keys=labels)
        return _metrics[name]


class MetricSink:
    """Records readings as Ray metrics. Counters arrive as running totals; the sink records
    what they grew by since the last time (a total that shrinks is held at its high mark, so
    a counter never goes down). A "bucket_totals" histogram arrives the same way, a running
    total of observations per bucket of monitor/latency.py (label `bucket`, not a tag): the
    sink observes the bucket's middle as many times as its total grew."""

    def __init__(self, labels: Mapping[str, str]) -> None:
        self.labels = dict(labels)
        self._totals: dict[tuple, float] = {}

    def record(self, readings: list[Reading]) -> None:
        for name, extra, value in readings:
            kind, _, keys = SPECS[name]
            labels = {**self.labels, **extra}
            tags = {k: str(labels.get(k, "")) for k in keys}
            metric = _metric(name)
            if kind == "gauge":
                metric.set(float(value), tags=tags)
            elif kind == "histogram":
                metric.observe(float(value), tags=tags)
            elif kind == "bucket_totals":
                key = (name, tuple(tags.values()), extra["bucket"])
                grown = int(value) - int(self._totals.get(key, 0))
                for _ in range(grown):
                    metric.observe(latency_middle(int(extra["bucket"])), tags=tags)
                if grown > 0:
                    self._totals[key] = value
            else:
                key = (name, tuple(tags.values()))
                grown = float(value) - self._totals.get(key, 0.0)
                if grown > 0:
                    metric.inc(grown, tags=tags)
                    self._totals[key] = float(value)


class Recorder:
    """A daemon thread that records `readings()` every `interval_s` through a MetricSink, and
    the busy ratio of the interval from the busy-seconds counter. `close()` records a last
    time. Failing to record is logged once and never stops the actor."""

    def __init__(
        self,
        labels: Mapping[str, str],
        readings: Callable[[], list[Reading]],
        interval_s: float = INTERVAL_S,
    ) -> None:
        self.sink = MetricSink(labels)
        self.readings = readings
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="metrics", daemon=True)
        self._busy: tuple[float, float] | None = None  # (time, busy seconds) last recorded
        self._failed = False

    def start(self) -> Recorder:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.flush()

    def flush(self) -> None:
        try:
            readings = self.readings()
            self.sink.record(readings + self._busy_ratio(readings))
        except Exception as exc:  # noqa: BLE001 - metrics must never stop a stage
            if not self._failed:
                self._failed = True
                log.warning("metrics of %s not recorded: %s", self.sink.labels, exc)

    def _busy_ratio(self, readings: list[Reading]) -> list[Reading]:
        busy = [r for r in readings if r.name == "peaknet_busy_seconds_total"]
        if not busy:
            return []
        now, total = time.monotonic(), busy[0].value
        last, self._busy = self._busy, (now, total)
        if last is None or now <= last[0]:
            return []
        ratio = min(1.0, max(0.0, (total - last[1]) / (now - last[0])))
        return [Reading("peaknet_busy_ratio", busy[0].labels, ratio)]

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
        self.flush()


def stage_recorder(
    enabled: bool,
    stage: Role,
    actor: str,
    run: str,
    stats: Callable[[], StageStats],
    extra: Callable[[], list[Reading]] | None = None,
) -> Recorder | None:
    """A started Recorder of a stage actor's `stats()` (plus `extra` readings: GPU, batch
    times), or None when metrics are off."""
    if not enabled:
        return None

    def readings() -> list[Reading]:
        return stage_readings(stage, as_dict(stats())) + (extra() if extra else [])

    return Recorder({"run": run, "stage": Role(stage).value, "actor": actor}, readings).start()
