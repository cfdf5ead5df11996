"""The live page on Kubernetes (render/livepage.py): the head pod's port named `live-page`
from the config, the driver bound to the pod's IP, a Service only when asked for, the spec
rules, and the address in status once the driver says it serves the page."""

from __future__ import annotations

import yaml
from admission.ports import container_port_errors, port_name_errors, service_port_errors
from kuberay_rules import build_pod

from conftest import example, wait_for
from peaknet_operator.checks import parse_spec
from peaknet_operator.observed import Observed
from peaknet_operator.render import names, render_all
from peaknet_operator.render.livepage import head_selector
from peaknet_operator.status import fold, status_patch
from peaknet_pipeline import kube


def children(pipeline: dict | None = None, cluster: dict | None = None) -> dict[str, list]:
    raw = example()["spec"]
    raw["pipeline"].setdefault("monitor", {}).update(pipeline or {})
    raw["cluster"].update(cluster or {})
    spec, problems = parse_spec(raw)
    assert problems == [], problems
    kinds: dict[str, list] = {}
    for child in render_all("demo", "ns", spec):
        kinds.setdefault(child["kind"], []).append(child)
    return kinds


def head_ports(kinds: dict) -> list[dict]:
    (rc,) = kinds["RayCluster"]
    return rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]


def page_config(kinds: dict) -> dict:
    (cm,) = kinds["ConfigMap"]
    return yaml.safe_load(cm["data"][names.CONFIG_FILE])["monitor"]["live_page"]


def live_services(kinds: dict) -> list[dict]:
    return [s for s in kinds.get("Service", []) if s["metadata"]["name"] == "demo-live-page"]


def test_the_head_declares_the_page_port_named_from_the_config_and_the_driver_binds_the_pod():
    kinds = children()
    page = [p for p in head_ports(kinds) if p["name"] == "live-page"]
    assert page == [{"name": "live-page", "containerPort": 8642, "protocol": "TCP"}]
    assert page_config(kinds) == {"enabled": None, "bind": "0.0.0.0", "port": 8642}
    assert live_services(kinds) == []  # nothing beyond KubeRay's head Service by default
    kinds = children({"live_page": {"port": 9000, "enabled": True}})
    assert [p["containerPort"] for p in head_ports(kinds) if p["name"] == "live-page"] == [9000]
    assert page_config(kinds) == {"enabled": True, "bind": "0.0.0.0", "port": 9000}
    off = children({"live_page": {"enabled": False}})
    assert "live-page" not in {p["name"] for p in head_ports(off)}


def test_the_head_pod_kuberay_builds_passes_the_api_servers_port_rules():
    """validation.go validateContainerPorts on the pod KubeRay makes of the head template
    (KubeRay adds its own metrics port when missing: kuberay_rules.build_pod)."""
    assert port_name_errors("live-page") == []
    assert port_name_errors("live-page-server") == ["must be no more than 15 characters"]
    (rc,) = children()["RayCluster"]
    pod = build_pod(rc, None, "demo-head-abcde").manifest
    (container,) = pod["spec"]["containers"]
    assert container_port_errors(container["ports"], "spec.containers[0].ports") == []
    assert "live-page" in {p["name"] for p in container["ports"]}


def test_the_service_only_when_asked_selecting_kuberays_head_by_its_named_port():
    (svc,) = live_services(children(cluster={"livePage": {"service": True}}))
    assert svc["metadata"]["labels"] == names.labels("demo", "live-page")
    assert svc["spec"] == {
        "type": "ClusterIP",
        "selector": {"ray.io/cluster": "demo", "ray.io/node-type": "head"},
        "ports": [
            {"name": "live-page", "port": 8642, "targetPort": "live-page", "protocol": "TCP"}
        ],
    }
    assert head_selector("demo") == svc["spec"]["selector"]
    assert service_port_errors(svc["spec"]["ports"], "spec.ports") == []
    off = children({"live_page": {"enabled": False}}, {"livePage": {"service": True}})
    assert live_services(off) == []  # no page, no Service


def test_a_page_port_the_head_cannot_declare_is_a_spec_problem():
    raw = example()["spec"]
    raw["pipeline"]["monitor"] = {"live_page": {"port": 0}}
    assert parse_spec(raw)[1] == [
        "spec.pipeline.monitor.live_page.port=0 (any free port) cannot be declared on the head "
        "pod; give a fixed port (default 8642)"
    ]
    raw["pipeline"]["monitor"] = {"live_page": {"port": 8265}}
    assert parse_spec(raw)[1] == [
        "spec.pipeline.monitor.live_page.port=8265 is the Ray head's dashboard port; choose another"
    ]
    raw["pipeline"]["monitor"] = {"live_page": {"port": 0, "enabled": False}}
    assert parse_spec(raw)[1] == []  # off: nothing declared


RUNNING = {"state": "Running", "livePage": "http://0.0.0.0:8642/"}


def observed(**kwargs) -> Observed:
    base = dict(
        generation=1,
        now="2026-01-01T00:00:00Z",
        raycluster={"metadata": {"name": "demo"}, "status": {"state": "ready"}},
        rayjob={"metadata": {"name": "demo-driver"}, "status": {"jobStatus": "RUNNING"}},
        driver=RUNNING,
        live_page_host="demo-head-svc.ns.svc",
    )
    return Observed(**{**base, **kwargs})


def test_status_carries_the_in_cluster_address_while_the_driver_serves_the_page():
    assert fold(observed())["livePage"] == "http://demo-head-svc.ns.svc:8642/"
    service = observed(live_page_host="demo-live-page.ns.svc")
    assert fold(service)["livePage"] == "http://demo-live-page.ns.svc:8642/"
    assert fold(observed(driver={"state": "Running"}))["livePage"] is None  # not served
    ended = {"state": "Succeeded", "exitCode": 0, "livePage": None}
    status = fold(observed(driver=ended))
    assert status["livePage"] is None
    # a merge patch with null removes the address once the page is gone
    assert (
        status_patch({"livePage": "http://demo-head-svc.ns.svc:8642/"}, status)["livePage"] is None
    )


def test_the_driver_publishes_the_page_and_removes_it_at_the_end(emulator, kubectl, monkeypatch):
    kubectl.apply(example())
    monkeypatch.setenv(kube.ENV_NAME, "demo")
    monkeypatch.setenv(kube.ENV_NAMESPACE, kubectl.ns)
    monkeypatch.setenv(kube.ENV_API_URL, emulator.url)
    publisher = kube.status_publisher()
    publisher.live_page("http://10.1.2.3:8642/")
    assert kubectl.get("demo")["status"]["driver"]["livePage"] == "http://10.1.2.3:8642/"
    counts = {"frames_ingested": 0, "frames_inferred": 0, "events_handled_by_writers": 0}
    counts.update(frames_rejected_by_inference=0, events_failed_in_writers=0)
    publisher.finish({"exit_code": 0, "ended_by": "end of stream", "accounting": counts})
    assert "livePage" not in kubectl.get("demo")["status"]["driver"]


def test_the_operator_creates_the_pages_service_owned_by_the_resource(operator, kubectl):
    operator()
    doc = example()
    doc["spec"]["cluster"]["livePage"] = {"service": True}
    parent = kubectl.apply(doc)
    svc = wait_for(lambda: kubectl.child("v1", "Service", "demo-live-page"), "the Service")
    (ref,) = svc["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["uid"], ref["controller"]) == (
        "PeakNetPipeline",
        parent["metadata"]["uid"],
        True,
    )
