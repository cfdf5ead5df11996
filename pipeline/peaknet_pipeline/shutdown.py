"""The end of a run: the torch trace fetched, every actor and the control actor ended, the
queues destroyed (unless they persist). Functions take the run's `Pipeline` (stages.py).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import ray

from .errors import describe
from .inference.observe import trace_name
from .placement import Role

if TYPE_CHECKING:
    from .stages import Pipeline

log = logging.getLogger(__name__)


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
