"""A custom resource kind served from its CRD, with the API server's write path for its objects.

The order of the steps is the apiextensions-apiserver registry's: decode the request body
(prune, drop disallowed nulls, default: pkg/apiserver/customresource_handler.go:
unstructuredSchemaCoercer.apply and unstructuredDefaulter), prepare it (the create/update/
status strategies of pkg/registry/customresource/strategy.go and status_strategy.go), then
validate (schema, scale paths, list types, CEL). `/scale` follows pkg/registry/customresource/
etcd.go: ScaleREST. Refusals are `Refused` carrying the API server's status code, reason and
message, for the emulator to answer with.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

from . import objects
from .objects import FieldError, Schema

OLD_SELF = re.compile(r"\boldSelf\b")
GO_TYPES = {
    "str": "string",
    "float": "float64",
    "bool": "bool",
    "dict": "map[string]interface {}",
    "list": "[]interface {}",
}
BLOCKING = {"Unsupported value", "Required value", "Too long", "Too many"}


class Refused(Exception):
    """An API error: HTTP status, reason and message as the API server would send them."""

    def __init__(self, code: int, reason: str, message: str, causes: list[FieldError] = ()):
        super().__init__(message)
        self.code, self.reason, self.message, self.causes = code, reason, message, list(causes)


@dataclass
class CustomResource:
    """The storage version of one CRD, and what its registry does to objects written to it."""

    group: str
    version: str
    plural: str
    kind: str
    singular: str
    short_names: tuple[str, ...]
    namespaced: bool
    schema: Schema
    status: bool
    scale: dict[str, str] | None
    programs: dict[tuple[int, str], Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_crd(cls, crd: dict[str, Any]) -> CustomResource:
        spec = crd["spec"]
        version = next(v for v in spec["versions"] if v.get("storage"))
        subresources = version.get("subresources") or {}
        return cls(
            group=spec["group"],
            version=version["name"],
            plural=spec["names"]["plural"],
            kind=spec["names"]["kind"],
            singular=spec["names"].get("singular") or spec["names"]["kind"].lower(),
            short_names=tuple(spec["names"].get("shortNames") or ()),
            namespaced=spec.get("scope", "Namespaced") == "Namespaced",
            schema=(version.get("schema") or {}).get("openAPIV3Schema") or {},
            status="status" in subresources,
            scale=subresources.get("scale"),
        )

    # -- the write path ------------------------------------------------------------------------
    def decode(self, body: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """The body as stored: pruned, nulls dropped, defaulted; and the paths pruned."""
        pruned, paths = objects.prune(body, self.schema)
        return objects.default(objects.drop_nulls(pruned, self.schema), self.schema), paths

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """strategy.go: PrepareForCreate (status dropped, generation 1) and Validate."""
        obj, _ = self.decode(body)
        if self.status:
            obj.pop("status", None)
        obj.setdefault("metadata", {})["generation"] = 1
        self._check(obj, None, self._errors(obj, None, objects.validate(obj, self.schema)))
        return obj

    def update(self, old: dict[str, Any], body: dict[str, Any], subresource: str = "") -> dict:
        """The object stored after a write of `body` (the whole patched object) to the main
        endpoint or `/status`."""
        new, _ = self.decode(body)
        if subresource == "status":
            return self._update_status(old, new)
        # rest/update.go: BeforeUpdate keeps the generation; the strategy alone bumps it
        new.setdefault("metadata", {})["generation"] = old["metadata"].get("generation", 1)
        if self.status:  # strategy.go: PrepareForUpdate: status is not written here
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        if _non_metadata(new) != _non_metadata(old):
            new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        schema_errors = objects.validate(new, self.schema)
        self._check(new, old, self._errors(new, old, schema_errors))
        return new

    def _update_status(self, old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        """status_strategy.go: PrepareForUpdate (only `status` is taken) and ValidateUpdate
        (validator.go: ValidateStatusUpdate validates `status` against its own schema)."""
        result = copy.deepcopy(old)
        if "status" in new:
            result["status"] = new["status"]
        else:
            result.pop("status", None)
        status_schema = objects._properties(self.schema).get("status")
        errors: list[FieldError] = []
        if "status" in result and status_schema is not None:
            errors = objects.validate(result["status"], status_schema, "status")
        self._check(result, old, self._errors(result, old, errors, spec_scale=False))
        return result

    def _errors(
        self, obj: dict, old: dict | None, errors: list[FieldError], spec_scale: bool = True
    ) -> list[FieldError]:
        errors = self._type_meta(obj) or errors + self._scale_errors(obj, spec_scale)
        # strategy.go: Validate/ValidateUpdate: list types (on update only if the old object
        # had no such error: listtype/validation.go: ValidateListSetsAndMaps)
        if old is None or not objects.validate_list_types(old, self.schema):
            errors += objects.validate_list_types(obj, self.schema)
        # strategy.go: hasBlockingErr: CEL rules are not run on an object already invalid
        if any(e.type in BLOCKING or e.reason == "FieldValueTypeInvalid" for e in errors):
            detail = (
                "some validation rules were not checked because the object was invalid; "
                "correct the existing errors to complete validation"
            )
            return errors + [FieldError("Invalid value", "<nil>", None, detail)]
        return errors + self.validate_rules(obj, old)

    def _type_meta(self, obj: dict) -> list[FieldError]:
        """validator.go: ValidateTypeMeta."""
        errors = []
        if obj.get("kind") != self.kind:
            errors.append(
                FieldError("Invalid value", "kind", obj.get("kind"), f"must be {self.kind}")
            )
        api_version = f"{self.group}/{self.version}"
        if obj.get("apiVersion") != api_version:
            errors.append(
                FieldError(
                    "Invalid value", "apiVersion", obj.get("apiVersion"), f"must be {api_version}"
                )
            )
        return errors

    def _scale_errors(self, obj: dict, spec: bool) -> list[FieldError]:
        """validator.go: ValidateScaleSpec/ValidateScaleStatus: replicas paths hold int32s."""
        if self.scale is None:
            return []
        errors = []
        paths = ["specReplicasPath"] * spec + ["statusReplicasPath"]
        for path in (self.scale[p] for p in paths):
            value, found = _nested(obj, path)
            if not found:
                continue
            if not isinstance(value, int) or isinstance(value, bool):
                # apimachinery unstructured/helpers.go: NestedInt64's error (Go's %v and %T)
                go_type = GO_TYPES.get(type(value).__name__, type(value).__name__)
                shown = objects.go_value(value).strip('"')
                detail = f"{path} accessor error: {shown} is of the type {go_type}, expected int64"
                errors.append(FieldError("Invalid value", path, 0, detail))
            elif value < 0:
                errors.append(
                    FieldError("Invalid value", path, value, "should be a non-negative integer")
                )
            elif value > 2**31 - 1:
                errors.append(
                    FieldError(
                        "Invalid value", path, value, "should be less than or equal to 2147483647"
                    )
                )
        return errors

    def _check(self, obj: dict, old: dict | None, errors: list[FieldError]) -> None:
        if errors:
            name = (obj.get("metadata") or {}).get("name") or ""
            message = objects.invalid_message(self.kind, self.group, name, errors)
            raise Refused(422, "Invalid", message, errors)

    # -- CEL -----------------------------------------------------------------------------------
    def validate_rules(self, obj: Any, old: Any) -> list[FieldError]:
        """Every x-kubernetes-validations rule, as cel/validation.go: Validator.validate walks
        them (transition rules only where an old value correlates)."""
        errors: list[FieldError] = []
        self._rules(obj, old, self.schema, "", errors)
        return errors

    def _rules(self, x: Any, old: Any, s: Schema | None, path: str, errs: list) -> None:
        if s is None or x is None:
            return
        for rule in s.get("x-kubernetes-validations") or []:
            self._rule(rule, x, old, s, path, errs)
        if isinstance(x, dict):
            old_map = old if isinstance(old, dict) else {}
            has_extra, extra = objects._additional(s)
            props = objects._properties(s)
            for key, value in x.items():
                if key in props:  # cel/validation.go: validateMap: fldPath.Child(k)
                    self._rules(value, old_map.get(key), props[key], _child_path(path, key), errs)
                elif has_extra:  # additionalProperties: fldPath.Key(k)
                    self._rules(value, old_map.get(key), extra, f"{path}[{key}]", errs)
        elif isinstance(x, list):
            keys = (
                s.get("x-kubernetes-list-map-keys")
                if s.get("x-kubernetes-list-type") == "map"
                else None
            )
            for i, item in enumerate(x):
                self._rules(item, _correlate(item, old, keys), s.get("items"), f"{path}[{i}]", errs)

    def _rule(self, rule: dict, x: Any, old: Any, s: Schema, path: str, errs: list) -> None:
        import celpy

        uses_old = bool(OLD_SELF.search(rule["rule"]))
        if uses_old and old is None:
            return  # cel/validation.go: validateExpressions: no oldSelf, transition rule skipped
        activation = {"self": celpy.json_to_cel(x)}
        if uses_old:
            activation["oldSelf"] = celpy.json_to_cel(old)
        where = path + (rule.get("fieldPath") or "")
        text = (rule.get("message") or "").strip() or rule["rule"].strip()
        try:
            result = self._program(s, rule["rule"]).evaluate(activation)
        except Exception as exc:  # noqa: BLE001 - celpy raises its own and Python errors
            result = exc
        if isinstance(result, Exception):
            errs.append(
                FieldError(
                    "Invalid value", where, s.get("type", ""), f"{result} evaluating rule: {text}"
                )
            )
            return
        if result is True or result == celpy.celtypes.BoolType(True):
            return
        detail = self._message(rule, s, activation)
        value = objects.OMIT if s.get("type") in ("object", "array") else x
        reason = rule.get("reason") or "FieldValueInvalid"
        kind = {
            "FieldValueForbidden": "Forbidden",
            "FieldValueRequired": "Required value",
            "FieldValueDuplicate": "Duplicate value",
        }.get(reason, "Invalid value")
        # cel/validation.go: fieldErrorForReason (Duplicate prints no detail)
        errs.append(
            FieldError(kind, where, value, "" if kind == "Duplicate value" else detail, reason)
        )

    def _message(self, rule: dict, s: Schema, activation: dict) -> str:
        """cel/validation.go: evalMessageExpression, else ruleMessageOrDefault."""
        if rule.get("messageExpression"):
            try:
                text = str(self._program(s, rule["messageExpression"]).evaluate(activation)).strip()
                if text and "\n" not in text:
                    return text
            except Exception:  # noqa: BLE001 - a failed messageExpression falls back
                pass
        message = (rule.get("message") or "").strip()
        return message or f"failed rule: {rule['rule'].strip()}"

    def _program(self, s: Schema, source: str) -> Any:
        key = (id(s), source)
        if key not in self.programs:
            from .crd import compile_rule

            self.programs[key] = compile_rule(source, s)
        return self.programs[key]

    # -- /scale --------------------------------------------------------------------------------
    def scale_of(self, obj: dict[str, Any]) -> dict[str, Any]:
        """etcd.go: scaleFromCustomResource: an autoscaling/v1 Scale."""
        spec, found = _nested(obj, self.scale["specReplicasPath"])
        if not found:
            raise Refused(
                500,
                "InternalError",
                f'Internal error occurred: the spec replicas field "{self.scale["specReplicasPath"]}" does not exist',
            )
        status, _ = _nested(obj, self.scale["statusReplicasPath"])
        meta = obj["metadata"]
        keep = ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
        scale = {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {k: meta[k] for k in keep if k in meta},
            "spec": {"replicas": spec},
            "status": {"replicas": status or 0},
        }
        if self.scale.get("labelSelectorPath"):
            selector, _ = _nested(obj, self.scale["labelSelectorPath"])
            if selector:
                scale["status"]["selector"] = selector
        return scale

    def with_scale(self, obj: dict[str, Any], scale: dict[str, Any]) -> dict[str, Any]:
        """etcd.go: scaleUpdatedObjectInfo.UpdatedObject: the Scale's spec.replicas written to
        specReplicasPath (the result then goes through the main endpoint's `update`)."""
        replicas = (scale.get("spec") or {}).get("replicas")
        if replicas is None:
            path = self.scale["specReplicasPath"]
            raise Refused(400, "BadRequest", f'the spec replicas field "{path}" cannot be empty')
        if not isinstance(replicas, int) or isinstance(replicas, bool):
            raise Refused(400, "BadRequest", f"unable to decode Scale: spec.replicas: {replicas!r}")
        result = copy.deepcopy(obj)
        node = result
        *parents, leaf = self.scale["specReplicasPath"].lstrip(".").split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = replicas
        return result


def _non_metadata(obj: dict[str, Any]) -> dict[str, Any]:
    """strategy.go: copyNonMetadata."""
    return {k: v for k, v in obj.items() if k != "metadata"}


def _nested(obj: Any, path: str) -> tuple[Any, bool]:
    for part in path.lstrip(".").split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None, False
        obj = obj[part]
    return obj, True


def _child_path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _correlate(item: Any, old: Any, keys: list[str] | None) -> Any:
    """cel/maplist.go: makeMapList: only items of a list-type map correlate (by their keys)."""
    if not keys or not isinstance(old, list) or not isinstance(item, dict):
        return None
    wanted = {k: item.get(k) for k in keys}
    return next(
        (o for o in old if isinstance(o, dict) and {k: o.get(k) for k in keys} == wanted), None
    )
