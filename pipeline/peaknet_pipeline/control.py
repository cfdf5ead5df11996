"""Changing a running pipeline from outside: the run's control actor.

The driver creates one named actor per run, `<run id>-control`, in the run's Ray namespace.
`peaknet-pipeline scale RUN --inference N`, from any process that reaches the Ray cluster, asks
it for N inference actors; `peaknet-pipeline stop RUN` asks for the drain a Ctrl-C would start. The driver keeps a `changed()` call pending on it among the calls it
waits on anyway, so a request is acted on at once, without polling. The driver writes back what
the pool is doing (`report_pool`); the scale command prints it. The actor ends with the driver
(it is not detached).
"""

from __future__ import annotations

import asyncio
from typing import Any

CONTROL_SUFFIX = "-control"


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

    async def set_inference(self, count: int) -> dict[str, Any]:
        """Ask for `count` inference actors; returns the request and the pool's last state."""
        if not 1 <= count <= self.limit:
            raise ValueError(
                f"--inference {count}: this run allows 1 to {self.limit} inference actors "
                "(inference.max_actors)"
            )
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
    actor = ray.remote(RunControl).options(
        name=control_name(run_id), num_cpus=0, scheduling_strategy=here
    )
    return actor.remote(limit)


def find_control(run_id: str) -> Any:
    """The control actor of the running pipeline `run_id` (Ray must be connected)."""
    import ray

    try:
        return ray.get_actor(control_name(run_id))
    except ValueError:
        raise LookupError(f"no running pipeline {run_id!r} in this Ray namespace") from None


def request_scale(run_id: str, inference: int) -> dict[str, Any]:
    """Ask the running pipeline `run_id` for `inference` actors."""
    import ray

    return ray.get(find_control(run_id).set_inference.remote(inference))


def request_stop(run_id: str) -> None:
    """Ask the running pipeline `run_id` to stop ingest and drain."""
    import ray

    ray.get(find_control(run_id).stop.remote())
