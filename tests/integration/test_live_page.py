"""The live page on a real run: a paced random source streams for about 10 s while the test
reads the page's JSON endpoints and its newest-hit images as a facility dashboard would, and
(where Debian's chromium is installed) loads the page in headless Chromium twice while the run
streams and once after it ended. The driver's `stop_live_page` is held until the test has
looked: report.json is written by then, so the page's last figures are compared with it."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import threading
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest
from runs import DriverThread, random_run

pytestmark = [pytest.mark.ray, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FRAMES, RATE_HZ = 160, 16.0  # 10 s of streaming
PANELS = ("p-hits", "p-rate", "p-powder", "p-peaks", "p-health")
SCREENSHOT = Path("/tmp/live-page.png")


def fetch(url: str) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def doc(base: str, path: str) -> Any:
    code, body = fetch(base + path)
    assert code == 200, (path, code, body[:200])
    return json.loads(body)


def chromium(url: str, profile: Path, *extra: str) -> str:
    """The page's DOM after its scripts ran for 4 s of virtual time (fetches are waited for)."""
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=4000", *extra]  # fmt: skip
    done = subprocess.run([*flags, url], capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def page_state(dom: str) -> dict[str, Any]:
    filled = {p for p in PANELS if re.search(rf'id="{p}"[^>]*data-filled="1"', dom)}
    big = re.search(r'<img id="big"[^>]*>', dom)
    tag = big.group(0) if big else ""
    hit = re.search(r'data-hit="(\d+)"', tag)
    state = re.search(r'<body[^>]*data-state="(\w+)"', dom)
    written = re.search(r'id="k-written">([^<]*)<', dom)
    return {
        "filled": filled,
        "hit": int(hit.group(1)) if hit else None,
        "loaded": 'data-loaded="1"' in tag,
        "state": state.group(1) if state else None,
        "written": written.group(1) if written else None,
    }


@pytest.fixture(scope="module")
def watched(ray_session, tmp_path_factory) -> dict[str, Any]:
    from peaknet_pipeline import driver

    tmp = tmp_path_factory.mktemp("live")
    cfg = random_run(tmp, "live-page", FRAMES, RATE_HZ, (
        "monitor.live_page.enabled=true", "monitor.live_page.port=0",
        "monitor.progress_interval_s=0.5", "writer.min_peaks=5", "source.random.peaks_per_frame=5",
    ))  # fmt: skip
    seen: dict[str, Any] = {"summaries": [], "hits": [], "images": {}, "doms": []}
    started, ended, release = threading.Event(), threading.Event(), threading.Event()
    start, stop = driver.start_live_page, driver.stop_live_page

    def start_page(*args: Any) -> Any:
        out = io.StringIO()
        with redirect_stdout(out):
            seen["server"] = start(*args)
        seen["printed"] = out.getvalue()
        started.set()
        return seen["server"]

    def stop_page(server: Any) -> None:
        if server is not None and not ended.is_set():  # the reports are written: look first
            ended.set()
            release.wait(120)
        stop(server)

    patch = pytest.MonkeyPatch()
    patch.setattr(driver, "start_live_page", start_page)
    patch.setattr(driver, "stop_live_page", stop_page)
    run = DriverThread(cfg)
    try:
        run.start()
        assert started.wait(60), "the page never started"
        base = f"http://127.0.0.1:{seen['server'].url_port}"
        seen["base"] = base
        loads = 0
        while not ended.is_set():
            summary = doc(base, "/api/summary")
            if summary["state"] in ("streaming", "draining"):
                seen["summaries"].append(summary)
                hits = doc(base, "/api/hits")
                if hits:
                    seen["hits"].append(hits[0]["id"])
                    code, png = fetch(base + hits[0]["image"] + "?lo=5&hi=99")
                    if code == 200:  # pushed out of the buffer meanwhile: 404
                        seen["images"][hits[0]["id"]] = png
                for path in ("/api/series", "/api/peaks", "/api/powder", "/api/health"):
                    seen[path] = doc(base, path)  # the latest while streaming
                if CHROMIUM and loads < 2 and summary["frames"]["written"] > 40 * (loads + 1):
                    loads += 1  # once early, once later in the stream
                    seen["doms"].append(page_state(chromium(base + "/", tmp / "p", "--dump-dom")))
            ended.wait(0.4)
        seen["final"] = {p: doc(base, p) for p in ("/api/summary", "/api/peaks", "/api/hits")}
        if CHROMIUM:
            seen["end_dom"] = page_state(chromium(base + "/", tmp / "p", "--dump-dom"))
            shot = ["--hide-scrollbars", "--window-size=1500,1250", f"--screenshot={SCREENSHOT}"]
            chromium(base + "/", tmp / "p", *shot)
    finally:
        release.set()
        seen["report"] = run.finish()
        patch.undo()
    return seen


def test_the_driver_prints_the_pages_address_before_streaming(watched):
    port = watched["server"].url_port
    assert watched["printed"] == f"live page: http://127.0.0.1:{port}/\n"


def test_the_json_endpoints_follow_the_run_while_it_streams(watched):
    summaries = watched["summaries"]
    written = [s["frames"]["written"] for s in summaries]
    assert len(summaries) >= 5 and written == sorted(written) and written[0] < FRAMES
    assert any(s["fps"]["in"] > 0 for s in summaries)
    assert all(s["min_peaks"] == 5 and s["daq_run"] in (None,) for s in summaries)
    late = [s for s in summaries if s["frames"]["written"] > 40]
    assert late and all(s["latency"]["last_minute"]["count"] > 0 for s in late)
    assert any(s["newest_frame_age_s"] is not None and s["newest_frame_age_s"] < 5 for s in late)
    series = watched["/api/series"]
    assert len(series["t"]) == len(series["in_fps"]) == len(series["hit_rate"])
    assert watched["/api/health"]["pool"]["desired"] == 1
    # The newest hit changes as the run goes on, and its image is a PNG of the 64 x 64 frame.
    assert len(set(watched["hits"])) >= 3
    assert len(watched["images"]) >= 3
    from PIL import Image  # an independent decoder: the page's PNGs are real PNGs

    for png in watched["images"].values():
        image = Image.open(io.BytesIO(png))
        assert image.format == "PNG" and image.size == (64, 64) and image.mode == "RGB"


def test_at_the_end_the_page_agrees_with_report_json(watched):
    report, final = watched["report"], watched["final"]["/api/summary"]
    writers = report["writer"]
    hits = sum(w["hits"] for w in writers)
    handled = sum(w["hits"] + w["non_hits"] for w in writers)
    assert report["exit_code"] == 0
    assert final["frames"]["written"] == sum(w["frames_out"] for w in writers) == FRAMES
    assert final["hits"] == hits and final["hit_rate"] == pytest.approx(hits / handled)
    latency = report["latency"]  # the same buckets merged: the same figures
    run = final["latency"]["run"]
    assert run["count"] == latency["count"] == FRAMES
    for key in ("median_s", "p95_s", "max_s"):
        assert run[key] == pytest.approx(latency[key])
    assert final["latency"]["last_minute"]["count"] == latency["last_minute"]["count"]
    peaks = watched["final"]["/api/peaks"]  # the writers' last figures: every frame
    assert peaks["frames"] == FRAMES and peaks["hits"] == hits
    assert sum(peaks["per_frame"]) == FRAMES
    assert watched["final"]["/api/hits"]  # the newest hits stay shown


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (apt-get install chromium)")
def test_chromium_shows_the_run_streaming_and_its_end(watched):
    early, later = watched["doms"]
    for dom in (early, later):
        assert dom["state"] in ("streaming", "draining")
        assert dom["loaded"] and dom["hit"] is not None
        assert {"p-hits", "p-rate", "p-health", "p-peaks"} <= dom["filled"], dom
    assert later["hit"] > early["hit"]  # a newer hit shown as the run went on
    end = watched["end_dom"]
    assert end["state"] == "ended" and end["loaded"] and set(PANELS) == end["filled"]
    assert end["written"] == f"{FRAMES} / {watched['final']['/api/summary']['hits']}"
    assert SCREENSHOT.is_file() and SCREENSHOT.stat().st_size > 20_000
