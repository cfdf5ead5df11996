"""KubeRay v1.7.0's validation of a RayCluster and a RayJob, with its messages (pure).

KubeRay runs these checks at the start of every reconcile (ray-operator/controllers/ray/
raycluster_controller.go `rayClusterReconcile`, rayjob_controller.go `validateRayJob`); each Go
function returns its first error. A refused RayCluster gets a Warning Event (reason
InvalidRayClusterMetadata / InvalidRayClusterSpec, message "The RayCluster spec is invalid
<ns>/<name>: <error>") and no pods; a refused RayJob gets `jobDeploymentStatus:
ValidationFailed`, `reason: ValidationFailed`, `message: <error>` and an Event. The rules are
those of ray-operator/controllers/ray/utils/validation.go with v1.7.0's feature-gate defaults
(RayJobDeletionPolicy on; NetworkPolicy, mTLS, history server, embedded GCS storage off).
Not reproduced: GCS fault-tolerance options beyond the env/annotation rules, TLS and
network-policy contents, the history-server collector, deletion rules' contents, and
Kubernetes' exact label-syntax messages (a shorter message names the offending key or value).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
DNS1035_MSG = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
    "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or "
    "'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
)
MAX_RAYCLUSTER_NAME, MAX_RAYJOB_NAME = 53, 47  # utils/constant.go
QUALIFIED = re.compile(
    r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
)
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def _dns1035(name: str) -> list[str]:
    """apimachinery pkg/util/validation/validation.go IsDNS1035Label."""
    errs = [] if len(name) <= 63 else ["must be no more than 63 characters"]
    return errs + ([] if DNS1035.fullmatch(name) else [DNS1035_MSG])


def _version(text: str) -> tuple[int, ...] | None:
    """apimachinery pkg/util/version ParseGeneric (X.Y or X.Y.Z, optional "v", a suffix)."""
    match = re.fullmatch(r"\s*v?([0-9]+(?:\.[0-9]+){1,2})(.*)", text or "")
    return tuple(int(p) for p in match[1].split(".")) + (0,) if match else None


def _env(container: dict, name: str) -> dict | None:
    return next((e for e in container.get("env") or [] if e.get("name") == name), None)


def _group_resources(group_name: str, params: dict, resources: dict) -> str | None:
    """validation.go validateRayGroupResources."""
    if any(params.get(k) for k in ("num-cpus", "num-gpus", "memory", "resources")) and resources:
        return (
            f"resource fields should not be set in both rayStartParams and Resources for "
            f"{group_name} group; please use only one"
        )
    return None


def _group_labels(group_name: str, params: dict, labels: dict) -> str | None:
    """validation.go validateRayGroupLabels."""
    if "labels" in params:
        return (
            f"rayStartParams['labels'] is not supported for {group_name} group; please use the "
            "top-level Labels field instead"
        )
    errs = [
        f"invalid label key for {group_name} group: '{k}'"
        for k in labels
        if not QUALIFIED.fullmatch(k) or len(k.split("/")[-1]) > 63
    ]
    errs += [
        f"invalid label value for key '{k}' in {group_name} group: '{v}'"
        for k, v in labels.items()
        if not LABEL_VALUE.fullmatch(v) or len(v) > 63
    ]
    return "; ".join(errs) or None


def raycluster_metadata_error(meta: dict) -> str | None:
    """validation.go ValidateRayClusterMetadata."""
    name = meta.get("name", "")
    if len(name) > MAX_RAYCLUSTER_NAME:
        return f"RayCluster name should be no more than {MAX_RAYCLUSTER_NAME} characters"
    errs = _dns1035(name)
    return f"RayCluster name should be a valid DNS1035 label: [{' '.join(errs)}]" if errs else None


def raycluster_spec_error(spec: dict, annotations: dict | None = None) -> str | None:
    """validation.go ValidateRayClusterSpec (first error, in KubeRay's order)."""
    annotations = annotations or {}
    head = spec.get("headGroupSpec") or {}
    head_pod = (head.get("template") or {}).get("spec") or {}
    if not head_pod.get("containers"):
        return "headGroupSpec should have at least one container"
    params = head.get("rayStartParams") or {}
    err = _group_resources("Head", params, head.get("resources") or {})
    err = err or _group_labels("Head", params, head.get("labels") or {})
    if err:
        return err
    autoscaling = bool(spec.get("enableInTreeAutoscaling"))
    v2 = ((spec.get("autoscalerOptions") or {}).get("version")) == "v2"
    for group in spec.get("workerGroupSpecs") or []:
        name = group.get("groupName", "")
        if not ((group.get("template") or {}).get("spec") or {}).get("containers"):
            return "workerGroupSpec should have at least one container"
        low, high = group.get("minReplicas"), group.get("maxReplicas")
        if not autoscaling and (low is None or high is None):
            return (
                f"worker group {name} must set both minReplicas and maxReplicas when "
                "autoscaling is disabled"
            )
        if low is not None and low < 0:
            return f"worker group {name} has negative minReplicas {low}"
        if high is not None and high < 0:
            return f"worker group {name} has negative maxReplicas {high}"
        if low is not None and high is not None and low > high:
            return f"worker group {name} has minReplicas {low} greater than maxReplicas {high}"
        params = group.get("rayStartParams") or {}
        err = _group_resources(name, params, group.get("resources") or {})
        err = err or _group_labels(name, params, group.get("labels") or {})
        if err:
            return err
        if group.get("idleTimeoutSeconds") is not None:  # validateWorkerGroupIdleTimeout
            if group["idleTimeoutSeconds"] < 0:
                return (
                    f"worker group {name}: idleTimeoutSeconds must be non-negative, got "
                    f"{group['idleTimeoutSeconds']}"
                )
            if not v2:
                return (
                    f"worker group {name}: idleTimeoutSeconds is set, but autoscaler v2 is not "
                    "enabled. Please set .spec.autoscalerOptions.version to 'v2' (or set "
                    "RAY_enable_autoscaler_v2 environment variable to 'true' in the head pod if "
                    "using KubeRay < 1.4.0)"
                )
    return _cluster_wide_error(spec, annotations, head_pod, autoscaling)


def _cluster_wide_error(spec: dict, annotations: dict, head_pod: dict, autoscaling: bool) -> Any:
    container = head_pod["containers"][0]
    ft = spec.get("gcsFaultToleranceOptions")
    if annotations.get("ray.io/ft-enabled") and ft is not None:
        return (
            "ray.io/ft-enabled annotation and GcsFaultToleranceOptions are both set. Please use "
            "only GcsFaultToleranceOptions to configure GCS fault tolerance"
        )
    ft_on = annotations.get("ray.io/ft-enabled", "").lower() == "true" or ft is not None
    if not ft_on and _env(container, "RAY_REDIS_ADDRESS"):
        return (
            "RAY_REDIS_ADDRESS is set which implicitly enables GCS fault tolerance, but "
            "GcsFaultToleranceOptions is not set. Please set GcsFaultToleranceOptions to enable "
            "GCS fault tolerance"
        )
    head_params = (spec.get("headGroupSpec") or {}).get("rayStartParams") or {}
    if head_params.get("redis-username") or _env(container, "REDIS_USERNAME"):
        return (
            "cannot set redis username in rayStartParams or environment variables - use "
            "GcsFaultToleranceOptions.RedisUsername instead"
        )
    v2_env = _env(container, "RAY_enable_autoscaler_v2")
    if not autoscaling and v2_env and v2_env.get("value") in ("1", "true"):
        return (
            f"environment variable RAY_enable_autoscaler_v2 cannot be set to "
            f"'{v2_env['value']}' when enableInTreeAutoscaling is false. Please set "
            "enableInTreeAutoscaling: true to use autoscaler v2"
        )
    if autoscaling:
        for group in spec.get("workerGroupSpecs") or []:
            if group.get("suspend"):
                return (
                    f"worker group {group.get('groupName')} cannot be suspended with Autoscaler "
                    "enabled"
                )
    auth = spec.get("authOptions") or {}
    k8s_auth = bool(auth.get("enableK8sTokenAuth"))
    if auth.get("mode") == "token":
        version = spec.get("rayVersion", "")
        if not version:
            return (
                "authOptions.mode is 'token' but RayVersion was not specified. Ray version "
                "2.52.0 or later is required"
            )
        parsed = _version(version)
        if parsed is None:
            return (
                f"authOptions.mode is 'token' but RayVersion format is invalid: {version}, "
                f'could not parse "{version}" as version'
            )
        if parsed < (2, 52, 0):
            return f"authOptions.mode is 'token' but minimum Ray version is 2.52.0, got {version}"
        if k8s_auth and parsed < (2, 55, 0):
            return (
                "authOptions.enableK8sTokenAuth is enabled but minimum Ray version is 2.55.0, "
                f"got {version}"
            )
        if k8s_auth and auth.get("secretName"):
            return (
                "authOptions.enableK8sTokenAuth is enabled and authOptions.secretName is also set"
            )
    elif k8s_auth:
        return "authOptions.enableK8sTokenAuth is enabled but authOptions.mode not set to 'token'"
    if spec.get("networkPolicy") is not None:
        return "spec.networkPolicy requires the RayClusterNetworkPolicy feature gate to be enabled"
    if spec.get("tlsOptions") is not None:
        return "spec.tlsOptions requires the RayClusterMTLS feature gate to be enabled"
    return None


def raycluster_upgrade_error(obj: dict) -> str | None:
    """validation.go ValidateRayClusterUpgradeOptions."""
    kind = (obj["spec"].get("upgradeStrategy") or {}).get("type")
    if kind is None:
        return None
    if kind not in ("Recreate", "None"):
        return (
            f"The RayCluster spec is invalid: Spec.UpgradeStrategy.Type value {kind} is invalid, "
            "valid options are Recreate or None"
        )
    creator = (obj["metadata"].get("labels") or {}).get("ray.io/originated-from-crd")
    if creator in ("RayJob", "RayService"):
        return f"upgradeStrategy cannot be set when RayCluster is created by {creator}"
    return None


def _raycluster_checks(obj: dict) -> list[tuple[str, str]]:
    """(Event reason, Event message) of each check that refuses `obj`, in KubeRay's order."""
    meta = obj.get("metadata") or {}
    where = f"{meta.get('namespace')}/{meta.get('name')}"
    checks = [
        ("InvalidRayClusterMetadata", "metadata", raycluster_metadata_error(meta)),
        (
            "InvalidRayClusterSpec",
            "spec",
            raycluster_spec_error(obj.get("spec") or {}, meta.get("annotations")),
        ),
        ("InvalidRayClusterSpec", "UpgradeStrategy", raycluster_upgrade_error(obj)),
    ]
    return [
        (reason, f"The RayCluster {what} is invalid {where}: {err}")
        for reason, what, err in checks
        if err
    ]


def validate_raycluster(obj: dict) -> list[str]:
    """The Event messages of KubeRay's checks that refuse `obj` (KubeRay posts the first and
    creates nothing); empty when KubeRay accepts it."""
    return [message for _, message in _raycluster_checks(obj)]


def raycluster_refusal(obj: dict) -> tuple[str, str] | None:
    """(Event reason, message) of the first check that refuses `obj`, as KubeRay posts it."""
    checks = _raycluster_checks(obj)
    return checks[0] if checks else None


def rayjob_metadata_error(meta: dict) -> str | None:
    """validation.go ValidateRayJobMetadata."""
    name = meta.get("name", "")
    if len(name) > MAX_RAYJOB_NAME:
        return (
            "The RayJob metadata is invalid: RayJob name should be no more than "
            f"{MAX_RAYJOB_NAME} characters"
        )
    errs = _dns1035(name)
    if errs:
        return (
            "The RayJob metadata is invalid: RayJob name should be a valid DNS1035 label: "
            f"[{' '.join(errs)}]"
        )
    return None


def rayjob_spec_error(obj: dict) -> str | None:
    """validation.go ValidateRayJobSpec (first error, in KubeRay's order)."""
    spec = obj.get("spec") or {}
    bad = "The RayJob spec is invalid: "
    shutdown, suspend = bool(spec.get("shutdownAfterJobFinishes")), bool(spec.get("suspend"))
    ttl = spec.get("ttlSecondsAfterFinished", 0)
    if suspend and not shutdown:
        return bad + (
            "a RayJob with shutdownAfterJobFinishes set to false is not allowed to be suspended"
        )
    if ttl < 0:
        return bad + "TTLSecondsAfterFinished must be a non-negative integer"
    if not shutdown and ttl > 0:  # validateDeletionConfiguration
        return bad + (
            "a RayJob with shutdownAfterJobFinishes set to false cannot have "
            "TTLSecondsAfterFinished"
        )
    selector = spec.get("clusterSelector") or {}
    mode, backoff = spec.get("submissionMode", "K8sJobMode"), spec.get("backoffLimit")
    if suspend and selector:
        return bad + "the ClusterSelector mode doesn't support the suspend operation"
    if spec.get("rayClusterSpec") is None and not selector:
        return bad + "one of RayClusterSpec or ClusterSelector must be set"
    if selector:
        if not selector.get("ray.io/cluster"):
            return "cluster name in ClusterSelector should not be empty"
        if mode == "SidecarMode":
            return "ClusterSelector is not supported in SidecarMode"
        if backoff is not None and backoff > 0:
            return bad + "BackoffLimit is incompatible with ClusterSelector mode"
    if mode == "InteractiveMode" and backoff is not None and backoff > 0:
        return bad + "BackoffLimit is incompatible with InteractiveMode"
    if mode == "SidecarMode" and spec.get("submitterPodTemplate") is not None:
        return "Currently, SidecarMode doesn't support SubmitterPodTemplate"
    if spec.get("rayClusterSpec") is not None:
        if (spec["rayClusterSpec"].get("authOptions") or {}).get("enableK8sTokenAuth"):
            return bad + "K8s token auth mode is currently not supported for RayJob"
        err = raycluster_spec_error(spec["rayClusterSpec"], obj["metadata"].get("annotations"))
        if err:
            return bad + err
    try:  # dashboardclient.UnmarshalRuntimeEnvYAML
        yaml.safe_load(spec.get("runtimeEnvYAML") or "")
    except yaml.YAMLError as exc:
        return f"failed to unmarshal RuntimeEnvYAML: {spec['runtimeEnvYAML']}: {exc}"
    for key, what in (
        ("activeDeadlineSeconds", "activeDeadlineSeconds"),
        ("preRunningDeadlineSeconds", "preRunningDeadlineSeconds"),
    ):
        if spec.get(key) is not None and spec[key] <= 0:
            return bad + f"{what} must be a positive integer"
    if backoff is not None and backoff < 0:
        return bad + "backoffLimit must be a positive integer"
    return None


def validate_rayjob(obj: dict) -> list[str]:
    """The errors KubeRay's validateRayJob reports for `obj` (it acts on the first: status
    ValidationFailed with it as message); empty when KubeRay accepts it."""
    errs = [rayjob_metadata_error(obj.get("metadata") or {}), rayjob_spec_error(obj)]
    status = obj.get("status") or {}
    if status.get("jobDeploymentStatus") == "Waiting" and (
        (obj.get("spec") or {}).get("submissionMode") != "InteractiveMode"
    ):
        errs.append(  # ValidateRayJobStatus
            "The RayJob status is invalid: JobDeploymentStatus cannot be `Waiting` when "
            "SubmissionMode is not InteractiveMode"
        )
    return [e for e in errs if e]
