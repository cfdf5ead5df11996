"""Where actors run: Ray options per role, from the config and what the cluster offers.

Worker groups on Kubernetes declare a custom resource per role (`peaknet_ingest`,
`peaknet_infer`, `peaknet_writer`); when the cluster has it, actors of that role ask for a
small share of it so they land on their group. A local instance without those resources
places actors anywhere. Socket ingest is placed exactly: each ingest pod declares one unit of
`peaknet_ingest_port_<P>` per port P it serves, and the socket actor for an address with port P
asks for that whole unit, so there is one such actor per ingest pod and port. Runtime
environments are merged, never replaced, so a profiler's `nsight` entry survives per-actor
environment variables.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from enum import Enum
from typing import Any


@functools.cache
def actor_class(cls: type) -> Any:
    """`ray.remote(cls)`, made once per process. Ray exports an actor class (pickles it and
    fingerprints its code: 10-16 ms here) for each one made, and every run, queue and
    replacement made its own."""
    import ray

    return ray.remote(cls)


class Role(str, Enum):
    """A stage's role. A `str`, so that where a role is data at the edges (report.json's
    sections, metric labels, config sections, the operator's worker groups) it is its own name:
    it compares, hashes, formats and serialises as "ingest", "inference" or "writer"."""

    INGEST = "ingest"
    INFERENCE = "inference"
    WRITER = "writer"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


# The roles' names as plain strings, for what loads this module without using the enum (the
# operator names its worker groups after them).
ROLES = tuple(role.value for role in Role)
ROLE_RESOURCES = {
    Role.INGEST: "peaknet_ingest",
    Role.INFERENCE: "peaknet_infer",
    Role.WRITER: "peaknet_writer",
}
# Each actor asks for this much of its role's resource, so a node hosts many actors of a role.
ROLE_RESOURCE_SHARE = 0.001
INGEST_PORT_RESOURCE = "peaknet_ingest_port_{port}"


def ingest_port_resource(address: str) -> str | None:
    """The custom resource pinning the socket actor of `address` ("tcp://host:P"), or None
    when the address names no port."""
    port = address.rstrip("/").rsplit(":", 1)[-1]
    return INGEST_PORT_RESOURCE.format(port=int(port)) if port.isdigit() else None


def merge_runtime_env(base: Mapping[str, Any] | None, extra: Mapping[str, Any] | None) -> dict:
    """`base` updated with `extra`: nested dicts (env_vars, nsight options) merge key by key."""
    merged = copy.deepcopy(dict(base or {}))
    for key, value in (extra or {}).items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_runtime_env(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def actor_options(
    role: Role | str,
    num_cpus: float,
    num_gpus: float = 0.0,
    cluster_resources: Mapping[str, float] | None = None,
    runtime_env: Mapping[str, Any] | None = None,
    base_runtime_env: Mapping[str, Any] | None = None,
    pinned: str | None = None,
) -> dict[str, Any]:
    """Ray actor options for an actor of `role` ("ingest", "inference" or "writer"); with
    `pinned`, a whole unit of that resource instead of the role's share, when the cluster has
    it."""
    if role not in ROLE_RESOURCES:
        raise ValueError(f"unknown role {role!r}; expected one of {sorted(ROLES)}")
    options: dict[str, Any] = {"num_cpus": num_cpus}
    if num_gpus:
        options["num_gpus"] = num_gpus
    resource = ROLE_RESOURCES[role]
    if pinned and cluster_resources and cluster_resources.get(pinned, 0) > 0:
        options["resources"] = {pinned: 1}
    elif cluster_resources and cluster_resources.get(resource, 0) > 0:
        options["resources"] = {resource: ROLE_RESOURCE_SHARE}
    env = merge_runtime_env(base_runtime_env, runtime_env)
    if env:
        options["runtime_env"] = env
    return options
