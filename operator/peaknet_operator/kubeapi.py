"""The few API calls the operator makes, on the `kubernetes` client's REST layer (so it shares
kopf's credentials: in-cluster service account or kubeconfig).

`apply` is the create-or-patch step of the reconcile: GET; absent: POST; present and already
holding every rendered field: nothing; else a merge PATCH of the rendered fields (lists sent
whole, since merge patch replaces them). Kinds whose spec cannot change after creation
(PersistentVolumeClaim, RayJob) are created only.

`serves` asks API discovery whether a kind is served at all: a GET of an object answers 404
both when the object is absent and when its CRD is not installed, and a POST to the
collection of a kind nobody installed answers 404 too; only discovery tells them apart.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import kubernetes

CREATE_ONLY = {"PersistentVolumeClaim", "RayJob"}
PLURALS = {
    "ConfigMap": "configmaps",
    "Service": "services",
    "PersistentVolumeClaim": "persistentvolumeclaims",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "Pod": "pods",
    "ServiceAccount": "serviceaccounts",
    "RayCluster": "rayclusters",
    "RayJob": "rayjobs",
}


class ApiError(Exception):
    """An API call failed; `status` is the HTTP status (0 when the server was not reached)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status

    @property
    def transient(self) -> bool:
        return self.status in (0, 409, 429) or self.status >= 500

    @property
    def reason(self) -> str:
        """The Kubernetes Status reason for the HTTP status (a condition's reason)."""
        reasons = {401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 422: "Invalid"}
        if self.transient:
            return "ApiUnavailable" if self.status in (0, 429) or self.status >= 500 else "Conflict"
        return reasons.get(self.status, "ApiError")


def _status_message(data: str) -> str:
    """The message of a Kubernetes Status body (what kubectl prints), else the raw body."""
    try:
        body = json.loads(data)
    except ValueError:
        return data[:500]
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])[:500]
    return data[:500]


def collection_path(api_version: str, kind: str, namespace: str) -> str:
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    return f"{prefix}/namespaces/{namespace}/{PLURALS[kind]}"


def object_path(api_version: str, kind: str, namespace: str, name: str) -> str:
    return f"{collection_path(api_version, kind, namespace)}/{name}"


def holds(existing: Any, wanted: Any) -> bool:
    """Whether `existing` already has every field of `wanted` (extra fields, such as those the
    API server defaults, are allowed; lists must match item by item)."""
    if isinstance(wanted, Mapping):
        return isinstance(existing, Mapping) and all(
            holds(existing.get(k), v) for k, v in wanted.items()
        )
    if isinstance(wanted, list):
        return (
            isinstance(existing, list)
            and len(existing) == len(wanted)
            and all(holds(e, w) for e, w in zip(existing, wanted))
        )
    return existing == wanted


class KubeApi:
    def __init__(self, client: kubernetes.client.ApiClient | None = None) -> None:
        self.client = client or kubernetes.client.ApiClient()

    def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> Any:
        config = self.client.configuration
        headers = {"Accept": "application/json", "Content-Type": content_type}
        token = config.get_api_key_with_prefix("BearerToken") or config.get_api_key_with_prefix(
            "authorization"
        )
        if token:
            headers["Authorization"] = token
        try:
            response = self.client.rest_client.request(
                method,
                config.host + path,
                headers=headers,
                body=body,
                _request_timeout=10,
            )
            raw = response.read()
        except kubernetes.client.ApiException as exc:
            raise ApiError(exc.status or 0, str(exc.body or exc.reason)[:500]) from None
        except Exception as exc:  # noqa: BLE001 - connection errors of any kind are transient
            raise ApiError(0, f"{method} {path}: {exc}") from None
        status = response.status
        data = raw.decode() if isinstance(raw, bytes) else (raw or "")
        if status >= 400:
            raise ApiError(status, f"{method} {path}: {_status_message(data)}")
        return json.loads(data) if data else None

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict | None:
        try:
            return self.request("GET", object_path(api_version, kind, namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """Delete one object (its dependents go in the background, by the garbage collector);
        False when it was already gone."""
        try:
            self.request("DELETE", object_path(api_version, kind, namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def serves(self, api_version: str, kind: str) -> bool:
        """Whether the API server serves `kind` in `api_version` (discovery)."""
        prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        try:
            found = self.request("GET", prefix) or {}
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return any(r.get("name") == PLURALS[kind] for r in found.get("resources", []))

    def list(self, api_version: str, kind: str, namespace: str, selector: str) -> list[dict]:
        path = f"{collection_path(api_version, kind, namespace)}?labelSelector={selector}"
        return (self.request("GET", path) or {}).get("items", [])

    def merge_patch(
        self,
        api_version: str,
        kind: str,
        namespace: str,
        name: str,
        body: dict,
        subresource: str = "",
    ) -> Any:
        path = object_path(api_version, kind, namespace, name)
        path = f"{path}/{subresource}" if subresource else path
        return self.request("PATCH", path, body, "application/merge-patch+json")

    def apply(
        self, manifest: Mapping[str, Any], create_annotations: Mapping[str, str] | None = None
    ) -> str:
        """Create or patch one child; returns "created", "patched" or "unchanged".
        `create_annotations` are set only when the child is created."""
        meta = manifest["metadata"]
        existing = self.get(
            manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"]
        )
        return self.apply_over(existing, manifest, create_annotations)

    def apply_over(
        self,
        existing: Mapping[str, Any] | None,
        manifest: Mapping[str, Any],
        create_annotations: Mapping[str, str] | None = None,
    ) -> str:
        """`apply`, given the object as the caller has just read it (None: absent), so an
        object the reconcile read for status is not read twice."""
        api_version, kind = manifest["apiVersion"], manifest["kind"]
        meta = manifest["metadata"]
        if existing is None:
            body = dict(manifest)
            if create_annotations:
                annotations = {**meta.get("annotations", {}), **create_annotations}
                body["metadata"] = {**meta, "annotations": annotations}
            try:
                self.request("POST", collection_path(api_version, kind, meta["namespace"]), body)
                return "created"
            except ApiError as exc:
                if exc.status != 409:
                    raise
                existing = self.get(api_version, kind, meta["namespace"], meta["name"]) or {}
        wanted = {k: v for k, v in manifest.items() if k not in ("apiVersion", "kind")}
        if kind in CREATE_ONLY or holds(existing, wanted):
            return "unchanged"
        self.merge_patch(api_version, kind, meta["namespace"], meta["name"], wanted)
        return "patched"
