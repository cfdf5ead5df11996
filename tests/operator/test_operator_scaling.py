"""The operator's scaling rule (pure): replicas and workersToDelete of the inference group from
the spec's replicas, the RayCluster as it is, the pods that exist and the driver's released
pods. The rule that matters: replicas never drop below the pods that are still needed and not
named in workersToDelete, or KubeRay would delete arbitrary (working) pods."""

from __future__ import annotations

import pytest

from peaknet_operator.render import names
from peaknet_operator.scaling import (
    InferenceScale,
    ScaleObservation,
    applied,
    decide,
    observe_scale,
)

A, B, C = (
    "demo-inference-worker-aaaaa",
    "demo-inference-worker-bbbbb",
    "demo-inference-worker-ccccc",
)


def seen(current, pods=(), released=(), deleting=()) -> ScaleObservation:
    return ScaleObservation(current, frozenset(pods), tuple(released), tuple(deleting))


def test_no_raycluster_renders_the_spec():
    assert decide(2, None) == InferenceScale(2)
    assert decide(2, seen(None)) == InferenceScale(2)


def test_scale_up_raises_replicas_at_once():
    assert decide(3, seen(1, {A})) == InferenceScale(3)
    assert decide(2, seen(2, {A, B})) == InferenceScale(2)


def test_scale_down_waits_until_the_driver_releases_pods():
    decision = decide(1, seen(2, {A, B}))
    assert decision == InferenceScale(2, None, awaiting_release=1)


def test_scale_down_after_the_release_names_exactly_the_released_pods():
    decision = decide(1, seen(2, {A, B}, released=[B]))
    assert decision == InferenceScale(1, (B,), awaiting_release=0)


def test_partial_release_lowers_replicas_only_by_what_was_released():
    decision = decide(1, seen(3, {A, B, C}, released=[C]))
    assert decision == InferenceScale(2, (C,), awaiting_release=1)
    # Then KubeRay has not yet deleted C, and the driver releases B too.
    decision = decide(1, seen(2, {A, B, C}, released=[B, C], deleting=[C]))
    assert decision == InferenceScale(1, (B, C), awaiting_release=0)


def test_a_scale_down_while_a_previous_one_is_still_draining_is_merged():
    # 3 -> 2: the driver released C and the operator named it; C still exists.
    # Then 2 -> 1 before the driver released anything more: C must not be counted twice.
    decision = decide(1, seen(2, {A, B, C}, released=[C], deleting=[C]))
    assert decision == InferenceScale(2, (C,), awaiting_release=1)
    # The rule's naive form (current - released) would give 1 here: KubeRay would delete C
    # and one arbitrary pod of A and B, both still running actors.


def test_named_pods_stay_named_until_they_are_gone():
    # The driver dropped C from releasedPods early (or restarted): C stays named.
    decision = decide(1, seen(2, {A, B, C}, released=[B], deleting=[C]))
    assert decision == InferenceScale(1, (B, C), awaiting_release=0)


def test_released_pods_that_no_longer_exist_are_ignored():
    # C was deleted; the driver lists it until its node has left Ray.
    assert decide(2, seen(2, {A, B}, released=[C])) == InferenceScale(2)
    assert decide(1, seen(2, {A, B}, released=[C])) == InferenceScale(2, None, 1)
    assert decide(1, seen(2, {A, B}, released=[B, C])) == InferenceScale(1, (B,), 0)


def test_never_below_the_desired_count_even_if_more_pods_are_released():
    decision = decide(2, seen(3, {A, B, C}, released=[B, C]))
    assert decision.replicas == 2 and decision.workers_to_delete == (B, C)


def pod(name: str, role: str = "inference", terminating: bool = False) -> dict:
    meta = {"name": name, "labels": names.pod_labels("demo", role)}
    if terminating:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta}


def raycluster(replicas: int, deleting: list[str] | None = None) -> dict:
    group = {"groupName": "inference", "replicas": replicas}
    group |= {"minReplicas": replicas, "maxReplicas": replicas}
    if deleting is not None:
        group["scaleStrategy"] = {"workersToDelete": deleting}
    return {"spec": {"workerGroupSpecs": [{"groupName": "ingest", "replicas": 5}, group]}}


def test_observe_reads_the_group_live_inference_pods_and_released_pods():
    pods = [pod(A), pod(B, terminating=True), pod("demo-ingest-worker-x", "ingest")]
    observed = observe_scale(raycluster(2, [B]), pods, {"releasedPods": [B]})
    assert observed == seen(2, {A}, released=[B], deleting=[B])
    # A terminating pod counts as gone: released B does not lower replicas again, and the list
    # naming only B is emptied (KubeRay has acted on it; its name must not outlive the pod).
    assert decide(1, observed) == InferenceScale(2, (), 1)
    assert observe_scale(None, pods, {"releasedPods": [B]}) == seen(None)
    assert observe_scale(raycluster(1), [], {}) == seen(1)


@pytest.mark.parametrize(
    "rc, scale, expected",
    [
        (raycluster(2), InferenceScale(2), True),
        (raycluster(2, [C]), InferenceScale(2), True),  # None leaves the list alone
        (raycluster(2), InferenceScale(1, (B,)), False),
        (raycluster(1), InferenceScale(1, (B,)), False),
        (raycluster(1, [B]), InferenceScale(1, (B,)), True),
        (None, InferenceScale(1), False),
    ],
)
def test_applied_compares_replicas_and_named_pods(rc, scale, expected):
    assert applied(rc, scale) is expected


def test_stale_names_are_cleared_once_none_of_the_named_pods_exists():
    # KubeRay deletes every pod named in workersToDelete on each reconcile, by name, and never
    # writes the list back (raycluster_controller.go: reconcilePods clears its in-memory copy).
    # C was deleted; the list still names it; a new pod that reuses the name C would be
    # deleted by KubeRay on its next reconcile: the operator writes an empty list.
    assert decide(2, seen(2, {A, B}, deleting=[C])) == InferenceScale(2, ())
    assert decide(3, seen(2, {A, B}, deleting=[C])) == InferenceScale(3, ())
    # A scale-down names only pods that exist: the stale name is dropped from the new list.
    assert decide(1, seen(2, {A, B}, released=[B], deleting=[C])) == InferenceScale(1, (B,), 0)
    # A scale-down waiting for the driver with only stale names: the list is emptied too.
    assert decide(1, seen(2, {A, B}, deleting=[C])) == InferenceScale(2, (), 1)
    # A named pod still exists: the list stays as it is (it is subtracted from replicas).
    assert decide(2, seen(2, {A, B, C}, deleting=[C])) == InferenceScale(2, None)
    # Nothing named: nothing written.
    assert decide(2, seen(2, {A, B})) == InferenceScale(2)


def test_an_empty_list_is_applied_when_the_group_names_nothing():
    assert applied(raycluster(2, []), InferenceScale(2, ()))
    assert applied(raycluster(2), InferenceScale(2, ()))
    assert not applied(raycluster(2, [C]), InferenceScale(2, ()))
