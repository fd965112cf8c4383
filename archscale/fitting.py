"""Fitting a law to runs: multi-start Levenberg-Marquardt (lmfit) or a Huber objective.

Why each piece is here:

* **Normalised inputs, log-space positive parameters.** Power laws in raw
  ``N ~ 1e9`` are badly conditioned; each law fits on ``N/N0`` etc. and its
  positive parameters as logarithms, then maps back (:meth:`Law.unscale`).
* **Multi-start.** LM started badly lands in local minima on these laws. Every
  point of the law's start grid is scored (cheap: one vectorised prediction),
  and LM polishes the best few.
* **Huber on log-loss** (delta 1e-3, summed), the objective of the Chinchilla
  replication literature, is minimised by scipy's trust-region least squares
  with ``loss="huber"``, which is exactly that objective.
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

from archscale.errors import UserError
from archscale.laws.base import Columns, Law, Param, normalised

OBJECTIVES = ("lsq", "huber")
HUBER_DELTA = 1e-3
DEFAULT_POLISH = 8
SINGULAR_RATIO = 1e-8


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

    def predict(self, data: Columns) -> np.ndarray:
        return self.law.predict(self.params, data)


# ---------------------------------------------------------------------------
# parameter vectors: natural values <-> the internal vector the optimiser moves
# ---------------------------------------------------------------------------
def _to_internal(param: Param, value: float) -> float:
    return math.log(value) if param.positive else value


def _to_natural(param: Param, value: float) -> float:
    return math.exp(value) if param.positive else value


def _internal_bounds(param: Param) -> tuple[float, float]:
    if param.positive:
        low = math.log(param.min) if param.min > 0 else -np.inf
        high = math.log(param.max) if np.isfinite(param.max) else np.inf
        return low, high
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

    def params_from(self, theta: Sequence[float]) -> dict[str, float]:
        """Scaled-unit parameter dict from an internal vector."""
        values = {p.name: _to_natural(p, t) for p, t in zip(self.free, theta)}
        values.update(self.fixed)
        return values

    def residuals(self, theta: Sequence[float]) -> np.ndarray:
        with np.errstate(all="ignore"):
            predicted = self.law.predict(self.params_from(theta), self.data)
            if self.objective == "huber":
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


def _polish(problem: _Problem, theta0: np.ndarray, max_evals: int | None) -> tuple[np.ndarray, bool, np.ndarray | None]:
    """Run LM (or Huber trust-region) from one start; return (theta, converged, covariance)."""
    import lmfit  # half a second to import: only verbs that fit pay for it

    parameters = lmfit.Parameters()
    for index, (param, value) in enumerate(zip(problem.free, theta0)):
        low, high = _internal_bounds(param)
        parameters.add(f"p{index}", value=float(np.clip(value, low, high)), min=low, max=high)

    def residual(pars: lmfit.Parameters) -> np.ndarray:
        return problem.residuals([pars[f"p{i}"].value for i in range(len(problem.free))])

    kwargs: dict = {}
    if problem.objective == "huber":
        kwargs = {"method": "least_squares", "loss": "huber", "f_scale": HUBER_DELTA}
    else:
        kwargs = {"method": "leastsq"}
    if max_evals is not None:
        kwargs["max_nfev"] = max_evals
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            result = lmfit.minimize(residual, parameters, **kwargs)
        except (ValueError, FloatingPointError, np.linalg.LinAlgError):
            return theta0, False, None
    theta = np.array([result.params[f"p{i}"].value for i in range(len(problem.free))])
    converged = bool(result.success) and np.all(np.isfinite(theta)) and math.isfinite(problem.objective_value(theta))
    if max_evals is not None and result.nfev >= max_evals:
        converged = False
    return theta, converged, getattr(result, "covar", None)


def fit_law(
    law: Law,
    data: Columns,
    loss: np.ndarray,
    objective: str = "lsq",
    fixed: Mapping[str, float] | None = None,
    n_polish: int = DEFAULT_POLISH,
    max_evals: int | None = None,
    source: str = "runs table",
) -> FitResult:
    """Fit ``law`` to ``loss`` at ``data`` from the best ``n_polish`` points of its start grid."""
    if objective not in OBJECTIVES:
        raise UserError(f"--loss {objective!r}: choose one of {', '.join(OBJECTIVES)}")
    fixed = {**law.default_fixed, **(fixed or {})}
    unknown = [name for name in fixed if name not in law.param_names]
    if unknown:
        raise UserError(f"--fix {unknown[0]}: law {law.name} has no parameter {unknown[0]!r} ({', '.join(law.param_names)})")
    problem = _Problem(law, data, loss, objective, fixed)
    _check_fixable(problem)
    n_free = len(problem.free)
    if len(problem.loss) <= n_free:
        raise UserError(f"{source}: {len(problem.loss)} runs cannot fit law {law.name}, "
                        f"which has {n_free} free parameters (need at least {n_free + 1})")
    reason = law.collinear_inputs(problem.data)
    if reason:
        raise UserError(f"{source}: law {law.name} is not identifiable from these runs: {reason}")

    grid = start_grid(problem)
    scores = np.array([problem.objective_value(theta) for theta in grid])
    order = np.argsort(scores)[: max(1, n_polish)]
    best: tuple[float, np.ndarray, np.ndarray | None] | None = None
    for index in order:
        theta, converged, covariance = _polish(problem, grid[index], max_evals)
        if not converged:
            continue
        value = problem.objective_value(theta)
        if best is None or value < best[0]:
            best = (value, theta, covariance)
    if best is None:
        raise UserError(f"{source}: law {law.name} did not converge from any of {len(order)} starts "
                        f"({'evaluation limit reached' if max_evals else 'optimiser failed'}); "
                        "check the runs or give a larger --max-evals")
    value, theta, covariance = best
    result = FitResult(
        law=law,
        params=problem.natural(theta),
        objective=objective,
        objective_value=value,
        n_points=len(problem.loss),
        n_starts=len(order),
        fixed=dict(fixed),
    )
    result.stderr = _stderr(problem, theta, covariance if objective == "lsq" else None)
    weak = _unidentified(problem, theta)
    if weak:
        result.warnings.append(f"parameters {', '.join(weak)} are poorly identified by these runs "
                               "(near-singular Jacobian): their values are not meaningful on their own")
    loose = [name for name, error in result.stderr.items() if error is not None and error > abs(result.params[name])]
    if loose:
        result.warnings.append(f"parameters {', '.join(loose)} have a standard error larger than their value: "
                               "these runs do not pin them down")
    return result


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


def _stderr(problem: _Problem, theta: np.ndarray, covariance: np.ndarray | None) -> dict[str, float | None]:
    """Standard errors in natural units by the delta method (least squares only)."""
    names = problem.law.param_names
    stderr: dict[str, float | None] = {name: None for name in names}
    if covariance is None or not np.all(np.isfinite(covariance)):
        return stderr
    natural = lambda t: np.array([problem.natural(t)[name] for name in names])  # noqa: E731
    jac = _jacobian(natural, theta)
    cov = jac @ covariance @ jac.T
    for i, name in enumerate(names):
        if name not in problem.fixed and cov[i, i] >= 0:
            stderr[name] = float(math.sqrt(cov[i, i]))
    return stderr


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
) -> dict[str, tuple[float, float]]:
    """95% percentile intervals from refitting on ``samples`` resamples of the runs."""
    rng = np.random.default_rng(seed)
    loss = np.asarray(loss, float)
    draws: list[list[float]] = []
    for _ in range(samples):
        index = rng.integers(0, len(loss), len(loss))
        sample = {key: np.asarray(value)[index] for key, value in data.items()}
        try:
            refit = fit_law(law, sample, loss[index], fit.objective, fit.fixed, n_polish=2)
            draws.append([refit.params[name] for name in law.param_names])
        except UserError:
            pass  # a resample can be degenerate (e.g. one D only); it is skipped
        if progress:
            progress(1)
    if len(draws) < max(2, samples // 2):
        raise UserError(f"bootstrap: only {len(draws)} of {samples} resamples could be fitted")
    values = np.array(draws)
    low, high = np.percentile(values, [2.5, 97.5], axis=0)
    return {name: (float(lo), float(hi)) for name, lo, hi in zip(law.param_names, low, high)}


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
