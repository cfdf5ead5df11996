"""The shipped demo weights: the file the demo config names loads strictly into the demo
architecture, its sidecar says what it is, a wrong architecture fails with the weights error,
retraining with the recorded settings reproduces the recorded loss curve's first steps, and
the model finds the injected peaks of a seed it was never trained on (in-process; the Ray
end-to-end run is tests/integration/test_peaknet_end_to_end.py). No Ray: a few seconds."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest

from peaknet_pipeline.config import load_config
from peaknet_pipeline.model import WeightsError, build_model, count_parameters, read_state_dict
from peaknet_pipeline.preflight import check_inputs
from peaknet_pipeline.training.assess import assess
from peaknet_pipeline.training.loop import init_model, train
from peaknet_pipeline.training.settings import FrameRanges, TrainSettings

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "configs" / "demo.yaml"
WEIGHTS = REPO / "examples" / "weights" / "peaknet-demo.pt"
SIDECAR = WEIGHTS.with_suffix(".json")
HELD_BACK_SEED = 4242  # neither the demo's seed (0) nor a training seed (>= 2**40)
REPRODUCED_STEPS = 3


@pytest.fixture(scope="module")
def demo():
    cfg = load_config(DEMO)
    cfg.model.weights_path = str(WEIGHTS)
    return cfg


@pytest.fixture(scope="module")
def sidecar():
    return json.loads(SIDECAR.read_text())


def test_the_demo_config_names_the_shipped_weights_relative_to_the_repository_root():
    assert load_config(DEMO).model.weights_path == "examples/weights/peaknet-demo.pt"
    assert (REPO / load_config(DEMO).model.weights_path).is_file()


def test_the_shipped_weights_load_strictly_into_the_demo_architecture(demo, caplog):
    state = read_state_dict(WEIGHTS)
    with caplog.at_level(logging.WARNING):
        model = build_model(demo.model)
    assert not [r for r in caplog.records if "RANDOM" in r.getMessage()]
    assert set(state) == set(model.state_dict())  # strict: nothing missing, nothing extra
    assert check_inputs(demo) == []


def test_the_sidecar_describes_the_file(demo, sidecar):
    data = WEIGHTS.read_bytes()
    assert sidecar["file"] == WEIGHTS.name and sidecar["bytes"] == len(data) < 4_000_000
    assert sidecar["sha256"] == hashlib.sha256(data).hexdigest()
    assert sidecar["parameters"] == count_parameters(build_model(demo.model))
    architecture = demo.model.model_dump(mode="json", exclude={"weights_path", "seed", "threshold"})
    assert sidecar["model"] == architecture
    assert sidecar["command"].startswith(
        "peaknet-pipeline train --config examples/configs/demo.yaml"
    )
    assert {"torch", "numpy", "python"} <= set(sidecar["software"])
    assert sidecar["evaluation"]["config_source"]["recovered_frac"] >= 0.9


def test_a_wrong_architecture_against_the_file_fails_with_the_weights_error(demo):
    wrong = demo.model.model_copy(update={"hidden_sizes": [16, 32, 64, 256]})
    with pytest.raises(WeightsError, match=r"does not match the model config.*shape mismatches"):
        build_model(wrong)
    cfg = demo.model_copy(update={"model": wrong})
    [problem] = check_inputs(cfg)
    assert "model.weights_path" in problem and "peaknet-demo.pt" in problem


def test_retraining_with_the_recorded_settings_reproduces_the_first_losses(demo, sidecar):
    recorded = sidecar["settings"]
    settings = TrainSettings(
        **{
            **recorded,
            "ranges": FrameRanges(**{k: tuple(v) for k, v in recorded["ranges"].items()}),
        }
    )
    source = demo.source.random.model_validate(sidecar["source"])
    model = init_model(demo.model, settings.seed)
    losses = train(model, source, settings, sidecar["pad_mode"], stop_after=REPRODUCED_STEPS)
    # Other thread counts sum in another order: equal to float32 rounding, not bit for bit.
    assert losses == pytest.approx(sidecar["loss_first_steps"][:REPRODUCED_STEPS], rel=1e-5)


def test_the_shipped_model_finds_the_peaks_of_a_held_back_seed(demo):
    source = demo.source.random.model_copy(update={"seed": HELD_BACK_SEED})
    stats = assess(build_model(demo.model), source, range(24), demo.writer)
    assert stats["injected"] == 24 * 20
    assert stats["recovered_frac"] >= 0.9, stats
    assert stats["spurious_frac"] <= 0.1, stats
    assert stats["position_error_px"]["mean"] < 0.5, stats
