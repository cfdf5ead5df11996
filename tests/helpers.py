"""Small things several test modules share (importable from tests and from Ray workers)."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peaknet_pipeline.monitor import Sample

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


# -- synthetic time series (the verdict, the report page) ---------------------------------
QUEUE_CAPACITY = 16


def timeline(
    seconds: int = 10,
    ingest: dict | None = None,
    inference: dict | None = None,
    writer: dict | None = None,
    q1: int = 0,
    q2: int = 0,
    q1_bytes: float = 0.0,
    spilled_per_s: int = 0,
    ingest_until: int | None = None,
) -> list[Sample]:
    """Samples at t = 0..seconds, every counter growing at its per-second rate; Q1 and Q2
    hold `q1`/`q2` records of QUEUE_CAPACITY (and Q1 `q1_bytes` of its byte capacity); ingest runs until
    `ingest_until` (then it is done)."""
    rates = {"ingest": ingest or {}, "inference": inference or {}, "writer": writer or {}}
    samples = []
    for t in range(seconds + 1):
        ingest_done = ingest_until is not None and t > ingest_until
        actors = {}
        for role, per_s in rates.items():
            done = role == "ingest" and ingest_done
            ends = role == "ingest" and ingest_until is not None
            elapsed = min(t, ingest_until) if ends else t
            counts = {k: v * elapsed for k, v in per_s.items()}
            actors[f"{role}-0"] = {
                "role": role,
                "phase": "done" if done else "running",
                "device": "cpu",
                **counts,
            }
        samples.append(
            Sample(
                t=float(t),
                actors=actors,
                queues={
                    "Q1": {
                        "depth": q1 if t else 0,
                        "capacity_items": QUEUE_CAPACITY,
                        "bytes": int(q1_bytes * 1000) if t else 0,
                        "capacity_bytes": 1000,
                    },
                    "Q2": {"depth": q2 if t else 0, "capacity_items": QUEUE_CAPACITY, "bytes": 0},
                },
                object_store={
                    "used_bytes": 10_000_000,
                    "spilled_bytes": spilled_per_s * t,
                    "capacity_bytes": 100_000_000,
                },
            )
        )
    return samples
