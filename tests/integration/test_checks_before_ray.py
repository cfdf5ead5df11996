"""Every check that needs no Ray runs in `config validate` and before `run` starts Ray.

The CLI tests run the real command with RAY_TMPDIR in the test's directory: Ray creates its
session directory there as it starts, so a run refused before Ray starts leaves none (no timing
involved). The checks against the store Ray reports once it runs are in test_budget_startup.py.
"""

from __future__ import annotations

from pathlib import Path

from test_first_hour import DEMO, REPO, cli, one_clean_line

from helpers import link_examples
from peaknet_pipeline import preflight
from peaknet_pipeline.config import load_config
from peaknet_pipeline.preflight import check_inputs

SOCKET = REPO / "examples" / "configs" / "socket.yaml"
# docs/tuning.md's ePix10k2M over two ports (any free port: nothing gets that far).
EPIX = [
    "--set", "model.kind=threshold",  # no weights to load: the budget is the same
    "--set", "source.socket.addresses=[tcp://127.0.0.1:0,tcp://127.0.0.1:0]",
    "--set", "inference.frame_shape=[16,352,384]",
    "--set", "inference.num_actors=2",
    "--set", "inference.buffer_depth=3",
    "--set", "source.socket.start_timeout_s=1",  # today's code starts: let it end soon
    "--set", "runtime.service=false",  # socket.yaml is a service: one that never ends alone
]  # fmt: skip


def _refused_before_ray(tmp_path: Path, *args: str) -> str:
    """`validate` and `run` of the same config both refuse it with one line; `run` never
    starts Ray and leaves no run directory. Returns run's line."""
    out = ["--set", f"writer.output_dir={tmp_path}/out/{{run_id}}"]
    env = {"RAY_TMPDIR": str(tmp_path / "ray"), "RAY_ADDRESS": ""}
    validate = cli("config", "validate", *args, *out, cwd=tmp_path, env=env)
    assert validate.returncode == 2, validate.stdout + validate.stderr
    assert "object store budget: " in one_clean_line(validate.stderr)
    run = cli("run", *args, *out, cwd=tmp_path, env=env)
    assert run.returncode == 2, run.stderr
    line = one_clean_line(run.stderr)
    assert line.startswith("peaknet-pipeline: could not start: object store budget: "), line
    assert not (tmp_path / "ray").exists(), "Ray was started before the check refused the run"
    assert not (tmp_path / "out").exists()
    return line


def test_ray_default_store_is_checked_by_validate_and_before_ray_starts(tmp_path):
    """Seen: with frame_shape [1,4096,4096] and a Q1 of 64, `validate` said valid and `run`
    refused 11 s later, once Ray had started. Here Q1 holds 256 batches of 512 MiB, more than
    Ray's default store can be on any machine (at most 200 GB), so the outcome does not depend
    on this machine's memory."""
    link_examples(tmp_path)
    args = ["-c", str(DEMO), "--set", "model.kind=threshold"]
    args += ["--set", "source.random.frame_shape=[1,4096,4096]"]
    args += ["--set", "queue.q1.capacity_items=256"]
    line = _refused_before_ray(tmp_path, *args)
    assert "(Ray's default for this machine" in line
    assert "any one of these fits" not in line


def test_a_socket_config_over_budget_does_not_start(tmp_path):
    """Seen: `can hold 4.08 GiB ... (assumed 8 frames per socket message); set
    inference.frame_shape to check it for certain` as a warning, and the run started."""
    args = ["-c", str(SOCKET), *EPIX, "--set", "ray.object_store_memory_bytes=300000000"]
    line = _refused_before_ray(tmp_path, *args)
    assert "this config can hold 4.08 GiB" in line
    assert "source.socket.frames_per_message=8" in line


def test_the_cpu_and_queue_concurrency_checks_need_no_ray(monkeypatch):
    """Checks the driver used to make only once Ray ran: an embedded instance too small for
    the actors, and queues whose shards cannot take every blocked call. As in a fresh `run`
    process: no Ray in this one (the test session's may already be up, and a process that
    holds a Ray instance runs on that one, whose CPUs the embedded-instance check is not for)."""
    monkeypatch.setattr(preflight, "_ray_runs_here", lambda: False)
    cpus = load_config(DEMO, ["model.kind=threshold", "ray.num_cpus=1", "inference.num_actors=2"])
    assert any("reserve 3.5 CPUs" in p and "but ray.num_cpus is 1" in p for p in check_inputs(cpus))
    tight = load_config(DEMO, ["model.kind=threshold", "queue.q1.max_blocked_calls_per_shard=2"])
    assert any(
        "queue.q1.max_blocked_calls_per_shard=2 is too small" in p for p in check_inputs(tight)
    )
