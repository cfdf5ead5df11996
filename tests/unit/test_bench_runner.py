"""`make bench` (bench/run_all.py) runs every benchmark and reports each failure; the ingest
benchmark's waits are bounded by the work."""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _fake_benchmarks(directory: Path) -> None:
    """Three tiny benchmarks: the failing one sorts first, so the others run after it."""
    scripts = {
        "a_fails_bench.py": "print('a ran'); raise SystemExit(3)",
        "b_passes_bench.py": "print('b ran')",
        "c_passes_bench.py": "print('c ran')",
        "helper.py": "raise SystemExit('not a benchmark: never run')",
    }
    for name, text in scripts.items():
        (directory / name).write_text(text + "\n")


def test_every_benchmark_runs_and_a_failure_is_named_with_its_exit_code(tmp_path):
    _fake_benchmarks(tmp_path)
    done = subprocess.run(
        [sys.executable, str(BENCH / "run_all.py"), "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = done.stdout
    assert done.returncode == 1, out + done.stderr
    assert "a ran" in out and "b ran" in out and "c ran" in out
    assert "== a_fails_bench.py: FAILED (exit code 3)" in out
    summary = [" ".join(line.split()) for line in out.split("== summary\n", 1)[1].splitlines()]
    assert summary[0].startswith("a_fails_bench FAILED: exit code 3 (")
    assert summary[1].startswith("b_passes_bench ok (")
    assert summary[2].startswith("c_passes_bench ok (")
    assert summary[3] == "1 of 3 benchmarks failed: a_fails_bench"
    assert "helper" not in out


def test_all_passing_exits_0_and_names_select_benchmarks(tmp_path):
    _fake_benchmarks(tmp_path)
    run_all = _load("run_all")
    assert run_all.main(["--dir", str(tmp_path), "b_passes_bench", "c_passes_bench.py"]) == 0
    with pytest.raises(SystemExit, match="no benchmark"):
        run_all.main(["--dir", str(tmp_path), "missing_bench"])


def test_a_benchmark_over_its_time_is_stopped_and_reported(tmp_path, capsys):
    (tmp_path / "slow_bench.py").write_text("import time\ntime.sleep(60)\n")
    (tmp_path / "z_bench.py").write_text("print('z ran')\n")
    run_all = _load("run_all")
    assert run_all.main(["--dir", str(tmp_path), "--timeout-s", "1"]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "slow_bench FAILED: timed out after 1 s" in out
    assert "z_bench ok" in out


def test_ingest_bench_timeouts_grow_with_the_bytes_to_move():
    ingest = _load("ingest_bench")
    assert ingest.work_timeout_s(0) == ingest.START_S
    assert ingest.work_timeout_s(500e6, fixed_s=10, rate=50e6) == pytest.approx(20.0)
    args = argparse.Namespace(batch_size=16, shape=[1691, 1691], messages=10)
    one_message = 16 * 1691 * 1691 * 4
    assert ingest.message_bytes(args) == one_message
    assert ingest.run_timeout_s(args) == pytest.approx(
        ingest.START_S + 10 * one_message / ingest.SLOW_BYTES_PER_S
    )
    assert ingest.run_timeout_s(args, streams=2) > ingest.run_timeout_s(args)
