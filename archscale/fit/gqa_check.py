"""May the search trade on GQA? Only when the law has a GQA term that predicted larger runs' GQA variants.

A search maximises throughput at a predicted loss, and a larger GQA group is always faster; so whatever the
law says about GQA decides the pick. A law without a GQA term says nothing (every group gets the same loss),
and a GQA term fitted on a few noisy runs may say something wrong: at tiny scale the seed-to-seed spread of
one run (2.7% in ``experiments/studies/cpu_gqa_study.py``) is larger than the GQA effect itself.

So the fit checks its GQA term the way selection checks a form: fitted on the smaller sizes, it predicts the
GQA variants of the largest sizes (the seed means of each variant, when a variant was trained more than once).
It passes when the mean relative error is at most :data:`MAX_MEAN_ERROR` and the Spearman rank correlation is
at least :data:`MIN_SPEARMAN`. When it passes, the search ranks GQA variants by the law. When it does not, or
the law has no GQA term, the search holds GQA at the runs' baseline group (the one most runs had) and
``archscale search-gqa`` settles it by training, as the dissertation's Algorithm 5 does.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd

from archscale.fit.coverage import coordinates_of
from archscale.io.errors import UserError

MAX_MEAN_ERROR = 0.01
"""Mean |predicted / measured - 1| over the larger size's GQA variants that a GQA term must reach (1%)."""

MIN_SPEARMAN = 0.8
"""Spearman rank correlation between predicted and measured losses of those variants that it must reach."""

VARIANT_COLUMNS = ("N", "D", "d_model", "d_ff", "n_heads", "n_kv_heads", "n_layers")
"""Runs equal in every one of these (and in x, r, GQA) are one variant trained more than once: they are averaged."""


@dataclass
class GqaCheck:
    """What a fit may say about GQA, and the evidence: written to the fit JSON's ``gqa`` block."""

    traded: bool  # the search may rank GQA variants by the law's predicted loss
    baseline: float  # the group most runs had (the smallest on a tie): where the search holds GQA otherwise
    runs_by_gqa: dict[str, int]
    reason: str  # one line: why GQA is traded or held
    mean_abs_error: float | None = None
    spearman: float | None = None
    test_variants: int = 0
    test_runs: int = 0
    fitted_below_n: float | None = None
    bar: dict[str, float] = field(default_factory=lambda: {"max_mean_abs_error": MAX_MEAN_ERROR,
                                                           "min_spearman": MIN_SPEARMAN})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def spread(self) -> list[float]:
        """``[low, high]`` of the groups the runs had."""
        groups = [float(g) for g in self.runs_by_gqa]
        return [min(groups), max(groups)]


def gqa_check_from_json(block: Any, source: str) -> GqaCheck | None:
    """The ``gqa`` block of a fit JSON (None for a fit written before the check existed)."""
    if block is None:
        return None
    try:
        check = GqaCheck(**{k: v for k, v in block.items() if k in GqaCheck.__dataclass_fields__})
        check.baseline = float(check.baseline)
        check.runs_by_gqa = {str(k): int(v) for k, v in check.runs_by_gqa.items()}
        check.traded = bool(check.traded)
    except (AttributeError, TypeError, ValueError):
        raise UserError(f"{source}: 'gqa' must hold traded, baseline, runs_by_gqa and reason "
                        "(archscale fit writes it); refit, or remove the block") from None
    if not check.runs_by_gqa:
        raise UserError(f"{source}: 'gqa' has no runs_by_gqa; refit, or remove the block")
    return check


def baseline_group(groups: np.ndarray) -> tuple[float, dict[str, int]]:
    """The most common group among the runs (the smallest on a tie), and the count of runs per group."""
    rounded = np.round(groups.astype(float), 3)
    values, counts = np.unique(rounded, return_counts=True)
    baseline = float(values[np.flatnonzero(counts == counts.max())[0]])
    return baseline, {f"{v:g}": int(c) for v, c in zip(values, counts)}


def check_gqa(frame: pd.DataFrame, law_columns: tuple[str, ...],
              predict_larger: Callable[[], tuple[np.ndarray, np.ndarray]]) -> GqaCheck | None:
    """Check a fit's GQA term on ``frame`` (the rows it was fitted on); None when the runs record no GQA.

    ``predict_larger()`` splits off the largest sizes, fits the law on the rows below them and returns
    ``(test_mask, predictions for the test rows)``, raising :class:`UserError` when it cannot: the caller owns
    splitting and fitting (:mod:`archscale.fit.study`), this module owns the verdict.
    """
    groups = coordinates_of(frame).get("gqa")
    if groups is None:
        return None
    baseline, counts = baseline_group(groups)
    held = f"GQA is held at {baseline:g}, the group most runs had"
    if len(counts) == 1:
        return GqaCheck(False, baseline, counts, f"the runs all have GQA {baseline:g}: {held}")
    if "gqa" not in law_columns:
        return GqaCheck(False, baseline, counts, f"the law has no GQA term, though the runs vary GQA: {held}")
    try:
        test, predicted = predict_larger()
    except UserError as exc:
        return GqaCheck(False, baseline, counts, f"the GQA term cannot be checked ({exc}): {held}")
    if len(np.unique(np.round(groups[test], 3))) < 2:
        return GqaCheck(False, baseline, counts, f"the largest runs do not vary GQA, so its term cannot be checked: {held}")
    measured, estimate = variant_means(frame[test], np.asarray(predicted, float))
    error = float(np.mean(np.abs(estimate / measured - 1)))
    rho = spearman(estimate, measured)
    below = float(frame["N"].to_numpy(float)[test].min())
    check = GqaCheck(False, baseline, counts, "", error, rho, len(measured), int(test.sum()), below)
    scored = (f"fitted below N = {below:.3g}, it predicts the {len(measured)} larger GQA variants with "
              f"mean error {100 * error:.2f}% and Spearman {rho:.2f} (bar {100 * MAX_MEAN_ERROR:g}%, {MIN_SPEARMAN:g})")
    check.traded = error <= MAX_MEAN_ERROR and rho >= MIN_SPEARMAN
    check.reason = (f"the GQA term passed its held-out check: {scored}" if check.traded
                    else f"the GQA term failed its held-out check: {scored}; {held}")
    return check


def variant_means(rows: pd.DataFrame, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Measured and predicted loss per variant: runs equal in size, tokens and shape (differing only in seed)
    are averaged. A shape is its columns where the table has them, else its coordinates (x, r, GQA, depth)."""
    frame = pd.DataFrame({"measured": rows["loss"].to_numpy(float), "predicted": predicted})
    keys = [c for c in VARIANT_COLUMNS if c in rows.columns and rows[c].notna().all()]
    for key in keys:
        frame[key] = rows[key].to_numpy()
    for name, values in coordinates_of(rows).items():
        frame[f"coordinate_{name}"] = np.round(values, 6)
        keys.append(f"coordinate_{name}")
    means = frame.groupby(keys, sort=True)[["measured", "predicted"]].mean()
    return means["measured"].to_numpy(), means["predicted"].to_numpy()


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks on ties); nan when either side is constant."""
    from scipy.stats import spearmanr

    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(spearmanr(a, b).statistic)
