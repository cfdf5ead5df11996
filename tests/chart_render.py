"""The Helm chart rendered offline (helm-python-sdk: Helm's Go SDK, no helm binary), for the
chart, RBAC and static-check tests."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "peaknet-operator"
ALL_VALUES = REPO / "tests" / "deploy" / "values-all.yaml"
RELEASE, RELEASE_NAMESPACE = "peaknet-operator", "peaknet-system"


def all_values() -> dict[str, Any]:
    """The values file that sets every option of the chart."""
    return yaml.safe_load(ALL_VALUES.read_text())


def render_files(values: dict[str, Any] | None = None) -> dict[str, str]:
    """{template path: rendered text}, as `helm template` would print them."""
    import helm_python

    with helm_python.Chart.load(CHART) as chart:
        return chart.render(values, name=RELEASE, namespace=RELEASE_NAMESPACE, is_install=True)


@lru_cache(maxsize=8)
def _render_cached(values_yaml: str) -> tuple[dict[str, Any], ...]:
    files = render_files(yaml.safe_load(values_yaml))
    docs = []
    for path, text in sorted(files.items()):
        if path.endswith(".txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return tuple(docs)


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every manifest the chart renders with `values` (NOTES.txt left out)."""
    import copy

    return copy.deepcopy(list(_render_cached(yaml.safe_dump(values or {}))))


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]
