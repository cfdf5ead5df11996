"""The detector-size benchmark (bench/detector_bench.py) runs end to end in its quick form
(tiny frames, no Ray) and ends with one JSON line holding every stage against its floor."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "detector_bench.py"


def test_quick_run_reports_every_stage_against_its_floor(tmp_path):
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--tmpdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads(done.stdout.strip().splitlines()[-1])
    assert doc["bench"] == "detector" and doc["put"] == "numpy copy"
    run = doc["quick"]
    assert run["shape"] == [2, 64, 96]
    for stage, parts in {
        "ingest": ("receive", "decode", "put"),
        "inference": ("staging", "padding", "output"),
        "writer": ("peaks", "compress"),
    }.items():
        for part in parts:
            figure = run[stage][part]
            assert figure["floor_cpu_ms"] > 0 and figure["x_floor"] is not None, (stage, part)
    assert run["peaks_found_per_frame"] == 3  # every injected peak found: the masks are right
    assert run["writer_busy_ms_per_hit"] > 0
    assert abs(run["cores_at_120_hz"] - run["cpu_ms_per_frame"]["all"] * 0.12) < 0.01
    assert list(tmp_path.iterdir()) == []  # its files are removed
