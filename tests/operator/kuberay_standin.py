"""A stand-in for KubeRay on one machine, so the operator and the real pipeline run together.

It polls the API emulator for the RayClusters and RayJobs of one namespace and does, on a local
multi-node Ray (`ray.cluster_utils.Cluster`), what KubeRay v1.7 does on Kubernetes. The test
drives it: `wait` polls between its checks, so it acts only while a test waits (a controller
that is slow in between). Not a thread: `Cluster.add_node` must run in the main thread (a Ray
node installs signal handlers).

What it reproduces:
- one Ray node per worker pod, started with the group's `rayStartParams`: `num-cpus`,
  `object-store-memory`, the custom resources of `resources` (the quoted JSON string parsed),
  and `node-name` with `$(VAR)` expanded from the container's env as Kubernetes does (the
  downward-API `metadata.name` is the pod name), so a RayCluster rendered with
  `node-name: "$(POD_NAME)"` gives nodes named after their pods;
- worker pods in the emulator, named `<cluster>-<group>-worker-<5 random chars>`, with the
  template's labels plus KubeRay's (`ray.io/cluster`, `ray.io/group`, `ray.io/node-type`), an
  owner reference to the RayCluster, Pending until their node is up, then Ready;
- scaling a group: first every pod named in `scaleStrategy.workersToDelete` is deleted (pod
  and node), then the list is cleared (a JSON patch that tests the list is unchanged), then
  pods are added up to `replicas`, or, when more pods than `replicas` remain, arbitrary pods
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
  Running -> Complete/Failed and `jobStatus` RUNNING -> SUCCEEDED/FAILED from its exit code.

What it does not reproduce: the head pod's own Ray node (every RayCluster shares the module's
local head, started with the head group's `num-cpus: 0`, whose node name is not the head pod's),
images, containers' resource limits, GPUs, `/dev/shm`, volumes other than ConfigMaps
(a PersistentVolumeClaim's mount path is used as a local path: tests point
`spec.cluster.output.mountPath` at a temporary directory), token authentication with a
Secret (the local Ray's own token is used), KubeRay's submitter Job, the Ray job server,
runtime environments and retries (`backoffLimit`), services, the autoscaler, suspend,
`upgradeStrategy`, the termination grace period (a deleted pod's node gets SIGTERM and stops
at once; the GCS tolerates 20 missed health checks instead of 5), probes,
KubeRay's conditions and events, and rate limits. Whether KubeRay persists the cleared
`workersToDelete` list (rather than only acting on it) is not verified here.

`ray.cluster_utils.Cluster` works without connecting this process to Ray (checked with Ray
2.60): `add_node(wait=True)` waits through the GCS address (`ray._private.services.
wait_for_node`), `remove_node` kills the node's processes; only `connect()` or `ray.init`
would attach this process, and a test process may already hold the session's local Ray.
Starting the head takes about 3.5 s here, each worker node 2-3 s (one at a time). `Cluster` writes the
cluster address to `$RAY_TMPDIR/ray/ray_current_cluster`, where `ray.init("auto")` looks:
`local_cluster` sets RAY_TMPDIR to a private directory so no other Ray user of the machine
finds this cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
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

from peaknet_pipeline.kube import KubeClient, KubeError

RAY = "/apis/ray.io/v1/namespaces/{ns}"
CORE = "/api/v1/namespaces/{ns}"
POLL_S = 0.2
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


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion in a container's command and args."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), text)


def container_env(container: dict, pod_name: str) -> dict[str, str]:
    """Plain values and the downward API's metadata.name (what the renderers use)."""
    env = {}
    for entry in container.get("env", []):
        field = ((entry.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        elif field == "metadata.name":
            env[entry["name"]] = pod_name
    return env


def node_args(group: dict, pod_name: str) -> dict[str, Any]:
    """`Cluster.add_node` arguments for one pod of a worker group."""
    params = group.get("rayStartParams", {})
    args: dict[str, Any] = {"num_cpus": int(params.get("num-cpus", "1"))}
    if "object-store-memory" in params:
        args["object_store_memory"] = int(params["object-store-memory"])
    if "resources" in params:
        args["resources"] = json.loads(json.loads(params["resources"]))
    if "node-name" in params:
        container = group["template"]["spec"]["containers"][0]
        args["node_name"] = expand(params["node-name"], container_env(container, pod_name))
    return args


class KubeRayStandIn:
    """Plays KubeRay for one namespace of the emulator on a local `Cluster` (see above)."""

    def __init__(self, api_url: str, namespace: str, cluster: Any, workdir: Path) -> None:
        self.api, self.url, self.ns = KubeClient(api_url), api_url, namespace
        self.cluster, self.workdir = cluster, workdir
        self.nodes: dict[str, Any] = {}  # pod name -> Ray node
        self.deleted: list[tuple[str, str]] = []  # (pod, why): "workersToDelete" or "arbitrary"
        self.jobs: dict[str, subprocess.Popen] = {}
        self.timeline: list[tuple[float, str]] = []  # (time.monotonic(), what happened)

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
        self.api.merge_patch(path, {"status": status})

    # -- RayCluster -------------------------------------------------------------------------
    def _reconcile_cluster(self, rc: dict) -> None:
        name = rc["metadata"]["name"]
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
        if named:
            self._clear_workers_to_delete(name, index, named)
        missing = int(group.get("replicas", 0)) - len(pods)
        for _ in range(missing):
            self._add_pod(rc, group)
        for pod in list(pods)[: max(0, -missing)]:
            self._delete_pod(pod, "arbitrary")

    def _clear_workers_to_delete(self, name: str, index: int, named: list[str]) -> None:
        where = f"/spec/workerGroupSpecs/{index}/scaleStrategy/workersToDelete"
        ops = [
            {"op": "test", "path": where, "value": named},
            {"op": "replace", "path": where, "value": []},
        ]
        try:
            self.api.request(
                "PATCH", self._path(RAY, "rayclusters", name), ops, "application/json-patch+json"
            )
        except KubeError as exc:
            if "HTTP 422" not in str(exc):  # the operator changed the list meanwhile: next poll
                raise

    def _add_pod(self, rc: dict, group: dict) -> None:
        name, group_name = rc["metadata"]["name"], group["groupName"]
        suffix = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(5))
        pod_name = f"{name}-{group_name}-worker-{suffix}"
        labels = dict(group["template"].get("metadata", {}).get("labels", {}))
        labels |= {"ray.io/cluster": name, "ray.io/group": group_name, "ray.io/node-type": "worker"}
        owner = {
            "apiVersion": "ray.io/v1",
            "kind": "RayCluster",
            "name": name,
            "uid": rc["metadata"]["uid"],
            "controller": True,
        }
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod_name, "labels": labels, "ownerReferences": [owner]},
            "spec": group["template"]["spec"],
            "status": {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}]},
        }
        self.api.request("POST", f"{CORE.format(ns=self.ns)}/pods", pod, "application/json")
        self.nodes[pod_name] = self.cluster.add_node(wait=True, **node_args(group, pod_name))
        self._note(f"pod {pod_name} ready")
        ready = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
        self.api.merge_patch(self._path(CORE, "pods", pod_name), {"status": ready})

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
        if proc is None:
            rc = clusters.get(job["spec"].get("clusterSelector", {}).get("ray.io/cluster", ""))
            if rc is not None and (rc.get("status") or {}).get("state") == "ready":
                self.jobs[name] = self._start_driver(job, rc)
                self._note(f"driver {name} started")
                status = {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}
                self._patch_status("rayjobs", job, {**status, "startTime": _now()})
            return
        code = proc.poll()
        if code is None or (job.get("status") or {}).get("jobStatus") in ("SUCCEEDED", "FAILED"):
            return
        self._note(f"driver {name} exited with code {code}")
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
