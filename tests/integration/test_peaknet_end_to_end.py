"""PeakNet end to end: the demo config with its shipped weights, on a real local Ray, from the
repository root as `make demo` runs it, on a source seed the weights were never trained on.
The recovery figures come from the CXI files the writers produced (summary.json), and
`peaknet-pipeline evaluate RUN_DIR` reads the same figures back from the run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peaknet_pipeline.cli import main
from peaknet_pipeline.config import load_config
from peaknet_pipeline.driver import run

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "configs" / "demo.yaml"
WEIGHTS = REPO / "examples" / "weights" / "peaknet-demo.pt"
HELD_BACK_SEED = 977  # neither the demo's seed (0) nor a training seed (>= 2**40)
FRAMES = 32


@pytest.fixture(scope="module")
def demo_run(ray_session, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-weights")
    overrides = [
        f"source.random.num_frames={FRAMES}",
        f"source.random.seed={HELD_BACK_SEED}",
        f"writer.output_dir={out}/{{run_id}}",
        "monitor.console=false",
        "monitor.report_html=false",  # the page: test_report_page.py
    ]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)  # the config's weights_path is relative to the repository root
        report = run(load_config(DEMO, overrides))
    return report, Path(report["output_dir"])


def test_peaknet_with_the_shipped_weights_recovers_the_injected_peaks(demo_run):
    report, out = demo_run
    assert report["exit_code"] == 0, report["errors"]
    assert report["config"]["model"]["weights_path"] == str(WEIGHTS)  # made absolute
    recovery = json.loads((out / "summary.json").read_text())["recovery"]
    assert recovery["events"] == FRAMES and recovery["injected"] == FRAMES * 20
    assert recovery["recovered_frac"] >= 0.9, recovery
    assert recovery["spurious_frac"] <= 0.1, recovery
    assert recovery["position_error_px"]["mean"] < 0.5, recovery


def test_evaluate_reads_the_same_figures_from_the_run_directory(demo_run, capsys):
    _, out = demo_run
    assert main(["evaluate", str(out), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    recovery = json.loads((out / "summary.json").read_text())["recovery"]
    assert {k: figures[k] for k in recovery} == recovery
    assert figures["model"] == {"kind": "peaknet", "weights_path": str(WEIGHTS)}
    assert figures["complete"] is True

    assert main(["evaluate", str(out)]) == 0
    text = capsys.readouterr().out
    assert "PeakNet, weights peaknet-demo.pt: injected peaks recovered within 1.5 px" in text
    assert "random weights" not in text
