"""The pipeline's side of the Kubernetes contract: report progress into its own resource.

On Kubernetes the operator renders the driver (the head pod runs `peaknet-pipeline run`) with
environment variables naming the PeakNetPipeline it belongs to. This module reads them, talks to
the API server with a tiny standard-library client (in-cluster service-account token and CA),
and merge-patches `status.driver` of that resource through the `/status` subresource: progress
while running (only when something changed, at most every `min_interval_s`), and once at the
end, with the verdict (is inference fed, and if not what holds it back). The driver's
service account needs exactly `get` on its resource and `patch` on its
status. The live page's address (monitor.live_page) goes into `status.driver.livePage` while
the page is served; the operator makes the in-cluster address of it (status.livePage). It
also reads the desired inference actor count from the resource's spec (used by elastic scaling), and on that same read follows the resource's deletion: a resource being
deleted (metadata.deletionTimestamp: the operator's finalizer holds it) stops ingest as
`peaknet-pipeline stop` does, so the driver drains and closes the current DAQ run's files
while the pods still run (the operator lets the deletion go on once status.driver says the
driver ended).

Without those variables (every local run) nothing here does anything: `status_publisher()`
returns a publisher whose methods are no-ops. Publishing never fails a run: an API error is
logged (once per kind of error) and the run goes on.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "peaknet.slac.stanford.edu", "v1alpha1", "peaknetpipelines"
ENV_NAME = "PEAKNET_RESOURCE_NAME"
ENV_NAMESPACE = "PEAKNET_RESOURCE_NAMESPACE"
# Overrides the in-cluster API address (tests point it at an API emulator over plain HTTP).
ENV_API_URL = "PEAKNET_KUBE_API_URL"
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# spec.cluster.inference defaults of the operator's models (a test checks they agree).
DEFAULT_INFERENCE_REPLICAS = 1
DEFAULT_ACTORS_PER_WORKER = 1
PUBLISH_INTERVAL_S = 5.0
# What ended a run whose resource was deleted (report.json's ended_by, status.driver.endedBy);
# the operator counts it, like `peaknet-pipeline stop`, as an end on purpose.
DELETION_STOP = "the resource's deletion"
REQUEST_TIMEOUT_S = 3.0


class KubeError(RuntimeError):
    """An API request failed; the message names the request and the server's answer."""


@dataclass(frozen=True)
class ResourceRef:
    """The PeakNetPipeline this process belongs to."""

    name: str
    namespace: str

    def path(self, subresource: str = "") -> str:
        base = f"/apis/{GROUP}/{VERSION}/namespaces/{self.namespace}/{PLURAL}/{self.name}"
        return f"{base}/{subresource}" if subresource else base


class KubeClient:
    """GET and merge-PATCH against the API server, JSON in and out, nothing else."""

    def __init__(self, base_url: str, token: str | None = None, ca_file: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self._ssl = ssl.create_default_context(cafile=ca_file) if ca_file else None

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> KubeClient:
        """In-cluster settings, or the API URL override (then a token only if mounted)."""
        token_file, ca_file = SERVICE_ACCOUNT_DIR / "token", SERVICE_ACCOUNT_DIR / "ca.crt"
        token = token_file.read_text().strip() if token_file.is_file() else None
        if env.get(ENV_API_URL):
            return cls(env[ENV_API_URL], token)
        host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
        if not host or not port:
            raise KubeError(
                f"{ENV_NAME} is set but neither {ENV_API_URL} nor KUBERNETES_SERVICE_HOST/PORT"
            )
        host = f"[{host}]" if ":" in host else host  # an IPv6 service address
        return cls(f"https://{host}:{port}", token, str(ca_file) if ca_file.is_file() else None)

    def request(self, method: str, path: str, body: Any = None, content_type: str = "") -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if content_type:
            req.add_header("Content-Type", content_type)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S, context=self._ssl) as r:
                return json.loads(r.read() or b"null")
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode(errors="replace")
            raise KubeError(f"{method} {path}: HTTP {exc.code} {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise KubeError(f"{method} {path}: {exc}") from None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def merge_patch(self, path: str, body: Mapping[str, Any]) -> Any:
        return self.request("PATCH", path, dict(body), "application/merge-patch+json")


def resource_from_env(env: Mapping[str, str] = os.environ) -> ResourceRef | None:
    """The resource named by the renderer's variables, or None for a local run."""
    name, namespace = env.get(ENV_NAME), env.get(ENV_NAMESPACE)
    return ResourceRef(name, namespace) if name and namespace else None


def desired_inference_actors(client: KubeClient, ref: ResourceRef) -> int:
    """Inference actors the resource asks for: spec.cluster.inference replicas x actorsPerWorker."""
    return inference_actors_of(client.get(ref.path()))


def inference_actors_of(resource: Mapping[str, Any]) -> int:
    """spec.cluster.inference replicas x actorsPerWorker of a resource as read."""
    spec = resource.get("spec", {})
    group = (spec.get("cluster") or {}).get("inference") or {}
    replicas = group.get("replicas", DEFAULT_INFERENCE_REPLICAS)
    return int(replicas) * int(group.get("actorsPerWorker", DEFAULT_ACTORS_PER_WORKER))


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class NullPublisher:
    """What a local run gets: every call does nothing."""

    def started(self, pipeline: Any) -> None:
        pass

    def progress(self, snap: Any) -> None:
        pass

    def failed(self, error: str) -> None:
        pass

    def finish(self, report: Mapping[str, Any]) -> None:
        pass

    def pool_changed(self, state: Any) -> None:
        pass

    def daq_runs(self, status: Mapping[str, Any]) -> None:
        """A service's DAQ runs (monitor/daqruns.py DaqRunTracker.status)."""

    def live_page(self, url: str | None) -> None:
        """The live page's address as the driver serves it (None: it stopped serving)."""

    def desired_inference(self) -> int | None:
        """The inference actor count the resource asks for (None: nothing to follow)."""
        return None


class StatusPublisher(NullPublisher):
    """Patches `status.driver` of one resource: on start, on progress that changed (at most
    every `min_interval_s`), on a start-up failure, and once at the end with the report."""

    def __init__(
        self,
        client: KubeClient,
        ref: ResourceRef,
        min_interval_s: float = PUBLISH_INTERVAL_S,
        clock: Any = time.monotonic,
    ) -> None:
        self.client, self.ref = client, ref
        self.min_interval_s = min_interval_s
        self.clock = clock
        self._pipeline: Any = None
        self._published: dict[str, Any] = {}
        self._last_t: float | None = None
        self._last_counts: tuple[float, int] | None = None  # (time, frames inferred)
        self._errors_logged: set[str] = set()
        self._daq_runs: dict[str, Any] | None = None  # a service's, published with progress

    def started(self, pipeline: Any) -> None:
        self._pipeline = pipeline
        self._publish({"state": "Running", **self._pool_fields(pipeline.pool.state())})

    def pool_changed(self, state: Any) -> None:
        """The pool started, retired or released something: published at once (the operator
        waits for releasedPods to scale a group down)."""
        fields = self._pool_fields(state)
        if any(self._published.get(k) != v for k, v in fields.items()):
            self._publish(fields)

    def daq_runs(self, status: Mapping[str, Any]) -> None:
        """Keep a service's DAQ runs for the next progress patch and the final one."""
        self._daq_runs = daq_runs_status(status)

    def live_page(self, url: str | None) -> None:
        """status.driver.livePage, published at once: the operator turns it into the page's
        in-cluster address (status.livePage) with the port it carries. None removes it."""
        if self._published.get("livePage") != url:
            self._publish({"livePage": url})

    def desired_inference(self) -> int | None:
        """The desired inference count, read from the resource (the driver asks every
        SCALE_POLL_S); the same read stops ingest once the resource is being deleted."""
        try:
            resource = self.client.get(self.ref.path())
            self._follow_deletion(resource)
            return inference_actors_of(resource)
        except (KubeError, ValueError, TypeError, AttributeError) as exc:
            self._log_once(f"could not read the desired inference count of {self.ref.name}", exc)
            return None

    def _follow_deletion(self, resource: Mapping[str, Any]) -> None:
        """A resource being deleted: stop ingest and drain (once; the pipeline ignores a
        second stop), as `peaknet-pipeline stop` would."""
        deleting = (resource.get("metadata") or {}).get("deletionTimestamp")
        if deleting and self._pipeline is not None:
            self._pipeline.stop_ingest(DELETION_STOP, f" at {deleting}: draining")

    def progress(self, snap: Any) -> None:
        counts = snap.counts
        fields = {
            "state": "Draining" if self._pipeline and self._pipeline.ingest_stopped else "Running",
            "framesIngested": int(counts.get("ingested", 0)),
            "framesInferred": int(counts.get("inferred", 0)),
            "framesWritten": int(counts.get("written", 0)),
        }
        if snap.verdict is not None:
            fields.update(verdict=snap.verdict, verdictMessage=snap.verdict_sentence)
        if self._daq_runs is not None:
            fields["daqRuns"] = self._daq_runs
        if self._pipeline is not None:
            fields.update(self._pool_fields(self._pipeline.pool.state()))
        if all(self._published.get(k) == v for k, v in fields.items()):
            return  # nothing changed: no patch
        now = self.clock()
        if self._last_t is not None and now - self._last_t < self.min_interval_s:
            return
        fields["framesPerSecond"] = self._rate(now, fields["framesInferred"])
        self._publish(fields)

    def failed(self, error: str) -> None:
        self._publish({"state": "Failed", "exitCode": 2, "lastError": error[:1000]})

    def finish(self, report: Mapping[str, Any]) -> None:
        acc = report["accounting"]
        lost = sum(v for k, v in acc.items() if k.startswith("lost_") and isinstance(v, int))
        errors = report.get("errors") or []
        last_error = None
        if errors:
            last_error = f"{errors[-1]['role']} {errors[-1]['id']}: {errors[-1]['error']}"[:1000]
        elif report["exit_code"] != 0:
            last_error = f"ended by {report['ended_by']}"
        streaming = max(float(report.get("streaming_s") or 0.0), 1e-9)
        judged = report.get("verdict") or {}
        self._publish(
            {
                # 4: stopped before the end of its stream, every accepted frame written.
                "state": "Succeeded" if report["exit_code"] in (0, 4) else "Failed",
                "framesIngested": acc["frames_ingested"],
                "framesInferred": acc["frames_inferred"],
                "framesWritten": acc["events_handled_by_writers"],
                "framesRejected": acc["frames_rejected_by_inference"]
                + acc["events_failed_in_writers"],
                "framesLost": lost,
                "framesPerSecond": round(acc["frames_inferred"] / streaming, 2),
                "exitCode": report["exit_code"],
                "endedBy": str(report.get("ended_by") or "")[:200],
                "lastError": last_error,
                "verdict": judged.get("word"),  # the whole run's (monitor/verdict.py)
                "verdictMessage": judged.get("sentence"),
                "inference": {**self._published.get("inference", {}), "running": 0, "retiring": 0},
                **({"daqRuns": self._daq_runs} if self._daq_runs is not None else {}),
                "livePage": None,  # the page is served until the report is written
            }
        )

    # -- helpers ----------------------------------------------------------------------------
    @staticmethod
    def _pool_fields(state: Any) -> dict[str, Any]:
        """status.driver's `inference` (desired/running/retiring) and `releasedPods` (always
        whole: a merge patch replaces lists)."""
        return {"inference": state.as_status(), "releasedPods": list(state.released_pods)}

    def _log_once(self, what: str, exc: Exception) -> None:
        kind = f"{what}: {str(exc)[:60]}"
        if kind not in self._errors_logged:
            self._errors_logged.add(kind)
            log.warning("%s: %s", what, exc)

    def _rate(self, now: float, inferred: int) -> float:
        before, self._last_counts = self._last_counts, (now, inferred)
        if before is None or now <= before[0]:
            return 0.0
        return round((inferred - before[1]) / (now - before[0]), 2)

    def _publish(self, fields: dict[str, Any]) -> None:
        now = self.clock()
        if self._last_counts is None:
            self._last_counts = (now, int(fields.get("framesInferred", 0)))
        body = {"status": {"driver": {**fields, "updatedAt": utc_now()}}}
        try:
            self.client.merge_patch(self.ref.path("status"), body)
        except KubeError as exc:
            kind = str(exc).split(":", 2)[-1][:60]
            if kind not in self._errors_logged:
                self._errors_logged.add(kind)
                log.warning("could not publish status to %s/%s: %s", *self._ref_names(), exc)
            return
        self._published.update(fields)
        self._last_t = now

    def _ref_names(self) -> tuple[str, str]:
        return self.ref.namespace, self.ref.name


def daq_runs_status(status: Mapping[str, Any]) -> dict[str, Any]:
    """status.driver.daqRuns from the tracker's status (snake_case to the API's camelCase):
    `current` is null between DAQ runs (a merge patch then removes it)."""
    current = status.get("current")
    if current is not None:
        current = {
            "name": current["name"],
            "frames": int(current["frames"]),
            "hits": int(current["hits"]),
            "hitRate": round(float(current["hit_rate"]), 4),
            "since": current.get("since"),
        }
    recent = [
        {
            "name": r["daq_run"],
            "frames": int(r.get("frames") or 0),
            "hits": int(r.get("hits") or 0),
            "hitRate": round(float(r.get("hit_rate") or 0.0), 4),
            "start": r.get("start"),
            "end": r.get("end"),
        }
        for r in status.get("recent", [])
    ]
    totals = status.get("totals") or {}
    return {
        "current": current,
        "recent": recent,
        "totals": {
            "daqRuns": int(totals.get("daq_runs", 0)),
            "frames": int(totals.get("frames", 0)),
            "hits": int(totals.get("hits", 0)),
        },
    }


def status_publisher(env: Mapping[str, str] = os.environ) -> NullPublisher:
    """A StatusPublisher when the renderer's variables name a resource, else a no-op one."""
    ref = resource_from_env(env)
    if ref is None:
        return NullPublisher()
    try:
        client = KubeClient.from_env(env)
    except KubeError as exc:
        log.warning("not publishing status: %s", exc)
        return NullPublisher()
    return StatusPublisher(client, ref)
