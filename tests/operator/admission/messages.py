"""Errors rendered as k8s.io/apimachinery pkg/util/validation/field (errors.go: Error.Error and
ErrorBody) renders them: `path: Required value: detail`, `path: Invalid value: "v": detail`."""

from __future__ import annotations

import json
from typing import Any


def _q(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (str, int, float, bool)) else '"object"'


def required(path: str, detail: str = "") -> str:
    return f"{path}: Required value" + (f": {detail}" if detail else "")


def invalid(path: str, value: Any, detail: str) -> str:
    return f"{path}: Invalid value: {_q(value)}: {detail}"


def forbidden(path: str, detail: str) -> str:
    return f"{path}: Forbidden: {detail}"


def unsupported(path: str, value: Any, allowed: list[str]) -> str:
    return f"{path}: Unsupported value: {_q(value)}: supported values: " + ", ".join(
        f'"{a}"' for a in allowed
    )


def cost_message(name: str, cost: int, limit: int) -> str:
    """apiextensions-apiserver pkg/apis/apiextensions/validation/validation.go: getCostErrorMessage."""
    factor = cost / limit
    if factor > 100:
        text = "more than 100x"
    elif factor < 1.5:
        text = f"{factor:f}x"
    else:
        text = f"{factor:.1f}x"
    return (
        f"{name} exceeds budget by factor of {text} (try simplifying the rule, or adding "
        "maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)"
    )
