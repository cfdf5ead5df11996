"""How a pod KubeRay built becomes a local Ray node: what `ray start` receives in the pod.

Kubernetes expands `$(VAR)` in a container's command and args from its env (kubernetes
pkg/kubelet/kuberuntime: the container's command and args are expanded with
`expansion.Expand`; an unknown variable stays as written), then `/bin/bash -c` splits and
unquotes KubeRay's generated command, and `ray start` parses `--resources` with json.loads.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

from kuberay_rules import BuiltPod, ray_start_command


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion in a container's command and args."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), text)


def container_env(container: dict, pod_name: str) -> dict[str, str]:
    """Plain values and the downward API's metadata.name (what the renderers use)."""
    env = {}
    for entry in container.get("env", []):
        field = ((entry.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        elif field == "metadata.name":
            env[entry["name"]] = pod_name
    return env


def start_flags(built: BuiltPod) -> dict[str, str]:
    """The flags `ray start` receives in the pod: KubeRay's generated command, `$(VAR)`
    expanded by Kubernetes, then split and unquoted by bash (`/bin/bash -c`)."""
    container = built.manifest["spec"]["containers"][0]
    env = container_env(container, built.manifest["metadata"]["name"])
    words = shlex.split(expand(ray_start_command(built.start.params, head=False), env))
    flags = {}
    for word in words[2:]:
        key, equals, value = word.removeprefix("--").partition("=")
        flags[key] = value if equals else "true"
    return flags


def node_args(built: BuiltPod) -> dict[str, Any]:
    """`Cluster.add_node` arguments from what `ray start` would get (`--resources` parsed as
    Ray's CLI parses it, with json.loads). Address, ports and `--block` are the local
    cluster's own."""
    flags = start_flags(built)
    args: dict[str, Any] = {"num_cpus": int(flags.get("num-cpus", "1"))}
    if "num-gpus" in flags:
        args["num_gpus"] = int(flags["num-gpus"])
    if "memory" in flags:
        args["memory"] = int(flags["memory"])
    if "object-store-memory" in flags:
        args["object_store_memory"] = int(flags["object-store-memory"])
    if "resources" in flags:
        args["resources"] = json.loads(flags["resources"])
    if "node-name" in flags:
        args["node_name"] = flags["node-name"]
    return args
