"""A fitting study: pick rows, supply the reference loss, fit, and score on held-out runs.

This is what ``archscale fit`` does, as a library call a notebook can make:
:func:`run_study` returns a :class:`Study` holding the fit, its metrics on
the fitting and held-out rows, and (optionally) the paper's progressive
tasks; :meth:`Study.to_json` writes the fitted law that
:func:`archscale.fit.fitted.load_fit` reads back for ``predict``, ``plan`` and ``search``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from archscale import __version__
from archscale.io.errors import UserError
from archscale.io.files import jsonable
from archscale.fit.fitting import FitResult, bootstrap, evaluate, fit_law
from archscale.laws import CONDITIONAL, Law, get_law
from archscale.fit.coverage import coverage_of, size_range_of
from archscale.fit.gqa_check import check_gqa
from archscale.fit.fitted import FittedLaw, check_reference, law_inputs
from archscale.fit.rows import select, size_levels
from archscale.fit.runs import N_KINDS, n_kind


# ---------------------------------------------------------------------------
# the study
# ---------------------------------------------------------------------------
@dataclass
class Study:
    """Everything ``archscale fit`` reports."""

    fit: FitResult
    fitted: FittedLaw
    frame: pd.DataFrame
    fit_mask: np.ndarray
    holdout_mask: np.ndarray
    predicted: np.ndarray
    metrics: dict[str, Any]
    reference_kind: str | None = None
    progressive: list[dict[str, Any]] = field(default_factory=list)
    source: str = ""
    selection: dict[str, Any] = field(default_factory=dict)
    excluded: pd.DataFrame | None = None  # rows --where left out (the plot shows them, greyed)
    undertrained: pd.DataFrame | None = None  # rows below the floor on tokens per parameter (plotted apart)
    form_selection: Any = None  # archscale.fit.selection.Selection when the form was chosen by extrapolation
    rows: np.ndarray | None = None  # 1-based file row of each run in ``frame``
    outliers: list[dict[str, Any]] = field(default_factory=list)
    hygiene: dict[str, Any] = field(default_factory=dict)
    n_kind: str = "unstated"  # what the N column counts (archscale.fit.runs.N_KINDS)

    def to_json(self) -> dict[str, Any]:
        law = self.fit.law
        reference: dict[str, Any] | None = None
        if self.reference_kind == "empirical":
            reference = {"kind": "empirical", "note": "L_opt = best measured loss per (N, D) level in the runs table"}
        elif self.fitted.reference is not None:
            ref = self.fitted.reference
            reference = {"kind": "law", "law": ref.law.name, "params": ref.params, "source": ref.source}
        return jsonable({
            "archscale_version": __version__,
            "law": law.name,
            "formula": law.description,
            "objective": self.fit.objective,
            "objective_value": self.fit.objective_value,
            "params": self.fit.params,
            "stderr": self.fit.stderr,
            "ci95": self.fit.ci,
            "fixed": self.fit.fixed,
            "optimum": law.optimum(self.fit.params) or None,
            "reference": reference,
            "metrics": self.metrics,
            "progressive": self.progressive or None,
            "n_points": self.fit.n_points,
            "N_definition": {"kind": self.n_kind, "meaning": N_KINDS[self.n_kind]},
            "n_starts": self.fit.n_starts,
            "source": self.source,
            "selection": self.selection,
            "form_selection": self.form_selection.to_json() if self.form_selection is not None else None,
            "hygiene": {**self.hygiene, "outliers": self.outliers},
            "bootstrap": self.fit.draws_json(),
            "coverage": self.fitted.coverage,
            "size_range": self.fitted.size_range,
            "gqa": self.fitted.gqa.to_json() if self.fitted.gqa is not None else None,
            "degenerate": self.fit.degenerate,
            "warnings": self.fit.warnings,
        })


def run_study(
    frame: pd.DataFrame,
    law_name: str = "auto",
    objective: str = "auto",
    where: str | None = None,
    holdout: str | None = None,
    reference: FittedLaw | None = None,
    fixed: Mapping[str, float] | None = None,
    bootstrap_samples: int = 0,
    progressive: bool = False,
    max_evals: int | None = None,
    source: str = "runs table",
    progress: Callable[[int], None] | None = None,
    min_tokens_per_param: float | None = None,
    split: str = "auto",
    n_definition: str = "auto",
) -> Study:
    """Fit a law on the selected, non-held-out rows and evaluate it everywhere.

    ``law_name`` or ``objective`` ``"auto"`` chooses among the candidate forms by how well each, fitted on the
    smaller runs, predicts the larger ones (:mod:`archscale.fit.selection`); the winner is fitted on every row.
    """
    from archscale.fit.hygiene import drop_undertrained, flag_outliers
    from archscale.fit.selection import AUTO, candidate_forms, default_split, extrapolation_split, select_form, wing_floors

    if reference is not None:
        check_reference(law_name, reference)
    counted = n_kind(frame, n_definition)
    selected = select(frame, where, "--where", source).to_numpy()
    excluded = frame[~selected].reset_index(drop=True)
    frame = frame[selected]  # the index stays the file's data row, for naming rows (outliers) later
    frame, below = drop_undertrained(frame, min_tokens_per_param, source)
    rows = frame.index.to_numpy() + 1 if pd.api.types.is_integer_dtype(frame.index) else np.arange(1, len(frame) + 1)
    frame = frame.reset_index(drop=True)
    held = select(frame, holdout, "--holdout", source).to_numpy()
    if held.all():
        raise UserError(f"--holdout {holdout!r}: holds out every row of {source}; nothing is left to fit")

    form_selection = None
    if AUTO in (law_name, objective):
        forms = candidate_forms(frame, law_name, objective, reference is not None)
        # wings distort laws of N and D; a conditional law divides by L_opt of each (N, D), which absorbs them
        relative = any("L_opt" in get_law(name).columns for name, _ in forms)
        floors = wing_floors(frame[~held]) if min_tokens_per_param is None and not relative else [None]
        split, split_reason = default_split(frame[~held]) if split == AUTO else (split, None)
        form_selection = select_form(frame[~held].reset_index(drop=True), forms, split, reference, fixed, max_evals, source,
                                     floors=floors)
        form_selection.split_reason = split_reason
        law_name, objective = form_selection.law, form_selection.objective
        if form_selection.floor is not None:  # the chosen floor acts as --min-tokens-per-param would have
            min_tokens_per_param = form_selection.floor
            frame, below = drop_undertrained(frame, form_selection.floor, source)
            rows, held = rows[frame.index.to_numpy()], held[frame.index.to_numpy()]
            frame = frame.reset_index(drop=True)
    law = get_law(law_name)
    inputs = law_inputs(law, frame, reference, source)
    loss = frame["loss"].to_numpy(float)
    fit_inputs = {k: v[~held] for k, v in inputs.items()}
    fit = fit_law(law, fit_inputs, loss[~held], objective, fixed, max_evals=max_evals, source=source)
    if form_selection is not None and fit.degenerate:
        form_selection.note = "; ".join(filter(None, [form_selection.note, (
            f"the selected form's fit on all {fit.n_points} runs is degenerate ({', '.join(fit.degenerate)}; see the "
            "warnings), though it was not on the folds that chose it: its extrapolations are not to be trusted")]))
    if bootstrap_samples:
        fit.ci, fit.draws = bootstrap(law, fit_inputs, loss[~held], fit, bootstrap_samples, progress=progress)
    predicted = law.predict(fit.params, inputs)
    metrics = {"fit": evaluate(loss[~held], predicted[~held]),
               "holdout": evaluate(loss[held], predicted[held]) if held.any() else None}
    study = Study(
        fit=fit,
        fitted=FittedLaw(law, fit.params, reference, source,
                         [] if fit.draws is None else [dict(zip(law.param_names, row)) for row in fit.draws],
                         coverage_of(frame[~held]),
                         check_gqa(frame[~held].reset_index(drop=True), law.columns,
                                   lambda: predict_larger_runs(law, frame[~held].reset_index(drop=True), reference,
                                                               objective, fixed, max_evals, source, extrapolation_split)),
                         size_range_of(frame[~held])),
        frame=frame,
        fit_mask=~held,
        holdout_mask=held,
        predicted=predicted,
        metrics=metrics,
        reference_kind=None if law.name not in CONDITIONAL else ("law" if reference is not None else "empirical"),
        source=source,
        n_kind=counted,
        selection={"where": where, "holdout": holdout},
        excluded=excluded,
        undertrained=below.reset_index(drop=True),
        form_selection=form_selection,
        rows=rows,
        outliers=flag_outliers(rows[~held], loss[~held], robust_prediction(fit, fit_inputs, loss[~held], max_evals)),
        hygiene={"min_tokens_per_param": min_tokens_per_param, "dropped_undertrained": len(below),
                 "floor_chosen_by_selection": form_selection is not None and form_selection.floor is not None,
                 "outliers_judged_by": f"a Huber fit of {law.name} (robust: the runs it judges barely move it)"},
    )
    if progressive:
        study.progressive = progressive_tasks(law, frame[~held].reset_index(drop=True), reference, objective, fixed, source)
    return study


def predict_larger_runs(law: Law, frame: pd.DataFrame, reference: FittedLaw | None, objective: str,
                        fixed: Mapping[str, float] | None, max_evals: int | None, source: str,
                        split: Callable[[pd.DataFrame, str], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Fit ``law`` on the runs below the largest sizes and predict those: the GQA term's held-out check."""
    test = split(frame, "size")
    sizes = frame["N"].to_numpy(float)
    train = ~test & (sizes < sizes[test].min())
    inputs = law_inputs(law, frame, reference, source)
    loss = frame["loss"].to_numpy(float)
    fit = fit_law(law, {k: v[train] for k, v in inputs.items()}, loss[train], objective, fixed,
                  max_evals=max_evals, source=f"{source} below N {sizes[test].min():.3g}", quick=True)
    return test, law.predict(fit.params, {k: v[test] for k, v in inputs.items()})


def robust_prediction(fit: FitResult, inputs: Mapping[str, np.ndarray], loss: np.ndarray, max_evals: int | None) -> np.ndarray:
    """Predictions of a Huber fit of the same law, against which runs are judged outliers.

    A least-squares fit bends towards the very runs that should be flagged and hides them; a Huber fit
    caps their pull. When the fit is already Huber it is used as it is.
    """
    if fit.objective == "huber":
        return fit.predict(inputs)
    try:
        robust = fit_law(fit.law, inputs, loss, "huber", fit.fixed, max_evals=max_evals, quick=True)
    except UserError:
        return fit.predict(inputs)
    return robust.predict(inputs)


def progressive_tasks(
    law: Law,
    frame: pd.DataFrame,
    reference: FittedLaw | None,
    objective: str,
    fixed: Mapping[str, float] | None,
    source: str,
) -> list[dict[str, Any]]:
    """The paper's progressive tasks: fit on the k smallest size levels, evaluate on the next."""
    levels = size_levels(frame["N"])
    inputs = law_inputs(law, frame, reference, source)
    loss = frame["loss"].to_numpy(float)
    tasks = []
    sizes = [float(f"{np.exp(np.log(frame.loc[levels == level, 'N']).mean()):.3g}") for level in range(int(levels.max()) + 1)]
    for upto in range(int(levels.max())):
        train, test = levels <= upto, levels == upto + 1
        # each size level is named by the geometric mean of its runs' N
        task: dict[str, Any] = {"fit_sizes": sizes[: upto + 1], "test_sizes": [sizes[upto + 1]]}
        try:
            result = fit_law(law, {k: v[train] for k, v in inputs.items()}, loss[train], objective, fixed, source=source)
            predicted = law.predict(result.params, {k: v[test] for k, v in inputs.items()})
            task["metrics"] = evaluate(loss[test], predicted)
        except UserError as exc:
            task["error"] = str(exc)
        tasks.append(task)
    if not tasks:
        raise UserError(f"--progressive: {source} has a single size level; progressive tasks need at least two")
    return tasks
