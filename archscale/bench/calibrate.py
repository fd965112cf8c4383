"""Calibrate a throughput profile: fit the serving model's terms to measured rows of one engine on one device.

What is fitted: by default the bandwidth efficiency of weight reads, a fixed
time per forward pass and a time per running sequence per decode step
(``DEFAULT_FREE``); the
other terms stay at their defaults unless ``free`` or ``fixed`` say otherwise.
Why those three: they are what separates a real engine from the roofline
(see :mod:`archscale.serving.estimate`), and rows at several batch sizes and two or
more architectures pin them down. Each free term has bounds
(:data:`~archscale.serving.estimate.TERM_BOUNDS`); the fit minimises
``sum log(estimate / measured)^2`` (relative error, symmetric) with
:func:`scipy.optimize.least_squares` from a small grid of starts.

What is refused (one line, nothing written): fewer rows than free terms + 1;
rows of mixed units (some giving only total, some only output tokens/s);
several dtypes at once; a term the rows cannot determine (a flat direction of
the fit, e.g. ``t_step`` and ``t_seq`` from a single batch size); a fit that
ends on a term's bound (the model cannot match the rows with that term inside
its physical range, so its value would be an artefact): the message names the
term and how to continue (fix it, or measure what would determine it).

What is reported, so a profile says how far to trust it: the error on the
rows it was fitted on; leave-one-architecture-out (refit without each
architecture, predict it); with ``holdout``, the error on held-out rows; and
above all the error of predicted *speedups* between architectures at the same
workload, since that is what ``search`` ranks shapes by.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from archscale.shapes.architecture import MOE_FIELDS, non_embedding_params
from archscale.io.units import BYTES_PER_ELEMENT
from archscale.bench.records import MEASURED_BACKENDS, SHAPE_COLUMNS
from archscale.serving.devices import GPU
from archscale.serving.profiles import Profile, check_engine
from archscale.serving.estimate import (
    TERM_BOUNDS,
    TERM_MEANING,
    TERM_NAMES,
    CostTerms,
    EngineSettings,
    estimate_rows,
    latency_column,
    row_estimator,
    term_out_of_bounds,
)
from archscale.io.errors import UserError

DEFAULT_FREE = ("eta_weights", "t_step", "t_seq")
AUTO = "auto"
CANDIDATE_FREE = (
    DEFAULT_FREE,
    ("eta_compute", "t_step"),
    ("eta_compute", "eta_kv", "t_step"),
    ("eta_compute", "eta_weights", "t_step", "t_seq"),
    ("eta_weights", "eta_kv", "t_step", "t_seq"),
    ("eta_compute", "eta_weights", "eta_kv", "t_step", "t_seq"),
)
"""The term sets ``free="auto"`` chooses from, by leave-one-architecture-out error on the fitting rows."""
EXPERT_TERM = "t_expert_gb"


def candidate_sets(frame: pd.DataFrame) -> tuple[tuple[str, ...], ...]:
    """The sets ``auto`` tries on these rows: :data:`CANDIDATE_FREE`, and on MoE rows each also with the serial
    expert-read term (whether experts cost time beyond the roofline is for the data to say, engine by engine)."""
    experts = pd.to_numeric(frame["n_experts"], errors="coerce") if "n_experts" in frame.columns else None
    if experts is None or not bool((experts > 1).any()):
        return CANDIDATE_FREE
    return CANDIDATE_FREE + tuple((*terms, EXPERT_TERM) for terms in CANDIDATE_FREE)


TERM_SCALE = {"eta_compute": 0.1, "eta_weights": 0.1, "eta_kv": 0.1, "t_step": 1e-3, "t_seq": 1e-5, "t_layer": 1e-5,
              "t_allreduce": 1e-5, "t_expert_gb": 1e-2, "t_attn_gflop": 1e-3}
"""Typical size of each term: the optimiser's units, and the yardstick for "at a bound"."""
START_GRID = {"eta_compute": (0.3, 0.8), "eta_weights": (0.4, 0.9), "eta_kv": (0.4, 0.9), "t_step": (3e-4, 3e-3), "t_seq": (3e-6, 3e-5),
              "t_layer": (1e-6, 3e-5), "t_allreduce": (5e-6, 5e-5), "t_expert_gb": (0.01, 0.1),
              "t_attn_gflop": (0.003, 0.03)}
AT_BOUND = 1e-3
"""A fitted term closer to a bound than this many of its TERM_SCALE units counts as on the bound."""
FLAT_DIRECTION = 1e-6
"""Smallest/largest singular value of the scaled Jacobian below which the terms are not all determined."""
UNITS = {"output": "output tokens/s", "total": "total (prompt + generated) tokens/s"}
FITTED_LATENCY = ("tpot", "ttft")
"""Latency figures a calibration fits beside throughput, where the rows carry them."""
LATENCY_FIT_STATISTIC = 50
"""The statistic of each latency the fit matches: the median request, which a few stragglers do not move."""
ARCH_KEY = [*SHAPE_COLUMNS, *MOE_FIELDS, "vocab", "tie_embeddings"]


@dataclass
class Calibration:
    """A fitted profile with its evidence: per-row estimates, speedup pairs and validation summaries."""

    profile: Profile
    rows: pd.DataFrame
    speedups: pd.DataFrame
    unit: str
    summary: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------
# the rows a calibration fits
# ---------------------------------------------------------------------------
def measured_rows(results: pd.DataFrame, device: str, engine: str | None = None, dtype: str | None = None) -> pd.DataFrame:
    """Successful measured rows (not estimates) for one device key, optionally one engine and dtype."""
    if results.empty:
        return results.reset_index(drop=True)
    engines = [engine] if engine else list(MEASURED_BACKENDS)
    keep = (results["backend"].isin(engines) & (results["status"] == "ok")
            & (results["gpu"].astype(str).str.lower() == device.lower()))
    if dtype:
        keep &= results["dtype"].astype(str) == dtype
    return results[keep].reset_index(drop=True)


def settings_from_rows(rows: pd.DataFrame, settings: EngineSettings, given: Mapping[str, Any]) -> tuple[EngineSettings, list[str]]:
    """The engine settings to calibrate with: the prefill chunk and whether the engine started on the first request
    alone, each as ``given`` (a flag's value, None when not given), else as the rows recorded it
    (:mod:`archscale.bench.records`), else ``settings``' own; and a line per setting the rows decided."""
    chosen, notes = {}, []
    for column, from_rows in (("prefill_chunk_tokens", _recorded_chunk), ("first_prompt_alone", _recorded_alone)):
        recorded = _recorded_numbers(rows[column]) if column in rows.columns else pd.Series(dtype=float)
        if given.get(column) is not None:
            chosen[column] = given[column]
        elif not recorded.empty:
            chosen[column], note = from_rows(recorded, len(rows))
            notes.append(f"{column} {chosen[column]} ({note})")
    return replace(settings, **chosen), notes


def _recorded_chunk(recorded: pd.Series, n_rows: int) -> tuple[int, str]:
    """The engine's configured prefill pass: rows that recorded different ones are one line naming the flag."""
    values = sorted(set(recorded.astype(int)))
    if len(values) > 1:
        raise UserError(f"the rows recorded prefill_chunk_tokens {', '.join(map(str, values))}: one profile models one "
                        "engine setting; calibrate them apart (--holdout), or give --prefill-chunk to decide")
    return values[0], f"recorded in {len(recorded)} of the {n_rows} rows"


def _recorded_alone(recorded: pd.Series, n_rows: int) -> tuple[bool, str]:
    """Whether to model the first request alone: a race the rows record as a share of repeats, modelled where most
    rows that recorded it saw it at least once, since one such repeat sets the p99 TPOT of the requests it pools."""
    seen = int((recorded > 0).sum())
    return 2 * seen >= len(recorded), (f"the engine started on the first request alone in some repeat of {seen} of "
                                       f"the {len(recorded)} rows that could tell")


def _recorded_numbers(column: pd.Series) -> pd.Series:
    """A recorded setting as numbers, empty cells dropped (a CSV export may spell a flag True/False)."""
    text = column.astype("string").str.strip().str.lower().replace({"true": "1", "false": "0"})
    return pd.to_numeric(text, errors="coerce").dropna()


def measured_unit(rows: pd.DataFrame, source: str) -> str:
    """``output`` when every row gives output tokens/s, else ``total`` when every row gives total; mixed is refused."""
    output = pd.to_numeric(rows["output_tokens_per_s"], errors="coerce") > 0
    total = pd.to_numeric(rows["tokens_per_s"], errors="coerce") > 0
    if output.all():
        return "output"
    if total.all():
        return "total"
    only_total = [int(i) + 1 for i in np.flatnonzero(~output & total)][:3]
    only_output = [int(i) + 1 for i in np.flatnonzero(output & ~total)][:3]
    neither = [int(i) + 1 for i in np.flatnonzero(~output & ~total)][:3]
    if neither:
        raise UserError(f"{source}: row(s) {neither} give no positive throughput; drop them or fix their tokens/s")
    raise UserError(f"{source}: rows of mixed units: row(s) {only_total} give only total tokens/s and row(s) "
                    f"{only_output} only output tokens/s; give both (total = output x (input + output) / output) "
                    "or calibrate on one kind")


def _prepare(rows: pd.DataFrame, unit: str) -> pd.DataFrame:
    """Shape and workload columns as numbers, the element width per dtype, and the measured figure in ``unit``."""
    frame = rows.copy()
    for column in [*SHAPE_COLUMNS, "vocab", "batch_size", "input_len", "output_len"]:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    bad = frame[[*SHAPE_COLUMNS, "vocab", "batch_size", "input_len", "output_len"]].isna().any(axis=1)
    if bad.any():
        raise UserError(f"row {int(np.flatnonzero(bad)[0]) + 1} lacks a shape or workload column needed to estimate it")
    frame["tp"] = pd.to_numeric(frame["tp"], errors="coerce").fillna(1).astype(int)
    frame["tie_embeddings"] = frame["tie_embeddings"].fillna(False).astype(bool)
    frame["bytes_per_element"] = frame["dtype"].map(lambda d: BYTES_PER_ELEMENT.get(str(d), 2))
    frame["measured"] = pd.to_numeric(frame["output_tokens_per_s" if unit == "output" else "tokens_per_s"])
    for metric in FITTED_LATENCY:  # rows from before latency was recorded, or a backend without it, have none
        column = latency_column(metric, LATENCY_FIT_STATISTIC)
        frame[f"measured_{metric}"] = pd.to_numeric(frame[column], errors="coerce") if column in frame else np.nan
    for column in MOE_FIELDS:  # a dense row has none (empty cells, or no column in an older store): 0
        frame[column] = (pd.to_numeric(frame[column], errors="coerce") if column in frame else pd.Series(
            np.nan, index=frame.index)).fillna(0).astype("int64")
    # active parameters: what MoE shapes are compared at (equal to the total for a dense shape)
    frame["n_params"] = non_embedding_params(*(frame[c].astype("int64") for c in SHAPE_COLUMNS),
                                             **{c: frame[c] for c in MOE_FIELDS}, active=True)
    frame["arch"] = frame.groupby(ARCH_KEY, sort=False).ngroup()
    frame["arch_name"] = frame.groupby("arch")["name"].transform(lambda s: str(s.dropna().iloc[0]) if s.notna().any() else "?")
    return frame


def _column(unit: str) -> str:
    return "output_tokens_per_s" if unit == "output" else "tokens_per_s"


# ---------------------------------------------------------------------------
# the fit
# ---------------------------------------------------------------------------
def _terms(values: Mapping[str, float], base: CostTerms) -> CostTerms:
    return replace(base, **{name: float(value) for name, value in values.items()})


def _predict(frame: pd.DataFrame, device: GPU, terms: CostTerms, settings: EngineSettings, unit: str) -> np.ndarray:
    return estimate_rows(frame, device, terms, settings)[_column(unit)].to_numpy()


POLISHED_STARTS = 3
"""Starts of the grid (ranked by their objective) that the least-squares fit polishes."""
MAX_EVALUATIONS_PER_TERM = 60
"""A well-posed fit converges in a few dozen evaluations; a flat one would wander (and is refused after)."""


def _fit_terms(frame: pd.DataFrame, device: GPU, settings: EngineSettings, free: Sequence[str], base: CostTerms,
               unit: str, source: str) -> CostTerms:
    """Least-squares fit of the free terms on log ratios; refuses flat directions and fits on a bound."""
    from scipy.optimize import least_squares

    if len(frame) < len(free) + 1:
        raise UserError(f"{source}: {len(frame)} rows cannot calibrate {len(free)} terms ({', '.join(free)}); "
                        f"need at least {len(free) + 1} (measure more batch sizes or architectures, or fit fewer terms with --fit)")
    scale = np.array([TERM_SCALE[t] for t in free])
    low = np.array([TERM_BOUNDS[t][0] for t in free]) / scale
    high = np.array([TERM_BOUNDS[t][1] for t in free]) / scale
    targets = _fit_targets(frame, unit)
    estimate = row_estimator(frame, device, settings, with_latency=len(targets) > 1, statistics=(LATENCY_FIT_STATISTIC,))

    def residuals(x: np.ndarray) -> np.ndarray:
        predicted = estimate(_terms(dict(zip(free, x * scale)), base))
        parts = []
        for column, (rows, measured) in targets.items():
            with np.errstate(all="ignore"):
                ratio = np.asarray(predicted[column])[rows] / measured
            parts.append(np.where(np.isfinite(ratio) & (ratio > 0), np.log(np.maximum(ratio, 1e-300)), 50.0))
        return np.concatenate(parts)

    starts = [np.clip(np.array(start) / scale, low, high) for start in itertools.product(*(START_GRID[t] for t in free))]
    starts.sort(key=lambda x0: float(np.sum(residuals(x0) ** 2)))
    _check_determined(_jacobian(residuals, starts[0], low, high), free, source)  # cheap: refuse before a long, flat fit
    best = None
    for x0 in starts[:POLISHED_STARTS]:
        result = least_squares(residuals, x0, bounds=(low, high), xtol=1e-10, ftol=1e-10, gtol=1e-10,
                               max_nfev=MAX_EVALUATIONS_PER_TERM * len(free))
        if best is None or result.cost < best.cost:
            best = result
    _check_determined(best.jac, free, source)
    _check_inside_bounds(best.x, low, high, free, source)
    return _terms(dict(zip(free, best.x * scale)), base)


def _fit_targets(frame: pd.DataFrame, unit: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """What the fit matches: every row's throughput, and each latency (:data:`FITTED_LATENCY`) on the rows that
    measured it, as {estimate column: (row positions, measured values)}; each enters as log(estimate / measured)."""
    targets = {_column(unit): (np.arange(len(frame)), frame["measured"].to_numpy(float))}
    for metric in FITTED_LATENCY:
        measured = frame[f"measured_{metric}"].to_numpy(float)
        rows = np.flatnonzero(np.isfinite(measured) & (measured > 0))
        if len(rows):
            targets[latency_column(metric, LATENCY_FIT_STATISTIC)] = (rows, measured[rows])
    return targets


def _jacobian(function, x: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Central differences of ``function`` at ``x`` (steps kept inside the bounds), one column per term."""
    columns = []
    for k in range(len(x)):
        step = 1e-4 * max(1.0, abs(x[k]))
        up, down = x.copy(), x.copy()
        up[k], down[k] = min(x[k] + step, high[k]), max(x[k] - step, low[k])
        columns.append((function(up) - function(down)) / (up[k] - down[k]))
    return np.column_stack(columns)


def _check_determined(jacobian: np.ndarray, free: Sequence[str], source: str) -> None:
    """Refuse when the rows leave a direction of the terms flat (two terms trading off, or one with no effect)."""
    columns = np.linalg.norm(jacobian, axis=0)
    dead = [t for t, norm in zip(free, columns) if norm < 1e-9]
    if dead:
        raise UserError(f"{source}: these rows do not depend on term {dead[0]} ({TERM_MEANING[dead[0]]}), so they cannot "
                        f"calibrate it; leave it out of --fit (or --fix {dead[0]}=VALUE)")
    _, singular, vt = np.linalg.svd(jacobian / columns, full_matrices=False)
    if singular[-1] < FLAT_DIRECTION * singular[0]:
        tied = [t for t, weight in zip(free, np.abs(vt[-1])) if weight > 0.3]
        raise UserError(f"{source}: terms {' and '.join(tied)} are not separately determined by these rows (they trade off "
                        f"exactly); measure more batch sizes or architectures, or fix one with --fix {tied[-1]}=VALUE")


def _check_inside_bounds(x: np.ndarray, low: np.ndarray, high: np.ndarray, free: Sequence[str], source: str) -> None:
    """A term fitted onto its bound is an artefact: refuse, naming it and the way on."""
    for name, value, lo, hi in zip(free, x, low, high):
        side = "lower" if value - lo < AT_BOUND else "upper" if hi - value < AT_BOUND else None
        if side:
            bound = TERM_BOUNDS[name][0 if side == "lower" else 1]
            raise UserError(
                f"{source}: term {name} ({TERM_MEANING[name]}) ended on its {side} bound {bound:g}: the model cannot match "
                f"these rows with it inside its physical range, so its value would be an artefact; fix it with "
                f"--fix {name}=VALUE, leave it out of --fit, or check the rows (units, device, outliers)")


# ---------------------------------------------------------------------------
# validation: rows, leave-one-architecture-out, held-out rows, speedups
# ---------------------------------------------------------------------------
def _relative_errors(frame: pd.DataFrame, estimate: np.ndarray) -> np.ndarray:
    return estimate / frame["measured"].to_numpy(float) - 1.0


SAME_SIZE = 1.25
"""Architectures whose non-embedding parameter counts are within this factor are compared as alternatives."""


def speedup_pairs(frame: pd.DataFrame, estimate_column: str) -> pd.DataFrame:
    """Pairs of architectures of about the same size at the same workload: measured and estimated throughput ratios.

    These are the comparisons ``search`` makes (shapes at one parameter
    budget), so only architectures within :data:`SAME_SIZE` of each other's
    non-embedding parameters are paired. Pairs are ordered (faster-measured
    architecture / the other) and each counted once; ``error_points`` is
    ``100 |estimated - measured|`` ratio, so 1.22x predicted for 1.20x measured
    is 2 points.
    """
    keys = ["batch_size", "input_len", "output_len", "tp", "bytes_per_element"]
    records = []
    for _, group in frame.groupby(keys, sort=True):
        rows = list(group.itertuples())
        for a, b in itertools.combinations(rows, 2):
            if a.arch == b.arch or max(a.n_params, b.n_params) > SAME_SIZE * min(a.n_params, b.n_params):
                continue
            top, bottom = (a, b) if a.measured >= b.measured else (b, a)
            measured = top.measured / bottom.measured
            estimated = getattr(top, estimate_column) / getattr(bottom, estimate_column)
            records.append({"faster": top.arch_name, "slower": bottom.arch_name, "batch_size": int(top.batch_size),
                            "input_len": int(top.input_len), "output_len": int(top.output_len),
                            "split": "heldout" if "heldout" in (top.split, bottom.split) else top.split,
                            "measured_ratio": measured, "estimated_ratio": estimated,
                            "error_points": 100.0 * abs(estimated - measured)})
    return pd.DataFrame(records, columns=["faster", "slower", "batch_size", "input_len", "output_len", "split",
                                          "measured_ratio", "estimated_ratio", "error_points"])


def _summary(errors: np.ndarray, pairs: pd.DataFrame | None = None) -> dict[str, Any]:
    errors = np.abs(np.asarray(errors, float))
    out: dict[str, Any] = {"n_rows": int(len(errors)),
                           "mean_abs_rel_err": float(errors.mean()) if len(errors) else None,
                           "max_abs_rel_err": float(errors.max()) if len(errors) else None}
    if pairs is not None and len(pairs):
        out.update(n_pairs=int(len(pairs)), speedup_mean_abs_points=float(pairs["error_points"].mean()),
                   speedup_max_abs_points=float(pairs["error_points"].max()))
    return out


def score_profile(profile: Profile, results: pd.DataFrame) -> dict[str, Any]:
    """How well ``profile`` predicts every measured row of its device (none of them fitted): rows and speedups.

    Used to measure a profile carried to another device (:meth:`Profile.transferred`): fitted on one device,
    scored on the other's measurements, so the figure is held out by device.
    """
    rows = measured_rows(results, profile.device.name, profile.engine, profile.dtype)
    if rows.empty:
        raise UserError(f"no measured {profile.engine} rows on {profile.device.name} ({profile.dtype}) to score against")
    unit = measured_unit(rows, f"rows on {profile.device.name}")
    frame = _prepare(rows, unit)
    frame["split"] = "heldout"
    frame["estimate"] = _predict(frame, profile.device, profile.terms, profile.settings, unit)
    return _summary(_relative_errors(frame, frame["estimate"].to_numpy()), speedup_pairs(frame, "estimate"))


def _leave_one_architecture_out(frame: pd.DataFrame, device: GPU, settings: EngineSettings, free: Sequence[str],
                                base: CostTerms, unit: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Refit without each architecture and predict it; per-row estimates (NaN where a refit was refused)."""
    predicted, refused = _left_out_predictions(frame, device, settings, free, base, unit)
    return predicted[_column(unit)].to_numpy(float), refused


def _left_out_predictions(frame: pd.DataFrame, device: GPU, settings: EngineSettings, free: Sequence[str],
                          base: CostTerms, unit: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Every fitted quantity (throughput, and latency where rows carry it) of each architecture, predicted by a fit
    without it: a frame on ``frame``'s rows (NaN where a refit was refused), and the refusals."""
    columns = list(_fit_targets(frame, unit))
    predicted = pd.DataFrame(np.nan, index=frame.index, columns=columns)
    refused: dict[str, str] = {}
    for arch in frame["arch"].unique():
        left_out = (frame["arch"] == arch).to_numpy()
        name = str(frame.loc[left_out, "arch_name"].iloc[0])
        try:
            terms = _fit_terms(frame[~left_out], device, settings, free, base, unit, f"without {name}")
        except UserError as exc:
            refused[name] = str(exc)
            continue
        estimate = estimate_rows(frame[left_out], device, terms, settings)
        predicted.loc[left_out, columns] = estimate[columns].to_numpy(float)
    return predicted, refused


def _selection_error(frame: pd.DataFrame, predicted: pd.DataFrame, unit: str) -> float:
    """How well left-out predictions match: the mean |relative error| of each fitted quantity (throughput, and each
    latency the rows measured), averaged over the quantities, so a profile is chosen for everything it will predict."""
    errors = []
    for column, (rows, measured) in _fit_targets(frame, unit).items():
        values = predicted[column].to_numpy(float)[rows]
        errors.append(float(np.mean(np.abs(values / measured - 1.0))))
    return float(np.mean(errors))


def select_terms(frame: pd.DataFrame, device: GPU, settings: EngineSettings, base: CostTerms, unit: str,
                 fixed: Sequence[str] = (), candidates: Sequence[Sequence[str]] = CANDIDATE_FREE
                 ) -> tuple[tuple[str, ...], list[dict[str, Any]]]:
    """Choose which terms to fit by how well each set predicts architectures it was not fitted on.

    Every candidate set is refitted without each architecture in turn and
    scored on that architecture's rows (fitting rows only: held-out rows stay
    unseen): the mean |error| of its throughput and, where the rows measured
    them, of its median TPOT and TTFT, averaged over those quantities, since a
    profile is used for all of them. The set with the lowest error wins; one whose fit is refused
    (a bound, an undetermined term) for any architecture is not eligible. Why:
    which overheads an engine shows differs between engines and devices (a CPU
    is compute-bound in prefill, a GPU's decode is not), and the data should
    say which terms it supports, as ``fit`` chooses a law's form.
    """
    table = []
    tried: set[tuple[str, ...]] = set()
    for free in candidates:
        free = tuple(t for t in free if t not in fixed)
        if free in tried or not free:  # two sets that differ only in fixed terms are one set
            continue
        tried.add(free)
        try:
            _fit_terms(frame, device, settings, free, base, unit, "all architectures")
            predicted, refused = _left_out_predictions(frame, device, settings, free, base, unit)
        except UserError as exc:
            table.append({"terms": list(free), "loao_mean_abs_rel_err": None, "refused": str(exc)})
            continue
        error = _selection_error(frame, predicted, unit) if not refused else None
        table.append({"terms": list(free), "loao_mean_abs_rel_err": error,
                      "refused": "; ".join(f"{arch}: {why}" for arch, why in refused.items()) or None})
    eligible = [row for row in table if row["loao_mean_abs_rel_err"] is not None]
    if not eligible:
        raise UserError("no candidate set of terms could be fitted without every architecture in turn: "
                        + " | ".join(f"{'+'.join(row['terms'])}: {row['refused']}" for row in table))
    best = min(eligible, key=lambda row: (round(row["loao_mean_abs_rel_err"], 4), len(row["terms"])))
    return tuple(best["terms"]), table


def calibrate(results: pd.DataFrame, device: GPU, engine: str = "vllm", dtype: str | None = None,
              free: Sequence[str] | str = DEFAULT_FREE, fixed: Mapping[str, float] | None = None,
              holdout: pd.Series | np.ndarray | None = None, settings: EngineSettings = EngineSettings(),
              name: str | None = None, source: str = "results") -> Calibration:
    """Fit a :class:`Profile` for ``engine`` on ``device`` from the measured ok rows of ``results``.

    ``holdout`` (a boolean mask over ``results``) keeps rows out of the fit and
    scores the profile on them. ``fixed`` sets terms that are not fitted.
    ``free="auto"`` chooses the terms with :func:`select_terms` (three or more
    architectures needed in the fitting rows; otherwise the default set).
    """
    check_engine(engine)
    auto = free == AUTO
    free = DEFAULT_FREE if auto else tuple(dict.fromkeys(free))
    fixed = dict(fixed or {})
    unknown = [t for t in (*free, *fixed) if t not in TERM_NAMES]
    if unknown:
        raise UserError(f"unknown cost term {unknown[0]!r}; terms are {', '.join(TERM_NAMES)}")
    both = [t for t in free if t in fixed]
    if both and not auto:
        raise UserError(f"term {both[0]} is both fitted (--fit) and fixed (--fix); choose one")
    free = tuple(t for t in free if t not in fixed)
    if not free:
        raise UserError("nothing to fit: give at least one term with --fit that is not fixed with --fix")
    for name, value in fixed.items():
        problem = term_out_of_bounds(name, value)
        if problem:
            raise UserError(f"--fix {name}={value:g}: {problem}; give a value in that range")
    base = CostTerms(**fixed)
    mask = np.zeros(len(results), bool) if holdout is None else np.asarray(holdout, bool)
    selected = results.assign(_heldout=mask)
    rows = measured_rows(selected, device.name, engine, dtype)
    label = f"{source}: {engine} on {device.name}"
    if rows.empty:
        found = {what: ", ".join(sorted(set(results[column].dropna().astype(str)))) or "none"
                 for what, column in (("engines", "backend"), ("devices", "gpu"), ("dtypes", "dtype"))}
        raise UserError(f"{label}{f' in {dtype}' if dtype else ''}: no measured ok rows (found "
                        + "; ".join(f"{what}: {values}" for what, values in found.items()) + ")")
    dtypes = sorted(set(rows["dtype"].dropna().astype(str)))
    if len(dtypes) > 1:
        raise UserError(f"{label}: rows of several dtypes ({', '.join(dtypes)}); calibrate one at a time with --dtype")
    dtype = dtypes[0] if dtypes else (dtype or "bfloat16")
    unit = measured_unit(rows, label)
    frame = _prepare(rows, unit)
    frame["split"] = np.where(frame["_heldout"], "heldout", "fit")
    fit_rows = frame[frame["split"] == "fit"]
    if fit_rows.empty:
        raise UserError(f"{label}: --holdout holds out every row; nothing is left to fit")

    selection = None
    if auto and fit_rows["arch"].nunique() >= 3:
        free, selection = select_terms(fit_rows.reset_index(drop=True), device, settings, base, unit, tuple(fixed),
                                       candidate_sets(fit_rows))
    terms = _fit_terms(fit_rows, device, settings, free, base, unit, label)
    uncalibrated = Profile.uncalibrated(device, engine, dtype)
    frame["uncalibrated"] = _predict(frame, device, uncalibrated.terms, settings, unit)
    frame["estimate"] = _predict(frame, device, terms, settings, unit)
    frame["rel_err_uncalibrated"] = _relative_errors(frame, frame["uncalibrated"].to_numpy())
    frame["rel_err"] = _relative_errors(frame, frame["estimate"].to_numpy())
    pairs = speedup_pairs(frame, "estimate")
    fit_mask = (frame["split"] == "fit").to_numpy()
    validation: dict[str, Any] = {
        "unit": UNITS[unit],
        "fit": _summary(frame.loc[fit_mask, "rel_err"], pairs[pairs["split"] == "fit"]),
        "uncalibrated_fit": _summary(frame.loc[fit_mask, "rel_err_uncalibrated"]),
    }
    if auto:
        validation["term_selection"] = selection or "fewer than 3 architectures to choose by: default terms"
    if (~fit_mask).any():
        validation["heldout"] = _summary(frame.loc[~fit_mask, "rel_err"], pairs[pairs["split"] == "heldout"])
    latency = latency_errors(frame, estimate_rows(frame, device, terms, settings), fit_mask)
    if latency:
        validation["latency"] = latency
    if fit_rows["arch"].nunique() >= 2:
        loao, refused = _leave_one_architecture_out(frame[fit_mask].reset_index(drop=True), device, settings, free, base, unit)
        loao_frame = frame[fit_mask].reset_index(drop=True).assign(loao=loao)
        scored = loao_frame[np.isfinite(loao)]
        loao_pairs = speedup_pairs(scored, "loao") if len(scored) else None
        validation["leave_one_architecture_out"] = {**_summary(scored["loao"] / scored["measured"] - 1.0, loao_pairs),
                                                    "refused": refused or None}
        frame.loc[fit_mask, "loao"] = loao
    if "eta_kv" not in free:
        validation["eta_kv_range"] = eta_kv_refits(fit_rows, device, settings, free, base, unit, label,
                                                   validation["fit"]["mean_abs_rel_err"])
    profile = Profile(name=name or f"{engine}-{device.name}-{_short_dtype(dtype)}", engine=engine, device=device,
                      dtype=dtype, terms=terms, settings=settings, fitted=free,
                      source=_describe_source(frame, source), validation=validation)
    return Calibration(profile=profile, rows=frame, speedups=pairs, unit=unit, summary=validation)


REPORTED_LATENCY = tuple((metric, statistic) for metric in FITTED_LATENCY for statistic in (50, 99))
"""Latency figures whose error a calibration reports, per split (the fit matches only the medians)."""


def latency_errors(rows: pd.DataFrame, predicted: pd.DataFrame, fit_mask: np.ndarray) -> dict[str, Any]:
    """Relative error of predicted TPOT and TTFT (median and p99 over requests) on the rows that measured them,
    per split: {"fit"|"heldout": {"tpot_ms_p50": {n_rows, median_abs_rel_err, max_abs_rel_err}, ...}}; empty
    when no row measured latency."""
    report: dict[str, Any] = {}
    for split, mask in (("fit", fit_mask), ("heldout", ~fit_mask)):
        for metric, statistic in REPORTED_LATENCY:
            column = latency_column(metric, statistic)
            if column not in rows:
                continue
            measured = pd.to_numeric(rows[column], errors="coerce").to_numpy(float)
            usable = mask & np.isfinite(measured) & (measured > 0)
            if not usable.any():
                continue
            errors = np.abs(predicted[column].to_numpy(float)[usable] / measured[usable] - 1.0)
            report.setdefault(split, {})[column] = {"n_rows": int(usable.sum()),
                                                    "median_abs_rel_err": float(np.median(errors)),
                                                    "max_abs_rel_err": float(errors.max())}
    return report


ETA_KV_RANGE = (0.7, 0.8, 0.9, 1.0)
"""Values of the KV-cache read efficiency tried when it is held fixed: rows of few architectures rarely pin it."""
ADMISSIBLE_EXTRA_ERROR = 0.01
"""A refit at another eta_kv is admissible when its mean |error| on the fitting rows is within 1 point of the fit's."""


def eta_kv_refits(fit_rows: pd.DataFrame, device: GPU, settings: EngineSettings, free: Sequence[str], base: CostTerms,
                  unit: str, label: str, fit_error: float) -> dict[str, Any]:
    """The free terms refitted with eta_kv held at each of :data:`ETA_KV_RANGE`; the ones that fit the rows about as
    well are the admissible term sets whose spread ``search`` carries into each speedup's interval.

    eta_kv is fixed because the rows do not determine it (trying to fit it ends on a bound); fixing it silently would
    hang the headline on a guess, so every value the rows cannot rule out is kept.
    """
    refits = []
    for value in ETA_KV_RANGE:
        start = replace(base, eta_kv=value)
        try:
            terms = _fit_terms(fit_rows, device, settings, free, start, unit, f"{label} (eta_kv {value})")
        except UserError as exc:
            refits.append({"eta_kv": value, "refused": str(exc)})
            continue
        error = float(np.mean(np.abs(_relative_errors(fit_rows, _predict(fit_rows, device, terms, settings, unit)))))
        refits.append({"eta_kv": value, "terms": terms.as_dict(), "fit_mean_abs_rel_err": error,
                       "admissible": bool(error <= fit_error + ADMISSIBLE_EXTRA_ERROR)})
    return {"rule": f"refit with eta_kv fixed at each value; admissible when the fit's mean |error| grows by at most "
                    f"{100 * ADMISSIBLE_EXTRA_ERROR:g} point", "refits": refits}


def _short_dtype(dtype: str) -> str:
    return {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(dtype, dtype)


def _describe_source(frame: pd.DataFrame, source: str) -> str:
    fitted = frame[frame["split"] == "fit"]
    names = ", ".join(dict.fromkeys(fitted["arch_name"].astype(str)))
    return f"fitted on {len(fitted)} rows of {source} ({names})"


def term_table(profile: Profile) -> list[dict[str, Any]]:
    """Each term with its value, whether it was fitted, its bounds and what it means (for reports)."""
    return [{"term": name, "value": getattr(profile.terms, name), "fitted": name in profile.fitted,
             "bounds": TERM_BOUNDS[name], "meaning": TERM_MEANING[name]} for name in TERM_NAMES]


PER_UNIT = {"t_expert_gb": "GB", "t_attn_gflop": "GFLOP"}
"""Terms that are times per amount of work, and the amount: printed as "55 ms per GB", not as a bare time."""


def format_term(name: str, value: float) -> str:
    """Efficiencies as fractions, times in ms or us (per GB or GFLOP for the terms that are rates)."""
    if name.startswith("eta"):
        return f"{value:.3f}"
    if value == 0 or not math.isfinite(value):
        return "0"
    time = f"{value * 1e3:.3g} ms" if value >= 1e-3 else f"{value * 1e6:.3g} us"
    return f"{time} per {PER_UNIT[name]}" if name in PER_UNIT else time


# ---------------------------------------------------------------------------
# measured vs estimated, for display
# ---------------------------------------------------------------------------
def estimate_ratio(results: pd.DataFrame, gpu_file=None) -> tuple[pd.Series, pd.Series]:
    """measured / estimated total tokens/s for every measured ok row on a known device, and the profile compared with.

    What ``bench --show`` prints as "vs estimate": the estimate comes from the
    profile ``search`` and the roofline backend would use for the row's engine,
    device and dtype (:func:`~archscale.serving.profiles.resolve_profile`), at the
    row's own shape and workload.
    """
    from archscale.serving.devices import load_gpu
    from archscale.serving.profiles import resolve_profile

    ratio = pd.Series(np.nan, index=results.index, dtype=float)
    used = pd.Series(None, index=results.index, dtype=object)
    if results.empty:
        return ratio, used
    ok = results["backend"].isin(MEASURED_BACKENDS) & (results["status"] == "ok") & (results["tokens_per_s"] > 0)
    for (gpu, engine, dtype), rows in results[ok].groupby(["gpu", "backend", "dtype"], dropna=True):
        try:
            device = load_gpu(str(gpu), gpu_file)
            profile = resolve_profile(None, device, str(engine), str(dtype))
            frame = _prepare(rows, "total")
        except UserError:
            continue
        estimate = estimate_rows(frame, profile.device, profile.terms, profile.settings)["tokens_per_s"].to_numpy()
        ratio.loc[rows.index] = frame["measured"].to_numpy(float) / estimate
        used.loc[rows.index] = profile.name
    return ratio, used
