"""The Helm chart, rendered and linted offline with helm-python-sdk (Helm's Go SDK): the CRD is
the generated one, the values schema rejects wrong values at install, every built-in kind is
valid for the Kubernetes versions the chart declares, the Deployment runs the operator as the
design asks (one replica, standalone, probed, locked down), and the optional objects appear
only when asked for."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from chart_render import (
    CHART,
    RELEASE_NAMESPACE,
    all_values,
    of_kind,
    render,
    render_files,
)
from peaknet_operator.crd import CRD_PATH, crd_yaml
from peaknet_operator.main import DEFAULT_LIVENESS, parse_args

VALUES = {"defaults": None, "every-option": "all"}
NOT_BUILT_IN = {"ServiceMonitor"}  # Prometheus Operator's kind: no schema in kubernetes-validate


def values_of(which: str | None) -> dict[str, Any] | None:
    return all_values() if which == "all" else None


@pytest.fixture(params=sorted(VALUES), ids=sorted(VALUES))
def values(request) -> dict[str, Any] | None:
    return values_of(VALUES[request.param])


def chart_meta() -> dict[str, Any]:
    return yaml.safe_load((CHART / "Chart.yaml").read_text())


def container(docs: list[dict]) -> dict[str, Any]:
    (deployment,) = of_kind(docs, "Deployment")
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def test_the_chart_crd_is_the_generated_one():
    assert (CHART / CRD_PATH).read_text() == crd_yaml(), (
        "the chart's CRD drifted from the models: run `make crd` (it writes both copies)"
    )


def test_lint_is_clean(values):
    import helm_python

    report = helm_python.lint(CHART, values, strict=True, kube_version="v1.29.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


def leaves(node: Any, path: str = "") -> set[str]:
    if isinstance(node, dict) and node:
        return {leaf for k, v in node.items() for leaf in leaves(v, f"{path}.{k}")}
    return {path}


def test_the_every_option_values_file_sets_every_option():
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = {
        leaf
        for leaf in leaves(defaults)
        if not any(other == leaf or other.startswith(leaf + ".") for other in leaves(all_values()))
    }
    assert missing == set()


@pytest.mark.parametrize(
    "wrong, where",
    [
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"image": {"tag": "latest"}}, "/image/tag"),
        ({"watchNamespace": "Beam_Time"}, "/watchNamespace"),
        ({"driver": {"namespaces": ["ok", "Not OK"]}}, "/driver/namespaces/1"),
        ({"resources": {"limits": {"cpu": "lots"}}}, "/resources/limits"),
        ({"networkPolicy": {"ingestPorts": [70000]}}, "/networkPolicy/ingestPorts/0"),
        ({"operator": {"statusIntervalS": 0}}, "/operator/statusIntervalS"),
        ({"replicas": 2}, "additional properties 'replicas'"),
    ],
)
def test_a_wrong_value_fails_at_install(wrong, where):
    import helm_python

    with pytest.raises(helm_python.HelmValuesError, match=re.escape(where)):
        render_files(wrong)


def declared_versions() -> list[str]:
    """The lowest version Chart.yaml's kubeVersion allows, and the newest the validator knows."""
    from kubernetes_validate.utils import latest_version

    match = re.fullmatch(r">=\s*(\d+\.\d+)\.\d+(-0)?", chart_meta()["kubeVersion"])
    assert match, "kubeVersion is expected as >=X.Y.Z-0"
    return [f"{match[1]}.0", f"{latest_version()}.0"]


@pytest.mark.slow  # kubernetes-validate loads its schema definitions per object: ~3 s each
def test_built_in_kinds_are_valid_for_the_declared_kubernetes_versions(values):
    import kubernetes_validate

    docs = render(values)
    crd = yaml.safe_load((CHART / CRD_PATH).read_text())
    for version in declared_versions():
        for doc in [*docs, crd]:
            if doc["kind"] in NOT_BUILT_IN:
                continue
            kubernetes_validate.validate(doc, version, strict=True)
    assert {d["kind"] for d in docs} - NOT_BUILT_IN  # something was checked


def test_every_object_names_its_namespace_and_labels(values):
    for doc in render(values):
        meta = doc["metadata"]
        assert meta["labels"]["app.kubernetes.io/instance"] == "peaknet-operator", doc["kind"]
        if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert meta.get("namespace"), f"{doc['kind']} {meta['name']} has no namespace"


def test_the_operator_runs_standalone_once_probed_and_locked_down(values):
    docs = render(values)
    (deployment,) = of_kind(docs, "Deployment")
    assert deployment["metadata"]["namespace"] == RELEASE_NAMESPACE
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    c = container(docs)
    args = parse_args(c["args"])  # the console script accepts exactly what the chart passes
    assert args.standalone
    port = next(p["containerPort"] for p in c["ports"] if p["name"] == "health")
    assert args.liveness == DEFAULT_LIVENESS.replace(":8080/", f":{port}/")
    for probe in (c["livenessProbe"], c["readinessProbe"]):
        assert probe["httpGet"] == {"path": "/healthz", "port": "health"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] >= 10000
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["privileged"] is False
    assert set(c["resources"]["requests"]) == set(c["resources"]["limits"]) == {"cpu", "memory"}
    assert {m["mountPath"] for m in c["volumeMounts"]} == {"/tmp"}


def test_watching_one_namespace_passes_it_to_the_operator():
    assert parse_args(container(render())["args"]).namespace == []
    docs = render({"watchNamespace": "beamtime"})
    assert parse_args(container(docs)["args"]).namespace == ["beamtime"]


def test_the_driver_identity_goes_where_pipelines_run():
    def driver_namespaces(values):
        return {
            sa["metadata"]["namespace"]
            for sa in of_kind(render(values), "ServiceAccount")
            if sa["metadata"]["name"] == "peaknet-driver"
        }

    assert driver_namespaces(None) == {RELEASE_NAMESPACE}
    assert driver_namespaces({"watchNamespace": "beamtime"}) == {"beamtime"}
    assert driver_namespaces({"driver": {"namespaces": ["a", "b"]}}) == {"a", "b"}


def test_optional_objects_are_off_by_default():
    kinds = {d["kind"] for d in render()}
    assert kinds == {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
    }
    every = {d["kind"] for d in render(all_values())}
    assert {"NetworkPolicy", "ServiceMonitor", "Service"} <= every


def test_network_policies_let_only_the_ingest_ports_in_from_outside():
    values = all_values()
    policies = of_kind(render(values), "NetworkPolicy")
    for ns in values["driver"]["namespaces"]:
        mine = {
            p["metadata"]["name"]: p["spec"] for p in policies if p["metadata"]["namespace"] == ns
        }
        ingest = mine.pop("peaknet-ingest")
        assert ingest["podSelector"] == {
            "matchLabels": {"peaknet.slac.stanford.edu/role": "ingest"}
        }
        (rule,) = ingest["ingress"]
        assert "from" not in rule  # from anywhere ...
        assert [p["port"] for p in rule["ports"]] == values["networkPolicy"]["ingestPorts"]
        for name, spec in mine.items():  # ... and everything else only from named places
            for rule in spec["ingress"]:
                for source in rule["from"]:
                    assert source == {"podSelector": {}} or source["namespaceSelector"][
                        "matchLabels"
                    ]["kubernetes.io/metadata.name"] in ("kuberay", "monitoring"), name


def test_notes_say_what_to_run_next():
    notes = render_files()["peaknet-operator/templates/NOTES.txt"]
    kuberay = chart_meta()["annotations"]["peaknet.slac.stanford.edu/kuberay-version"]
    for needle in (
        f"--version {kuberay}",
        "kubectl apply -n peaknet-system -f examples/run.yaml",
        "kubectl get pnp",
        "rollout status deploy/peaknet-operator",
        "kubectl apply --server-side -f crds/",
    ):
        assert needle in notes, needle
