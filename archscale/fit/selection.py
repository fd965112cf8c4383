"""Choosing a law's form by how well it extrapolates, on the user's own runs.

A scaling law is fitted to predict runs larger than any in the table, so a form is judged by exactly that:
each candidate (a law, tied or free exponents, least squares or Huber) is fitted on the runs of the smaller
sizes (``split="size"``, by ``N``) or lower compute budgets (``split="budget"``, ``C = 6 N D``) and scored by
its mean relative error on the larger ones. Rows held out with ``--holdout`` never enter: the caller passes
only the rows it fits. The winner is then refitted on all of them.

Why not the fit's own residuals: a more flexible form always fits the rows it sees at least as well, and on
published runs it is the one that extrapolates worse (see the README's selection table).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pandas as pd

from archscale.io.errors import UserError
from archscale.fit.fitting import OBJECTIVES, evaluate, fit_law
from archscale.laws import CONDITIONAL, GQA_LAWS, get_law
from archscale.fit.fitted import law_inputs
from archscale.fit.rows import size_levels

AUTO = "auto"
SPLITS = ("size", "budget")
TEST_SHARE = 0.2  # the largest sizes (or budgets) holding at least this share of the runs are predicted
N_FOLDS = 2  # nested forward folds averaged into a candidate's score (README: why two)
FOLD_SCORES = ("mean", "median")  # how a fold's relative errors on its larger runs become one number
FOLD_SCORE = "mean"
SIZE_LAWS = ("chinchilla", "chinchilla-tied")
SHAPE_LAWS = ("aspect", "aspect-tied")
FALLBACK_OBJECTIVE = "huber"  # when selection cannot run: the objective that won most often (README)
FALLBACK_LAW = "chinchilla"


@dataclass
class Candidate:
    """One form and how well it predicted the larger runs from the smaller ones, fold by fold."""

    law: str
    objective: str
    free_params: int
    fold_errors: list[float] = field(default_factory=list)  # each fold's relative errors on its test runs, reduced by the fold score
    max_rel_error: float | None = None  # worst run over all folds
    error: str | None = None

    @property
    def score(self) -> float | None:
        """Mean over folds of the fold scores; None when the form could not be fitted on some fold."""
        return float(np.mean(self.fold_errors)) if self.fold_errors and self.error is None else None


@dataclass
class Fold:
    """Runs below ``threshold`` (in N, or C) fit; the ``n_test`` runs at or above it are predicted."""

    threshold: float
    n_train: int
    n_test: int


@dataclass
class Selection:
    """The folds, every candidate's scores, and the chosen form."""

    split: str
    folds: list[Fold]
    candidates: list[Candidate]
    law: str
    objective: str
    note: str | None = None

    @property
    def column(self) -> str:
        return "N" if self.split == "size" else "C"

    def to_json(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "column": self.column,
            "folds": [vars(f) for f in self.folds],
            "score": "mean relative error on each fold's larger runs, averaged over folds",
            "candidates": [{**vars(c), "score": c.score} for c in self.candidates],
            "selected": {"law": self.law, "objective": self.objective},
            "note": self.note,
        }


def candidate_forms(frame: pd.DataFrame, law_name: str, objective: str, has_reference: bool) -> list[tuple[str, str]]:
    """Every (law, objective) pair to try: ``auto`` expands to what the runs' columns allow."""
    if objective != AUTO and objective not in OBJECTIVES:
        raise UserError(f"--loss {objective!r}: choose one of {', '.join(OBJECTIVES)} or auto")
    laws = [law_name] if law_name != AUTO else auto_laws(frame, has_reference)
    for name in laws:
        get_law(name)  # an unknown name is one clear line
    objectives = [objective] if objective != AUTO else list(OBJECTIVES)
    return [(law, obj) for law in laws for obj in objectives]


def auto_laws(frame: pd.DataFrame, has_reference: bool) -> list[str]:
    """Chinchilla, tied and free; the aspect laws when every run has a shape; the conditional laws when a
    reference law gives ``L_opt``, with their GQA-aware forms when the runs vary GQA (without one, ``L_opt`` is the best measured run of each size, which would
    let a conditional law see the losses it is scored on)."""
    laws = list(SIZE_LAWS)
    if _varies(frame, "R"):
        laws += SHAPE_LAWS
    if has_reference and _varies(frame, "x") and _varies(frame, "r"):
        laws += [law for law in CONDITIONAL if law not in GQA_LAWS or _varies(frame, "gqa")]
    return laws


def _varies(frame: pd.DataFrame, column: str) -> bool:
    return column in frame.columns and bool(frame[column].notna().all()) and frame[column].nunique() > 1


def budgets(frame: pd.DataFrame) -> np.ndarray:
    """Training compute of each run: the table's ``C`` where it has one, else ``6 N D``."""
    if "C" in frame.columns and frame["C"].notna().all():
        return frame["C"].to_numpy(float)
    return 6.0 * frame["N"].to_numpy(float) * frame["D"].to_numpy(float)


def extrapolation_split(frame: pd.DataFrame, split: str, share: float = TEST_SHARE) -> np.ndarray:
    """Mask of the test runs: whole levels from the top down, until they hold ``share`` of the runs.

    Raises :class:`UserError` when the runs have a single size (or budget): nothing to extrapolate to.
    """
    if split not in SPLITS:
        raise UserError(f"--split {split!r}: choose one of {', '.join(SPLITS)}")
    values = frame["N"].to_numpy(float) if split == "size" else budgets(frame)
    labels = size_levels(values)
    if labels.max() == 0:
        raise UserError(f"every run has the same {'size N' if split == 'size' else 'compute budget C'} (within 10%)")
    test = np.zeros(len(values), dtype=bool)
    level = int(labels.max())
    while test.sum() < share * len(values) and level > 0:
        test |= labels == level
        level -= 1
    return test


def forward_folds(frame: pd.DataFrame, split: str, count: int = N_FOLDS) -> list[np.ndarray]:
    """Test masks of up to ``count`` nested folds: the top sizes; then the top of what lies below; ...

    Each fold fits the runs below its test runs and never sees anything larger. Raises :class:`UserError`
    when the runs have a single size (or budget).
    """
    masks: list[np.ndarray] = []
    remaining = np.ones(len(frame), dtype=bool)
    for _ in range(count):
        try:
            test_within = extrapolation_split(frame[remaining], split)
        except UserError:
            if masks:
                break
            raise
        test = np.zeros(len(frame), dtype=bool)
        test[np.flatnonzero(remaining)[test_within]] = True
        masks.append(test)
        remaining &= ~test
    return masks


def select_form(
    frame: pd.DataFrame,
    forms: list[tuple[str, str]],
    split: str = "size",
    reference: Any = None,
    fixed: Mapping[str, float] | None = None,
    max_evals: int | None = None,
    source: str = "runs table",
    n_folds: int = N_FOLDS,
    fold_score: str = FOLD_SCORE,
) -> Selection:
    """Score every form by extrapolation on ``frame`` (the rows to fit, hold-outs already removed)."""
    frame = frame.reset_index(drop=True)
    try:
        tests = forward_folds(frame, split, n_folds)
    except UserError as exc:
        if str(exc).startswith("--split"):
            raise
        return _fallback(forms, split, f"selection skipped: {exc}, so there is nothing to extrapolate to")
    values = frame["N"].to_numpy(float) if split == "size" else budgets(frame)
    folds = []
    for test in tests:
        below = ~test & (values < values[test].min())
        folds.append((below, test, Fold(float(values[test].min()), int(below.sum()), int(test.sum()))))
    loss = frame["loss"].to_numpy(float)
    column = "N" if split == "size" else "C"
    candidates = [_score(frame, loss, law, objective, folds, reference, fixed, max_evals, f"{source}, fold with {column}",
                         fold_score)
                  for law, objective in forms]
    scored = [c for c in candidates if c.score is not None]
    if not scored:
        selection = _fallback(forms, split, f"no candidate form could be fitted on the smaller runs ({candidates[0].error})")
        selection.candidates, selection.folds = candidates, [fold for _, _, fold in folds]
        return selection
    # ties (to 1e-9) go to the form with fewer free parameters, then to the order the forms were listed
    best = min(scored, key=lambda c: (round(c.score, 9), c.free_params))
    return Selection(split, [fold for _, _, fold in folds], candidates, best.law, best.objective)


def _score(frame: pd.DataFrame, loss: np.ndarray, law_name: str, objective: str, folds: list, reference: Any,
           fixed: Mapping[str, float] | None, max_evals: int | None, source: str, fold_score: str = FOLD_SCORE) -> Candidate:
    """Fit one form on each fold's smaller runs and record its errors on the fold's larger ones."""
    law = get_law(law_name)
    n_free = len([p for p in law.params if p.name not in {**law.default_fixed, **(fixed or {})}])
    candidate = Candidate(law_name, objective, n_free)
    worst = 0.0
    try:
        inputs = law_inputs(law, frame, reference, source)
        for train, test, fold in folds:
            fit = fit_law(law, {k: v[train] for k, v in inputs.items()}, loss[train], objective, fixed,
                          max_evals=max_evals, source=f"{source} < {fold.threshold:.3g}", quick=True)
            predicted = law.predict(fit.params, {k: v[test] for k, v in inputs.items()})
            if not np.all(np.isfinite(predicted)):
                raise UserError("predicts a non-finite loss for a larger run")
            metrics = evaluate(loss[test], predicted)
            relative = np.abs(predicted / loss[test] - 1)
            candidate.fold_errors.append(float(np.median(relative) if fold_score == "median" else np.mean(relative)))
            worst = max(worst, metrics["max_rel_error"])
        candidate.max_rel_error = worst
    except UserError as exc:
        candidate.error = str(exc)
    return candidate


def _fallback(forms: list[tuple[str, str]], split: str, note: str) -> Selection:
    """The form used when nothing can be scored: the user's law or Chinchilla, the user's objective or Huber."""
    laws = {law for law, _ in forms}
    objectives = {obj for _, obj in forms}
    law = next(iter(laws)) if len(laws) == 1 else FALLBACK_LAW
    objective = next(iter(objectives)) if len(objectives) == 1 else FALLBACK_OBJECTIVE
    return Selection(split, [], [], law, objective, note=f"{note}; using {law} with {objective}")
