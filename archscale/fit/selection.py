"""Choosing a law's form by how well it extrapolates, on the user's own runs.

A scaling law is fitted to predict runs larger than any in the table, so a form is judged by exactly that:
each candidate (a law, tied or free exponents, least squares or Huber) is fitted on the runs of the smaller
sizes (``split="size"``, by ``N``) or lower compute budgets (``split="budget"``, ``C = 6 N D``) and scored by
its mean relative error on the larger ones. Rows held out with ``--holdout`` never enter: the caller passes
only the rows it fits. The winner is then refitted on all of them.

Why not the fit's own residuals: a more flexible form always fits the rows it sees at least as well, and on
published runs it is the one that extrapolates worse (see the README's selection table).

**Wings.** IsoFLOP studies train some models on far fewer tokens than parameters. A law of N and D fitted
through them bends towards them and misses the larger runs (on published isoFLOP studies, by 12%). When the
table has such runs, the floor on tokens per parameter below which runs are left out is chosen like the form:
each form is fitted at each candidate floor (none, 1, 5) and every candidate is scored on the same larger runs,
those at or above the highest floor, so that no candidate is judged on an easier test.

**Degenerate fits** (a term collapsed to nothing, such as E at zero, which predicts loss falling to zero; an
exponent on its bound) have stopped being the law they name. Such a candidate is marked in the table and chosen
only when nothing else could be scored.
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
MIN_PROFILE_SIZES = 3  # an isoFLOP profile: a budget at which at least this many sizes were trained
TEST_SHARE = 0.2  # the largest sizes (or budgets) holding at least this share of the runs are predicted
N_FOLDS = 2  # nested forward folds averaged into a candidate's score (README: why two)
FOLD_SCORES = ("mean", "median")  # how a fold's relative errors on its larger runs become one number
FOLD_SCORE = "mean"
SIZE_LAWS = ("chinchilla", "chinchilla-tied", "kaplan", "farseer")
SHAPE_LAWS = ("aspect", "aspect-tied")
MOE_CANDIDATES = (("moe-granularity", "G"), ("moe-joint", "expansion"), ("moe-joint-fixed-exponents", "expansion"))
"""Each MoE law and the derived column (archscale.fit.runs) that must vary, and be known on every run, to try it."""
FALLBACK_OBJECTIVE = "huber"  # when selection cannot run: the objective that won most often (README)
FALLBACK_LAW = "chinchilla"
WING_FLOORS = (1.0, 5.0)  # candidate floors on tokens per parameter (D/N), tried when some runs lie below them
POOR_SCORE = 0.03  # a best score above this: no form extrapolates well, and the user is told why it may be


@dataclass
class Candidate:
    """One form and how well it predicted the larger runs from the smaller ones, fold by fold."""

    law: str
    objective: str
    free_params: int
    floor: float | None = None  # runs with D/N below this were left out of its fits (None: none left out)
    fold_errors: list[float] = field(default_factory=list)  # each fold's relative errors on its test runs, reduced by the fold score
    max_rel_error: float | None = None  # worst run over all folds
    error: str | None = None
    degenerate: dict[str, str] = field(default_factory=dict)  # parameter -> why, on any fold

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
    floors: list[float | None] = field(default_factory=lambda: [None])  # candidate floors on D/N
    floor: float | None = None  # the chosen one: runs below it are left out of the fit
    warning: str | None = None  # no form extrapolates well: what to look at
    split_reason: str | None = None  # why this split, when it was chosen for the user
    size_column: str = "N"  # what a size split orders runs by: N_active on a table with MoE runs (see sizes)

    @property
    def tested_floor(self) -> float | None:
        """Every candidate is scored on the larger runs at or above this D/N (the highest candidate floor)."""
        return highest_floor(self.floors)

    @property
    def column(self) -> str:
        return self.size_column if self.split == "size" else "C"

    def to_json(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "split_reason": self.split_reason,
            "column": self.column,
            "folds": [vars(f) for f in self.folds],
            "score": "mean relative error on each fold's larger runs, averaged over folds",
            "candidates": [{**vars(c), "score": c.score} for c in self.candidates],
            "selected": {"law": self.law, "objective": self.objective},
            "min_tokens_per_param": self.floor,
            "floors": self.floors,
            "scored_on": (f"runs with D/N >= {self.tested_floor:g} (the highest candidate floor)"
                          if self.tested_floor is not None else "every larger run"),
            "note": self.note,
            "warning": self.warning,
        }


def candidate_forms(frame: pd.DataFrame, law_name: str, objective: str, has_reference: bool) -> list[tuple[str, str]]:
    """Every (law, objective) pair to try: ``auto`` expands to what the runs' columns allow."""
    if objective != AUTO and objective not in OBJECTIVES:
        raise UserError(f"--loss {objective!r}: choose one of {', '.join(OBJECTIVES)} or auto")
    laws = [law_name] if law_name != AUTO else auto_laws(frame, has_reference)
    return [(law, obj) for law in laws
            for obj in ([objective] if objective != AUTO else get_law(law).selection_objectives)]


def auto_laws(frame: pd.DataFrame, has_reference: bool) -> list[str]:
    """Chinchilla, tied and free; the aspect laws when every run has a shape; the conditional laws when a
    reference law gives ``L_opt``, with their GQA-aware forms when the runs vary GQA (without one, ``L_opt`` is the best measured run of each size, which would
    let a conditional law see the losses it is scored on)."""
    laws = list(SIZE_LAWS)
    if _varies(frame, "R"):
        laws += SHAPE_LAWS
    if has_reference and _varies(frame, "x") and _varies(frame, "r"):
        laws += [law for law in CONDITIONAL if law not in GQA_LAWS or _varies(frame, "gqa")]
    laws += [law for law, column in MOE_CANDIDATES if _varies(frame, column)]
    return laws


def _varies(frame: pd.DataFrame, column: str) -> bool:
    return column in frame.columns and bool(frame[column].notna().all()) and frame[column].nunique() > 1


def default_split(frame: pd.DataFrame) -> tuple[str, str]:
    """``budget`` for an isoFLOP design (at least 3 budgets, each with at least 3 sizes), else ``size``; and why.

    On isoFLOP profiles the largest models of every budget are its most under-trained: a split by size would
    score each form on predicting wings. The question such a study answers is the next budget, so that is what
    selection predicts.
    """
    levels = budget_groups(frame)
    counts = [len(np.unique(size_levels(sizes(frame)[levels == level]))) for level in range(int(levels.max()) + 1)]
    if len(counts) >= 3 and min(counts) >= MIN_PROFILE_SIZES:
        spread = f"{min(counts)}" if min(counts) == max(counts) else f"{min(counts)}-{max(counts)}"
        return "budget", f"the runs form isoFLOP profiles ({len(counts)} budgets with {spread} sizes each)"
    return "size", "the runs are not isoFLOP profiles"


def wing_floors(frame: pd.DataFrame) -> list[float | None]:
    """Candidate floors on tokens per parameter: none, and each of :data:`WING_FLOORS` some run lies below."""
    ratio = frame["D"].to_numpy(float) / sizes(frame)
    return [None, *[floor for floor in WING_FLOORS if bool(np.any(ratio < floor))]]


def sizes(frame: pd.DataFrame) -> np.ndarray:
    """The size selection extrapolates in: ``N_active`` on a table with Mixture-of-Experts runs, else ``N``.

    An MoE run's ``N`` counts every expert, most of which a token never uses: an 8-expert model of a small
    active size would otherwise sit among the large dense runs and be scored as one. A token's compute and the
    joint law's size axis are the active count (a dense row's is its ``N``, :func:`archscale.fit.runs.derive`).
    """
    if "N_active" in frame.columns and frame["N_active"].notna().all():
        return frame["N_active"].to_numpy(float)
    return frame["N"].to_numpy(float)


def size_label(frame: pd.DataFrame) -> str:
    """How :func:`sizes` names its column in messages and the fit JSON."""
    return "N_active" if "N_active" in frame.columns and frame["N_active"].notna().all() else "N"


def budgets(frame: pd.DataFrame) -> np.ndarray:
    """Training compute of each run: the table's ``C`` where it has one, else ``6 N D`` (``N`` active, for MoE)."""
    if "C" in frame.columns and frame["C"].notna().all():
        return frame["C"].to_numpy(float)
    return 6.0 * sizes(frame) * frame["D"].to_numpy(float)


def budget_groups(frame: pd.DataFrame) -> np.ndarray:
    """Label runs by training budget: runs within 10% of one another's ``C`` (or ``6 N D``) share one."""
    return size_levels(budgets(frame))


def highest_floor(floors: list[float | None]) -> float | None:
    """The highest candidate floor on D/N (None: no floor among them)."""
    return max((f for f in floors if f is not None), default=None)


def extrapolation_split(frame: pd.DataFrame, split: str, share: float = TEST_SHARE) -> np.ndarray:
    """Mask of the test runs: whole levels from the top down, until they hold ``share`` of the runs.

    Raises :class:`UserError` when the runs have a single size (or budget): nothing to extrapolate to.
    """
    if split not in SPLITS:
        raise UserError(f"--split {split!r}: choose one of {', '.join(SPLITS)} or auto")
    values = sizes(frame) if split == "size" else budgets(frame)
    labels = size_levels(values)
    if labels.max() == 0:
        what = f"size {size_label(frame)}" if split == "size" else "compute budget C"
        raise UserError(f"every run has the same {what} (within 10%)")
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
    floors: list[float | None] | None = None,
) -> Selection:
    """Score every form (at every candidate floor on D/N) by extrapolation on ``frame``, the rows to fit.

    ``floors`` are the candidate floors (:func:`wing_floors`; None: leave no run out). Hold-outs are already
    removed by the caller.
    """
    frame = frame.reset_index(drop=True)
    try:
        tests = forward_folds(frame, split, n_folds)
    except UserError as exc:
        if str(exc).startswith("--split"):
            raise
        return _fallback(forms, split, f"selection skipped: {exc}, so there is nothing to extrapolate to")
    values = sizes(frame) if split == "size" else budgets(frame)
    ratio = frame["D"].to_numpy(float) / sizes(frame)
    floors = _testable_floors(list(floors or [None]), tests, ratio)
    tested = highest_floor(floors)
    folds = []
    for test in tests:
        below = ~test & (values < values[test].min())
        scored = test if tested is None else test & (ratio >= tested)
        folds.append((below, scored, Fold(float(values[test].min()), int(below.sum()), int(scored.sum()))))
    loss = frame["loss"].to_numpy(float)
    column = size_label(frame) if split == "size" else "C"
    candidates = []
    fitted_sets: set[tuple[bytes, ...]] = set()
    for floor in floors:
        kept = np.ones(len(frame), dtype=bool) if floor is None else ratio >= floor
        floor_folds = [(below & kept, test, fold) for below, test, fold in folds]
        fitted = tuple(np.packbits(train).tobytes() for train, _, _ in floor_folds)
        if fitted in fitted_sets:
            continue  # its runs below the floor are all in some fold's test: it would repeat a lower floor's scores
        fitted_sets.add(fitted)
        candidates += [_score(frame, loss, law, objective, floor_folds, reference, fixed, max_evals,
                              f"{source}, fold with {column}", fold_score, floor)
                       for law, objective in forms]
    selection = _choose(candidates, split, [fold for _, _, fold in folds], floors, forms, ratio)
    selection.size_column = size_label(frame)
    return selection


def _testable_floors(floors: list[float | None], tests: list[np.ndarray], ratio: np.ndarray) -> list[float | None]:
    """Drop the highest floors while some fold would have no larger run at or above them to be scored on."""
    highest = highest_floor(floors)
    while highest is not None and not all(np.any(test & (ratio >= highest)) for test in tests):
        floors = [f for f in floors if f != highest]
        highest = highest_floor(floors)
    return floors


def _choose(candidates: list[Candidate], split: str, folds: list[Fold], floors: list[float | None],
            forms: list[tuple[str, str]], ratio: np.ndarray) -> Selection:
    """The best-scoring candidate that is not degenerate; ties go to fewer parameters, then to the lower floor."""
    scored = [c for c in candidates if c.score is not None]
    if not scored:
        selection = _fallback(forms, split, f"no candidate form could be fitted on the smaller runs ({candidates[0].error})")
        selection.candidates, selection.folds = candidates, folds
        return selection
    sound = [c for c in scored if not c.degenerate]
    note = None
    if not sound:
        note = ("every form that could be scored was degenerate on some fold (a term collapsed, or an exponent on its "
                "bound): the selected one is the best of them, and its predictions beyond the runs are not to be trusted")
    best = min(sound or scored, key=lambda c: (round(c.score, 9), c.free_params, c.floor or 0.0))
    selection = Selection(split, folds, candidates, best.law, best.objective, note=note, floors=floors, floor=best.floor)
    if best.score > POOR_SCORE:
        selection.warning = _poor_extrapolation(best, ratio, floors)
    return selection


def _poor_extrapolation(best: Candidate, ratio: np.ndarray, floors: list[float | None]) -> str:
    """Say that no form predicts the larger runs well, and what most often causes it."""
    head = (f"no candidate form predicts the larger runs within {100 * POOR_SCORE:g}% (the best, {best.law} "
            f"{best.objective}, misses them by {100 * best.score:.1f}% on average), so predictions beyond these runs are "
            "not reliable")
    below = int(np.sum(ratio < 1))
    if below and len(floors) == 1:
        return (f"{head}; {below} runs were trained on fewer tokens than parameters (isoFLOP wings): leave them out with "
                "--min-tokens-per-param 5")
    if below:
        return (f"{head}, even with the runs below {highest_floor(floors):g} tokens per parameter left out; "
                "look for larger runs trained differently from the smaller ones, and hold them out with --holdout")
    return (f"{head}; look for larger runs trained differently from the smaller ones (another dataset, schedule or "
            "tokenizer), and hold them out with --holdout or leave them out with --where")


def _score(frame: pd.DataFrame, loss: np.ndarray, law_name: str, objective: str, folds: list, reference: Any,
           fixed: Mapping[str, float] | None, max_evals: int | None, source: str, fold_score: str = FOLD_SCORE,
           floor: float | None = None) -> Candidate:
    """Fit one form on each fold's smaller runs and record its errors on the fold's larger ones."""
    law = get_law(law_name)
    n_free = len([p for p in law.params if p.name not in {**law.default_fixed, **(fixed or {})}])
    candidate = Candidate(law_name, objective, n_free, floor)
    worst = 0.0
    try:
        inputs = law_inputs(law, frame, reference, source)
        for train, test, fold in folds:
            fit = fit_law(law, {k: v[train] for k, v in inputs.items()}, loss[train], objective, fixed,
                          max_evals=max_evals, source=f"{source} < {fold.threshold:.3g}", quick=True)
            for name, why in fit.degenerate.items():
                candidate.degenerate.setdefault(name, why)
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
