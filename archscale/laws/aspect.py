"""Aspect-ratio law (the dissertation's Eq. 5.4): ``(E + A N^-alpha + B D^-beta)(1 + eps R^gamma)``.

``R = d_model / n_layers``. The paper ties ``alpha = beta = gamma``; the
authors' released code also fits the exponent on R freely, which is the
default here (``aspect``); ``aspect-tied`` is the paper's form.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from archscale.laws.base import Columns, Law, Param, Params, geometric_mean, n_and_d_collinear
from archscale.laws.chinchilla import EXPONENT_GRID


class Aspect(Law):
    columns = ("N", "D", "R")

    def __init__(self, tied: bool = False) -> None:
        self.tied = tied
        self.name = "aspect-tied" if tied else "aspect"
        self.description = ("(E + A N^-a + B D^-a)(1 + eps R^a)" if tied
                            else "(E + A N^-alpha + B D^-beta)(1 + eps R^gamma)")
        exponents = [Param("alpha", EXPONENT_GRID, positive=True, max=3.0)]
        if not tied:
            exponents += [Param("beta", EXPONENT_GRID, positive=True, max=3.0),
                          Param("gamma", (0.1, 0.5, 1.0), min=-3.0, max=3.0)]
        self.params = (
            Param("E", (0.5, 1.5), positive=True),
            Param("A", (0.1, 1.0), positive=True),
            Param("B", (0.1, 1.0), positive=True),
            Param("eps", (1e-3, 0.05), positive=True),
            *exponents,
        )

    def beta(self, params: Params) -> float:
        return params["alpha"] if self.tied else params["beta"]

    def gamma(self, params: Params) -> float:
        return params["alpha"] if self.tied else params["gamma"]

    def predict(self, params: Params, data: Columns) -> np.ndarray:
        n, d, r = (np.asarray(data[c], float) for c in ("N", "D", "R"))
        base = params["E"] + params["A"] * n ** -params["alpha"] + params["B"] * d ** -self.beta(params)
        return base * (1.0 + params["eps"] * r ** self.gamma(params))

    def scales(self, data: Columns) -> dict[str, float]:
        return {column: geometric_mean(data[column]) for column in self.columns}

    def unscale(self, params: Params, scales: Mapping[str, float]) -> dict[str, float]:
        out = dict(params)
        out["A"] = params["A"] * scales["N"] ** params["alpha"]
        out["B"] = params["B"] * scales["D"] ** self.beta(params)
        out["eps"] = params["eps"] * scales["R"] ** -self.gamma(params)
        return out

    def collinear_inputs(self, data: Columns) -> str | None:
        if np.ptp(np.log(data["R"])) == 0:
            return "every run has the same aspect ratio R, so eps and gamma cannot be identified"
        return n_and_d_collinear(data)
