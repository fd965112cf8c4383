"""A fitting study: pick rows, supply the reference loss, fit, and score on held-out runs.

This is what ``archscale fit`` does, as a library call a notebook can make:
:func:`run_study` returns a :class:`Study` holding the fit, its metrics on
the fitting and held-out rows, and (optionally) the paper's progressive
tasks; :func:`save_fit` / :func:`load_fit` move a fitted law through JSON,
which ``predict`` and ``search`` read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from archscale import __version__
from archscale.errors import UserError
from archscale.files import jsonable, read_json
from archscale.fitting import FitResult, bootstrap, evaluate, fit_law
from archscale.laws import CONDITIONAL, Law, get_law
from archscale.runs import require_columns

SIZE_TOLERANCE = 0.10  # runs within 10% of each other's N (or D) belong to one size level


# ---------------------------------------------------------------------------
# a fitted law as it travels between verbs
# ---------------------------------------------------------------------------
@dataclass
class FittedLaw:
    """A law with parameters, and for conditional laws where ``L_opt`` comes from."""

    law: Law
    params: dict[str, float]
    reference: "FittedLaw | None" = None
    source: str = ""
    draws: list[dict[str, float]] = field(default_factory=list)  # bootstrap refits, for intervals downstream

    def predict(self, frame: pd.DataFrame | Mapping[str, Any], l_opt: np.ndarray | None = None) -> np.ndarray:
        """Predicted loss for each row; conditional laws need ``L_opt`` from ``l_opt`` or the reference."""
        columns = {c: np.asarray(frame[c], float) for c in self.law.columns if c != "L_opt"}
        if "L_opt" in self.law.columns:
            columns["L_opt"] = self.reference_loss(frame) if l_opt is None else np.broadcast_to(np.asarray(l_opt, float), len(columns["x"]))
        return self.law.predict(self.params, columns)

    def reference_loss(self, frame: pd.DataFrame | Mapping[str, Any]) -> np.ndarray:
        if self.reference is None:
            raise UserError(f"{self.source or 'fit'}: law {self.law.name} has no reference law for L_opt(N, D); "
                            "give L_opt explicitly (--l-opt) or refit with --reference chinchilla.json")
        return self.reference.predict(frame)

    def optimum(self) -> dict[str, float]:
        return self.law.optimum(self.params)


def fitted_from_json(document: Mapping[str, Any], source: str) -> FittedLaw:
    """Rebuild a :class:`FittedLaw` from its JSON form, checking every parameter is there."""
    if not isinstance(document, Mapping) or "law" not in document or "params" not in document:
        raise UserError(f"{source}: not an archscale fit file (needs 'law' and 'params')")
    law = get_law(str(document["law"]))
    params = document["params"]
    missing = [name for name in law.param_names if name not in params]
    if missing:
        raise UserError(f"{source}: law {law.name} needs parameter {missing[0]!r}")
    try:
        values = {name: float(params[name]) for name in law.param_names}
    except (TypeError, ValueError):
        raise UserError(f"{source}: parameters must be numbers") from None
    reference = document.get("reference")
    ref_fit = None
    if isinstance(reference, Mapping) and reference.get("kind") == "law":
        ref_fit = fitted_from_json(reference, f"{source} (reference)")
    return FittedLaw(law, values, ref_fit, source, _draws_from_json(document.get("bootstrap"), law, source))


def _draws_from_json(block: Any, law: Law, source: str) -> list[dict[str, float]]:
    """The bootstrap refits a fit JSON carries (``archscale fit --bootstrap K``), as parameter dicts."""
    if not block:
        return []
    try:
        names = list(block["names"])
        draws = [dict(zip(names, map(float, row))) for row in block["draws"]]
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{source}: 'bootstrap' must hold 'names' and 'draws' (rows of numbers)") from None
    if any(name not in names for name in law.param_names):
        raise UserError(f"{source}: the bootstrap refits lack a parameter of law {law.name}")
    return draws


def load_fit(path: str | Path) -> FittedLaw:
    """Read a fit JSON written by ``archscale fit`` (or a published fit shipped in ``data/fits``)."""
    return fitted_from_json(read_json(path), str(path))


# ---------------------------------------------------------------------------
# row selection and reference losses
# ---------------------------------------------------------------------------
def select(frame: pd.DataFrame, expression: str | None, flag: str) -> pd.Series:
    """Boolean mask of rows matching a pandas query expression (``--where``, ``--holdout``)."""
    if not expression:
        return pd.Series(False, index=frame.index) if flag == "--holdout" else pd.Series(True, index=frame.index)
    try:
        mask = frame.eval(expression)
    except Exception as exc:  # pandas raises many kinds for a bad expression
        raise UserError(f"{flag} {expression!r}: cannot evaluate on the runs table ({type(exc).__name__}: {exc}); "
                        f"columns are {', '.join(map(str, frame.columns))}") from None
    if not isinstance(mask, pd.Series) or mask.dtype != bool:
        raise UserError(f"{flag} {expression!r}: must be a true/false condition such as \"N>=1e9\"")
    return mask


def size_levels(values: np.ndarray, tolerance: float = SIZE_TOLERANCE) -> np.ndarray:
    """Label values into levels: sorted, a new level starts more than ``tolerance`` above the last level's start.

    Variants of one nominal size (80M models whose exact N differ by a few
    percent) share a level, as the paper groups them.
    """
    values = np.asarray(values, float)
    order = np.argsort(values)
    labels = np.empty(len(values), dtype=int)
    level, start = -1, -np.inf
    for index in order:
        if values[index] > start * (1 + tolerance):
            level, start = level + 1, values[index]
        labels[index] = level
    return labels


def empirical_best(frame: pd.DataFrame) -> np.ndarray:
    """Best measured loss among the runs of each (N level, D level): the paper's ``L_opt`` below 1B."""
    keys = pd.Series(list(zip(size_levels(frame["N"]), size_levels(frame["D"]))), index=frame.index)
    return frame["loss"].groupby(keys).transform("min").to_numpy(float)


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
    form_selection: Any = None  # archscale.selection.Selection when the form was chosen by extrapolation
    rows: np.ndarray | None = None  # 1-based file row of each run in ``frame``
    outliers: list[dict[str, Any]] = field(default_factory=list)
    hygiene: dict[str, Any] = field(default_factory=dict)

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
            "n_starts": self.fit.n_starts,
            "source": self.source,
            "selection": self.selection,
            "form_selection": self.form_selection.to_json() if self.form_selection is not None else None,
            "hygiene": {**self.hygiene, "outliers": self.outliers},
            "bootstrap": self.fit.draws_json(),
            "degenerate": self.fit.degenerate,
            "warnings": self.fit.warnings,
        })


def law_inputs(law: Law, frame: pd.DataFrame, reference: FittedLaw | None, source: str) -> dict[str, np.ndarray]:
    """The columns a law reads, with ``L_opt`` computed for conditional laws."""
    needed = tuple(c for c in law.columns if c != "L_opt")
    require_columns(frame, needed, f"law {law.name}", source)
    columns = {c: frame[c].to_numpy(float) for c in needed}
    if "L_opt" in law.columns:
        columns["L_opt"] = reference.predict(frame) if reference is not None else empirical_best(frame)
    return columns


def check_reference(law: Law | str, reference: FittedLaw) -> None:
    """A reference law supplies ``L_opt(N, D)``: only conditional laws use one, and it must be a Chinchilla fit.

    With ``law`` ``"auto"`` the reference brings the conditional laws into the candidate forms.
    """
    name = law if isinstance(law, str) else law.name
    if name != "auto" and name not in CONDITIONAL:
        raise UserError(f"--reference only applies to the conditional laws ({', '.join(CONDITIONAL)}), not {name}")
    if reference.law.name not in ("chinchilla", "chinchilla-tied"):
        raise UserError(f"--reference {reference.source}: must be a chinchilla fit, got law {reference.law.name}")


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
    split: str = "size",
) -> Study:
    """Fit a law on the selected, non-held-out rows and evaluate it everywhere.

    ``law_name`` or ``objective`` ``"auto"`` chooses among the candidate forms by how well each, fitted on the
    smaller runs, predicts the larger ones (:mod:`archscale.selection`); the winner is fitted on every row.
    """
    from archscale.hygiene import drop_undertrained, flag_outliers
    from archscale.selection import AUTO, candidate_forms, select_form

    if reference is not None:
        check_reference(law_name, reference)
    selected = select(frame, where, "--where").to_numpy()
    excluded = frame[~selected].reset_index(drop=True)
    frame = frame[selected]  # the index stays the file's data row, for naming rows (outliers) later
    if frame.empty:
        raise UserError(f"--where {where!r}: selects no rows of {source}")
    frame, undertrained = drop_undertrained(frame, min_tokens_per_param, source)
    rows = frame.index.to_numpy() + 1 if pd.api.types.is_integer_dtype(frame.index) else np.arange(1, len(frame) + 1)
    frame = frame.reset_index(drop=True)
    held = select(frame, holdout, "--holdout").to_numpy()
    if held.all():
        raise UserError(f"--holdout {holdout!r}: holds out every row of {source}; nothing is left to fit")

    form_selection = None
    if AUTO in (law_name, objective):
        forms = candidate_forms(frame, law_name, objective, reference is not None)
        form_selection = select_form(frame[~held].reset_index(drop=True), forms, split, reference, fixed, max_evals, source)
        law_name, objective = form_selection.law, form_selection.objective
    law = get_law(law_name)
    inputs = law_inputs(law, frame, reference, source)
    loss = frame["loss"].to_numpy(float)
    fit_inputs = {k: v[~held] for k, v in inputs.items()}
    fit = fit_law(law, fit_inputs, loss[~held], objective, fixed, max_evals=max_evals, source=source)
    if bootstrap_samples:
        fit.ci, fit.draws = bootstrap(law, fit_inputs, loss[~held], fit, bootstrap_samples, progress=progress)
    predicted = law.predict(fit.params, inputs)
    metrics = {"fit": evaluate(loss[~held], predicted[~held]),
               "holdout": evaluate(loss[held], predicted[held]) if held.any() else None}
    study = Study(
        fit=fit,
        fitted=FittedLaw(law, fit.params, reference, source,
                         [] if fit.draws is None else [dict(zip(law.param_names, row)) for row in fit.draws]),
        frame=frame,
        fit_mask=~held,
        holdout_mask=held,
        predicted=predicted,
        metrics=metrics,
        reference_kind=None if law.name not in CONDITIONAL else ("law" if reference is not None else "empirical"),
        source=source,
        selection={"where": where, "holdout": holdout},
        excluded=excluded,
        form_selection=form_selection,
        rows=rows,
        outliers=flag_outliers(rows[~held], loss[~held], robust_prediction(fit, fit_inputs, loss[~held], max_evals)),
        hygiene={"min_tokens_per_param": min_tokens_per_param, "dropped_undertrained": undertrained,
                 "outliers_judged_by": f"a Huber fit of {law.name} (robust: the runs it judges barely move it)"},
    )
    if progressive:
        study.progressive = progressive_tasks(law, frame[~held].reset_index(drop=True), reference, objective, fixed, source)
    return study


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
