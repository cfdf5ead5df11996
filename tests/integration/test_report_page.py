"""report.html of a real run (random source, threshold oracle, real CXI files), drawn at the end
of the run and again by `peaknet-pipeline report`, and rendered by a real browser (headless
Chromium) where one is installed. The run is rate-limited well below what inference can do,
so it is also the real run behind the `starved` verdict."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from peaknet_pipeline.cli import main
from peaknet_pipeline.config import PipelineConfig
from peaknet_pipeline.driver import run
from peaknet_pipeline.monitor.verdict import WORDS

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SECTIONS = ["facts", "queues", "rates", "shares", "busy", "store", "frames", "peaks", "hits"]
SECTIONS += ["recovery", "recovery-errors"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# matplotlib's default line and bar colours (tab:blue, tab:orange, tab:green): the page's own
# CSS uses none of them, so seeing them in a screenshot means the plots were drawn.
PLOT_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44)]


@pytest.fixture(scope="module")
def run_dir(ray_session, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("page")
    cfg = PipelineConfig.model_validate(
        {
            "source": {
                "random": {
                    "frame_shape": [1, 96, 128],
                    "batch_size": 4,
                    "num_frames": 96,
                    "rate_hz": 30.0,  # about 3.2 s of streaming: long enough to judge
                    "peaks_per_frame": 12,
                    "peak_amplitude": 300.0,
                }
            },
            "queue": {"q1": {"capacity_items": 4}, "q2": {"capacity_items": 4}},
            "model": {"kind": "threshold", "threshold": 60.0},
            "inference": {"normalize": False},
            "writer": {"output_dir": str(out / "{run_id}"), "events_per_file": 48},
            "monitor": {"progress_interval_s": 0.3, "console": False},
        }
    )
    report = run(cfg)
    assert report["exit_code"] == 0, report["errors"]
    return Path(report["output_dir"])


def _sections(html: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)"', html)


def _images(html: str) -> list[str]:
    return re.findall(r'<img alt="[^"]*" src="(data:image/png;base64,[^"]+)"', html)


def test_a_rate_limited_source_starves_inference_receive_bound(run_dir):
    judged = json.loads((run_dir / "report.json").read_text())["verdict"]
    assert judged["word"] == "starved", judged
    assert "receive-bound" in judged["sentence"], judged
    # Receive-bound: waiting for input is the largest share of the source's time
    # (verdict.py `_starved`), not necessarily over half of it: on a loaded machine making and
    # putting frames took the rest (receive 0.495, decode 0.215, put 0.21 seen once).
    evidence = judged["evidence"]
    assert evidence["receive"] > max(evidence["decode"], evidence["put"]), evidence
    assert evidence["q1_fill"] < 0.5, evidence


def test_the_run_leaves_report_html_with_its_verdict_frames_and_plots(run_dir):
    report = json.loads((run_dir / "report.json").read_text())
    assert report["verdict"]["word"] in WORDS and report["verdict"]["sentence"]
    html = (run_dir / "report.html").read_text()
    top = html.index('class="verdict"')
    assert top < html.index("<section") and f">{report['verdict']['word']}<" in html[top:]
    assert _sections(html) == SECTIONS  # no "gpu" section on the CPU
    # On the CPU nothing is said about a GPU: null where a GPU run has its figures.
    assert report["gpu"] is None and report["verdict"]["evidence"]["gpu_busy"] is None
    assert all(a["gpu"] is None for a in report["inference"])
    assert "GPU" not in report["verdict"]["sentence"]
    assert len(_images(html)) == 9  # all but the two text sections (facts, recovery)
    assert "peaknet-w00-0000.cxi row" in html  # the frames drawn are the run's own rows
    assert "injected peaks recovered within 1.5 px" in html
    assert "http://" not in html and "https://" not in html


def test_report_json_and_page_carry_the_runs_arrival_to_written_latency(run_dir):
    report = json.loads((run_dir / "report.json").read_text())
    latency, acc = report["latency"], report["accounting"]
    handled = sum(w["hits"] + w["non_hits"] for w in report["writer"])
    assert latency["count"] == handled == acc["events_handled_by_writers"] == 96
    assert 0 < latency["median_s"] <= latency["p95_s"] <= latency["max_s"] < report["elapsed_s"]
    minute = latency["last_minute"]  # the run is shorter than a minute: all of it
    assert minute["count"] == 96 and minute["max_s"] == latency["max_s"]
    assert sum(w["count"] for w in latency["writers"].values()) == 96
    html = (run_dir / "report.html").read_text()
    assert "latency (arrival to written)</th><td>median " in html
    assert f"over {latency['count']} events" in html


def test_the_report_command_draws_the_page_again_from_the_run_directory(run_dir, capsys):
    first = (run_dir / "report.html").read_text()
    (run_dir / "report.html").unlink()
    assert main(["report", str(run_dir)]) == 0
    assert capsys.readouterr().out.strip() == str(run_dir / "report.html")
    again = (run_dir / "report.html").read_text()
    assert _sections(again) == _sections(first) and len(_images(again)) == len(_images(first))

    assert main(["report", str(run_dir / "nothing")]) == 2
    assert "report.json does not exist" in capsys.readouterr().err


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (apt-get install chromium)")
def test_chromium_renders_the_page_with_its_plots(run_dir, tmp_path):
    from PIL import Image

    url = (run_dir / "report.html").as_uri()
    flags = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert len(_images(dom.stdout)) == 9 and _sections(dom.stdout) == SECTIONS

    shot = tmp_path / "page.png"
    done = subprocess.run(
        [*flags, "--hide-scrollbars", "--window-size=1400,2400", f"--screenshot={shot}", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
    for colour in PLOT_COLOURS:  # each plot colour covers a visible area, not a stray pixel
        near = (np.abs(pixels - colour).sum(axis=1) < 30).sum()
        assert near > 500, (colour, near)
    # One centred column (940 px and its padding): in a 1400 px window, both margins stay
    # the plain page background, so nothing is wider than the column (no sideways scrolling).
    grey = np.asarray(Image.open(shot).convert("L"))
    assert (grey[:, :200] >= 249).all() and (grey[:, 1200:] >= 249).all()
