"""Changing a running pipeline from outside: the run's control actor, and how to reach it.

The driver creates one named actor per run, `<run id>-control`, in the run's Ray namespace.
`peaknet-pipeline scale RUN --inference N` asks it for N inference actors; `peaknet-pipeline
stop RUN` asks for the drain a Ctrl-C would start. The driver keeps a `changed()` call pending on
it among the calls it waits on anyway, so a request is acted on at once, without polling. The
driver writes back what the pool is doing (`report_pool`); the scale command prints it. The
actor ends with the driver (it is not detached).

Reaching it: every local run starts its own embedded Ray instance, so "the Ray on this machine"
(`ray.init(address="auto")`) is whichever started last, or another user's. While it streams, a
run therefore keeps `control.json` in its directory (its Ray address, namespace and the driver's
pid; removed when the run ends): the commands find it under `runs/` (or RUN names the run's
directory) and connect to exactly that instance. A file left by a driver that was killed is
recognised by its pid and ignored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .placement import actor_class
from .processes import process_ended

log = logging.getLogger(__name__)

CONTROL_SUFFIX = "-control"
CONTROL_FILE = "control.json"
AUTH_MODE = "RAY_AUTH_MODE"  # Ray's own variable: token authentication or not
RUNS_DIR = Path("runs")  # where `runs/{run_id}` (writer.output_dir's default) puts runs
RUNS_DEPTH = 2  # runs/RUN/ or runs/GROUP/RUN/


def control_name(run_id: str) -> str:
    return f"{run_id}{CONTROL_SUFFIX}"


class RunControl:
    """An async actor: a desired inference count, a version that changes with each request,
    and the pool's last reported state."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.desired: int | None = None
        self.stop_reason: str | None = None
        self.version = 0
        self.pool: dict[str, Any] = {}
        self._event = asyncio.Event()

    async def set_inference(self, count: int, run_id: str = "RUN") -> dict[str, Any]:
        """Ask for `count` inference actors; returns the request and the pool's last state,
        or `{"refused": why}` (a refusal is an answer for the user, not a failure)."""
        why = refusal(count, self.limit, run_id)
        if why is not None:
            return {"refused": why}
        before = self.pool.get("desired")
        self.desired = count
        self._bump()
        return {"requested": count, "before": before, **self.pool}

    async def stop(self, reason: str = "peaknet-pipeline stop") -> None:
        """Stop ingest and drain, as a first Ctrl-C does."""
        self.stop_reason = reason
        self._bump()

    async def changed(self, version: int) -> tuple[int, int | None, str | None]:
        """(version, desired count, stop reason) once the version differs from `version`."""
        while self.version == version:
            await self._event.wait()
        return self.version, self.desired, self.stop_reason

    def _bump(self) -> None:
        self.version += 1
        self._event.set()
        self._event = asyncio.Event()

    async def report_pool(self, state: dict[str, Any]) -> None:
        self.pool = dict(state)

    async def pool_state(self) -> dict[str, Any]:
        return dict(self.pool)


def start_control(run_id: str, limit: int) -> Any:
    """The run's control actor (named, in the current namespace; no CPU reserved), on the
    driver's node: it must outlive any worker pod."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    actor = actor_class(RunControl).options(
        name=control_name(run_id), num_cpus=0, scheduling_strategy=here
    )
    return actor.remote(limit)


def find_control(run_id: str) -> Any:
    """The control actor of the running pipeline `run_id` (Ray must be connected); a
    LookupError names the runs that are running in this namespace."""
    import ray
    from ray.util import list_named_actors

    try:
        return ray.get_actor(control_name(run_id))
    except ValueError:
        names = sorted(n[: -len(CONTROL_SUFFIX)] for n in list_named_actors() if
                       n.endswith(CONTROL_SUFFIX))  # fmt: skip
        namespace = ray.get_runtime_context().namespace
        raise LookupError(
            f"no running pipeline {run_id!r} in Ray namespace {namespace!r} ({_listed(names)})"
        ) from None


def request_scale(run_id: str, inference: int) -> dict[str, Any]:
    """Ask the running pipeline `run_id` for `inference` actors (`refused` says why not)."""
    import ray

    return ray.get(find_control(run_id).set_inference.remote(inference, run_id))


def request_stop(run_id: str) -> None:
    """Ask the running pipeline `run_id` to stop ingest and drain."""
    import ray

    ray.get(find_control(run_id).stop.remote())


def refusal(count: int, limit: int, run_id: str) -> str | None:
    """Why a run cannot have `count` inference actors, with what to do instead; None if it
    can. The limit is fixed at start: the queues and the embedded instance are sized for it."""
    if count < 1:
        return (
            f"--inference {count}: a run keeps at least 1 inference actor "
            f"(to end it: peaknet-pipeline stop {run_id})"
        )
    if count > limit:
        return (
            f"--inference {count}: run {run_id} allows 1 to {limit} inference actors "
            "(inference.max_actors); a run started with --set inference.max_actors=N "
            "allows up to N"
        )
    return None


# -- reaching a run: its control.json ------------------------------------------------------------
def reach_record(run_id: str, address: str, namespace: str) -> dict[str, Any]:
    """What `control.json` holds: where the run's Ray is, whether it wants Ray's token
    authentication (never the token: that stays in ~/.ray/auth_token or the environment),
    and which process drives the run (so that a file left by a killed driver is not mistaken
    for a running run)."""
    return {
        "run_id": run_id,
        "address": address,
        "namespace": namespace,
        "auth_mode": os.environ.get(AUTH_MODE),
        "pid": os.getpid(),
        "host": socket.gethostname(),
    }


def use_auth_mode(record: dict[str, Any]) -> None:
    """Connect with the run's authentication mode; call it before Ray is imported (Ray reads
    the mode once). Ray turns token authentication on by itself only for `address="auto"`
    (ray/_private/worker.py, `init`: "an explicit address never does"), and a new embedded
    instance turns it on by default, so joining a run's own instance by its address needs the
    mode said; a mode the user set wins."""
    if record.get("auth_mode") and AUTH_MODE not in os.environ:
        os.environ[AUTH_MODE] = str(record["auth_mode"])


def how_to_reach(run_id: str, output_dir: Path, address: str, namespace: str) -> str:
    """The line a run logs at start: the commands that reach it, as typed from the driver's
    working directory (by id when it runs under runs/, otherwise by its directory)."""
    runs = RUNS_DIR.absolute()
    under_runs = output_dir.is_relative_to(runs) and output_dir != runs
    run = run_id if under_runs else _shown(output_dir)
    return (
        f"run {run_id}: `peaknet-pipeline stop {run}` drains it, `peaknet-pipeline scale {run} "
        f"--inference N` resizes it (Ray {address}, namespace {namespace}; "
        f"{_shown(output_dir / CONTROL_FILE)})"
    )


def _shown(path: Path) -> str:
    """`path` relative to the working directory when it lies below it."""
    cwd = Path.cwd()
    return str(path.relative_to(cwd)) if path.is_relative_to(cwd) else str(path)


@contextmanager
def reachable(output_dir: Path, run_id: str) -> Iterator[Path]:
    """While the run streams: its control.json, and one log line saying how to reach it.
    The file goes when the run ends, however it ends."""
    import ray

    context = ray.get_runtime_context()
    address, namespace = context.gcs_address, context.namespace
    path = output_dir / CONTROL_FILE
    path.write_text(json.dumps(reach_record(run_id, address, namespace), indent=2) + "\n")
    log.info("%s", how_to_reach(run_id, output_dir, address, namespace))
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("address") else None


def _driver_alive(record: dict[str, Any]) -> bool:
    """False only when the driver ran on this machine and its process is gone."""
    if record.get("host") != socket.gethostname():
        return True  # a driver on another node: only its Ray can tell
    try:
        return not process_ended(int(record.get("pid", 0)))
    except (ValueError, OverflowError):
        return True


def _listed(run_ids: list[str]) -> str:
    return f"running there: {', '.join(run_ids)}" if run_ids else "none is running there"


def _running(runs_dir: Path) -> list[dict[str, Any]]:
    """The control.json of every running run under `runs_dir`: `runs/RUN/`, and one level of
    grouping deeper (`runs/demo/RUN/`, a sweep's `runs/sweep-.../RUN/`)."""
    found = []
    for top, dirs, files in os.walk(runs_dir):  # links (runs/latest) are not followed
        if CONTROL_FILE in files:
            record = _read(Path(top) / CONTROL_FILE)
            if record is not None and _driver_alive(record):
                found.append(record)
        if CONTROL_FILE in files or len(Path(top).relative_to(runs_dir).parts) >= RUNS_DEPTH:
            dirs.clear()
    return found


def running_runs(runs_dir: Path = RUNS_DIR) -> list[str]:
    """The ids of the runs under `runs_dir` whose control.json says they are running."""
    return sorted({str(record["run_id"]) for record in _running(runs_dir)})


def find_run(run: str, runs_dir: Path = RUNS_DIR) -> dict[str, Any]:
    """The control.json of the running run `run`: a run's directory, or a run id found under
    `runs_dir`. A LookupError names the runs that are running there."""
    record = _read(Path(run) / CONTROL_FILE)
    if record is not None and _driver_alive(record):
        return record
    running = _running(runs_dir)
    for record in running:
        if record["run_id"] == run:
            return record
    ids = sorted({str(r["run_id"]) for r in running})
    raise LookupError(f"no running pipeline {run!r} under {runs_dir}/ ({_listed(ids)})")
