"""`peaknet-pipeline run` on a terminal: the real CLI under a pseudo-terminal shows the live
display instead of progress lines, and log lines (the driver's own, and an actor's forwarded
by Ray) are printed above it rather than torn by its redraws. The plain lines of a
non-terminal run are covered where the CLI's output is piped (test_pipeline.py)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from helpers import link_examples

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
ERASED = r"\x1b\[2K"  # rich clears the display's lines before printing a line above it
REDRAWN = r"\r?\n╭─"  # and draws the display again right after it


def _run_in_pty(args: list[str], cwd: Path, timeout_s: float = 240.0) -> tuple[int, str]:
    """Run a command with stdin/stdout/stderr on a 120x40 pseudo-terminal; its exit code and
    everything it wrote, escape sequences included."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, cwd=cwd)
    os.close(slave)
    out, deadline = b"", time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
        return proc.wait(timeout=30), out.decode("utf-8", "replace")
    finally:
        os.close(master)


def test_a_terminal_gets_the_live_display_with_log_lines_above_it(tmp_path):
    args = [sys.executable, "-m", "peaknet_pipeline.cli", "run"]
    args += ["--config", str(REPO / "examples" / "configs" / "demo.yaml")]
    for override in (
        "model.kind=threshold",
        "monitor.report_html=false",  # not what this checks: drawing it only costs CPU
        "source.random.num_frames=0",  # endless, paced: stopped by the time limit
        "source.random.rate_hz=100",
        "runtime.max_run_time_s=4",
        "monitor.progress_interval_s=0.5",
        f"writer.output_dir={tmp_path}/{{run_id}}",
        "runtime.run_id=live",
    ):
        args += ["--set", override]
    code, out = _run_in_pty(args, link_examples(tmp_path))
    assert code == 4, out[-3000:]  # stopped by its time limit: every accepted frame written

    assert "╭─ \x1b[1mpeaknet-pipeline live" in out  # the display's frame and title
    for row in ("frames", "queues", "producer/consumer", "inference", "pool", "verdict"):
        assert re.search(rf"│ \x1b\[1m{re.escape(row)}[\s\x1b]", out), row
    assert re.search(r"Q1 [█░]{20} \d+/16", out)
    assert not re.search(r"\[\s*\d+\.\d s\] \|", out)  # no plain progress lines

    # Each line logged while the display is up is printed whole above it.
    driver_line = "WARNING stages: stopping ingest: runtime.max_run_time_s=4.0 reached"
    actor_line = "INFO sources.base: random-0: stopped after"
    assert re.search(ERASED + r"\d\d:\d\d:\d\d " + re.escape(driver_line) + REDRAWN, out)
    assert re.search(
        ERASED + r"\d\d:\d\d:\d\d " + re.escape(actor_line) + r"[^\r\n]*" + REDRAWN, out
    )

    # The display's last frame shows the whole run; the summary starts on a line of its own.
    last = out[out.rindex("╭─") :]
    rate = re.search(r"in \d+ \((\d+\.\d)/s\)", last)
    assert rate and float(rate.group(1)) > 0  # the run's average, not the drained last second
    # (an actor's last lines, forwarded late, may come between the display and the summary)
    before = out[max(0, out.find("run live ended by") - 400) : out.find("run live ended by")]
    assert re.search(r"\n(\x1b\[\?25h)?run live ended by", out), repr(before)
    summary = out[out.rindex("╯") :]
    assert "run live ended by runtime.max_run_time_s=4.0 after" in summary
    assert re.search(r"verdict: (ok|starved|backlogged|writer-bound|spilling|too-short): ", summary)
