"""What the API server does to a custom object before storing it: prune, default, validate.

Each function follows one piece of k8s.io/apiextensions-apiserver (named next to it) so that
the operator tests' API emulator refuses, drops and fills in exactly what a real cluster
would. The functions are pure: they take JSON values and a CRD version's openAPIV3Schema and
return new values or a list of `FieldError`s; `tests/operator/admission/strategy.py` puts them
in the order the registry runs them.

Not reproduced (a real API server shows these): validation ratcheting (an unchanged invalid
value is refused here, accepted there; stricter), `format` checks, `allOf`/`oneOf`/`not`,
`anyOf` other than int-or-string, CEL runtime cost limits, and CEL's Kubernetes libraries
beyond what celpy provides (quantity, url, ip, ...).
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from typing import Any

Schema = dict[str, Any]
OMIT = object()  # a field error that prints no value (field.OmitValueType)

# apimachinery pkg/apis/meta/v1/types.go: ObjectMeta's JSON fields; anything else under a
# resource's root `metadata` is dropped by the round trip through metav1.ObjectMeta
# (apiextensions-apiserver pkg/apiserver/schema/objectmeta/coerce.go: GetObjectMetaWithOptions).
OBJECT_META_FIELDS = frozenset(
    "name generateName namespace selfLink uid resourceVersion generation creationTimestamp "
    "deletionTimestamp deletionGracePeriodSeconds labels annotations ownerReferences "
    "finalizers managedFields".split()
)
META_FIELDS = ("apiVersion", "kind", "metadata")


@dataclass(frozen=True)
class FieldError:
    """One field.Error (apimachinery pkg/util/validation/field/errors.go)."""

    type: str  # ErrorType.String(): "Invalid value", "Required value", ...
    field: str
    value: Any = OMIT
    detail: str = ""
    reason: str = "FieldValueInvalid"

    def body(self) -> str:
        """field/errors.go: ErrorBody: which types print their bad value, and how (Go's %v, %q
        or JSON)."""
        text = self.type
        if self.type not in ("Required value", "Forbidden", "Too long") and self.value is not OMIT:
            text += f": {go_value(self.value)}"
        return f"{text}: {self.detail}" if self.detail else text

    def __str__(self) -> str:
        return f"{self.field}: {self.body()}"


def go_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def invalid_message(kind: str, group: str, name: str, errors: list[FieldError]) -> str:
    """apimachinery pkg/api/errors/errors.go: NewInvalid, with ErrorList.ToAggregate's dedup
    and Aggregate.Error's `[a, b]` for several errors."""
    messages = list(dict.fromkeys(str(e) for e in errors))
    qualified = f"{kind}.{group}" if group else kind
    joined = messages[0] if len(messages) == 1 else "[" + ", ".join(messages) + "]"
    return f'{qualified} "{name}" is invalid: {joined}'


def _properties(schema: Schema | None) -> dict[str, Schema]:
    return (schema or {}).get("properties") or {}


def _additional(schema: Schema | None) -> tuple[bool, Schema | None]:
    """(has additionalProperties, its schema); `true` has none (structural: Structural nil)."""
    extra = (schema or {}).get("additionalProperties")
    if extra is None or extra is False:
        return False, None
    return True, extra if isinstance(extra, dict) else None


def _child(schema: Schema | None, key: str) -> tuple[bool, Schema | None]:
    props = _properties(schema)
    if key in props:
        return True, props[key]
    return _additional(schema)


# -- pruning -----------------------------------------------------------------------------------
def prune(obj: Any, schema: Schema | None, root: bool = True) -> tuple[Any, list[str]]:
    """A copy of `obj` without the fields its schema does not know, and their paths.

    pruning/algorithm.go: PruneWithOptions/prune/skipPrune (a resource root is treated as an
    embedded resource: apiVersion, kind and metadata stay); the root metadata then loses what
    ObjectMeta has no field for (objectmeta/coerce.go: GetObjectMetaWithOptions, called first in
    customresource_handler.go: unstructuredSchemaCoercer.apply)."""
    out = copy.deepcopy(obj)
    pruned: list[str] = []
    if root and isinstance(out, dict) and isinstance(out.get("metadata"), dict):
        for key in [k for k in out["metadata"] if k not in OBJECT_META_FIELDS]:
            pruned.append(f"metadata.{key}")
            del out["metadata"][key]
    schema = dict(schema or {}, **({"x-kubernetes-embedded-resource": True} if root else {}))
    _prune(out, schema, "", pruned)
    return out, sorted(pruned)


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _prune(x: Any, s: Schema | None, path: str, pruned: list[str]) -> None:
    """pruning/algorithm.go: prune."""
    if s is not None and s.get("x-kubernetes-preserve-unknown-fields"):
        _skip_prune(x, s, path, pruned)
    elif isinstance(x, dict):
        embedded = bool(s and s.get("x-kubernetes-embedded-resource"))
        for key in list(x):
            if embedded and key in META_FIELDS:
                continue
            found, sub = _child(s, key) if s is not None else (False, None)
            if found:
                _prune(x[key], sub, _join(path, key), pruned)
            else:
                pruned.append(_join(path, key))
                del x[key]
    elif isinstance(x, list):
        for i, item in enumerate(x):
            _prune(item, None if s is None else s.get("items"), _join(path, i), pruned)


def _skip_prune(x: Any, s: Schema | None, path: str, pruned: list[str]) -> None:
    """pruning/algorithm.go: skipPrune: unknown fields stay, known ones are still pruned."""
    if s is None:
        return
    if isinstance(x, dict):
        embedded = bool(s.get("x-kubernetes-embedded-resource"))
        for key in list(x):
            found, sub = _child(s, key)
            if found and not (embedded and key in META_FIELDS):
                _prune(x[key], sub, _join(path, key), pruned)
    elif isinstance(x, list):
        for i, item in enumerate(x):
            _skip_prune(item, s.get("items"), _join(path, i), pruned)


def drop_nulls(obj: Any, s: Schema | None) -> Any:
    """defaulting/prunenulls.go: PruneNonNullableNullsWithoutDefaults: a null where the schema
    is neither nullable nor defaulted is removed (run right after pruning)."""
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            _, sub = _child(s, key) if s is not None else (False, None)
            if (
                value is None
                and sub is not None
                and not sub.get("nullable")
                and ("default" not in sub)
            ):
                continue
            out[key] = drop_nulls(value, sub)
        return out
    if isinstance(obj, list):
        items = None if s is None else s.get("items")
        return [drop_nulls(item, items) for item in obj]
    return obj


# -- defaulting --------------------------------------------------------------------------------
def default(obj: Any, s: Schema | None) -> Any:
    """defaulting/algorithm.go: Default: a missing property (or a null one that is not nullable)
    gets a deep copy of its default; then every property, additional property and item is
    defaulted in turn (so a default object gets its own nested defaults)."""
    if s is None:
        return obj
    if isinstance(obj, dict):
        out = dict(obj)
        for key, prop in _properties(s).items():
            if "default" in prop and (
                key not in out or (out[key] is None and not prop.get("nullable"))
            ):
                out[key] = copy.deepcopy(prop["default"])
        for key in list(out):
            found, sub = _child(s, key)
            if found and sub is not None:
                if out[key] is None and not sub.get("nullable") and "default" in sub:
                    out[key] = copy.deepcopy(sub["default"])
                out[key] = default(out[key], sub)
        return out
    if isinstance(obj, list):
        items = s.get("items")
        if items is None:
            return list(obj)
        return [
            default(
                copy.deepcopy(items["default"])
                if item is None and not items.get("nullable") and "default" in items
                else item,
                items,
            )
            for item in obj
        ]
    return obj


# -- OpenAPI schema validation -----------------------------------------------------------------
def _json_type(value: Any) -> str:
    for kind, types in (
        ("boolean", bool),
        ("integer", int),
        ("number", float),
        ("string", str),
        ("array", list),
        ("object", dict),
    ):
        if isinstance(value, types):
            return kind
    return "null"


def _is_type(value: Any, wanted: str) -> bool:
    actual = _json_type(value)
    if wanted == "number":
        return actual in ("integer", "number")
    if wanted == "integer" and actual == "number":
        return float(value).is_integer()  # kube-openapi validate/type.go: a whole float is ok
    return actual == wanted


def validate(value: Any, s: Schema, prefix: str = "") -> list[FieldError]:
    """The OpenAPI schema errors of `value`, as validation/validation.go:
    kubeOpenAPIResultToFieldErrors reports kube-openapi's (pkg/validation/validate) results.
    `prefix` is the field path `value` sits at (ValidateStatusUpdate validates `status` alone,
    so kube-openapi's own messages name the path relative to it)."""
    errors: list[FieldError] = []
    _validate(value, s, "", prefix, errors)
    return errors


def _validate(x: Any, s: Schema, name: str, prefix: str, errs: list[FieldError]) -> None:
    field = ".".join(p for p in (prefix, name) if p)
    types = ["integer", "string"] if s.get("x-kubernetes-int-or-string") else []
    types = types or ([s["type"]] if s.get("type") else [])
    if x is None:
        # kube-openapi validate/type.go: null is a type error unless nullable (or no type)
        if types and not s.get("nullable"):
            errs.append(_type_error(field, name, types, "null"))
        return
    if types and not any(_is_type(x, t) for t in types):
        errs.append(_type_error(field, name, types, _json_type(x)))
        return
    if "enum" in s and x not in s["enum"]:
        # validation.go: EnumFailCode -> field.NotSupported with the allowed values quoted
        allowed = [v if isinstance(v, str) else json.dumps(v) for v in s["enum"]]
        detail = "supported values: " + ", ".join(json.dumps(v) for v in allowed)
        errs.append(FieldError("Unsupported value", field, x, detail, "FieldValueNotSupported"))
    if isinstance(x, str):
        _validate_string(x, s, name, field, errs)
    elif isinstance(x, int | float) and not isinstance(x, bool):
        _validate_number(x, s, name, field, errs)
    elif isinstance(x, list):
        if "maxItems" in s and len(x) > s["maxItems"]:  # validation.go: MaxItemsFailCode
            errs.append(_too_many(field, len(x), s["maxItems"]))
        if "minItems" in s and len(x) < s["minItems"]:
            errs.append(
                _invalid(field, x, f"{name} in body should have at least {s['minItems']} items")
            )
        if s.get("uniqueItems") and len({json.dumps(i, sort_keys=True) for i in x}) < len(x):
            errs.append(_invalid(field, x, f"{name} in body shouldn't contain duplicates"))
        if isinstance(s.get("items"), dict):
            for i, item in enumerate(x):
                _validate(item, s["items"], f"{name}[{i}]", prefix, errs)
    elif isinstance(x, dict):
        _validate_object(x, s, name, prefix, field, errs)


def _validate_string(x: str, s: Schema, name: str, field: str, errs: list[FieldError]) -> None:
    # kube-openapi validate/validator.go: stringValidator counts characters (runes)
    if "maxLength" in s and len(x) > s["maxLength"]:  # validation.go: TooLongFailCode
        unit = "byte" if s["maxLength"] == 1 else "bytes"
        detail = f"may not be more than {s['maxLength']} {unit}"
        errs.append(FieldError("Too long", field, "<value omitted>", detail, "FieldValueTooLong"))
    if "minLength" in s and len(x) < s["minLength"]:
        errs.append(
            _invalid(field, x, f"{name} in body should be at least {s['minLength']} chars long")
        )
    if "pattern" in s and not re.search(s["pattern"], x):
        errs.append(_invalid(field, x, f"{name} in body should match '{s['pattern']}'"))


def _validate_number(x: float, s: Schema, name: str, field: str, errs: list[FieldError]) -> None:
    # kube-openapi validate/validator.go: numberValidator (go-openapi errors' wording)
    if "maximum" in s:
        exclusive = s.get("exclusiveMaximum")
        if x > s["maximum"] or (exclusive and x == s["maximum"]):
            rel = "less than" if exclusive else "less than or equal to"
            errs.append(
                _invalid(field, x, f"{name} in body should be {rel} {go_value(s['maximum'])}")
            )
    if "minimum" in s:
        exclusive = s.get("exclusiveMinimum")
        if x < s["minimum"] or (exclusive and x == s["minimum"]):
            rel = "greater than" if exclusive else "greater than or equal to"
            errs.append(
                _invalid(field, x, f"{name} in body should be {rel} {go_value(s['minimum'])}")
            )
    if "multipleOf" in s and (x / s["multipleOf"]) % 1:
        errs.append(
            _invalid(
                field, x, f"{name} in body should be a multiple of {go_value(s['multipleOf'])}"
            )
        )


def _validate_object(
    x: dict, s: Schema, name: str, prefix: str, field: str, errs: list[FieldError]
) -> None:
    for key in s.get("required") or []:  # validation.go: RequiredFailCode -> field.Required
        if key not in x:
            errs.append(
                FieldError("Required value", _join(field, key), "", "", "FieldValueRequired")
            )
    if "maxProperties" in s and len(x) > s["maxProperties"]:  # TooManyPropertiesCode
        errs.append(_too_many(field, len(x), s["maxProperties"]))
    if "minProperties" in s and len(x) < s["minProperties"]:
        errs.append(
            _invalid(
                field, x, f"{name} in body should have at least {s['minProperties']} properties"
            )
        )
    for key, value in x.items():
        found, sub = _child(s, key)
        if found and sub is not None:
            _validate(value, sub, _join(name, key), prefix, errs)


def _type_error(field: str, name: str, types: list[str], actual: str) -> FieldError:
    detail = f'{name} in body must be of type {",".join(types)}: "{actual}"'
    return FieldError("Invalid value", field, actual, detail, "FieldValueTypeInvalid")


def _too_many(field: str, actual: int, most: int) -> FieldError:
    detail = f"must have at most {most} {'item' if most == 1 else 'items'}"
    return FieldError("Too many", field, actual, detail, "FieldValueTooMany")


def _invalid(field: str, value: Any, detail: str) -> FieldError:
    return FieldError("Invalid value", field, value, detail)


# -- x-kubernetes-list-type --------------------------------------------------------------------
def validate_list_types(obj: Any, s: Schema | None, path: str = "") -> list[FieldError]:
    """listtype/validation.go: ValidateListSetsAndMaps: no duplicate items in a `set`, no two
    items of a `map` list with the same keys."""
    errs: list[FieldError] = []
    if s is None:
        return errs
    if isinstance(obj, dict):
        for key, value in obj.items():
            found, sub = _child(s, key)
            if found:
                errs += validate_list_types(value, sub, _join(path, key))
    elif isinstance(obj, list):
        kind, seen = s.get("x-kubernetes-list-type"), set()
        keys = s.get("x-kubernetes-list-map-keys") or []
        for i, item in enumerate(obj):
            if kind == "set":
                marker = json.dumps(item, sort_keys=True)
                if marker in seen:
                    errs.append(
                        FieldError(
                            "Duplicate value", _join(path, i), item, "", "FieldValueDuplicate"
                        )
                    )
                seen.add(marker)
            elif kind == "map" and isinstance(item, dict):
                key_value = {k: item[k] for k in keys if k in item}
                marker = json.dumps(key_value, sort_keys=True)
                if marker in seen:
                    errs.append(
                        FieldError(
                            "Duplicate value", _join(path, i), key_value, "", "FieldValueDuplicate"
                        )
                    )
                seen.add(marker)
            errs += validate_list_types(item, s.get("items"), _join(path, i))
    return errs
