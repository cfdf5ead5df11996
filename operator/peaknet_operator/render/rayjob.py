"""The driver as a RayJob on the rendered RayCluster (`clusterSelector`): KubeRay submits
`peaknet-pipeline run --config <mounted file>`, which runs on the head (the head runs no
actors, so the driver has it to itself). The head pod carries the driver's environment, config
mount and ServiceAccount (see raycluster.py); the job is not retried (`backoffLimit: 0`): a
second run would start a new run id and files, which a person should decide on. A service
(spec.pipeline.runtime.service) is the exception: the operator starts a new RayJob, the next
attempt, when its driver fails (service.py).
"""

from __future__ import annotations

import posixpath
from typing import Any

from ..service import ATTEMPT
from ..spec import PeakNetPipelineSpec
from . import names

CONFIG_PATH = posixpath.join(names.CONFIG_DIR, names.CONFIG_FILE)
# KubeRay's K8sJobMode submitter pod when the RayJob gives no submitterPodTemplate (ours gives
# one, below): its container requests 500m CPU and 200Mi, limits 1 CPU and 1Gi. It is scheduled like
# any pod, so sizing a node must count it. KubeRay v1.7.0 ray-operator/controllers/ray/common/
# job.go: GetDefaultSubmitterContainer.
SUBMITTER_REQUESTS = {"cpu": "500m", "memory": "200Mi"}
SUBMITTER_LIMITS = {"cpu": "1", "memory": "1Gi"}
# Ours only runs `ray job submit` and follows the logs (the driver runs on the head): 100m CPU,
# bursting to KubeRay's 1-CPU limit. KubeRay's 500m does not fit next to kind's control plane
# and the demo on a 4-CPU node (tests/e2e/kind_tool.py: kind_sizing). KubeRay uses a template
# as given (job.go: GetSubmitterTemplate), so it carries what the default has: the head's
# image, restartPolicy Never (a Job's pods may not restart Always). Labelled as the pipeline's
# pods, so the status sees it (a Pending submitter's scheduler message).
SUBMITTER_TEMPLATE_REQUESTS = {"cpu": "100m", "memory": "200Mi"}
ENTRYPOINT = f"peaknet-pipeline run --config {CONFIG_PATH}"


def render_rayjob(
    name: str, namespace: str, spec: PeakNetPipelineSpec, attempt: int = 0
) -> dict[str, Any]:
    """The driver's RayJob; a service's carries its attempt (0 first, n after n restarts:
    service.py), in its name and an annotation. The spec is the same for every attempt."""
    metadata = names.metadata(name, namespace, names.rayjob_name(name, attempt), "driver")
    if spec.is_service:
        metadata["annotations"] = {ATTEMPT: str(attempt)}
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": metadata,
        "spec": {
            "clusterSelector": {"ray.io/cluster": names.raycluster_name(name)},
            "entrypoint": ENTRYPOINT,
            "submissionMode": "K8sJobMode",
            "backoffLimit": 0,
            "submitterPodTemplate": submitter_template(name, spec),
        },
    }


def submitter_template(name: str, spec: PeakNetPipelineSpec) -> dict[str, Any]:
    """The submitter Job's pod template (see SUBMITTER_TEMPLATE_REQUESTS)."""
    resources = {"requests": dict(SUBMITTER_TEMPLATE_REQUESTS), "limits": dict(SUBMITTER_LIMITS)}
    container = {
        "name": "ray-job-submitter",
        "image": spec.cluster.image,
        "imagePullPolicy": spec.cluster.image_pull_policy,
        "resources": resources,
    }
    return {
        "metadata": {"labels": names.pod_labels(name, "submitter")},
        "spec": {"restartPolicy": "Never", "containers": [container]},
    }
