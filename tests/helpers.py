"""Small things several test modules share (importable from tests and from Ray workers)."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

# A PeakNet small enough to build and run in a test in well under a second.
SMALL_MODEL = dict(
    hidden_sizes=[8, 16, 32, 64],
    depths=[1, 1, 1, 1],
    bifpn_num_blocks=1,
    bifpn_num_features=16,
    seg_out_channels=32,
)


def link_examples(directory: Path) -> Path:
    """Let `directory` stand in for the repository root as a working directory: the example
    configs name files relative to the root (the demo's weights_path), so `examples` is linked
    into it. Runs started there write into `directory`, never into the repository."""
    (directory / "examples").symlink_to(REPO / "examples", target_is_directory=True)
    return directory


# Pusher subprocesses started by a test; conftest kills any still running after each test,
# so a failing test never leaves a sender blocked in send.
STARTED_PUSHERS: list[subprocess.Popen] = []


@dataclass
class Item:
    """A queue record with no payload; `nbytes` is what it declares for byte capacity."""

    value: int
    nbytes: int = 0


def wait_blocked(q: Any, count: int, shard: int = 0, timeout_s: float = 20.0) -> None:
    """Return once shard `shard` of queue `q` reports `count` blocked calls."""
    deadline = time.monotonic() + timeout_s
    while q.stats()["shards"][shard]["blocked_calls"] != count:
        assert time.monotonic() < deadline, q.stats()["shards"][shard]
        time.sleep(0.02)
