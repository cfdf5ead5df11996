"""Live page benchmark: does a browser watching the live page slow the run?

Whole runs (driver.run: random source as fast as it goes, the threshold oracle, one writer
keeping hits' frames), rounds interleaved back to back, medians of frames written per second
of streaming (report.json's frames over its streaming_s), in three modes:

- off: monitor.live_page.enabled false (the anchor);
- closed: the page served, nobody watching (no writer frame copies, no Ray calls for it);
- open: a client like the page itself: every JSON endpoint once a second, the newest hit's
  PNG and the powder pattern's PNG with them (the writers' views then fetched once a second,
  the newest hits copied and encoded on request).

Run: .venv/bin/python bench/live_page_bench.py   (a few minutes on 2 cores)
The last line printed is one JSON object {"bench": "live_page", ...}.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import tempfile
import threading
import urllib.request

from peaknet_pipeline.config import PipelineConfig
from peaknet_pipeline.driver import run

MODES = ("off", "closed", "open")
ENDPOINTS = ("/api/summary", "/api/series", "/api/peaks", "/api/powder", "/api/health")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def watch(base: str, stop: threading.Event, counts: dict[str, int]) -> None:
    """Poll like an open page: everything once a second (failures while the run starts or
    ends are counted, not fatal)."""
    while not stop.wait(1.0):
        try:
            for path in ENDPOINTS:
                urllib.request.urlopen(base + path, timeout=5).read()
            hits = json.loads(urllib.request.urlopen(base + "/api/hits", timeout=5).read())
            if hits:
                urllib.request.urlopen(base + hits[0]["image"], timeout=5).read()
                counts["images"] += 1
            urllib.request.urlopen(base + "/powder.png", timeout=5).read()
            counts["polls"] += 1
        except OSError:
            counts["failed"] += 1


def one_round(mode: str, args: argparse.Namespace, tmp: str, tag: str) -> tuple[float, dict]:
    port = free_port()
    cfg = PipelineConfig.model_validate(
        {
            "source": {
                "random": {
                    "frame_shape": [1, args.size, args.size],
                    "batch_size": 8,
                    "num_frames": args.frames,
                    "peaks_per_frame": 20,
                }
            },
            "model": {"kind": "threshold", "threshold": 60.0},
            "inference": {"num_actors": 1, "num_cpus_per_actor": 0.5},
            "writer": {"output_dir": f"{tmp}/{{run_id}}", "min_peaks": 10, "images": "hits"},
            "monitor": {
                "console": False,
                "report_html": False,
                "metrics": False,
                "live_page": {"enabled": mode != "off", "port": port},
            },
            "runtime": {"run_id": tag},
        }
    )
    stop, counts = threading.Event(), {"polls": 0, "images": 0, "failed": 0}
    client = None
    if mode == "open":
        base = f"http://127.0.0.1:{port}"
        client = threading.Thread(target=watch, args=(base, stop, counts), daemon=True)
        client.start()
    try:
        report = run(cfg)
    finally:
        stop.set()
        if client is not None:
            client.join(timeout=10)
    assert report["exit_code"] == 0, report["errors"]
    written = sum(w["frames_out"] for w in report["writer"])
    return written / report["streaming_s"], counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256, help="frame side, pixels (one panel)")
    ap.add_argument("--frames", type=int, default=4800, help="frames per run")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    rates: dict[str, list[float]] = {m: [] for m in MODES}
    polled: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for r in range(args.repeats):
                for mode in MODES:
                    rate, counts = one_round(mode, args, tmp, f"bench-{r}-{mode}")
                    rates[mode].append(rate)
                    if mode == "open":
                        polled = counts
                    print(f"round {r} {mode:6s} {rate:8.1f} frames/s {counts}", flush=True)
        finally:
            ray.shutdown()
    med = {m: statistics.median(v) for m, v in rates.items()}
    doc = {
        "bench": "live_page",
        "frame": [1, args.size, args.size],
        "frames_per_run": args.frames,
        "repeats": args.repeats,
        "frames_per_s": {m: round(v, 1) for m, v in med.items()},
        "closed_over_off": round(med["closed"] / med["off"], 3),
        "open_over_closed": round(med["open"] / med["closed"], 3),
        "open_client_last_round": polled,
        "spread": {m: [round(min(v), 1), round(max(v), 1)] for m, v in rates.items()},
    }
    print(json.dumps(doc))


if __name__ == "__main__":
    main()
