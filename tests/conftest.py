"""Shared fixtures. One local Ray instance serves the whole test session (ray.init is slow)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Ray workers unpickle classes defined in test modules by module name; pytest imports test
# modules from their own directory, so workers need these directories on their path too.
_TESTS = Path(__file__).resolve().parent
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(_TESTS), str(_TESTS / "unit"), str(_TESTS / "integration")]
    + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
)
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

TEST_NAMESPACE = "peaknet-tests"


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray with more logical CPUs than cores, so several actors fit at once."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=8,
            namespace=TEST_NAMESPACE,
            include_dashboard=False,
            object_store_memory=1 << 30,
            log_to_driver=True,
        )
    yield ray
    ray.shutdown()


@pytest.fixture
def unique_name() -> str:
    """A fresh queue/run name, so tests sharing the Ray session never collide."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_queue(ray_session, unique_name):
    """Creates ShardedQueues with fresh names; destroys them after the test."""
    from peaknet_pipeline.queue import ShardedQueue

    created = []

    def make(**kwargs):
        q = ShardedQueue.create(f"{unique_name}-{len(created)}", **kwargs)
        created.append(q)
        return q

    yield make
    for q in created:
        q.destroy()


@pytest.fixture(autouse=True)
def _no_pusher_left_behind():
    """A failing test must not leave a pusher subprocess blocked in send."""
    from helpers import STARTED_PUSHERS

    yield
    while STARTED_PUSHERS:
        pusher = STARTED_PUSHERS.pop()
        if pusher.poll() is None:
            pusher.kill()
        pusher.communicate()
