"""Config: one schema behind YAML, --set and the CRD; clear errors naming the path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from peaknet_pipeline.config import (
    ConfigError,
    PipelineConfig,
    apply_overrides,
    config_hash,
    json_schema,
    load_config,
    parse_override,
    to_yaml,
    validate_config,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples" / "configs").glob("*.yaml"))


def test_defaults_are_valid_and_round_trip_through_yaml(tmp_path):
    cfg = load_config()
    path = tmp_path / "c.yaml"
    path.write_text(to_yaml(cfg))
    again = load_config(path)
    assert again == cfg
    assert config_hash(again) == config_hash(cfg)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_config_loads(path):
    # Upstream lesson 2: the README's own example configs failed to load.
    cfg = load_config(path)
    assert isinstance(cfg, PipelineConfig)


def test_examples_exist():
    assert any(p.name == "demo.yaml" for p in EXAMPLES)


def test_override_types_are_coerced():
    data = apply_overrides(
        {},
        [
            "inference.num_actors=3",
            "inference.compile=true",
            "source.random.frame_shape=[1, 64, 96]",
            "model.weights_path=null",
            "writer.output_dir=/tmp/x=y",
        ],
    )
    cfg = PipelineConfig.model_validate(data)
    assert cfg.inference.num_actors == 3
    assert cfg.inference.compile is True
    assert cfg.source.random.frame_shape == [1, 64, 96]
    assert cfg.model.weights_path is None
    assert cfg.writer.output_dir == "/tmp/x=y"


def test_override_on_top_of_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("inference:\n  num_actors: 2\n  buffer_depth: 3\n")
    cfg = load_config(path, ["inference.num_actors=4"])
    assert (cfg.inference.num_actors, cfg.inference.buffer_depth) == (4, 3)


def test_override_does_not_mutate_input():
    data = {"inference": {"num_actors": 1}}
    apply_overrides(data, ["inference.num_actors=2"])
    assert data == {"inference": {"num_actors": 1}}


@pytest.mark.parametrize("text", ["novalue", "=3", "a..b=1"])
def test_malformed_override_is_rejected(text):
    with pytest.raises(ConfigError, match="--set"):
        parse_override(text)


def test_an_override_that_is_not_yaml_says_where_on_one_line():
    with pytest.raises(ConfigError) as caught:
        parse_override("source.random.frame_shape=[1, 64")
    assert str(caught.value) == (
        "--set source.random.frame_shape: value '[1, 64', line 1, column 7: not valid YAML: "
        "expected ',' or ']', but got '<stream end>' (while parsing a flow sequence that starts "
        "at line 1, column 1)"
    )


def test_override_into_a_value_names_the_path():
    with pytest.raises(ConfigError, match="inference.num_actors is a value"):
        apply_overrides({"inference": {"num_actors": 1}}, ["inference.num_actors.x=2"])


def test_unknown_key_names_the_full_path(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("queue:\n  q1:\n    capacity_itmes: 5\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "queue.q1.capacity_itmes: unknown key" in str(err.value)
    assert str(path) in str(err.value)


def test_bad_value_names_the_path_and_the_value():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["inference.buffer_depth=0"])
    assert "inference.buffer_depth" in str(err.value)
    assert "0" in str(err.value)


def test_unknown_override_key_is_an_error():
    with pytest.raises(ConfigError, match="writer.min_peak: unknown key"):
        load_config(None, ["writer.min_peak=3"])


def test_cross_field_rule():
    with pytest.raises(ConfigError, match="max_pixels_per_peak"):
        load_config(None, ["writer.min_pixels_per_peak=10", "writer.max_pixels_per_peak=5"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)


def test_every_field_has_a_description():
    def walk(schema, defs, path):
        for name, prop in schema.get("properties", {}).items():
            ref = prop.get("$ref") or next(
                (a["$ref"] for a in prop.get("anyOf", []) if "$ref" in a), None
            )
            if ref:
                walk(defs[ref.split("/")[-1]], defs, f"{path}{name}.")
            else:
                assert prop.get("description"), f"{path}{name} has no description"

    schema = json_schema()
    walk(schema, schema["$defs"], "")


def test_units_in_field_names():
    # Fields holding sizes or durations say their unit.
    schema = json.dumps(json_schema())
    for bad in ('"timeout"', '"capacity"', '"rate"', '"memory"'):
        assert bad not in schema


def test_cli_config_commands(tmp_path):
    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "peaknet_pipeline.cli", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    shown = cli("config", "show", "--set", "writer.min_peaks=3")
    assert shown.returncode == 0, shown.stderr
    assert yaml.safe_load(shown.stdout)["writer"]["min_peaks"] == 3

    schema = cli("config", "schema")
    assert json.loads(schema.stdout)["title"] == "PipelineConfig"

    path = tmp_path / "c.yaml"
    path.write_text("model:\n  kindd: threshold\n")
    bad = cli("config", "validate", "--config", str(path))
    assert bad.returncode == 2
    assert "model.kindd: unknown key" in bad.stderr

    path.write_text("model:\n  kind: threshold\n")
    good = cli("config", "validate", "--config", str(path))
    assert good.returncode == 0 and "valid" in good.stdout


def test_import_stays_light():
    # The top package and the config CLI must not pull in torch or ray.
    code = (
        "import sys, peaknet_pipeline, peaknet_pipeline.config, peaknet_pipeline.cli;"
        "print(sorted(m for m in ('torch', 'ray', 'transformers', 'h5py') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["writer.compression=gzip", "writer.compression_level=12"], "must be 0..9"),
        (["writer.compression=zstd", "writer.compression_level=0"], "must be 1..22"),
        (["writer.compression=lzf", "writer.compression_level=3"], "applies to"),
    ],
)
def test_compression_level_must_fit_the_compression(overrides, message):
    # Caught by `config validate`, not by a writer dying mid-run.
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)
    assert load_config(None, ["writer.compression=gzip", "writer.compression_level=9"])


@pytest.mark.parametrize("key", ["", "a/b", "1st", "has space"])
def test_pass_through_field_names_must_be_usable_dataset_names(key):
    with pytest.raises(ConfigError, match="source.socket.hdf5.extra"):
        validate_config({"source": {"socket": {"hdf5": {"extra": {key: "/data/x"}}}}})
    cfg = validate_config({"source": {"socket": {"npz": {"extra": {"pulse_id": "pid"}}}}})
    assert cfg.source.socket.npz.extra == {"pulse_id": "pid"}


def test_at_least_one_inference_actor():
    with pytest.raises(ConfigError, match="inference.num_actors"):
        load_config(None, ["inference.num_actors=0"])


def test_a_queue_needs_room_for_a_record_on_every_shard():
    with pytest.raises(
        ConfigError, match=r"queue.q2: .*num_shards=8 is more than capacity_items=4"
    ):
        load_config(None, ["queue.q2.num_shards=8", "queue.q2.capacity_items=4"])
