"""The operator's half of scaling the inference group without losing a frame.

KubeRay scales pods, not actors, and lowering a group's `replicas` deletes arbitrary pods
unless the same patch names them in `scaleStrategy.workersToDelete`
(../shared/reference/kuberay-kopf.md). So a scale-up needs no help (replicas rise, the driver
starts actors as pods join), but a scale-down waits for the driver: it retires every actor on
the pods it chooses and lists those pods in `status.driver.releasedPods`; only then does the
operator lower `replicas`, naming exactly those pods in the same patch. Until the driver has
released pods, replicas stay where they are.

`observe_scale` reads what the decision needs from the RayCluster, the pods and the driver's
status; `decide` is the rule. Both are pure; the reconcile and the status timer apply the
result (the timer is what lowers replicas once the driver publishes released pods).

A second scale-down that arrives while an earlier one is still being carried out is merged:
pods already named in the RayCluster's `workersToDelete` that still exist were subtracted
from `replicas` when they were named, so only newly released pods lower it further, and the
list keeps naming them until they are gone (a list that dropped them while `replicas` stays
lowered would let KubeRay delete an arbitrary pod instead).

KubeRay v1.7 deletes every pod named in `workersToDelete` on each reconcile, by name, and
then clears only its in-memory copy of the list; it never writes the spec back
(ray-operator/controllers/ray/raycluster_controller.go: reconcilePods). The stored list keeps
its names until someone else clears it, and a later pod that reuses a name would be deleted on
KubeRay's next reconcile. So the operator clears the list itself (writes an empty list) once
none of the named pods exists.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .render.names import LABEL_ROLE

INFERENCE = "inference"


@dataclass(frozen=True)
class ScaleObservation:
    """What one scaling decision is made from."""

    current: int | None  # the inference group's replicas in the RayCluster; None: no RayCluster
    pods: frozenset[str] = frozenset()  # inference pods that exist and are not terminating
    released: tuple[str, ...] = ()  # status.driver.releasedPods
    deleting: tuple[str, ...] = ()  # the group's scaleStrategy.workersToDelete as it is


@dataclass(frozen=True)
class InferenceScale:
    """What the inference group is rendered with."""

    replicas: int
    # None leaves scaleStrategy as it is; () writes an empty list (the named pods are gone, and
    # KubeRay never clears the stored list itself).
    workers_to_delete: tuple[str, ...] | None = None
    # Pods the scale-down still needs from the driver (replicas stay this much above desired).
    awaiting_release: int = 0


def decide(desired: int, seen: ScaleObservation | None) -> InferenceScale:
    """The inference group's replicas and workersToDelete for `desired` pods (the spec's
    spec.cluster.inference.replicas), given what is observed.

    No RayCluster yet, or not fewer pods than it has: `desired`, workersToDelete untouched.
    Fewer: lower replicas only by the released pods that still exist (never below
    `desired`), and name every released or already named pod that still exists. Either way, a
    list whose pods are all gone is emptied (stale names must not delete a later pod)."""
    if seen is None or seen.current is None:
        return InferenceScale(desired)
    pending = {pod for pod in seen.deleting if pod in seen.pods}
    stale = () if seen.deleting and not pending else None
    if desired >= seen.current:
        return InferenceScale(desired, stale)
    released = {pod for pod in seen.released if pod in seen.pods}
    fresh = released - pending  # not yet subtracted from current
    replicas = max(desired, seen.current - len(fresh))
    named = tuple(sorted(released | pending))
    return InferenceScale(replicas, named or stale, replicas - desired)


def _live_pod_names(pods: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    names = set()
    for pod in pods:
        meta = pod.get("metadata", {})
        if (meta.get("labels") or {}).get(LABEL_ROLE) == INFERENCE and not meta.get(
            "deletionTimestamp"
        ):
            names.add(meta.get("name", ""))
    return frozenset(names)


def inference_group(raycluster: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The inference worker group of a RayCluster, or None."""
    groups = ((raycluster or {}).get("spec") or {}).get("workerGroupSpecs") or []
    return next((g for g in groups if g.get("groupName") == INFERENCE), None)


def observe_scale(
    raycluster: Mapping[str, Any] | None,
    pods: Iterable[Mapping[str, Any]],
    driver: Mapping[str, Any] | None,
) -> ScaleObservation:
    """The decision's inputs from the RayCluster, the pipeline's pods and `status.driver`.
    A terminating pod counts as gone: it was deleted, and naming it again would count it
    twice."""
    group = inference_group(raycluster)
    if group is None:
        return ScaleObservation(current=None)
    strategy = group.get("scaleStrategy") or {}
    return ScaleObservation(
        current=int(group.get("replicas", 0)),
        pods=_live_pod_names(pods),
        released=tuple((driver or {}).get("releasedPods") or ()),
        deleting=tuple(strategy.get("workersToDelete") or ()),
    )


def applied(raycluster: Mapping[str, Any] | None, scale: InferenceScale) -> bool:
    """Whether the RayCluster's inference group already has what `scale` renders."""
    group = inference_group(raycluster)
    if group is None:
        return False
    same_replicas = all(
        group.get(key) == scale.replicas for key in ("replicas", "minReplicas", "maxReplicas")
    )
    if scale.workers_to_delete is None:
        return same_replicas
    listed = tuple((group.get("scaleStrategy") or {}).get("workersToDelete") or ())
    return same_replicas and listed == scale.workers_to_delete
