"""The operator's pure decisions (decisions.py), without an API server: acceptance, the
restart fingerprint comparison, which writes are read back, and which events a status change
or a write posts."""

from __future__ import annotations

import copy

from conftest import example
from peaknet_operator.decisions import (
    FINGERPRINT,
    RESTART_MESSAGE,
    Event,
    accept,
    applied_event,
    changes_observation,
    creation_annotations,
    restart_reason,
    scale_event,
    status_events,
)
from peaknet_operator.render import render_all, restart_fingerprint
from peaknet_operator.scaling import InferenceScale


def cond(ctype: str, status: str, reason: str = "R", message: str = "m") -> dict:
    return {"type": ctype, "status": status, "reason": reason, "message": message}


def test_the_example_is_accepted_and_sized():
    acceptance = accept(example()["spec"])
    assert acceptance.problems == [] and acceptance.reason == ""
    assert set(acceptance.sizes) == {"head", "ingest", "inference", "writer"}


def test_an_invalid_spec_is_refused_with_its_field():
    raw = example()["spec"]
    raw["cluster"]["inference"]["replicas"] = -1
    acceptance = accept(raw)
    assert acceptance.reason == "SpecInvalid" and acceptance.sizes == {}
    assert any("replicas" in p for p in acceptance.problems)


def test_an_object_store_that_does_not_fit_is_refused_after_parsing():
    raw = example()["spec"]
    raw["cluster"]["inference"]["memory"] = "600Mi"
    acceptance = accept(raw)
    assert acceptance.spec is not None
    assert acceptance.reason == "ObjectStoreDoesNotFit" and acceptance.problems


def raycluster(started: str | None) -> dict:
    annotations = {FINGERPRINT: started} if started else {}
    return {"metadata": {"name": "demo", "annotations": annotations}}


def test_restart_is_required_only_when_the_started_fingerprint_differs():
    assert restart_reason(raycluster("abc"), "abc") is None
    assert restart_reason(raycluster("abc"), "def") == RESTART_MESSAGE
    assert restart_reason(raycluster(None), "def") is None  # not started by this operator
    assert restart_reason(None, "def") is None  # no RayCluster yet


def test_the_fingerprint_ignores_the_scale_and_follows_the_pod_template():
    acceptance = accept(example()["spec"])
    spec, sizes = acceptance.spec, acceptance.sizes
    plain = restart_fingerprint(render_all("demo", "ns", spec, sizes))
    scaled = render_all("demo", "ns", spec, sizes, InferenceScale(3, ("pod-a",), 1))
    assert restart_fingerprint(scaled) == plain  # the reconcile renders once, with the scale
    raw = copy.deepcopy(example()["spec"])
    raw["cluster"]["image"] = "elsewhere/peaknet:other"
    other = accept(raw)
    assert restart_fingerprint(render_all("demo", "ns", other.spec, other.sizes)) != plain


def test_only_the_raycluster_is_created_with_the_fingerprint():
    assert creation_annotations("RayCluster", "abc") == {FINGERPRINT: "abc"}
    assert creation_annotations("RayJob", "abc") is None


def test_only_a_written_raycluster_or_rayjob_is_read_back():
    assert not changes_observation([])
    assert not changes_observation([("RayCluster", "unchanged"), ("RayJob", "unchanged")])
    assert not changes_observation([("ConfigMap", "patched"), ("PersistentVolumeClaim", "created")])
    assert changes_observation([("ConfigMap", "unchanged"), ("RayCluster", "patched")])
    assert changes_observation([("RayJob", "created")])
    assert changes_observation([("RayCluster", "deleted")])


def test_a_new_phase_posts_normal_and_failed_or_degraded_post_warning():
    previous = {"phase": "Pending", "conditions": []}
    running = {"phase": "Running", "message": "every stage ready", "conditions": []}
    assert status_events(previous, running) == [Event("Normal", "Running", "every stage ready")]
    for bad in ("Failed", "Degraded"):
        (event,) = status_events(previous, {"phase": bad, "message": "why", "conditions": []})
        assert event == Event("Warning", bad, "why")
    assert status_events(running, running) == []


def test_a_warned_condition_turning_false_posts_its_message_once():
    ok = cond("Reconciled", "True", "Applied", "fine")
    refused = cond("Reconciled", "False", "Invalid", "apply RayCluster: refused")
    previous = {"phase": "Pending", "conditions": [ok]}
    folded = {"phase": "Pending", "conditions": [refused]}
    assert status_events(previous, folded) == [
        Event("Warning", "Invalid", "apply RayCluster: refused")
    ]
    assert status_events(folded, folded) == []  # still False, same message: said already
    again = {"phase": "Pending", "conditions": [{**refused, "message": "another refusal"}]}
    assert [e.message for e in status_events(folded, again)] == ["another refusal"]


def test_other_conditions_turning_false_post_nothing():
    previous = {"phase": "Pending", "conditions": [cond("IngestReady", "True")]}
    folded = {"phase": "Pending", "conditions": [cond("IngestReady", "False")]}
    assert status_events(previous, folded) == []


def test_event_messages_are_capped():
    folded = {"phase": "Failed", "message": "x" * 5000, "conditions": []}
    (event,) = status_events({}, folded)
    assert len(event.message) == 1000


def test_the_reconciled_event_counts_creations_and_patches():
    assert applied_event([("ConfigMap", "unchanged"), ("RayCluster", "unchanged")]) is None
    writes = [("ConfigMap", "created"), ("RayCluster", "patched"), ("RayJob", "created")]
    assert applied_event(writes) == Event("Normal", "Reconciled", "2 created, 1 patched")


def test_the_scale_event_names_the_pods_it_deletes_or_the_emptied_list():
    named = scale_event(InferenceScale(1, ("pod-a", "pod-b"), 0))
    assert named.message == "inference replicas 1, deleting released pods: pod-a, pod-b"
    emptied = scale_event(InferenceScale(1, ()))
    assert emptied.message == "inference replicas 1; emptied workersToDelete (pods gone)"
    assert named.reason == emptied.reason == "ScaledInference"
