"""Fitting a law to runs: multi-start Levenberg-Marquardt (lmfit) or a Huber objective.

Why each piece is here:

* **Normalised inputs, log-space positive parameters.** Power laws in raw
  ``N ~ 1e9`` are badly conditioned; each law fits on ``N/N0`` etc. and its
  positive parameters as logarithms, then maps back (:meth:`Law.unscale`).
* **Multi-start.** LM started badly lands in local minima on these laws. Every
  point of the law's start grid is scored (cheap: one vectorised prediction),
  and LM polishes the best few.
* **Three objectives.** ``lsq``: least squares on the loss (Levenberg-Marquardt).
  ``huber``: Huber on log-loss (delta 1e-3, summed), the objective of the Chinchilla
  replication literature, minimised by scipy's trust-region least squares with
  ``loss="huber"``, which is exactly that objective. ``log-lsq``: least squares on
  log-loss (Levenberg-Marquardt), which weighs every run by its relative error, as
  Huber does, without Huber's switch to absolute errors past 0.1%.
* **Identifiability.** A design whose inputs are collinear is refused before
  fitting; a near-singular Jacobian after fitting is reported as a warning.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from archscale.io.errors import UserError
from archscale.laws.base import Columns, Law, Param, normalised

OBJECTIVES = ("lsq", "huber", "log-lsq")
LOG_OBJECTIVES = ("huber", "log-lsq")  # residuals on log-loss
HUBER_DELTA = 1e-3
DEFAULT_POLISH = 8
SINGULAR_RATIO = 1e-8
EVALS_PER_PARAMETER = 400  # default evaluation cap per start, times (free parameters + 1)
AGREEMENT = 1e-6  # two converged starts this close found the same minimum (quick fits stop there)
LIMIT_AGREEMENT = 1e-3  # two starts stopped at the cap whose predictions agree this closely (relative) found one valley
BOUND_MARGIN = 1e-3  # internal units: within this of a finite bound is "on the bound"
QUICK_SHARE = 0.375  # quick fits (selection, bootstrap) first give each start this share of the evaluation cap
COLLAPSE = 1e-5  # a positive parameter below this fraction of the typical loss (normalised units) has vanished


@dataclass
class FitResult:
    """A fitted law: natural-unit parameters and how they were obtained."""

    law: Law
    params: dict[str, float]
    objective: str
    objective_value: float
    n_points: int
    n_starts: int
    fixed: dict[str, float] = field(default_factory=dict)
    stderr: dict[str, float | None] = field(default_factory=dict)
    ci: dict[str, tuple[float, float]] | None = None
    warnings: list[str] = field(default_factory=list)
    degenerate: dict[str, str] = field(default_factory=dict)
    draws: np.ndarray | None = None  # bootstrap refits, one row per resample, columns in law.param_names

    def predict(self, data: Columns) -> np.ndarray:
        return self.law.predict(self.params, data)

    def draws_json(self) -> dict[str, object] | None:
        """The bootstrap refits as JSON: later verbs turn them into intervals on anything the law predicts."""
        if self.draws is None:
            return None
        return {"names": list(self.law.param_names), "draws": self.draws.tolist()}


# ---------------------------------------------------------------------------
# parameter vectors: natural values <-> the internal vector the optimiser moves
# ---------------------------------------------------------------------------
def _to_internal(param: Param, value: float) -> float:
    return math.log(value) if param.positive else value


MAX_LOG = 709.0  # math.exp overflows above this: such a step is a wild one, scored as infinitely bad


def _to_natural(param: Param, value: float) -> float:
    if not param.positive:
        return value
    return math.exp(value) if value < MAX_LOG else math.inf


def _internal_bounds(param: Param, floor: float = 0.0) -> tuple[float, float]:
    """Bounds of the internal value; a positive parameter stops at ``floor`` (where its term has vanished)."""
    if param.positive:
        low = max(param.min, floor)
        high = math.log(param.max) if np.isfinite(param.max) else np.inf
        return (math.log(low) if low > 0 else -np.inf), high
    return param.min, param.max


class _Problem:
    """One fit: the law, normalised data, which parameters move, and the residuals."""

    def __init__(self, law: Law, data: Columns, loss: np.ndarray, objective: str, fixed: Mapping[str, float]):
        self.law = law
        self.scales = law.scales(data)
        self.data = normalised(data, self.scales)
        self.loss = np.asarray(loss, float)
        self.log_loss = np.log(self.loss)
        self.objective = objective
        self.fixed = dict(fixed)
        self.free = [p for p in law.params if p.name not in self.fixed]
        # A positive parameter below this (normalised units) contributes nothing: letting it walk on towards
        # zero costs thousands of evaluations and changes no prediction, so it stops here and is flagged.
        self.floor = COLLAPSE * float(np.median(self.loss))
        self.bounds = [_internal_bounds(p, self.floor) for p in self.free]

    def params_from(self, theta: Sequence[float]) -> dict[str, float]:
        """Scaled-unit parameter dict from an internal vector."""
        values = {p.name: _to_natural(p, t) for p, t in zip(self.free, theta)}
        values.update(self.fixed)
        return values

    def residuals(self, theta: Sequence[float]) -> np.ndarray:
        with np.errstate(all="ignore"):
            predicted = self.law.predict(self.params_from(theta), self.data)
            if self.objective in LOG_OBJECTIVES:
                residual = np.log(predicted) - self.log_loss
            else:
                residual = predicted - self.loss
        return np.where(np.isfinite(residual), residual, 1e6)

    def objective_value(self, theta: Sequence[float]) -> float:
        residual = self.residuals(theta)
        if self.objective == "huber":
            return float(np.sum(huber(residual, HUBER_DELTA)))
        return float(np.sum(residual**2))

    def natural(self, theta: Sequence[float]) -> dict[str, float]:
        """Natural-unit parameters, in the law's declared order."""
        values = self.law.unscale(self.params_from(theta), self.scales)
        return {name: float(values[name]) for name in self.law.param_names}


def huber(residual: np.ndarray, delta: float) -> np.ndarray:
    """Huber loss: quadratic within ``delta``, linear beyond (robust to outlying runs)."""
    absolute = np.abs(residual)
    return np.where(absolute <= delta, 0.5 * residual**2, delta * (absolute - 0.5 * delta))


# ---------------------------------------------------------------------------
# the fit
# ---------------------------------------------------------------------------
def start_grid(problem: _Problem) -> np.ndarray:
    """Every combination of the free parameters' start values, as internal vectors."""
    grids = [[_to_internal(p, v) for v in p.grid] for p in problem.free]
    return np.array(list(itertools.product(*grids)), dtype=float)


@dataclass
class _Polished:
    """Where one start ended: ``status`` is converged, limit (stopped at the evaluation cap) or failed."""

    theta: np.ndarray
    objective: float
    status: str
    covariance: np.ndarray | None = None


def evaluation_cap(problem: _Problem, max_evals: int | None) -> int:
    """Evaluations allowed per start: the user's ``--max-evals``, else enough for any fit that is converging.

    A start still moving after this many evaluations is walking along a flat valley (a parameter the runs do
    not pin down); more evaluations only make the walk longer.
    """
    return max_evals if max_evals is not None else EVALS_PER_PARAMETER * (len(problem.free) + 1)


def _polish(problem: _Problem, theta0: np.ndarray, max_evals: int) -> _Polished:
    """Run Levenberg-Marquardt (lsq) or a Huber trust-region fit from one start."""
    bounds = problem.bounds
    start = np.array([float(np.clip(v, low, high)) for v, (low, high) in zip(theta0, bounds)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if problem.objective == "huber":
                theta, status, covariance = _huber_trf(problem, start, bounds, max_evals)
            else:
                theta, status, covariance = _levenberg_marquardt(problem, start, bounds, max_evals)
        except (ValueError, FloatingPointError, OverflowError, np.linalg.LinAlgError):
            return _Polished(start, math.inf, "failed")
    value = problem.objective_value(theta)
    if not (np.all(np.isfinite(theta)) and math.isfinite(value)):
        return _Polished(theta, math.inf, "failed")
    return _Polished(theta, value, status, covariance)


def _levenberg_marquardt(problem: _Problem, start: np.ndarray, bounds: list[tuple[float, float]], max_evals: int):
    import lmfit  # half a second to import: only verbs that fit pay for it

    parameters = lmfit.Parameters()
    for index, (value, (low, high)) in enumerate(zip(start, bounds)):
        parameters.add(f"p{index}", value=value, min=low, max=high)
    names = [f"p{i}" for i in range(len(start))]
    result = lmfit.minimize(lambda pars: problem.residuals([pars[name].value for name in names]), parameters,
                            method="leastsq", max_nfev=max_evals)
    theta = np.array([result.params[name].value for name in names])
    # MINPACK's codes: 1-4 converged; 6-8 "no further reduction possible at machine precision", which is a
    # minimum too; 5, and lmfit's own abort (-1), mean the evaluation cap was reached.
    ier = getattr(result, "ier", 0)
    status = "converged" if ier in (1, 2, 3, 4, 6, 7, 8) else "limit" if ier in (5, -1) else "failed"
    return theta, status, getattr(result, "covar", None)


def _huber_trf(problem: _Problem, start: np.ndarray, bounds: list[tuple[float, float]], max_evals: int):
    from scipy.optimize import least_squares  # scipy's Huber loss on these residuals is exactly the objective

    low, high = zip(*bounds)
    result = least_squares(problem.residuals, start, bounds=(low, high), loss="huber", f_scale=HUBER_DELTA,
                           max_nfev=max_evals)
    status = "converged" if result.status > 0 else "limit" if result.status == 0 else "failed"
    return result.x, status, None


def fit_law(
    law: Law,
    data: Columns,
    loss: np.ndarray,
    objective: str = "lsq",
    fixed: Mapping[str, float] | None = None,
    n_polish: int = DEFAULT_POLISH,
    max_evals: int | None = None,
    source: str = "runs table",
    quick: bool = False,
) -> FitResult:
    """Fit ``law`` to ``loss`` at ``data`` from the best ``n_polish`` points of its start grid.

    ``quick`` (for the many fits of form selection and the bootstrap) stops polishing once two starts agree
    on the lowest objective and skips the standard errors and identifiability diagnostics.
    """
    if objective not in OBJECTIVES:
        raise UserError(f"--loss {objective!r}: choose one of {', '.join(OBJECTIVES)}")
    fixed = {**law.default_fixed, **(fixed or {})}
    unknown = [name for name in fixed if name not in law.param_names]
    if unknown:
        raise UserError(f"--fix {unknown[0]}: law {law.name} has no parameter {unknown[0]!r} ({', '.join(law.param_names)})")
    for param in law.params:
        value = fixed.get(param.name)
        if value is not None and not param.admits(value):
            raise UserError(f"--fix {param.name}={value:g}: law {law.name}'s {param.name} lies in {param.span}; give a "
                            "value in that range")
    problem = _Problem(law, data, loss, objective, fixed)
    _check_fixable(problem)
    n_free = len(problem.free)
    if len(problem.loss) <= n_free:
        raise UserError(f"{source}: {len(problem.loss)} runs cannot fit law {law.name}, "
                        f"which has {n_free} free parameters (need at least {n_free + 1})")
    # judged on the runs' own units: a ratio such as D/N means nothing after normalisation
    reason = law.collinear_inputs({key: np.asarray(value, float) for key, value in data.items()})
    if reason:
        raise UserError(f"{source}: law {law.name} is not identifiable from these runs: {reason}")

    grid = start_grid(problem)
    scores = np.array([problem.objective_value(theta) for theta in grid])
    order = np.argsort(scores)[: max(1, n_polish)]
    cap = evaluation_cap(problem, max_evals)
    ends = _quick_ends(problem, grid[order], cap) if quick else [_polish(problem, grid[index], cap) for index in order]
    best = _best_end(problem, ends, source, max_evals, cap)
    result = FitResult(
        law=law,
        params=problem.natural(best.theta),
        objective=objective,
        objective_value=best.objective,
        n_points=len(problem.loss),
        n_starts=len(ends),
        fixed=dict(fixed),
    )
    result.degenerate = _degenerate(problem, best.theta)  # cheap, and selection skips degenerate forms
    if quick:
        return result
    if best.status == "limit":
        result.warnings.append(f"the best start stopped at the evaluation limit ({cap} per start) without meeting the "
                               "optimiser's tolerance, but starts predict every run alike: the runs leave a flat "
                               "direction along which some parameters are not determined (see the standard errors)")
    covariance = best.covariance if objective == "lsq" else _huber_covariance(problem, best.theta)
    result.stderr = _stderr(problem, best.theta, covariance)
    for name, why in result.degenerate.items():
        result.warnings.append(f"{name} {why}")
    weak = _unidentified(problem, best.theta)
    if weak:
        result.warnings.append(f"parameters {', '.join(weak)} are poorly identified by these runs "
                               "(near-singular Jacobian): their values are not meaningful on their own")
    loose = [name for name, error in result.stderr.items()
             if error is not None and error > abs(result.params[name]) and name not in result.degenerate]
    if loose:
        result.warnings.append(f"parameters {', '.join(loose)} have a standard error larger than their value: "
                               "these runs do not pin them down")
    return result


def _quick_ends(problem: _Problem, starts: np.ndarray, cap: int) -> list[_Polished]:
    """Polish starts until two find one minimum; starts still moving at a short cap wait for a second pass.

    Converging starts finish within about a quarter of the full cap; a start walking a flat valley uses all of
    it and rarely ends lowest. So every start first gets ``QUICK_SHARE`` of the cap, and only when no two
    converged starts agree do the stopped ones continue, from where they stopped, for the rest.
    """
    short = max(1, int(cap * QUICK_SHARE))
    ends: list[_Polished] = []
    for start in starts:
        ends.append(_polish(problem, start, short))
        if _found(problem, ends):
            return ends
    for index, end in enumerate(ends):
        if end.status == "limit":
            ends[index] = _polish(problem, end.theta, cap - short)
            if _found(problem, ends):
                break
    return ends


def _found(problem: _Problem, ends: list[_Polished]) -> bool:
    """Two converged starts agree on the lowest objective, or the two lowest ends predict every run alike."""
    return _settled(ends) or _agree(problem, [end for end in ends if end.status != "failed"])


def _best_end(problem: _Problem, ends: list[_Polished], source: str, max_evals: int | None, cap: int) -> _Polished:
    """The lowest objective among the starts that converged, or that agree where they stopped at the limit."""
    usable = [end for end in ends if end.status != "failed"]
    converged = [end for end in usable if end.status == "converged"]
    if converged:
        return min(usable, key=lambda end: end.objective) if _agree(problem, usable) else min(converged, key=lambda end: end.objective)
    if usable and _agree(problem, usable):
        return min(usable, key=lambda end: end.objective)
    if usable:
        values = sorted(end.objective for end in usable)
        where = f"stopped at the evaluation limit ({cap} per start) on objectives {values[0]:.4g} to {values[-1]:.4g}"
    else:
        where = "the optimiser failed from every start"
    advice = ("give a larger --max-evals" if max_evals is not None
              else "these runs may not determine it: fix a parameter (--fix), or fit a simpler law")
    raise UserError(f"{source}: law {problem.law.name} did not converge from any of {len(ends)} starts ({where}); {advice}")


def _settled(ends: list[_Polished]) -> bool:
    """Two converged starts ended on the lowest objective so far (to ``AGREEMENT``): the minimum is found."""
    values = sorted(end.objective for end in ends if end.status == "converged")
    return len(values) >= 2 and values[1] <= values[0] * (1 + AGREEMENT) + 1e-300


def _agree(problem: _Problem, ends: list[_Polished]) -> bool:
    """The two lowest ends predict every run alike (within ``LIMIT_AGREEMENT``): they sit in one flat valley.

    Judged on predictions, not parameters (which wander along the valley) or objectives (whose small
    differences there mean nothing a user would see).
    """
    if len(ends) < 2:
        return False
    first, second = sorted(ends, key=lambda end: end.objective)[:2]
    with np.errstate(all="ignore"):
        a = problem.law.predict(problem.params_from(first.theta), problem.data)
        b = problem.law.predict(problem.params_from(second.theta), problem.data)
        spread = np.max(np.abs(a / b - 1))
    return bool(np.isfinite(spread) and spread <= LIMIT_AGREEMENT)


def _check_fixable(problem: _Problem) -> None:
    """Only parameters that input normalisation leaves alone (exponents, E, gauges) can be fixed."""
    probe = {p.name: problem.fixed.get(p.name, 0.5) for p in problem.law.params}
    unscaled = problem.law.unscale(probe, problem.scales)
    for name in problem.fixed:
        if not math.isclose(unscaled[name], probe[name]):
            raise UserError(f"--fix {name}: {name} depends on the units of the inputs and cannot be fixed; "
                            "fix an exponent or E instead")


def _jacobian(function: Callable[[np.ndarray], np.ndarray], theta: np.ndarray) -> np.ndarray:
    """Central-difference Jacobian (columns per parameter)."""
    columns = []
    for i in range(len(theta)):
        step = 1e-6 * max(1.0, abs(theta[i]))
        up, down = theta.copy(), theta.copy()
        up[i] += step
        down[i] -= step
        columns.append((np.asarray(function(up)) - np.asarray(function(down))) / (2 * step))
    return np.column_stack(columns)


def _huber_covariance(problem: _Problem, theta: np.ndarray) -> np.ndarray | None:
    """Sandwich covariance of a Huber fit (an M-estimator), in the internal parameters.

    ``H^-1 M H^-1 n/(n-p)`` with ``H = J' diag(psi') J`` (only runs inside the quadratic zone carry curvature)
    and ``M = J' diag(psi^2) J``, ``psi`` the Huber influence function of each log-loss residual. Least squares'
    ``s^2 (J'J)^-1`` would charge an outlying run's full residual to the parameters; Huber caps its influence.
    """
    residual = problem.residuals(theta)
    jac = _jacobian(problem.residuals, theta)
    psi = np.clip(residual, -HUBER_DELTA, HUBER_DELTA)
    inside = (np.abs(residual) <= HUBER_DELTA).astype(float)
    n, p = jac.shape
    if n <= p:
        return None
    bread = jac.T @ (inside[:, None] * jac)
    meat = jac.T @ ((psi**2)[:, None] * jac)
    try:
        inverse = np.linalg.inv(bread)
    except np.linalg.LinAlgError:
        return None
    covariance = inverse @ meat @ inverse * n / (n - p)
    return covariance if np.all(np.isfinite(covariance)) else None


def _stderr(problem: _Problem, theta: np.ndarray, covariance: np.ndarray | None) -> dict[str, float | None]:
    """Standard errors in natural units by the delta method."""
    names = problem.law.param_names
    stderr: dict[str, float | None] = {name: None for name in names}
    if covariance is None or not np.all(np.isfinite(covariance)):
        return stderr
    natural = lambda t: np.array([problem.natural(t)[name] for name in names])  # noqa: E731
    with np.errstate(all="ignore"):
        jac = _jacobian(natural, theta)
        cov = jac @ covariance @ jac.T
    for i, name in enumerate(names):
        if name not in problem.fixed and np.isfinite(cov[i, i]) and cov[i, i] >= 0:
            stderr[name] = float(math.sqrt(cov[i, i]))
    return stderr


def _degenerate(problem: _Problem, theta: np.ndarray) -> dict[str, str]:
    """Parameters the fit pushed onto a bound or to nothing: the law has stopped describing the runs.

    An exponent on its cap (3), or a positive term shrunk to a negligible size (E at 1e-12, an exponent at
    1e-8 that turns its term into a constant), fits the runs by turning the law into another one; the
    values then say nothing about how loss scales, and extrapolation from them is not trustworthy.
    """
    natural = problem.natural(theta)
    found: dict[str, str] = {}
    for param, value, (low, high) in zip(problem.free, theta, problem.bounds):
        if param.positive and math.isfinite(low) and value <= low + BOUND_MARGIN and param.min < problem.floor:
            found[param.name] = (f"collapsed to {natural[param.name]:.3g}: its term has vanished from the fit, which is "
                                 "degenerate (the law no longer has the form it names)")
        elif math.isfinite(high) and value >= high - BOUND_MARGIN:
            found[param.name] = (f"is at its upper bound {param.max:g}: the runs want a steeper or larger term than the law "
                                 "allows, and the other parameters compensate")
        elif math.isfinite(low) and value <= low + BOUND_MARGIN:
            found[param.name] = f"is at its lower bound {param.min:g}: the fit is degenerate"
    return found


def _unidentified(problem: _Problem, theta: np.ndarray) -> list[str]:
    """Free parameters along the Jacobian's near-null direction, if it has one."""
    jac = _jacobian(problem.residuals, theta)
    jac = jac / np.maximum(np.linalg.norm(jac, axis=0), 1e-300)
    _, singular, vt = np.linalg.svd(jac, full_matrices=False)
    if singular[-1] > SINGULAR_RATIO * singular[0] and np.all(np.isfinite(singular)):
        return []
    direction = np.abs(vt[-1])
    return [p.name for p, weight in zip(problem.free, direction) if weight > 0.3]


# ---------------------------------------------------------------------------
# uncertainty and evaluation
# ---------------------------------------------------------------------------
def bootstrap(
    law: Law,
    data: Columns,
    loss: np.ndarray,
    fit: FitResult,
    samples: int,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, tuple[float, float]], np.ndarray]:
    """95% percentile intervals from refitting on ``samples`` resamples of the runs, and the refits themselves."""
    rng = np.random.default_rng(seed)
    loss = np.asarray(loss, float)
    draws: list[list[float]] = []
    for _ in range(samples):
        index = rng.integers(0, len(loss), len(loss))
        sample = {key: np.asarray(value)[index] for key, value in data.items()}
        try:
            refit = fit_law(law, sample, loss[index], fit.objective, fit.fixed, n_polish=4, quick=True)
            draws.append([refit.params[name] for name in law.param_names])
        except UserError:
            pass  # a resample can be degenerate (e.g. one D only); it is skipped
        if progress:
            progress(1)
    if len(draws) < max(2, samples // 2):
        raise UserError(f"bootstrap: only {len(draws)} of {samples} resamples could be fitted")
    values = np.array(draws)
    low, high = np.percentile(values, [2.5, 97.5], axis=0)
    return {name: (float(lo), float(hi)) for name, lo, hi in zip(law.param_names, low, high)}, values


def evaluate(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float | int | None]:
    """The paper's metrics: MSE, R^2, max and mean relative error, Spearman rank correlation."""
    actual, predicted = np.asarray(actual, float), np.asarray(predicted, float)
    n = len(actual)
    if n == 0:
        return {"n": 0, "mse": None, "r2": None, "max_rel_error": None, "mean_rel_error": None, "spearman": None}
    errors = predicted - actual
    relative = np.abs(errors) / actual
    total = np.sum((actual - actual.mean()) ** 2)
    from scipy import stats  # imported here: every CLI call loads this module, few evaluate

    spearman = None
    if n >= 2 and np.ptp(actual) > 0 and np.ptp(predicted) > 0:
        spearman = float(stats.spearmanr(actual, predicted).statistic)
    return {
        "n": n,
        "mse": float(np.mean(errors**2)),
        "r2": float(1 - np.sum(errors**2) / total) if n >= 2 and total > 0 else None,
        "max_rel_error": float(relative.max()),
        "mean_rel_error": float(relative.mean()),
        "spearman": spearman,
    }
