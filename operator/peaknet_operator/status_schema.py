"""The structural schema of `status`: what the operator folds (phase, conditions, workers,
children) and what the driver publishes (`status.driver`, see peaknet_pipeline.kube)."""

from __future__ import annotations

from typing import Any

PHASES = ["Pending", "Running", "Succeeded", "Failed", "Degraded"]


def _int(description: str) -> dict[str, Any]:
    return {"type": "integer", "description": description}


def _str(description: str, nullable: bool = False) -> dict[str, Any]:
    node: dict[str, Any] = {"type": "string", "description": description}
    if nullable:
        node["nullable"] = True
    return node


def _obj(description: str, properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "description": description, "properties": properties}


CONDITION = _obj(
    "A condition in Kubernetes form.",
    {
        "type": _str(
            "SpecAccepted, IngestReady, InferenceReady, WritersReady, Progressing, Scaling, "
            "FramesAccounted, ComputeReleased, Reconciled, DriverServiceAccount, "
            "RestartRequired or (a service) DriverRestarts."
        ),
        "status": {
            "type": "string",
            "enum": ["True", "False", "Unknown"],
            "description": "True, False or Unknown.",
        },
        "reason": _str("One CamelCase word."),
        "message": _str("What a person needs to know."),
        "lastTransitionTime": {
            "type": "string",
            "format": "date-time",
            "description": "When status last changed.",
        },
        "observedGeneration": _int("The metadata.generation this was computed for."),
    },
)
# `conditions` is a list-map keyed on `type`: the API server refuses the CRD unless every map key
# is required (or defaulted); `status` is required as in metav1.Condition.
CONDITION["required"] = ["type", "status"]
_NUMBER = {"type": "number", "description": "Hits / frames."}
DAQ_RUN = {
    "name": _str("The DAQ run's label, its folder's name (e.g. cxi12345-r0012)."),
    "frames": _int("Frames written to its files."),
    "hits": _int("Hits among them."),
    "hitRate": _NUMBER,
}
DAQ_RUNS = _obj(
    "A service's DAQ runs (spec.pipeline.runtime.service), from its writers and index.",
    {
        "current": _obj(
            "The DAQ run being written (absent between DAQ runs).",
            {**DAQ_RUN, "since": _str("Its first frame's time (UTC).", nullable=True)},
        ),
        "recent": {
            "type": "array",
            "description": "The last completed DAQ runs (at most 5), newest first.",
            "items": _obj(
                "A completed DAQ run (its folder complete and listed in index.json).",
                {
                    **DAQ_RUN,
                    "start": _str("Its first frame's time (UTC).", nullable=True),
                    "end": _str("Its last frame's time (UTC).", nullable=True),
                },
            ),
        },
        "totals": _obj(
            "The whole service: every DAQ run so far (earlier drivers' included).",
            {
                "daqRuns": _int("DAQ runs."),
                "frames": _int("Frames written."),
                "hits": _int("Hits."),
            },
        ),
    },
)
SERVICE = _obj(
    "A service (spec.pipeline.runtime.service): its driver and the restarts it had.",
    {
        "driverJob": _str("The current driver's RayJob (<name>-driver, then -driver-N)."),
        "driverRestarts": _int("Driver restarts used (spec.service.driverRestarts is the budget)."),
        "driverRestartBudget": _int("spec.service.driverRestarts."),
        "driver": _str("Running, Stopped, RestartPending, Restarting or RestartsExhausted."),
        "lastFailure": _str("Why the last restarted driver ended.", nullable=True),
        "nextRestartAt": _str("When the next driver starts (UTC).", nullable=True),
    },
)
GROUP_STATUS = _obj(
    "Worker pods of one role.",
    {"desired": _int("Pods the spec asks for."), "ready": _int("Pods ready.")},
)
DRIVER = _obj(
    "Published by the driver (the pipeline itself) while it runs and once at the end.",
    {
        "state": _str("Running, Draining, Succeeded or Failed."),
        "framesIngested": _int("Frames the sources accepted."),
        "framesInferred": _int("Frames segmented by inference."),
        "framesWritten": _int("Frames the writers handled (hits written, non-hits counted)."),
        "framesRejected": _int("Frames rejected by inference or failed in a writer."),
        "framesLost": _int("Frames not accounted for between stages (0 on a clean run)."),
        "framesPerSecond": {"type": "number", "description": "Inference rate, frames/s."},
        "exitCode": _int(
            "The run's exit code: 0 end of stream, 4 stopped early with every accepted frame "
            "written, 3 some frames rejected or failed, 1 frames lost, 130 hard stop (README)."
        ),
        "lastError": _str("The last error of the run.", nullable=True),
        "endedBy": _str(
            "What ended the run (end of stream, peaknet-pipeline stop, SIGTERM, a failed "
            "actor); a service ended by `peaknet-pipeline stop` is not restarted."
        ),
        "daqRuns": DAQ_RUNS,
        "verdict": _str(
            "Is inference fed? ok, starved, backlogged, writer-bound, spilling or too-short: of "
            "the last seconds while running, of the whole run's streaming window at the end.",
            nullable=True,
        ),
        "verdictMessage": _str("The verdict's evidence and what to change.", nullable=True),
        "livePage": _str(
            "The live page as the driver serves it (its bind address and port), while it does.",
            nullable=True,
        ),
        "updatedAt": _str("When the driver last published."),
        "inference": _obj(
            "Inference actors.",
            {
                "desired": _int("Actors the pipeline wants."),
                "running": _int("Actors running (warm)."),
                "retiring": _int("Actors draining before their pod is released."),
            },
        ),
        "releasedPods": {
            "type": "array",
            "description": "Inference pods whose actors have all retired for a scale-down; "
            "the operator then deletes exactly these (scaleStrategy.workersToDelete).",
            "items": {"type": "string"},
        },
    },
)
STATUS_SCHEMA: dict[str, Any] = _obj(
    "Observed state, folded by the operator from its children and the driver.",
    {
        "phase": {
            "type": "string",
            "enum": PHASES,
            "description": "Pending, Running, Succeeded, Failed or Degraded.",
        },
        "message": _str("One line on the phase."),
        "observedGeneration": _int("The metadata.generation last reconciled."),
        "conditions": {
            "type": "array",
            "description": "Conditions, one per type.",
            "items": CONDITION,
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
        "workers": _obj(
            "Worker pods per role.",
            {"ingest": GROUP_STATUS, "inference": GROUP_STATUS, "writer": GROUP_STATUS},
        ),
        "inferenceReady": _str("Inference workers ready/desired, e.g. 1/2."),
        "inferenceActors": _str(
            "The driver's inference actors running/desired, and how many are retiring "
            "(a scale-down in progress), e.g. 1/1 (1 retiring)."
        ),
        "rayCluster": _obj(
            "The RayCluster, as KubeRay reports it.",
            {
                "name": _str("Its name."),
                "state": _str("KubeRay's state (ready, suspended, ...)."),
                "readyWorkerReplicas": _int("Ready workers, all groups."),
                "desiredWorkerReplicas": _int("Desired workers, all groups."),
            },
        ),
        "job": _obj(
            "The driver's RayJob, as KubeRay reports it.",
            {
                "name": _str("Its name."),
                "jobStatus": _str("PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."),
                "jobDeploymentStatus": _str("KubeRay's deployment status of the job."),
                "message": _str("KubeRay's message."),
            },
        ),
        "driver": DRIVER,
        "service": SERVICE,
        "livePage": _str(
            "The live page's in-cluster address (http://<raycluster>-head-svc.<namespace>.svc:"
            "8642/, or the Service spec.cluster.livePage.service adds) while the driver serves "
            "it; from a laptop: kubectl port-forward svc/<raycluster>-head-svc 8642.",
            nullable=True,
        ),
    },
)
