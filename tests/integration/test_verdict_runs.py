"""The verdict on real runs that are each limited by one stage. A rate-limited source (starved,
receive-bound) is the run of test_report_page.py; a model slower than ingest (backlogged) is
the overload test (test_overload.py); here a writer slower than inference (writer-bound)."""

from __future__ import annotations

import pytest

from peaknet_pipeline.config import PipelineConfig
from peaknet_pipeline.driver import run

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_a_slow_writer_is_writer_bound(ray_session, tmp_path):
    # Every frame written with gzip at level 9 (noise compresses slowly): a writer does about
    # 5 frames/s on one core here, the threshold oracle many times that.
    cfg = PipelineConfig.model_validate(
        {
            "source": {"random": {"frame_shape": [1, 256, 256], "batch_size": 2, "num_frames": 0}},
            "queue": {"q1": {"capacity_items": 2}, "q2": {"capacity_items": 2}},
            "model": {"kind": "threshold", "threshold": 60.0},
            "writer": {
                "output_dir": str(tmp_path / "{run_id}"),
                "images": "all",
                "compression": "gzip",
                "compression_level": 9,
                "max_pending_batches": 1,
            },
            "monitor": {"progress_interval_s": 0.5, "console": False, "report_html": False},
            "runtime": {"max_run_time_s": 5.0},
        }
    )
    report = run(cfg)
    # 4: stopped by runtime.max_run_time_s (an endless source), every accepted frame written
    assert report["exit_code"] == 4 and report["accounting"]["accounted"], report["errors"]
    judged = report["verdict"]
    assert judged["word"] == "writer-bound", judged
    evidence = judged["evidence"]
    assert evidence["q2_fill"] >= 0.7 and evidence["writer_busy"] > 0.5, evidence
    assert "Q2 stayed" in judged["sentence"] and "writer.num_actors" in judged["sentence"]
