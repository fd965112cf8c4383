"""Chinchilla: ``L = E + A / N^alpha + B / D^beta`` (Hoffmann et al.; the dissertation's Eq. 5.2/6.1)."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from archscale.laws.base import Columns, Law, Param, Params, geometric_mean, n_and_d_collinear

EXPONENT_GRID = (0.1, 0.3, 0.6)


class Chinchilla(Law):
    """Loss from parameters N and tokens D; ``tied=True`` forces ``beta = alpha``."""

    columns = ("N", "D")

    def __init__(self, tied: bool = False) -> None:
        self.tied = tied
        self.name = "chinchilla-tied" if tied else "chinchilla"
        self.description = "E + A/N^alpha + B/D^alpha" if tied else "E + A/N^alpha + B/D^beta"
        exponents = [Param("alpha", EXPONENT_GRID, positive=True, max=3.0)]
        if not tied:
            exponents.append(Param("beta", EXPONENT_GRID, positive=True, max=3.0))
        self.params = (
            Param("E", (0.5, 1.5), positive=True),
            Param("A", (0.1, 1.0), positive=True),
            Param("B", (0.1, 1.0), positive=True),
            *exponents,
        )

    def beta(self, params: Params) -> float:
        return params["alpha"] if self.tied else params["beta"]

    def predict(self, params: Params, data: Columns) -> np.ndarray:
        n, d = np.asarray(data["N"], float), np.asarray(data["D"], float)
        return params["E"] + params["A"] * n ** -params["alpha"] + params["B"] * d ** -self.beta(params)

    def scales(self, data: Columns) -> dict[str, float]:
        return {"N": geometric_mean(data["N"]), "D": geometric_mean(data["D"])}

    def unscale(self, params: Params, scales: Mapping[str, float]) -> dict[str, float]:
        out = dict(params)
        out["A"] = params["A"] * scales["N"] ** params["alpha"]
        out["B"] = params["B"] * scales["D"] ** self.beta(params)
        return out

    def collinear_inputs(self, data: Columns) -> str | None:
        return n_and_d_collinear(data)
