"""The Service in front of the ingest ports: LCLStreamer ranks connect to it, and each
connection lands on one ingest pod (one socket actor per pod and port listens there).

Only the socket source in bind mode listens; any other source gets no Service.
"""

from __future__ import annotations

from typing import Any

from ..checks import socket_ports
from ..spec import PeakNetPipelineSpec
from . import names


def service_ports(spec: PeakNetPipelineSpec) -> list[dict[str, Any]]:
    entries = spec.cluster.ingest_service.ports
    if entries is None:
        return [{"name": f"ingest-{p}", "port": p, "targetPort": p} for p in socket_ports(spec)]
    ports = []
    for entry in entries:
        port = {"name": f"ingest-{entry.target_port}", "port": entry.port or entry.target_port}
        port["targetPort"] = entry.target_port
        if entry.node_port is not None:
            port["nodePort"] = entry.node_port
        ports.append(port)
    return ports


def render_service(name: str, namespace: str, spec: PeakNetPipelineSpec) -> dict[str, Any] | None:
    """The ingest Service, or None when the source does not listen."""
    if not socket_ports(spec):
        return None
    svc = spec.cluster.ingest_service
    meta = names.metadata(name, namespace, names.service_name(name), "ingest")
    if svc.annotations:
        meta["annotations"] = dict(svc.annotations)
    ports = [{**p, "protocol": "TCP"} for p in service_ports(spec)]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {"type": svc.type, "selector": names.pod_labels(name, "ingest"), "ports": ports},
    }
