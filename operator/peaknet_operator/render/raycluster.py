"""The RayCluster (ray.io/v1): a head that runs no actors, and one worker group per role.

Each group declares its role's custom Ray resource (`peaknet_ingest`, `peaknet_infer`,
`peaknet_writer`) so the pipeline's placement puts each actor on its group; ingest pods of a
listening socket source also declare one `peaknet_ingest_port_<P>` per port. Custom resources
are declared one way only: `rayStartParams["resources"]` in the form KubeRay writes itself,
`'{"peaknet_infer":1}'` (single quotes around plain JSON: KubeRay's `getResourcesMap` trims the
quotes and JSON-parses the rest, and `ray start` gets the same JSON after bash's unquoting; an
escaped `"{\\"k\\": 1}"` fails in KubeRay, which then logs an error for every pod and skips
deriving `num-gpus`), next to `num-cpus` (the pod's Ray CPUs, explicit so placement does not
depend on how KubeRay rounds a fractional CPU limit), `num-gpus` for GPU groups (explicit, not
left to KubeRay's derivation from the `nvidia.com/gpu` limit) and `object-store-memory` (from
sizing). Requests equal limits; GPUs only when the spec asks for them. Every pod runs with
`securityContext.fsGroup: 100` (Ray's image runs as uid 1000, gid 100) and
`fsGroupChangePolicy: OnRootMismatch`, so the writers and the driver can write to a freshly
formatted volume whose root is `root:root 0755` (only the top directory's group is changed
when it does not match, not every file on each mount). When the output claim mounts on one
node only (ReadWriteOnce, volume.py), the writer pods require to run on the head pod's node
(podAffinity on `kubernetes.io/hostname`, selecting KubeRay's own head labels). KubeRay's autoscaler is off and replicas = minReplicas =
maxReplicas: the operator owns scaling. The inference group's replicas and
`scaleStrategy.workersToDelete` come from the scaling decision (scaling.py), which lowers
replicas only by pods the driver has released; its pods declare `peaknet_infer:
actorsPerWorker`, one unit per inference actor. Every worker's Ray node is named after its
pod (`node-name: "$(POD_NAME)"`, POD_NAME from the downward API), so the driver can tell which
pod an actor runs on; that KubeRay's generated `ray start` passes `$(POD_NAME)` through is to
be confirmed on a real cluster. Token authentication is on. `upgradeStrategy: None`: KubeRay
never recreates pods under a running pipeline (that would kill the driver without a drain);
the status says when a change needs a restart instead.
"""

from __future__ import annotations

import json
import math
from typing import Any

from peaknet_pipeline.placement import ROLE_RESOURCES, ingest_port_resource

from ..checks import socket_ports
from ..scaling import InferenceScale
from ..sizing import RoleSize, ray_cpus
from ..spec import ROLES, GroupSpec, PeakNetPipelineSpec, PodPlacement
from . import livepage, names
from .volume import output_claim, single_node_claim

HEAD_PORTS = {"gcs-server": 6379, "dashboard": 8265, "client": 10001, "metrics": 8080}
CONFIG_VOLUME, OUTPUT_VOLUME = "pipeline-config", "output"
GPU = "nvidia.com/gpu"
# Ray's images run as uid 1000 (user "ray"), gid 100 ("users"): the volume group of every pod.
FS_GROUP = 100
SECURITY_CONTEXT = {"fsGroup": FS_GROUP, "fsGroupChangePolicy": "OnRootMismatch"}
HOSTNAME = "kubernetes.io/hostname"
DRAIN_MARGIN_S = 30.0  # a service's last reports and index after its drain (grace_period_s)
POD_NAME_ENV = {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}


def kuberay_json(value: dict[str, float]) -> str:
    """rayStartParams["resources"] as KubeRay writes it (common/pod.go
    updateRayStartParamsResources): compact JSON, sorted keys, inside single quotes."""
    return "'" + json.dumps(value, sort_keys=True, separators=(",", ":")) + "'"


def head_affinity(name: str) -> dict[str, Any]:
    """Required co-location with the head pod, selected by the labels KubeRay gives it and
    lets no template override (common/pod.go labelPod): ray.io/cluster, ray.io/node-type."""
    selector = {"ray.io/cluster": names.raycluster_name(name), "ray.io/node-type": "head"}
    term = {"labelSelector": {"matchLabels": selector}, "topologyKey": HOSTNAME}
    return {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}


def role_resources(role: str, spec: PeakNetPipelineSpec) -> dict[str, int]:
    """The custom Ray resources of a role's pods: one unit of the role's resource (inference:
    one per actor the pod holds); socket ingest also one per port."""
    units = spec.cluster.inference.actors_per_worker if role == "inference" else 1
    resources = {ROLE_RESOURCES[role]: units}
    if role == "ingest":
        for port in socket_ports(spec):
            resources[ingest_port_resource(f"tcp://0.0.0.0:{port}")] = 1
    return resources


def _resources(pod: PodPlacement, gpus: int = 0) -> dict[str, Any]:
    limits: dict[str, Any] = {"cpu": pod.cpu, "memory": pod.memory}
    if gpus:
        limits[GPU] = gpus
    return {"requests": dict(limits), "limits": limits}


def _tolerations(pod: PodPlacement, gpus: int = 0) -> list[dict[str, Any]]:
    tolerations = [t.model_dump(by_alias=True, exclude_none=True) for t in pod.tolerations]
    if gpus and not any(t.get("key") == GPU for t in tolerations):
        tolerations.append({"key": GPU, "operator": "Exists", "effect": "NoSchedule"})
    return tolerations


def grace_period_s(spec: PeakNetPipelineSpec) -> int | None:
    """A service's pods' terminationGracePeriodSeconds, or None (Kubernetes' 30 s) for a
    finite run. Deleting the resource sends SIGTERM; the driver then drains (stops ingest, lets
    the queues empty within runtime.drain_timeout_s) and the writers close the current DAQ run's
    files once it has been quiet for writer.daq_run_close_s. So: drain_timeout_s +
    daq_run_close_s + DRAIN_MARGIN_S (the reports and the index), rounded up: with the
    defaults 600 + 3 + 30 = 633 s. Every pod gets it, not only the head: the drain needs the
    workers' actors too."""
    if not spec.is_service:
        return None
    runtime, writer = spec.pipeline.runtime, spec.pipeline.writer
    return math.ceil(runtime.drain_timeout_s + writer.daq_run_close_s + DRAIN_MARGIN_S)


def _pod_spec(
    container: dict[str, Any],
    pod: PodPlacement,
    volumes: list[dict],
    gpus: int = 0,
    grace_s: int | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [container], "securityContext": dict(SECURITY_CONTEXT)}
    if grace_s is not None:
        spec["terminationGracePeriodSeconds"] = grace_s
    if pod.node_selector:
        spec["nodeSelector"] = dict(pod.node_selector)
    tolerations = _tolerations(pod, gpus)
    if tolerations:
        spec["tolerations"] = tolerations
    if volumes:
        spec["volumes"] = volumes
    return spec


def _container(name: str, spec: PeakNetPipelineSpec, pod: PodPlacement, gpus: int = 0) -> dict:
    cluster = spec.cluster
    return {
        "name": name,
        "image": cluster.image,
        "imagePullPolicy": cluster.image_pull_policy,
        "resources": _resources(pod, gpus),
    }


def _volumes(name: str, spec: PeakNetPipelineSpec, config: bool) -> tuple[list, list]:
    """(pod volumes, container mounts): the output claim, and the config where it is read."""
    volumes = [
        {"name": OUTPUT_VOLUME, "persistentVolumeClaim": {"claimName": output_claim(name, spec)}}
    ]
    mounts = [{"name": OUTPUT_VOLUME, "mountPath": spec.cluster.output.mount_path}]
    if config:
        volumes.append({"name": CONFIG_VOLUME, "configMap": {"name": names.configmap_name(name)}})
        mounts.append({"name": CONFIG_VOLUME, "mountPath": names.CONFIG_DIR, "readOnly": True})
    return volumes, mounts


def head_group(name: str, namespace: str, spec: PeakNetPipelineSpec, store: int) -> dict:
    """The head: GCS, dashboard and the driver (env names its resource; config and output
    mounted; the driver's ServiceAccount; the live page's port, named `live-page`)."""
    head = spec.cluster.head
    container = _container("ray-head", spec, head)
    container["ports"] = [{"name": n, "containerPort": p} for n, p in HEAD_PORTS.items()]
    container["ports"] += livepage.container_ports(spec)
    container["env"] = [
        {"name": "PEAKNET_RESOURCE_NAME", "value": name},
        {"name": "PEAKNET_RESOURCE_NAMESPACE", "value": namespace},
    ]
    volumes, container["volumeMounts"] = _volumes(name, spec, config=True)
    pod_spec = _pod_spec(container, head, volumes, grace_s=grace_period_s(spec))
    pod_spec["serviceAccountName"] = spec.cluster.driver_service_account
    return {
        "serviceType": "ClusterIP",
        "rayStartParams": {
            "num-cpus": "0",
            "num-gpus": "0",
            "object-store-memory": str(store),
            "dashboard-host": "0.0.0.0",
        },
        "template": {
            "metadata": {"labels": names.pod_labels(name, "head")},
            "spec": pod_spec,
        },
    }


def worker_group(
    name: str,
    role: str,
    spec: PeakNetPipelineSpec,
    store: int,
    scale: InferenceScale | None = None,
) -> dict:
    """One worker group; `scale` (inference only) overrides the spec's replicas."""
    group: GroupSpec = spec.cluster.group(role)
    gpus = group.gpus_per_worker
    container = _container("ray-worker", spec, group, gpus)
    container["env"] = [dict(POD_NAME_ENV)]
    volumes: list[dict] = []
    if role == "writer":
        volumes, container["volumeMounts"] = _volumes(name, spec, config=False)
    if role == "ingest" and socket_ports(spec):
        container["ports"] = [
            {"name": f"ingest-{p}", "containerPort": p, "protocol": "TCP"}
            for p in socket_ports(spec)
        ]
    replicas = scale.replicas if scale is not None and role == "inference" else group.replicas
    params = {
        "num-cpus": str(ray_cpus(group.cpu)),
        "object-store-memory": str(store),
        "resources": kuberay_json(role_resources(role, spec)),
        "node-name": "$(POD_NAME)",
    }
    if gpus:
        params["num-gpus"] = str(gpus)
    pod_spec = _pod_spec(container, group, volumes, gpus, grace_period_s(spec))
    if role == "writer" and single_node_claim(spec):
        pod_spec["affinity"] = head_affinity(name)
    rendered: dict[str, Any] = {
        "groupName": role,
        "replicas": replicas,
        "minReplicas": replicas,
        "maxReplicas": replicas,
        "rayStartParams": params,
        "template": {"metadata": {"labels": names.pod_labels(name, role)}, "spec": pod_spec},
    }
    if role == "inference" and scale is not None and scale.workers_to_delete is not None:
        rendered["scaleStrategy"] = {"workersToDelete": list(scale.workers_to_delete)}
    return rendered


def render_raycluster(
    name: str,
    namespace: str,
    spec: PeakNetPipelineSpec,
    sizes: dict[str, RoleSize],
    scale: InferenceScale | None = None,
) -> dict[str, Any]:
    """The RayCluster; `scale` is the inference group's scaling decision (None: the spec's
    replicas, as for a RayCluster that does not exist yet)."""
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": names.metadata(name, namespace, names.raycluster_name(name), "ray-cluster"),
        "spec": {
            "rayVersion": spec.cluster.ray_version,
            "enableInTreeAutoscaling": False,
            "authOptions": {"mode": "token"},
            "upgradeStrategy": {"type": "None"},
            "headGroupSpec": head_group(name, namespace, spec, sizes["head"].store_bytes),
            "workerGroupSpecs": [
                worker_group(name, role, spec, sizes[role].store_bytes, scale) for role in ROLES
            ],
        },
    }
