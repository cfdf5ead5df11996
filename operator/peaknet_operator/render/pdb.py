"""A PodDisruptionBudget per worker group: a node drain evicts at most one pod of a group at a
time (KubeRay sets none), so a drain never takes a whole stage down at once."""

from __future__ import annotations

from typing import Any

from ..spec import ROLES, PeakNetPipelineSpec
from . import names


def render_pdb(name: str, namespace: str, role: str) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": names.metadata(name, namespace, names.pdb_name(name, role), role),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": names.pod_labels(name, role)}},
    }


def render_pdbs(name: str, namespace: str, spec: PeakNetPipelineSpec) -> list[dict[str, Any]]:
    return [render_pdb(name, namespace, role) for role in ROLES]
