"""The output volume's claim, when the spec names no existing one. It is owned by the
resource, so deleting the resource deletes the files: use spec.cluster.output.existingClaim
for data that must outlive the pipeline."""

from __future__ import annotations

from typing import Any

from ..spec import PeakNetPipelineSpec
from . import names


def output_claim(name: str, spec: PeakNetPipelineSpec) -> str:
    return spec.cluster.output.existing_claim or names.claim_name(name)


def render_claim(name: str, namespace: str, spec: PeakNetPipelineSpec) -> dict[str, Any] | None:
    out = spec.cluster.output
    if out.existing_claim:
        return None
    claim: dict[str, Any] = {
        "accessModes": list(out.access_modes),
        "resources": {"requests": {"storage": out.size}},
    }
    if out.storage_class_name:
        claim["storageClassName"] = out.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": names.metadata(name, namespace, names.claim_name(name), "output"),
        "spec": claim,
    }
