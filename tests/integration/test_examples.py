"""Every example config works as shipped (upstream lesson 2: the README's own example configs
failed to load). Each loads and validates; each that needs no network peer runs briefly here,
in a scratch working directory, the way the README tells a user to run it. The socket example
needs a sender: test_pipeline.py runs it with `peaknet-pipeline push`, as the README does.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from peaknet_pipeline.config import ModelConfig, PipelineConfig, load_config
from peaknet_pipeline.driver import run
from peaknet_pipeline.monitor import TimeSeries
from peaknet_pipeline.preflight import check_inputs

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "examples" / "configs"
README = (REPO / "README.md").read_text()
QUIET = ["monitor.console=false", "monitor.report_html=false"]  # the page: test_report_page.py
BRIEF = ["source.random.num_frames=8", *QUIET]  # one batch of the default 8 frames


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_config_loads(path):
    load_config(path)


def test_the_crystal_examples_cell_file_is_its_cell():
    """lysozyme.cell, for indexamajig -p, says what crystal.yaml draws: the CrystFEL unit
    cell file format (libcrystfel/src/cell-utils.c, load_cell_from_file: first line exact)."""
    crystal = load_config(CONFIGS / "crystal.yaml").source.random.crystal
    text = (CONFIGS / "lysozyme.cell").read_text()
    assert text.splitlines()[0] == "CrystFEL unit cell file version 1.0"
    assert text == crystal.cell_file()
    assert "a = 79.10 A" in text and "c = 37.90 A" in text and "centering = P" in text


# The two published PeakNet sizes: no weights of them can be downloaded, so these presets run
# random weights until the user names a checkpoint, and their first lines say so.
ARCHITECTURE_PRESETS = {"default.yaml", "673m.yaml"}
KUBERNETES = {name: REPO / "examples" / name for name in ("run.yaml", "run-gpu.yaml")}


def weights_fit(model: ModelConfig, weights: Path, tmp_path: Path) -> list[str]:
    """The problems `run` would report for `model` with `weights` (none: it loads them)."""
    cfg = PipelineConfig(model=model.model_copy(update={"weights_path": str(weights)}))
    cfg.writer.output_dir = str(tmp_path / "{run_id}")
    return check_inputs(cfg)


@pytest.mark.parametrize(
    "path", [*sorted(CONFIGS.glob("*.yaml")), *KUBERNETES.values()], ids=lambda p: p.name
)
def test_every_example_runs_trained_weights_or_says_what_it_runs(path, tmp_path):
    """Issue 20, point 8: socket.yaml, replay.yaml and run.yaml ran random weights without
    saying so (86,062 "peaks" in 256 frames). Each example runs weights that exist and fit its
    architecture, or the threshold oracle by name, or is a published-size preset that says it
    runs random weights until given a checkpoint."""
    text = path.read_text()
    doc = yaml.safe_load(text)
    pipeline = doc["spec"]["pipeline"] if path.name in KUBERNETES else doc
    model = ModelConfig.model_validate(pipeline.get("model", {}))
    if model.kind == "threshold":
        return
    if path.name in ARCHITECTURE_PRESETS:
        assert model.weights_path is None
        assert "random weights" in text and "--set model.weights_path=" in text, path.name
        return
    assert model.weights_path, f"{path.name} runs random weights without saying so"
    if path.name == "run-gpu.yaml":  # real weights, from an image the site builds (README)
        assert Path(model.weights_path).is_absolute(), model.weights_path
        assert f"COPY --chown=1000:100 peaknet.pt {model.weights_path}" in README
        return
    if path.name == "run.yaml":  # the demo weights, where the pipeline image carries them
        assert Path(model.weights_path).is_absolute(), model.weights_path
        local = REPO / "examples" / "weights" / Path(model.weights_path).name
    else:  # relative to the repository root, where the README runs the examples
        local = REPO / model.weights_path
    assert local.is_file(), local
    assert weights_fit(model, local, tmp_path) == []


@pytest.mark.ray
def test_default_preset_runs_briefly(ray_session, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # 33 M parameters: one batch of small frames shows the preset builds and runs end to end.
    small = [*BRIEF, "source.random.frame_shape=[1,128,128]"]
    report = run(load_config(CONFIGS / "default.yaml", small))
    assert report["exit_code"] == 0 and report["accounting"]["frames_inferred"] == 8


@pytest.mark.ray
@pytest.mark.slow
def test_673m_preset_runs_briefly(ray_session, tmp_path, monkeypatch):
    # 673 M parameters: one small frame, to show the preset builds and runs end to end.
    monkeypatch.chdir(tmp_path)
    small = ["source.random.num_frames=1", "source.random.batch_size=1"]
    small += ["source.random.frame_shape=[1,64,64]", *QUIET]
    report = run(load_config(CONFIGS / "673m.yaml", small))
    assert report["exit_code"] == 0 and report["accounting"]["frames_inferred"] == 1


def _documented_keys(readme: str, file_name: str) -> set[str]:
    """Keys in the README's table for `file_name` (first cells like "| `key`, `key2` |")."""
    section = readme.split(f"#### `{file_name}`", 1)[1].split("\n#", 1)[0]
    cells = re.findall(r"^\| (`[^|]+) \|", section, flags=re.MULTILINE)
    return {key for cell in cells for key in re.findall(r"`([a-z_]+)`", cell)}


@pytest.mark.ray
def test_summary_and_report_say_each_thing_once_and_the_readme_documents_both(
    ray_session, tmp_path, monkeypatch
):
    monkeypatch.chdir(REPO)  # the demo names its weights relative to the repository root
    cfg = load_config(CONFIGS / "demo.yaml", BRIEF)
    cfg.writer.output_dir = str(tmp_path / "{run_id}")
    report = run(cfg)
    out = Path(report["output_dir"])
    summary = json.loads((out / "summary.json").read_text())
    written = json.loads((out / "report.json").read_text())
    assert written == json.loads(json.dumps(report))

    series = TimeSeries.read(out / "timeseries.jsonl")  # sampled every progress interval
    last = series.samples[-1]
    assert last.frames()["written"] == report["accounting"]["events_handled_by_writers"]
    assert last.object_store["capacity_bytes"] > 0 and last.queues["Q1"]["shard_depths"]

    shared = set(summary) & set(written)
    assert shared == {"run_id", "config_hash"}  # the two identify the run, nothing else twice
    assert all("files" not in w for w in written["writer"])  # the files are in summary.json
    assert summary["files"] and "recovery" in summary and "recovery" not in written

    readme = (REPO / "README.md").read_text()
    assert _documented_keys(readme, "summary.json") == set(summary)
    assert _documented_keys(readme, "report.json") == set(written)
