"""Will the pods of a pipeline be scheduled? A pure check, before anything is created.

A RayCluster whose pods do not fit its nodes is accepted by the API server and by KubeRay and
then waits forever: its pods stay Pending, and a pipeline whose driver's submitter pod does not
fit never starts. This module lists every pod a pipeline needs (from the rendered children, so
it sees exactly what the operator creates and KubeRay adds) and places them on nodes the way
the kube-scheduler's filters decide whether a pod fits a node, so a site (or a CI runner) can
see before a run that it will not be scheduled, in the scheduler's own words.

Units: "cpu" in millicores, "memory" (and every other resource) in whole units (bytes for
memory), as the scheduler compares them (`framework.Resource`: MilliCPU, Memory, scalar
resources).

Placement follows the scheduler: one pod at a time in the order they are created (the head,
then each worker group in spec order, as KubeRay's reconcilePods creates them; the submitter
after the RayCluster is ready, as KubeRay creates its Job then), each on the node, among those
whose filters pass, that the default NodeResourcesFit score ranks highest: LeastAllocated, the
mean over CPU and memory of the share left free after the pod
(plugins/noderesources/least_allocated.go: leastResourceScorer), so pods spread over the
nodes as they do on a real cluster, and a large pod created last can find no node with room
although some other order would have fitted it. Among equal scores the real scheduler picks
at random (schedule_one.go: selectHost); here the first node given wins.

What it does not model (a real scheduler shows it): topology spread constraints, pod
anti-affinity, preferred (soft) rules, volume topology and attach limits, host ports, taints
and labels it is not told about, extended resources a node does not list, preemption, and what
other tenants' pods already request.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .quantity import scheduler_units
from .render import render_all
from .render.rayjob import SUBMITTER_LIMITS, SUBMITTER_REQUESTS
from .spec import PeakNetPipelineSpec

HOSTNAME = "kubernetes.io/hostname"

# KubeRay v1.7.0 ray-operator/controllers/ray/common/pod.go, DefaultWorkerPodTemplate: every
# worker pod gets the init container "wait-gcs-ready" (ENABLE_INIT_CONTAINER_INJECTION, on by
# default), requesting 200m CPU and 256Mi; an init container counts as max(init, containers).
KUBERAY_WORKER_INIT_REQUESTS = {"cpu": "200m", "memory": "256Mi"}


def _units(resources: Mapping[str, Any] | None) -> dict[str, int]:
    return {r: scheduler_units(r, q) for r, q in (resources or {}).items()}


def container_requests(container: Mapping[str, Any]) -> dict[str, int]:
    """A container's requests, a limit standing in for a request it does not give: the API
    server defaults requests to limits (kubernetes pkg/apis/core/v1/defaults.go: SetDefaults_Pod,
    "limits are set but requests are not")."""
    resources = container.get("resources") or {}
    merged = dict(resources.get("limits") or {})
    merged.update(resources.get("requests") or {})
    return _units(merged)


@dataclass(frozen=True)
class PodRequest:
    """What the scheduler looks at in one pod."""

    name: str
    requests: Mapping[str, int]
    labels: Mapping[str, str] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    node_affinity: tuple[Mapping[str, Any], ...] = ()  # required nodeSelectorTerms (ORed)
    pod_affinity: tuple[Mapping[str, Any], ...] = ()  # required podAffinity terms (ANDed)
    wave: int = 0  # created after every pod of a lower wave is running (the submitter: 1)


def pod_request(
    name: str, pod_spec: Mapping[str, Any], labels: Mapping[str, str] | None = None, wave: int = 0
) -> PodRequest:
    """A pod's total requests as noderesources/fit.go computePodResourceRequest adds them up:
    the sum over containers, at least each init container's, plus the pod overhead."""
    total: dict[str, int] = {}
    for container in pod_spec.get("containers") or []:
        for resource, amount in container_requests(container).items():
            total[resource] = total.get(resource, 0) + amount
    for container in pod_spec.get("initContainers") or []:
        for resource, amount in container_requests(container).items():
            total[resource] = max(total.get(resource, 0), amount)
    for resource, amount in _units(pod_spec.get("overhead")).items():
        total[resource] = total.get(resource, 0) + amount
    affinity = pod_spec.get("affinity") or {}
    node_terms = (
        (affinity.get("nodeAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution")
        or {}
    ).get("nodeSelectorTerms") or []
    pod_terms = (affinity.get("podAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or []
    return PodRequest(
        name=name,
        requests={r: v for r, v in total.items() if v},
        labels=dict(labels or {}),
        node_selector=dict(pod_spec.get("nodeSelector") or {}),
        tolerations=tuple(pod_spec.get("tolerations") or ()),
        node_affinity=tuple(node_terms),
        pod_affinity=tuple(pod_terms),
        wave=wave,
    )


def _template_pod(
    name: str, template: Mapping[str, Any], kuberay: Mapping[str, str] | None = None, wave: int = 0
) -> PodRequest:
    """A pod from a template; `kuberay`: the labels KubeRay gives a Ray pod (set: a worker's
    init container too)."""
    spec = dict(template.get("spec") or {})
    labels = dict((template.get("metadata") or {}).get("labels") or {})
    if kuberay:
        labels.update(kuberay)
    if kuberay and kuberay["ray.io/node-type"] == "worker":
        init = {"name": "wait-gcs-ready", "resources": {"requests": KUBERAY_WORKER_INIT_REQUESTS}}
        spec["initContainers"] = [init, *(spec.get("initContainers") or [])]
    return pod_request(name, spec, labels, wave)


def kuberay_labels(cluster: str, node_type: str, group: str) -> dict[str, str]:
    """The labels KubeRay puts on a Ray pod, over the template's (v1.7.0 common/pod.go:
    labelPod; ray.io/cluster, node-type and group cannot be overridden)."""
    return {"ray.io/cluster": cluster, "ray.io/node-type": node_type, "ray.io/group": group}


def pods_of(
    children: Iterable[Mapping[str, Any]], replicas: Mapping[str, int] | None = None
) -> list[PodRequest]:
    """Every pod the rendered children make, in the order they are created: the head, each
    worker group's pods (`replicas` overrides a group's count), then the K8sJobMode submitter
    (its submitterPodTemplate, else KubeRay's default container: common/job.go
    GetDefaultSubmitterContainer, 500m CPU and 200Mi)."""
    pods: list[PodRequest] = []
    submitters: list[PodRequest] = []
    for child in children:
        spec = child.get("spec") or {}
        if child.get("kind") == "RayCluster":
            cluster = child["metadata"]["name"]
            head = kuberay_labels(cluster, "head", "headgroup")
            pods.append(_template_pod("head", spec["headGroupSpec"]["template"], head))
            for group in spec.get("workerGroupSpecs") or []:
                count = (replicas or {}).get(group["groupName"], group.get("replicas", 0))
                worker = kuberay_labels(cluster, "worker", group["groupName"])
                for i in range(count):
                    name = f"{group['groupName']}-{i + 1}"
                    pods.append(_template_pod(name, group["template"], worker))
        elif child.get("kind") == "RayJob" and spec.get("submissionMode") == "K8sJobMode":
            template = spec.get("submitterPodTemplate") or {
                "spec": {
                    "containers": [
                        {"resources": {"requests": SUBMITTER_REQUESTS, "limits": SUBMITTER_LIMITS}}
                    ]
                }
            }
            # KubeRay creates the submitter Job once the RayCluster is ready (rayjob_controller.go)
            submitters.append(_template_pod("submitter", template, wave=1))
    return pods + submitters


def pipeline_pods(
    name: str, namespace: str, spec: PeakNetPipelineSpec, at_max: bool = False
) -> list[PodRequest]:
    """The pods of a pipeline as rendered; `at_max`: the inference group at
    spec.cluster.inference.maxReplicas (what `kubectl scale` may ask for without a restart)."""
    replicas = {"inference": spec.cluster.inference.sized_replicas} if at_max else None
    return pods_of(render_all(name, namespace, spec), replicas)


@dataclass
class Node:
    """A node as the scheduler sees it: allocatable resources (scheduler units), labels, taints,
    and the requests of the pods already on it."""

    name: str
    allocatable: dict[str, int]
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[dict[str, str]] = field(default_factory=list)
    requested: dict[str, int] = field(default_factory=dict)
    pods: list[PodRequest] = field(default_factory=list)
    max_pods: int = 110  # the kubelet's default maxPods


def node(
    name: str,
    cpu: str | int,
    memory: str,
    gpus: int = 0,
    labels: Mapping[str, str] | None = None,
    taints: Sequence[Mapping[str, str]] = (),
    running: Iterable[PodRequest] = (),
) -> Node:
    """A node of the given allocatable size, carrying the pods in `running`."""
    allocatable = {"cpu": scheduler_units("cpu", cpu), "memory": scheduler_units("memory", memory)}
    if gpus:
        allocatable["nvidia.com/gpu"] = gpus
    labels = {HOSTNAME: name, **(labels or {})}
    result = Node(name, allocatable, labels, [dict(t) for t in taints])
    for pod in running:
        _bind(result, pod)
    return result


def _bind(target: Node, pod: PodRequest) -> None:
    target.pods.append(pod)
    for resource, amount in pod.requests.items():
        target.requested[resource] = target.requested.get(resource, 0) + amount


def _tolerates(toleration: Mapping[str, Any], taint: Mapping[str, str]) -> bool:
    """k8s.io/api core/v1/toleration.go: ToleratesTaint."""
    if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
        return False
    if toleration.get("key") and toleration["key"] != taint.get("key"):
        return False
    if toleration.get("operator") == "Exists":
        return True
    return toleration.get("value", "") == taint.get("value", "")


def _untolerated_taint(pod: PodRequest, target: Node) -> str | None:
    """plugins/tainttoleration/taint_toleration.go: Filter (NoSchedule and NoExecute taints)."""
    for taint in target.taints:
        if taint.get("effect") not in ("NoSchedule", "NoExecute"):
            continue
        if not any(_tolerates(t, taint) for t in pod.tolerations):
            return f"node(s) had untolerated taint {{{taint['key']}: {taint.get('value', '')}}}"
    return None


def _expression_matches(expr: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, op, values = expr["key"], expr["operator"], expr.get("values") or []
    if op == "In":
        return key in labels and labels[key] in values
    if op == "NotIn":
        return labels.get(key) not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    raise ValueError(f"unsupported node selector operator {op!r}")


def _matches_node(pod: PodRequest, target: Node) -> bool:
    """plugins/nodeaffinity/node_affinity.go: Filter (nodeSelector AND any required term)."""
    if any(target.labels.get(k) != v for k, v in pod.node_selector.items()):
        return False
    if not pod.node_affinity:
        return True
    return any(
        all(_expression_matches(e, target.labels) for e in term.get("matchExpressions") or [])
        for term in pod.node_affinity
    )


def _selects(term: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    selector = term.get("labelSelector") or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    return all(_expression_matches(e, labels) for e in selector.get("matchExpressions") or [])


def _affinity_ok(pod: PodRequest, target: Node, nodes: Sequence[Node]) -> bool:
    """plugins/interpodaffinity/filtering.go: satisfyPodAffinity. Every required term needs a
    matching pod on a node of the same topology value; a term no pod anywhere matches is
    allowed when the pod matches it itself (the first pod of a group)."""
    for term in pod.pod_affinity:
        key = term.get("topologyKey", HOSTNAME)
        here = target.labels.get(key)
        anywhere = any(_selects(term, p.labels) for n in nodes for p in n.pods)
        if not anywhere and _selects(term, pod.labels):
            continue
        near = [n for n in nodes if here is not None and n.labels.get(key) == here]
        if not any(_selects(term, p.labels) for n in near for p in n.pods):
            return False
    return True


def _reasons(pod: PodRequest, target: Node, nodes: Sequence[Node]) -> list[str]:
    """Why `pod` does not fit `target`; the first failing filter only, in the default profile's
    order (pkg/scheduler/apis/config/v1/default_plugins.go; the framework's RunFilterPlugins
    stops at the first plugin that rejects a node)."""
    taint = _untolerated_taint(pod, target)
    if taint:
        return [taint]
    if not _matches_node(pod, target):
        return ["node(s) didn't match Pod's node affinity/selector"]
    # plugins/noderesources/fit.go: fitsRequest. Requests, not limits; a resource fits when
    # requested-on-node + pod request <= allocatable; a pod requesting nothing always fits.
    reasons = []
    if len(target.pods) + 1 > target.max_pods:
        reasons.append("Too many pods")
    for resource in sorted(pod.requests, key=lambda r: (r not in ("cpu", "memory"), r)):
        amount = pod.requests[resource]
        if target.allocatable.get(resource, 0) < target.requested.get(resource, 0) + amount:
            reasons.append(f"Insufficient {resource}")
    if reasons:
        return reasons
    if not _affinity_ok(pod, target, nodes):
        return ["node(s) didn't match pod affinity rules"]
    return []


def unschedulable_message(reasons_per_node: Sequence[Sequence[str]]) -> str:
    """The scheduler's FitError message (pkg/scheduler/framework/types.go: FitError.Error):
    "0/N nodes are available: " and the count of nodes per reason, sorted, then ".". (A real
    scheduler then appends its preemption attempt's message.)"""
    counts: dict[str, int] = {}
    for reasons in reasons_per_node:
        for reason in reasons:
            counts[reason] = counts.get(reason, 0) + 1
    histogram = sorted(f"{n} {reason}" for reason, n in counts.items())
    return f"0/{len(reasons_per_node)} nodes are available: {', '.join(histogram)}."


def _least_allocated(pod: PodRequest, target: Node) -> float:
    """plugins/noderesources/least_allocated.go: leastResourceScorer with the default weights
    (cpu 1, memory 1): the mean of (allocatable - requested - pod) / allocatable."""
    shares = []
    for resource in ("cpu", "memory"):
        capacity = target.allocatable.get(resource, 0)
        used = target.requested.get(resource, 0) + pod.requests.get(resource, 0)
        shares.append((capacity - used) / capacity if capacity else 0.0)
    return sum(shares) / len(shares)


def place(pods: Sequence[PodRequest], nodes: Sequence[Node]) -> dict[str, str]:
    """Bind each pod, in creation order (lower waves first), to the feasible node scoring
    highest (least allocated); a pod that fits nowhere is tried again once others have been
    bound (the scheduler requeues it on such events: a pod affinity may then be met). Returns
    each pod that fits nowhere in the end with the scheduler's message. `nodes` are updated in
    place."""
    unscheduled: dict[str, str] = {}
    for wave in sorted({p.wave for p in pods}):
        waiting = [p for p in pods if p.wave == wave]  # creation order within the wave
        while waiting:
            unscheduled.update((p.name, "") for p in waiting)
            still = [pod for pod in waiting if not _bind_best(pod, nodes, unscheduled)]
            if len(still) == len(waiting):  # nothing bound: nothing will change
                break
            waiting = still
    return {name: message for name, message in unscheduled.items() if message}


def _bind_best(pod: PodRequest, nodes: Sequence[Node], unscheduled: dict[str, str]) -> bool:
    per_node = [_reasons(pod, target, nodes) for target in nodes]
    feasible = [target for target, reasons in zip(nodes, per_node) if not reasons]
    if not feasible:
        unscheduled[pod.name] = unschedulable_message(per_node)
        return False
    _bind(max(feasible, key=lambda target: _least_allocated(pod, target)), pod)
    unscheduled[pod.name] = ""
    return True


def fits(pods: Sequence[PodRequest], nodes: Sequence[Node]) -> list[str]:
    """One line per pod that would stay Pending, "<pod>: <the scheduler's message>" (empty: all
    fit). The nodes are not changed."""
    copies = [replace(n, requested=dict(n.requested), pods=list(n.pods)) for n in nodes]
    return [f"{pod}: {message}" for pod, message in place(pods, copies).items()]
