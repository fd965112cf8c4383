"""Counts as people type and read them: ``975M``, ``1.5B``, ``300k`` in; ``973M``, ``1.02B`` out; and dtype names.

Dtypes are typed in several spellings (``bf16``, ``bfloat16``); :func:`parse_dtype` turns each into one
canonical name (torch's: ``bfloat16``, ``float16``, ``float32``, as stores, profiles and Hugging Face
configs hold them), so every verb accepts the same spellings and prints the same one.
"""

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
        if float(f"{n:.3g}") >= scale:  # compare the rounded figure: 999.6M to 3 figures is 1B, not "1e+03M"
            value = float(f"{n:.3g}") / scale
            return (f"{value:.3g}" if value < 1000 else f"{value:,.0f}") + unit  # 1,500T, not 1.5e+03T
    return f"{n:.0f}"


DTYPE_ALIASES = {
    "bf16": "bfloat16", "bfloat16": "bfloat16",
    "fp16": "float16", "float16": "float16", "half": "float16",
    "fp32": "float32", "float32": "float32", "float": "float32",
}
DTYPES = ("bfloat16", "float16", "float32")
"""The canonical dtype names, in the order messages list them."""
BYTES_PER_ELEMENT = {"bfloat16": 2, "float16": 2, "float32": 4}


def canonical_dtype(name: str) -> str | None:
    """``bf16`` -> ``bfloat16`` etc.; None for a name archscale does not know."""
    return DTYPE_ALIASES.get(name.strip().lower())


def parse_dtype(text: str | None, flag: str = "--dtype") -> str | None:
    """``--dtype`` in any accepted spelling as its canonical name (None stays None: the command's default).

    Every verb with a dtype calls this once, where it reads its flags, so ``bf16`` and ``bfloat16`` mean the
    same everywhere and only the canonical name is stored, compared and printed.
    """
    if text is None:
        return None
    name = canonical_dtype(text)
    if name is None:
        raise UserError(f"{flag} {text!r}: unknown dtype; use {dtype_choices()}")
    return name


def dtype_choices() -> str:
    """``bfloat16 (bf16), float16 (fp16, half) or float32 (fp32, float)``: the canonical names with their other
    spellings, for help texts and refusals."""
    listed = [f"{dtype} ({', '.join(a for a, canon in DTYPE_ALIASES.items() if canon == dtype and a != dtype)})"
              for dtype in DTYPES]
    return ", ".join(listed[:-1]) + " or " + listed[-1]


DTYPE_HELP = dtype_choices() + "."
