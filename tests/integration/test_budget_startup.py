"""The object-store budget at start-up: a config whose queues and buffers could overfill the
object store does not start (exit code 2), and the message names values that fit.

The CLI tests run `peaknet-pipeline` as a subprocess with ray.object_store_memory_bytes set,
so the check happens before Ray starts; the last test goes through the check that runs once
Ray is up, against the session Ray's 1 GiB store.
"""

from __future__ import annotations

import re

import pytest
from test_first_hour import DEMO, cli, one_clean_line

from helpers import link_examples
from peaknet_pipeline.config import PipelineConfig, load_config
from peaknet_pipeline.driver import StartupError, run
from peaknet_pipeline.preflight import check_inputs

# The demo with 64-record queues: about 352 MiB in flight (2 MiB batches). The threshold model
# needs no weights file, so neither command loads torch.
OVERFULL = [
    "--set", "model.kind=threshold",
    "--set", "queue.q1.capacity_items=64",
    "--set", "queue.q2.capacity_items=64",
    "--set", "ray.object_store_memory_bytes=380000000",  # 0.6 x 362 MiB = 217 MiB
]  # fmt: skip


def test_an_overfull_config_does_not_start_and_names_values_that_fit(tmp_path):
    root = link_examples(tmp_path)
    args = ["-c", str(DEMO), *OVERFULL, "--set", f"writer.output_dir={tmp_path}/out/{{run_id}}"]
    result = cli("run", *args, cwd=root)
    assert result.returncode == 2, result.stderr
    line = one_clean_line(result.stderr)
    assert line.startswith("peaknet-pipeline: could not start: object store budget: ")
    assert "Q1 128 MiB" in line and "ray.object_store_budget_fraction=0.6" in line
    assert not (tmp_path / "out").exists()  # nothing started, nothing left behind

    validate = cli("config", "validate", *args, cwd=root)
    assert validate.returncode == 2 and "object store budget" in one_clean_line(validate.stderr)

    # Every value the message offers makes the config pass on its own.
    fixes = re.findall(r"(queue\.q\d\.capacity_items|ray\.object_store_memory_bytes)=(\d+)", line)
    assert {key for key, _ in fixes} == {"queue.q2.capacity_items", "ray.object_store_memory_bytes"}
    overrides = [a for a in args[2:] if a != "--set"]
    for key, value in fixes:
        assert check_inputs(load_config(DEMO, [*overrides, f"{key}={value}"])) == []


@pytest.mark.ray
def test_the_store_ray_reports_is_checked_once_ray_runs(ray_session, tmp_path):
    import ray

    cfg = PipelineConfig.model_validate(
        {
            # 32 MiB batches: Q1 and Q2 alone can hold 2 GiB each; the session's store is 1 GiB.
            "source": {"random": {"frame_shape": [1, 1024, 1024], "num_frames": 8}},
            "model": {"kind": "threshold"},
            "writer": {"output_dir": str(tmp_path / "{run_id}")},
            "runtime": {"run_id": "overfull"},
            "monitor": {"console": False, "report_html": False},
        }
    )
    with pytest.raises(StartupError, match=r"^object store budget: .* 1 GiB store"):
        run(cfg)
    names = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}
    assert not any(name.startswith("overfull-") for name in names)  # no queue was created
    assert not (tmp_path / "overfull").exists()
