"""The writer's arrival-to-written latency (writer/stage.py, monitor/latency.py): one
observation per event handled without failure, measured on the writer's wall clock against
the event's `arrival_t`, which stays out of the CXI files; and the report's and page's
figures made from the writers' records."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from test_cxi import make_result

from peaknet_pipeline.config import WriterConfig
from peaknet_pipeline.monitor.latency import RATIO, latency_report
from peaknet_pipeline.monitor.page import _latency_rows
from peaknet_pipeline.records import ARRIVAL_T
from peaknet_pipeline.sources.base import stamp_arrival
from peaknet_pipeline.stats import WriterStats
from peaknet_pipeline.writer import WriterStage

NOW = 1_700_000_000.0


def stage(tmp_path, clock: list[float], **kw) -> WriterStage:
    cfg = WriterConfig(**{"min_peaks": 3, "max_peaks": 16, **kw})
    return WriterStage(cfg, str(tmp_path), 0, wall=lambda: clock[0])


def arrived(ago_s: list[float]) -> dict:
    n = len(ago_s)
    return {"event_id": np.arange(n), ARRIVAL_T: NOW - np.asarray(ago_s)}


def test_every_event_handled_is_observed_once_at_the_moment_it_was_written(tmp_path):
    clock = [NOW]
    st = stage(tmp_path, clock)
    hits_and_not, images, masks = make_result([5, 0, 4, 1], meta=arrived([0.5, 0.5, 2.0, 2.0]))
    st.process(hits_and_not, images, masks)  # rows for 2 hits, 2 non-hits counted only
    clock[0] = NOW + 1.0
    failing, images, masks = make_result([3, 3], seq=1, meta=arrived([0.1, 0.1]))
    st.process(failing, images, masks[:, :, :-1])  # bad output: failed, not observed
    stats = st.stats()
    assert stats["hits"] + stats["non_hits"] == 4 and stats["failed"] == {"bad_output": 2}
    latency = stats["latency"]
    assert latency["count"] == 4 and latency["max_s"] == 2.0 and latency["min_s"] == 0.5
    assert latency["last_minute"]["count"] == 4
    assert 0.5 / RATIO <= latency["median_s"] <= 0.5 * RATIO
    # the record crosses Ray inside WriterStats and is JSON in report.json
    assert WriterStats("writer-0", latency=latency).as_dict()["latency"]["count"] == 4
    json.dumps(latency)
    st.close()
    assert st.summary()["latency"]["count"] == 4


def test_the_arrival_time_is_not_written_into_the_cxi_files(tmp_path):
    clock = [NOW]
    st = stage(tmp_path, clock, images="all")
    result, images, masks = make_result([5, 0], meta=arrived([0.2, 0.3]))
    st.process(result, images, masks)
    st.close()
    (path,) = [p for p in tmp_path.iterdir() if p.suffix == ".cxi"]
    with h5py.File(path, "r") as f:
        assert "event_id" in f["/LCLS"] and ARRIVAL_T not in f["/LCLS"]


def test_events_without_an_arrival_time_are_written_and_not_observed(tmp_path):
    st = stage(tmp_path, [NOW])
    result, images, masks = make_result([5, 4])
    st.process(result, images, masks)
    assert st.stats()["hits"] == 2 and st.stats()["latency"]["count"] == 0


def test_ingest_stamps_a_batch_when_made_unless_its_source_stamped_it():
    made = stamp_arrival({"event_id": np.arange(3)}, 3, NOW)
    assert made[ARRIVAL_T].dtype == np.float64 and made[ARRIVAL_T].tolist() == [NOW] * 3
    received = {ARRIVAL_T: np.full(2, NOW - 5.0)}
    assert stamp_arrival(received, 2, NOW) is received


def test_the_report_merges_writers_and_the_page_says_it_in_milliseconds(tmp_path):
    writers = []
    for index, ago in enumerate(([0.01] * 30, [0.2] * 10)):
        st = stage(tmp_path / str(index), [NOW])
        result, images, masks = make_result([5] * len(ago), meta=arrived(ago))
        st.process(result, images, masks)
        writers.append({"actor_id": f"writer-{index}", "latency": st.stats()["latency"]})
    got = latency_report(writers + [{"actor_id": "writer-9"}])  # one that wrote nothing
    assert got["count"] == 40 and got["last_minute"]["count"] == 40
    assert got["max_s"] == pytest.approx(0.2) and got["p95_s"] == pytest.approx(0.2, rel=0.05)
    assert got["median_s"] == pytest.approx(0.01, rel=0.05)
    assert got["writers"]["writer-1"]["count"] == 10 and got["writers"]["writer-9"]["count"] == 0
    assert "buckets" not in got and "buckets" not in got["writers"]["writer-0"]
    ((name, words),) = _latency_rows(got)
    assert name == "latency (arrival to written)"
    assert words.startswith("median 10.0 ms") and "max 200.0 ms over 40 events" in words
    assert _latency_rows(None) == [] and _latency_rows({"count": 0}) == []
