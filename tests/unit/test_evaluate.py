"""Recovery statistics against injected peaks: matching with positional errors, the words a
run ends with (which model, and a warning only for random weights), and `evaluate RUN_DIR`'s
errors. The figures of real runs are checked in tests/integration/test_peaknet_end_to_end.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from peaknet_pipeline.cli import main
from peaknet_pipeline.config import PipelineConfig
from peaknet_pipeline.evaluate import Tally, match, recovery_lines
from peaknet_pipeline.monitor.report import format_summary

SHIPPED = {"kind": "peaknet", "weights_path": "/repo/examples/weights/peaknet-demo.pt"}
RANDOM = {"kind": "peaknet", "weights_path": None}
ORACLE = {"kind": "threshold", "weights_path": None}


def test_match_counts_recovered_and_spurious_peaks_and_measures_the_distance():
    truth = np.array([[10.0, 10.0], [20.0, 20.0], [40.0, 40.0]])
    found = np.array([[10.3, 10.4], [41.0, 41.0], [60.0, 5.0]])
    recovered, spurious, distances = match(truth, found, tolerance_px=1.5)
    assert (recovered, spurious) == (2, 1)  # (41, 41) is 1.41 px from (40, 40): within 1.5
    assert sorted(distances) == pytest.approx([0.5, np.sqrt(2)])
    assert match(truth, np.empty((0, 2)), 1.5)[:2] == (0, 0)


def test_tally_sums_events_and_reports_recall_precision_and_error():
    tally = Tally(1.5)
    tally.add(np.array([[5.0, 5.0], [9.0, 9.0]]), np.array([[5.0, 5.2]]))
    tally.add(np.array([[3.0, 3.0]]), np.array([[3.0, 3.0], [30.0, 30.0]]))
    stats = tally.stats()
    assert stats["events"] == 2 and stats["injected"] == 3 and stats["found"] == 3
    assert stats["recovered_frac"] == pytest.approx(2 / 3)
    assert stats["spurious_frac"] == pytest.approx(1 / 3)
    assert stats["position_error_px"]["mean"] == pytest.approx(0.1)
    assert Tally().stats()["position_error_px"] is None  # nothing recovered: no error figure


STATS = {
    "tolerance_px": 1.5,
    "recovered": 5110,
    "injected": 5120,
    "recovered_frac": 5110 / 5120,
    "spurious": 3,
    "found": 5113,
    "spurious_frac": 3 / 5113,
    "position_error_px": {"mean": 0.18, "median": 0.15, "p95": 0.49},
}


def test_recovery_lines_name_the_model_and_warn_only_about_random_weights():
    shipped = "\n".join(recovery_lines(STATS, SHIPPED))
    assert shipped.startswith(
        "PeakNet, weights peaknet-demo.pt: injected peaks recovered within 1.5 px: "
        "5110 of 5120 (99.8%); spurious 3 of 5113 found (0.1%)"
    )
    assert (
        "\nrecall 99.8%, precision 99.9%; position error of recovered peaks: mean 0.18 px"
        in shipped
    )
    assert "mean nothing" not in shipped
    assert "mean nothing" in "\n".join(recovery_lines(STATS, RANDOM))
    oracle = recovery_lines(STATS, ORACLE)
    assert oracle[0].startswith("threshold oracle: ") and "mean nothing" not in "".join(oracle)
    nothing = {**STATS, "recovered": 0, "recovered_frac": 0.0, "found": 0, "spurious": 0}
    nothing.update(spurious_frac=0.0, position_error_px=None)
    assert recovery_lines(nothing, SHIPPED)[1] == "recall 0.0%, precision n/a (none found)"


def test_the_end_of_run_summary_reads_right_with_shipped_weights():
    report = {
        "run_id": "r1",
        "ended_by": "end of stream",
        "elapsed_s": 20.0,
        "streaming_s": 10.0,
        "exit_code": 0,
        "output_dir": "/tmp/runs/r1",
        "errors": [],
        "restarts": [],
        "dead_letters": [],
        "config": {"model": SHIPPED},
        "accounting": {
            "frames_ingested": 256,
            "frames_inferred": 256,
            "frames_rejected_by_inference": 0,
            "events_written": 256,
            "hits": 256,
            "events_failed_in_writers": 0,
            "accounted": True,
            "last_known_counts_of": [],
        },
    }
    summary = {"files": [{"path": "a.cxi"}], "incomplete_files": [], "recovery": STATS}
    lines = format_summary(report, summary).splitlines()
    assert lines[3] == (
        "  PeakNet, weights peaknet-demo.pt: injected peaks recovered within 1.5 px: "
        "5110 of 5120 (99.8%); spurious 3 of 5113 found (0.1%)"
    )
    assert lines[4].startswith("  recall 99.8%, precision 99.9%; position error of recovered")
    assert lines[5].startswith("  output: /tmp/runs/r1 (1 CXI file, summary.json")


def test_evaluate_names_what_is_missing(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path)]) == 2
    assert f"{tmp_path}/report.json does not exist" in capsys.readouterr().err


def test_evaluate_refuses_a_run_without_injected_peaks(tmp_path, capsys):
    cfg = PipelineConfig.model_validate({"source": {"kind": "replay"}})
    report = {"run_id": "r", "config": cfg.model_dump(mode="json"), "ingest": []}
    (tmp_path / "report.json").write_text(json.dumps(report))
    (tmp_path / "summary.json").write_text(json.dumps({"files": []}))
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "source.kind is 'replay'" in capsys.readouterr().err
