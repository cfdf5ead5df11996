"""report.html's structure, without a browser: the verdict first, then every section in order,
each figure an embedded PNG, nothing fetched from the network, one column of bounded width.
Drawn from a synthetic time series and a run with no CXI files (writer.images: none, and no
hits), so the page's own handling of missing frames is checked too."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser

import numpy as np

from helpers import QUEUE_CAPACITY, timeline
from peaknet_pipeline.config import PipelineConfig
from peaknet_pipeline.monitor import TimeSeries
from peaknet_pipeline.monitor.page import render
from peaknet_pipeline.monitor.plots import actor_shares, interval_rates, lifetime

PNG = b"\x89PNG\r\n\x1a\n"


class Outline(HTMLParser):
    """Sections (id, title), images (src) and every URL-bearing attribute of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[tuple[str, str]] = []  # (section, src)
        self.urls: list[str] = []
        self.first_verdict_at: int | None = None
        self._tags = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        self._tags += 1
        if tag == "section":
            self.sections.append(a["id"])
        if tag == "div" and a.get("class") == "verdict" and self.first_verdict_at is None:
            self.first_verdict_at = len(self.sections)
        if tag == "img":
            self.images.append((self.sections[-1], a["src"]))
        self.urls += [v for k, v in attrs if k in ("href", "src") and v]


def _report(cfg: PipelineConfig) -> dict:
    acc = {
        "frames_ingested": 400,
        "frames_inferred": 400,
        "frames_rejected_by_inference": 0,
        "events_written": 0,
        "hits": 0,
        "accounted": True,
        "lost_before_writers": 0,
    }
    return {
        "run_id": "synthetic",
        "started": "2026-01-01T00:00:00+0000",
        "elapsed_s": 12.0,
        "streaming_s": 10.0,
        "ended_by": "end of stream",
        "exit_code": 0,
        "verdict": None,
        "accounting": acc,
        "errors": [],
        "ingest": [{"actor_id": "ingest-0", "frames_out": 400}],
        "inference": [{}],
        "writer": [{}],
        "output_dir": "/nowhere",
        "config": cfg.model_dump(mode="json"),
    }


def _series() -> TimeSeries:
    ingest = {"frames_out": 40, "source_s": 0.25, "receive_s": 0.0, "put_s": 0.75}
    busy = {"frames_out": 40, "busy_s": 1.0}
    series = TimeSeries()
    for sample in timeline(
        ingest=ingest, inference=busy, writer={"frames_out": 40, "busy_s": 0.2}, q1=QUEUE_CAPACITY
    ):
        sample.queues["Q1"]["shard_depths"] = [QUEUE_CAPACITY // 2] * 2
        series.add(sample)
    return series


def test_the_page_opens_with_the_verdict_then_every_section_with_embedded_pngs(tmp_path):
    cfg = PipelineConfig.model_validate({"writer": {"images": "none"}})
    html = render(_report(cfg), {"files": []}, _series(), tmp_path)
    page = Outline()
    page.feed(html)

    assert html.startswith("<!doctype html>")
    assert page.first_verdict_at == 0  # before any section
    assert re.search(r'class="word"[^>]*>backlogged<', html)
    assert page.sections == ["facts", "queues", "rates", "shares", "busy", "store", "frames"] + [
        "peaks",
        "hits",
    ]
    drawn = [section for section, _ in page.images]
    assert drawn == ["queues", "rates", "shares", "busy", "store", "hits"]
    for _, src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG
    assert all(url.startswith("data:") for url in page.urls)  # nothing from the network
    assert "max-width: 940px" in html and "max-width: 100%" in html  # no sideways scrolling
    assert "no frames are stored (writer.images: none)" in html
    assert "evidence" in html and "ingest 40.0/s" in html


def test_a_run_too_short_to_judge_says_so_at_the_top(tmp_path):
    cfg = PipelineConfig()
    series = TimeSeries()
    series.add(timeline(seconds=0)[0])
    html = render(_report(cfg), {"files": []}, series, tmp_path)
    assert "not judged" in html and "too short to sample twice" in html
    assert "no rows were written" in html


def test_rates_and_time_shares_per_actor_come_from_differences_between_samples():
    samples = timeline(seconds=4, ingest={"frames_out": 10, "source_s": 0.5, "receive_s": 0.2})
    t, rate = interval_rates(samples, "ingest", "frames_out")
    assert np.allclose(t, [0.5, 1.5, 2.5, 3.5]) and np.allclose(rate, 10.0)
    ((actor, role, parts),) = [row for row in actor_shares(samples) if row[1] == "ingest"]
    assert (actor, role) == ("ingest-0", "ingest")
    shares = {label: round(frac, 3) for label, frac, _ in parts}
    assert shares == {"waiting for input": 0.2, "making frames": 0.3, "put into Q1": 0.0}


def test_a_finished_actor_is_measured_over_its_lifetime_only():
    # Ingest ran for 2 s of a 6 s series and shows as done from t=3 on: it is measured up to
    # that first sample (sampling's resolution), not over the 6 s.
    samples = timeline(seconds=6, ingest={"source_s": 1.0}, ingest_until=2)
    assert [s.t for s in lifetime(samples, "ingest-0")] == [0.0, 1.0, 2.0, 3.0]
    ((_, _, parts),) = [row for row in actor_shares(samples) if row[1] == "ingest"]
    assert dict((label, frac) for label, frac, _ in parts)["making frames"] == 2 / 3


def test_an_actor_keeping_its_own_clock_is_measured_by_it():
    # Ingest reports elapsed_s, which stops when it ends: no idle tail up to the next sample.
    samples = timeline(seconds=6, ingest={"source_s": 1.0, "elapsed_s": 1.0}, ingest_until=2)
    ((_, _, parts),) = [row for row in actor_shares(samples) if row[1] == "ingest"]
    assert dict((label, frac) for label, frac, _ in parts)["making frames"] == 1.0
