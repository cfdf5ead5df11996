"""A new user's first hour: every failure says its reason in one line with the right exit code,
nothing is checked late that could be checked early, and a failed start leaves nothing behind.

CLI tests run the real `peaknet-pipeline` command as a subprocess; the others call the driver
in-process on the session's Ray.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from helpers import link_examples
from peaknet_pipeline import driver
from peaknet_pipeline.config import PipelineConfig
from peaknet_pipeline.errors import ANSI, StartupError

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "configs" / "demo.yaml"


def cli(
    *args: str, cwd: Path, env: dict | None = None, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*prefix, sys.executable, "-m", "peaknet_pipeline.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=240,
    )


def one_clean_line(text: str) -> str:
    """The stderr of a failed command: exactly one line, no traceback, no colour codes."""
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text and not ANSI.search(text), text
    return lines[0]


def _replay_cfg(tmp_path: Path, paths: list[str], **extra) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "source": {"kind": "replay", "replay": {"paths": paths, "batch_size": 4}},
            "model": {"kind": "threshold"},
            "writer": {"output_dir": str(tmp_path / "out" / "{run_id}"), "min_peaks": 0},
            "monitor": {"console": False},
            **extra,
        }
    )


def _no_ray(*args, **kwargs):
    raise AssertionError("Ray was contacted although the config names a missing file")


# -- checked before Ray starts -----------------------------------------------------------------
def test_a_missing_replay_file_fails_validate_and_run_before_ray_starts(tmp_path, monkeypatch):
    missing = tmp_path / "nope.cxi"
    args = ["-c", str(REPO / "examples/configs/replay.yaml")]
    args += ["--set", f"source.replay.paths=[{missing}]"]
    args += ["--set", f"writer.output_dir={tmp_path}/out/{{run_id}}"]
    # From the repository root, as the example says (its weights_path is relative to it).
    validate = cli("config", "validate", *args, cwd=link_examples(tmp_path))
    assert validate.returncode == 2
    assert f"source.replay.paths[0] {missing}: no such file" in one_clean_line(validate.stderr)

    run = cli("run", *args, cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    line = one_clean_line(run.stderr)
    assert (
        line == f"peaknet-pipeline: could not start: source.replay.paths[0] {missing}: no such file"
    )
    assert not (tmp_path / "out").exists()  # a failed start leaves no run directory

    monkeypatch.setattr(driver, "connect", _no_ray)  # in-process: found before connecting
    with pytest.raises(StartupError, match=r"paths\[0\] .*nope\.cxi: no such file"):
        driver.run(_replay_cfg(tmp_path, [str(missing)]))


def test_weights_files_are_checked_by_validate_naming_what_is_wrong(tmp_path):
    garbage, module, wrong = tmp_path / "garbage.pt", tmp_path / "module.pt", tmp_path / "wrong.pt"
    garbage.write_bytes(b"\x80\xa5" + bytes(range(254)))  # torch warns about it, then fails
    torch.save(torch.nn.Linear(2, 2), module)  # a pickled model, not a state dict
    torch.save({"not_a_layer.weight": torch.zeros(2)}, wrong)
    expected = {
        garbage: "is not a readable state dict: it is not a file written by torch.save",
        module: "is not a readable state dict: it holds pickled Python objects",
        wrong: "does not match the model config",
    }
    for path, message in expected.items():
        result = cli("config", "validate", "-c", str(DEMO), "--set",
                     f"model.weights_path={path}", cwd=tmp_path)  # fmt: skip
        assert result.returncode == 2
        line = one_clean_line(result.stderr)
        assert f"model.weights_path '{path}' {message}" in line, line
        assert "weights_only" not in line  # not torch's advice about loading unsafe pickles
    assert "missing keys" in line and "unexpected keys (1): not_a_layer.weight" in line


def test_an_output_dir_that_cannot_be_created_is_a_one_line_start_failure(tmp_path):
    link_examples(tmp_path)  # the demo's weights are found as from the repository root
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    args = ["-c", str(DEMO), "--set", f"writer.output_dir={blocker}/{{run_id}}"]
    for command in (["config", "validate"], ["run"]):
        result = cli(*command, *args, cwd=tmp_path)
        assert result.returncode == 2
        assert f"writer.output_dir '{blocker}/{{run_id}}': {blocker} is a file" in one_clean_line(
            result.stderr
        )


def test_ray_address_auto_without_a_cluster_is_a_one_line_start_failure(tmp_path):
    # `auto` finds any Ray on the machine by listing its processes (the test session's own
    # included), so the command runs in a private PID namespace where there is none.
    private = ("unshare", "--pid", "--fork", "--mount-proc")
    probe = subprocess.run([*private, "true"], capture_output=True, text=True)
    if probe.returncode:
        pytest.skip(f"cannot make a private PID namespace here: {probe.stderr.strip()}")
    env = {"RAY_TMPDIR": str(tmp_path / "ray"), "RAY_ADDRESS": ""}
    link_examples(tmp_path)
    args = ["-c", str(DEMO), "--set", "ray.address=auto"]
    args += ["--set", f"writer.output_dir={tmp_path}/out/{{run_id}}"]
    result = cli("run", *args, cwd=tmp_path, env=env, prefix=private)
    assert result.returncode == 2, result.stderr
    line = one_clean_line(result.stderr)
    assert "could not start: ray.address='auto': no running Ray cluster found" in line
    assert not (tmp_path / "out").exists()


# -- failures inside actors ------------------------------------------------------------------
@pytest.mark.ray
def test_a_socket_port_in_use_is_a_start_failure_naming_actor_and_address(
    ray_session, tmp_path, unique_name
):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"tcp://127.0.0.1:{taken.getsockname()[1]}"
        cfg = PipelineConfig.model_validate(
            {
                "source": {"kind": "socket", "socket": {"addresses": [address]}},
                "model": {"kind": "threshold"},
                "writer": {"output_dir": str(tmp_path / "out" / "{run_id}")},
                "runtime": {"run_id": unique_name},
            }
        )
        with pytest.raises(StartupError) as err:
            driver.run(cfg)
    message = str(err.value)
    assert (
        message == f"ingest socket-0: OSError: zmq bind '{address}' failed: Address already in use"
    )
    assert not (tmp_path / "out").exists()


def _replay_file(path: Path, frames: int, energy: np.ndarray) -> str:
    with h5py.File(path, "w") as f:
        f["/entry_1/data_1/data"] = np.random.default_rng(0).poisson(5, (frames, 32, 32))
        f["/LCLS/photon_energy_eV"] = energy
    return str(path)


@pytest.mark.ray
def test_a_stage_failing_mid_run_is_one_clean_line_in_report_and_summary(
    ray_session, tmp_path, unique_name, capsys
):
    # The photon energies are text: the file passes the start-up checks, and the source fails
    # on its first batch, after streaming has begun.
    path = _replay_file(tmp_path / "bad.cxi", 8, np.array([b"n/a"] * 8))
    cfg = _replay_cfg(tmp_path, [path], runtime={"run_id": unique_name})
    cfg.monitor.console = True
    cfg.runtime.restarts.ingest, cfg.runtime.restarts.backoff_s = 1, 0.1
    report = driver.run(cfg)

    # The source is restarted once (it resumes where Q1 stops), fails the same way, and the
    # run, out of restarts, ends naming both failures.
    cause = report["errors"][0]["error"]
    assert cause.startswith("ValueError: could not convert string to float:")
    assert report["exit_code"] == 1, (report["restarts"], report["accounting"])
    assert report["errors"] == [
        {"role": "ingest", "id": "replay-0", "error": cause},
        {"role": "ingest", "id": "replay-0.1", "error": cause},
    ]
    assert [r.get("replacement") for r in report["restarts"]] == ["replay-0.1", None]
    # replay-0 was replaced: only its replacement's failure, not made good, ended the run
    assert report["ended_by"] == f"ingest replay-0.1 failed: {cause}"
    written = (tmp_path / "out" / unique_name / "report.json").read_text()
    assert cause in written and "ray::" not in written and not ANSI.search(written)
    out = capsys.readouterr().out
    assert f"  ingest replay-0 failed: {cause}; replaced by replay-0.1;" in out
    assert f"  ingest replay-0.1 failed: {cause}; not replaced;" in out


@pytest.mark.ray
def test_describe_unwraps_actor_errors_and_deaths(ray_session):
    import ray

    from peaknet_pipeline.errors import describe

    @ray.remote(num_cpus=0)
    class Failing:
        def __init__(self, fail_to_start: bool = False):
            if fail_to_start:
                raise PermissionError("writer.output_dir /x: not writable")

        def fail(self):
            raise FileNotFoundError("source.replay.paths[0] x.cxi: no such file")

        def die(self):
            os._exit(1)

    actor = Failing.remote()
    with pytest.raises(ray.exceptions.RayTaskError) as raised:
        ray.get(actor.fail.remote())
    assert "\x1b[" in str(raised.value)  # what used to reach the summary
    assert describe(raised.value) == "FileNotFoundError: source.replay.paths[0] x.cxi: no such file"
    with pytest.raises(ray.exceptions.RayActorError) as died:
        ray.get(actor.die.remote())
    line = describe(died.value)
    assert line.startswith("ActorDiedError: the actor's process died (") and "\n" not in line
    with pytest.raises(ray.exceptions.RayActorError) as not_started:
        ray.get(Failing.remote(fail_to_start=True).fail.remote())
    assert describe(not_started.value) == (
        "PermissionError: writer.output_dir /x: not writable (while starting the actor)"
    )


# -- what a run prints ---------------------------------------------------------------------
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) [a-z_.]+: \S")
RAY_NOISE = ("pid=", "Token authentication", "logical CPUs", "ray::")


def _demo_run(tmp_path: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    settings = ["source.random.num_frames=48", "source.random.rate_hz=32"]  # 1.5 s
    settings += ["monitor.progress_interval_s=0.3", f"writer.output_dir={tmp_path}/{{run_id}}"]
    args = ["-c", str(DEMO), *(arg for s in settings for arg in ("--set", s)), *extra]
    result = cli("run", *args, cwd=link_examples(tmp_path), env=env)
    assert result.returncode == 0, result.stderr
    return result


@pytest.mark.slow
def test_default_output_is_the_pipelines_own_lines_in_one_format(tmp_path):
    result = _demo_run(tmp_path)
    assert not ANSI.search(result.stdout + result.stderr)
    assert not [noise for noise in RAY_NOISE if noise in result.stdout + result.stderr]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and all(LOG_LINE.match(line) for line in lines), lines
    assert any("sources.base: random-0: end of data after 48 frames" in li for li in lines)
    assert re.search(r"\|\s+\d+% done \|", result.stdout)  # a finite run shows how far it is


@pytest.mark.slow
def test_verbose_adds_rays_own_lines_and_actor_prefixes(tmp_path):
    # The prefixes are Ray's, whatever the model: the threshold oracle, no report page.
    quick = ("--set", "model.kind=threshold", "--set", "monitor.report_html=false")
    # A RAY_ADDRESS left in the user's shell (or a `ray start` on the machine) must not turn
    # ray.address=local into joining that cluster: ray.init() without an address did, and
    # then refused num_cpus, so the run could not start (cluster.py: connect).
    result = _demo_run(tmp_path, "-v", *quick, env={"RAY_ADDRESS": "127.0.0.1:1"})
    # Actors are named by their ids in Ray's prefixes (their repr), e.g. "(random-0 pid=...)".
    assert re.search(r"^\(random-0 pid=\d+\) ", result.stderr, flags=re.MULTILINE)
    assert not ANSI.search(result.stderr)  # not a terminal: no colour codes even then
