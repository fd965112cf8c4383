"""Counts as people type and read them: ``975M``, ``1.5B``, ``300k`` in; ``973M``, ``1.02B`` out."""

from __future__ import annotations

import math
import re

from archscale.io.errors import UserError

_SUFFIXES = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}


def parse_count(text: str, label: str = "--n") -> float:
    """``1e9``, ``975M``, ``1.5B``, ``300k`` to a float (a budget is easier to type with a suffix)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMbBgGtT]?)\s*", text)
    if not match:
        raise UserError(f"{label} {text!r}: expected a number such as 1e9, 975M or 1.5B")
    value = float(match.group(1)) * _SUFFIXES.get(match.group(2).lower(), 1.0)
    if not (math.isfinite(value) and value > 0):
        raise UserError(f"{label} {text!r}: must be positive")
    return value


def format_count(n: float) -> str:
    """A parameter or token count at a glance: 973M, 1.02B, 201K, 1.54T."""
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"
