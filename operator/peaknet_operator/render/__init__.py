"""Pure rendering of every child of a PeakNetPipeline, from (name, namespace, spec).

`render_all` is the one place that renders the whole set, in the order they are applied
(what pods mount exists before the pods). `restart_fingerprint` digests what running pods and
the running driver cannot pick up (pod templates, Ray start parameters, the pipeline config),
leaving out the inference replica count and the pods named for deletion, which scale without
a restart.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from typing import Any

import yaml

from ..scaling import InferenceScale
from ..sizing import RoleSize, size_roles
from ..spec import PeakNetPipelineSpec
from . import names
from .configmap import effective_config, render_configmap
from .livepage import render_live_page_service
from .pdb import render_pdbs
from .raycluster import render_raycluster
from .rayjob import render_rayjob
from .service import render_service
from .volume import render_claim

__all__ = ["names", "render_all", "restart_fingerprint", "effective_config"]


def render_all(
    name: str,
    namespace: str,
    spec: PeakNetPipelineSpec,
    sizes: dict[str, RoleSize] | None = None,
    scale: InferenceScale | None = None,
    attempt: int = 0,
) -> list[dict[str, Any]]:
    """Every child manifest: claim, ConfigMap, Services (ingest, live page: each only when
    wanted), PDBs, RayCluster, RayJob. `scale` is
    the observed scaling decision for the inference group (scaling.decide); None renders the
    spec's replicas. `attempt`: a service's current driver attempt (service.py)."""
    sizes = sizes if sizes is not None else size_roles(spec)
    children = [
        render_claim(name, namespace, spec),
        render_configmap(name, namespace, spec),
        render_service(name, namespace, spec),
        render_live_page_service(name, namespace, spec),
        *render_pdbs(name, namespace, spec),
        render_raycluster(name, namespace, spec, sizes, scale),
        render_rayjob(name, namespace, spec, attempt),
    ]
    return [c for c in children if c is not None]


def restart_fingerprint(children: list[dict[str, Any]]) -> str:
    """A digest of what only new pods or a new driver would pick up."""
    parts: dict[str, Any] = {}
    for child in children:
        kind = child["kind"]
        if kind == "RayCluster":
            spec = copy.deepcopy(child["spec"])
            for group in spec["workerGroupSpecs"]:
                if group["groupName"] == "inference":
                    for key in ("replicas", "minReplicas", "maxReplicas", "scaleStrategy"):
                        group.pop(key, None)
            parts[kind] = spec
        elif kind == "ConfigMap":
            parts[kind] = _config_without_count(child["data"][names.CONFIG_FILE])
        elif kind == "RayJob":
            parts[kind] = child["spec"]
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=64)
def _config_without_count(text: str) -> dict[str, Any]:
    """The pipeline config less the inference count. Cached by its text: the status timer
    digests the same config on every tick, and parsing YAML was most of the tick's time.
    Shared between calls: read it, never change it."""
    config = yaml.safe_load(text)
    config["inference"].pop("num_actors", None)
    return config
