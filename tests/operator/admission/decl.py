"""CEL declared types of structural-schema nodes, with the sizes the API server's cost
estimator assumes for them: k8s.io/apiserver pkg/cel/common/schemas.go: SchemaDeclType, constants
from k8s.io/apiserver pkg/apis/cel/config.go and pkg/cel/limits.go, cel-go common/cost.go."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PER_CALL_LIMIT = 1_000_000
MAX_REQUEST_SIZE_BYTES = 3 * 1024 * 1024
# k8s.io/apiserver pkg/cel/limits.go
MIN_STRING_SIZE, MIN_BOOL_SIZE, MIN_NUMBER_SIZE = 2, 4, 1
MAX_DATETIME_SIZE_JSON, JSON_DATE_SIZE, MAX_DURATION_SIZE_JSON = 32, 12, 32
MIN_DATETIME_SIZE_JSON, MIN_DURATION_SIZE_JSON = 21, 3
# cel-go common/cost.go
STRING_TRAVERSAL_COST_FACTOR = 0.1
REGEX_STRING_LENGTH_COST_FACTOR = 0.25
LIST_CREATE_BASE_COST = 10
UNKNOWN = 2**64 - 1
# CEL reserved words (cel-go parser; escaped as __word__ by k8s.io/apiserver pkg/cel/escaping.go)
RESERVED = {"true", "false", "null", "in", "as", "break", "const", "continue", "else", "for"}
RESERVED |= {"function", "if", "import", "let", "loop", "package", "namespace", "return", "var"}
RESERVED |= {"void", "while"}


class CelError(Exception):
    """A rule the API server would not compile (the message is the API server's detail)."""


@dataclass
class Decl:
    """A CEL declared type derived from a structural schema node (DeclType)."""

    kind: str  # object, map, list, string, bytes, int, double, bool, dyn, timestamp, duration
    fields: dict[str, Decl] = field(default_factory=dict)
    elem: Decl | None = None
    max_elements: int = 0
    min_size: int = 0


STRING_KEY = Decl("string", min_size=MIN_STRING_SIZE)  # NewMapType's key: MaxElements 0


def _escape(name: str) -> str | None:
    """k8s.io/apiserver pkg/cel/escaping.go: Escape (None: not accessible from CEL)."""
    if name in RESERVED:
        return f"__{name}__"
    out = name.replace("__", "__underscores__").replace(".", "__dot__")
    out = out.replace("-", "__dash__").replace("/", "__slash__")
    if not out or not (out[0].isalpha() or out[0] == "_"):
        return None
    return out if all(c.isalnum() or c == "_" for c in out) and out.isascii() else None


def _string_max(schema: dict[str, Any]) -> int:
    """schemas.go: estimateMaxElementsFromMaxLength / estimateMaxStringLengthPerRequest /
    estimateMaxStringEnumLength."""
    if "maxLength" in schema:
        return max(0, schema["maxLength"]) * 4
    if schema.get("enum"):
        return max(len(v) for v in schema["enum"] if isinstance(v, str))
    return {"duration": MAX_DURATION_SIZE_JSON, "date": JSON_DATE_SIZE}.get(
        schema.get("format", ""),
        MAX_DATETIME_SIZE_JSON
        if schema.get("format") == "date-time"
        else MAX_REQUEST_SIZE_BYTES - 2,
    )


def decl_type(schema: dict[str, Any], is_resource_root: bool = False) -> Decl | None:
    """k8s.io/apiserver pkg/cel/common/schemas.go: SchemaDeclType (None: not exposed to CEL)."""
    if schema.get("x-kubernetes-int-or-string"):
        return Decl("dyn", max_elements=_string_max({**schema, "format": ""}), min_size=1)
    if is_resource_root:  # WithTypeAndObjectMeta
        props = dict(schema.get("properties", {}))
        props["kind"] = props["apiVersion"] = {"type": "string"}
        props["metadata"] = {
            "type": "object",
            "properties": {"name": {"type": "string"}, "generateName": {"type": "string"}},
        }
        schema = {**schema, "properties": props}
    kind = schema.get("type")
    if kind == "array":
        items = schema.get("items")
        elem = (
            decl_type(items, bool(items.get("x-kubernetes-embedded-resource"))) if items else None
        )
        if elem is None:
            return None
        limit = schema.get("maxItems")
        count = (
            max(0, limit)
            if limit is not None
            else (MAX_REQUEST_SIZE_BYTES - 2) // (elem.min_size + 1)
        )
        return Decl("list", elem=elem, max_elements=count, min_size=2)
    if kind == "object":
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            elem = decl_type(extra, bool(extra.get("x-kubernetes-embedded-resource")))
            if elem is None:
                return None
            limit = schema.get("maxProperties")
            count = (
                max(0, limit)
                if limit is not None
                else (MAX_REQUEST_SIZE_BYTES - 2) // (elem.min_size + 6)
            )
            return Decl("map", elem=elem, max_elements=count, min_size=2)
        required = set(schema.get("required", []))
        fields, min_size = {}, 2
        for name, prop in schema.get("properties", {}).items():
            sub = decl_type(prop, bool(prop.get("x-kubernetes-embedded-resource")))
            if sub is None:
                continue
            escaped = _escape(name)
            if escaped is not None:
                fields[escaped] = sub
            if name in required and "default" not in prop:
                min_size += len(name) + sub.min_size + 4
        return Decl("object", fields=fields, min_size=min_size)
    if kind == "string":
        fmt = schema.get("format", "")
        sizes = {"date-time": MIN_DATETIME_SIZE_JSON, "date": JSON_DATE_SIZE}
        if fmt in ("date", "date-time"):
            return Decl("timestamp", max_elements=_string_max(schema), min_size=sizes[fmt])
        if fmt == "duration":
            return Decl(
                "duration", max_elements=MAX_DURATION_SIZE_JSON, min_size=MIN_DURATION_SIZE_JSON
            )
        return Decl(
            "bytes" if fmt == "byte" else "string",
            max_elements=_string_max(schema),
            min_size=MIN_STRING_SIZE,
        )
    scalar = {
        "boolean": ("bool", MIN_BOOL_SIZE),
        "number": ("double", MIN_NUMBER_SIZE),
        "integer": ("int", MIN_NUMBER_SIZE),
    }
    if kind in scalar:
        return Decl(scalar[kind][0], min_size=scalar[kind][1])
    return None


def max_cardinality(min_size: int) -> int:
    """compilation.go: maxCardinality — times data of this minimum size fits in one request."""
    return MAX_REQUEST_SIZE_BYTES // (min_size + 1)
