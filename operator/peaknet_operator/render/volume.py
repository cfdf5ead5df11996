"""The output volume's claim, when the spec names no existing one. It is owned by the
resource, so deleting the resource deletes the files: use spec.cluster.output.existingClaim
for data that must outlive the pipeline.

The head and every writer pod mount the claim. A ReadWriteOnce volume (EBS, PD, Ceph RBD)
attaches to one node at a time; a pod on another node hangs in ContainerCreating with a
Multi-Attach error. So when the claim is not ReadWriteMany, `single_node_claim` is true and
raycluster.py gives the writer pods a required podAffinity to the head pod on
`kubernetes.io/hostname`: the scheduler puts them on the head's node (which must then hold the
head and every writer; the scheduling check counts them together). ReadWriteMany adds nothing.
The access modes are those of the claim the operator creates; for an existingClaim they are
known only when the spec states them (`accessModes`), and without them nothing is added.
ReadWriteOncePod cannot serve the head and the writers at all (one pod only): checks.py refuses it.

The claim's root directory of a freshly formatted volume is `root:root 0755`; the pods set
`securityContext.fsGroup` (raycluster.py) so Ray's non-root user can write there.
"""

from __future__ import annotations

from typing import Any

from ..spec import PeakNetPipelineSpec
from . import names


def output_claim(name: str, spec: PeakNetPipelineSpec) -> str:
    return spec.cluster.output.existing_claim or names.claim_name(name)


def single_node_claim(spec: PeakNetPipelineSpec) -> bool:
    """Whether the output claim mounts on one node only (not ReadWriteMany), so the writers
    must run on the head's node. An existingClaim whose modes the spec does not state: False."""
    out = spec.cluster.output
    if out.existing_claim and "access_modes" not in out.model_fields_set:
        return False
    return "ReadWriteMany" not in out.access_modes


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
