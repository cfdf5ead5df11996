"""A service through three DAQ runs (issue 23, item 2), as beamline staff run it: `peaknet-
pipeline run` with `runtime.service`, fed by `peaknet-pipeline push --daq-runs 3` (LCLStreamer-
shaped NPZ messages carrying psana2 run_info, pauses between runs), and ended with
`peaknet-pipeline stop`. Each DAQ run's folder must be complete, with its own summary and
reports, and listed in the service's index, before the service is stopped; every event in
exactly one DAQ run's files, once."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
from runs import wait_for

from peaknet_pipeline.sources.push import PUSH_EXTRA
from peaknet_pipeline.sources.push_runs import RUN_FIELDS

RUNS, FRAMES = 3, 12  # DAQ runs, frames in each
LABELS = [f"cxi12345-r{n:04d}" for n in range(1, RUNS + 1)]  # experiment and run number


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "peaknet_pipeline.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def _service_config(address: str) -> dict:
    socket_source = {
        "addresses": [address],
        "format": "npz",
        "npz": {"extra": PUSH_EXTRA["npz"]},
        "daq_run": {"field": RUN_FIELDS[("npz", "run_info")]},
        "frames_per_message": 4,
    }
    return {
        "ray": {"address": "local", "include_dashboard": False},
        "source": {"kind": "socket", "socket": socket_source},
        "model": {"kind": "threshold"},
        "inference": {"num_cpus_per_actor": 0.5},
        "writer": {"min_peaks": 0, "daq_run_close_s": 1.0},  # every event a row
        "monitor": {"console": False, "progress_interval_s": 0.5},
        "runtime": {"service": True, "run_id": "beamtime", "max_run_time_s": 240},
    }  # max_run_time_s: a safety net only; `stop` ends it


def _event_ids(folder: Path) -> list[int]:
    ids: list[int] = []
    for path in sorted(folder.glob("*.cxi")):
        with h5py.File(path, "r") as f:
            ids += f["/LCLS/event_id"][:].tolist()
    return ids


def _serve(tmp_path: Path, runs: int, gap_s: float) -> tuple[dict, Path, subprocess.Popen]:
    """Start the service, push `runs` DAQ runs of FRAMES frames with `gap_s` pauses, wait
    until the index lists them all (the last folder complete while the service still runs),
    stop it; (the index as it was then, the service's directory, its process)."""
    address = f"tcp://127.0.0.1:{_free_port()}"
    (tmp_path / "service.yaml").write_text(json.dumps(_service_config(address)))  # YAML: JSON
    log = tmp_path / "service.log"
    with log.open("w") as err:
        service = subprocess.Popen(
            [sys.executable, "-m", "peaknet_pipeline.cli", "run", "-c", "service.yaml"],
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=tmp_path,
        )
    out = tmp_path / "runs" / "beamtime"
    try:
        wait_for("the socket source", lambda: f"waiting for data on {address}" in log.read_text())
        pushed = _command(
            "push",
            *("--address", address, "--format", "npz", "--daq-run-field", "run_info"),
            *("--daq-runs", str(runs), "--daq-run-gap-s", str(gap_s)),
            *("--num-frames", str(FRAMES), "--batch-size", "4", "--shape", "1", "32", "32"),
            *("--peaks-per-frame", "2"),
            cwd=tmp_path,
        )
        assert pushed.returncode == 0, pushed.stderr
        index = wait_for(
            f"{runs} DAQ runs in the index", lambda: _listed(out / "index.json", runs), 60
        )
        assert service.poll() is None, log.read_text()
        stopped = _command("stop", "beamtime", cwd=tmp_path)
        assert stopped.returncode == 0, stopped.stderr
        service.wait(timeout=120)
    finally:
        service.kill()
    assert service.returncode in (0, 4), log.read_text()  # a stop: not a failure
    return index, out, service


def _check_folders(out: Path, labels: list[str]) -> list[dict]:
    """Each DAQ run's folder complete, its own FRAMES events (pushed ids n*FRAMES...), every
    event in exactly one folder, once; the folders' report.json."""
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(labels)
    seen: list[int] = []
    reports = []
    for n, label in enumerate(labels):
        folder = out / label
        assert not list(folder.glob("*.part")), f"{label}: a file left open"
        for name in ("summary.json", "report.json", "report.html"):
            assert (folder / name).is_file(), f"{label}: no {name}"
        report = json.loads((folder / "report.json").read_text())
        summary = json.loads((folder / "summary.json").read_text())
        assert report["frames"] == FRAMES == summary["events"] and summary["complete"]
        ids = _event_ids(folder)
        assert sorted(ids) == list(range(n * FRAMES, (n + 1) * FRAMES)), label
        seen += ids
        reports.append(report)
    assert sorted(seen) == list(range(len(labels) * FRAMES))  # every event once, in one folder
    return reports


@pytest.mark.own_ray  # the CLI in a subprocess, with its own Ray
def test_each_daq_run_gets_a_complete_folder_and_a_line_in_the_index(tmp_path):
    index, out, _ = _serve(tmp_path, RUNS, gap_s=2.0)
    assert [e["daq_run"] for e in index["runs"]] == LABELS[::-1]  # newest first
    assert [e["frames"] for e in index["runs"]] == [FRAMES] * RUNS
    assert all(e["folder"] == e["daq_run"] and e["complete"] for e in index["runs"])
    for report in _check_folders(out, LABELS):
        print(f"{report['daq_run']}: complete {report['complete_after_s']} s after its last frame")


SOAK_RUNS = 20


@pytest.mark.slow  # about a minute: 20 DAQ runs with pauses
@pytest.mark.own_ray
def test_a_soak_of_many_daq_runs_keeps_the_driver_flat(tmp_path):
    """Issue 23 item 3's soak, its skeleton: 20 short DAQ runs through one service. Every
    event in exactly one complete folder, each folder complete within a few seconds of its
    last frame, the index right, and the driver's memory flat after the first runs.
    (The actors' memory, open files and threads: to add once their stats report them.)"""
    labels = [f"cxi12345-r{n:04d}" for n in range(1, SOAK_RUNS + 1)]
    index, out, _ = _serve(tmp_path, SOAK_RUNS, gap_s=1.5)
    assert [e["daq_run"] for e in index["runs"]] == labels[::-1]
    delays = [r["complete_after_s"] for r in _check_folders(out, labels)]
    assert max(delays) < 10.0, delays
    rss = [json.loads(line)["driver"]["rss_bytes"] for line in open(out / "timeseries.jsonl")]
    early, late = max(rss[len(rss) // 5 : len(rss) // 3]), max(rss[-len(rss) // 5 :])
    print(f"driver RSS {early / 1e6:.0f} MB after the first runs, {late / 1e6:.0f} MB at the end")
    print(f"complete after its last frame: {min(delays)}..{max(delays)} s")
    assert late < early * 1.2 + 20e6, (early, late)


def _listed(path: Path, count: int) -> dict | None:
    """The index once it lists `count` DAQ runs (None before: not yet written, or fewer)."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:  # not yet (a half-written index fails the test: it is atomic)
        return None
    return doc if len(doc["runs"]) >= count else None
