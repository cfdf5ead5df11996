"""How `stop` and `scale` find a run (its control.json) and word a refusal (pure rules)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from peaknet_pipeline.control import (
    CONTROL_FILE,
    find_run,
    how_to_reach,
    reach_record,
    refusal,
    running_runs,
)


def _write(run_dir: Path, run_id: str, pid: int, host: str | None = None) -> None:
    run_dir.mkdir(parents=True)
    record = {**reach_record(run_id, "10.0.0.1:6379", "peaknet"), "pid": pid}
    if host is not None:
        record["host"] = host
    (run_dir / CONTROL_FILE).write_text(json.dumps(record))


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_run_is_found_by_id_under_runs_or_by_its_directory(tmp_path):
    _write(tmp_path / "runs" / "r1", "r1", os.getpid())
    _write(tmp_path / "runs" / "demo" / "r3", "r3", os.getpid())  # the demo's runs/demo/
    (tmp_path / "runs" / "demo" / "latest").symlink_to("r3")
    _write(tmp_path / "elsewhere" / "r2", "r2", os.getpid())
    assert find_run("r1", tmp_path / "runs")["address"] == "10.0.0.1:6379"
    assert find_run("r3", tmp_path / "runs")["run_id"] == "r3"
    assert find_run(str(tmp_path / "elsewhere" / "r2"), tmp_path / "runs")["run_id"] == "r2"
    assert running_runs(tmp_path / "runs") == ["r1", "r3"]


def test_the_start_line_gives_the_commands_as_typed_where_the_run_started(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    under_runs = how_to_reach("r1", tmp_path / "runs" / "demo" / "r1", "10.0.0.1:6379", "ns")
    assert under_runs == (
        "run r1: `peaknet-pipeline stop r1` drains it, `peaknet-pipeline scale r1 --inference N` "
        "resizes it (Ray 10.0.0.1:6379, namespace ns; runs/demo/r1/control.json)"
    )
    elsewhere = how_to_reach("r1", tmp_path / "out" / "r1", "10.0.0.1:6379", "ns")
    assert "`peaknet-pipeline stop out/r1` drains it" in elsewhere


def test_no_such_run_names_the_running_ones_and_skips_ended_drivers(tmp_path):
    runs = tmp_path / "runs"
    _write(runs / "live", "live", os.getpid())
    _write(runs / "remote", "remote", 1, host="another-node")  # cannot tell: counted
    _write(runs / "killed", "killed", _dead_pid(), host=socket.gethostname())
    (runs / "finished").mkdir()  # no control.json: ended normally
    assert running_runs(runs) == ["live", "remote"]
    with pytest.raises(LookupError) as missing:
        find_run("killed", runs)
    assert str(missing.value) == (
        f"no running pipeline 'killed' under {runs}/ (running there: live, remote)"
    )
    with pytest.raises(LookupError) as none:
        find_run("x", tmp_path / "nothing")
    assert (
        str(none.value)
        == f"no running pipeline 'x' under {tmp_path / 'nothing'}/ (none is running there)"
    )


def test_a_scale_refusal_says_how_to_allow_more():
    assert refusal(2, 2, "r") is None
    assert refusal(2, 1, "r") == (
        "--inference 2: run r allows 1 to 1 inference actors (inference.max_actors); a run "
        "started with --set inference.max_actors=N allows up to N"
    )
    assert refusal(0, 3, "r") == (
        "--inference 0: a run keeps at least 1 inference actor (to end it: peaknet-pipeline stop r)"
    )
