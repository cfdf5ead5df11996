"""A service's directory taken over by a new driver (service.py), without Ray: the rule that
picks the directory, the lost count, and the close of a DAQ run a dead driver left open."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from peaknet_pipeline.config import PipelineConfig
from peaknet_pipeline.errors import StartupError
from peaknet_pipeline.service import (
    DIED,
    STATE_FILE,
    directory,
    lost_frames,
    read_state,
    state_doc,
    still_running,
    take_over,
)


def _cfg(tmp_path, service: bool = True) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "writer": {"output_dir": str(tmp_path / "{run_id}")},
            "monitor": {"report_html": False},
            "runtime": {"service": service, "run_id": "beamtime"},
        }
    )


def _dead_driver(out, ingested: int = 10, pid: int = 0) -> None:
    """A service directory as a driver killed mid-run leaves it: DAQ run r0002 open, one
    file of it still `.part` (not readable: its writer died with it open)."""
    (out / "r0002").mkdir(parents=True)
    (out / "r0002" / "peaknet-w00-0000.cxi.part").write_bytes(b"half an HDF5 file")
    writers = {"writer-0": {"state": "open", "frames": 4}}
    state = {"service": "beamtime", "driver": 1, "state": "running", "pid": pid, "host": ""}
    state["daq_runs"] = {"r0002": {"ingested": ingested, "base": 0, "writers": writers}}
    (out / STATE_FILE).write_text(json.dumps(state))


def test_lost_is_what_was_ingested_less_what_the_folder_gained():
    assert lost_frames(30, base=0, committed=8) == 22
    assert lost_frames(30, base=12, committed=20) == 22  # 12 were there before this driver
    assert lost_frames(8, base=0, committed=12) == 0  # closed after the last sample: none lost
    assert lost_frames(None, base=0, committed=0) is None  # not known, never guessed


def test_continue_needs_a_services_directory(tmp_path):
    cfg = _cfg(tmp_path)
    with pytest.raises(StartupError, match="not a service's directory"):
        directory(cfg, str(tmp_path), lambda: "new")
    with pytest.raises(StartupError, match="no such directory"):
        directory(cfg, str(tmp_path / "missing"), lambda: "new")
    _dead_driver(tmp_path / "old")
    with pytest.raises(StartupError, match="only a service"):
        directory(_cfg(tmp_path, service=False), str(tmp_path / "old"), lambda: "new")
    run_id, path = directory(cfg, str(tmp_path / "old"), lambda: "new")
    assert (run_id, path) == ("beamtime", (tmp_path / "old").absolute())
    assert directory(cfg, None, lambda: "new")[1] == (tmp_path / "beamtime").absolute()


def test_a_dead_drivers_open_daq_run_is_closed_with_its_lost_frames_once(tmp_path):
    out = tmp_path / "beamtime"
    _dead_driver(out, ingested=10)
    losses = take_over(out, "beamtime", _cfg(tmp_path))
    assert [(x["daq_run"], x["lost"], x["written"]) for x in losses] == [("r0002", 10, 0)]
    folder = out / "r0002"
    assert sorted(p.name for p in folder.glob("*.cxi*")) == ["peaknet-w00-0000.cxi.incomplete"]
    entry = json.loads((out / "index.json").read_text())["runs"][0]
    assert (entry["daq_run"], entry["lost"], entry["ended_by"]) == ("r0002", 10, DIED)
    assert json.loads((folder / "report.json").read_text())["interrupted"]["driver"] == 1
    state = read_state(out)
    assert (state["driver"], state["state"], state["daq_runs"]) == (2, "starting", {})
    # The second driver dies before its first sample: nothing is counted twice.
    assert take_over(out, "beamtime", _cfg(tmp_path)) == []
    assert json.loads((out / "index.json").read_text())["runs"][0]["lost"] == 10


def test_a_directory_whose_driver_still_runs_is_not_taken_over(tmp_path):
    out = tmp_path / "beamtime"
    _dead_driver(out, pid=os.getppid())  # alive, on this host
    state = json.loads((out / STATE_FILE).read_text())
    (out / STATE_FILE).write_text(json.dumps({**state, "host": socket.gethostname()}))
    with pytest.raises(StartupError, match="still running"):
        take_over(out, "beamtime", _cfg(tmp_path))
    assert (out / "r0002" / "peaknet-w00-0000.cxi.part").exists()  # left alone


def test_a_driver_that_died_but_is_not_reaped_yet_does_not_hold_the_directory(tmp_path):
    # A killed driver stays a zombie until its parent (a shell, a test) reaps it; its pid still
    # answers a signal, but it runs no more code (processes.process_ended).
    driver = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        state = {"state": "running", "pid": driver.pid, "host": socket.gethostname()}
        assert still_running(state) is not None
        driver.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while still_running(state) is not None:
            assert time.monotonic() < deadline, "a killed, unreaped driver still held it"
            time.sleep(0.01)
        assert driver.poll() == -signal.SIGKILL  # it was a zombie until now
    finally:
        driver.kill()


def test_the_state_lists_each_daq_runs_ingested_and_written_frames():
    actors = [
        {"role": "ingest", "actor_id": "socket-0", "daq_runs": {"r1": 12, "r2": 20}},
        {"role": "ingest", "actor_id": "socket-1", "daq_runs": {"r2": 4}},
        {
            "role": "writer",
            "actor_id": "writer-0",
            "daq_runs": [{"label": "r2", "state": "open", "frames": 16}],
        },
    ]
    doc = state_doc("beamtime", 3, 0.0, {"r2": {"frames": 5}}, actors)
    assert doc["driver"] == 3 and doc["state"] == "running" and doc["pid"] == os.getpid()
    assert doc["daq_runs"]["r1"] == {"ingested": 12, "base": 0, "writers": {}}
    assert doc["daq_runs"]["r2"] == {
        "ingested": 24,
        "base": 5,
        "writers": {"writer-0": {"state": "open", "frames": 16}},
    }


def test_a_run_no_writer_closed_is_dated_from_the_state_and_indexed_in_its_place(tmp_path):
    # The writers' first and last frame of each DAQ run travel in the state file; a run whose
    # driver died before any writer closed it has no summary part to date it, and without the
    # state's span it would have no start or end and sort as the oldest run in the index.
    writer = {
        "role": "writer",
        "actor_id": "writer-0",
        "daq_runs": [
            {"label": "r0002", "state": "open", "frames": 4, "first_t": 2000.0, "last_t": 2009.5}
        ],
    }
    doc = state_doc("beamtime", 1, 0.0, {}, [writer])
    assert doc["daq_runs"]["r0002"]["first_t"] == 2000.0
    assert doc["daq_runs"]["r0002"]["last_t"] == 2009.5

    out = tmp_path / "beamtime"
    _dead_driver(out)
    state = json.loads((out / STATE_FILE).read_text())
    state["daq_runs"]["r0002"].update(first_t=2000.0, last_t=2009.5)
    (out / STATE_FILE).write_text(json.dumps(state))
    earlier = out / "r0001"
    earlier.mkdir()
    index = {"service": "beamtime", "runs": [{"daq_run": "r0001", "first_t": 1000.0}]}
    (out / "index.json").write_text(json.dumps(index))
    take_over(out, "beamtime", _cfg(tmp_path))
    report = json.loads((out / "r0002" / "report.json").read_text())
    assert report["first_t"] == 2000.0 and report["last_t"] == 2009.5
    assert report["start"] and report["duration_s"] == 9.5
    listed = json.loads((out / "index.json").read_text())["runs"]
    assert [e["daq_run"] for e in listed][0] == "r0002"  # the newest first
