"""Run every benchmark in bench/ (`make bench`), each in its own process, one after another.

A benchmark that fails (non-zero exit) or outlives --timeout-s is reported with its name and
exit code, and the others still run: one failure must not hide the rest of the figures. The run
ends with one line per benchmark and exits 1 if any of them failed.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
TIMEOUT_S = 3600.0  # a safety net; each benchmark bounds its own waits far below this
STOP_GRACE_S = 30.0  # after SIGTERM, before SIGKILL


@dataclass
class Outcome:
    name: str
    exit_code: int | None  # None: timed out
    seconds: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def find_benchmarks(directory: Path, names: list[str] | None = None) -> list[Path]:
    """The `*_bench.py` scripts of `directory` in name order, or only those named."""
    found = sorted(directory.glob("*_bench.py"))
    if not names:
        return found
    by_name = {p.stem: p for p in found} | {p.name: p for p in found}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise SystemExit(f"run_all: no benchmark {missing} in {directory}")
    return [by_name[n] for n in names]


def run_one(script: Path, python: str, timeout_s: float) -> Outcome:
    """Run one benchmark with its output passed through; its own session, so a timeout can
    stop everything it started."""
    print(f"== {script.name}", flush=True)
    t0 = time.monotonic()
    proc = subprocess.Popen([python, str(script)], start_new_session=True)
    try:
        code: int | None = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _stop_group(proc)
        code = None
    except KeyboardInterrupt:  # its own session does not see the terminal's Ctrl-C: pass it on
        _stop_group(proc, signal.SIGINT)
        raise
    outcome = Outcome(script.stem, code, time.monotonic() - t0)
    if not outcome.ok:
        print(f"== {script.name}: FAILED ({describe_exit(code, timeout_s)})", flush=True)
    return outcome


def _stop_group(proc: subprocess.Popen, first: int = signal.SIGTERM) -> None:
    """Signal the benchmark's whole process group, then SIGKILL it if it is still there."""
    for sig in (first, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=STOP_GRACE_S)
            return
        except subprocess.TimeoutExpired:
            continue


def describe_exit(code: int | None, timeout_s: float) -> str:
    if code is None:
        return f"timed out after {timeout_s:.0f} s"
    if code < 0:
        return f"killed by signal {-code}"
    return f"exit code {code}"


def summary_lines(outcomes: list[Outcome], timeout_s: float) -> list[str]:
    """One line per benchmark: name, ok or why it failed, and how long it took."""
    width = max((len(o.name) for o in outcomes), default=0)
    return [
        f"{o.name:<{width}}  {'ok' if o.ok else 'FAILED: ' + describe_exit(o.exit_code, timeout_s)}"
        f"  ({o.seconds:.0f} s)"
        for o in outcomes
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="only these benchmarks (e.g. queue_bench)")
    parser.add_argument("--dir", type=Path, default=HERE, help="where the benchmarks are")
    parser.add_argument("--timeout-s", type=float, default=TIMEOUT_S, help="per benchmark")
    parser.add_argument("--python", default=sys.executable, help="interpreter to run them")
    args = parser.parse_args(argv)
    scripts = find_benchmarks(args.dir, args.names)
    outcomes = [run_one(script, args.python, args.timeout_s) for script in scripts]
    print("== summary")
    for line in summary_lines(outcomes, args.timeout_s):
        print(line)
    failed = [o.name for o in outcomes if not o.ok]
    if failed:
        print(f"{len(failed)} of {len(outcomes)} benchmarks failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
