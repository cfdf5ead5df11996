"""Fixtures of the operator tests: the API emulator over HTTP, a kubeconfig pointing at it,
the real operator (kopf in a thread) and a small client that plays kubectl."""

from __future__ import annotations

import copy
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "run.yaml"
EXAMPLE_GPU = REPO / "examples" / "run-gpu.yaml"
EXAMPLE_SERVICE = REPO / "examples" / "service.yaml"
CRD_FILE = REPO / "crds" / "peaknetpipelines.peaknet.slac.stanford.edu.yaml"
PNP = "/apis/peaknet.slac.stanford.edu/v1alpha1/namespaces/{ns}/peaknetpipelines"
STATUS_INTERVAL_S = 0.3


def kuberay_dir() -> Path | None:
    """The KubeRay v1 schemas: $KUBERAY_SCHEMAS, else ../shared/kuberay beside the repo."""
    candidates = [os.environ.get("KUBERAY_SCHEMAS", ""), str(REPO.parent / "shared" / "kuberay")]
    candidates.append(str(REPO.parents[1] / "shared" / "kuberay"))  # a worktree under wt/
    for candidate in filter(None, candidates):
        if (Path(candidate) / "raycluster.v1.schema.json").is_file():
            return Path(candidate)
    return None


def example(path: Path = EXAMPLE) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def wait_for(check: Callable[[], Any], what: str, timeout_s: float = 15.0) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` after the timeout."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


class Kubectl:
    """What the tests do as a cluster user would, over HTTP."""

    def __init__(self, url: str, namespace: str) -> None:
        from peaknet_pipeline.kube import KubeClient

        self.client = KubeClient(url)
        self.ns = namespace

    def path(self, name: str = "", sub: str = "") -> str:
        base = PNP.format(ns=self.ns)
        return "/".join(p for p in (base, name, sub) if p)

    def apply(self, manifest: dict[str, Any]) -> dict:
        body = copy.deepcopy(manifest)
        body["metadata"]["namespace"] = self.ns
        return self.client.request("POST", self.path(), body, "application/json")

    def patch(self, name: str, body: dict, sub: str = "") -> dict:
        return self.client.merge_patch(self.path(name, sub), body)

    def get(self, name: str) -> dict:
        return self.client.get(self.path(name))

    def delete(self, name: str) -> None:
        self.client.request("DELETE", self.path(name))

    def child(self, api_version: str, kind: str, name: str) -> dict | None:
        from peaknet_operator.kubeapi import object_path
        from peaknet_pipeline.kube import KubeError

        try:
            return self.client.get(object_path(api_version, kind, self.ns, name))
        except KubeError as exc:
            if "HTTP 404" in str(exc):
                return None
            raise


class Operator:
    """The real operator (kopf + our handlers) in a thread, stopped by a flag. It watches all
    namespaces (`peaknet-operator` without --namespace); each test has its own emulator."""

    def __init__(self) -> None:
        import kopf

        from peaknet_operator.handlers import register, settings

        self.stop_flag, self.ready_flag = threading.Event(), threading.Event()
        config = settings()
        config.watching.reconnect_backoff = 0.1
        config.batching.batch_window = 0.05
        self.thread = threading.Thread(
            target=kopf.run,
            kwargs=dict(
                # a deletion looks again at the driver as often as the status timer runs
                registry=register(kopf.OperatorRegistry(), STATUS_INTERVAL_S, STATUS_INTERVAL_S),
                settings=config,
                standalone=True,
                clusterwide=True,
                stop_flag=self.stop_flag,
                ready_flag=self.ready_flag,
            ),
            name="kopf",
            daemon=True,
        )
        self.thread.start()
        if not self.ready_flag.wait(20):
            raise RuntimeError("the operator did not become ready")

    def stop(self, timeout_s: float = 20.0) -> None:
        self.stop_flag.set()
        self.thread.join(timeout_s)
        assert not self.thread.is_alive() or timeout_s < 20, "the operator did not stop"


@pytest.fixture
def emulator() -> Iterator[Any]:
    from kube_emulator import RunningEmulator

    running = RunningEmulator()
    yield running
    running.stop()


@pytest.fixture
def kubeconfig(emulator, tmp_path, monkeypatch) -> Path:
    """A kubeconfig for the emulator, in $KUBECONFIG (kopf and the operator's client read it)."""
    return point_kubeconfig_at(emulator.url, tmp_path, monkeypatch)


def point_kubeconfig_at(url: str, tmp_path: Path, monkeypatch) -> Path:
    """Write a kubeconfig for the API at `url` and put it in $KUBECONFIG."""
    path = tmp_path / "kubeconfig"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kmock", "cluster": {"server": url}}],
        "users": [{"name": "kmock", "user": {"token": "test-token"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}],
        "current-context": "kmock",
    }
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return path


@pytest.fixture
def namespace() -> str:
    return f"ns-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def kubectl(emulator, namespace) -> Kubectl:
    return Kubectl(emulator.url, namespace)


@pytest.fixture
def operator(kubeconfig) -> Iterator[Callable[[], Operator]]:
    """Starts the operator (call it; again after a stop for a restart); stops what runs."""
    started: list[Operator] = []

    def start() -> Operator:
        started.append(Operator())
        return started[-1]

    yield start
    # kopf waits 5 s at exit for a status timer spawned while it began exiting; nothing is
    # left to check then, so a test does not wait for it (the thread ends by itself).
    for op in started:
        if op.thread.is_alive():
            op.stop(timeout_s=1.0)
