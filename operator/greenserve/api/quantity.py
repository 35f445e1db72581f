"""Kubernetes quantities ("2Gi", "500M", "1.5e9") as numbers: pure, the grammar of resource.Quantity."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1)}
_DECIMAL.update({"k": Decimal(10**3), "M": Decimal(10**6), "G": Decimal(10**9), "T": Decimal(10**12)})
_DECIMAL.update({"P": Decimal(10**15), "E": Decimal(10**18)})
_SHAPE = re.compile(r"^\+?([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][-+]?[0-9]+)?$")


def parse_quantity(value: int | str) -> Decimal:
    """The quantity's value ("2Gi" -> 2147483648); ValueError for anything that is not a quantity."""
    if isinstance(value, bool):
        raise ValueError("a quantity is a number or a string such as 2Gi")
    if isinstance(value, int):
        return Decimal(value)
    found = _SHAPE.match(value.strip())
    if not found:
        raise ValueError(f"{value!r} is not a Kubernetes quantity")
    number, suffix = found.group(1), found.group(2) or ""
    try:
        base = Decimal(number)
    except InvalidOperation as exc:
        raise ValueError(f"{value!r} is not a Kubernetes quantity") from exc
    if suffix in _BINARY:
        return base * _BINARY[suffix]
    if suffix[:1] in ("e", "E"):
        return base * (Decimal(10) ** int(suffix[1:]))
    return base * _DECIMAL[suffix]
