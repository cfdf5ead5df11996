"""Kubernetes quantities ("500m", "1.5", "1536Mi", "2G", "1e3"), read one way for the whole
operator: sizing reads the spec's CPU and memory with the same parser the scheduling check
uses to add up requests as the scheduler does, so the two never disagree on a value.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

# k8s.io/apimachinery pkg/api/resource/suffix.go (newSuffixer): binary suffixes Ki..Ei, decimal
# suffixes n, u, m, "" , k, M, G, T, P, E; quantity.go (ParseQuantity, parseQuantityString):
# a signed decimal number, then a suffix or a decimal exponent (e3, E-2).
_BINARY = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50, "Ei": 1 << 60}
_DECIMAL = {
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 10**3),
    "": Fraction(1),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
}
_QUANTITY = re.compile(
    r"(?P<num>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?:(?P<exp>[eE][+-]?[0-9]+)|(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]))?"
)


def parse_quantity(value: str | int | float) -> Fraction:
    """The exact value of a Kubernetes quantity ("500m", "1.5", "16Gi", "2G", "1e3", 4)."""
    if isinstance(value, bool):
        raise ValueError(f"not a quantity: {value!r}")
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, float):
        return Fraction(str(value))
    match = _QUANTITY.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"not a quantity: {value!r}")
    number = Fraction(match["num"])
    if match["exp"]:
        return number * Fraction(10) ** int(match["exp"][1:])
    suffix = match["suffix"] or ""
    return number * (_BINARY[suffix] if suffix in _BINARY else _DECIMAL[suffix])


def scheduler_units(resource: str, value: str | int | float) -> int:
    """A quantity as the scheduler counts it: CPU in millicores (Quantity.MilliValue), anything
    else in whole units (Quantity.Value); both round up (quantity.go: ScaledValue)."""
    exact = parse_quantity(value)
    return math.ceil(exact * 1000) if resource == "cpu" else math.ceil(exact)


def memory_bytes(quantity: str) -> int:
    """Bytes of a memory quantity such as "1536Mi" or "2G" (a fraction of a byte rounds up,
    as the scheduler counts it)."""
    return scheduler_units("memory", quantity)


def cpu_cores(quantity: str) -> float:
    """Cores of a CPU quantity such as "500m" or "1.5"."""
    return float(parse_quantity(quantity))


def format_memory(n_bytes: int) -> str:
    """The smallest whole Mi quantity holding `n_bytes` ("1536Mi"; "2Gi" when exact)."""
    mib = -(-n_bytes // (1 << 20))
    return f"{mib // 1024}Gi" if mib % 1024 == 0 else f"{mib}Mi"
