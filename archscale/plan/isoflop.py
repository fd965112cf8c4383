"""Compute-optimal planning: how big a model, and how many tokens, for a training budget C = 6 N D.

Two routes, as in the Chinchilla paper, each with 95% bootstrap intervals:

* **From a fitted law** (:func:`law_allocation`). Minimising ``E + A/N^alpha + B/D^beta`` subject to
  ``6 N D = C`` gives ``N* = G (C/6)^a``, ``D* = (C/6)/N*`` with ``a = beta/(alpha+beta)``,
  ``b = alpha/(alpha+beta)`` and ``G = (alpha A / (beta B))^(1/(alpha+beta))``. Intervals come from the
  bootstrap refits stored in the fit JSON (``archscale fit --bootstrap K``).
* **From isoFLOP profiles** (:func:`isoflop_frontier`, the paper's Approach 2). Per budget, a parabola of
  loss in ``log N`` locates the best size ``N*``; then ``log N*`` and ``log D*`` against ``log C`` are
  straight lines whose slopes are ``a`` and ``b``. A budget whose parabola has its minimum outside the
  sizes it tried does not locate a minimum at all (its vertex is an extrapolation) and is refused, or
  dropped on request. Intervals: the runs of every budget are resampled (each budget keeps its count) and
  both steps are redone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from archscale.io.errors import UserError
from archscale.fit.selection import budgets as run_budgets
from archscale.fit.fitted import FittedLaw
from archscale.fit.rows import size_levels

PLANNABLE_LAWS = ("chinchilla", "chinchilla-tied", "aspect", "aspect-tied")
MIN_SIZES = 3  # a parabola needs three sizes
MIN_BUDGETS = 3  # a line through fewer budgets has no interval worth the name
DEFAULT_RESAMPLES = 1000
INTERVAL = (2.5, 97.5)


def interval(values: Sequence[float]) -> tuple[float, float] | None:
    """95% percentile interval of finite values; None when there are too few."""
    finite = np.asarray([v for v in values if v is not None and np.isfinite(v)], float)
    if len(finite) < 10:
        return None
    low, high = np.percentile(finite, INTERVAL)
    return float(low), float(high)


# ---------------------------------------------------------------------------
# from a fitted law
# ---------------------------------------------------------------------------
@dataclass
class LawAllocation:
    """N*(C), D*(C) and the loss there for each budget, and the exponents, from one fitted law."""

    law: str
    source: str
    a: float
    b: float
    budgets: list[float]
    n_opt: list[float]
    d_opt: list[float]
    loss: list[float | None]
    params: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def curve(self, budgets: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """N*(C) and D*(C) of the fitted law over any budgets (for plotting)."""
        _, n_opt, d_opt, _ = _law_optimum(self.law, self.params, np.asarray(budgets, float))
        return n_opt, d_opt

    def to_json(self) -> dict[str, Any]:
        return {"law": self.law, "source": self.source, "a": self.a, "b": self.b,
                "budgets": [{"C": c, "N": n, "D": d, "loss": loss} for c, n, d, loss in zip(self.budgets, self.n_opt, self.d_opt, self.loss)],
                "ci95": self.intervals or None, "notes": self.notes}


def _law_optimum(law_name: str, params: dict[str, float], budgets: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """(a, N*, D*, loss at the optimum) for one parameter set."""
    alpha = params["alpha"]
    beta = params["alpha"] if law_name.endswith("-tied") else params["beta"]
    a = beta / (alpha + beta)
    g = (alpha * params["A"] / (beta * params["B"])) ** (1.0 / (alpha + beta))
    n_opt = g * (budgets / 6.0) ** a
    d_opt = budgets / (6.0 * n_opt)
    loss = params["E"] + params["A"] * n_opt**-alpha + params["B"] * d_opt**-beta
    return a, n_opt, d_opt, loss


def law_allocation(fitted: FittedLaw, budgets: Sequence[float]) -> LawAllocation:
    """The compute-optimal allocation a fitted Chinchilla (or aspect) law implies at each budget."""
    name = fitted.law.name
    if name not in PLANNABLE_LAWS:
        raise UserError(f"{fitted.source}: compute-optimal planning needs a Chinchilla or aspect fit "
                        f"({', '.join(PLANNABLE_LAWS)}), not {name}")
    grid = np.asarray(budgets, float)
    a, n_opt, d_opt, loss = _law_optimum(name, fitted.params, grid)
    notes = []
    shape = name.startswith("aspect")
    if shape:
        notes.append("the aspect law's shape factor (1 + eps R^gamma) does not move N* or D*; the loss shown is its "
                     "size part E + A/N^alpha + B/D^beta, before the shape penalty")
    result = LawAllocation(name, fitted.source, a, 1 - a, list(grid), list(n_opt), list(d_opt), list(loss),
                           params=dict(fitted.params), notes=notes)
    if fitted.draws:
        ends = [_law_optimum(name, draw, grid) for draw in fitted.draws]
        result.intervals = {
            "a": interval([e[0] for e in ends]),
            "b": interval([1 - e[0] for e in ends]),
            "N": [interval([e[1][i] for e in ends]) for i in range(len(grid))],
            "D": [interval([e[2][i] for e in ends]) for i in range(len(grid))],
            "loss": [interval([e[3][i] for e in ends]) for i in range(len(grid))],
            "resamples": len(ends),
        }
    else:
        result.notes.append(f"{fitted.source} has no bootstrap refits: refit with --bootstrap 200 for intervals")
    return result


# ---------------------------------------------------------------------------
# from isoFLOP profiles (Approach 2)
# ---------------------------------------------------------------------------
@dataclass
class Profile:
    """One budget's parabola ``loss = c2 u^2 + c1 u + c0`` in ``u = ln N``, and where it bottoms out."""

    budget: float
    n_runs: int
    n_sizes: int
    n_range: tuple[float, float]
    coefficients: tuple[float, float, float]
    n_opt: float | None
    loss_opt: float | None
    role: str = "fit"  # fit, holdout, or excluded
    problem: str | None = None
    runs: tuple[np.ndarray, np.ndarray] = (np.empty(0), np.empty(0))  # the budget's N and loss, for plotting

    @property
    def d_opt(self) -> float | None:
        return None if self.n_opt is None else self.budget / (6.0 * self.n_opt)


@dataclass
class IsoflopFrontier:
    """Approach 2: the per-budget minima and the power laws through them."""

    profiles: list[Profile]
    a: float
    b: float
    n_coefficient: float  # N* = n_coefficient * C^a
    budgets: list[float]
    n_opt: list[float]
    d_opt: list[float]
    intervals: dict[str, Any] = field(default_factory=dict)
    holdout: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def predict_n(self, budgets: Sequence[float]) -> np.ndarray:
        return self.n_coefficient * np.asarray(budgets, float) ** self.a

    def to_json(self) -> dict[str, Any]:
        return {
            "method": "Approach 2: per-budget parabola of loss in ln N, then ln N* and ln D* linear in ln C",
            "a": self.a, "b": self.b, "n_coefficient": self.n_coefficient,
            "profiles": [{"C": p.budget, "runs": p.n_runs, "sizes": p.n_sizes, "N_range": list(p.n_range),
                          "parabola": list(p.coefficients), "N_opt": p.n_opt, "D_opt": p.d_opt, "loss_opt": p.loss_opt,
                          "role": p.role, "problem": p.problem} for p in self.profiles],
            "budgets": [{"C": c, "N": n, "D": d} for c, n, d in zip(self.budgets, self.n_opt, self.d_opt)],
            "ci95": self.intervals or None,
            "holdout": self.holdout or None,
            "notes": self.notes,
        }


def budget_groups(frame: pd.DataFrame) -> np.ndarray:
    """Label runs by training budget: runs within 10% of one another's ``C`` (or ``6 N D``) share one."""
    return size_levels(run_budgets(frame))


def fit_profile(budget: float, n: np.ndarray, loss: np.ndarray) -> Profile:
    """A parabola in ``ln N`` through one budget's runs, and whether its minimum lies among the sizes tried."""
    u = np.log(n)
    sizes = len(np.unique(np.round(u, 6)))
    profile = Profile(budget, len(n), sizes, (float(n.min()), float(n.max())), (math.nan,) * 3, None, None, runs=(n, loss))
    if sizes < MIN_SIZES:
        profile.problem = f"has {sizes} model size{'s' if sizes != 1 else ''}; a parabola needs at least {MIN_SIZES}"
        return profile
    c2, c1, c0 = np.polyfit(u, loss, 2)
    profile.coefficients = (float(c2), float(c1), float(c0))
    if not c2 > 0:
        profile.problem = "its losses do not curve upwards on both sides (the parabola has no minimum)"
        return profile
    vertex = -c1 / (2 * c2)
    if not u.min() <= vertex <= u.max():
        side = "below its smallest" if vertex < u.min() else "above its largest"
        profile.problem = (f"its parabola's minimum (N = {math.exp(vertex):.3g}) lies {side} model "
                           f"({n.min():.3g}-{n.max():.3g}): the sizes do not bracket the minimum")
        return profile
    profile.n_opt = float(math.exp(vertex))
    profile.loss_opt = float(c0 - c1**2 / (4 * c2))
    return profile


def _line(budgets: np.ndarray, n_opt: np.ndarray) -> tuple[float, float]:
    """Least-squares slope and intercept of ln N* against ln C."""
    slope, intercept = np.polyfit(np.log(budgets), np.log(n_opt), 1)
    return float(slope), float(intercept)


def isoflop_frontier(
    frame: pd.DataFrame,
    plan_budgets: Sequence[float] = (),
    held: np.ndarray | None = None,
    drop_unbracketed: bool = False,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    source: str = "runs table",
) -> IsoflopFrontier:
    """Approach 2 on isoFLOP profiles: per-budget minima, the exponents ``a``, ``b`` and ``N*``, ``D*`` at
    ``plan_budgets``. ``held`` marks runs whose budgets are held out: their minima are predicted, not fitted."""
    frame = frame.reset_index(drop=True)
    held = np.zeros(len(frame), dtype=bool) if held is None else np.asarray(held, bool)
    labels = budget_groups(frame)
    values = run_budgets(frame)
    n, loss = frame["N"].to_numpy(float), frame["loss"].to_numpy(float)
    profiles, members = [], []
    for level in range(int(labels.max()) + 1):
        mask = labels == level
        budget = float(np.median(values[mask]))  # exact when the table gives C; the middle run otherwise
        if held[mask].any() and not held[mask].all():
            raise UserError(f"--holdout holds out some runs of budget C = {budget:.3g} but not all; hold out whole budgets "
                            "(e.g. \"C >= 1e21\")")
        profile = fit_profile(budget, n[mask], loss[mask])
        profile.role = "holdout" if held[mask].all() else "fit"
        profiles.append(profile)
        members.append(mask)
    _check_profiles(profiles, drop_unbracketed, source)
    used = [p for p in profiles if p.role == "fit"]
    if len(used) < MIN_BUDGETS:
        raise UserError(f"{source}: {len(used)} budget{'s' if len(used) != 1 else ''} locate a minimum; Approach 2 needs at "
                        f"least {MIN_BUDGETS} to fit N* against C (add budgets, or hold fewer out)")
    fit_c = np.array([p.budget for p in used])
    a, intercept = _line(fit_c, np.array([p.n_opt for p in used]))
    grid = np.asarray(plan_budgets, float)
    result = IsoflopFrontier(profiles, a, 1 - a, math.exp(intercept), list(grid), [], [])
    result.n_opt = list(result.predict_n(grid))
    result.d_opt = [c / (6 * x) for c, x in zip(grid, result.n_opt)]
    for profile in profiles:
        if profile.role == "holdout" and profile.n_opt is not None:
            predicted = float(result.predict_n([profile.budget])[0])
            result.holdout.append({"C": profile.budget, "N_opt": profile.n_opt, "N_predicted": predicted,
                                   "relative_error": predicted / profile.n_opt - 1})
    excluded = [p for p in profiles if p.role == "excluded"]
    if excluded:
        result.notes.append(f"left out {len(excluded)} budget{'s' if len(excluded) != 1 else ''} whose sizes do not bracket a minimum: "
                            + "; ".join(f"C = {p.budget:.3g}: {p.problem}" for p in excluded))
    if resamples:
        result.intervals = _bootstrap_frontier(frame, labels, members, profiles, grid, resamples, seed)
    return result


def _check_profiles(profiles: list[Profile], drop_unbracketed: bool, source: str) -> None:
    """Refuse a budget with too few sizes; refuse (or, when asked, leave out) one that does not bracket a minimum."""
    for profile in profiles:
        if profile.problem and profile.n_sizes < MIN_SIZES:
            raise UserError(f"{source}: budget C = {profile.budget:.3g} {profile.problem}; add sizes at this budget or "
                            f"leave it out with --where \"C < {profile.budget * 0.95:.3g} or C > {profile.budget * 1.05:.3g}\"")
    unbracketed = [p for p in profiles if p.problem]
    if unbracketed and not drop_unbracketed:
        p = unbracketed[0]
        more = f" (and {len(unbracketed) - 1} more)" if len(unbracketed) > 1 else ""
        raise UserError(f"{source}: budget C = {p.budget:.3g}: {p.problem}{more}; add sizes on that side, or leave such "
                        "budgets out with --drop-unbracketed")
    for profile in unbracketed:
        profile.role = "excluded"


def _bootstrap_frontier(frame: pd.DataFrame, labels: np.ndarray, members: list[np.ndarray], profiles: list[Profile],
                        grid: np.ndarray, resamples: int, seed: int) -> dict[str, Any]:
    """Resample the runs within each budget, redo both steps; a resample whose budget loses its minimum drops it."""
    rng = np.random.default_rng(seed)
    n, loss = frame["N"].to_numpy(float), frame["loss"].to_numpy(float)
    indices = [np.flatnonzero(mask) for mask in members]
    slopes, predictions = [], []
    for _ in range(resamples):
        budgets, minima = [], []
        for profile, index in zip(profiles, indices):
            if profile.role != "fit":
                continue
            sample = rng.choice(index, len(index))
            refit = fit_profile(profile.budget, n[sample], loss[sample])
            if refit.n_opt is not None:
                budgets.append(profile.budget)
                minima.append(refit.n_opt)
        if len(budgets) < MIN_BUDGETS:
            continue
        slope, intercept = _line(np.array(budgets), np.array(minima))
        slopes.append(slope)
        predictions.append(math.exp(intercept) * grid**slope)
    predictions_array = np.array(predictions) if predictions else np.empty((0, len(grid)))
    return {
        "a": interval(slopes),
        "b": interval([1 - s for s in slopes]),
        "N": [interval(predictions_array[:, i]) for i in range(len(grid))],
        "D": [interval(grid[i] / (6 * predictions_array[:, i])) for i in range(len(grid))],
        "resamples": len(slopes),
        "method": "runs resampled within each budget; budgets whose resample has no bracketed minimum drop out",
    }
