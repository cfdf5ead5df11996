"""What the API server checks when a CustomResourceDefinition (apiextensions.k8s.io/v1) is created,
rebuilt rule by rule from k8s.io/apiextensions-apiserver, so that a CRD a real cluster refuses
fails here. Errors are rendered as field.ErrorList renders them (`path: Required value: detail`).

Paths below: VALIDATION = pkg/apis/apiextensions/validation/validation.go,
STRUCTURAL = pkg/apiserver/schema/validation.go, COMPLETE = pkg/apiserver/schema/complete.go.
Two rules are deliberately STRICTER than the API server and say so in their message: a rule whose
estimated cost per call exceeds PerCallLimit (the server only refuses it at runtime, on a large
object), and scale/printer-column paths that name no field of the schema.
"""

from __future__ import annotations

import re
from typing import Any

import re2

from .defaults import default_errors
from .messages import cost_message, forbidden, invalid, required, unsupported
from .schema_rules import STATIC_ESTIMATED_CRD_COST_LIMIT, SchemaWalker, compile_rule

__all__ = ["compile_rule", "validate_crd"]
PRINTER_TYPES = ["boolean", "date", "integer", "number", "string"]  # printerColumnDatatypes
PRINTER_FORMATS = ["byte", "date", "date-time", "double", "float", "int32", "int64", "password"]
# VALIDATION: allowedFieldsAtRootSchema, as JSON keys
ROOT_ALLOWED = {"description", "type", "format", "title", "maximum", "exclusiveMaximum"}
ROOT_ALLOWED |= {"minimum", "exclusiveMinimum", "maxLength", "minLength", "pattern", "maxItems"}
ROOT_ALLOWED |= {"minItems", "uniqueItems", "multipleOf", "required", "items", "properties"}
ROOT_ALLOWED |= {"externalDocs", "example", "x-kubernetes-preserve-unknown-fields"}
ROOT_ALLOWED |= {"x-kubernetes-validations"}
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
NESTED_FORBIDDEN = {  # STRUCTURAL: validateNestedValueValidation
    "type": "must be empty to be structural",
    "default": "must be undefined to be structural",
    "title": "must be empty to be structural",
    "description": "must be empty to be structural",
    "nullable": "must be false to be structural",
    "x-kubernetes-preserve-unknown-fields": "must be false to be structural",
    "x-kubernetes-embedded-resource": "must be false to be structural",
    "x-kubernetes-int-or-string": "must be false to be structural",
    "x-kubernetes-list-map-keys": "must be empty to be structural",
    "x-kubernetes-list-type": "must be undefined to be structural",
    "x-kubernetes-map-type": "must be undefined to be structural",
    "x-kubernetes-validations": "must be empty to be structural",
    "additionalProperties": "must be undefined to be structural",
}
INT_OR_STRING_ANY_OF = [{"type": "integer"}, {"type": "string"}]


def validate_crd(crd: dict[str, Any]) -> list[str]:
    """Every error the API server would report creating `crd` (empty: it would accept it)."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group = spec.get("group", "")
    errors: list[str] = []
    # VALIDATION: ValidateCustomResourceDefinition (nameValidationFn)
    name = (crd.get("metadata") or {}).get("name", "")
    if name != f"{names.get('plural', '')}.{group}":
        errors.append(invalid("metadata.name", name, 'must be spec.names.plural+"."+spec.group'))
    # VALIDATION: validateCustomResourceDefinitionSpec
    if not group:
        errors.append(required("spec.group"))
    elif not DNS1123_SUBDOMAIN.match(group):
        errors.append(
            invalid(
                "spec.group",
                group,
                "a lowercase RFC 1123 subdomain must consist of "
                "lower case alphanumeric characters, '-' or '.'",
            )
        )
    elif "." not in group:
        errors.append(invalid("spec.group", group, "should be a domain with at least one dot"))
    if spec.get("scope") not in ("Cluster", "Namespaced"):
        errors.append(unsupported("spec.scope", spec.get("scope", ""), ["Cluster", "Namespaced"]))
    versions = spec.get("versions") or []
    for i, version in enumerate(versions):
        vpath = f"spec.versions[{i}]"
        if not DNS1035.match(version.get("name", "")):
            errors.append(invalid(f"{vpath}.name", version.get("name", ""), "a DNS-1035 label"))
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        if schema is None:  # requireOpenAPISchema
            errors.append(required(f"{vpath}.schema.openAPIV3Schema"))
        subresources = version.get("subresources") or {}
        status_enabled = "status" in subresources
        if schema is not None:
            errors += _validate_schema(schema, f"{vpath}.schema.openAPIV3Schema", status_enabled)
        errors += _subresources(subresources, f"{vpath}.subresources", schema)
        for j, col in enumerate(version.get("additionalPrinterColumns") or []):
            errors += _printer_column(col, f"{vpath}.additionalPrinterColumns[{j}]", schema)
    version_names = [v.get("name") for v in versions]
    if len(set(version_names)) != len(version_names):
        errors.append(invalid("spec.versions", "object", "must contain unique version names"))
    if sum(1 for v in versions if v.get("storage")) != 1:
        errors.append(
            invalid(
                "spec.versions", "object", "must have exactly one version marked as storage version"
            )
        )
    for key in ("plural", "singular", "kind", "listKind"):
        if not names.get(key):
            errors.append(required(f"spec.names.{key}"))
    errors += _names(names)
    return errors


def _names(names: dict[str, Any]) -> list[str]:
    """VALIDATION: ValidateCustomResourceDefinitionNames."""
    errors = []
    for key in ("plural", "singular"):
        if names.get(key) and not DNS1035.match(names[key]):
            errors.append(
                invalid(
                    f"spec.names.{key}",
                    names[key],
                    "a DNS-1035 label must consist of lower case alphanumeric characters or '-'",
                )
            )
    for key in ("kind", "listKind"):
        if names.get(key) and not DNS1035.match(names[key].lower()):
            errors.append(
                invalid(
                    f"spec.names.{key}",
                    names[key],
                    "may have mixed case, but should otherwise match: a DNS-1035 label",
                )
            )
    for key in ("shortNames", "categories"):
        for i, value in enumerate(names.get(key) or []):
            if not DNS1035.match(value):
                errors.append(invalid(f"spec.names.{key}[{i}]", value, "a DNS-1035 label"))
    if names.get("kind") and names.get("kind") == names.get("listKind"):
        errors.append(
            invalid(
                "spec.names.listKind", names["listKind"], "kind and listKind may not be the same"
            )
        )
    return errors


def _schema_at(schema: dict[str, Any] | None, json_path: str) -> dict[str, Any] | None:
    node = schema
    for part in json_path.strip(".").split("."):
        node = (node or {}).get("properties", {}).get(part)
    return node


def _subresources(sub: dict[str, Any], path: str, schema: dict[str, Any] | None) -> list[str]:
    """VALIDATION: ValidateCustomResourceDefinitionSubresources (+ validateSimpleJSONPath); the
    integer-field check is this stand-in's own (the API server finds it only when /scale is used)."""
    scale = sub.get("scale")
    if scale is None:
        return []
    errors = []
    for key, prefix in (("specReplicasPath", ".spec."), ("statusReplicasPath", ".status.")):
        value = scale.get(key, "")
        where = f"{path}.scale.{key}"
        if not value:
            errors.append(required(where))
        elif not value.startswith("."):
            errors.append(invalid(where, value, "must be a simple json path starting with ."))
        elif not value.startswith(prefix):
            errors.append(invalid(where, value, f"should be a json path under {prefix[:-1]}"))
        elif (_schema_at(schema, value) or {}).get("type") != "integer":
            errors.append(
                invalid(
                    where,
                    value,
                    "must name an integer field of the schema "
                    "(stand-in rule, stricter than the API server)",
                )
            )
    selector = scale.get("labelSelectorPath")
    if selector and not selector.startswith((".spec.", ".status.")):
        errors.append(
            invalid(
                f"{path}.scale.labelSelectorPath",
                selector,
                "should be a json path under either .spec or .status",
            )
        )
    return errors


def _printer_column(col: dict[str, Any], path: str, schema: dict[str, Any] | None) -> list[str]:
    """VALIDATION: ValidateCustomResourceColumnDefinition; that the path names a declared field is
    this stand-in's own rule (kubectl would print an empty column)."""
    errors = []
    if not col.get("name"):
        errors.append(required(f"{path}.name"))
    if not col.get("type"):
        errors.append(required(f"{path}.type", "must be one of " + ",".join(PRINTER_TYPES)))
    elif col["type"] not in PRINTER_TYPES:
        errors.append(
            invalid(f"{path}.type", col["type"], "must be one of " + ",".join(PRINTER_TYPES))
        )
    if col.get("format") and col["format"] not in PRINTER_FORMATS:
        errors.append(
            invalid(f"{path}.format", col["format"], "must be one of " + ",".join(PRINTER_FORMATS))
        )
    json_path = col.get("jsonPath", "")
    if not json_path:
        errors.append(required(f"{path}.JSONPath"))
    elif not json_path.startswith("."):
        errors.append(
            invalid(f"{path}.JSONPath", json_path, "must be a simple json path starting with .")
        )
    elif not json_path.startswith(".metadata.") and _schema_at(schema, json_path) is None:
        errors.append(
            invalid(
                f"{path}.JSONPath",
                json_path,
                "must name a field of the schema (stand-in rule, stricter than the API server)",
            )
        )
    return errors


def _validate_schema(schema: dict[str, Any], path: str, status_enabled: bool) -> list[str]:
    """VALIDATION: validateCustomResourceDefinitionValidation."""
    errors = []
    if status_enabled:
        if schema.get("type", "object") != "object":
            errors.append(
                invalid(
                    f"{path}.type",
                    schema.get("type"),
                    'only "object" is allowed as '
                    "the type at the root of the schema if the status subresource is enabled",
                )
            )
        extra = sorted(set(schema) - ROOT_ALLOWED)
        if extra:
            errors.append(
                invalid(
                    path,
                    "object",
                    f"only {sorted(ROOT_ALLOWED)} fields are allowed at "
                    f"the root of the schema if the status subresource is enabled ({extra})",
                )
            )
    if schema.get("nullable"):
        errors.append(forbidden(f"{path}.nullable", "nullable cannot be true at the root"))
    structural = _structural(schema, "root", path)
    cel_ok = not structural
    if structural:
        errors += structural
    else:
        defaults = default_errors(schema, path)
        errors += defaults
        cel_ok = not defaults
    walker = SchemaWalker(cel_ok)
    walker.walk(
        schema,
        path,
        root=True,
        cardinality=1,
        meta=False,
        defaults_forbidden=None,
        old_self_block=None,
    )
    errors += walker.errors
    if walker.total_cost > STATIC_ESTIMATED_CRD_COST_LIMIT:
        errors.append(
            forbidden(
                path,
                cost_message(
                    "x-kubernetes-validations estimated rule cost "
                    "total for entire OpenAPIv3 schema",
                    walker.total_cost,
                    STATIC_ESTIMATED_CRD_COST_LIMIT,
                ),
            )
        )
    return errors


def _structural(s: dict[str, Any], level: str, path: str) -> list[str]:
    """STRUCTURAL: validateStructuralInvariants (+ COMPLETE: validateStructuralCompleteness)."""
    errors = []
    kind = s.get("type", "")
    if kind == "array" and "items" not in s:
        errors.append(required(f"{path}.items", "must be specified"))
    if isinstance(s.get("items"), dict):
        errors += _structural(s["items"], "item", f"{path}.items")
    for key, sub in (s.get("properties") or {}).items():
        errors += _structural(sub, "field", f"{path}.properties[{key}]")
    if "additionalProperties" in s:
        if level == "root":
            errors.append(forbidden(f"{path}.additionalProperties", "must not be used at the root"))
        if isinstance(s["additionalProperties"], dict):
            errors += _structural(
                s["additionalProperties"], "field", f"{path}.additionalProperties"
            )
    # validateExtensions
    if s.get("x-kubernetes-int-or-string") and s.get("x-kubernetes-preserve-unknown-fields"):
        errors.append(
            invalid(
                f"{path}.x-kubernetes-preserve-unknown-fields",
                True,
                "must be false if x-kubernetes-int-or-string is true",
            )
        )
    errors += _value_validations(s, level, path)
    embedded = bool(s.get("x-kubernetes-embedded-resource"))
    if embedded and kind != "object":
        errors.append(
            required(f"{path}.type", "must be object if x-kubernetes-embedded-resource is true")
        )
    elif (
        not kind
        and not s.get("x-kubernetes-int-or-string")
        and not s.get("x-kubernetes-preserve-unknown-fields")
    ):
        where = {
            "root": "at the root",
            "item": "for specified array items",
            "field": "for specified object fields",
        }[level]
        errors.append(required(f"{path}.type", f"must not be empty {where}"))
    if level == "root" and kind and kind != "object":
        errors.append(invalid(f"{path}.type", kind, "must be object at the root"))
    check_meta = level == "root" or embedded
    props = s.get("properties") or {}
    for key in ("kind", "apiVersion"):
        if key in props and check_meta and props[key].get("type") != "string":
            errors.append(
                invalid(f"{path}.properties[{key}].type", props[key].get("type"), "must be string")
            )
    if "metadata" in props:  # validateStructuralMetadataInvariants
        meta = props["metadata"]
        if check_meta and meta.get("type") != "object":
            errors.append(
                invalid(f"{path}.properties[metadata].type", meta.get("type"), "must be object")
            )
        rest = {k: v for k, v in meta.items() if k not in ("type", "default")}
        inner = set(rest.pop("properties", {}) or {})
        if level == "root" and (rest or not inner <= {"name", "generateName"}):
            errors.append(
                forbidden(
                    f"{path}.properties[metadata]",
                    "must not specify anything other "
                    "than name and generateName, but metadata is implicitly specified",
                )
            )
    return errors


def _value_validations(s: dict[str, Any], level: str, path: str) -> list[str]:
    """STRUCTURAL: validateValueValidation / validateNestedValueValidation; COMPLETE."""
    errors = []
    if "pattern" in s:
        try:
            re2.compile(s["pattern"])
        except re2.error as err:
            errors.append(
                invalid(
                    f"{path}.pattern",
                    s["pattern"],
                    f"must be a valid regular expression, but isn't: {err}",
                )
            )
    int_or_string = s.get("anyOf") == INT_OR_STRING_ANY_OF
    for key in ("anyOf", "allOf", "oneOf"):
        for i, nested in enumerate(s.get(key) or []):
            if key == "anyOf" and int_or_string:
                continue
            errors += _nested(nested, f"{path}.{key}[{i}]", s, path)
    if isinstance(s.get("not"), dict):
        errors += _nested(s["not"], f"{path}.not", s, path)
    return errors


def _nested(v: dict[str, Any], vpath: str, s: dict[str, Any], spath: str) -> list[str]:
    errors = [forbidden(f"{vpath}.{k}", msg) for k, msg in NESTED_FORBIDDEN.items() if v.get(k)]
    if "metadata" in (v.get("properties") or {}):
        errors.append(
            forbidden(f"{vpath}.properties[metadata]", "must not be specified in a nested context")
        )
    for key, sub in (v.get("properties") or {}).items():
        target = (s.get("properties") or {}).get(key)
        if target is None and not isinstance(s.get("additionalProperties"), dict):
            errors.append(
                required(
                    f"{spath}.properties[{key}]",
                    f"because it is defined in {vpath}.properties[{key}]",
                )
            )
        else:
            errors += _nested(
                sub, f"{vpath}.properties[{key}]", target or {}, f"{spath}.properties[{key}]"
            )
    if isinstance(v.get("items"), dict):
        if not isinstance(s.get("items"), dict):
            errors.append(required(f"{spath}.items", f"because it is defined in {vpath}.items"))
        else:
            errors += _nested(v["items"], f"{vpath}.items", s["items"], f"{spath}.items")
    return errors
