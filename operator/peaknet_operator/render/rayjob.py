"""The driver as a RayJob on the rendered RayCluster (`clusterSelector`): KubeRay submits
`peaknet-pipeline run --config <mounted file>`, which runs on the head (the head runs no
actors, so the driver has it to itself). The head pod carries the driver's environment, config
mount and ServiceAccount (see raycluster.py); the job is not retried (`backoffLimit: 0`): a
second run would start a new run id and files, which a person should decide on.
"""

from __future__ import annotations

import posixpath
from typing import Any

from ..spec import PeakNetPipelineSpec
from . import names

CONFIG_PATH = posixpath.join(names.CONFIG_DIR, names.CONFIG_FILE)
ENTRYPOINT = f"peaknet-pipeline run --config {CONFIG_PATH}"


def render_rayjob(name: str, namespace: str, spec: PeakNetPipelineSpec) -> dict[str, Any]:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": names.metadata(name, namespace, names.rayjob_name(name), "driver"),
        "spec": {
            "clusterSelector": {"ray.io/cluster": names.raycluster_name(name)},
            "entrypoint": ENTRYPOINT,
            "submissionMode": "K8sJobMode",
            "backoffLimit": 0,
        },
    }
