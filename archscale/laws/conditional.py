"""Conditional architecture laws (the dissertation's Eq. 6.3) and the one-factor U-curve.

Both calibrate a reference loss ``L_opt(N, D)`` by two separable factors,
one in ``x = d_model / sqrt(N_non_embed)`` and one in ``r = r_mlp/attn``,
each of the U-shaped form ``c0 + c1 log x + c2 / x`` whose minimum is at
``x* = c2 / c1`` (when ``c1, c2 > 0``).

The multiplicative form ``f(x) g(r) L_opt`` is unchanged when ``f`` is
multiplied by any ``c`` and ``g`` divided by it, so its six coefficients are
not all identifiable: one must be fixed. archscale fixes ``b0 = 1`` unless told
otherwise (``--fix b0=...``), which makes ``g(r)`` the relative penalty of the
MLP-to-attention split. Published fits in another gauge (the paper's
``b0 = 0.387``) load and predict exactly as published.
"""

from __future__ import annotations

import numpy as np

from archscale.laws.base import Columns, Law, Param, Params


def u_factor(c0: float, c1: float, c2: float, x: np.ndarray) -> np.ndarray:
    """``c0 + c1 log x + c2 / x``: falls then rises in ``x`` when ``c1, c2 > 0``."""
    x = np.asarray(x, float)
    return c0 + c1 * np.log(x) + c2 / x


def factor_optimum(c1: float, c2: float) -> float:
    """Closed-form minimiser ``x* = c2 / c1`` of :func:`u_factor`; NaN when the curve has no interior minimum."""
    if c1 > 0 and c2 > 0:
        return c2 / c1
    return float("nan")


def _shape_collinearity(data: Columns) -> str | None:
    for column, meaning in (("x", "d_model/sqrt(N)"), ("r", "MLP-to-attention ratio r")):
        if np.ptp(np.log(np.asarray(data[column], float))) == 0:
            return f"every run has the same {meaning}, so its factor cannot be fitted"
    return None


COEFFICIENT_GRIDS = {
    "a1": (0.01, 0.1),
    "a2": (0.001, 0.01),
    "b1": (0.01, 0.1),
    "b2": (0.005, 0.05),
}


class ConditionalMultiplicative(Law):
    """``L = (a0 + a1 log x + a2/x)(b0 + b1 log r + b2/r) L_opt(N, D)``."""

    name = "conditional-mult"
    description = "(a0 + a1 log x + a2/x)(b0 + b1 log r + b2/r) L_opt"
    columns = ("x", "r", "L_opt")
    default_fixed = {"b0": 1.0}
    params = (
        Param("a0", (0.9, 1.0, 1.1)),
        Param("a1", COEFFICIENT_GRIDS["a1"]),
        Param("a2", COEFFICIENT_GRIDS["a2"]),
        Param("b0", (1.0,)),
        Param("b1", COEFFICIENT_GRIDS["b1"]),
        Param("b2", COEFFICIENT_GRIDS["b2"]),
    )

    def predict(self, params: Params, data: Columns) -> np.ndarray:
        f = u_factor(params["a0"], params["a1"], params["a2"], data["x"])
        g = u_factor(params["b0"], params["b1"], params["b2"], data["r"])
        return f * g * np.asarray(data["L_opt"], float)

    def optimum(self, params: Params) -> dict[str, float]:
        return {"x": factor_optimum(params["a1"], params["a2"]), "r": factor_optimum(params["b1"], params["b2"])}

    def collinear_inputs(self, data: Columns) -> str | None:
        return _shape_collinearity(data)


GQA_FACTORS = {
    "log": ("1 + c log g", lambda c, g: 1.0 + c * np.log(g)),
    "sat": ("1 + c (1 - 1/g)", lambda c, g: 1.0 + c * (1.0 - 1.0 / g)),
}
"""The KV-grouping factor ``h(g)``, ``g`` = query heads per KV head, 1 at multi-head attention (g = 1).

``log`` keeps adding the same penalty per doubling of the group; ``sat`` saturates (going from 8 to 16 costs
less than 1 to 2), as a KV cache already shared by many heads loses little more. Which one extrapolates is
for selection to say on the user's runs; neither is fitted unless the runs vary GQA.
"""


class ConditionalMultiplicativeGQA(ConditionalMultiplicative):
    """``L = (a0 + a1 log x + a2/x)(b0 + b1 log r + b2/r) h(g) L_opt(N, D)``, with ``h`` from :data:`GQA_FACTORS`.

    The dissertation's law has no GQA term (its runs all use GQA 4), so every GQA variant of a shape gets one
    loss and a search prefers the largest group. ``c`` is fitted from runs that vary GQA at fixed x and r.
    """

    columns = ("x", "r", "gqa", "L_opt")

    def __init__(self, factor: str = "log") -> None:
        formula, self._h = GQA_FACTORS[factor]
        self.name = "conditional-mult-gqa" if factor == "log" else f"conditional-mult-gqa-{factor}"
        self.description = f"(a0 + a1 log x + a2/x)(b0 + b1 log r + b2/r)({formula}) L_opt"
        self.params = ConditionalMultiplicative.params + (Param("c", (0.0, 0.01, 0.05)),)

    def predict(self, params: Params, data: Columns) -> np.ndarray:
        h = self._h(params["c"], np.asarray(data["gqa"], float))
        return super().predict(params, data) * h

    def collinear_inputs(self, data: Columns) -> str | None:
        if np.ptp(np.asarray(data["gqa"], float)) == 0:
            return "every run has the same GQA group, so the GQA factor cannot be fitted"
        return _shape_collinearity(data)


class ConditionalAdditive(Law):
    """``L = (a0 + a1 log x + a2/x) + (b1 log r + b2/r) + L_opt(N, D)``."""

    name = "conditional-add"
    description = "(a0 + a1 log x + a2/x) + (b1 log r + b2/r) + L_opt"
    columns = ("x", "r", "L_opt")
    params = (
        Param("a0", (-0.2, 0.0, 0.2)),
        Param("a1", COEFFICIENT_GRIDS["a1"]),
        Param("a2", COEFFICIENT_GRIDS["a2"]),
        Param("b1", COEFFICIENT_GRIDS["b1"]),
        Param("b2", COEFFICIENT_GRIDS["b2"]),
    )

    def predict(self, params: Params, data: Columns) -> np.ndarray:
        f = u_factor(params["a0"], params["a1"], params["a2"], data["x"])
        g = u_factor(0.0, params["b1"], params["b2"], data["r"])
        return f + g + np.asarray(data["L_opt"], float)

    def optimum(self, params: Params) -> dict[str, float]:
        return {"x": factor_optimum(params["a1"], params["a2"]), "r": factor_optimum(params["b1"], params["b2"])}

    def collinear_inputs(self, data: Columns) -> str | None:
        return _shape_collinearity(data)


class UCurve(Law):
    """One factor alone, ``loss = c0 + c1 log v + c2 / v`` in one shape column ``v`` (Figures 6.9/6.10)."""

    def __init__(self, column: str) -> None:
        self.column = column
        self.name = f"ucurve-{column}"
        self.description = f"c0 + c1 log {column} + c2/{column}"
        self.columns = (column,)
        self.params = (Param("c0", (1.0, 3.0)), Param("c1", (0.01, 0.1)), Param("c2", (0.001, 0.01, 0.1)))

    def predict(self, params: Params, data: Columns) -> np.ndarray:
        return u_factor(params["c0"], params["c1"], params["c2"], data[self.column])

    def optimum(self, params: Params) -> dict[str, float]:
        return {self.column: factor_optimum(params["c1"], params["c2"])}

    def collinear_inputs(self, data: Columns) -> str | None:
        if len(np.unique(np.asarray(data[self.column]))) < 3:
            return f"a U-curve needs at least 3 distinct values of {self.column}"
        return None
