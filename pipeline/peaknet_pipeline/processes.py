"""Whether a process of this machine has ended: the one reading of a pid that the hard stop
(shutdown.py), the run's control record (control.py) and a service's directory (service.py)
share."""

from __future__ import annotations

import os


def process_ended(pid: int) -> bool:
    """Whether process `pid` of this machine has exited. A zombie not yet reaped by its parent
    (a killed actor's raylet, a driver's shell) has: it runs no more code, though the pid
    still answers a signal. Another user's live process has not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except (OSError, IndexError):
        return False  # no /proc (macOS) or a race with its exit: alive as far as known
