"""Deterministic child names and labels of one PeakNetPipeline.

A resource name may be a 253-character DNS subdomain; children need DNS-1035 labels (RayCluster
names at most 53 characters, RayJob names at most 47 because KubeRay derives others from them).
A name that fits is used as it is; a longer one is cut and given a hash of the whole name, so
two long names that share a prefix still get different children.
"""

from __future__ import annotations

import hashlib
import re

from ..spec import GROUP

RAYCLUSTER_MAX = 53
RAYJOB_MAX = 47
NAME_MAX = 63
LABEL_PIPELINE = f"{GROUP}/pipeline"
LABEL_ROLE = f"{GROUP}/role"
LABEL_COMPONENT = "app.kubernetes.io/component"
MANAGED_BY = "peaknet-operator"
CONFIG_DIR = "/etc/peaknet"
CONFIG_FILE = "pipeline.yaml"


def dns1035(name: str, limit: int, suffix: str = "") -> str:
    """`name` + `suffix` as a DNS-1035 label of at most `limit` characters."""
    base = re.sub(r"[^a-z0-9-]", "-", name.lower())
    if not base[:1].isalpha():
        base = "p-" + base
    if len(base) + len(suffix) > limit or base != name:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        room = limit - len(suffix) - len(digest) - 1
        base = f"{base[:room].rstrip('-')}-{digest}"
    return (base + suffix).strip("-")


def raycluster_name(name: str) -> str:
    return dns1035(name, RAYCLUSTER_MAX)


def rayjob_name(name: str, attempt: int = 0) -> str:
    """The driver's RayJob; a service's restarted driver (attempt n > 0) is `<name>-driver-n`."""
    return dns1035(name, RAYJOB_MAX, f"-driver-{attempt}" if attempt else "-driver")


def configmap_name(name: str) -> str:
    return dns1035(name, NAME_MAX, "-config")


def service_name(name: str) -> str:
    return dns1035(name, NAME_MAX, "-ingest")


def head_service_name(name: str) -> str:
    """The head Service KubeRay creates for the RayCluster: `<raycluster>-head-svc`
    (ray-operator/controllers/ray/utils/util.go: GenerateHeadServiceName, RayClusterCRD, no
    headService.name given; v1.7.0)."""
    return f"{raycluster_name(name)}-head-svc"


def live_page_service_name(name: str) -> str:
    """The live page's own Service (spec.cluster.livePage.service)."""
    return dns1035(name, NAME_MAX, "-live-page")


def pdb_name(name: str, role: str) -> str:
    return dns1035(name, NAME_MAX, f"-{role}")


def claim_name(name: str) -> str:
    return dns1035(name, NAME_MAX, "-output")


def labels(name: str, component: str) -> dict[str, str]:
    """Labels of every child (label values are at most 63 characters: the cluster's name)."""
    return {
        "app.kubernetes.io/name": "peaknet-pipeline",
        "app.kubernetes.io/instance": raycluster_name(name),
        LABEL_COMPONENT: component,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        LABEL_PIPELINE: raycluster_name(name),
    }


def pod_labels(name: str, role: str) -> dict[str, str]:
    """Labels of a role's pods; the Service and the PodDisruptionBudgets select on them."""
    return {LABEL_PIPELINE: raycluster_name(name), LABEL_ROLE: role}


def metadata(name: str, namespace: str, child: str, component: str) -> dict:
    return {"name": child, "namespace": namespace, "labels": labels(name, component)}
