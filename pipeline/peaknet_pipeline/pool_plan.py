"""The inference pool's rules, pure: which actors to retire, where a new one may start, what
one step of the pool does, and the state it reports. `InferencePool` (pool.py) applies them
with Ray calls; these load without Ray (the monitor's advice reads `SLOT`), and the unit tests
check them without a cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

SLOT = "peaknet_infer"  # the custom resource of inference pods, one unit per actor slot


@dataclass(frozen=True)
class Member:
    """What the choice of retirees needs to know of an active actor."""

    actor_id: str
    node: str | None  # the node's name (the pod name on Kubernetes); None while starting
    started: float  # when the driver started it (newest retire first)


def choose_retirees(members: Iterable[Member], count: int, whole_nodes: bool) -> list[str]:
    """Which actors to retire so that `count` fewer remain: those still starting first, then,
    with `whole_nodes`, every actor of the nodes holding fewest actors (newest nodes first),
    else the newest actors. With whole nodes the pool may retire more than `count` only when
    a node holds more actors than are left to retire."""
    members = list(members)
    starting = [m for m in members if m.node is None]
    chosen = [m.actor_id for m in sorted(starting, key=lambda m: -m.started)][:count]
    left = count - len(chosen)
    placed = [m for m in members if m.node is not None]
    if left <= 0 or not placed:
        return chosen
    if not whole_nodes:
        return chosen + [m.actor_id for m in sorted(placed, key=lambda m: -m.started)][:left]
    by_node: dict[str, list[Member]] = {}
    for m in placed:
        by_node.setdefault(m.node, []).append(m)
    order = sorted(by_node.values(), key=lambda ms: (len(ms), -max(m.started for m in ms)))
    for node_members in order:
        if left <= 0:
            break
        chosen += [m.actor_id for m in node_members]
        left -= len(node_members)
    return chosen


def free_slots(slots: Mapping[str, float], used: Mapping[str, int], closed: set[str]) -> list[str]:
    """Node ids with a free actor slot: total `peaknet_infer` minus the pool's actors there,
    leaving out nodes being released."""
    return [node for node, total in slots.items() if node not in closed and used[node] < total]


@dataclass(frozen=True)
class StepPlan:
    """What one step of the pool does."""

    start: int  # actors to start now
    retire: int  # actors to retire now
    drop_owed: bool  # at its target: the reserved replacements are not owed any more


def plan_step(desired: int, active: int, owed: int, draining: bool, may_start: bool) -> StepPlan:
    """Move the pool toward `desired` given its `active` actors (starting or running, not
    retiring) and `owed` reserved replacements. While the stream ends (`draining`) only failed
    actors come back, so a target raised after ingest stopped starts nothing; `may_start` is
    False during the back-off after a failure or once the pool is frozen."""
    short = desired - active
    if draining:
        short = min(short, owed)
    return StepPlan(
        start=short if short > 0 and may_start else 0,
        retire=max(0, active - desired),
        drop_owed=short <= 0,
    )


@dataclass
class PoolState:
    """What the pool is doing, for the status and the scale command."""

    desired: int
    running: int
    starting: int
    retiring: int
    released_pods: list[str]
    actors: dict[str, dict[str, Any]]  # id -> state, node, pid of every actor not finished

    def as_status(self) -> dict[str, int]:
        return {"desired": self.desired, "running": self.running, "retiring": self.retiring}
