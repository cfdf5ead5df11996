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


RAY_GROUP = "ray"
# The session-Ray tests of these modules share a second Ray, on another xdist worker: one Ray
# group alone took about 480 s, the whole suite's floor. Each group starts its own local Ray
# in its worker (ray_session), as the chain tests' cluster runs beside the session's. The
# queue's modules moved here when the first group still took 450 s of a 500 s run (the
# second 240 s): about 100 s of it.
SECOND_RAY_GROUP = "ray-2"
SECOND_RAY_MODULES = {
    "test_faults.py",
    "test_examples.py",
    "test_device_peaks_run.py",
    "test_queue.py",
    "test_queue_leases.py",
    "test_queue_failures.py",
}
# Fixtures that start a Ray of their own for a whole module (tests/operator/test_chain.py: a local
# multi-node cluster in a private RAY_TMPDIR): their tests form a group of their own, so that
# the module's cluster starts once and runs beside the session's Ray on another worker.
OWN_RAY_GROUPS = {"ray_cluster": "ray-cluster"}


def xdist_group(item: pytest.Item) -> str | None:
    """The test's group: `ray` (or `ray-2` for SECOND_RAY_MODULES) when it needs the session's
    Ray (it asks for `ray_session`, directly or through a fixture such as `make_queue`, or
    carries the `ray` marker), the
    group of a module-wide Ray of its own (OWN_RAY_GROUPS), else none: any worker. A test
    marked `own_ray` (a CLI run in a subprocess, which starts its own Ray) is in none even in a
    module marked `ray`. _ray_only_in_its_group checks that a test in none starts no Ray."""
    fixtures = getattr(item, "fixturenames", ())
    session = "ray_session" in fixtures or (
        item.get_closest_marker("ray") and not item.get_closest_marker("own_ray")
    )
    own = [group for fixture, group in OWN_RAY_GROUPS.items() if fixture in fixtures]
    if own and "ray_session" not in fixtures:
        return own[0]
    if session:
        return SECOND_RAY_GROUP if Path(str(item.fspath)).name in SECOND_RAY_MODULES else RAY_GROUP
    return None


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Puts the tests of each shared Ray into one xdist group (xdist_group above).

    `make test` runs pytest-xdist with `--dist loadgroup`: a group runs in order on one worker,
    which starts the one Ray its tests share, while the other workers take the Ray-free tests
    and the CLI runs that start their own Ray. Marking here, from fixtures and markers,
    keeps a new Ray test in the group without anyone having to remember it. Without xdist the
    mark does nothing.
    """
    for item in items:
        group = xdist_group(item)
        if group is None:
            continue
        item.add_marker(pytest.mark.xdist_group(group))
        if getattr(config.option, "loadgroup", False):  # an xdist worker, --dist loadgroup
            _name_group(item, group)


def _name_group(item: pytest.Item, group: str) -> None:
    """Appends `@group` to the test's id, which is how xdist's loadgroup scheduler sees groups.

    xdist does this itself by assigning `item._nodeid`, which pytest 9 no longer reads (a node's
    id is `item._id`, a NodeId): without this every group would be silently ignored and two
    workers would each start a Ray. With a pytest whose ids xdist can still rename, it does
    nothing here (the id already ends in the group, or the attribute is absent).
    """
    try:
        from _pytest.nodeid import NodeId
    except ImportError:  # pytest < 9: xdist renames the item itself
        return
    suffix = f"@{group}"
    if not item.nodeid.endswith(suffix) and isinstance(getattr(item, "_id", None), NodeId):
        item._id = NodeId.parse(item.nodeid + suffix)


# Ray's log monitor looks for new worker log files every 0.1 s while a node has fewer than
# this many (ray/_private/log_monitor.py: RAY_LOG_MONITOR_MANY_FILES_THRESHOLD; above it, every
# LOG_NAME_UPDATE_INTERVAL_S = 0.5 s). A session Ray collects hundreds of actors' files in a run
# of the suite: its two log monitors took 21.3 s of CPU, 12.6 s with every 0.5 s. A new actor's
# lines reach the test process up to 0.5 s later, which no test reads. Only the session Rays
# start with this in their environment; the CLI runs keep Ray's defaults.
SESSION_RAY_ENV = {"RAY_LOG_MONITOR_MANY_FILES_THRESHOLD": "0"}


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray with more logical CPUs than cores, so several actors fit at once."""
    import ray

    if not ray.is_initialized():
        # Only these keys are put back afterwards: ray.init sets variables of its own (its auth
        # mode among them) that the session has kept so far.
        saved = {key: os.environ.get(key) for key in SESSION_RAY_ENV}
        os.environ.update(SESSION_RAY_ENV)
        try:
            ray.init(
                address="local",  # its own, whatever RAY_ADDRESS or a `ray start` says
                num_cpus=8,
                namespace=TEST_NAMESPACE,
                include_dashboard=False,
                object_store_memory=1 << 30,
                log_to_driver=True,
            )
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key)
                else:
                    os.environ[key] = value
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def _ray_only_in_its_group(request: pytest.FixtureRequest):
    """A test in no group must not start a Ray in the test process (ray.init, or a Ray call
    that initialises one): under xdist it would run on any worker, beside the session's Ray,
    and that worker would keep a Ray of its own. Ask for `ray_session` instead."""
    import sys

    def initialised() -> bool:
        ray = sys.modules.get("ray")
        return bool(ray is not None and ray.is_initialized())

    before = initialised()
    yield
    if xdist_group(request.node) is None and not before and initialised():
        pytest.fail(
            f"{request.node.nodeid} started a Ray in the test process without asking for the "
            "ray_session fixture (tests/conftest.py: xdist_group)"
        )


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
