"""A hard stop lists the run directory only once the killed writers' processes have ended
(shutdown.kill_at_once): ray.kill returns before the process ends, and a writer that lived on
for a moment opened its next file after the listing. Real processes, no Ray: the writers on
this node are watched by pid."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from types import SimpleNamespace

from peaknet_pipeline.processes import process_ended
from peaknet_pipeline.shutdown import wait_ended

HERE = "node-here"


def _writer(process: subprocess.Popen, name: str = "writer-0") -> SimpleNamespace:
    return SimpleNamespace(actor_id=name, pid=process.pid, node_id=HERE, handle=None)


def _python(seconds: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"])


def test_a_killed_process_has_ended_once_it_is_a_zombie_and_after_it_is_reaped():
    process = _python(30)
    try:
        assert not process_ended(process.pid)
        process.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not process_ended(process.pid):  # a zombie until this test, its parent, reaps it
            assert time.monotonic() < deadline, "a killed process never counted as ended"
            time.sleep(0.01)
        assert process.poll() == -signal.SIGKILL  # it was still there to be reaped
        assert process_ended(process.pid)
    finally:
        process.kill()
        process.wait()


def test_the_wait_lasts_until_the_writers_process_has_ended():
    process = _python(0.5)  # a writer whose process takes half a second to end
    try:
        started = time.monotonic()
        assert wait_ended([_writer(process)], HERE, timeout_s=30) == []
        assert time.monotonic() - started >= 0.4
        assert process.poll() is not None or process_ended(process.pid)
    finally:
        process.kill()
        process.wait()


def test_a_writer_that_does_not_end_is_named_at_the_deadline():
    process, gone = _python(30), _python(0)
    gone.wait()
    try:
        writers = [_writer(process, "writer-0"), _writer(gone, "writer-1")]
        started = time.monotonic()
        assert wait_ended(writers, HERE, timeout_s=0.3) == ["writer-0"]
        assert time.monotonic() - started < 5
    finally:
        process.kill()
        process.wait()
