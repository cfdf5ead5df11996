"""Deletion with finalizers, as the API server's generic store does it (any kind: custom
resources, pods, config maps), as pure functions of the stored object. The emulator
(kube_emulator.py) calls them on DELETE, on every write and in its garbage collector.

Sources (kubernetes/kubernetes, staging/src/k8s.io/...):
- apiserver pkg/registry/generic/registry/store.go: `Delete` (an object with finalizers is
  updated, not removed: `updateForGracefulDeletionAndFinalizers`), `markAsDeleting`
  (deletionTimestamp now unless one is already set earlier, deletionGracePeriodSeconds 0,
  generation + 1 the first time), `ShouldDeleteDuringUpdate` (an update leaving no finalizer
  on an object marked with grace period 0 or none deletes it: `deleteWithoutFinalizers`;
  kmock's own `_handle` applies it, every mark here having grace period 0).
  Custom resources have no graceful-deletion strategy (rest/delete.go: `BeforeDelete` returns
  not graceful when the strategy is no RESTGracefulDeleteStrategy), so a DELETE without
  finalizers removes at once. (`shouldDeleteForFailedInitialization` is gone from today's
  store.go, with the initializers it served.)
- apiserver pkg/registry/rest/create.go: `BeforeCreate` clears deletionTimestamp and
  deletionGracePeriodSeconds; rest/update.go: `BeforeUpdate` keeps a set deletionTimestamp and
  a set deletionGracePeriodSeconds the update left out.
- apimachinery pkg/api/validation/objectmeta.go: `ValidateObjectMetaAccessorUpdate`: no new
  finalizer on an object being deleted (`ValidateNoNewFinalizers`, Forbidden), and
  deletionTimestamp and deletionGracePeriodSeconds immutable (`ValidateImmutableField`).

Not reproduced: DeleteOptions (gracePeriodSeconds, preconditions, propagationPolicy: every
DELETE is a background deletion, the orphan and foreground finalizers are never added),
graceful deletion of pods.
"""

from __future__ import annotations

import copy
from typing import Any

DELETION_META = ("deletionTimestamp", "deletionGracePeriodSeconds")


def marked(obj: dict[str, Any]) -> bool:
    """Whether the object is being deleted (metadata.deletionTimestamp set)."""
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def pending_finalizers(obj: dict[str, Any]) -> bool:
    return bool((obj.get("metadata") or {}).get("finalizers"))


def mark_as_deleting(obj: dict[str, Any], now: str) -> dict[str, Any]:
    """store.go markAsDeleting: the object a DELETE stores when it has finalizers (`now` in
    RFC 3339 seconds, as metav1.Time serialises). A second DELETE changes nothing."""
    out = copy.deepcopy(obj)
    meta = out.setdefault("metadata", {})
    if not meta.get("deletionTimestamp") and int(meta.get("generation") or 0) > 0:
        meta["generation"] = int(meta["generation"]) + 1
    if not meta.get("deletionTimestamp") or meta["deletionTimestamp"] > now:
        meta["deletionTimestamp"] = now
    meta["deletionGracePeriodSeconds"] = 0
    return out


def clear_on_create(obj: dict[str, Any]) -> None:
    """rest/create.go BeforeCreate: a new object is never being deleted."""
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        for key in DELETION_META:
            meta.pop(key, None)


def keep_on_update(new: dict[str, Any], old: dict[str, Any]) -> None:
    """rest/update.go BeforeUpdate: a set deletionTimestamp is kept whatever the update says;
    a deletionGracePeriodSeconds the update left out is kept."""
    meta, before = new.setdefault("metadata", {}), old.get("metadata") or {}
    if before.get("deletionTimestamp"):
        meta["deletionTimestamp"] = before["deletionTimestamp"]
    if before.get("deletionGracePeriodSeconds") is not None:
        meta.setdefault("deletionGracePeriodSeconds", before["deletionGracePeriodSeconds"])


def update_errors(new: dict[str, Any], old: dict[str, Any]) -> list[dict[str, str]]:
    """objectmeta.go ValidateObjectMetaAccessorUpdate (the deletion part), after
    keep_on_update: causes of a 422, as {field, reason, message}."""
    meta, before = new.get("metadata") or {}, old.get("metadata") or {}
    errors = []
    if before.get("deletionTimestamp"):
        extra = sorted(set(meta.get("finalizers") or []) - set(before.get("finalizers") or []))
        if extra:
            found = "[]string{" + ", ".join(f'"{f}"' for f in extra) + "}"
            errors.append(
                {
                    "field": "metadata.finalizers",
                    "reason": "FieldValueForbidden",
                    "message": "Forbidden: no new finalizers can be added if the object is being "
                    f"deleted, found new finalizers {found}",
                }
            )
    for key in DELETION_META:
        if meta.get(key) != before.get(key):
            errors.append(
                {
                    "field": f"metadata.{key}",
                    "reason": "FieldValueInvalid",
                    "message": f"Invalid value: {meta.get(key)!r}: field is immutable",
                }
            )
    return errors
