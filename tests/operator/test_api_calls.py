"""How many API calls one reconcile and one status tick make, against the API emulator over
HTTP: the handlers are called directly (no kopf loop, no timer running beside them), so the
requests between two calls are exactly that handler's.

A reconcile of a resource whose children are up to date reads each object once (the RayCluster
and the RayJob serve both status and the create-or-patch step) and writes nothing but its
status; a tick of the status timer reads only what status is folded from; after a write of
the RayCluster or RayJob only those two are read again.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import kopf
import pytest
from test_lifecycle import add_driver_account

from conftest import example
from peaknet_operator import handlers
from peaknet_operator.render import render_all
from peaknet_operator.spec import PeakNetPipelineSpec

LOG = logging.getLogger("test")


@pytest.fixture
def posted(monkeypatch) -> list[dict[str, Any]]:
    """kopf.event outside kopf's loop (it needs its context): recorded instead of posted."""
    events: list[dict[str, Any]] = []
    monkeypatch.setattr(kopf, "event", lambda body, **kw: events.append(kw))
    return events


def calls(emulator, since: int) -> Counter[str]:
    """'METHOD plural' of each request after the first `since`, events and the resource
    itself included; discovery as 'GET discovery'."""
    counted: Counter[str] = Counter()
    for r in emulator.requests[since:]:
        method = str(r.method.value).upper()
        plural = r.resource.plural if r.resource is not None and r.resource.plural else ""
        counted[f"{method} {plural or 'discovery'}"] += 1
    return counted


def stored(kubectl) -> dict[str, Any]:
    add_driver_account(kubectl)
    return kubectl.apply(example())


def reconcile(body: dict[str, Any], memo: kopf.Memo) -> kopf.Patch:
    patch = kopf.Patch()
    handlers.reconcile(
        name=body["metadata"]["name"],
        namespace=body["metadata"]["namespace"],
        body=body,
        patch=patch,
        logger=LOG,
        memo=memo,
    )
    return patch


def tick(body: dict[str, Any], memo: kopf.Memo) -> kopf.Patch:
    patch = kopf.Patch()
    handlers.refresh_status(
        name=body["metadata"]["name"],
        namespace=body["metadata"]["namespace"],
        body=body,
        patch=patch,
        logger=LOG,
        memo=memo,
    )
    return patch


def login(memo: kopf.Memo) -> None:
    handlers.login(memo=memo, logger=LOG, settings=kopf.OperatorSettings())


def n_children() -> int:
    return len(render_all("demo", "ns", PeakNetPipelineSpec.model_validate(example()["spec"])))


def test_a_reconcile_of_an_unchanged_resource_reads_each_object_once(
    kubeconfig, emulator, kubectl, posted
):
    memo = kopf.Memo()
    login(memo)
    body = stored(kubectl)
    reconcile(body, memo)  # creates the children
    since = len(emulator.requests)
    posted.clear()
    patch = reconcile(body, memo)
    made = calls(emulator, since)
    # RayCluster, RayJob, pods and the ServiceAccount, each read once (status and the
    # create-or-patch step share the RayCluster and RayJob); the other children's GET of the
    # create-or-patch step. Before issue 21: 15 GETs (RayCluster and RayJob 3 each, pods and
    # the ServiceAccount 2 each).
    assert made == Counter(
        {
            "GET persistentvolumeclaims": 1,
            "GET configmaps": 1,
            "GET poddisruptionbudgets": 3,
            "GET rayclusters": 1,
            "GET rayjobs": 1,
            "GET pods": 1,
            "GET serviceaccounts": 1,
        }
    ), made
    assert sum(made.values()) == n_children() + 2
    assert "status" in patch  # the fold of what was read is written
    assert not any(e["reason"] == "Reconciled" for e in posted)  # nothing created or patched


def test_a_status_tick_reads_what_status_is_folded_from_once(kubeconfig, emulator, kubectl, posted):
    memo = kopf.Memo()
    login(memo)
    body = stored(kubectl)
    reconcile(body, memo)
    since = len(emulator.requests)
    tick(body, memo)
    made = calls(emulator, since)
    assert made == Counter(
        {"GET rayclusters": 1, "GET rayjobs": 1, "GET pods": 1, "GET serviceaccounts": 1}
    ), made


def test_each_event_parses_and_renders_the_spec_once(
    kubeconfig, emulator, kubectl, posted, monkeypatch
):
    from peaknet_operator import decisions

    made = Counter()

    def counted(what, fn):
        def call(*args, **kwargs):
            made[what] += 1
            return fn(*args, **kwargs)

        return call

    monkeypatch.setattr(decisions, "parse_spec", counted("parse", decisions.parse_spec))
    monkeypatch.setattr(handlers, "render_all", counted("render", handlers.render_all))
    memo = kopf.Memo()
    login(memo)
    body = stored(kubectl)
    for event in (reconcile, reconcile, tick):  # create, unchanged, the timer
        made.clear()
        event(body, memo)
        assert made == Counter(parse=1, render=1), (event.__name__, made)  # before: 3 and 3
