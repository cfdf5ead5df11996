"""`peaknet-pipeline sweep` end to end on the session's Ray: a two-point grid of a few frames
each, every run kept in its own directory, one CSV and one plot for the sweep."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from peaknet_pipeline.cli import main
from peaknet_pipeline.logs import ray_output_env

pytestmark = [pytest.mark.ray, pytest.mark.slow]

DEMO = Path(__file__).resolve().parents[2] / "examples" / "configs" / "demo.yaml"


def test_a_sweep_runs_each_point_and_writes_a_csv_and_a_plot(
    ray_session, tmp_path, capsys, monkeypatch
):
    # The CLI sets Ray's log-forwarding variables for its process (this one, here): undone
    # after the test, so CLI runs started later by other tests inherit the session's own.
    for name in ray_output_env(ray_logs=False, terminal=False):
        monkeypatch.setenv(name, "")  # remembers the value (or its absence) to restore
        monkeypatch.delenv(name)
    sweep_dir = tmp_path / "sweep"
    code = main(
        [
            "sweep",
            "--config",
            str(DEMO),
            "--set",
            "model.kind=threshold",
            "--set",
            "source.random.num_frames=8",
            "--set",
            "monitor.console=false",
            "--set",
            "monitor.report_html=false",
            "--param",
            "source.random.batch_size",
            "--values",
            "2,8",
            "--output",
            str(sweep_dir),
        ]
    )
    assert code == 0, capsys.readouterr()
    with open(sweep_dir / "sweep.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["source.random.batch_size"] for r in rows] == ["2", "8"]
    for row in rows:
        assert row["exit_code"] == "0" and row["frames_inferred"] == "8"
        assert float(row["frames_per_s"]) > 0
        assert row["verdict"] == "too-short"  # 8 frames stream for well under a second
        assert 0 <= float(row["inference_busy"]) <= 1
        report = json.loads((Path(row["run_dir"]) / "report.json").read_text())
        assert report["run_id"] == row["run_id"]
        assert report["config"]["source"]["random"]["batch_size"] == int(
            row["source.random.batch_size"]
        )
    assert [Path(r["run_dir"]).name for r in rows] == ["00-batch_size-2", "01-batch_size-8"]
    assert (sweep_dir / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "sweep: 2 runs" in out and "source.random.batch_size=8: exit 0" in out
