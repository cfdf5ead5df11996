"""The operator's decisions that need no API server, as pure functions: whether a spec is
accepted, whether running pods and the driver lag behind the spec (the restart fingerprint),
whether a write changed what status is folded from, and which Kubernetes Events a status
change or a write posts (Normal or Warning). The handlers read, call these once per event,
and write; tests/operator/test_decisions.py checks them without an API server.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from .checks import parse_spec
from .observed import WARN_CONDITIONS
from .sizing import RoleSize, size_roles, sizing_problems
from .spec import GROUP, PeakNetPipelineSpec

if TYPE_CHECKING:  # scaling imports render, which imports scaling: only render may come first
    from .scaling import InferenceScale

# The RayCluster's creation annotation: the fingerprint of what its pods were started with.
FINGERPRINT = f"{GROUP}/started-fingerprint"
RESTART_MESSAGE = (
    "the spec changed in a way running pods and the driver do not pick up (pod templates, "
    "Ray start parameters or the pipeline config); they keep the previous one until the "
    "resource is re-created (kubectl replace --force -f FILE)"
)
# Phases posted as Warning events; every other phase change is Normal.
WARNING_PHASES = ("Failed", "Degraded")
# Children whose writes change what status is folded from (the handlers read them back).
OBSERVED_KINDS = ("RayCluster", "RayJob")
EVENT_MESSAGE_MAX = 1000


class Acceptance(NamedTuple):
    """A spec as the operator takes it: parsed and sized, or refused with `problems` (one per
    field) and `reason` (SpecInvalid, ObjectStoreDoesNotFit); reason is "" when accepted."""

    spec: PeakNetPipelineSpec | None
    sizes: dict[str, RoleSize]
    problems: list[str]
    reason: str


def accept(raw_spec: Mapping[str, Any] | None) -> Acceptance:
    """Parse and size `raw_spec`; what the reconcile, the status timer and `peaknet-operator
    render` all apply, so the three agree on what is refused."""
    spec, problems = parse_spec(raw_spec)
    if spec is None or problems:
        return Acceptance(spec, {}, problems, "SpecInvalid")
    sizes = size_roles(spec)
    problems = sizing_problems(sizes, spec)
    return Acceptance(spec, sizes, problems, "ObjectStoreDoesNotFit" if problems else "")


def creation_annotations(kind: str, fingerprint: str) -> dict[str, str] | None:
    """Annotations a child gets only when it is created: the RayCluster records the restart
    fingerprint it was started with."""
    return {FINGERPRINT: fingerprint} if kind == "RayCluster" else None


def restart_reason(raycluster: Mapping[str, Any] | None, fingerprint: str) -> str | None:
    """Why running pods and the driver lag behind the spec whose children have `fingerprint`,
    or None: the RayCluster was started with another one. A RayCluster without the
    annotation (none yet, or created by someone else) is not compared."""
    annotations = ((raycluster or {}).get("metadata") or {}).get("annotations") or {}
    started = annotations.get(FINGERPRINT)
    return RESTART_MESSAGE if started and started != fingerprint else None


def changes_observation(writes: Iterable[tuple[str, str]]) -> bool:
    """Whether the writes, (kind, result) each, changed what status is folded from: a
    RayCluster or RayJob created, patched or deleted. Other children are not read back."""
    return any(kind in OBSERVED_KINDS and result != "unchanged" for kind, result in writes)


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the resource."""

    type: str  # Normal or Warning
    reason: str
    message: str


def _event(type_: str, reason: str, message: str) -> Event:
    return Event(type_, reason, message[:EVENT_MESSAGE_MAX])


def status_events(previous: Mapping[str, Any], folded: Mapping[str, Any]) -> list[Event]:
    """The events a status change posts: one on a new phase (Warning for Failed and
    Degraded), and a Warning for each condition of WARN_CONDITIONS that turns False or keeps
    False with a new message (the condition's message)."""
    events = []
    before, after = previous.get("phase"), folded["phase"]
    if after != before:
        kind = "Warning" if after in WARNING_PHASES else "Normal"
        events.append(_event(kind, after, folded.get("message", "")))
    old = {c.get("type"): c for c in previous.get("conditions", [])}
    for cond in folded.get("conditions", []):
        if cond["type"] not in WARN_CONDITIONS or cond["status"] != "False":
            continue
        was = old.get(cond["type"], {})
        if (was.get("status"), was.get("message")) != ("False", cond["message"]):
            events.append(_event("Warning", cond["reason"], cond["message"]))
    return events


def applied_event(writes: Iterable[tuple[str, str]]) -> Event | None:
    """The `Reconciled` event of a create-or-patch pass, or None when nothing changed."""
    results = [result for _, result in writes]
    created, patched = results.count("created"), results.count("patched")
    if not created and not patched:
        return None
    return _event("Normal", "Reconciled", f"{created} created, {patched} patched")


def scale_event(scale: InferenceScale) -> Event:
    """The event of a patch that moved the inference group's replicas or workersToDelete."""
    deleting = ", ".join(scale.workers_to_delete or ()) or "none"
    message = f"inference replicas {scale.replicas}, deleting released pods: {deleting}"
    if scale.workers_to_delete == ():
        message = f"inference replicas {scale.replicas}; emptied workersToDelete (pods gone)"
    return _event("Normal", "ScaledInference", message)


def released_event(raycluster: str, claim: str) -> Event:
    """The event of deleting an ended run's RayCluster."""
    message = (
        f"the run ended: deleted the RayCluster {raycluster} and its pods; the output claim "
        f"{claim} and this resource stay"
    )
    return _event("Normal", "ComputeReleased", message)
