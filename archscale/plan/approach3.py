"""Approach 3 by variable projection: ``L = E + A N^-alpha + B D^-beta`` fitted to the isoFLOP runs themselves.

Why beside Approach 2: Approach 2 reads N* off a parabola per budget, and a parabola is only an approximation of
a loss profile near its minimum; a surface fitted to every run has no such step, and N*(C) follows from it in
closed form (``N* = G (C/6)^a``, ``a = beta/(alpha+beta)``, the same formula as a fitted law's, computed by
:func:`archscale.plan.isoflop._law_optimum`).

Why variable projection: once the exponents are fixed, the loss is linear in ``E``, ``A`` and ``B``, so they are
solved exactly (non-negative least squares on the loss, :func:`projected_fit`) and only ``(alpha, beta)`` is
searched: a coarse grid, then grids zoomed on the best point (:func:`search_exponents`). A 5-parameter
non-linear fit from starting guesses, with its local minima and scaling trouble, becomes a 2-D search whose
global part is a grid. Everything is vectorised over the grid and over bootstrap resamples (a resample is a
vector of run weights, the counts of each run in it), so the intervals cost about as much as a few fits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from archscale.plan.intervals import interval, interval_notes
from archscale.plan.isoflop import ProgressCallback, _law_optimum, budget_groups

EXPONENT_RANGE = (0.02, 1.5)  # where alpha and beta are searched
COARSE_STEP = 0.04
ZOOM_POINTS = 9  # a zoomed grid is ZOOM_POINTS x ZOOM_POINTS ...
ZOOM_SHRINK = 4  # ... with a step this much finer, so it spans the coarser grid's neighbours of its best point
ZOOM_LEVELS = 9  # 0.04 / 4^9: exponents to about 2e-7
CHUNK = 100  # bootstrap resamples per vectorised pass (bounds memory to a few MB)
SUPPORTS = ((0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2))  # which of E, A, B are free (the rest are 0)
SINGULAR = 1e-12
METHOD = ("L = E + A N^-alpha + B D^-beta fitted to the runs by variable projection: for each (alpha, beta), E, A, B >= 0 "
          "by exact non-negative least squares on the loss, each budget weighing the same; (alpha, beta) by a grid "
          "(step 0.04 over 0.02-1.5) then zoomed grids")


# ---------------------------------------------------------------------------
# the projected fit: E, A, B for given exponents, many exponents and resamples at once
# ---------------------------------------------------------------------------
def projected_fit(weights: np.ndarray, loss: np.ndarray, n_powers: np.ndarray, d_powers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted non-negative least squares of ``loss`` on ``[1, N^-alpha, D^-beta]`` for every pair of exponents.

    ``weights`` is (R, runs), one row per resample; ``n_powers`` (R or 1, I, runs) holds ``N^-alpha`` for I
    values of alpha and ``d_powers`` (R or 1, J, runs) ``D^-beta`` for J values of beta. Returns the residual sum of
    squares (R, I, J) and ``(E, A, B)`` (R, I, J, 3) in the powers' units. With three unknowns NNLS is exact by
    enumeration: its solution is the least-squares solution on the support of its positive entries, so the best
    feasible (all >= 0) least-squares solution over the seven supports is it."""
    w = weights[:, None, :]
    y = loss[None, None, :]
    g00 = weights.sum(1)[:, None, None]
    g01 = (w * n_powers).sum(-1)[:, :, None]
    g02 = (w * d_powers).sum(-1)[:, None, :]
    g11 = (w * n_powers**2).sum(-1)[:, :, None]
    g22 = (w * d_powers**2).sum(-1)[:, None, :]
    g12 = _cross(w * n_powers, d_powers)
    r0 = (weights * loss).sum(1)[:, None, None]
    r1 = (w * n_powers * y).sum(-1)[:, :, None]
    r2 = (w * d_powers * y).sum(-1)[:, None, :]
    yy = (weights * loss**2).sum(1)[:, None, None]
    shape = g12.shape
    # unit diagonal: scale each column by its weighted norm, so N^-alpha ~ 1e-3 and 1 sit on one footing
    s = [np.broadcast_to(np.sqrt(g), shape) for g in (g00, g11, g22)]
    h = {(0, 1): g01 / (s[0] * s[1]), (0, 2): g02 / (s[0] * s[2]), (1, 2): g12 / (s[1] * s[2])}
    q = [np.broadcast_to(r, shape) / sk for r, sk in zip((r0, r1, r2), s)]
    best_rss = np.full(shape, np.inf)
    best = np.zeros(shape + (3,))
    for support in SUPPORTS:
        solution, ok = _solve_unit(support, h, q, shape)
        rss = yy - sum(solution[..., k] * q[k] for k in support)
        better = ok & (rss < best_rss) & np.all(solution >= 0, axis=-1)
        best_rss = np.where(better, rss, best_rss)
        best = np.where(better[..., None], solution, best)
    coefficients = best / np.stack(s, axis=-1)
    return np.maximum(best_rss, 0.0), coefficients


def _cross(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """``sum_k left[r, i, k] right[r, j, k]`` as (R, I, J): one BLAS product when ``right`` is shared by every
    resample (the coarse grid), else a batched one on a contiguous transpose (numpy's broadcast path on a strided
    operand is many times slower)."""
    if right.shape[0] == 1:
        rows, i, k = left.shape
        return (left.reshape(rows * i, k) @ right[0].T).reshape(rows, i, right.shape[1])
    return np.matmul(left, np.ascontiguousarray(np.swapaxes(right, -1, -2)))


def _solve_unit(support: tuple[int, ...], h: dict[tuple[int, int], np.ndarray], q: list[np.ndarray],
                shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Least squares on the columns ``support`` of a unit-diagonal Gram matrix (Cramer's rule, vectorised); the
    other coefficients are 0. Returns the solution (..., 3) and where it is defined (not singular)."""
    solution = np.zeros(shape + (3,))
    if len(support) == 1:
        solution[..., support[0]] = q[support[0]]
        return solution, np.ones(shape, dtype=bool)
    if len(support) == 2:
        i, j = support
        c = np.broadcast_to(h[(i, j)], shape)
        det = 1 - c * c
        ok = det > SINGULAR
        safe = np.where(ok, det, 1.0)
        solution[..., i] = (q[i] - c * q[j]) / safe
        solution[..., j] = (q[j] - c * q[i]) / safe
        return solution, ok
    a, b, c = (np.broadcast_to(h[key], shape) for key in ((0, 1), (0, 2), (1, 2)))
    det = 1 + 2 * a * b * c - a * a - b * b - c * c
    ok = det > SINGULAR
    safe = np.where(ok, det, 1.0)
    inverse = [[1 - c * c, b * c - a, a * c - b], [b * c - a, 1 - b * b, a * b - c], [a * c - b, a * b - c, 1 - a * a]]
    for row in range(3):
        solution[..., row] = sum(inverse[row][k] * q[k] for k in range(3)) / safe
    return solution, ok


def search_exponents(weights: np.ndarray, n: np.ndarray, d: np.ndarray, loss: np.ndarray) -> dict[str, np.ndarray]:
    """Best ``(alpha, beta)`` and ``(E, A, B)`` for each row of ``weights``: the coarse grid, then
    :data:`ZOOM_LEVELS` grids zoomed on each row's best point. N and D are scaled by their geometric means first
    (so the columns are of order one); the coefficients returned are in the original units."""
    n0, d0 = math.exp(np.log(n).mean()), math.exp(np.log(d).mean())
    ln_n, ln_d = np.log(n / n0), np.log(d / d0)
    low, high = EXPONENT_RANGE
    coarse = np.arange(low, high + COARSE_STEP / 2, COARSE_STEP)
    rss, _ = projected_fit(weights, loss, np.exp(-coarse[None, :, None] * ln_n), np.exp(-coarse[None, :, None] * ln_d))
    rows = np.arange(len(weights))
    flat = rss.reshape(len(weights), -1).argmin(1)
    alpha, beta = coarse[flat // len(coarse)], coarse[flat % len(coarse)]
    step = COARSE_STEP
    offsets = np.arange(ZOOM_POINTS) - ZOOM_POINTS // 2
    for _ in range(ZOOM_LEVELS):
        step /= ZOOM_SHRINK
        alphas = np.clip(alpha[:, None] + step * offsets, low, high)
        betas = np.clip(beta[:, None] + step * offsets, low, high)
        rss, coefficients = projected_fit(weights, loss, np.exp(-alphas[:, :, None] * ln_n), np.exp(-betas[:, :, None] * ln_d))
        flat = rss.reshape(len(weights), -1).argmin(1)
        i, j = flat // ZOOM_POINTS, flat % ZOOM_POINTS
        alpha, beta = alphas[rows, i], betas[rows, j]
    e, a_scaled, b_scaled = (coefficients[rows, i, j, k] for k in range(3))
    return {"alpha": alpha, "beta": beta, "E": e, "A": a_scaled * n0**alpha, "B": b_scaled * d0**beta,
            "rss": rss[rows, i, j]}


# ---------------------------------------------------------------------------
# Approach 3 on a runs table
# ---------------------------------------------------------------------------
@dataclass
class Approach3:
    """The surface fitted to the isoFLOP runs and the allocation it implies."""

    params: dict[str, float]
    runs: int
    rms: float
    a: float | None
    b: float | None
    budgets: list[float]
    n_opt: list[float]
    d_opt: list[float]
    loss: list[float]
    problem: str | None = None  # why the surface has no compute-optimal N* (a term vanished)
    intervals: dict[str, Any] = field(default_factory=dict)
    interval_notes: dict[str, Any] = field(default_factory=dict)
    holdout: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def predict_n(self, budgets: Sequence[float]) -> np.ndarray:
        return _law_optimum("chinchilla", self.params, np.asarray(budgets, float))[1]

    def curve(self, budgets: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """N*(C) and D*(C) over any budgets (for plotting)."""
        _, n_opt, d_opt, _ = _law_optimum("chinchilla", self.params, np.asarray(budgets, float))
        return n_opt, d_opt

    def to_json(self) -> dict[str, Any]:
        return {"method": METHOD, "params": self.params, "runs": self.runs, "rms_residual": self.rms,
                "a": self.a, "b": self.b, "problem": self.problem,
                "budgets": [{"C": c, "N": n, "D": d, "loss": loss} for c, n, d, loss in zip(self.budgets, self.n_opt, self.d_opt, self.loss)],
                "ci95": self.intervals or None, "ci95_notes": self.interval_notes or None,
                "holdout": self.holdout or None, "notes": self.notes}


def _vanished(params: dict[str, float]) -> str | None:
    """Why a fitted surface has no compute-optimal N*: a size or data term that the fit set to zero."""
    for name, term in (("A", "N"), ("B", "D")):
        if not params[name] > 0:
            return (f"the fit sets {name} = 0 (loss does not fall with {term} over these runs), so the surface has no "
                    "compute-optimal N*")
    return None


def approach3(frame: pd.DataFrame, plan_budgets: Sequence[float] = (), resamples: int = 0, seed: int = 0,
              progress: ProgressCallback | None = None) -> Approach3:
    """Approach 3 on the runs of ``frame`` (``plan`` passes the runs Approach 2's parabolas were fitted to), the
    allocation at ``plan_budgets``, and percentile intervals from ``resamples`` resamples of the runs within each
    budget (each budget keeps its count).

    Each budget weighs the same in the fit (its runs share a weight of one), as each gives one point to Approach
    2's line: a budget sampled with 24 runs does not outweigh one sampled with 8."""
    frame = frame.reset_index(drop=True)
    n, loss = frame["N"].to_numpy(float), frame["loss"].to_numpy(float)
    d = _tokens(frame)
    groups = _groups(frame)
    best = search_exponents(_budget_weights(np.ones((1, len(n))), groups), n, d, loss)
    params = {key: float(best[key][0]) for key in ("E", "A", "B", "alpha", "beta")}
    residual = loss - (params["E"] + params["A"] * n ** -params["alpha"] + params["B"] * d ** -params["beta"])
    grid = np.asarray(plan_budgets, float)
    result = Approach3(params, len(n), float(np.sqrt(np.mean(residual**2))), None, None, list(grid), [], [], [],
                       problem=_vanished(params))
    result.notes += _bound_notes(params)
    if result.problem:
        return result
    a, n_opt, d_opt, at_optimum = _law_optimum("chinchilla", params, grid)
    result.a, result.b = a, 1 - a
    result.n_opt, result.d_opt, result.loss = list(n_opt), list(d_opt), list(at_optimum)
    if resamples:
        result.intervals = _bootstrap(groups, n, d, loss, grid, resamples, seed, progress)
        result.interval_notes = interval_notes({"a": result.a, "b": result.b, "N": result.n_opt, "D": result.d_opt,
                                                "loss": result.loss}, result.intervals)
    return result


def _groups(frame: pd.DataFrame) -> list[np.ndarray]:
    """The row indices of each budget's runs."""
    labels = budget_groups(frame)
    return [np.flatnonzero(labels == level) for level in np.unique(labels)]


def _budget_weights(counts: np.ndarray, groups: list[np.ndarray]) -> np.ndarray:
    """Run weights from run counts (R, runs): each budget's weights sum to one, whatever its number of runs."""
    weights = np.array(counts, float)
    for members in groups:
        weights[:, members] /= weights[:, members].sum(1, keepdims=True)
    return weights


def _tokens(frame: pd.DataFrame) -> np.ndarray:
    """D of each run: the table's, or ``C / (6 N)`` when it gives the budget instead."""
    if "D" in frame and frame["D"].notna().all():
        return frame["D"].to_numpy(float)
    return frame["C"].to_numpy(float) / (6 * frame["N"].to_numpy(float))


def _bound_notes(params: dict[str, float]) -> list[str]:
    """An exponent that ends on the edge of the search range is where the search stopped, not a measurement."""
    low, high = EXPONENT_RANGE
    return [f"{name} = {params[name]:.3g} lies on the edge of the searched range ({low:g}-{high:g}): the runs do not "
            "determine it, and a follows it" for name in ("alpha", "beta")
            if math.isclose(params[name], low, abs_tol=1e-6) or math.isclose(params[name], high, abs_tol=1e-6)]


def _bootstrap(groups: list[np.ndarray], n: np.ndarray, d: np.ndarray, loss: np.ndarray, grid: np.ndarray,
               resamples: int, seed: int, progress: ProgressCallback | None) -> dict[str, Any]:
    """Refit on resamples of the runs within each budget, :data:`CHUNK` at a time; a refit whose surface has no
    optimum (A or B at 0) is dropped and counted."""
    rng = np.random.default_rng(seed)
    exponents, n_rows, d_rows, loss_rows, dropped = [], [], [], [], 0
    for start in range(0, resamples, CHUNK):
        count = min(CHUNK, resamples - start)
        counts = np.zeros((count, len(n)))
        for members in groups:
            counts[:, members] = rng.multinomial(len(members), np.full(len(members), 1 / len(members)), size=count)
        fits = search_exponents(_budget_weights(counts, groups), n, d, loss)
        for r in range(count):
            params = {key: float(fits[key][r]) for key in ("E", "A", "B", "alpha", "beta")}
            if _vanished(params):
                dropped += 1
                continue
            a, n_opt, d_opt, at_optimum = _law_optimum("chinchilla", params, grid)
            exponents.append(a)
            n_rows.append(n_opt)
            d_rows.append(d_opt)
            loss_rows.append(at_optimum)
        if progress:
            progress(count)
    columns = [np.array(rows).reshape(len(rows), len(grid)) for rows in (n_rows, d_rows, loss_rows)]
    return {
        "a": interval(exponents),
        "b": interval([1 - a for a in exponents]),
        "N": [interval(columns[0][:, i]) for i in range(len(grid))],
        "D": [interval(columns[1][:, i]) for i in range(len(grid))],
        "loss": [interval(columns[2][:, i]) for i in range(len(grid))],
        "resamples": len(exponents),
        "dropped": dropped,
        "method": "runs resampled within each budget, the surface refitted (grid and zoom) on each",
    }


def holdout_rows(result: Approach3, minima: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The surface's N* at each held-out budget against that budget's own Approach 2 minimum (``minima``: the
    frontier's holdout rows)."""
    if result.problem:
        return []
    rows = []
    for row in minima:
        predicted = float(result.predict_n([row["C"]])[0])
        rows.append({"C": row["C"], "N_opt": row["N_opt"], "N_predicted": predicted,
                     "relative_error": predicted / row["N_opt"] - 1})
    return rows
