"""Small things several test modules share (importable from tests and from Ray workers)."""

from __future__ import annotations

import subprocess

# A PeakNet small enough to build and run in a test in well under a second.
SMALL_MODEL = dict(
    hidden_sizes=[8, 16, 32, 64],
    depths=[1, 1, 1, 1],
    bifpn_num_blocks=1,
    bifpn_num_features=16,
    seg_out_channels=32,
)

# Pusher subprocesses started by a test; conftest kills any still running after each test,
# so a failing test never leaves a sender blocked in send.
STARTED_PUSHERS: list[subprocess.Popen] = []
