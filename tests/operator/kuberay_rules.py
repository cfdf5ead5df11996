"""What KubeRay v1.7.0 does to a RayCluster or RayJob before Ray runs, as pure functions.

The KubeRay stand-in (kuberay_standin.py) builds its pods and refuses objects with these
functions, and the render tests hold every rendered RayCluster to them, so a start parameter
KubeRay cannot read or a spec KubeRay's validation refuses fails a test here. Each rule names
the KubeRay source file and Go function it follows (ray-project/kuberay at tag v1.7.0, under
ray-operator/controllers/ray/). Not reproduced: feature gates other than their v1.7.0 defaults,
GCS fault tolerance, TLS, the history-server collector, the autoscaler sidecar, probes
(`initLivenessAndReadinessProbe`), the submitter's `ray job submit` command, and the exact
wording of Go's JSON and version-parser errors (KubeRay's own prefix is kept, Python's reason
follows it).
"""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

# ray-operator/controllers/ray/utils/constant.go
CLUSTER, NODE_TYPE, GROUP = "ray.io/cluster", "ray.io/node-type", "ray.io/group"
HEAD_PORT, METRICS_PORT, AGENT_PORT = "6379", 8080, 52365
SHM_VOLUME, SHM_PATH = "shared-mem", "/dev/shm"  # common/pod.go: SharedMemoryVolumeName
GPU = "nvidia.com/gpu"
ACCELERATORS = {"aws.amazon.com/neuroncore": "neuron_cores", "google.com/tpu": "TPU"}
# common/job.go: GetDefaultSubmitterContainer (the K8sJobMode submitter without a template).
SUBMITTER_RESOURCES = {
    "requests": {"cpu": "500m", "memory": "200Mi"},
    "limits": {"cpu": "1", "memory": "1Gi"},
}
_SUFFIX = {"": 1, "m": Fraction(1, 1000), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_SUFFIX |= {"P": 10**15, "E": 10**18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
_SUFFIX |= {"Pi": 2**50, "Ei": 2**60}


class ResourcesParamError(ValueError):
    """rayStartParams["resources"] is not what getResourcesMap can read."""


def quantity(value: Any) -> Fraction:
    """A Kubernetes quantity ("500m", "4Gi", 2, "1e3") as an exact number."""
    match = re.fullmatch(r"([+-]?[0-9.]+)([eE][+-]?[0-9]+|[a-zA-Z]*)", str(value).strip())
    exponent = match is not None and re.fullmatch(r"[eE][+-]?[0-9]+", match[2]) is not None
    if not match or (match[2] not in _SUFFIX and not exponent):
        raise ValueError(f"quantities must match the regular expression: {value!r}")
    scale = Fraction(10) ** int(match[2][1:]) if exponent else _SUFFIX[match[2]]
    return Fraction(match[1]) * scale


def whole(value: Any) -> int:
    """resource.Quantity.Value(): the quantity rounded up to an integer."""
    return math.ceil(quantity(value))


def parse_resources_param(value: str) -> dict[str, float]:
    """common/pod.go getResourcesMap: trim surrounding quote characters and spaces (Go's
    strings.Trim with the cutset "'\\"` "), then JSON-unmarshal into map[string]float64. The
    escaped form `"{\\"k\\": 1}"` keeps its backslashes after the trim and fails, as in KubeRay."""
    text = value.strip("'\"` ")
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except (json.JSONDecodeError, ValueError) as exc:
        raise ResourcesParamError(f"failed to unmarshal resources {exc}") from None
    if data is None:  # Go: `null` leaves the map nil, no error
        return {}
    if not isinstance(data, dict):
        raise ResourcesParamError(f"failed to unmarshal resources: {type(data).__name__}")
    for key, number in data.items():
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise ResourcesParamError(f"failed to unmarshal resources: {key!r} is not a number")
        if not math.isfinite(number):
            raise ResourcesParamError(f"failed to unmarshal resources: {key!r} out of range")
    return {key: float(number) for key, number in data.items()}


def _no_constant(name: str) -> Any:
    raise ValueError(f"invalid character {name!r}")


def is_gpu_resource_key(key: str) -> bool:
    """utils/resources.go IsGPUResourceKey: "...gpu" or an NVIDIA MIG slice."""
    return key.endswith("gpu") or re.search(r"nvidia\.com/mig-\d+g\.\d+gb$", key) is not None


def go_json_map(values: dict[str, float]) -> str:
    """json.Marshal of a map[string]float64: sorted keys, no spaces, whole floats as ints."""
    items = {k: (int(v) if float(v).is_integer() else v) for k, v in sorted(values.items())}
    return json.dumps(items, separators=(",", ":"))


@dataclass
class StartParams:
    """The rayStartParams KubeRay starts a node with, and the errors it logs on the way."""

    params: dict[str, str]
    log: list[str] = field(default_factory=list)


def ray_start_params(
    group: dict, container: dict, head: bool = False, address: str = ""
) -> StartParams:
    """The parameters of one node's `ray start`, as KubeRay completes them."""
    params = {k: str(v) for k, v in (group.get("rayStartParams") or {}).items()}
    out = StartParams(params)
    _group_resources(params, group.get("resources") or {})
    if group.get("labels"):  # common/pod.go: updateRayStartParamsLabels
        params["labels"] = ",".join(f"{k}={v}" for k, v in sorted(group["labels"].items()))
    # common/pod.go: setMissingRayStartParams
    if head:
        params.setdefault("dashboard-host", "0.0.0.0")
    else:
        params.setdefault("address", address)
    params.setdefault("metrics-export-port", str(METRICS_PORT))
    params["block"] = "true"
    params.setdefault("dashboard-agent-listen-port", str(AGENT_PORT))
    # common/pod.go: generateRayStartCommand (CPU limit, else request; memory limit)
    resources = container.get("resources") or {}
    limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
    if "num-cpus" not in params:
        cpu = limits.get("cpu") or requests.get("cpu")
        if cpu is not None and quantity(cpu) != 0:
            params["num-cpus"] = str(whole(cpu))
    if "memory" not in params and limits.get("memory") and quantity(limits["memory"]) != 0:
        params["memory"] = str(whole(limits["memory"]))
    try:
        _accelerators(params, limits)
    except ResourcesParamError as exc:  # logged; num-gpus is then not derived
        out.log.append(
            "failed to add accelerator resources to rayStartParams: "
            f"failed to get resources map from rayStartParams: {exc}"
        )
    return out


def _group_resources(params: dict[str, str], resources: dict[str, str]) -> None:
    """common/pod.go updateRayStartParamsResources: the group's `resources` map overrides."""
    custom: dict[str, float] = {}
    for name, value in resources.items():
        try:
            amount = quantity(value)
        except ValueError:
            continue  # KubeRay logs and skips it
        lower = name.lower()
        if lower in ("cpu", "memory"):
            params["num-cpus" if lower == "cpu" else "memory"] = str(math.ceil(amount))
        elif is_gpu_resource_key(lower):
            params["num-gpus"] = str(math.ceil(amount))
        else:
            custom[name] = float(amount)
    if custom:
        params["resources"] = f"'{go_json_map(custom)}'"


def _accelerators(params: dict[str, str], limits: dict[str, Any]) -> None:
    """common/pod.go addWellKnownAcceleratorResources: num-gpus from a GPU limit; the first
    Neuron/TPU limit as a custom resource. Fails (before either) if `resources` is unreadable."""
    if not limits:
        return
    declared = parse_resources_param(params["resources"]) if "resources" in params else {}
    added = any(name in declared for name in ACCELERATORS.values())
    for key in sorted(limits):
        amount = quantity(limits[key])
        if "num-gpus" not in params and is_gpu_resource_key(key) and amount != 0:
            params["num-gpus"] = str(math.ceil(amount))
        if not added and key in ACCELERATORS and amount != 0:
            if ACCELERATORS[key] not in declared:
                declared[ACCELERATORS[key]] = float(amount)
                params["resources"] = f"'{go_json_map(declared)}'"
            added = True


def ray_start_command(params: dict[str, str], head: bool) -> str:
    """common/pod.go generateRayStartCommand + convertParamMap: sorted `--key=value` flags;
    "true" becomes a bare flag and "false" is dropped, except for three options."""
    special = ("log-color", "include-dashboard", "include-log-monitor")
    flags = ""
    for key in sorted(params):
        value = params[key]
        if value.lower() in ("true", "false") and key not in special:
            flags += f" --{key} " if value.lower() == "true" else ""
        else:
            flags += f" --{key}={value} "
    return ("ray start --head" if head else "ray start") + flags


@dataclass
class BuiltPod:
    """A pod as KubeRay creates it, the parameters of its `ray start`, and what it logged."""

    manifest: dict[str, Any]
    start: StartParams
    command: str


def head_service_fqdn(cluster: dict) -> str:
    """utils/util.go GenerateFQDNServiceName (default cluster domain)."""
    meta = cluster["metadata"]
    return f"{meta['name']}-head-svc.{meta.get('namespace', 'default')}.svc.cluster.local"


def build_pod(cluster: dict, group_name: str | None, pod_name: str) -> BuiltPod:
    """The pod KubeRay creates for the head (`group_name` None) or one worker of a group:
    common/pod.go DefaultHeadPodTemplate / DefaultWorkerPodTemplate, then BuildPod."""
    spec, name = cluster["spec"], cluster["metadata"]["name"]
    head = group_name is None
    group = spec["headGroupSpec"] if head else _group(spec, group_name)
    template = copy.deepcopy(group["template"])
    pod_spec = template["spec"]
    container = pod_spec["containers"][0]
    port = (spec["headGroupSpec"].get("rayStartParams") or {}).get("port", HEAD_PORT)
    fqdn = head_service_fqdn(cluster)
    start = ray_start_params(group, container, head, f"{fqdn}:{port}")
    labels = _pod_labels(name, "head" if head else "worker", group_name or "headgroup", group)
    auth = (spec.get("authOptions") or {}).get("mode") == "token"
    if not head:  # DefaultWorkerPodTemplate: the wait-gcs-ready init container
        pod_spec.setdefault("initContainers", []).append(_wait_gcs(container, fqdn, port))
    ports = container.setdefault("ports", [])
    if not any(p.get("name") == "metrics" for p in ports):
        ports.append({"name": "metrics", "containerPort": METRICS_PORT})
    if auth:  # configureTokenAuth / SetContainerTokenAuthEnvVars
        secret = (spec.get("authOptions") or {}).get("secretName") or name
        for target in [container, *pod_spec.get("initContainers", [])]:
            if target is container or target["name"] == "wait-gcs-ready":
                _token_env(target, secret)
    if "plasma-directory" not in start.params:  # BuildPod: addEmptyDir for /dev/shm
        _shared_memory(pod_spec, container)
    command = f"ulimit -n ${{RAY_START_ULIMIT_OPEN_FILES:-65536}}; {_cmd(start, head)}"
    own = " ".join(container.get("command") or []) + " ".join(container.get("args") or [])
    overwrite = (
        (template.get("metadata") or {})
        .get("annotations", {})
        .get("ray.io/overwrite-container-cmd", "")
    )
    if overwrite.lower() != "true" and "ray start" not in own:
        container["command"] = ["/bin/bash", "-c", "--"]
        container["args"] = [f"{own} && {command}" if own else command]
    _inject_env(container, head, fqdn, port, _cmd(start, head), name)
    metadata = {"name": pod_name, "namespace": cluster["metadata"].get("namespace")}
    metadata |= {
        "labels": labels,
        "annotations": (template.get("metadata") or {}).get("annotations", {}),
    }
    owner = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "name": name, "controller": True}
    owner["uid"] = cluster["metadata"].get("uid", "")
    metadata["ownerReferences"] = [owner]
    manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}
    return BuiltPod(manifest, start, command)


def _cmd(start: StartParams, head: bool) -> str:
    return ray_start_command(start.params, head)


def _group(spec: dict, group_name: str) -> dict:
    return next(g for g in spec.get("workerGroupSpecs", []) if g["groupName"] == group_name)


def _pod_labels(cluster: str, node_type: str, group_name: str, group: dict) -> dict[str, str]:
    """common/pod.go labelPod (after mergeLabels): KubeRay's labels, then the template's and
    the group's, except that ray.io/node-type, ray.io/group and ray.io/cluster stay KubeRay's."""
    labels = {
        "ray.io/is-ray-node": "yes",
        CLUSTER: cluster,
        NODE_TYPE: node_type,
        GROUP: group_name,
        "ray.io/identifier": f"{cluster}-{node_type}"[-63:],
        "app.kubernetes.io/name": "kuberay",
        "app.kubernetes.io/created-by": "kuberay-operator",
    }
    merged = dict((group["template"].get("metadata") or {}).get("labels") or {})
    merged |= group.get("labels") or {}
    labels |= {k: v for k, v in merged.items() if k not in (CLUSTER, NODE_TYPE, GROUP)}
    return labels


def _wait_gcs(container: dict, fqdn: str, port: str) -> dict:
    """common/pod.go DefaultWorkerPodTemplate: fixed 200m/256Mi, the Ray container's env and
    mounts, then FQ_RAY_IP/RAY_IP (setInitContainerEnvVars)."""
    env = copy.deepcopy(container.get("env") or [])
    env += [{"name": "FQ_RAY_IP", "value": fqdn}, {"name": "RAY_IP", "value": fqdn.split(".")[0]}]
    fixed = {"cpu": "200m", "memory": "256Mi"}
    return {
        "name": "wait-gcs-ready",
        "image": container.get("image"),
        "command": ["/bin/bash", "-c", "--"],
        "args": [f"until ray health-check --address {fqdn}:{port}; do sleep 5; done"],
        "env": env,
        "volumeMounts": copy.deepcopy(container.get("volumeMounts") or []),
        "resources": {"requests": dict(fixed), "limits": dict(fixed)},
    }


def _token_env(container: dict, secret: str) -> None:
    env = container.setdefault("env", [])
    names = {e["name"] for e in env}
    if "RAY_AUTH_MODE" not in names:
        env.append({"name": "RAY_AUTH_MODE", "value": "token"})
    if "RAY_AUTH_TOKEN" not in names:
        ref = {"secretKeyRef": {"name": secret, "key": "auth_token"}}
        env.append({"name": "RAY_AUTH_TOKEN", "valueFrom": ref})


def _shared_memory(pod_spec: dict, container: dict) -> None:
    """common/pod.go addEmptyDir + makeEmptyDirVolume + findMemoryReqOrLimit: a Memory
    emptyDir at /dev/shm sized to the memory limit (else request), unless one is mounted."""
    if any(m.get("mountPath") == SHM_PATH for m in container.get("volumeMounts") or []):
        return
    volumes = pod_spec.setdefault("volumes", [])
    if not any(v["name"] == SHM_VOLUME for v in volumes):
        resources = container.get("resources") or {}
        size = (resources.get("limits") or {}).get("memory") or (
            resources.get("requests") or {}
        ).get("memory")
        empty: dict[str, Any] = {"medium": "Memory"}
        if size is not None:
            empty["sizeLimit"] = size
        volumes.append({"name": SHM_VOLUME, "emptyDir": empty})
    container.setdefault("volumeMounts", []).append({"name": SHM_VOLUME, "mountPath": SHM_PATH})


def _inject_env(container: dict, head: bool, fqdn: str, port: str, cmd: str, name: str) -> None:
    """common/pod.go setContainerEnvVars (RayCluster-created pods)."""
    env = container.setdefault("env", [])

    def field_ref(path: str) -> dict:
        return {"fieldRef": {"fieldPath": path}}

    ip = "127.0.0.1" if head else fqdn
    if not head:
        env += [{"name": "FQ_RAY_IP", "value": ip}, {"name": "RAY_IP", "value": ip.split(".")[0]}]
    env += [
        {"name": "RAY_CLUSTER_NAME", "valueFrom": field_ref(f"metadata.labels['{CLUSTER}']")},
        {"name": "RAY_CLUSTER_NAMESPACE", "valueFrom": field_ref("metadata.namespace")},
        {"name": "RAY_CLOUD_INSTANCE_ID", "valueFrom": field_ref("metadata.name")},
        {"name": "RAY_NODE_TYPE_NAME", "valueFrom": field_ref(f"metadata.labels['{GROUP}']")},
        {"name": "KUBERAY_GEN_RAY_START_CMD", "value": cmd},
    ]
    defaults = [("RAY_PORT", port), ("RAY_ADDRESS", f"{ip}:{port}")]
    defaults += [("RAY_USAGE_STATS_KUBERAY_IN_USE", "1")]
    if head:
        env.append(
            {
                "name": "RAY_USAGE_STATS_EXTRA_TAGS",
                "value": "kuberay_version=v1.7.0;kuberay_crd=RayCluster",
            }
        )
    defaults += [("RAY_DASHBOARD_ENABLE_K8S_DISK_USAGE", "1")]
    for key, value in defaults:
        if not any(e["name"] == key for e in env):
            env.append({"name": key, "value": value})


def submitter_pod(rayjob: dict, cluster: dict, pod_name: str) -> dict[str, Any]:
    """The K8sJobMode submitter Job's pod: common/job.go GetSubmitterTemplate (the RayJob's
    submitterPodTemplate, else GetDefaultSubmitterContainer: the head's image, 500m CPU and
    200Mi requested), with rayjob_controller.go getSubmitterTemplate's labels."""
    job = rayjob["spec"]
    template = copy.deepcopy(job.get("submitterPodTemplate") or {})
    if not template:
        image = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
        container = {"name": "ray-job-submitter", "image": image}
        container["resources"] = copy.deepcopy(SUBMITTER_RESOURCES)
        template = {"spec": {"containers": [container], "restartPolicy": "Never"}}
    labels = dict((template.get("metadata") or {}).get("labels") or {})
    labels |= {
        "ray.io/originated-from-cr-name": rayjob["metadata"]["name"],
        "ray.io/originated-from-crd": "RayJob",
        "app.kubernetes.io/created-by": "kuberay-operator",
    }
    meta = {"name": pod_name, "namespace": rayjob["metadata"].get("namespace"), "labels": labels}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"]}


from kuberay_validation import (  # noqa: E402  (re-exported: one module for KubeRay's rules)
    raycluster_refusal,
    validate_raycluster,
    validate_rayjob,
)

__all__ = [
    "build_pod",
    "parse_resources_param",
    "ray_start_params",
    "raycluster_refusal",
    "submitter_pod",
    "validate_raycluster",
    "validate_rayjob",
]
