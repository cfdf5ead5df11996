"""A service whose driver dies does not end the beamtime (issue 23, item 4, locally).

`peaknet-pipeline run` with `runtime.service` in a subprocess of its own (a process group of
its own: the embedded Ray's processes are its children), fed by `peaknet-pipeline push` with
psana2 run_info: DAQ run 1 completes, DAQ run 2 is streaming when the driver is killed with
SIGKILL. The same command started again continues the same directory: run 1's folder is
untouched, run 2's is closed (no `.part` left) with what was in flight counted as lost, run 3
streams into a folder of its own, and the index lists all three."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from runs import cli, wait_for
from test_service_runs import _free_port, _listed, _service_config

from peaknet_pipeline.monitor.daqruns import folder_summary
from peaknet_pipeline.service import ABANDONED, DIED, STATE_FILE, lost_frames
from peaknet_pipeline.writer.daqrun import PART_PREFIX

FRAMES = 12
PREFIX = "peaknet"  # writer.file_prefix
LABELS = [f"cxi12345-r{n:04d}" for n in (1, 2, 3)]


def _start(tmp_path: Path, log: Path) -> subprocess.Popen:
    with log.open("a") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "peaknet_pipeline.cli", "run", "-c", "service.yaml"],
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=tmp_path,
            start_new_session=True,  # its own process group: the test can find Ray's processes
        )


def _push(address: str, first: int, frames: int, rate_hz: float = 0.0) -> list[str]:
    return [
        sys.executable,
        *("-m", "peaknet_pipeline.cli", "push", "--address", address, "--format", "npz"),
        *("--daq-run-field", "run_info", "--daq-runs", "1", "--daq-run-first", str(first)),
        *("--num-frames", str(frames), "--rate-hz", str(rate_hz), "--batch-size", "4"),
        *("--shape", "1", "32", "32", "--peaks-per-frame", "2"),
    ]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _worker(cwd: Path, title: bytes) -> int | None:
    """The pid of the Ray worker titled `title` (`ray::InferenceActor`) that runs in `cwd`
    (the service's directory of work: this test's, not another session's)."""
    for entry in os.scandir("/proc"):
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                if f.read().startswith(title) and os.readlink(f"/proc/{entry.name}/cwd") == str(
                    cwd
                ):
                    return int(entry.name)
        except (OSError, ValueError):
            continue
    return None


def _written(out: Path, label: str) -> int:
    """Frames of a DAQ run its writers handled, as the service's state file says."""
    run = (_state(out) or {}).get("daq_runs", {}).get(label) or {}
    return sum(w["frames"] for w in run.get("writers", {}).values())


def _stopped(pid: int) -> bool:
    """Whether the process is stopped (SIGSTOP delivered: state T in /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


def _in_flight(out: Path, label: str, inference: int) -> int:
    """What the next driver will count as lost of a DAQ run if the driver dies now: the frames
    the state file says its sources placed into Q1, less those its closed files gained since
    this driver began (`lost_frames`). Measured only once those files cannot gain more (0
    before): inference is stopped, and the writer has closed the run since (its summary part
    in the folder, no file open). The state's count only grows, so the state file a driver
    killed now leaves (with its writer) has at least this many frames in flight."""
    run = (_state(out) or {}).get("daq_runs", {}).get(label)
    folder = out / label
    if run is None or not _stopped(inference) or not any(folder.glob(f"{PART_PREFIX}*.json")):
        return 0
    committed = folder_summary(folder, PREFIX)
    if not committed["complete"]:  # a file still open: the writer goes on with the run
        return 0
    return lost_frames(run["ingested"], run["base"], committed["events"]) or 0


def _port_free(address: str) -> bool:
    """Whether nothing listens on the address any more (the dead driver's socket source)."""
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except OSError:
            return False
    return True


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


def _state(out: Path) -> dict | None:
    try:
        return json.loads((out / STATE_FILE).read_text())
    except FileNotFoundError:
        return None


@pytest.mark.own_ray  # the CLI in a subprocess, with its own Ray
def test_a_killed_driver_is_followed_by_one_that_continues_the_service(tmp_path):
    address = f"tcp://127.0.0.1:{_free_port()}"
    cfg = _service_config(address)
    cfg["monitor"]["report_html"] = False  # the pages are not what this test is about
    (tmp_path / "service.yaml").write_text(json.dumps(cfg))
    log, out = tmp_path / "service.log", tmp_path / "runs" / "beamtime"
    waiting = f"waiting for data on {address}"
    first = _start(tmp_path, log)
    pusher = second = None
    try:
        wait_for("the socket source", lambda: waiting in log.read_text())
        pushed = subprocess.run(_push(address, 1, FRAMES), capture_output=True, timeout=60)
        assert pushed.returncode == 0, pushed.stderr
        wait_for("DAQ run 1 in the index", lambda: _listed(out / "index.json", 1), 30)
        before = _snapshot(out / LABELS[0])

        # DAQ run 2 streams; inference falls behind (its actor paused: a busy pipeline, as at
        # full rate), and the driver dies while frames of DAQ run 2 are in flight: once the
        # writer has closed what reached it, with more ingested than that in the state file.
        pusher = subprocess.Popen(_push(address, 2, 400, rate_hz=40), stderr=subprocess.DEVNULL)
        wait_for("DAQ run 2 being written", lambda: _written(out, LABELS[1]) >= 4, 30)
        inference = _worker(tmp_path, b"ray::InferenceActor")
        writer = _worker(tmp_path, b"ray::WriterActor")
        assert inference is not None and writer is not None
        os.kill(inference, signal.SIGSTOP)
        wait_for("frames in flight", lambda: _in_flight(out, LABELS[1], inference) >= 8, 30)
        os.kill(first.pid, signal.SIGKILL)
        os.kill(writer, signal.SIGKILL)  # it closes nothing more: the count above holds
        os.kill(inference, signal.SIGKILL)  # paused, it cannot notice its raylet's end
        first.wait(timeout=10)
        pusher.kill()  # the DAQ stops run 2 as well (what it still held is never sent)
        # Ray's head processes share the driver's fate (Linux PR_SET_PDEATHSIG), and its
        # workers end with their raylet: the socket source's port is free again.
        wait_for("the dead driver's socket source gone", lambda: _port_free(address), 30)
        os.killpg(first.pid, signal.SIGKILL)  # what Ray leaves behind (its dashboard agents)
        died = _state(out)
        assert died["state"] == "running" and died["driver"] == 1  # its last word, mid-run
        ingested = died["daq_runs"][LABELS[1]]["ingested"]

        # The same command again: the same directory, continued.
        second = _start(tmp_path, log)
        wait_for("the service again", lambda: log.read_text().count(waiting) >= 2, 60)
        pushed = subprocess.run(_push(address, 3, FRAMES), capture_output=True, timeout=60)
        assert pushed.returncode == 0, pushed.stderr
        index = wait_for("3 DAQ runs in the index", lambda: _listed(out / "index.json", 3), 30)
        stopped = cli("stop", "beamtime", cwd=tmp_path)
        assert stopped.returncode == 0, stopped.stderr
        second.wait(timeout=60)
        assert second.returncode in (0, 4), log.read_text()
    finally:
        for process in (first, pusher, second):
            if process is not None and process.poll() is None:
                process.kill()
        for process in (first, second):
            if process is not None and _group_alive(process.pid):
                os.killpg(process.pid, signal.SIGKILL)

    entries = {e["daq_run"]: e for e in index["runs"]}
    assert [e["daq_run"] for e in index["runs"]] == LABELS[::-1]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == LABELS
    # DAQ run 1: complete before the driver died, and not touched since.
    assert entries[LABELS[0]]["frames"] == FRAMES and entries[LABELS[0]]["lost"] == 0
    assert _snapshot(out / LABELS[0]) == before
    # DAQ run 2: closed by the next driver, what was in flight counted as lost.
    run2 = out / LABELS[1]
    report2 = json.loads((run2 / "report.json").read_text())
    assert not list(run2.glob("*.part")), "a file of DAQ run 2 left open"
    assert entries[LABELS[1]]["ended_by"] == DIED == report2["ended_by"]
    lost, written = entries[LABELS[1]]["lost"], entries[LABELS[1]]["frames"]
    assert lost > 0 and lost == ingested - written, (lost, ingested, written)
    assert report2["interrupted"]["driver"] == 1
    assert sorted(report2["interrupted"]["abandoned_files"]) == sorted(
        p.name for p in run2.glob(f"*{ABANDONED}")
    )
    # DAQ run 3: complete, under the new driver.
    assert entries[LABELS[2]]["frames"] == FRAMES and entries[LABELS[2]]["complete"]
    assert not entries[LABELS[2]]["lost"] and not entries[LABELS[2]].get("ended_by")
    # The new driver's summary lists the service's DAQ runs, the dead driver's included.
    summary = json.loads((out / "summary.json").read_text())
    assert [r["daq_run"] for r in summary["daq_runs"]] == LABELS[::-1]
    assert summary["service"]["lost"] == lost
    assert _state(out)["state"] == "stopped" and _state(out)["driver"] == 2
