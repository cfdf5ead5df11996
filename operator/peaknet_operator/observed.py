"""What the operator observed of one resource's children, as one value (`Observed`), and the
small predicates the status, the decisions and the handlers share: has the run ended, may
its compute be released, is the cluster ready. Pure; status.py folds it into the status."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .render.names import LABEL_ROLE
from .scaling import InferenceScale, ScaleObservation
from .service import KUBERAY_JOB_ENDED, DriverRestart
from .spec import ROLES

OPERATOR_KEYS = (
    "phase",
    "message",
    "observedGeneration",
    "conditions",
    "workers",
    "inferenceReady",
    "inferenceActors",
    "rayCluster",
    "job",
    "service",
    "livePage",
)
FINISHED_JOB = {"SUCCEEDED", "FAILED", "STOPPED"}
# KUBERAY_JOB_ENDED (service.py): KubeRay's final RayJob deployment states
# (ray-operator/apis/ray/v1/rayjob_types.go: JobDeploymentStatusComplete, ...Failed,
# ...ValidationFailed): KubeRay is done with the job.
RUNNING_DRIVER = {"Running", "Draining"}
FINISHED_DRIVER = {"Succeeded", "Failed"}
# Exit codes of a run that went well: 0 end of stream, 4 stopped early with every frame written.
# KubeRay marks the job FAILED for any non-zero exit (ray-operator/controllers/ray/
# rayjob_controller.go: Reconcile), so a published exit code decides, not the RayJob.
EXIT_OK, EXIT_STOPPED = 0, 4
READY_NAMES = {"ingest": "IngestReady", "inference": "InferenceReady", "writer": "WritersReady"}
# Conditions whose turning False is posted as a Warning event (with the condition's message).
WARN_CONDITIONS = ("Reconciled", "DriverServiceAccount", "DriverRestarts")
KUBERAY_MISSING = "KubeRayNotInstalled"


@dataclass(frozen=True)
class Outcome:
    """How the operator's last create-or-patch of the children went (`Reconciled`)."""

    ok: bool
    reason: str
    message: str
    permanent: bool = False  # a refusal (not a transient failure): the phase is Failed meanwhile


def outcome_of(what: str, status: int, reason: str, message: str, kuberay_missing: bool) -> Outcome:
    """The outcome of a failed API call `what` (pure). Every one is retried with back-off;
    other 4xx than 409 and 429 (401, 403, 404, 422, ...) are refusals (`permanent`: the phase
    is Failed until a retry succeeds), KubeRay's CRDs not served and 0, 409, 429, 5xx are not."""
    if kuberay_missing:
        text = (
            "KubeRay's CRDs are not installed (the API server serves no ray.io/v1 RayCluster "
            "or RayJob): install KubeRay's operator; retrying with back-off"
        )
        return Outcome(False, KUBERAY_MISSING, f"{what}: {text}")
    permanent = 400 <= status < 500 and status not in (409, 429)
    return Outcome(False, reason, f"{what}: {message}", permanent)


@dataclass
class Observed:
    """Everything the status is folded from."""

    generation: int
    now: str
    problems: list[str] = field(default_factory=list)
    problem_reason: str = "SpecInvalid"
    desired: dict[str, int] = field(default_factory=dict)  # worker pods per role
    raycluster: Mapping[str, Any] | None = None
    rayjob: Mapping[str, Any] | None = None
    pods: list[Mapping[str, Any]] = field(default_factory=list)
    driver: Mapping[str, Any] = field(default_factory=dict)
    restart_reason: str | None = None
    previous: Mapping[str, Any] = field(default_factory=dict)  # the status as it is
    scale_seen: ScaleObservation | None = None  # the inference group's scaling inputs
    scale: InferenceScale | None = None  # and the decision made from them
    outcome: Outcome | None = None  # the last create-or-patch of the children; None: unknown
    namespace: str = ""
    raycluster_name: str = ""
    claim: str = ""  # the output claim
    service_account: str = ""  # spec.cluster.driverServiceAccount
    account_found: bool | None = None  # whether it exists; None: not checked
    live_page_host: str = ""  # where the live page is reached in the cluster (livepage.py)
    # A service (spec.pipeline.runtime.service): what to do about its driver (service.py);
    # None for a finite run. `stale_rayjobs`: older attempts' RayJobs, to be deleted.
    restart: DriverRestart | None = None
    stale_rayjobs: list[str] = field(default_factory=list)


def ready_pods(pods: list[Mapping[str, Any]]) -> dict[str, int]:
    """Ready, not terminating pods per role label."""
    counts = dict.fromkeys(ROLES, 0)
    for pod in pods:
        meta = pod.get("metadata", {})
        role = meta.get("labels", {}).get(LABEL_ROLE)
        if role not in counts or meta.get("deletionTimestamp"):
            continue
        conditions = pod.get("status", {}).get("conditions", [])
        if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
            counts[role] += 1
    return counts


def cluster_ready(raycluster: Mapping[str, Any] | None, desired_total: int) -> bool:
    status = (raycluster or {}).get("status", {})
    ready = status.get("readyWorkerReplicas", 0)
    return status.get("state") == "ready" and ready >= desired_total


def run_ended(obs: Observed) -> bool:
    """Whether the run has ended (RayJob or driver): its compute is then released and never
    re-created. A service has ended only when its driver was stopped on purpose or failed
    with no restart left: while a restart is pending it keeps its cluster."""
    return _finished(obs)[0]


def compute_to_release(obs: Observed) -> bool:
    """Whether the RayCluster should be deleted now: KubeRay has seen the job end (its
    `jobDeploymentStatus` is final) and the cluster still exists. Not on the driver's word
    alone: the driver reports its end before its process exits, and a cluster deleted before
    KubeRay has polled the job leaves the RayJob Running for good (rayjob_controller.go:
    getOrCreateRayClusterInstance, RayClusterNotFound) and its submitter retrying."""
    if obs.restart is not None and not run_ended(obs):
        return False  # a service keeps its cluster between DAQ runs and across driver restarts
    meta = (obs.raycluster or {}).get("metadata", {})
    deployment = (obs.rayjob or {}).get("status", {}).get("jobDeploymentStatus")
    seen_by_kuberay = deployment in KUBERAY_JOB_ENDED
    return seen_by_kuberay and obs.raycluster is not None and not meta.get("deletionTimestamp")


def _finished(obs: Observed) -> tuple[bool, bool]:
    """(the run has ended, it ended well)."""
    job = (obs.rayjob or {}).get("status", {})
    if obs.restart is not None:  # a service (service.py)
        if obs.restart.action == "spent":
            return True, False
        # Its current RayJob runs, or failed with a restart to come (the driver's status may
        # still be the failed attempt's): not ended. Only a stop on purpose ends it.
        if obs.restart.action != "none" or job.get("jobDeploymentStatus") not in KUBERAY_JOB_ENDED:
            return False, False
    driver_state, exit_code = obs.driver.get("state"), obs.driver.get("exitCode")
    ended = job.get("jobStatus") in FINISHED_JOB
    ended = ended or job.get("jobDeploymentStatus") in ("Failed", "ValidationFailed")
    ended = ended or driver_state in FINISHED_DRIVER
    if not ended:
        return False, False
    if exit_code is not None and driver_state in FINISHED_DRIVER:
        return True, exit_code in (EXIT_OK, EXIT_STOPPED)
    return True, job.get("jobStatus") == "SUCCEEDED"
