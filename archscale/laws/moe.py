"""Mixture-of-Experts laws: loss from size, tokens and how the experts are cut (granularity) or counted.

Two published forms, each read from its paper and kept in the paper's own notation, so that a shipped fit's
parameters are the paper's table verbatim (``data/fits/krajewski2024_granularity.json``,
``data/fits/ludziejewski2025_joint.json``):

* ``moe-granularity`` -- Krajewski et al. 2024, "Scaling Laws for Fine-Grained Mixture of Experts", Eq. 9:
  ``L(N, D, G) = c + (g / G^gamma + a) / N^alpha + b / D^beta``. ``N`` is the *total* non-embedding parameter
  count (every expert; routing excluded), ``D`` training tokens, ``G = d_ff / expert_d_ff`` the granularity,
  with ``d_ff`` the dense reference width ``4 d_model`` (their Section 3.1 convention). Fitted at expansion
  rate 64 only: the law has no term for the number of experts.
* ``moe-joint`` -- Ludziejewski et al. 2025, "Joint MoE Scaling Laws: Mixture of Experts Can Be Memory
  Efficient", Eq. 6: ``L = a Ê^delta N_act^(alpha + gamma ln Ê) + b Ê^omega D^(beta + zeta ln Ê) + c``, with
  ``Ê`` the saturating transform of the expert count (their Eq. 4, after Clark et al. 2022):
  ``1/Ê = 1/(E - 1 + (1/E_start - 1/E_max)^-1) + 1/E_max``. The exponents are *signed* as in the paper
  (``alpha, beta < 0``), not written ``A / N^alpha`` as the dense laws here are. A dense run is ``E = 1``, so
  one fit covers dense and MoE runs. ``E_start`` and ``E_max`` are held at the paper's values unless ``--fix``
  says otherwise: a handful of expert counts cannot place the transform's two knees.
* ``moe-joint-fixed-exponents`` -- the same form with the exponents' slopes in ``ln Ê`` (``gamma``, ``zeta``)
  held at 0: ``a Ê^delta N_active^alpha + b Ê^omega D^beta + c``, a Chinchilla law whose two amplitudes scale
  as powers of the expert count. Seven free parameters instead of nine: what a study of two or three active
  sizes can pin down (the paper's own gamma and zeta are 0.0098 and -0.0259, small against alpha and beta).

The runs columns they read are derived in :func:`archscale.fit.runs.derive`: ``G`` (MoE rows) and
``expansion`` (``n_experts / experts_per_token``, 1 on dense rows), the latter being the paper's ``E`` for its
top-1 Switch runs and the memory-per-active ratio of the expert layer in general.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from archscale.laws.base import Columns, Law, Param, Params, geometric_mean, n_and_d_collinear

MOE_LAWS = ("moe-granularity", "moe-joint", "moe-joint-fixed-exponents")
"""The MoE law names: they need MoE runs (the columns :data:`MOE_LAW_COLUMNS` names)."""

EXPONENT_GRID = (0.1, 0.3)
JOINT_E_START = 2.0732
JOINT_E_MAX = 290.4521
"""Ludziejewski et al. 2025, Table 3: the fitted knees of the expert-count transform, held fixed by default."""


def _spread(values: np.ndarray) -> float:
    return float(np.ptp(np.log(values))) if len(values) else 0.0


class Granularity(Law):
    """Krajewski et al. 2024, Eq. 9: granularity lowers the parameter term towards ``a / N^alpha``."""

    name = "moe-granularity"
    description = "c + (g/G^gamma + a)/N^alpha + b/D^beta"
    columns = ("N", "D", "G")
    params = (
        Param("c", (0.5, 1.5), positive=True),
        Param("a", (0.1, 1.0), positive=True),
        Param("g", (0.03, 0.3), positive=True),
        Param("gamma", (0.3, 1.0), positive=True, max=3.0),
        Param("alpha", EXPONENT_GRID, positive=True, max=3.0),
        Param("b", (0.1, 1.0), positive=True),
        Param("beta", EXPONENT_GRID, positive=True, max=3.0),
    )

    def predict(self, params: Params, data: Columns) -> np.ndarray:
        n, d, g = (np.asarray(data[c], float) for c in self.columns)
        size_term = params["g"] * g ** -params["gamma"] + params["a"]
        return params["c"] + size_term * n ** -params["alpha"] + params["b"] * d ** -params["beta"]

    def scales(self, data: Columns) -> dict[str, float]:
        return {"N": geometric_mean(data["N"]), "D": geometric_mean(data["D"])}

    def unscale(self, params: Params, scales: Mapping[str, float]) -> dict[str, float]:
        out = dict(params)
        for name in ("a", "g"):  # both multiply N^-alpha
            out[name] = params[name] * scales["N"] ** params["alpha"]
        out["b"] = params["b"] * scales["D"] ** params["beta"]
        return out

    def collinear_inputs(self, data: Columns) -> str | None:
        if _spread(np.asarray(data["G"], float)) == 0:
            return ("every run has the same granularity G, so g and gamma cannot be told apart from a; "
                    "add runs at other expert widths (expert_d_ff), or fit chinchilla")
        return n_and_d_collinear(data)


def e_hat(expansion: np.ndarray, e_start: float, e_max: float) -> np.ndarray:
    """Ludziejewski et al. 2025, Eq. 4: the expert count seen through a saturating transform (E = 1 gives E_start)."""
    e = np.asarray(expansion, float)
    return 1.0 / (1.0 / (e - 1.0 + 1.0 / (1.0 / e_start - 1.0 / e_max)) + 1.0 / e_max)


class Joint(Law):
    """Ludziejewski et al. 2025, Eq. 6: dense and MoE runs in one law of active parameters, tokens and experts."""

    name = "moe-joint"
    description = "a Ê^delta N_active^(alpha + gamma ln Ê) + b Ê^omega D^(beta + zeta ln Ê) + c"
    columns = ("N_active", "D", "expansion")
    default_fixed = {"E_start": JOINT_E_START, "E_max": JOINT_E_MAX}
    params = (
        Param("a", (0.1, 1.0), positive=True),
        Param("alpha", (-0.3, -0.1), min=-3.0, max=0.0),
        Param("delta", (0.0,), min=-3.0, max=3.0),
        Param("gamma", (0.0,), min=-1.0, max=1.0),
        Param("b", (0.1, 1.0), positive=True),
        Param("beta", (-0.3, -0.1), min=-3.0, max=0.0),
        Param("omega", (0.0,), min=-3.0, max=3.0),
        Param("zeta", (0.0,), min=-1.0, max=1.0),
        Param("c", (0.5, 1.5), positive=True),
        Param("E_start", (JOINT_E_START,), positive=True),
        Param("E_max", (JOINT_E_MAX,), positive=True),
    )

    def predict(self, params: Params, data: Columns) -> np.ndarray:
        n, d = np.asarray(data["N_active"], float), np.asarray(data["D"], float)
        log_e = np.log(e_hat(data["expansion"], params["E_start"], params["E_max"]))
        with np.errstate(over="ignore", invalid="ignore"):  # a wild start overflows: callers treat inf/nan as a miss
            size = params["a"] * np.exp(params["delta"] * log_e + (params["alpha"] + params["gamma"] * log_e) * np.log(n))
            data_term = params["b"] * np.exp(params["omega"] * log_e + (params["beta"] + params["zeta"] * log_e) * np.log(d))
        return size + data_term + params["c"]

    def scales(self, data: Columns) -> dict[str, float]:
        return {"N_active": geometric_mean(data["N_active"]), "D": geometric_mean(data["D"])}

    def unscale(self, params: Params, scales: Mapping[str, float]) -> dict[str, float]:
        """``(N/N0)^(alpha + gamma ln Ê)`` = ``N^(...) N0^-alpha Ê^(-gamma ln N0)``: ``a`` and ``delta`` absorb it."""
        out = dict(params)
        for amplitude, power, exponent, slope, column in (("a", "delta", "alpha", "gamma", "N_active"),
                                                          ("b", "omega", "beta", "zeta", "D")):
            log_scale = np.log(scales[column])
            out[amplitude] = params[amplitude] * float(np.exp(-params[exponent] * log_scale))
            out[power] = params[power] - params[slope] * float(log_scale)
        return out

    def collinear_inputs(self, data: Columns) -> str | None:
        expansion = np.asarray(data["expansion"], float)
        if _spread(expansion) == 0:
            kind = "dense (E = 1)" if expansion[0] == 1 else f"at E = {expansion[0]:g}"
            return (f"every run is {kind}, so the expert terms (delta, gamma, omega, zeta) cannot be fitted; "
                    "add runs with other expert counts, or fit chinchilla")
        return n_and_d_collinear({"N": data["N_active"], "D": data["D"]})


class JointFixedExponents(Joint):
    """The joint law with exponents that do not move with the expert count (gamma = zeta = 0 by default)."""

    name = "moe-joint-fixed-exponents"
    description = "a Ê^delta N_active^alpha + b Ê^omega D^beta + c"
    default_fixed = {**Joint.default_fixed, "gamma": 0.0, "zeta": 0.0}
