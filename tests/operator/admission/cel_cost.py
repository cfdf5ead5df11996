"""Type-check an x-kubernetes-validations rule and estimate its worst-case cost the way the API
server does when a CRD is created, so that a rule the API server would refuse (or that could
exceed the per-call budget at runtime) fails a test here.

celpy (cel-python) only parses CEL; the type environment and the cost model are rebuilt here from
the Go source:

- declared types of `self` from the schema: k8s.io/apiserver pkg/cel/common/schemas.go:
  SchemaDeclType (maxLength*4, maxItems, maxProperties, else sizes derived from the 3 MiB request
  limit and the element's minimum serialized size; map keys carry no size);
- the cost model: github.com/google/cel-go checker/cost.go: coster.cost/costSelect/costCall/
  costComprehension/functionCost, constants in common/cost.go; macro expansions (all, exists,
  exists_one, map, filter) in parser/macro.go: makeQuantifier/MakeMap/MakeFilter; presence tests
  free (k8s.io/apiserver pkg/cel/environment/base.go: PresenceTestHasCost(false));
- sizes of paths: apiextensions-apiserver pkg/apiserver/schema/cel/compilation.go:
  sizeEstimator.EstimateSize ({0, MaxElements} of the node a path names).

Anything outside that subset (functions, macros, ranges not rooted at `self`) is REFUSED with an
error rather than guessed: the stand-in must never be more lenient than the API server.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import celpy
from lark import Token, Tree

from .decl import (
    LIST_CREATE_BASE_COST,
    PER_CALL_LIMIT,
    REGEX_STRING_LENGTH_COST_FACTOR,
    STRING_KEY,
    STRING_TRAVERSAL_COST_FACTOR,
    UNKNOWN,
    CelError,
    Decl,
    decl_type,
    max_cardinality,
)

__all__ = ["PER_CALL_LIMIT", "CelError", "Decl", "decl_type", "estimate", "max_cardinality"]

# k8s.io/apiserver pkg/apis/cel/config.go


@dataclass
class Val:
    """What the checker knows about a sub-expression: its type, cost range and size range."""

    decl: Decl
    cost: tuple[int, int]
    size: tuple[int, int] | None = None
    rooted: bool = False  # a path from self/oldSelf: sized by EstimateSize


def _add(*costs: tuple[int, int]) -> tuple[int, int]:
    return (min(UNKNOWN, sum(c[0] for c in costs)), min(UNKNOWN, sum(c[1] for c in costs)))


def _factor(x: int, f: float) -> int:
    """cel-go checker/cost.go: multiplyByCostFactor (rounded up)."""
    return min(UNKNOWN, math.ceil(x * f))


def _mul(a: int, b: int) -> int:
    return min(UNKNOWN, a * b)


SCALARS = {"bool", "int", "double", "timestamp", "duration"}
BOOL = Decl("bool")
INT = Decl("int")


class Estimator:
    """Walks celpy's parse tree; checks types against `self` and sums costs like cel-go."""

    def __init__(self, self_decl: Decl) -> None:
        self.vars: dict[str, list[Val]] = {"self": [self._root(self_decl)]}
        self.vars["oldSelf"] = [self._root(self_decl)]
        self.uses_old_self = False

    @staticmethod
    def _root(decl: Decl) -> Val:
        return Val(decl, (1, 1), (0, decl.max_elements), rooted=True)

    def size(self, v: Val) -> tuple[int, int]:
        """cel-go coster.sizeOrUnknown / computeSize."""
        if v.size is not None:
            return v.size
        if v.rooted:
            return (0, v.decl.max_elements)
        if v.decl.kind in SCALARS:
            return (1, 1)
        return (0, UNKNOWN)

    def fail(self, node: Tree | Token, message: str) -> CelError:
        return CelError(f"compilation failed: ERROR: <input>:{_pos(node)}: {message}")

    def visit(self, node: Tree) -> Val:
        handler = getattr(self, f"_{node.data}", None)
        if handler is None:
            raise self.fail(node, f"the stand-in cannot estimate '{node.data}' (refused)")
        return handler(node)

    # -- precedence levels: a single child passes through ---------------------------------
    def _passthrough(self, node: Tree) -> Val:
        return self.visit(node.children[0])

    _primary = _member = _paren_expr = _passthrough

    def _expr(self, node: Tree) -> Val:
        cond, *rest = node.children
        if not rest or rest == [None, None]:
            return self.visit(cond)
        c, t, f = self.visit(cond), self.visit(rest[0]), self.visit(rest[1])
        self._expect(c, "bool", node, "_?_:_")
        if t.decl.kind != f.decl.kind and "dyn" not in (t.decl.kind, f.decl.kind):
            raise self.fail(node, "found no matching overload for '_?_:_'")
        lo, hi = self.size(t), self.size(f)
        cost = _add(c.cost, (min(t.cost[0], f.cost[0]), max(t.cost[1], f.cost[1])))
        return Val(t.decl, cost, (min(lo[0], hi[0]), max(lo[1], hi[1])))

    def _logical(self, node: Tree, op: str) -> Val:
        if len(node.children) == 1:
            return self.visit(node.children[0])
        lhs, rhs = self.visit(node.children[0]), self.visit(node.children[1])
        for side in (lhs, rhs):
            self._expect(side, "bool", node, op)
        return Val(BOOL, (lhs.cost[0], _add(lhs.cost, rhs.cost)[1]))  # short-circuit

    def _conditionalor(self, node: Tree) -> Val:
        return self._logical(node, "_||_")

    def _conditionaland(self, node: Tree) -> Val:
        return self._logical(node, "_&&_")

    def _expect(self, v: Val, kind: str, node: Tree, op: str) -> None:
        if v.decl.kind not in (kind, "dyn"):
            raise self.fail(
                node, f"found no matching overload for '{op}' applied to '{v.decl.kind}'"
            )

    def _binary(self, node: Tree) -> Val:
        if len(node.children) == 1:
            return self.visit(node.children[0])
        op_tree, right = node.children
        op = op_tree.data.split("_", 1)[1]
        lhs, rhs = self.visit(op_tree.children[0]), self.visit(right)
        kinds = {lhs.decl.kind, rhs.decl.kind}
        args = _add(lhs.cost, rhs.cost)
        if op == "in":
            if rhs.decl.kind not in ("list", "map", "dyn"):
                raise self.fail(
                    node, f"found no matching overload for '@in' applied to '{rhs.decl.kind}'"
                )
            return Val(BOOL, _add(args, (self.size(rhs)[0], self.size(rhs)[1])))  # O(n) InList
        numeric = kinds <= {"int", "double", "dyn"}
        if op in ("eq", "ne", "lt", "le", "gt", "ge"):
            ordered = numeric or len(kinds - {"dyn"}) <= 1
            if not ordered or (
                op not in ("eq", "ne") and kinds & {"list", "map", "object", "bool"}
            ):
                raise self.fail(
                    node, f"found no matching overload for '_{op}_' applied to '{kinds}'"
                )
            if op in ("eq", "ne") or kinds & {"string", "bytes"}:  # cel-go: size-proportional
                smallest = min(self.size(lhs)[1], self.size(rhs)[1])
                cost = (1 if smallest else 0, _factor(smallest, STRING_TRAVERSAL_COST_FACTOR))
                return Val(BOOL, _add(cost, args))
            return Val(BOOL, _add((1, 1), args))
        if op == "add" and kinds <= {"string", "dyn"} and "string" in kinds:
            size = _add(self.size(lhs), self.size(rhs))
            return Val(lhs.decl, _add((_factor(size[0], 0.1), _factor(size[1], 0.1)), args), size)
        if op == "add" and lhs.decl.kind == "list" and rhs.decl.kind == "list":
            return Val(lhs.decl, _add((1, 1), args), _add(self.size(lhs), self.size(rhs)))
        if not numeric:
            raise self.fail(node, f"found no matching overload for '_{op}_' applied to '{kinds}'")
        kind = "double" if "double" in kinds else ("dyn" if "dyn" in kinds else "int")
        return Val(Decl(kind), _add((1, 1), args))

    _relation = _addition = _multiplication = _binary

    def _unary(self, node: Tree) -> Val:
        if len(node.children) == 1:
            return self.visit(node.children[0])
        op, operand = node.children
        v = self.visit(operand)
        self._expect(v, "bool" if op.data == "unary_not" else v.decl.kind, node, op.data)
        return Val(v.decl if op.data == "unary_neg" else BOOL, _add((1, 1), v.cost))

    def _literal(self, node: Tree) -> Val:
        token = node.children[0]
        if token.type in ("STRING_LIT", "MLSTRING_LIT"):
            text = _string_value(token)
            return Val(Decl("string"), (0, 0), (len(text), len(text)))
        kinds = {"INT_LIT": "int", "UINT_LIT": "int", "FLOAT_LIT": "double", "BOOL_LIT": "bool"}
        if token.type not in kinds:
            raise self.fail(node, f"the stand-in cannot estimate a {token.type} (refused)")
        return Val(Decl(kinds[token.type]), (0, 0), (1, 1))

    def _list_lit(self, node: Tree) -> Val:
        items = [self.visit(e) for e in _args((node.children or [None])[0])]
        kinds = {i.decl.kind for i in items}
        if len(kinds) > 1:
            raise self.fail(node, "expected type of list elements to agree (homogeneous aggregate)")
        elem = items[0].decl if items else Decl("dyn")
        return Val(
            Decl("list", elem=elem),
            _add((LIST_CREATE_BASE_COST,) * 2, *(i.cost for i in items)),
            (len(items), len(items)),
        )

    def _ident(self, node: Tree) -> Val:
        name = str(node.children[0])
        if name not in self.vars or not self.vars[name]:
            raise self.fail(node, f"undeclared reference to '{name}' (in container '')")
        if name == "oldSelf":
            self.uses_old_self = True
        v = self.vars[name][-1]
        return Val(v.decl, (1, 1), v.size, v.rooted)

    def _member_dot(self, node: Tree) -> Val:
        operand, name = node.children
        target = self.visit(operand)
        return self._select(target, str(name), node, target.cost)

    def _select(self, target: Val, name: str, node: Tree, cost: tuple[int, int]) -> Val:
        kind = target.decl.kind
        if kind == "object":
            if name not in target.decl.fields:
                raise self.fail(node, f"undefined field '{name}'")
            return Val(target.decl.fields[name], _add(cost, (1, 1)), None, target.rooted)
        if kind == "map":
            return Val(target.decl.elem, _add(cost, (1, 1)), None, target.rooted)
        if kind == "dyn":
            return Val(Decl("dyn"), cost)
        raise self.fail(node, f"type '{kind}' does not support field selection")

    def _member_index(self, node: Tree) -> Val:
        operand, index = node.children
        target, key = self.visit(operand), self.visit(index)
        if target.decl.kind not in ("list", "map"):
            raise self.fail(
                node, f"found no matching overload for '_[_]' applied to '{target.decl.kind}'"
            )
        return Val(target.decl.elem, _add((1, 1), target.cost, key.cost), None, target.rooted)

    def _ident_arg(self, node: Tree) -> Val:
        name, args = str(node.children[0]), _args((node.children[1:] or [None])[0])
        if name == "has" and len(args) == 1:  # a presence test: free (PresenceTestHasCost(false))
            inner = _single_member(args[0])
            if inner is None or inner.data != "member_dot":
                raise self.fail(node, "invalid argument to has() macro")
            operand, field_name = inner.children
            target = self.visit(operand)
            self._select(target, str(field_name), inner, (0, 0))
            return Val(BOOL, target.cost)
        if name == "size" and len(args) == 1:
            return self._size(self.visit(args[0]), node)
        raise self.fail(
            node,
            f"undeclared reference to '{name}' (the stand-in refuses functions it cannot estimate)",
        )

    def _size(self, v: Val, node: Tree) -> Val:
        if v.decl.kind not in ("string", "bytes", "list", "map", "dyn"):
            raise self.fail(
                node, f"found no matching overload for 'size' applied to '{v.decl.kind}'"
            )
        return Val(INT, _add((1, 1), v.cost))

    def _member_dot_arg(self, node: Tree) -> Val:
        operand, name, *rest = node.children
        name, args = str(name), _args(rest[0] if rest else None)
        if name in ("all", "exists", "exists_one", "map", "filter") and len(args) == 2:
            return self._comprehension(self.visit(operand), name, args, node)
        target = self.visit(operand)
        values = [self.visit(a) for a in args]
        arg_cost = _add(target.cost, *(v.cost for v in values))
        if name == "size" and not values:
            return self._size(target, node)
        if name in ("matches", "startsWith", "endsWith", "contains") and len(values) == 1:
            for v in (target, values[0]):
                self._expect(v, "string", node, name)
            s, a = self.size(target), self.size(values[0])
            if name == "matches":  # O(n*m): (len+1)*0.1 times regex length*0.25
                lo = _mul(_factor(s[0] + 1, 0.1), _factor(a[0], REGEX_STRING_LENGTH_COST_FACTOR))
                hi = _mul(_factor(min(UNKNOWN, s[1] + 1), 0.1), _factor(a[1], 0.25))
            elif name == "contains":
                lo = _mul(_factor(s[0], 0.1), _factor(a[0], 0.1))
                hi = _mul(_factor(s[1], 0.1), _factor(a[1], 0.1))
            else:
                lo, hi = _factor(a[0], 0.1), _factor(a[1], 0.1)
            return Val(BOOL, _add((lo, hi), arg_cost))
        raise self.fail(
            node,
            f"undeclared reference to '{name}' (the stand-in refuses functions it cannot estimate)",
        )

    def _comprehension(self, rng: Val, macro: str, args: list[Tree], node: Tree) -> Val:
        """cel-go coster.costComprehension over the macro expansions of parser/macro.go."""
        var = _single_member(args[0])
        if var is None or var.data != "primary" or var.children[0].data != "ident":
            raise self.fail(node, "argument must be a simple name")
        if rng.decl.kind not in ("list", "map") or not rng.rooted:
            raise self.fail(
                node, f"the stand-in only estimates {macro}() over lists and maps of self"
            )
        elem = rng.decl.elem if rng.decl.kind == "list" else STRING_KEY
        name = str(var.children[0].children[0])
        self.vars.setdefault(name, []).append(Val(elem, (1, 1), None, True))
        body = self.visit(args[1])
        self.vars[name].pop()
        if macro in ("all", "exists", "exists_one", "filter"):
            self._expect(body, "bool", node, macro)
        count = self.size(rng)
        # (init, result, per-iteration loop-condition + step) of each expansion
        init, result, step = {
            "all": (0, 1, 2 + 1),  # true; @not_strictly_false(accu); accu && body
            "exists": (0, 1, 3 + 1),  # false; @not_strictly_false(!accu); accu || body
            "exists_one": (0, 2, 0 + 2),  # 0; true; body ? accu + 1 : accu; accu == 1
            "map": (LIST_CREATE_BASE_COST, 1, 0 + 2 + LIST_CREATE_BASE_COST),  # accu + [body]
            "filter": (LIST_CREATE_BASE_COST, 1, 0 + 3 + LIST_CREATE_BASE_COST),
        }[macro]
        per_hi = step + body.cost[1]
        per_lo = step if macro in ("all", "exists") else step + body.cost[0]  # short-circuit
        loop = (_mul(count[0], per_lo), _mul(count[1], per_hi))
        cost = _add(rng.cost, (init, init), (result, result), loop)
        if macro in ("map", "filter"):
            out = Decl("list", elem=body.decl if macro == "map" else elem)
            return Val(out, cost, count)
        return Val(BOOL, cost)


def _pos(node: Tree | Token) -> str:
    if isinstance(node, Token):
        return f"{node.line}:{node.column}"
    meta = getattr(node, "meta", None)
    if meta is not None and not getattr(meta, "empty", True):
        return f"{meta.line}:{meta.column}"
    for child in getattr(node, "children", []):
        if isinstance(child, (Tree, Token)):
            return _pos(child)
    return "1:1"


def _args(exprlist: Tree | None) -> list[Tree]:
    return [] if exprlist is None else list(exprlist.children)


def _single_member(expr: Tree) -> Tree | None:
    """The `member` or `primary` node under a chain of single-child precedence levels."""
    node = expr
    while isinstance(node, Tree) and len(node.children) == 1 and node.data != "primary":
        if node.data == "member":
            inner = node.children[0]
            return inner if inner.data != "primary" else inner
        node = node.children[0]
    return node if isinstance(node, Tree) and node.data == "primary" else None


def _string_value(token: Token) -> str:
    text = str(token)
    raw = text[:1] in "rR"
    body = text[1:] if raw else text
    quote = 3 if body[:3] in ('"""', "'''") else 1
    body = body[quote:-quote]
    return body if raw else body.encode("latin-1", "backslashreplace").decode("unicode_escape")


@dataclass
class Estimate:
    """A compiled rule: its estimated maximum cost per call and whether it uses oldSelf."""

    max_cost: int
    uses_old_self: bool
    ast: Any


def estimate(rule: str, self_decl: Decl) -> Estimate:
    """Parse, type-check and cost one rule (apiextensions-apiserver pkg/apiserver/schema/cel/
    compilation.go: compileRule); raises CelError with the API server's kind of detail."""
    env = celpy.Environment()
    try:
        ast = env.compile(rule)
    except celpy.CELParseError as err:
        raise CelError(f"compilation failed: ERROR: <input>: {str(err).splitlines()[0]}") from err
    checker = Estimator(self_decl)
    value = checker.visit(ast)
    if value.decl.kind not in ("bool", "dyn"):
        raise CelError("cel expression must evaluate to a bool")
    return Estimate(value.cost[1], checker.uses_old_self, ast)
