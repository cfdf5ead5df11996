"""A Kubernetes API for the operator tests: kmock's emulator with the gaps kopf trips on filled.

kmock 0.8 (../shared/reference/kuberay-kopf.md) serves discovery, create, merge/JSON patch,
get, list, watch and delete of objects kept in memory, over real HTTP. This subclass adds what
a real API server does and kopf or the operator rely on:

- metadata on create: uid, creationTimestamp, generation 1, the namespace of the URL, a name
  from generateName (kopf's events use it); resourceVersion bumped on every write;
- generation bumped when a write changes spec; a resource with a status subresource takes
  only `status` through `/status` and ignores `status` on the main endpoint;
- lists carry the current resourceVersion, and a watch from a resourceVersion replays only
  later events (no duplicates, nothing lost between replay and subscription);
- equality label selectors on lists (`a=b,c=d`);
- a failed JSON-patch `test` answers 422 (kopf then retries on the next cycle), not 500;
- garbage collection: deleting an object deletes, in the background, every object whose
  ownerReferences name its uid (recursively).

What it does not reproduce: admission (no schema validation, no CEL, no defaulting, no
pruning of unknown fields), RBAC, the scale subresource, strategic merge patch, set-based
selectors, field selectors, finalizer-aware foreground deletion, watch bookmarks and
timeouts, and no controller of its own (KubeRay, pods and kubelet are played by the tests).

`RunningEmulator` serves it from a background thread with its own event loop, so tests, the
operator (kopf in another thread) and the driver (synchronous code) all talk to it over HTTP.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import threading
import uuid
from typing import Any

import jsonpatch
import kmock
from kmock._internal import enums

WITH_STATUS = {
    ("peaknet.slac.stanford.edu", "peaknetpipelines"),
    ("ray.io", "rayclusters"),
    ("ray.io", "rayjobs"),
}


WRITES = {enums.action.CREATE, enums.action.UPDATE, enums.action.DELETE}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _matches(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


class PeakNetEmulator(kmock.KubernetesEmulator):
    """kmock's KubernetesEmulator behaving like an API server where kopf needs it."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._versions = itertools.count(1)
        self._log: dict[Any, list[tuple[int, dict]]] = {}

    # -- writes ---------------------------------------------------------------------------------
    async def _handle(self, request: kmock.Request) -> Any:
        if request.resource is not None:
            self._prepare(request)
        try:
            return await super()._handle(request)
        finally:
            if request.resource is not None and request.action in WRITES:
                await self._collect_garbage()

    def _prepare(self, request: kmock.Request) -> None:
        action, data = request.action, request.data
        has_status = (request.resource.group, request.resource.plural) in WITH_STATUS
        version = str(next(self._versions))
        if action == enums.action.CREATE and isinstance(data, dict):
            meta = data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            if request.namespace and not meta.get("namespace"):
                meta["namespace"] = request.namespace
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
            meta["resourceVersion"] = version
        elif action == enums.action.UPDATE and isinstance(data, dict):
            if has_status and request.subresource == "status":
                for key in [k for k in data if k != "status"]:
                    del data[key]
            elif has_status:
                data.pop("status", None)
            meta = data.setdefault("metadata", {})
            meta["resourceVersion"] = version
            if "spec" in data and request.subresource is None:
                current = self._current(request)
                if current is not None and self._spec_changes(current, data):
                    meta["generation"] = int(current["metadata"].get("generation", 1)) + 1
        elif action == enums.action.UPDATE and isinstance(data, list):
            data.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})

    def _current(self, request: kmock.Request) -> dict | None:
        key = (request.resource, request.namespace, request.name)
        obj = self.objects[key] if key in self.objects else None
        return None if obj is None or obj.deleted else obj.raw

    @staticmethod
    def _spec_changes(current: dict, patch: dict) -> bool:
        from kmock._internal.dicts import merge_patch_dict

        before = current.get("spec")
        return merge_patch_dict({"spec": before or {}}, {"spec": patch["spec"]}) != {
            "spec": before or {}
        }

    async def _render_error(self, exc: Exception) -> Any:
        if isinstance(exc, jsonpatch.JsonPatchTestFailed):
            exc = kmock.KubernetesError(status=422, reason="Invalid", message=str(exc))
        return await super()._render_error(exc)

    async def _collect_garbage(self) -> None:
        """Delete objects whose owners are gone, as Kubernetes' garbage collector does."""
        while True:
            async with self._lock:
                live = {
                    obj.raw["metadata"].get("uid")
                    for obj in self.objects.values()
                    if not obj.deleted
                }
                orphans = [
                    (key, obj)
                    for key, obj in self.objects.items()
                    if not obj.deleted
                    and any(
                        ref.get("uid") not in live
                        for ref in obj.raw["metadata"].get("ownerReferences", [])
                    )
                ]
                for (resource, _, _), obj in orphans:
                    raw = obj.raw
                    obj.delete()
                    await self._buses[resource].put({"type": "DELETED", "object": raw})
            if not orphans:
                return

    # -- reads ----------------------------------------------------------------------------------
    async def _serve_list(self, request: kmock.Request) -> Any:
        result = await super()._serve_list(request)
        selector = request.params.get("labelSelector", "")
        result["items"] = [
            item
            for item in result["items"]
            if _matches(item.get("metadata", {}).get("labels", {}), selector)
        ]
        result["metadata"] = {"resourceVersion": str(self._latest())}
        return result

    def _latest(self) -> int:
        versions = [
            int(obj.raw["metadata"].get("resourceVersion", 0))
            for obj in self.objects.values()
            if not obj.deleted
        ]
        return max(versions, default=0)

    async def _serve_watch(self, request: kmock.Request) -> Any:
        yield b""
        bus = self._buses[request.resource]
        marker = await bus.mark()  # subscribed before the replay: nothing falls in between
        try:
            since = request.params.get("resourceVersion", "")
            async with self._lock:
                replay, high = self._replay(request, int(since) if since.isdigit() else None)
            for event in replay:
                yield event
            async for event in bus.stream(since=marker):
                version = int(event["object"]["metadata"].get("resourceVersion", 0))
                if version > high and self._visible(request, event["object"]):
                    yield event
        finally:
            await bus.unmark(marker)

    def _replay(self, request: kmock.Request, since: int | None) -> tuple[list[dict], int]:
        current = [
            obj.raw
            for (resource, _, _), obj in self.objects.items()
            if resource == request.resource and not obj.deleted
        ]
        current = [raw for raw in current if self._visible(request, raw)]
        high = max((int(raw["metadata"].get("resourceVersion", 0)) for raw in current), default=0)
        high = max(high, since or 0)
        if since is None:
            return [{"type": "ADDED", "object": raw} for raw in current], high
        # Objects written after `since`: their latest state (a watch may compact history).
        later = [raw for raw in current if int(raw["metadata"]["resourceVersion"]) > since]
        return [{"type": "MODIFIED", "object": raw} for raw in later], high

    @staticmethod
    def _visible(request: kmock.Request, raw: dict) -> bool:
        return request.namespace is None or raw.get("metadata", {}).get("namespace") == (
            request.namespace
        )


def resource_info() -> dict[str, kmock.ResourceInfo]:
    verbs = {"get", "list", "watch", "create", "patch", "delete"}
    return {
        "peaknet.slac.stanford.edu/v1alpha1/peaknetpipelines": kmock.ResourceInfo(
            kind="PeakNetPipeline",
            singular="peaknetpipeline",
            namespaced=True,
            verbs=verbs,
            shortnames={"pnp"},
            subresources={"status", "scale"},
        ),
        "ray.io/v1/rayclusters": kmock.ResourceInfo(
            kind="RayCluster",
            singular="raycluster",
            namespaced=True,
            verbs=verbs,
            subresources={"status"},
        ),
        "ray.io/v1/rayjobs": kmock.ResourceInfo(
            kind="RayJob",
            singular="rayjob",
            namespaced=True,
            verbs=verbs,
            subresources={"status"},
        ),
    }


class RunningEmulator:
    """PeakNetEmulator on a loopback port, served from its own thread and event loop."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.emulator: PeakNetEmulator | None = None
        self.url = ""
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="kmock", daemon=True)
        self._thread.start()
        if not self.ready.wait(10):
            raise RuntimeError("the API emulator did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with PeakNetEmulator() as emulator, kmock.Server(emulator) as server:
            emulator.resources.load_bundled()
            for key, info in resource_info().items():
                emulator.resources[key] = info
            self.emulator, self.url = emulator, str(server.url).rstrip("/")
            self.ready.set()
            await self._stop.wait()

    @property
    def requests(self) -> list[kmock.Request]:
        return list(self.emulator)  # the handler iterates over the requests it served

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
