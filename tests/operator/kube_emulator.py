"""A Kubernetes API for the operator tests: kmock's emulator with the gaps kopf trips on filled.

kmock 0.8 (../shared/reference/kuberay-kopf.md) serves discovery, create, merge/JSON patch,
get, list, watch and delete of objects kept in memory, over real HTTP. This subclass adds what
a real API server does and kopf or the operator rely on:

- metadata on create: uid, creationTimestamp, generation 1, the namespace of the URL, a name
  from generateName (kopf's events use it); resourceVersion bumped on every write;
- custom resource kinds served from their CRDs (ours; KubeRay's RayCluster and RayJob from
  ../shared/kuberay unless `RunningEmulator(kuberay=False)`), each CRD first through CRD
  admission (admission/crd.py): a CRD the API server would refuse is refused here; a kind
  with no CRD answers 404 "the server could not find the requested resource";
- every create and every PATCH/PUT of a custom object (main, `/status`, `/scale`) goes
  through the API server's write path (admission/objects.py, admission/strategy.py): unknown
  fields pruned, root metadata reduced to ObjectMeta, non-nullable nulls dropped, defaults
  applied, then the OpenAPI schema, x-kubernetes-list-type, the scale paths and the CEL rules
  checked, refused with 422 Invalid and the API server's message; status dropped on create and
  ignored on the main endpoint, `/status` takes only status, generation bumped on any
  non-metadata change; `/scale` serves an autoscaling/v1 Scale from specReplicasPath and
  statusReplicasPath and writes specReplicasPath; JSON merge and JSON patches only (415 for
  strategic merge and apply); a resourceVersion in the body is a precondition (409); a write
  that changes nothing stores nothing;
- lists carry the current resourceVersion, and a watch from a resourceVersion replays only
  later events (no duplicates, nothing lost between replay and subscription);
- equality label selectors on lists (`a=b,c=d`);
- a failed JSON-patch `test` answers 422 (kopf then retries on the next cycle), not 500;
- deletion with finalizers (admission/deletion.py, from store.go `Delete`, `markAsDeleting`,
  `ShouldDeleteDuringUpdate` and objectmeta.go `ValidateObjectMetaAccessorUpdate`): DELETE of
  an object with finalizers stores it with deletionTimestamp (now, RFC 3339 seconds),
  deletionGracePeriodSeconds 0 and generation + 1 (a new resourceVersion, a MODIFIED event)
  and answers it; a second DELETE changes nothing; the update that removes its last finalizer
  deletes it (kmock's own rule); a write to a custom object cannot add a finalizer to an
  object being deleted (422 Forbidden) nor set or change deletionTimestamp or
  deletionGracePeriodSeconds (422 field is immutable); a create drops both;
- garbage collection: deleting an object deletes, in the background, every object whose
  ownerReferences name its uid (recursively), once that owner is gone (not while it is only
  marked: background propagation); a dependent with finalizers is marked, not removed.

What it does not reproduce: admission of built-in kinds (pods, services, ... are stored as
sent), validation ratcheting (stricter here), `format`, `allOf`/`oneOf`/`not`, CEL cost
limits and CEL's Kubernetes libraries beyond celpy's, versions other than a CRD's storage
version and conversion, server-side apply, metadata validation (names, labels), RBAC,
admission webhooks and policies, strategic merge patch, set-based and field selectors,
DeleteOptions (grace periods, preconditions, foreground and orphan propagation), the deletion
rules on writes to built-in kinds (kmock stores those as sent), watch bookmarks and timeouts,
and no controller of its own (KubeRay, pods and kubelet are played by the tests).

`RunningEmulator` serves it from a background thread with its own event loop, so tests, the
operator (kopf in another thread) and the driver (synchronous code) all talk to it over HTTP.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import itertools
import os
import threading
import uuid
from pathlib import Path
from typing import Any

import aiohttp.web
import jsonpatch
import kmock
import yaml
from admission import deletion
from admission.crd import validate_crd
from admission.strategy import CustomResource, Refused
from kmock._internal import enums

REPO = Path(__file__).resolve().parents[2]
OUR_CRD = REPO / "crds" / "peaknetpipelines.peaknet.slac.stanford.edu.yaml"
KUBERAY_CRDS = ("ray.io_rayclusters.yaml", "ray.io_rayjobs.yaml")
# rest/update.go: BeforeUpdate: what a write cannot change in metadata
# (deletionTimestamp and deletionGracePeriodSeconds: admission/deletion.py keep_on_update)
SYSTEM_META = ("name", "namespace", "uid", "creationTimestamp")
PATCH_TYPES = ("application/merge-patch+json", "application/json-patch+json")


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
        self.custom: dict[tuple[str, str, str], CustomResource] = {}
        self.history: list[kmock.Request] = []

    def register(self, kind: CustomResource) -> None:
        """Serve a custom resource kind (see `admitted` for the CRD admission before it)."""
        self.custom[(kind.group, kind.version, kind.plural)] = kind
        self.resources[f"{kind.group}/{kind.version}/{kind.plural}"] = kmock.ResourceInfo(
            kind=kind.kind,
            singular=kind.singular,
            namespaced=kind.namespaced,
            verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
            shortnames=set(kind.short_names),
            subresources={
                name for name, on in (("status", kind.status), ("scale", kind.scale)) if on
            },
        )

    # -- writes ---------------------------------------------------------------------------------
    async def _handle(self, request: kmock.Request) -> Any:
        """kmock keeps every request it served and matches each new one against its reactions
        by scanning them all (kmock/_internal/apps.py `RawHandler._handle`, `request in
        payload._source`): a cost that grows with the test, 27 s of CPU over a 38 s chain
        test. Only requests in flight stay in kmock's list; `history` keeps all of them, in
        the order they arrived, for the tests that read them."""
        self.history.append(request)
        try:
            return await self._serve(request)
        finally:
            self._requests[:] = [r for r in self._requests if r is not request]

    async def _serve(self, request: kmock.Request) -> Any:
        resource = request.resource
        if resource is not None and resource.plural and request.action is not None:
            if not any(resource == known for known in self.resources):
                # what an API server answers for a kind it does not serve (no CRD installed)
                raise kmock.KubernetesError(
                    status=404,
                    reason="NotFound",
                    message="the server could not find the requested resource",
                )
        kind = (
            None
            if resource is None
            else self.custom.get((resource.group, resource.version, resource.plural))
        )
        try:
            if request.action == enums.action.DELETE and request.name is not None:
                marked = await self._mark_for_deletion(request)
                if marked is not None:
                    return aiohttp.web.json_response(marked)
            if kind is not None and request.name is not None:
                if request.action == enums.action.UPDATE:
                    return await self._write_custom(request, kind)
                if request.action == enums.action.FETCH and request.subresource == "scale":
                    return aiohttp.web.json_response(self._scale(request, kind))
            if resource is not None:
                self._prepare(request)
                if kind is not None and request.action == enums.action.CREATE:
                    _replace_data(request, self._admit(kind, request.data))
            return await super()._handle(request)
        finally:
            if request.resource is not None and request.action in WRITES:
                await self._collect_garbage()

    @staticmethod
    def _admit(kind: CustomResource, body: Any) -> Any:
        try:
            return kind.create(body)
        except Refused as exc:
            raise _api_error(kind, body, exc) from None

    def _scale(self, request: kmock.Request, kind: CustomResource) -> dict:
        current = self._existing(request, kind)
        if kind.scale is None:
            raise kmock.KubernetesError(
                status=404,
                reason="NotFound",
                message="the server could not find the requested resource",
            )
        try:
            return kind.scale_of(current)
        except Refused as exc:
            raise _api_error(kind, current, exc) from None

    def _existing(self, request: kmock.Request, kind: CustomResource) -> dict:
        current = self._current(request)
        if current is None:
            raise kmock.KubernetesError(
                status=404,
                reason="NotFound",
                message=f'{kind.plural}.{kind.group} "{request.name}" not found',
            )
        return current

    async def _write_custom(self, request: kmock.Request, kind: CustomResource) -> Any:
        """PATCH/PUT of a custom object (main, /status, /scale) the way the API server's
        registry handles it: the patch applied to the stored object (to its Scale for /scale),
        then decoded, prepared and validated (admission.strategy); a write that changes
        nothing is not stored (no new resourceVersion, no watch event)."""
        body = request.data
        for _ in range(20):  # the store retries an update that lost a race, as etcd3's does
            current = self._existing(request, kind)
            target = self._scale(request, kind) if request.subresource == "scale" else current
            patched = _apply(request, body, target)
            wanted = (patched.get("metadata") or {}).get("resourceVersion")
            if wanted and wanted != current["metadata"].get("resourceVersion"):
                raise kmock.KubernetesError(
                    status=409,
                    reason="Conflict",
                    message=f"Operation cannot be fulfilled on {kind.plural}.{kind.group} "
                    f'"{request.name}": the object has been modified; please apply your '
                    "changes to the latest version and try again",
                )
            try:
                if request.subresource == "scale":
                    stored = kind.update(current, kind.with_scale(current, patched))
                else:
                    stored = kind.update(current, patched, request.subresource or "")
            except Refused as exc:
                raise _api_error(kind, current, exc) from None
            deletion.keep_on_update(stored, current)
            causes = deletion.update_errors(stored, current)
            if causes:
                raise _meta_error(kind, request.name, causes)
            meta = stored.setdefault("metadata", {})
            for key in SYSTEM_META + ("resourceVersion",):
                meta.pop(key, None)
                if key in current["metadata"]:
                    meta[key] = current["metadata"][key]
            if stored == current:
                answer = current
            else:
                meta["resourceVersion"] = str(next(self._versions))
                ops = [
                    {
                        "op": "test",
                        "path": "/metadata/resourceVersion",
                        "value": current["metadata"].get("resourceVersion"),
                    },
                    {"op": "replace", "path": "", "value": stored},
                ]
                _replace_data(request, ops)
                try:
                    await super()._handle(request)
                except jsonpatch.JsonPatchTestFailed:
                    continue
                answer = stored
            if request.subresource == "scale":
                answer = kind.scale_of(answer)
            return aiohttp.web.json_response(answer)
        raise kmock.KubernetesError(status=409, reason="Conflict", message="too many conflicts")

    async def _mark_for_deletion(self, request: kmock.Request) -> dict | None:
        """DELETE of an object with finalizers (store.go Delete): marked and kept, the marked
        object answered; None for an object without (kmock removes it, or answers 404)."""
        async with self._lock:
            current = self._current(request)
            if current is None or not deletion.pending_finalizers(current):
                return None
            return await self._mark(request.resource, (request.namespace, request.name), current)

    async def _mark(self, resource: Any, where: tuple, current: dict) -> dict:
        """Store `current` marked for deletion (under the lock), with a new resourceVersion and a
        MODIFIED event when that changed it."""
        stored = deletion.mark_as_deleting(current, _now())
        if stored == current:
            return current
        stored["metadata"]["resourceVersion"] = str(next(self._versions))
        changed = {k: stored["metadata"].get(k) for k in ("generation", "resourceVersion")}
        changed.update((k, stored["metadata"][k]) for k in deletion.DELETION_META)
        self.objects[(resource, *where)].patch({"metadata": changed})
        await self._buses[resource].put({"type": "MODIFIED", "object": stored})
        return stored

    def _prepare(self, request: kmock.Request) -> None:
        action, data = request.action, request.data
        version = str(next(self._versions))
        if action == enums.action.CREATE and isinstance(data, dict):
            meta = data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            if request.namespace and not meta.get("namespace"):
                meta["namespace"] = request.namespace
            deletion.clear_on_create(data)
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
            meta["resourceVersion"] = version
        elif action == enums.action.UPDATE and isinstance(data, dict):
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
                    and not deletion.marked(obj.raw)
                    and any(
                        ref.get("uid") not in live
                        for ref in obj.raw["metadata"].get("ownerReferences", [])
                    )
                ]
                for (resource, *where), obj in orphans:
                    raw = obj.raw
                    if deletion.pending_finalizers(raw):  # the collector's DELETE marks it
                        await self._mark(resource, tuple(where), raw)
                        continue
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


def _replace_data(request: kmock.Request, data: Any) -> None:
    """What kmock stores for a write is the request's body; the admitted object replaces it
    (kmock's Request is frozen and its reactions match the very request object it parsed)."""
    object.__setattr__(request, "data", data)


def _api_error(kind: CustomResource, obj: Any, exc: Refused) -> kmock.KubernetesError:
    """The Status body the API server answers a refused write with (errors.go: NewInvalid)."""
    name = ((obj or {}).get("metadata") or {}).get("name", "")
    causes = [{"reason": e.reason, "message": e.body(), "field": e.field} for e in exc.causes]
    details = {"name": name, "group": kind.group, "kind": kind.kind, "causes": causes}
    return kmock.KubernetesError(
        status=exc.code, reason=exc.reason, message=exc.message, details=details
    )


def _meta_error(kind: CustomResource, name: str, causes: list[dict]) -> kmock.KubernetesError:
    """The 422 an update breaking the deletion rules gets (errors.go: NewInvalid)."""
    message = ", ".join(f"{c['field']}: {c['message']}" for c in causes)
    details = {"name": name, "group": kind.group, "kind": kind.kind, "causes": causes}
    return kmock.KubernetesError(
        status=422,
        reason="Invalid",
        message=f'{kind.kind}.{kind.group} "{name}" is invalid: {message}',
        details=details,
    )


def _apply(request: kmock.Request, body: Any, target: dict) -> dict:
    """The whole object a PATCH or PUT asks for. Custom resources take JSON merge patches and
    JSON patches, not strategic merge patches (customresource_handler.go: the patch types a
    CRD serves); server-side apply is not emulated."""
    content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
    if request.method == enums.method.PUT:
        return copy.deepcopy(body)
    if content_type not in PATCH_TYPES:
        raise kmock.KubernetesError(
            status=415,
            reason="UnsupportedMediaType",
            message=f"the body of the request was in an unknown format - accepted media types "
            f"include: {', '.join(PATCH_TYPES)}",
        )
    if content_type == "application/json-patch+json":
        try:
            return jsonpatch.apply_patch(copy.deepcopy(target), body)
        except jsonpatch.JsonPatchTestFailed as exc:
            raise kmock.KubernetesError(status=422, reason="Invalid", message=str(exc)) from None
    return _merge(target, body)


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: null deletes, objects merge, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge(out.get(key), value)
    return out


_ADMITTED: dict[int, tuple[dict, CustomResource]] = {}


def admitted(crd: dict[str, Any]) -> CustomResource:
    """The kind a CRD serves once the API server accepted it; a CRD that CRD admission
    (admission.crd.validate_crd) refuses raises ValueError naming the errors. Cached per CRD
    document, so the compiled CEL programs are shared by every emulator."""
    if id(crd) not in _ADMITTED:
        errors = validate_crd(crd)
        if errors:
            name = crd.get("metadata", {}).get("name", "")
            raise ValueError(f"the API server refuses CRD {name}: " + "; ".join(errors))
        _ADMITTED[id(crd)] = (crd, CustomResource.from_crd(crd))
    return _ADMITTED[id(crd)][1]


_DOCUMENTS: dict[tuple[Path, float], dict[str, Any]] = {}


def _load(path: Path) -> dict[str, Any]:
    key = (path, path.stat().st_mtime)
    if key not in _DOCUMENTS:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        _DOCUMENTS[key] = yaml.load(path.read_text(), Loader=loader)  # noqa: S506 - safe loader
    return _DOCUMENTS[key]


def crd_documents(kuberay: bool = True) -> list[dict[str, Any]]:
    """The CRDs a test cluster has: ours, and KubeRay's (from $KUBERAY_SCHEMAS or
    ../shared/kuberay, as conftest.kuberay_dir finds them) unless `kuberay` is false."""
    paths = [OUR_CRD]
    if kuberay:
        candidates = [
            os.environ.get("KUBERAY_SCHEMAS", ""),
            str(REPO.parent / "shared" / "kuberay"),
        ]
        candidates.append(str(REPO.parents[1] / "shared" / "kuberay"))
        found = next(
            (Path(c) for c in filter(None, candidates) if (Path(c) / KUBERAY_CRDS[0]).is_file()),
            None,
        )
        paths += [found / name for name in KUBERAY_CRDS] if found else []
    return [_load(path) for path in paths]


class RunningEmulator:
    """PeakNetEmulator on a loopback port, served from its own thread and event loop."""

    def __init__(self, kuberay: bool = True) -> None:
        """`kuberay=False` serves no `ray.io` kinds: a cluster where KubeRay is not installed."""
        self.kuberay = kuberay
        self.kinds = [admitted(crd) for crd in crd_documents(kuberay)]
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
            for kind in self.kinds:
                emulator.register(kind)
            self.emulator, self.url = emulator, str(server.url).rstrip("/")
            self.ready.set()
            await self._stop.wait()

    @property
    def requests(self) -> list[kmock.Request]:
        return list(self.emulator.history)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
