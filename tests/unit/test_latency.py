"""The latency summary (monitor/latency.py): percentiles within a bucket of the truth, merging
equal to the union, bounded however many values, and the last minute moving on."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from peaknet_pipeline.monitor.latency import (
    HIGHEST,
    LOWEST,
    RATIO,
    Histogram,
    LatencyTracker,
    Window,
    bucket_of,
    merge_latency,
    upper_edge,
)


def order_statistic(values: np.ndarray, q: float) -> float:
    """The value of rank ceil(q * n), the one Histogram.quantile estimates."""
    return float(np.sort(values)[max(1, math.ceil(q * values.size)) - 1])


@pytest.mark.parametrize("q", [0.01, 0.5, 0.9, 0.95, 0.99, 1.0])
def test_percentiles_of_known_values_are_within_one_bucket(q):
    rng = np.random.default_rng(7)
    values = rng.lognormal(mean=np.log(0.2), sigma=1.0, size=5000)  # about 20 ms .. 2 s
    h = Histogram()
    h.add(values)
    true = order_statistic(values, q)
    assert true / math.sqrt(RATIO) <= h.quantile(q) <= true * math.sqrt(RATIO)


def test_summary_of_a_few_values_and_exact_extremes():
    h = Histogram()
    h.add(np.array([0.010, 0.020, 0.030, 0.040, 1.5]))
    s = h.summary()
    assert s["count"] == 5 and s["max_s"] == 1.5
    assert 0.030 / math.sqrt(RATIO) <= s["median_s"] <= 0.030 * math.sqrt(RATIO)
    assert s["p95_s"] == 1.5  # the top rank is the exact maximum
    assert 0 < s["median_s"] <= s["p95_s"] <= s["max_s"]
    assert Histogram().summary() == {"count": 0, "median_s": None, "p95_s": None, "max_s": None}


def test_buckets_hold_their_upper_edge_and_clamp_the_rest():
    assert bucket_of(np.array([upper_edge(3)]))[0] == 3
    assert bucket_of(np.array([upper_edge(3) * 1.0001]))[0] == 4
    # skewed clocks (negative), zero, NaN and absurdly large values stay in range
    extremes = bucket_of(np.array([-2.0, 0.0, np.nan, 1e-12, 1e12, np.inf]))
    assert extremes.tolist() == [LOWEST, LOWEST, LOWEST, LOWEST, HIGHEST, HIGHEST]


def test_a_merge_equals_the_histogram_of_the_union():
    rng = np.random.default_rng(1)
    a_values, b_values = rng.exponential(0.05, 3000), rng.exponential(2.0, 700)
    a, b, union = Histogram(), Histogram(), Histogram()
    a.add(a_values)
    b.add(b_values)
    union.add(np.concatenate([a_values, b_values]))
    a.merge(b)
    assert a.buckets == union.buckets and a.count == union.count
    assert (a.min_s, a.max_s) == (union.min_s, union.max_s)
    assert a.sum_s == pytest.approx(union.sum_s)
    assert a.summary() == union.summary()


def test_merging_writers_records_through_json_equals_the_union():
    rng = np.random.default_rng(2)
    values = [rng.exponential(s, 500) for s in (0.01, 0.1, 1.0)]
    now = 1_000_000.0
    records = []
    for v in values:
        t = LatencyTracker()
        t.observe(now - v, now)  # arrived v seconds before `now`
        records.append(json.loads(json.dumps(t.as_dict(now))))  # as report.json holds them
    union = Histogram()
    union.add(np.concatenate(values))
    got = merge_latency(records + [None, {}])
    assert got["count"] == 1500 and got["buckets"] == union.as_dict()["buckets"]
    assert (got["median_s"], got["p95_s"]) == (union.quantile(0.5), union.quantile(0.95))
    assert got["max_s"] == pytest.approx(union.max_s)
    assert got["last_minute"]["count"] == 1500


def test_size_stays_bounded_after_a_million_observations():
    rng = np.random.default_rng(3)
    t = LatencyTracker()
    now = 0.0
    for _ in range(100):  # 10^6 values over 10^4 s, spread over 18 decades
        now += 100.0
        t.observe(now - 10.0 ** rng.uniform(-9, 9, 10_000), now)
    assert t.run.count == 1_000_000
    assert len(t.run.buckets) <= HIGHEST - LOWEST + 1
    assert len(t.window) <= 2  # only the slots of the last minute are kept
    assert len(json.dumps(t.as_dict(now))) < 20_000


def test_the_last_minute_forgets_older_values_and_keeps_its_own_maximum():
    w = Window(window_s=60.0, slot_s=1.0)
    w.add(np.array([5.0]), now=100.0)
    w.add(np.array([0.1, 0.2]), now=130.0)
    assert w.histogram(now=150.0).count == 3
    minute = w.histogram(now=161.5)  # the 5 s value's slot [100, 101) is now over 60 s old
    assert minute.count == 2 and minute.max_s == 0.2
    assert w.histogram(now=300.0).count == 0
