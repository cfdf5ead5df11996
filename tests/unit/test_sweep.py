"""The sweep's grid: keys checked against the schema, values parsed as --set reads them, every
point validated before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from peaknet_pipeline.config import ConfigError
from peaknet_pipeline.sweep import (
    axes_of,
    grid,
    interrupted,
    points,
    row_of,
    split_values,
    sweep_exit_code,
)

DEMO = Path(__file__).resolve().parents[2] / "examples" / "configs" / "demo.yaml"


def test_values_split_on_commas_outside_brackets():
    assert split_values("1,2, 4,8") == ["1", "2", "4", "8"]
    assert split_values("[1,64,64],[1,32,48]") == ["[1,64,64]", "[1,32,48]"]
    with pytest.raises(ConfigError, match="an empty value"):
        split_values("1,,2")


def test_an_unknown_key_is_refused_naming_the_fields_of_that_name():
    with pytest.raises(ConfigError) as err:
        axes_of(["inference.batch_size"], ["1,2"])
    assert str(err.value) == (
        "--param inference.batch_size: not a config field; did you mean "
        "source.random.batch_size or source.replay.batch_size?"
    )
    with pytest.raises(ConfigError, match="see `config schema`"):
        axes_of(["queue.q1.capacity"], ["4"])
    with pytest.raises(ConfigError, match="give each --param one --values"):
        axes_of(["source.random.batch_size", "inference.buffer_depth"], ["1,2"])


def test_the_grid_is_every_combination_with_yaml_typed_values():
    axes = axes_of(["source.random.batch_size", "source.random.frame_shape"], ["1,4", "[1,64,64]"])
    assert grid(axes) == [
        {"source.random.batch_size": 1, "source.random.frame_shape": [1, 64, 64]},
        {"source.random.batch_size": 4, "source.random.frame_shape": [1, 64, 64]},
    ]
    pts = points(DEMO, ["model.kind=threshold"], axes)
    assert [p.cfg.source.random.batch_size for p in pts] == [1, 4]
    assert pts[1].label == "batch_size=4, frame_shape=[1, 64, 64]"
    assert pts[1].slug == "01-batch_size-4_frame_shape-1x64x64"


def test_an_invalid_value_fails_before_anything_runs_naming_the_point():
    axes = axes_of(["inference.buffer_depth"], ["2,0"])  # 0 is below the field's minimum
    with pytest.raises(ConfigError) as err:
        points(DEMO, [], axes)
    assert "sweep point inference.buffer_depth=0" in str(err.value)
    assert "inference.buffer_depth" in str(err.value).split(":", 1)[1]


def test_a_row_holds_throughput_busy_fraction_and_the_verdict():
    report = {
        "exit_code": 0,
        "streaming_s": 4.0,
        "accounting": {"frames_inferred": 100},
        "verdict": {"word": "starved", "evidence": {"inference_busy": 0.25, "q1_fill": 0.0}},
        "errors": [],
    }
    row = row_of({**report, "ended_by": "end of stream"})
    assert (row["frames_per_s"], row["inference_busy"], row["verdict"]) == (25.0, 0.25, "starved")
    assert not interrupted(row)
    # Ctrl-C (or SIGTERM) during a point drains that run and ends the sweep; so does a second
    # Ctrl-C. A point stopped by its own time limit or `peaknet-pipeline stop` does not.
    assert interrupted({**row, "exit_code": 4, "ended_by": "SIGINT (Ctrl-C)"})
    assert interrupted({**row, "exit_code": 4, "ended_by": "SIGTERM"})
    assert interrupted({**row, "exit_code": 130, "ended_by": "hard stop: second SIGINT (Ctrl-C)"})
    assert not interrupted({**row, "exit_code": 4, "ended_by": "runtime.max_run_time_s=10.0"})
    assert not interrupted({**row, "exit_code": 4, "ended_by": "peaknet-pipeline stop"})


def test_the_sweeps_exit_code_counts_points_stopped_by_their_time_limit_as_run():
    done = {"exit_code": 0, "ended_by": "end of stream"}
    timed = {"exit_code": 4, "ended_by": "runtime.max_run_time_s=10.0"}
    assert sweep_exit_code([done, timed]) == 0  # every point ran, every frame written
    assert sweep_exit_code([done, {"exit_code": 4, "ended_by": "SIGTERM"}]) == 4  # cut short
    assert sweep_exit_code([{"exit_code": 3, "ended_by": "SIGINT (Ctrl-C)"}]) == 1
    assert sweep_exit_code([done, {"exit_code": 2, "ended_by": ""}, timed]) == 1
    assert (
        sweep_exit_code([done, {"exit_code": 130, "ended_by": "hard stop: second SIGINT"}]) == 130
    )


def test_the_cli_refuses_a_bad_key_before_anything_runs(tmp_path, monkeypatch, capsys):
    from peaknet_pipeline.cli import main

    monkeypatch.chdir(tmp_path)
    args = ["sweep", "--config", str(DEMO), "--param", "inference.batch_size", "--values", "1,2"]
    assert main(args) == 2
    assert "did you mean source.random.batch_size" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no sweep directory, no run
