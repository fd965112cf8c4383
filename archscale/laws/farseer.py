"""Farseer (Li et al. 2025, "Farseer: A Refined Scaling Law in Large Language Models").

``L(N, D) = exp(a3 N^gamma + b3) + exp(a2 N^beta + b2) * D^(-exp(a1 N^alpha + b1))``

Chinchilla gives the data term ``B / D^beta`` one amplitude and one exponent for every model size. Farseer lets
both move with N, each as a stretched exponential ``exp(a N^g + b)``, and so does the size-limited loss
``exp(a3 N^gamma + b3)`` that remains as D grows without end. Nine parameters: with many sizes and several
token counts per size it extrapolates further than Chinchilla (the paper's claim, and what
``experiments/validate/fit_selection_evidence.py`` measures here); with only a few sizes it cannot pin them
down, which is why it is one candidate among others and selection by extrapolation keeps or drops it.

The paper fits it in rounds (differential piecewise fitting: per-size fits of the D dependence, then the N
dependence of their coefficients). Here it is fitted like every other law, jointly from a grid of starts, by
least squares on log-loss when selection tries it; the paper's rounds need several token counts at every
size, which isoFLOP and over-training tables often lack.

N is normalised by its geometric mean (``a_i N^g`` absorbs the scale exactly). D is not: its exponent
depends on N, so no single rescaling of D can be folded back into ``b2``.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from archscale.laws.base import Columns, Law, Param, Params, geometric_mean, n_and_d_collinear

TERMS = (("3", "gamma"), ("2", "beta"), ("1", "alpha"))  # size-limited loss, data amplitude, data exponent


class Farseer(Law):
    name = "farseer"
    description = "exp(a3 N^gamma + b3) + exp(a2 N^beta + b2) D^-exp(a1 N^alpha + b1)"
    columns = ("N", "D")
    # Least squares on log-loss: Huber's fits of nine parameters took 2-10 s each on the shipped tables (against
    # 0.1-1 s) and ended on several minima; least squares on the loss weighs the larger, higher-loss runs more.
    selection_objectives = ("log-lsq",)
    params = (
        # the loss left at infinite data: about the loss scale at the mean size, falling with N
        Param("a3", (0.2, 0.8)),
        Param("b3", (0.0, 0.6)),
        Param("gamma", (-0.3,), min=-3.0, max=3.0),
        # the data term's amplitude (natural D, so of order D^k: e^5 to e^12)
        Param("a2", (-0.5, 0.5)),
        Param("b2", (4.0, 8.0)),
        Param("beta", (-0.2,), min=-3.0, max=3.0),
        # the data term's exponent k(N) = exp(a1 N^alpha + b1), about 0.2-0.5 in published fits
        Param("a1", (-0.2, 0.2)),
        Param("b1", (-1.4, -0.8)),
        Param("alpha", (-0.2,), min=-3.0, max=3.0),
    )

    def predict(self, params: Params, data: Columns) -> np.ndarray:
        n, d = np.asarray(data["N"], float), np.asarray(data["D"], float)
        with np.errstate(over="ignore", invalid="ignore"):  # a wild start overflows: callers treat inf/nan as a miss
            return self._terms(params, n, d)

    @staticmethod
    def _terms(params: Params, n: np.ndarray, d: np.ndarray) -> np.ndarray:
        size_limited = np.exp(params["a3"] * n ** params["gamma"] + params["b3"])
        amplitude = np.exp(params["a2"] * n ** params["beta"] + params["b2"])
        exponent = np.exp(params["a1"] * n ** params["alpha"] + params["b1"])
        return size_limited + amplitude * np.exp(-exponent * np.log(d))

    def scales(self, data: Columns) -> dict[str, float]:
        return {"N": geometric_mean(data["N"])}

    def unscale(self, params: Params, scales: Mapping[str, float]) -> dict[str, float]:
        out = dict(params)
        for index, exponent in TERMS:
            out[f"a{index}"] = params[f"a{index}"] * scales["N"] ** -params[exponent]
        return out

    def collinear_inputs(self, data: Columns) -> str | None:
        return n_and_d_collinear(data)
