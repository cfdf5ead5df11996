"""The whole pipeline on a real local Ray: random source -> Q1 -> inference -> Q2 -> writers.

The model is the threshold oracle so that the peaks in the CXI files can be compared with the
injected ones; frames are not multiples of 32, so padding and crop-back are exercised.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

from helpers import link_examples
from peaknet_pipeline.config import PipelineConfig
from peaknet_pipeline.driver import run
from peaknet_pipeline.evaluate import recovery

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _oracle_config(tmp_path: Path, run_id: str, frame_shape, pad_mode: str) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "source": {
                "random": {
                    "frame_shape": frame_shape,
                    "batch_size": 5,
                    "num_frames": 48,
                    "num_actors": 2,
                    "peaks_per_frame": 12,
                    "peak_amplitude": 300.0,
                }
            },
            "queue": {"q1": {"capacity_items": 4}, "q2": {"capacity_items": 4}},
            "model": {"kind": "threshold", "threshold": 60.0},
            "inference": {"num_actors": 2, "pad_mode": pad_mode, "normalize": False},
            "writer": {
                "num_actors": 2,
                "output_dir": str(tmp_path / "{run_id}"),
                "events_per_file": 10,
                "min_peaks": 0,
                "images": "hits",
            },
            "monitor": {"progress_interval_s": 1.0, "report_html": False},
            "runtime": {"run_id": run_id},
        }
    )


@pytest.mark.parametrize(
    ("frame_shape", "pad_mode"),
    [([1, 100, 140], "center"), ([2, 72, 90], "bottom_right")],
    ids=["center-1panel", "bottom_right-2panels"],
)
def test_injected_peaks_are_recovered_from_the_cxi_files(
    ray_session, tmp_path, unique_name, frame_shape, pad_mode
):
    cfg = _oracle_config(tmp_path, unique_name, frame_shape, pad_mode)
    report = run(cfg)

    assert report["exit_code"] == 0, report["errors"]
    acc = report["accounting"]
    assert acc["accounted"] and acc["frames_ingested"] == 48
    assert acc["events_handled_by_writers"] == 48 == acc["events_written"]
    out = tmp_path / unique_name
    files = sorted(out.glob("*.cxi"))
    assert files and not list(out.glob("*.part"))
    summary = json.loads((out / "report.json").read_text())
    assert summary["accounting"] == acc

    stats = recovery(files, cfg.source.random, range(48), tolerance_px=1.5)
    assert stats["events_in_files"] == 48
    assert stats["recovered_frac"] >= 0.95, stats
    assert stats["spurious_frac"] < 0.02, stats


def _start_cli(tmp_path: Path, *overrides: str) -> subprocess.Popen:
    args = [
        sys.executable,
        "-m",
        "peaknet_pipeline.cli",
        "run",
        "--config",
        str(REPO / "examples" / "configs" / "demo.yaml"),
        "--set",
        f"writer.output_dir={tmp_path}/{{run_id}}",
        "--set",
        "runtime.run_id=sigint",
        "--set",
        "monitor.progress_interval_s=0.5",
        *[item for o in overrides for item in ("--set", o)],
    ]
    return subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=link_examples(tmp_path),
    )


def _wait_for_progress(proc: subprocess.Popen, needle: str, timeout_s: float) -> list[str]:
    """Read the run's output until a progress line shows `needle` written frames or more."""
    lines, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "written" in line and "| written 0 " not in line and needle in line:
            return lines
    raise AssertionError("no frames written in time:\n" + "".join(lines))


@pytest.mark.own_ray  # the CLI in a subprocess, with its own Ray
def test_sigterm_drains_every_accepted_frame_and_exits_4_stopped_early(tmp_path):
    # Upstream lesson 9: Ctrl-C had no handler, in-flight outputs were lost. An endless source
    # is stopped by SIGTERM (what Kubernetes and batch systems send; Ctrl-C is the same path,
    # test_metrics_export.py): everything it had put into Q1 must reach the files, and the
    # exit code and report.json say that the run was stopped before the end of its stream.
    # Random weights on two inference actors: the warning is printed once per run.
    proc = _start_cli(
        tmp_path,
        "source.random.num_frames=0",
        "source.random.rate_hz=100",
        "model.weights_path=null",
        "inference.num_actors=2",
        "writer.events_per_file=100000",  # one file: its count reads "1 CXI file"
    )
    try:
        before = "".join(_wait_for_progress(proc, "written", timeout_s=180))
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 4, output
    report = json.loads((tmp_path / "sigint" / "report.json").read_text())
    acc = report["accounting"]
    assert report["ended_by"] == "SIGTERM" and report["stopped_early"] is True
    assert report["exit_code"] == 4
    assert acc["accounted"] and acc["frames_ingested"] > 0
    assert acc["frames_inferred"] == acc["frames_ingested"] == acc["events_handled_by_writers"]
    summary = output[output.rindex("run sigint ended by") :]
    assert summary.startswith("run sigint ended by SIGTERM after"), summary
    assert "draining" not in summary and "Ctrl-C again" not in summary
    assert "stopped before the end of its stream: every frame it accepted was written" in summary
    assert (
        f"output: {tmp_path / 'sigint'} (1 CXI file, summary.json, report.json, report.html; "
        "exit code 4)" in summary
    )
    assert (before + output).count("PeakNet runs RANDOM weights") == 1, before + output


def _wait_for_line(
    proc: subprocess.Popen, needles: str | list[str], timeout_s: float, strict: bool = False
) -> None:
    """Read output until every needle was in a line (any order); with `strict`, the output
    ending first fails."""
    missing = {needles} if isinstance(needles, str) else set(needles)
    deadline, seen = time.monotonic() + timeout_s, []
    while missing and time.monotonic() < deadline:
        line = proc.stdout.readline()
        seen.append(line)
        missing = {needle for needle in missing if needle not in line}
        if not line:
            assert not strict, f"{missing} never printed:\n" + "".join(seen)
            return
    assert not missing, f"{missing} not printed in time:\n" + "".join(seen)


@pytest.mark.own_ray  # the CLI in a subprocess, with its own Ray
def test_second_ctrl_c_stops_at_once_and_says_what_is_on_disk(tmp_path):
    # As fast as possible: Q1 is full when the first SIGINT arrives, so draining takes a while.
    proc = _start_cli(
        tmp_path,
        "source.random.num_frames=0",
        "source.random.rate_hz=0",
        "writer.events_per_file=16",
        "monitor.report_html=false",  # not what this checks: drawing it only costs CPU
    )
    try:
        _wait_for_progress(proc, "written", timeout_s=180)
        proc.send_signal(signal.SIGINT)
        # Signals sent back to back coalesce; a user presses again after the first is handled.
        _wait_for_line(proc, "stopping ingest", timeout_s=30)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, output
    out = tmp_path / "sigint"
    report = json.loads((out / "report.json").read_text())
    assert report["ended_by"] == "hard stop: second SIGINT (Ctrl-C)"
    assert report["stopped_early"] is True
    # The writers were killed: the summary lists what is on disk, not what they returned.
    summary = json.loads((out / "summary.json").read_text())
    complete, parts = sorted(out.glob("*.cxi")), sorted(out.glob("*.cxi.part"))
    assert complete and summary["complete"] is False
    assert [Path(f["path"]) for f in summary["files"]] == complete
    assert [Path(f["path"]) for f in summary["incomplete_files"]] == parts
    for entry in summary["files"]:
        with h5py.File(entry["path"], "r") as f:
            assert len(f["/entry_1/result_1/nPeaks"]) == entry["events"] == 16
    assert f"({len(complete)} CXI file" in output
    assert ("incomplete (.part" in output) == bool(parts)


def _free_ports(count: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.mark.own_ray  # the CLI in a subprocess, with its own Ray
def test_socket_run_and_push_from_the_cli(tmp_path):
    # The README's live-data recipe, end to end through the two commands it shows.
    addresses = [f"tcp://127.0.0.1:{port}" for port in _free_ports(2)]
    run_cmd = [
        sys.executable,
        "-m",
        "peaknet_pipeline.cli",
        "run",
        "--config",
        str(REPO / "examples" / "configs" / "socket.yaml"),
        "--set",
        "source.socket.addresses=[" + ", ".join(f"'{a}'" for a in addresses) + "]",
        "--set",
        "source.socket.idle_timeout_s=3",
        "--set",
        "runtime.service=false",  # socket.yaml runs as a service: here one finite run
        "--set",
        f"writer.output_dir={tmp_path}/{{run_id}}",
        "--set",
        "runtime.run_id=socket",
    ]
    pipeline = subprocess.Popen(
        run_cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        # Each ingest actor says where it waits before anything is sent (Ray used to hold
        # these lines back until after the stream).
        waiting = [f"waiting for data on {address}" for address in addresses]
        _wait_for_line(pipeline, waiting, timeout_s=120, strict=True)
        push_cmd = [sys.executable, "-m", "peaknet_pipeline.cli", "push"]
        for address in addresses:
            push_cmd += ["--address", address]
        push_cmd += ["--num-frames", "24", "--batch-size", "8", "--shape", "1", "64", "64"]
        push = subprocess.run(push_cmd, capture_output=True, text=True, timeout=180)
        assert push.returncode == 0, push.stderr + push.stdout
        output, _ = pipeline.communicate(timeout=180)
    finally:
        pipeline.kill()
    assert pipeline.returncode == 0, output
    report = json.loads((tmp_path / "socket" / "report.json").read_text())
    acc = report["accounting"]
    assert acc["accounted"] and acc["frames_ingested"] == 48 == acc["events_handled_by_writers"]
    assert sorted(s["frames_out"] for s in report["ingest"]) == [24, 24]
    assert all(s["ended_by"].startswith("idle timeout") for s in report["ingest"])


@pytest.mark.own_ray  # the CLI in a subprocess, with its own Ray
def test_a_missing_weights_file_stops_the_run_with_a_clear_error(tmp_path):
    # Upstream lesson 11: a missing weights file silently ran a random model.
    proc = _start_cli(tmp_path, f"model.weights_path={tmp_path}/missing.pt")
    output, _ = proc.communicate(timeout=180)
    assert proc.returncode == 2, output
    assert f"could not start: model.weights_path '{tmp_path}/missing.pt' does not exist" in output
    assert "Traceback" not in output
    assert not (tmp_path / "sigint").exists()  # a failed start leaves no run directory


def test_a_cluster_too_small_for_the_actors_fails_at_once_naming_the_fields(
    ray_session, tmp_path, unique_name
):
    from peaknet_pipeline.driver import StartupError

    cfg = _oracle_config(tmp_path, unique_name, [1, 64, 64], "center")
    cfg.inference.num_cpus_per_actor = 64  # the test session's Ray has 8 CPUs
    t0 = time.monotonic()
    with pytest.raises(StartupError, match=r"inference.num_actors x inference.num_cpus_per_actor"):
        run(cfg)
    assert time.monotonic() - t0 < 30  # not left pending forever


def test_too_few_blocked_calls_per_shard_fails_at_start_naming_the_field(
    ray_session, tmp_path, unique_name
):
    # One source (a window of 2 puts) and one inference actor (one get) can block 3 calls on
    # a Q1 shard; a limit of 2 would fail mid-run, so the run must not start.
    from peaknet_pipeline.driver import StartupError

    cfg = _oracle_config(tmp_path, unique_name, [1, 64, 64], "center")
    cfg.queue.q1.max_blocked_calls_per_shard = 2
    with pytest.raises(StartupError, match=r"queue.q1.max_blocked_calls_per_shard=2 is too small"):
        run(cfg)


def test_a_drain_that_cannot_finish_ends_at_the_drain_timeout(ray_session, tmp_path, unique_name):
    # A slow model behind a full Q1: the source is blocked in put when ingest is stopped, and
    # the queued batches take far longer than drain_timeout_s. The run must end anyway.
    cfg = PipelineConfig.model_validate(
        {
            "source": {"random": {"frame_shape": [1, 256, 256], "num_frames": 0}},
            "queue": {"q1": {"capacity_items": 8}},
            "model": {"kind": "peaknet"},  # the full-size default model: seconds per batch
            "writer": {"output_dir": str(tmp_path / "{run_id}")},
            "runtime": {"run_id": unique_name, "max_run_time_s": 2, "drain_timeout_s": 3},
        }
    )
    t0 = time.monotonic()
    report = run(cfg)
    assert report["exit_code"] == 130
    assert report["ended_by"] == "hard stop: drain not finished within 3.0 s"
    assert time.monotonic() - t0 < 120
