"""The end of a run: the torch trace fetched, every actor and the control actor ended, the
queues destroyed (unless they persist). Functions take the run's `Pipeline` (stages.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import ray

from .errors import describe
from .inference.observe import trace_name
from .placement import Role
from .processes import process_ended

if TYPE_CHECKING:
    from .registry import StageActor
    from .stages import Pipeline

log = logging.getLogger(__name__)

ENDED_WAIT_S = 10.0  # how long a hard stop waits for killed writers' processes to end
ENDED_POLL_S = 0.02


def save_torch_trace(pipeline: Pipeline) -> None:
    """Write the torch trace of `profile.torch` into the run directory (the profiled actor
    keeps it until asked: the inference pods need not see the output volume)."""
    wanted = pipeline.cfg.profile.torch
    if wanted is None:
        return
    actor = next(
        (a for a in pipeline.of(Role.INFERENCE) if a.actor_id.endswith(f"-{wanted.actor}")), None
    )
    try:
        trace = ray.get(actor.handle.torch_trace.remote(), timeout=60) if actor else None
    except Exception as exc:  # noqa: BLE001 - a dead actor took its trace with it
        log.warning("profile.torch: no trace from inference-%d: %s", wanted.actor, describe(exc))
        return
    if trace is None:
        log.warning("profile.torch: inference-%d recorded no trace (no batch)", wanted.actor)
        return
    path = pipeline.output_dir / trace_name(actor.actor_id)
    path.write_bytes(trace)
    log.info("torch trace of %s: %s", actor.actor_id, path)


def kill(pipeline: Pipeline) -> None:
    """End every actor's process now, and the control actor."""
    for actor in pipeline.actors:
        ray.kill(actor.handle, no_restart=True)
    close_control(pipeline)


def kill_at_once(pipeline: Pipeline) -> None:
    """A hard stop: every actor ended now, and the writers' processes waited for, since the
    run directory is listed next (summary.json: what is on disk)."""
    kill(pipeline)
    here = ray.get_runtime_context().get_node_id()
    if still := wait_ended(pipeline.of(Role.WRITER), here):
        log.warning(
            "writers %s still ran %.0f s after being killed: summary.json lists the files "
            "as found then",
            ", ".join(still),
            ENDED_WAIT_S,
        )


def wait_ended(
    actors: Iterable[StageActor], here: str, timeout_s: float = ENDED_WAIT_S
) -> list[str]:
    """After `kill`: wait until the killed actors' processes on this node (`here`, a Ray node
    id) have ended; the ids of those still running at the deadline. ray.kill returns before
    the process ends, and a writer killed mid-stream once opened its next file after the
    driver had listed the run directory (summary.json then missed a .part file left on disk).
    A process on another node cannot be watched from here: its run() ending (it raises once
    Ray has the actor dead) is as far as the driver can see."""
    deadline = time.monotonic() + timeout_s
    actors = list(actors)
    remote = {a.run_ref: a for a in actors if a.node_id != here and a.run_ref is not None}
    done = ray.wait(list(remote), num_returns=len(remote), timeout=timeout_s)[0] if remote else []
    left = [a.actor_id for ref, a in remote.items() if ref not in done]
    waiting = [a for a in actors if a.node_id == here and a.pid is not None]
    while waiting and time.monotonic() < deadline:
        waiting = [a for a in waiting if not process_ended(a.pid)]
        if waiting:
            time.sleep(ENDED_POLL_S)
    return [a.actor_id for a in waiting] + left


def close_control(pipeline: Pipeline) -> None:
    """End the run's control actor (nothing can be scaled any more)."""
    if pipeline.pool is not None and pipeline.pool.control is not None:
        ray.kill(pipeline.pool.control, no_restart=True)
        pipeline.pool.control = None


def destroy_queues(pipeline: Pipeline, even_if_persistent: bool = False) -> None:
    """Destroy Q1 and Q2, unless `queue.persist` keeps them (a run that failed to start
    destroys them anyway: `even_if_persistent`)."""
    if pipeline.cfg.queue.persist and not even_if_persistent:
        log.info("queues %s-q1/q2 persist (queue.persist is set)", pipeline.run_id)
        return
    for queue in (pipeline.q1, pipeline.q2):
        if queue is not None:
            queue.destroy()
