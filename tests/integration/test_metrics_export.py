"""A run's metrics reach Ray's Prometheus endpoint, with plausible values.

The session's Ray has no known metrics port, so this runs `peaknet-pipeline run` as a
subprocess with an embedded Ray of its own (`ray.metrics_export_port`, and Ray's metrics report
interval lowered from 10 s to 1 s through its environment), scrapes the endpoint over HTTP while
the pipeline streams, then stops it with Ctrl-C (SIGINT: the drain) and expects a clean exit.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import link_examples

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "configs" / "demo.yaml"
FRAME_BYTES = 256 * 256 * 4  # the demo's frames: 1 x 256 x 256 float32
RUN = "metrics-export"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[str, list[tuple[dict, float]]]:
    """ray_peaknet_* samples by name: [(labels, value)] (an empty dict until Ray serves)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    except OSError:
        return {}
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            if sample.name.startswith("ray_peaknet_") and sample.labels.get("run") == RUN:
                out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def value(samples: dict, name: str, **labels: str) -> float | None:
    """The one sample of `name` whose labels include `labels` (None when absent)."""
    found = [v for lab, v in samples.get(name, []) if labels.items() <= lab.items()]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else None


def expectations(s: dict) -> dict[str, Callable[[], bool]]:
    frames = lambda stage, d: value(s, "ray_peaknet_frames_total", stage=stage, direction=d)  # noqa: E731
    ingested = frames("ingest", "out") or 0
    return {
        "frames at every stage": lambda: all(
            (frames(st, "out") or 0) > 0 for st in ("ingest", "inference", "writer")
        ),
        "ingest bytes are its frames' bytes": lambda: (
            value(s, "ray_peaknet_bytes_total", stage="ingest", direction="out")
            == ingested * FRAME_BYTES
            > 0
        ),
        "inference busy seconds": lambda: (
            (value(s, "ray_peaknet_busy_seconds_total", stage="inference") or 0) > 0
        ),
        "busy ratio in 0..1": lambda: (
            0 <= value(s, "ray_peaknet_busy_ratio", stage="inference") <= 1
        ),
        "rate-limited ingest waits for its input": lambda: (
            (value(s, "ray_peaknet_blocked_seconds_total", stage="ingest", on="get") or 0) > 0
        ),
        "batch times observed": lambda: (
            (value(s, "ray_peaknet_batch_seconds_count", stage="inference") or 0) > 0
        ),
        "latency observed once per event written": lambda: (
            value(s, "ray_peaknet_latency_seconds_count", actor="writer-0")
            == frames("writer", "out")
            > 0
            and value(s, "ray_peaknet_latency_seconds_bucket", actor="writer-0", le="+Inf")
            == frames("writer", "out")
        ),
        "Q1 shard capacity and depth": lambda: (
            value(s, "ray_peaknet_queue_capacity_items", queue="Q1", shard="0") == 16
            and 0 <= value(s, "ray_peaknet_queue_depth", queue="Q1", shard="0") <= 16
        ),
        "Q2 shard puts": lambda: (
            (value(s, "ray_peaknet_queue_records_total", queue="Q2", shard="0", op="put") or 0) > 0
        ),
        "object store use": lambda: (
            (value(s, "ray_peaknet_object_store_capacity_bytes") or 0)
            >= (value(s, "ray_peaknet_object_store_used_bytes") or -1)
            >= 0
        ),
    }


def unmet(samples: dict) -> list[str]:
    failed = []
    for what, check in expectations(samples).items():
        try:
            ok = check()
        except (TypeError, AssertionError):  # a sample not there yet
            ok = False
        if not ok:
            failed.append(what)
    return failed


@pytest.mark.slow
def test_a_run_exports_its_metrics_to_rays_prometheus_endpoint(tmp_path):
    port = free_port()
    root = link_examples(tmp_path)
    args = [
        "model.kind=threshold",  # the pipeline is what is measured, not the model
        "source.random.num_frames=0",  # until stopped
        "source.random.rate_hz=40",
        f"ray.metrics_export_port={port}",
        "monitor.progress_interval_s=1",
        "monitor.console=false",
        "monitor.report_html=false",
        f"runtime.run_id={RUN}",
        "runtime.max_run_time_s=90",  # a safety net only: the test stops it long before
        f"writer.output_dir={tmp_path}/runs/{{run_id}}",
    ]
    cmd = [sys.executable, "-m", "peaknet_pipeline.cli", "run", "-c", str(DEMO)]
    cmd += [a for arg in args for a in ("--set", arg)]
    env = {**os.environ, "RAY_metrics_report_interval_ms": "1000"}
    proc = subprocess.Popen(
        cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline, samples, missing = time.monotonic() + 75, {}, ["no scrape yet"]
        while missing and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(1.0)
            samples = scrape(port)
            missing = unmet(samples)
        assert not missing, f"missing or implausible: {missing}; scraped: {sorted(samples)}"
        proc.send_signal(signal.SIGINT)  # Ctrl-C: stop ingest and drain
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 4, output  # stopped before the end of its stream, all written
    report = json.loads((tmp_path / "runs" / RUN / "report.json").read_text())
    assert report["ended_by"] == "SIGINT (Ctrl-C)" and report["stopped_early"] is True
    assert "GPU metrics (peaknet_gpu_*) absent: inference runs on the CPU" in output
