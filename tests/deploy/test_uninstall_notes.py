"""The chart's NOTES say how to uninstall without a hung deletion: kopf puts a finalizer on
every PeakNetPipeline, so resources must go while the operator still runs, and a resource
whose operator is already gone needs its finalizer cleared by hand."""

from __future__ import annotations

import re

from chart_render import render_files
from peaknet_operator.handlers import settings


def test_notes_give_the_uninstall_order_and_the_finalizer_fix():
    notes = render_files()["peaknet-operator/templates/NOTES.txt"]
    flat = " ".join(notes.split())
    delete = flat.find("kubectl delete pnp --all")
    uninstall = flat.find("helm uninstall peaknet-operator")
    assert 0 <= delete < uninstall, "delete the resources first, then uninstall the chart"
    assert "The CRD stays" in flat  # Helm never deletes what crds/ installed
    finalizer = settings().persistence.finalizer
    assert finalizer in flat
    patch = """kubectl patch pnp NAME --type=merge -p '{"metadata":{"finalizers":null}}'"""
    assert re.search(re.escape(patch).replace("NAME", r"\S+( -n \S+)?"), flat), patch
