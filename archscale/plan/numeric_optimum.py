"""N*(C) of any law of N and D by search: for laws with no closed form (Farseer, Kaplan).

Along a budget ``6 N D = C`` the loss is a function of ``N`` alone; its minimum is found on a grid in ``ln N``
wide enough to hold every plausible optimum (tokens per parameter from e^-24 to e^24), then refined by a
bounded scalar search between the grid points either side. A minimum on the grid's edge is no minimum (the
law keeps improving towards one side, e.g. a form with no data term) and is reported as missing (NaN).

Such laws need not give a power law: Farseer's exponent of D moves with N, so the slope of ``ln N*`` against
``ln C`` changes with C. :func:`local_exponent` measures it where the plan asks.

:func:`minimum_on_grid` (the best grid point, refined between its neighbours) is the one search ``plan`` uses
for every one-dimensional optimum: N* along a budget, the least-compute point of a target loss, and the
inference-aware optimum.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from archscale.laws import Law

SEARCHED_LAWS = ("kaplan", "farseer")  # laws of N and D whose optima plan finds by search (no closed form)
HALF_WIDTH = 12.0  # ln N from the balanced point ln sqrt(C/6) -12 to +12
GRID = 2401
SLOPE_STEP = 0.1  # ln C either side of a budget for the local slope


def numeric_optimum(law: Law, params: Mapping[str, float], budgets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N*, D*, loss at N*) for each budget; NaN where the loss has no interior minimum along the budget."""
    budgets = np.asarray(budgets, float)
    centre = 0.5 * np.log(budgets / 6.0)
    offsets = np.linspace(-HALF_WIDTH, HALF_WIDTH, GRID)
    log_n = centre[:, None] + offsets[None, :]
    loss = _along_budget(law, params, budgets[:, None], log_n)
    best = np.argmin(np.where(np.isfinite(loss), loss, np.inf), axis=1)
    n_opt = np.full(len(budgets), np.nan)
    for row, index in enumerate(best):
        if 0 < index < GRID - 1 and np.isfinite(loss[row, index]):
            along = lambda u, c=budgets[row]: float(_along_budget(law, params, np.array([[c]]), np.array([[u]]))[0, 0])  # noqa: E731
            n_opt[row] = np.exp(minimum_on_grid(along, log_n[row], loss[row]))
    d_opt = budgets / (6.0 * n_opt)
    return n_opt, d_opt, law_loss(law, params, n_opt, d_opt)


def local_exponent(law: Law, params: Mapping[str, float], budget: float) -> float:
    """d ln N* / d ln C at ``budget``: the exponent ``a`` of N* proportional to C^a, where the law has one."""
    around = budget * np.exp(np.array([-SLOPE_STEP, SLOPE_STEP]))
    n_opt, _, _ = numeric_optimum(law, params, around)
    return float(np.diff(np.log(n_opt))[0] / (2 * SLOPE_STEP))


def minimum_on_grid(function: Callable[[float], float], log_grid: np.ndarray, values: np.ndarray) -> float:
    """``ln x`` where ``function`` (of ``ln x``) is least: the grid point with the lowest finite value, refined by a
    bounded scalar search between its neighbours, and kept only when the refinement improves on it."""
    from scipy.optimize import minimize_scalar

    best = int(np.argmin(np.where(np.isfinite(values), values, np.inf)))
    bounds = (float(log_grid[max(best - 1, 0)]), float(log_grid[min(best + 1, len(log_grid) - 1)]))
    refined = minimize_scalar(function, bounds=bounds, method="bounded", options={"xatol": 1e-10})
    return float(refined.x) if refined.fun <= values[best] else float(log_grid[best])


def law_loss(law: Law, params: Mapping[str, float], n: np.ndarray, d: np.ndarray) -> np.ndarray:
    """The law's loss at ``(N, D)``; an overflow far from the runs is inf or nan, which the searches skip."""
    with np.errstate(all="ignore"):
        return law.predict(params, {"N": np.asarray(n, float), "D": np.asarray(d, float)})


def _along_budget(law: Law, params: Mapping[str, float], budgets: np.ndarray, log_n: np.ndarray) -> np.ndarray:
    n = np.exp(log_n)
    d = np.broadcast_to(budgets, n.shape) / (6.0 * n)
    return law_loss(law, params, n.ravel(), d.ravel()).reshape(n.shape)
