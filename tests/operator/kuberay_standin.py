"""A stand-in for KubeRay on one machine, so the operator and the real pipeline run together.

It polls the API emulator for the RayClusters and RayJobs of one namespace and does, on a local
multi-node Ray (`ray.cluster_utils.Cluster`), what KubeRay v1.7 does on Kubernetes. The test
drives it: `wait` polls between its checks, so it acts only while a test waits (a controller
that is slow in between). Not a thread: `Cluster.add_node` must run in the main thread (a Ray
node installs signal handlers).

What it reproduces (KubeRay's own rules are in kuberay_rules.py, each naming its Go source):
- KubeRay's validation: a RayCluster it refuses gets KubeRay's Warning Event and no pods; a
  RayJob it refuses gets `jobDeploymentStatus: ValidationFailed` with KubeRay's message;
- pods built as KubeRay's pod builder builds them (common/pod.go BuildPod): its labels, the
  `/dev/shm` memory emptyDir sized to the memory limit, the wait-gcs-ready init container, the
  env it injects (token auth included), the metrics port and the generated `ray start` command;
  a start parameter KubeRay cannot read (the `resources` JSON) makes KubeRay log an error and
  skip `num-gpus`: here it fails the test;
- one Ray node per worker pod, started with the flags of that command after Kubernetes'
  `$(VAR)` expansion and bash's unquoting: `num-cpus`, `num-gpus` and `memory` (from the
  container's limits when not given), `object-store-memory`, `resources` (parsed as `ray
  start` parses it) and `node-name` (the downward-API `metadata.name` is the pod name);
- pods in the emulator: the head pod (Ready, `podIP` 127.0.0.1: the driver runs here, so the
  ports it serves, the live page's, answer there), and worker pods named
  `<cluster>-<group>-worker-<5 random chars>`, owned by the RayCluster, Pending until their
  node is up, then Ready; for a K8sJobMode RayJob, the submitter pod from its
  `submitterPodTemplate`, else with KubeRay's default requests (500m CPU, 200Mi), Running
  while the driver runs, then Succeeded or Failed;
- scaling a group: first every pod named in `scaleStrategy.workersToDelete` that exists is
  deleted (pod and node), on every poll, and the stored list is left as it is (KubeRay clears
  only its in-memory copy: ray-operator/controllers/ray/raycluster_controller.go,
  reconcilePods; the operator empties the list itself), then pods are added up to `replicas`, or, when more pods than `replicas` remain, arbitrary pods
  are deleted (what KubeRay does when a patch lowers replicas without naming pods; every
  deletion is recorded in `deleted` with its reason, so a test can assert it never happened);
- a pod whose object disappears (a test deleting it, as a node failure would, or the garbage
  collector after the RayCluster was deleted) loses its node, and is replaced while
  `replicas` still counts it;
- RayCluster status: `state: ready` once every group has its pods Ready (it then stays, as
  KubeRay's provisioned state does), `readyWorkerReplicas`, `availableWorkerReplicas`, `desiredWorkerReplicas`,
  `minWorkerReplicas`, `maxWorkerReplicas`;
- a RayJob whose `clusterSelector` names a ready RayCluster: its entrypoint runs as a
  subprocess (the venv's scripts on PATH) against the local Ray (`RAY_ADDRESS`), with every
  ConfigMap volume the head container mounts written to a temporary directory and the
  entrypoint's paths under its mount path rewritten there, the head container's plain `env`,
  and `PEAKNET_KUBE_API_URL` pointing at the emulator; RayJob status `jobDeploymentStatus`
  Running -> Complete/Failed and `jobStatus` RUNNING -> SUCCEEDED/FAILED from its exit code;
  a running RayJob whose selected RayCluster is gone (deleted before KubeRay saw the job end)
  loses its driver with the head and stays Running for good, with a RayClusterNotFound
  Warning (rayjob_controller.go: getOrCreateRayClusterInstance), as on a real cluster.

What it does not reproduce: the head pod's own Ray node (every RayCluster shares the module's
local head, started with the head group's `num-cpus: 0`, whose node name is not the head pod's),
scheduling (pods never stay Pending for lack of room; see the operator's scheduling check),
images, containers' limits as enforced limits, GPUs as devices, volumes other than ConfigMaps
(a PersistentVolumeClaim's mount path is used as a local path: tests point
`spec.cluster.output.mountPath` at a temporary directory; fsGroup and affinity are not
acted on), token authentication with a Secret (the local Ray's own token is used), the
submitter's Job object and its `ray job submit` (the entrypoint runs here directly), the Ray
job server, runtime environments and retries (`backoffLimit`), services, the autoscaler,
suspend, `upgradeStrategy`, the termination grace period (a deleted pod's node gets SIGTERM
and stops at once; the GCS tolerates 20 missed health checks instead of 5), probes, KubeRay's
conditions and events other than those named above, and rate limits.

`ray.cluster_utils.Cluster` works without connecting this process to Ray (checked with Ray
2.60): `add_node(wait=True)` waits through the GCS address (`ray._private.services.
wait_for_node`), `remove_node` kills the node's processes; only `connect()` or `ray.init`
would attach this process, and a test process may already hold the session's local Ray.
Starting the head takes about 3.5 s here, each worker node 2-3 s (one at a time). `Cluster`
writes the cluster address to `$RAY_TMPDIR/ray/ray_current_cluster`, where `ray.init("auto")` looks:
`local_cluster` sets RAY_TMPDIR to a private directory so no other Ray user of the machine
finds this cluster.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import shutil
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kuberay_rules import BuiltPod, build_pod, raycluster_refusal, submitter_pod, validate_rayjob
from ray_nodes import container_env, node_args

from peaknet_pipeline.kube import KubeClient, KubeError

RAY = "/apis/ray.io/v1/namespaces/{ns}"
CORE = "/api/v1/namespaces/{ns}"
POLL_S = 0.2
HEAD_POD_IP = "127.0.0.1"  # the head pod's status.podIP: its driver runs on this machine
HEAD_STORE_BYTES = 100 << 20
# Missed health checks (3 s apart) before the GCS declares a node dead; Ray's default, 5, lets
# a busy 2-core machine lose nodes that are only slow. Deleted pods stop their node gracefully,
# so the GCS learns of those at once.
HEALTH_CHECK_FAILURES = 20


@contextlib.contextmanager
def local_cluster() -> Iterator[Any]:
    """A local Ray head (0 CPUs, like the rendered head group) in a private RAY_TMPDIR."""
    from ray.cluster_utils import Cluster

    before = os.environ.get("RAY_TMPDIR")
    tmp = tempfile.mkdtemp(prefix="pnp-ray-", dir="/tmp")  # short: socket paths are limited
    os.environ["RAY_TMPDIR"] = tmp
    cluster = None
    try:
        head = dict(
            num_cpus=0,
            object_store_memory=HEAD_STORE_BYTES,
            include_dashboard=False,
            _system_config={"health_check_failure_threshold": HEALTH_CHECK_FAILURES},
        )
        cluster = Cluster(initialize_head=True, head_node_args=head)
        yield cluster
    finally:
        if cluster is not None:
            cluster.shutdown()
        if before is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = before
        shutil.rmtree(tmp, ignore_errors=True)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class KubeRayStandIn:
    """Plays KubeRay for one namespace of the emulator on a local `Cluster` (see above)."""

    def __init__(self, api_url: str, namespace: str, cluster: Any, workdir: Path) -> None:
        self.api, self.url, self.ns = KubeClient(api_url), api_url, namespace
        self.cluster, self.workdir = cluster, workdir
        self.nodes: dict[str, Any] = {}  # pod name -> Ray node
        self.deleted: list[tuple[str, str]] = []  # (pod, why): "workersToDelete" or "arbitrary"
        self.jobs: dict[str, subprocess.Popen] = {}
        self.timeline: list[tuple[float, str]] = []  # (time.monotonic(), what happened)
        self.refused: dict[str, str] = {}  # object -> KubeRay's validation message
        self.submitters: dict[str, str] = {}  # RayJob -> its submitter pod

    # -- driving it ------------------------------------------------------------------------
    def wait(self, check: Callable[[], Any], what: str, timeout_s: float) -> Any:
        """Poll (act as KubeRay) until `check()` is truthy; fail naming `what` after the
        timeout, with the driver's log."""
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            self.poll()
            last = check()
            if last:
                return last
            time.sleep(POLL_S)
        logs = "\n".join(f"--- {job}\n{self.driver_log(job)[-4000:]}" for job in self.jobs)
        raise AssertionError(f"timed out waiting for {what} (last: {last!r})\n{logs}")

    def stop(self) -> None:
        """Kill a driver still running and every node this stand-in added."""
        for proc in self.jobs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for node in self.nodes.values():
            self.cluster.remove_node(node, allow_graceful=True)
        self.nodes.clear()

    def driver_log(self, job: str) -> str:
        path = self.workdir / f"{job}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def poll(self) -> None:
        """One pass of KubeRay's work over the namespace."""
        pods = {p["metadata"]["name"] for p in self._list(CORE, "pods", "ray.io/node-type=worker")}
        for gone in [pod for pod in self.nodes if pod not in pods]:
            self.cluster.remove_node(self.nodes.pop(gone), allow_graceful=True)
        clusters = {rc["metadata"]["name"]: rc for rc in self._list(RAY, "rayclusters")}
        for rc in clusters.values():
            self._reconcile_cluster(rc)
        for job in self._list(RAY, "rayjobs"):
            self._reconcile_job(job, clusters)

    # -- API --------------------------------------------------------------------------------
    def _list(self, base: str, plural: str, selector: str = "") -> list[dict]:
        query = f"?labelSelector={selector}" if selector else ""
        return self.api.get(f"{base.format(ns=self.ns)}/{plural}{query}").get("items", [])

    def _path(self, base: str, plural: str, name: str, sub: str = "") -> str:
        return f"{base.format(ns=self.ns)}/{plural}/{name}" + (f"/{sub}" if sub else "")

    def _patch_status(self, plural: str, obj: dict, status: dict) -> None:
        if all((obj.get("status") or {}).get(k) == v for k, v in status.items()):
            return
        path = self._path(RAY, plural, obj["metadata"]["name"], "status")
        try:
            self.api.merge_patch(path, {"status": status})
        except KubeError as exc:  # deleted since it was listed: KubeRay ignores NotFound too
            if "HTTP 404" not in str(exc):
                raise

    # -- RayCluster -------------------------------------------------------------------------
    def _reconcile_cluster(self, rc: dict) -> None:
        name = rc["metadata"]["name"]
        refusal = raycluster_refusal(rc)
        if refusal is not None:  # raycluster_controller.go: an Event, no pods, no status
            self._refuse(rc, "RayCluster", *refusal)
            return
        self._ensure_head(rc)
        groups = rc["spec"].get("workerGroupSpecs", [])
        for index, group in enumerate(groups):
            self._reconcile_group(rc, index, group)
        ready = 0
        for group in groups:
            selector = f"ray.io/cluster={name},ray.io/group={group['groupName']}"
            ready += sum(self._is_ready(p) for p in self._list(CORE, "pods", selector))
        desired = sum(int(g.get("replicas", 0)) for g in groups)
        status = {
            "readyWorkerReplicas": ready,
            "availableWorkerReplicas": ready,
            "desiredWorkerReplicas": desired,
            "minWorkerReplicas": sum(int(g.get("minReplicas", 0)) for g in groups),
            "maxWorkerReplicas": sum(int(g.get("maxReplicas", 0)) for g in groups),
        }
        if ready == desired or (rc.get("status") or {}).get("state") == "ready":
            status["state"] = "ready"
        self._patch_status("rayclusters", rc, status)

    @staticmethod
    def _is_ready(pod: dict) -> bool:
        conditions = (pod.get("status") or {}).get("conditions", [])
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    def _reconcile_group(self, rc: dict, index: int, group: dict) -> None:
        name, group_name = rc["metadata"]["name"], group["groupName"]
        selector = f"ray.io/cluster={name},ray.io/group={group_name}"
        pods = {p["metadata"]["name"]: p for p in self._list(CORE, "pods", selector)}
        named = list((group.get("scaleStrategy") or {}).get("workersToDelete") or [])
        for pod in named:
            if pod in pods:
                self._delete_pod(pods.pop(pod)["metadata"]["name"], "workersToDelete")
        missing = int(group.get("replicas", 0)) - len(pods)
        for _ in range(missing):
            self._add_pod(rc, group)
        for pod in list(pods)[: max(0, -missing)]:
            self._delete_pod(pod, "arbitrary")

    def _refuse(
        self, obj: dict, kind: str, reason: str, message: str, action: str = "Validate"
    ) -> None:
        """KubeRay's Warning Event for an object it cannot act on (once per message)."""
        key = f"{kind}/{obj['metadata']['name']}"
        if self.refused.get(key) == message:
            return
        self.refused[key] = message
        self._note(f"{key} refused: {message}")
        ref = {"apiVersion": "ray.io/v1", "kind": kind, "name": obj["metadata"]["name"]}
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{obj['metadata']['name']}."},
            "involvedObject": ref | {"namespace": self.ns, "uid": obj["metadata"].get("uid")},
            "type": "Warning",
            "reason": reason,
            "action": action,
            "message": message,
            "source": {"component": f"{kind.lower()}-controller"},
        }
        self.api.request("POST", f"{CORE.format(ns=self.ns)}/events", event, "application/json")

    def _build(self, rc: dict, group_name: str | None, pod_name: str) -> BuiltPod:
        """The pod as KubeRay builds it. An error KubeRay would only log (an unreadable
        `resources` start parameter: num-gpus not derived) fails the test here."""
        built = build_pod(rc, group_name, pod_name)
        if built.start.log:
            raise AssertionError(f"KubeRay would log building {pod_name}: {built.start.log}")
        built.manifest["metadata"].pop("namespace", None)
        return built

    @staticmethod
    def _suffix() -> str:
        return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(5))

    def _ensure_head(self, rc: dict) -> None:
        """The head pod object (its Ray node is the module's local head, see above). Its
        `podIP` is loopback: the driver it runs is a process of this machine, so what the
        head container listens on (the live page) is reached there, as `kubectl
        port-forward pod/<head>` reaches the pod's own address."""
        name = rc["metadata"]["name"]
        if self._list(CORE, "pods", f"ray.io/cluster={name},ray.io/node-type=head"):
            return
        built = self._build(rc, None, f"{name}-head-{self._suffix()}")
        ready = {"phase": "Running", "podIP": HEAD_POD_IP}
        ready["conditions"] = [{"type": "Ready", "status": "True"}]
        pod = built.manifest | {"status": ready}
        self.api.request("POST", f"{CORE.format(ns=self.ns)}/pods", pod, "application/json")

    def _add_pod(self, rc: dict, group: dict) -> None:
        name, group_name = rc["metadata"]["name"], group["groupName"]
        pod_name = f"{name}-{group_name}-worker-{self._suffix()}"
        built = self._build(rc, group_name, pod_name)
        pending = {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}]}
        pod = built.manifest | {"status": pending}
        self.api.request("POST", f"{CORE.format(ns=self.ns)}/pods", pod, "application/json")
        self.nodes[pod_name] = self.cluster.add_node(wait=True, **node_args(built))
        ready = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
        try:
            self.api.merge_patch(self._path(CORE, "pods", pod_name), {"status": ready})
        except KubeError as exc:  # deleted while its node started (its RayCluster went)
            if "HTTP 404" not in str(exc):
                raise
            self._delete_pod(pod_name, "deleted while starting")
            return
        self._note(f"pod {pod_name} ready")

    def _delete_pod(self, pod: str, why: str) -> None:
        node = self.nodes.pop(pod, None)
        if node is not None:
            self.cluster.remove_node(node, allow_graceful=True)
        try:
            self.api.request("DELETE", self._path(CORE, "pods", pod))
        except KubeError as exc:
            if "HTTP 404" not in str(exc):
                raise
        self.deleted.append((pod, why))
        self._note(f"pod {pod} deleted ({why})")

    def _note(self, what: str) -> None:
        self.timeline.append((time.monotonic(), what))

    # -- RayJob -----------------------------------------------------------------------------
    def _reconcile_job(self, job: dict, clusters: dict[str, dict]) -> None:
        name = job["metadata"]["name"]
        proc = self.jobs.get(name)
        errors = validate_rayjob(job)
        if proc is None and errors:  # rayjob_controller.go Reconcile: ValidationFailed
            reason = "InvalidRayJobMetadata" if "metadata" in errors[0] else "InvalidRayJobSpec"
            self._refuse(job, "RayJob", reason, f"{self.ns}/{name}: {errors[0]}")
            failed = {"jobDeploymentStatus": "ValidationFailed", "reason": "ValidationFailed"}
            self._patch_status("rayjobs", job, failed | {"message": errors[0]})
            return
        if proc is None:
            rc = clusters.get(job["spec"].get("clusterSelector", {}).get("ray.io/cluster", ""))
            if rc is not None and (rc.get("status") or {}).get("state") == "ready":
                if job["spec"].get("submissionMode", "K8sJobMode") == "K8sJobMode":
                    self._add_submitter(job, rc)
                self.jobs[name] = self._start_driver(job, rc)
                self._note(f"driver {name} started")
                status = {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}
                self._patch_status("rayjobs", job, {**status, "startTime": _now()})
            return
        if (job.get("status") or {}).get("jobStatus") in ("SUCCEEDED", "FAILED"):
            return
        selected = job["spec"].get("clusterSelector", {}).get("ray.io/cluster", "")
        if selected not in clusters:
            # rayjob_controller.go, Running: getOrCreateRayClusterInstance finds no cluster
            # for the selector, warns RayClusterNotFound and requeues; the RayJob's status
            # never moves again. The driver ran on the head, which went with its cluster.
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            message = f"clusterSelector mode is enabled, but RayCluster {selected} is not found"
            self._refuse(job, "RayJob", "RayClusterNotFound", message, "GetRayCluster")
            return
        code = proc.poll()
        if code is None:
            return
        self._note(f"driver {name} exited with code {code}")
        if name in self.submitters:  # the submitter's `ray job logs --follow` ends with it
            phase = {"status": {"phase": "Succeeded" if code == 0 else "Failed"}}
            with contextlib.suppress(KubeError):  # gone with its RayJob
                self.api.merge_patch(self._path(CORE, "pods", self.submitters[name]), phase)
        self._patch_status(
            "rayjobs",
            job,
            {
                "jobDeploymentStatus": "Complete" if code == 0 else "Failed",
                "jobStatus": "SUCCEEDED" if code == 0 else "FAILED",
                "message": f"the driver exited with code {code}",
                "endTime": _now(),
            },
        )

    def _add_submitter(self, job: dict, rc: dict) -> None:
        """The submitter Job's pod KubeRay creates in K8sJobMode (Running while the driver
        runs here): its requests count where pods are scheduled."""
        name = job["metadata"]["name"]
        pod = submitter_pod(job, rc, f"{name}-{self._suffix()}")
        pod["metadata"].pop("namespace", None)
        owner = {"apiVersion": "ray.io/v1", "kind": "RayJob", "name": name, "controller": True}
        pod["metadata"]["ownerReferences"] = [owner | {"uid": job["metadata"].get("uid", "")}]
        pod["status"] = {"phase": "Running"}
        self.api.request("POST", f"{CORE.format(ns=self.ns)}/pods", pod, "application/json")
        self.submitters[name] = pod["metadata"]["name"]

    def _mounts(self, head: dict) -> dict[str, str]:
        """Mount path -> local directory for every ConfigMap the head container mounts."""
        volumes = {v["name"]: v for v in head["spec"].get("volumes", [])}
        local = {}
        for mount in head["spec"]["containers"][0].get("volumeMounts", []):
            source = volumes[mount["name"]].get("configMap")
            if source is None:
                continue
            config_map = self.api.get(self._path(CORE, "configmaps", source["name"]))
            directory = self.workdir / "mounts" / mount["name"]
            directory.mkdir(parents=True, exist_ok=True)
            for key, text in config_map.get("data", {}).items():
                (directory / key).write_text(text)
            local[mount["mountPath"].rstrip("/")] = str(directory)
        return local

    def _start_driver(self, job: dict, rc: dict) -> subprocess.Popen:
        head = rc["spec"]["headGroupSpec"]["template"]
        mounts = self._mounts(head)
        argv = []
        for arg in shlex.split(job["spec"]["entrypoint"]):
            for mount_path, directory in mounts.items():
                if arg == mount_path or arg.startswith(mount_path + "/"):
                    arg = directory + arg[len(mount_path) :]
            argv.append(arg)
        env = dict(os.environ)
        env |= container_env(head["spec"]["containers"][0], f"{rc['metadata']['name']}-head")
        env |= {
            "PEAKNET_KUBE_API_URL": self.url,
            "RAY_ADDRESS": self.cluster.address,
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        }
        log = (self.workdir / f"{job['metadata']['name']}.log").open("w")
        return subprocess.Popen(
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
        )
