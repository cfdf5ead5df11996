"""The per-node OpenAPI rules of a CRD schema and its CEL rules, walked as
apiextensions-apiserver pkg/apis/apiextensions/validation/validation.go:
ValidateCustomResourceDefinitionOpenAPISchema walks them (VALIDATION below)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .cel_cost import PER_CALL_LIMIT, CelError, decl_type, estimate, max_cardinality
from .messages import cost_message, forbidden, invalid, required, unsupported

STATIC_ESTIMATED_COST_LIMIT = 10_000_000  # VALIDATION: StaticEstimatedCostLimit
STATIC_ESTIMATED_CRD_COST_LIMIT = 100_000_000  # VALIDATION: StaticEstimatedCRDCostLimit
OPENAPI_TYPES = ["array", "boolean", "integer", "number", "object", "string"]  # openapiV3Types
META_FIELDS = ("metadata", "kind", "apiVersion")  # VALIDATION: metaFields
UNSUPPORTED = {  # VALIDATION: specStandardValidatorV3.validate
    "id": "id is not supported",
    "additionalItems": "additionalItems is not supported",
    "patternProperties": "patternProperties is not supported",
    "definitions": "definitions is not supported",
    "dependencies": "dependencies is not supported",
    "$ref": "$ref is not supported",
}
REASONS = ["FieldValueDuplicate", "FieldValueForbidden", "FieldValueInvalid", "FieldValueRequired"]


def compile_rule(rule: str, schema: dict[str, Any], is_root: bool = False) -> Any:
    """A celpy program for an x-kubernetes-validations rule on `schema`, after the type and cost
    checks the API server runs (raises CelError with its detail, or ValueError for cost)."""
    import celpy

    decl = decl_type(schema, is_root)
    if decl is None:
        raise CelError(
            "internal error: failed to retrieve type information for x-kubernetes-validations"
        )
    result = estimate(rule, decl)
    if result.max_cost > PER_CALL_LIMIT:
        raise ValueError(cost_message("estimated rule cost", result.max_cost, PER_CALL_LIMIT))
    env = celpy.Environment()
    return env.program(result.ast)


@dataclass
class SchemaWalker:
    """Collects errors and the CRD's total CEL cost while walking one openAPIV3Schema."""

    cel_enabled: bool  # only when the schema is structural and its defaults valid
    errors: list[str] = field(default_factory=list)
    total_cost: int = 0

    def walk(
        self,
        s: dict[str, Any],
        path: str,
        *,
        root: bool,
        cardinality: int | None,
        meta: bool,
        defaults_forbidden: str | None,
        old_self_block: str | None,
    ) -> None:
        """VALIDATION: ValidateCustomResourceDefinitionOpenAPISchema for one node and below."""
        before = len(self.errors)
        self._standard(s, path, meta, defaults_forbidden)
        if s.get("uniqueItems"):
            self.errors.append(
                forbidden(
                    f"{path}.uniqueItems",
                    "uniqueItems cannot be set to true "
                    "since the runtime complexity becomes quadratic",
                )
            )
        extra = s.get("additionalProperties")
        if (
            extra is not None
            and s.get("properties")
            and (extra is False or isinstance(extra, dict))
        ):
            self.errors.append(
                forbidden(
                    f"{path}.additionalProperties",
                    "additionalProperties and properties are mutual exclusive",
                )
            )
        child_card = _child_cardinality(s, cardinality)
        if isinstance(extra, dict):
            reason = defaults_forbidden or (
                "inside additionalProperties applying to object metadata" if meta else None
            )
            self.walk(
                extra,
                f"{path}.additionalProperties",
                root=False,
                cardinality=child_card,
                meta=meta,
                defaults_forbidden=reason,
                old_self_block=old_self_block,
            )
        granular = s.get("x-kubernetes-map-type", "granular") == "granular"  # MapIsCorrelatable
        for key, sub in (s.get("properties") or {}).items():
            is_meta = (root or s.get("x-kubernetes-embedded-resource")) and key in META_FIELDS
            reason = f"in top-level {key}" if root and key in META_FIELDS else defaults_forbidden
            self.walk(
                sub,
                f"{path}.properties[{key}]",
                root=False,
                cardinality=child_card,
                meta=meta or bool(is_meta),
                defaults_forbidden=reason,
                old_self_block=old_self_block or (None if granular else path),
            )
        if isinstance(s.get("items"), dict):
            block = old_self_block or (None if s.get("x-kubernetes-list-type") == "map" else path)
            self.walk(
                s["items"],
                f"{path}.items",
                root=False,
                cardinality=child_card,
                meta=meta,
                defaults_forbidden=defaults_forbidden,
                old_self_block=block,
            )
        self._extensions(s, path)
        self._list_map_keys(s, path)
        rules_ok = self._rule_fields(s, path)
        if (
            rules_ok
            and len(self.errors) == before
            and self.cel_enabled
            and s.get("x-kubernetes-validations")
        ):
            self._cel(s, path, root, cardinality, old_self_block)

    def _standard(self, s: dict[str, Any], path: str, meta: bool, no_defaults: str | None) -> None:
        """VALIDATION: specStandardValidatorV3.validate."""
        kind = s.get("type")
        if kind and kind not in OPENAPI_TYPES:
            if kind == "null":
                self.errors.append(
                    forbidden(
                        f"{path}.type", "type cannot be set to null, use nullable as an alternative"
                    )
                )
            else:
                self.errors.append(unsupported(f"{path}.type", kind, OPENAPI_TYPES))
        if "default" in s and no_defaults:
            self.errors.append(forbidden(f"{path}.default", f"must not be set {no_defaults}"))
        for key in ("nullable", "exclusiveMinimum", "exclusiveMaximum", "uniqueItems"):
            if key in s and not isinstance(s[key], bool):  # JSONSchemaProps decoding (bool fields)
                self.errors.append(
                    invalid(
                        f"{path}.{key}",
                        s[key],
                        "must be a boolean (cannot unmarshal into Go struct field of type bool)",
                    )
                )
        for key, message in UNSUPPORTED.items():
            if s.get(key):
                self.errors.append(forbidden(f"{path}.{key}", message))
        if isinstance(s.get("items"), list):
            self.errors.append(
                forbidden(f"{path}.items", "items must be a schema object and not an array")
            )
        if meta and s.get("x-kubernetes-embedded-resource"):
            self.errors.append(
                forbidden(
                    f"{path}.x-kubernetes-embedded-resource",
                    "must not be used inside of resource meta",
                )
            )

    def _extensions(self, s: dict[str, Any], path: str) -> None:
        """VALIDATION: the x-kubernetes-preserve-unknown-fields/map-type/list-type checks."""
        kind = s.get("type", "")
        if s.get("x-kubernetes-preserve-unknown-fields") is False:
            self.errors.append(
                invalid(
                    f"{path}.x-kubernetes-preserve-unknown-fields",
                    False,
                    "must be true or undefined",
                )
            )
        map_type = s.get("x-kubernetes-map-type")
        if map_type is not None and kind != "object":
            self.errors.append(
                _typed(path, kind, "must be object if x-kubernetes-map-type is specified")
            )
        if map_type is not None and map_type not in ("atomic", "granular"):
            self.errors.append(
                unsupported(f"{path}.x-kubernetes-map-type", map_type, ["atomic", "granular"])
            )
        list_type = s.get("x-kubernetes-list-type")
        items = s.get("items") if isinstance(s.get("items"), dict) else None
        if list_type is not None and kind != "array":
            self.errors.append(
                _typed(path, kind, "must be array if x-kubernetes-list-type is specified")
            )
        elif list_type == "set" and items is not None:  # requireAtomicSetType
            if (
                items.get("type") == "array"
                and items.get("x-kubernetes-list-type", "atomic") != "atomic"
            ):
                self.errors.append(
                    invalid(
                        f"{path}.items.x-kubernetes-list-type",
                        list_type,
                        "must be atomic as item of a list with x-kubernetes-list-type=set",
                    )
                )
            if items.get("type") == "object" and items.get("x-kubernetes-map-type") != "atomic":
                self.errors.append(
                    invalid(
                        f"{path}.items.x-kubernetes-map-type",
                        list_type,
                        "must be atomic as item of a list with x-kubernetes-list-type=set",
                    )
                )
        if list_type is not None and list_type not in ("atomic", "set", "map"):
            self.errors.append(
                unsupported(f"{path}.x-kubernetes-list-type", list_type, ["atomic", "set", "map"])
            )

    def _list_map_keys(self, s: dict[str, Any], path: str) -> None:
        """VALIDATION: the x-kubernetes-list-map-keys checks and validateMapListKeysMapSet."""
        keys = s.get("x-kubernetes-list-map-keys") or []
        list_type = s.get("x-kubernetes-list-type")
        items = s.get("items") if isinstance(s.get("items"), dict) else None
        if keys and list_type != "map":
            detail = "must be map if x-kubernetes-list-map-keys is non-empty"
            self.errors.append(
                required(f"{path}.x-kubernetes-list-type", detail)
                if list_type is None
                else invalid(f"{path}.x-kubernetes-list-type", list_type, detail)
            )
        if list_type == "map":
            if not keys:
                self.errors.append(
                    required(
                        f"{path}.x-kubernetes-list-map-keys",
                        "must not be empty if x-kubernetes-list-type is map",
                    )
                )
            if items is None:
                self.errors.append(
                    required(f"{path}.items", "must have a schema if x-kubernetes-list-type is map")
                )
            elif items.get("type") != "object":
                self.errors.append(
                    invalid(
                        f"{path}.items.type",
                        items.get("type", ""),
                        "must be object if parent array's x-kubernetes-list-type is map",
                    )
                )
            else:
                props = items.get("properties") or {}
                for i, key in enumerate(keys):
                    if key not in props:
                        self.errors.append(
                            invalid(
                                f"{path}.x-kubernetes-list-map-keys",
                                keys,
                                "entries must all be names of item properties",
                            )
                        )
                    elif props[key].get("type") in ("array", "object"):
                        self.errors.append(
                            invalid(
                                f"{path}.items.properties[{key}].type",
                                "object",
                                "must be a scalar type if parent array's "
                                "x-kubernetes-list-type is map",
                            )
                        )
                    if key in keys[:i]:
                        self.errors.append(
                            invalid(
                                f"{path}.x-kubernetes-list-map-keys",
                                keys,
                                "must not contain duplicate entries",
                            )
                        )
        if items is None or list_type not in ("set", "map"):
            return
        if items.get("nullable"):
            self.errors.append(
                forbidden(
                    f"{path}.items.nullable",
                    f"cannot be nullable when x-kubernetes-list-type is {list_type}",
                )
            )
        if list_type == "map":
            needed = set(items.get("required") or [])
            for key in keys:
                prop = (items.get("properties") or {}).get(key)
                if prop is None:
                    continue
                where = f"{path}.items.properties[{key}]"
                if key not in needed and "default" not in prop:
                    self.errors.append(
                        required(
                            f"{where}.default",
                            "this property is in "
                            "x-kubernetes-list-map-keys, so it must have a default "
                            "or be a required property",
                        )
                    )
                if prop.get("nullable"):
                    self.errors.append(
                        forbidden(
                            f"{where}.nullable",
                            "this property is in "
                            "x-kubernetes-list-map-keys, so it cannot be nullable",
                        )
                    )

    def _rule_fields(self, s: dict[str, Any], path: str) -> bool:
        """VALIDATION: the per-rule field checks (rule, message, messageExpression, reason)."""
        before = len(self.errors)
        for i, rule in enumerate(s.get("x-kubernetes-validations") or []):
            where = f"{path}.x-kubernetes-validations[{i}]"
            text, message = rule.get("rule", ""), rule.get("message")
            if not text.strip():
                self.errors.append(required(f"{where}.rule", "rule is not specified"))
            if message is not None and not message.strip():
                self.errors.append(
                    invalid(f"{where}.message", message, "must be non-empty if specified")
                )
            elif message is not None and ("\n" in message or "\r" in message):
                self.errors.append(
                    invalid(f"{where}.message", message, "must not contain line breaks")
                )
            elif message is None and "\n" in text:
                self.errors.append(
                    required(
                        f"{where}.message", "message must be specified if rule contains line breaks"
                    )
                )
            if "messageExpression" in rule:
                self.errors.append(
                    forbidden(
                        f"{where}.messageExpression",
                        "the stand-in does not estimate messageExpression (refused)",
                    )
                )
            if "reason" in rule and rule["reason"] not in REASONS:
                self.errors.append(unsupported(f"{where}.reason", rule["reason"], REASONS))
        return len(self.errors) == before

    def _cel(
        self,
        s: dict[str, Any],
        path: str,
        root: bool,
        cardinality: int | None,
        old_self_block: str | None,
    ) -> None:
        """VALIDATION: the CEL part (cel.Compile, getExpressionCost, TotalCost); per-call budget
        check against PerCallLimit is this stand-in's own, stricter rule."""
        decl = decl_type(s, root or bool(s.get("x-kubernetes-embedded-resource")))
        if decl is None:
            self.errors.append(
                f"{path}.x-kubernetes-validations: Internal error: internal error: "
                "failed to retrieve type information for x-kubernetes-validations"
            )
            return
        for i, rule in enumerate(s["x-kubernetes-validations"]):
            where = f"{path}.x-kubernetes-validations[{i}].rule"
            try:
                result = estimate(rule["rule"], decl)
            except CelError as err:
                self.errors.append(invalid(where, rule["rule"], str(err)))
                continue
            times = cardinality if cardinality is not None else max_cardinality(decl.min_size)
            cost = min(2**64 - 1, result.max_cost * times)
            if cost > STATIC_ESTIMATED_COST_LIMIT:
                self.errors.append(
                    forbidden(
                        where,
                        cost_message("estimated rule cost", cost, STATIC_ESTIMATED_COST_LIMIT),
                    )
                )
            elif result.max_cost > PER_CALL_LIMIT:
                self.errors.append(
                    forbidden(
                        where,
                        cost_message("estimated rule cost", result.max_cost, PER_CALL_LIMIT)
                        + " [stand-in: "
                        "per-call limit, refused at runtime by the API server]",
                    )
                )
            self.total_cost = min(2**64 - 1, self.total_cost + cost)
            if result.uses_old_self and old_self_block is not None:
                self.errors.append(
                    invalid(
                        where,
                        rule["rule"],
                        "oldSelf cannot be used on the "
                        f"uncorrelatable portion of the schema within {old_self_block}",
                    )
                )


def _typed(path: str, kind: str, detail: str) -> str:
    return required(f"{path}.type", detail) if not kind else invalid(f"{path}.type", kind, detail)


def _child_cardinality(s: dict[str, Any], cardinality: int | None) -> int | None:
    """apiextensions-apiserver validation/cel_validation.go: childContext / extractMaxElements."""
    if cardinality is None:
        return None
    kind = s.get("type")
    if kind == "object" and isinstance(s.get("additionalProperties"), dict):
        limit = s.get("maxProperties")
    elif kind == "array":
        limit = s.get("maxItems")
    else:
        return cardinality
    return None if limit is None else cardinality * max(0, limit)
