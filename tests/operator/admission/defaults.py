"""Defaults in a CRD schema, checked as the API server checks them on CRD create: each default
must be unchanged by pruning and valid against its own schema node
(apiextensions-apiserver pkg/apiserver/schema/defaulting/validation.go: ValidateDefaults/validate,
which runs pruning.Prune, then pkg/apiserver/validation: ValidateCustomResource)."""

from __future__ import annotations

import copy
from typing import Any

import re2

JSON_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "integer": int,
    "number": (int, float),
}


def prune(value: Any, schema: dict[str, Any]) -> Any:
    """pkg/apiserver/schema/pruning/algorithm.go: Prune — drop fields the schema does not name,
    unless x-kubernetes-preserve-unknown-fields (nested schemas still apply)."""
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        keep = schema.get("x-kubernetes-preserve-unknown-fields") or isinstance(extra, dict)
        out = {}
        for key, item in value.items():
            sub = props.get(key) or (extra if isinstance(extra, dict) else None)
            if sub is not None:
                out[key] = prune(item, sub)
            elif keep:
                out[key] = copy.deepcopy(item)
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune(item, schema["items"]) for item in value]
    return copy.deepcopy(value)


def _type_ok(value: Any, kind: str) -> bool:
    if kind in ("integer", "number") and isinstance(value, bool):
        return False
    if kind == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, JSON_TYPES[kind])


def value_errors(value: Any, schema: dict[str, Any], path: str) -> list[str]:
    """OpenAPI v3 value validation of one value (kube-openapi validate, as the API server
    reports it: `path: Invalid value: ...`, `path: Required value`)."""
    if value is None:
        if schema.get("nullable"):
            return []
        return [
            f'{path}: Invalid value: "null": {path} in body must be of type {schema.get("type")}'
        ]
    kind = schema.get("type")
    if schema.get("x-kubernetes-int-or-string"):
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            return [f"{path}: Invalid value: {value!r}: must be an integer or a string"]
        return []
    if kind in JSON_TYPES and not _type_ok(value, kind):
        return [
            f'{path}: Invalid value: "{type(value).__name__}": {path} in body must be of type {kind}'
        ]
    errors: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(f'"{v}"' if isinstance(v, str) else str(v) for v in schema["enum"])
        errors.append(f'{path}: Unsupported value: "{value}": supported values: {allowed}')
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        low, high = schema.get("minimum"), schema.get("maximum")
        if low is not None and (value < low or (schema.get("exclusiveMinimum") and value == low)):
            errors.append(
                f"{path}: Invalid value: {value}: {path} in body should be greater than "
                f"{'' if schema.get('exclusiveMinimum') else 'or equal to '}{low}"
            )
        if high is not None and (
            value > high or (schema.get("exclusiveMaximum") and value == high)
        ):
            errors.append(
                f"{path}: Invalid value: {value}: {path} in body should be less than "
                f"{'' if schema.get('exclusiveMaximum') else 'or equal to '}{high}"
            )
    if isinstance(value, str):
        if len(value) > schema.get("maxLength", len(value)):
            errors.append(f"{path}: Too long: may not be more than {schema['maxLength']} bytes")
        if len(value) < schema.get("minLength", 0):
            errors.append(
                f'{path}: Invalid value: "{value}": {path} in body should be at least '
                f"{schema['minLength']} chars long"
            )
        if "pattern" in schema and not re2.search(schema["pattern"], value):
            errors.append(
                f'{path}: Invalid value: "{value}": {path} in body should match '
                f"'{schema['pattern']}'"
            )
    if isinstance(value, list):
        if len(value) > schema.get("maxItems", len(value)):
            errors.append(
                f"{path}: Too many: {len(value)}: must have at most {schema['maxItems']} items"
            )
        if len(value) < schema.get("minItems", 0):
            errors.append(
                f"{path}: Invalid value: {len(value)}: {path} in body should have at least "
                f"{schema['minItems']} items"
            )
        for i, item in enumerate(value):
            errors += value_errors(item, schema.get("items", {}), f"{path}[{i}]")
    if isinstance(value, dict):
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{path}.{name}: Required value")
        props, extra = schema.get("properties", {}), schema.get("additionalProperties")
        for key, item in value.items():
            sub = props.get(key) or (extra if isinstance(extra, dict) else None)
            if sub is not None:
                errors += value_errors(item, sub, f"{path}.{key}")
        if len(value) > schema.get("maxProperties", len(value)):
            errors.append(
                f"{path}: Too many: {len(value)}: must have at most {schema['maxProperties']} items"
            )
    return errors


def default_errors(schema: dict[str, Any], path: str) -> list[str]:
    """Every `default` under `schema`: pruned-equal and valid (defaulting/validation.go: validate;
    defaults inside metadata are forbidden separately, so not descended into here)."""
    errors: list[str] = []
    if "default" in schema:
        default = schema["default"]
        if prune(default, schema) != default:
            errors.append(f'{path}.default: Invalid value: "object": must not have unknown fields')
        errors += value_errors(default, schema, f"{path}.default")
    if isinstance(schema.get("items"), dict):
        errors += default_errors(schema["items"], f"{path}.items")
    for key, sub in schema.get("properties", {}).items():
        errors += default_errors(sub, f"{path}.properties[{key}]")
    if isinstance(schema.get("additionalProperties"), dict):
        errors += default_errors(schema["additionalProperties"], f"{path}.additionalProperties")
    return errors
