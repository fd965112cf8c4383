"""Compute-optimal planning: how big a model, and how many tokens, for a training budget C = 6 N D.

Three routes, as in the Chinchilla paper, each with 95% bootstrap intervals:

* **From a fitted law** (:func:`law_allocation`). Minimising ``E + A/N^alpha + B/D^beta`` subject to
  ``6 N D = C`` gives ``N* = G (C/6)^a``, ``D* = (C/6)/N*`` with ``a = beta/(alpha+beta)``,
  ``b = alpha/(alpha+beta)`` and ``G = (alpha A / (beta B))^(1/(alpha+beta))``. Intervals come from the
  bootstrap refits stored in the fit JSON (``archscale fit --bootstrap K``). A tied law (beta = alpha) fixes
  ``a = 1/2`` by assumption: it is reported as fixed, never as an interval.
* **From isoFLOP profiles** (:func:`isoflop_frontier`, the paper's Approach 2). Per budget, a parabola of
  loss in ``ln N`` locates the best size ``N*``; then ``ln N*`` and ``ln D*`` against ``ln C`` are
  straight lines whose slopes are ``a`` and ``b``. The parabola is fitted **near the minimum** by default
  (:func:`near_minimum`): a loss profile is not a parabola far from its minimum (its wings rise like powers of
  N and D, faster than a parabola), so a parabola through a wide profile puts its vertex below every measured
  loss and off the minimum; how far off changes from budget to budget with the grid, and the slope ``a``
  inherits it. ``--window all`` keeps the whole-profile fit, and a profile wide enough to bias it is flagged
  (:func:`wide_profile`). A budget whose parabola has its minimum outside the sizes it tried does not locate
  a minimum at all (its vertex is an extrapolation) and is refused, or dropped on request. Intervals: the runs
  of every budget are resampled (each budget keeps its count) and every step, the window included, is redone.
* **From a surface fitted to the same runs** (:mod:`archscale.plan.approach3`, the paper's Approach 3).

Every interval gets :func:`archscale.plan.intervals.interval_note` when it cannot be read as "estimate, give
or take".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from archscale.io.errors import UserError
from archscale.fit.selection import budget_groups, budgets as run_budgets
from archscale.fit.fitted import FittedLaw
from archscale.laws import get_law
from archscale.io.units import format_count
from archscale.fit.coverage import outside_sizes
from archscale.plan.intervals import interval, interval_notes
from archscale.plan.numeric_optimum import SEARCHED_LAWS, local_exponent, numeric_optimum

CLOSED_FORM_LAWS = ("chinchilla", "chinchilla-tied", "aspect", "aspect-tied")  # N*(C) = G (C/6)^a exactly
PLANNABLE_LAWS = (*CLOSED_FORM_LAWS, *SEARCHED_LAWS)
MIN_SIZES = 3  # a parabola needs three sizes
MIN_BUDGETS = 3  # a line through fewer budgets has no interval worth the name
DEFAULT_RESAMPLES = 1000
DEFAULT_WINDOW = 3.0  # the near-minimum parabola fits the runs within this factor in N of its minimum
MIN_WINDOW_SIZES = 5  # ... and at least this many sizes (a parabola through 3 points has no residual to average noise)
MAX_WINDOW_MOVES = 10
WIDE_GAP = 0.05  # a whole-profile N* this far (relative) from the near-minimum N* is biased by the profile's width
TIED_FIXED = "fixed: the tied law sets beta = alpha"

ProgressCallback = Callable[[int], None]


def window_rule(window: float | None) -> str:
    """The Approach 2 window rule in words, as the output and the JSON state it."""
    if window is None:
        return "all runs of each budget (--window all)"
    return (f"the runs within a factor {window:g} in N of the parabola's own minimum (at least {MIN_WINDOW_SIZES} sizes; "
            f"from the lowest-loss run, re-centred until it settles; --window {window:g})")


WIDE_RULE = ("a profile is flagged wide when its whole-profile parabola's minimum lies below the lowest loss measured at "
             "that budget by more than the runs' scatter about the near-minimum parabola (their RMS residual), and its N* "
             f"differs from the near-minimum N* by more than {WIDE_GAP:.0%}")


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
    interval_notes: dict[str, Any] = field(default_factory=dict)
    fixed: str | None = None  # why a and b carry no interval: the law fixes them
    notes: list[str] = field(default_factory=list)

    def curve(self, budgets: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """N*(C) and D*(C) of the fitted law over any budgets (for plotting)."""
        _, n_opt, d_opt, _ = _law_optimum(self.law, self.params, np.asarray(budgets, float))
        return n_opt, d_opt

    def to_json(self) -> dict[str, Any]:
        return {"law": self.law, "source": self.source, "a": self.a, "b": self.b,
                "fixed": {"a": self.fixed, "b": self.fixed} if self.fixed else None,
                "budgets": [{"C": c, "N": n, "D": d, "loss": loss} for c, n, d, loss in zip(self.budgets, self.n_opt, self.d_opt, self.loss)],
                "ci95": self.intervals or None, "ci95_notes": self.interval_notes or None, "notes": self.notes}


def _law_optimum(law_name: str, params: dict[str, float], budgets: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """(a, N*, D*, loss at the optimum) for one parameter set.

    A law with no closed form is searched along each budget; its ``a`` is the slope of ``ln N*`` against
    ``ln C`` at the geometric middle of the budgets (such a law need not give a power law)."""
    if law_name in SEARCHED_LAWS:
        law = get_law(law_name)
        n_opt, d_opt, loss = numeric_optimum(law, params, budgets)
        middle = float(np.exp(np.mean(np.log(budgets)))) if len(budgets) else 1e21
        return local_exponent(law, params, middle), n_opt, d_opt, loss
    alpha = params["alpha"]
    beta = params["alpha"] if law_name.endswith("-tied") else params["beta"]
    a = beta / (alpha + beta)
    g = (alpha * params["A"] / (beta * params["B"])) ** (1.0 / (alpha + beta))
    n_opt = g * (budgets / 6.0) ** a
    d_opt = budgets / (6.0 * n_opt)
    loss = params["E"] + params["A"] * n_opt**-alpha + params["B"] * d_opt**-beta
    return a, n_opt, d_opt, loss


def _refuse_meaningless_budgets(budgets: np.ndarray, n_opt: np.ndarray, d_opt: np.ndarray) -> None:
    """A budget whose optimum is below one parameter or one token (``--budget 1e-300`` printed N* 0), or past what
    a float holds (``1e300``), is one line naming ``--budget``: the law's power law says nothing there."""
    for budget, n, d in zip(budgets, n_opt, d_opt):
        if not (np.isfinite(n) and np.isfinite(d)) or n < 1 or d < 1:
            raise UserError(f"--budget {budget:g}: the law's optimum there (N* {n:.3g}, D* {d:.3g}) is not a model "
                            "(under one parameter or token, or past what a float holds); give a training budget in "
                            "FLOPs such as 1e21 or 5.76e23")


def law_allocation(fitted: FittedLaw, budgets: Sequence[float]) -> LawAllocation:
    """The compute-optimal allocation a fitted law of N and D (Chinchilla, aspect, Kaplan, Farseer) implies at each budget."""
    name = fitted.law.name
    if name not in PLANNABLE_LAWS:
        raise UserError(f"{fitted.source}: compute-optimal planning needs a law of N and D "
                        f"({', '.join(PLANNABLE_LAWS)}), not {name}; fit one with archscale fit --law chinchilla")
    grid = np.asarray(budgets, float)
    with np.errstate(all="ignore"):
        a, n_opt, d_opt, loss = _law_optimum(name, fitted.params, grid)
    _refuse_meaningless_budgets(grid, n_opt, d_opt)
    notes = []
    if name in SEARCHED_LAWS:
        notes.append(f"{name} has no closed-form N*(C): N* is the minimum of the loss along each budget, found by search, "
                     "and a is the local slope of ln N* against ln C at the budgets' geometric middle")
    if name.startswith("aspect"):
        notes.append("the aspect law's shape factor (1 + eps R^gamma) does not move N* or D*; the loss shown is its "
                     "size part E + A/N^alpha + B/D^beta, before the shape penalty")
    notes += [f"{fitted.law.name} law: {note}" for note in outside_sizes(fitted.size_range, n_opt, d_opt)]
    result = LawAllocation(name, fitted.source, a, 1 - a, list(grid), list(n_opt), list(d_opt), list(loss),
                           params=dict(fitted.params), fixed=TIED_FIXED if name.endswith("-tied") else None, notes=notes)
    if fitted.draws:
        ends = [_law_optimum(name, draw, grid) for draw in fitted.draws]
        exponents = {} if result.fixed else {"a": interval([e[0] for e in ends]), "b": interval([1 - e[0] for e in ends])}
        result.intervals = {
            **exponents,
            "N": [interval([e[1][i] for e in ends]) for i in range(len(grid))],
            "D": [interval([e[2][i] for e in ends]) for i in range(len(grid))],
            "loss": [interval([e[3][i] for e in ends]) for i in range(len(grid))],
            "resamples": len(ends),
        }
        estimates = {"N": result.n_opt, "D": result.d_opt, "loss": result.loss}
        result.interval_notes = interval_notes(estimates if result.fixed else {"a": a, "b": 1 - a, **estimates}, result.intervals)
    else:
        result.notes.append(f"{fitted.source} has no bootstrap refits: refit with --bootstrap 200 for intervals")
    return result


# ---------------------------------------------------------------------------
# from isoFLOP profiles (Approach 2)
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Parabola:
    """``loss = c2 x^2 + c1 x + c0`` in ``x = ln N - centre``: centred, so the vertex is computed without the
    cancellation that ``ln N`` near 20 would bring."""

    c2: float
    c1: float
    c0: float
    centre: float

    @property
    def has_minimum(self) -> bool:
        return self.c2 > 0

    @property
    def vertex(self) -> tuple[float, float]:
        """(ln N, loss) at the parabola's minimum (meaningful only when it has one)."""
        return self.centre - self.c1 / (2 * self.c2), self.c0 - self.c1**2 / (4 * self.c2)

    def __call__(self, u: np.ndarray) -> np.ndarray:
        x = np.asarray(u, float) - self.centre
        return self.c2 * x**2 + self.c1 * x + self.c0

    def in_ln_n(self) -> tuple[float, float, float]:
        """Coefficients of ``c2 u^2 + c1 u + c0`` in ``u = ln N`` (as the JSON has always written them)."""
        m = self.centre
        return self.c2, self.c1 - 2 * self.c2 * m, self.c0 - self.c1 * m + self.c2 * m * m


def fit_parabola(u: np.ndarray, loss: np.ndarray) -> Parabola:
    """Least-squares parabola of ``loss`` in ``u`` (three distinct ``u`` at least): the normal equations on
    centred ``u``, a 3x3 solve, which keeps the bootstrap's thousands of fits cheap."""
    centre = float(u.mean())
    x = u - centre
    design = np.vstack((x * x, x, np.ones_like(x)))
    c2, c1, c0 = np.linalg.solve(design @ design.T, design @ loss)
    return Parabola(float(c2), float(c1), float(c0), centre)


def _distinct(u: np.ndarray) -> np.ndarray:
    return np.unique(np.round(u, 6))


def _window_mask(u: np.ndarray, sizes: np.ndarray, centre: float, half_width: float) -> np.ndarray:
    """Runs within ``half_width`` of ``centre`` in ln N; the runs of the nearest :data:`MIN_WINDOW_SIZES` sizes
    (``sizes``: the distinct ln N) when fewer sizes lie within."""
    mask = np.abs(u - centre) <= half_width + 1e-9
    wanted = min(MIN_WINDOW_SIZES, len(sizes))
    if np.count_nonzero(np.abs(sizes - centre) <= half_width + 1e-9) < wanted:
        nearest = sizes[np.argsort(np.abs(sizes - centre), kind="stable")[:wanted]]
        mask = np.isin(np.round(u, 6), nearest)
    return mask


def near_minimum(u: np.ndarray, loss: np.ndarray, window: float) -> tuple[np.ndarray, Parabola]:
    """The runs a parabola near the minimum is fitted to, and that parabola (:func:`window_rule` in words).

    Starting at the lowest measured loss keeps one noisy run from deciding alone: the window moves to its own
    parabola's minimum until it contains the same runs twice running. A parabola with no minimum, or one outside
    the sizes tried, stops the walk; :func:`_minimum_problem` then says why."""
    half_width = math.log(window)
    sizes = _distinct(u)
    centre = float(u[np.argmin(loss)])
    mask = _window_mask(u, sizes, centre, half_width)
    parabola = fit_parabola(u[mask], loss[mask])
    for _ in range(MAX_WINDOW_MOVES):
        if not parabola.has_minimum:
            break
        vertex = parabola.vertex[0]
        if not u.min() <= vertex <= u.max():
            break
        moved = _window_mask(u, sizes, vertex, half_width)
        if np.array_equal(moved, mask):
            break
        mask = moved
        parabola = fit_parabola(u[mask], loss[mask])
    return mask, parabola


@dataclass
class Profile:
    """One budget's parabola of loss in ``ln N``, the runs it was fitted to, and where it bottoms out."""

    budget: float
    n_runs: int
    n_sizes: int
    n_range: tuple[float, float]
    parabola: Parabola | None
    n_opt: float | None
    loss_opt: float | None
    role: str = "fit"  # fit, holdout, or excluded
    problem: str | None = None
    runs: tuple[np.ndarray, np.ndarray] = (np.empty(0), np.empty(0))  # the budget's N and loss, for plotting
    fitted: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=bool))  # which runs the parabola was fitted to
    rows: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=int))  # the runs' rows in the table
    wide: dict[str, float] | None = None  # the whole-profile fit's bias here (:func:`wide_profile`), when flagged

    @property
    def d_opt(self) -> float | None:
        return None if self.n_opt is None else self.budget / (6.0 * self.n_opt)

    @property
    def coefficients(self) -> tuple[float, float, float]:
        return self.parabola.in_ln_n() if self.parabola else (math.nan,) * 3

    @property
    def window_range(self) -> tuple[float, float] | None:
        """The smallest and largest N the parabola was fitted to."""
        n = self.runs[0][self.fitted]
        return (float(n.min()), float(n.max())) if len(n) else None

    def to_json(self) -> dict[str, Any]:
        return {"C": self.budget, "runs": self.n_runs, "sizes": self.n_sizes, "N_range": list(self.n_range),
                "fitted_runs": int(self.fitted.sum()), "fitted_N_range": list(self.window_range) if self.window_range else None,
                "parabola": list(self.coefficients), "N_opt": self.n_opt, "D_opt": self.d_opt, "loss_opt": self.loss_opt,
                "role": self.role, "problem": self.problem, "wide": self.wide}


def _minimum_problem(parabola: Parabola, u: np.ndarray, n: np.ndarray) -> str | None:
    """Why ``parabola`` locates no minimum among the sizes ``n`` tried, or None when it does."""
    if not parabola.has_minimum:
        return "its losses do not curve upwards on both sides (the parabola has no minimum)"
    vertex = parabola.vertex[0]
    if not u.min() <= vertex <= u.max():
        side = "below its smallest" if vertex < u.min() else "above its largest"
        return (f"its parabola's minimum (N = {math.exp(vertex):.3g}) lies {side} model "
                f"({n.min():.3g}-{n.max():.3g}): the sizes do not bracket the minimum")
    return None


def fit_profile(budget: float, n: np.ndarray, loss: np.ndarray, window: float | None = DEFAULT_WINDOW,
                diagnose: bool = True) -> Profile:
    """One budget's parabola in ``ln N`` (near the minimum, or through every run with ``window=None``) and
    whether its minimum lies among the sizes tried. ``diagnose`` also checks whether the profile is wide enough
    to bias a whole-profile fit (the bootstrap skips it)."""
    u = np.log(n)
    sizes = len(_distinct(u))
    profile = Profile(budget, len(n), sizes, (float(n.min()), float(n.max())), None, None, None, runs=(n, loss),
                      fitted=np.ones(len(n), dtype=bool))
    if sizes < MIN_SIZES:
        profile.problem = f"has {sizes} model size{'s' if sizes != 1 else ''}; a parabola needs at least {MIN_SIZES}"
        return profile
    whole = fit_parabola(u, loss)
    if window is None:
        profile.parabola = whole
    else:
        profile.fitted, profile.parabola = near_minimum(u, loss, window)
    profile.problem = _minimum_problem(profile.parabola, u, n)
    if profile.problem:
        return profile
    vertex_u, profile.loss_opt = profile.parabola.vertex
    profile.n_opt = math.exp(vertex_u)
    if diagnose:
        near = (profile.fitted, profile.parabola) if window is not None else near_minimum(u, loss, DEFAULT_WINDOW)
        profile.wide = wide_profile(whole, near, u, loss)
    return profile


def wide_profile(whole: Parabola, near: tuple[np.ndarray, Parabola], u: np.ndarray, loss: np.ndarray) -> dict[str, float] | None:
    """How far a whole-profile parabola is off, when the profile is wide enough to bias it (:data:`WIDE_RULE`).

    ``near`` is the near-minimum fit (its runs and parabola). Two symptoms together: the whole-profile vertex
    undershoots the lowest measured loss by more than the noise (the wings, rising faster than a parabola, pull
    the fit's bottom down), and it lands away from the near-minimum N*. Noise alone gives either one, rarely both."""
    mask, parabola = near
    if _minimum_problem(whole, u, np.exp(u)) or _minimum_problem(parabola, u, np.exp(u)):
        return None
    (whole_u, whole_loss), (near_u, _) = whole.vertex, parabola.vertex
    below = float(loss.min() - whole_loss)
    scatter = float(np.sqrt(np.mean((parabola(u[mask]) - loss[mask]) ** 2)))
    gap = math.exp(whole_u - near_u) - 1
    if below > scatter and abs(gap) > WIDE_GAP:
        return {"below_lowest_loss": below, "scatter": scatter, "N_whole": math.exp(whole_u), "N_near": math.exp(near_u),
                "relative_gap": gap}
    return None


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
    window: float | None = DEFAULT_WINDOW
    intervals: dict[str, Any] = field(default_factory=dict)
    interval_notes: dict[str, Any] = field(default_factory=dict)
    holdout: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def predict_n(self, budgets: Sequence[float]) -> np.ndarray:
        return self.n_coefficient * np.asarray(budgets, float) ** self.a

    def fitted_rows(self) -> np.ndarray:
        """Rows (of the table the frontier was given) of the runs its fitted budgets' parabolas were fitted to:
        the runs near each minimum, which Approach 3 is fitted to as well."""
        rows = [p.rows[p.fitted] for p in self.profiles if p.role == "fit"]
        return np.sort(np.concatenate(rows)) if rows else np.empty(0, dtype=int)

    @property
    def wide(self) -> list[Profile]:
        """The budgets (fitted or held out) wide enough to bias a whole-profile parabola."""
        return [p for p in self.profiles if p.wide and p.role != "excluded"]

    def wide_message(self) -> str | None:
        """One line on the wide profiles: a warning when this frontier used whole-profile parabolas, else a note
        on what the near-minimum fit avoided."""
        if not self.wide:
            return None
        each = "; ".join(f"C = {p.budget:.3g}: minimum {p.wide['below_lowest_loss']:.3f} below its lowest loss, N* "
                         f"{format_count(p.wide['N_whole'])} against {format_count(p.wide['N_near'])} near the minimum "
                         f"({100 * p.wide['relative_gap']:+.0f}%)" for p in self.wide)
        count = f"{len(self.wide)} budget{'s' if len(self.wide) != 1 else ''}"
        if self.window is None:
            return (f"{count} wide enough to bias a whole-profile parabola ({each}); the default --window "
                    f"{DEFAULT_WINDOW:g} fits near each minimum")
        return f"{count} wide enough to bias a whole-profile parabola, which --window all fits ({each})"

    def to_json(self) -> dict[str, Any]:
        return {
            "method": "Approach 2: per-budget parabola of loss in ln N, then ln N* and ln D* linear in ln C",
            "window": {"factor": self.window, "min_sizes": MIN_WINDOW_SIZES if self.window else None,
                       "rule": window_rule(self.window)},
            "wide_rule": WIDE_RULE,
            "wide": [p.budget for p in self.wide],
            "a": self.a, "b": self.b, "n_coefficient": self.n_coefficient,
            "profiles": [p.to_json() for p in self.profiles],
            "budgets": [{"C": c, "N": n, "D": d} for c, n, d in zip(self.budgets, self.n_opt, self.d_opt)],
            "ci95": self.intervals or None,
            "ci95_notes": self.interval_notes or None,
            "holdout": self.holdout or None,
            "notes": self.notes,
        }


def _line(budgets: np.ndarray, n_opt: np.ndarray) -> tuple[float, float]:
    """Least-squares slope and intercept of ln N* against ln C."""
    slope, intercept = np.polyfit(np.log(budgets), np.log(n_opt), 1)
    return float(slope), float(intercept)


def check_window(window: float | None) -> None:
    if window is not None and not (math.isfinite(window) and window > 1):
        raise UserError(f"--window {window:g}: give a factor in N above 1 (e.g. 3: the runs within 3x of each minimum), "
                        "or all for the whole profile")


def isoflop_frontier(
    frame: pd.DataFrame,
    plan_budgets: Sequence[float] = (),
    held: np.ndarray | None = None,
    drop_unbracketed: bool = False,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    source: str = "runs table",
    window: float | None = DEFAULT_WINDOW,
    progress: ProgressCallback | None = None,
) -> IsoflopFrontier:
    """Approach 2 on isoFLOP profiles: per-budget minima, the exponents ``a``, ``b`` and ``N*``, ``D*`` at
    ``plan_budgets``. ``held`` marks runs whose budgets are held out: their minima are predicted, not fitted.
    ``window`` is the near-minimum factor in N (None: every run of a budget)."""
    check_window(window)
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
        profile = fit_profile(budget, n[mask], loss[mask], window)
        profile.role = "holdout" if held[mask].all() else "fit"
        profile.rows = np.flatnonzero(mask)
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
    result = IsoflopFrontier(profiles, a, 1 - a, math.exp(intercept), list(grid), [], [], window=window)
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
        result.intervals = _bootstrap_frontier(frame, members, profiles, grid, resamples, seed, window, progress)
        result.interval_notes = interval_notes({"a": result.a, "b": result.b, "N": result.n_opt, "D": result.d_opt},
                                               result.intervals)
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


def _bootstrap_frontier(frame: pd.DataFrame, members: list[np.ndarray], profiles: list[Profile], grid: np.ndarray,
                        resamples: int, seed: int, window: float | None, progress: ProgressCallback | None) -> dict[str, Any]:
    """Resample the runs within each budget, redo every step (the window too); a resample whose budget loses its
    minimum drops it."""
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
            refit = fit_profile(profile.budget, n[sample], loss[sample], window, diagnose=False)
            if refit.n_opt is not None:
                budgets.append(profile.budget)
                minima.append(refit.n_opt)
        if progress:
            progress(1)
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
        "method": "runs resampled within each budget, each budget's window found anew; budgets whose resample has no "
                  "bracketed minimum drop out",
    }
