"""Kaplan et al. 2020, Eq. 1.5: ``L = ((N_c / N)^(alpha_N / alpha_D) + D_c / D)^alpha_D``.

No irreducible loss: the law falls as a power of N and D together, and as one power of N when data is plentiful.
On isoFLOP studies of some setups it extrapolates better than Chinchilla's additive form, whose E must be
pinned by runs near the asymptote; selection by extrapolation decides case by case.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from archscale.laws.base import Columns, Law, Param, Params, geometric_mean, n_and_d_collinear


class Kaplan(Law):
    name = "kaplan"
    description = "((Nc/N)^(alpha_N/alpha_D) + Dc/D)^alpha_D"
    columns = ("N", "D")
    params = (
        Param("Nc", (1e-3, 1.0, 1e3), positive=True),
        Param("Dc", (1e-2, 1.0, 1e2), positive=True),
        Param("alpha_N", (0.05, 0.1, 0.3), positive=True, max=3.0),
        Param("alpha_D", (0.05, 0.1, 0.3), positive=True, max=3.0),
    )

    def predict(self, params: Params, data: Columns) -> np.ndarray:
        n, d = np.asarray(data["N"], float), np.asarray(data["D"], float)
        size = (params["Nc"] / n) ** (params["alpha_N"] / params["alpha_D"])
        return (size + params["Dc"] / d) ** params["alpha_D"]

    def scales(self, data: Columns) -> dict[str, float]:
        return {"N": geometric_mean(data["N"]), "D": geometric_mean(data["D"])}

    def unscale(self, params: Params, scales: Mapping[str, float]) -> dict[str, float]:
        return {**params, "Nc": params["Nc"] * scales["N"], "Dc": params["Dc"] * scales["D"]}

    def collinear_inputs(self, data: Columns) -> str | None:
        return n_and_d_collinear(data)
