"""The live page on Kubernetes: a named port on the head pod, and a Service for it on request.

The driver serves the page (spec.pipeline.monitor.live_page) from the head pod, where it runs.
The operator renders the driver's config with `bind: 0.0.0.0` (configmap.py), so the page is
reachable on the pod's IP from inside the cluster; nothing exposes it outside: `kubectl
port-forward pod/<head pod> 8642` (or `svc/<raycluster>-head-svc 8642`) reaches it from a
laptop. The head container declares the port, named `live-page`; KubeRay copies every named
port of the head container into its head Service (ray-operator/controllers/ray/common/
service.go: getPortsFromCluster, v1.7.0), so `<raycluster>-head-svc.<namespace>.svc:8642`
answers in the cluster without a Service of ours. `spec.cluster.livePage.service: true` adds
a ClusterIP Service of the operator's (`<name>-live-page`, owned by the resource like every
child): a stable virtual IP in front of the page, selecting the head pod by the labels KubeRay
gives it and lets no template override (common/pod.go: labelPod).

Whether the page runs is decided by the driver (monitor.live_page.enabled, null: the rule in
the pipeline's monitor/liveview.py: live_page_on); the operator declares the port unless the
page is switched off (`enabled: false`), and the resource's status carries the page's address
only once the driver says it serves it (status.driver.livePage, peaknet_pipeline.kube).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from ..spec import PeakNetPipelineSpec
from . import names

PORT_NAME = "live-page"  # an IANA_SVC_NAME: at most 15 characters, [a-z0-9-], a letter
BIND_ALL = "0.0.0.0"
# KubeRay's head selector (common/pod.go labelPod; common/service.go HeadServiceLabels).
RAY_CLUSTER_LABEL, RAY_NODE_TYPE_LABEL = "ray.io/cluster", "ray.io/node-type"


def page_declared(spec: PeakNetPipelineSpec) -> bool:
    """Whether the head pod declares the page's port: unless monitor.live_page.enabled is
    false (null: the driver decides at start, and a declared port nobody listens on costs
    nothing)."""
    return spec.pipeline.monitor.live_page.enabled is not False


def page_port(spec: PeakNetPipelineSpec) -> int:
    return spec.pipeline.monitor.live_page.port


def head_selector(name: str) -> dict[str, str]:
    """The head pod of the resource's RayCluster, by KubeRay's own labels."""
    return {RAY_CLUSTER_LABEL: names.raycluster_name(name), RAY_NODE_TYPE_LABEL: "head"}


def container_ports(spec: PeakNetPipelineSpec) -> list[dict[str, Any]]:
    """The head container's port for the page (none when the page is off)."""
    if not page_declared(spec):
        return []
    return [{"name": PORT_NAME, "containerPort": page_port(spec), "protocol": "TCP"}]


def render_live_page_service(
    name: str, namespace: str, spec: PeakNetPipelineSpec
) -> dict[str, Any] | None:
    """The page's ClusterIP Service, or None unless spec.cluster.livePage.service asks for it.
    `targetPort` names the container port, so the Service follows the port the pod declares."""
    if not (spec.cluster.live_page.service and page_declared(spec)):
        return None
    port = {"name": PORT_NAME, "port": page_port(spec), "targetPort": PORT_NAME, "protocol": "TCP"}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": names.metadata(
            name, namespace, names.live_page_service_name(name), "live-page"
        ),
        "spec": {"type": "ClusterIP", "selector": head_selector(name), "ports": [port]},
    }


def page_host(name: str, namespace: str, spec: PeakNetPipelineSpec) -> str:
    """The in-cluster DNS name the page is reached at: the operator's Service when it is on,
    else KubeRay's head Service."""
    service = (
        names.live_page_service_name(name)
        if spec.cluster.live_page.service
        else names.head_service_name(name)
    )
    return f"{service}.{namespace}.svc"


def page_address(host: str, driver_url: str | None) -> str | None:
    """status.livePage: `http://<host>:<port>/` with the port the driver reports it serves
    on (status.driver.livePage), or None when it serves none."""
    if not host or not driver_url:
        return None
    try:
        port = urlsplit(driver_url).port
    except ValueError:
        return None
    return f"http://{host}:{port}/" if port else None


def problems(spec: PeakNetPipelineSpec, head_ports: dict[str, int]) -> list[str]:
    """A declared page needs a fixed port (a container port is 1..65535: kubernetes
    pkg/apis/core/validation/validation.go validateContainerPorts) that no Ray port of the
    head already takes."""
    if not page_declared(spec):
        return []
    port, field = page_port(spec), "spec.pipeline.monitor.live_page.port"
    if port == 0:
        return [
            f"{field}=0 (any free port) cannot be declared on the head pod; give a fixed port "
            "(default 8642)"
        ]
    taken = {p: n for n, p in head_ports.items()}
    if port in taken:
        return [f"{field}={port} is the Ray head's {taken[port]} port; choose another"]
    return []
