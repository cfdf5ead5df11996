"""`profile.torch`: a torch profiler trace of one inference actor's batches, on the CPU."""

from __future__ import annotations

import json

import pytest

from helpers import SMALL_MODEL
from peaknet_pipeline.config import PipelineConfig
from peaknet_pipeline.driver import run


@pytest.mark.ray
@pytest.mark.slow
def test_profile_torch_writes_a_chrome_trace_of_the_models_ops(ray_session, tmp_path):
    cfg = PipelineConfig.model_validate(
        {
            "source": {"random": {"frame_shape": [1, 64, 64], "batch_size": 2, "num_frames": 8}},
            "model": {"kind": "peaknet", **SMALL_MODEL},
            "inference": {"num_actors": 1},
            "writer": {"output_dir": str(tmp_path / "{run_id}"), "min_peaks": 0},
            "monitor": {"console": False, "report_html": False},
            "profile": {"torch": {"actor": 0, "batches": 2}},
        }
    )
    report = run(cfg)
    assert report["exit_code"] == 0, report["errors"]
    trace = tmp_path / report["run_id"] / "torch-trace-inference-0.json"
    events = json.loads(trace.read_text())["traceEvents"]
    names = {e.get("name") for e in events}
    # Two batches, each a range around the model's operators (PeakNet convolves).
    assert {"batch random-0#0", "batch random-0#1"} <= names
    assert "batch random-0#2" not in names
    assert "aten::conv2d" in names


def test_the_profiled_actor_must_exist():
    with pytest.raises(
        ValueError, match=r"profile.torch.actor=2: the run has inference actors 0..1"
    ):
        PipelineConfig.model_validate(
            {"inference": {"num_actors": 2}, "profile": {"torch": {"actor": 2}}}
        )
