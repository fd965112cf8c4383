"""Does `archscale fit`'s default pick forms that extrapolate? Nested evaluation on shipped data.

Run:  python experiments/validate/fit_selection_evidence.py          (about 5 minutes on 2 cores)

Cases: each shipped table (the 245 Chinchilla Figure 4 points, the replication's 240 of them, the 76 aspect-ratio
runs, the 123 Chinchilla isoFLOP points, and data/synthetic_isoflops_wings.csv: 91 runs of a known law with
isoFLOP wings) split two ways (by size N, by budget C = 6ND): the largest sizes (budgets) holding 20% of the runs
are the final test. Plus the splits people quote: the aspect runs with the 1B runs held out (the dissertation's
test) and each isoFLOP table with its top budget held out.

For each case:
1. every rule chooses (or is) a form using only the other runs: `archscale fit`'s default, run exactly as the CLI
   runs it (`run_study` with no options: split, candidate forms and floor on tokens per parameter all chosen
   by extrapolation); the previous default (forms Chinchilla tied and free, least squares and Huber, aspect
   laws where runs have shapes, split by size, no floor); and fixed forms;
2. the form is fitted on those runs and scored on the final test (mean relative error; the max is kept too).

Tables with runs below 5 tokens per parameter (isoFLOP wings) are scored on the final-test runs at or above 5,
for every rule: the part of the frontier a law of N and D describes (a wing run's loss depends on how far
under-trained it is, which no such law models). "best in hindsight" is the lowest final error over every form
at every candidate floor; the final test never influences any rule's choice.

Printed: each rule's error per case; the geometric mean of its ratio to the best in hindsight; Farseer's wins and
losses against the default. Then the comparison as the previous version of this script made it, on its 8 cases
(the 4 real tables x 2 splits), every final-test run scored, best in hindsight over the previous default's own
candidate forms: where that version measured 1.13 for the previous default. Writes
experiments/results/fit_selection_evidence.json.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from archscale.fit.fitted import law_inputs
from archscale.fit.fitting import fit_law
from archscale.fit.runs import load_runs
from archscale.fit.selection import WING_FLOORS, budgets, extrapolation_split, select_form, wing_floors
from archscale.fit.study import run_study
from archscale.io.errors import UserError
from archscale.laws import get_law

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = "archscale fit default"
PREVIOUS = "previous default"
FIXED = {"chinchilla lsq": ("chinchilla", "lsq"), "chinchilla huber": ("chinchilla", "huber"),
         "chinchilla-tied huber": ("chinchilla-tied", "huber"), "kaplan huber": ("kaplan", "huber"),
         "farseer log-lsq": ("farseer", "log-lsq"), "aspect lsq (the paper's law)": ("aspect", "lsq")}
FORMS = [("chinchilla", "lsq"), ("chinchilla", "huber"), ("chinchilla-tied", "lsq"), ("chinchilla-tied", "huber"),
         ("kaplan", "lsq"), ("kaplan", "huber"), ("farseer", "log-lsq"),
         ("aspect", "lsq"), ("aspect", "huber"), ("aspect-tied", "lsq"), ("aspect-tied", "huber")]
SCORED_FLOOR = max(WING_FLOORS)


def tables() -> dict[str, pd.DataFrame]:
    data = ROOT / "data"
    chinchilla = load_runs(data / "chinchilla_epoch.csv")
    return {
        "chinchilla_epoch (245)": chinchilla,
        "chinchilla_epoch, loss < 3.42 (240)": chinchilla[chinchilla["loss"] < 3.42],
        "aspect_ratio_morph (76)": load_runs(data / "aspect_ratio_morph.csv"),
        "chinchilla_isoflops_epoch (123)": load_runs(data / "chinchilla_isoflops_epoch.csv"),
        "synthetic_isoflops_wings (91)": load_runs(data / "synthetic_isoflops_wings.csv"),
    }


def cases() -> list[tuple[str, str, pd.DataFrame, np.ndarray]]:
    """(table, split name, runs, final-test mask) for every case."""
    out = []
    for name, frame in tables().items():
        frame = frame.reset_index(drop=True)
        for split in ("size", "budget"):
            out.append((name, split, frame, extrapolation_split(frame, split)))
        if name.startswith("aspect"):
            out.append((name, "1B held out", frame, frame["N"].to_numpy() >= 1e9))
        if "isoflops" in name:
            top = budgets(frame)
            out.append((name, "top budget", frame, top >= top.max() / 1.5))
    return out


def scored_rows(frame: pd.DataFrame, final: np.ndarray) -> np.ndarray:
    """The final-test runs every rule is scored on: all of them, or those at or above 5 D/N when the table has wings."""
    ratio = (frame["D"] / frame["N"]).to_numpy(float)
    return final & (ratio >= SCORED_FLOOR) if np.any(ratio < SCORED_FLOOR) else final


def errors_of(law_name: str, params: dict, test: pd.DataFrame) -> tuple[float, float]:
    law = get_law(law_name)
    predicted = law.predict(params, law_inputs(law, test, None, "test"))
    relative = np.abs(predicted / test["loss"].to_numpy(float) - 1)
    return float(np.mean(relative)), float(np.max(relative))


def form_error(form: tuple[str, str], train: pd.DataFrame, test: pd.DataFrame, floor: float | None) -> tuple[float, float]:
    """(mean, max) final error of one form fitted on ``train`` (runs below ``floor`` D/N left out)."""
    if floor is not None:
        train = train[train["D"] / train["N"] >= floor]
    law = get_law(form[0])
    if any(column not in train.columns for column in law.columns):
        return float("nan"), float("nan")
    try:
        fit = fit_law(law, law_inputs(law, train, None, "train"), train["loss"].to_numpy(float), form[1])
    except UserError:
        return float("nan"), float("nan")
    return errors_of(form[0], fit.params, test)


def default_rule(frame: pd.DataFrame, final: np.ndarray, test: pd.DataFrame):
    """`archscale fit` with no options, the final test held out; its error on the scored final runs."""
    marked = frame.assign(final_test=final)
    study = run_study(marked, holdout="final_test", source="evidence")
    chosen = study.form_selection
    floor = f", D/N >= {chosen.floor:g}" if chosen.floor is not None else ""
    law = (study.fit.law.name, study.fit.params)
    return (errors_of(*law, test), f"{chosen.law} {chosen.objective}{floor} ({chosen.split})"), law


def previous_rule(train: pd.DataFrame, test: pd.DataFrame, split: str) -> tuple[tuple[float, float], str]:
    """The default before wings, Farseer and Kaplan, as the previous version of this script ran it: Chinchilla and
    aspect forms, least squares and Huber, no floor, the lowest score wins (degenerate or not), split as the case
    splits (by size for the quoted splits)."""
    selection = select_form(train.reset_index(drop=True), previous_forms(train), split if split in ("size", "budget") else "size")
    best = min((c for c in selection.candidates if c.score is not None), key=lambda c: (round(c.score, 9), c.free_params))
    return form_error((best.law, best.objective), train, test, None), f"{best.law} {best.objective}"


def previous_forms(frame: pd.DataFrame) -> list[tuple[str, str]]:
    laws = ["chinchilla", "chinchilla-tied"] + (["aspect", "aspect-tied"] if "R" in frame.columns else [])
    return [(law, objective) for law in laws for objective in ("lsq", "huber")]


def as_before(row: dict, frame: pd.DataFrame, final: np.ndarray, train: pd.DataFrame, default_law: tuple[str, dict],
              previous_form: tuple[str, str]) -> None:
    """The previous script's measure: every final-test run scored, best over the previous default's candidates."""
    test = frame[final].reset_index(drop=True)
    row["as before: default"] = errors_of(default_law[0], default_law[1], test)[0]
    row["as before: previous default"] = form_error(previous_form, train, test, None)[0]
    pool = [form_error(form, train, test, None)[0] for form in previous_forms(train)]
    row["as before: best in hindsight"] = float(np.nanmin(pool))


def evaluate_case(name: str, split: str, frame: pd.DataFrame, final: np.ndarray) -> dict:
    train = frame[~final].reset_index(drop=True)
    test = frame[scored_rows(frame, final)].reset_index(drop=True)
    row: dict = {"runs": name, "split": split, "n_train": len(train), "n_test": len(test)}
    (default_errors, default_form), default_law = default_rule(frame, final, test)
    previous_errors, previous_form = previous_rule(train, test, split)
    for label, errors, form in ((DEFAULT, default_errors, default_form), (PREVIOUS, previous_errors, previous_form)):
        row[label], row[f"{label}: max"], row[f"{label}: form"] = errors[0], errors[1], form
    if split in ("size", "budget") and "synthetic" not in name:
        as_before(row, frame, final, train, default_law, tuple(previous_form.split()))
    for label, form in FIXED.items():
        row[label], row[f"{label}: max"] = form_error(form, train, test, None)
    hindsight = {(form, floor): form_error(form, train, test, floor) for form in FORMS for floor in wing_floors(train)}
    finite = {key: value for key, value in hindsight.items() if np.isfinite(value[0])}
    (best_form, best_floor), (mean, worst) = min(finite.items(), key=lambda item: item[1][0])
    row["best in hindsight"], row["best in hindsight: max"] = mean, worst
    row["best form"] = f"{best_form[0]} {best_form[1]}" + (f", D/N >= {best_floor:g}" if best_floor else "")
    return row


def main() -> None:
    warnings.simplefilter("ignore")
    rows = []
    for name, split, frame, final in cases():
        row = evaluate_case(name, split, frame, final)
        rows.append(row)
        print(f"{name} / {split}: default {row[DEFAULT + ': form']} {100 * row[DEFAULT]:.2f}% "
              f"(max {100 * row[DEFAULT + ': max']:.2f}%); best {row['best form']} {100 * row['best in hindsight']:.2f}%",
              flush=True)
    result = pd.DataFrame(rows)
    rules = [DEFAULT, PREVIOUS, *FIXED, "best in hindsight"]
    print("\nmean relative error on the final test (max in brackets); never seen by any choice")
    table = result[["runs", "split"]].copy()
    for rule in rules:
        table[rule] = [f"{100 * m:.2f}% ({100 * x:.2f}%)" if np.isfinite(m) else "-"
                       for m, x in zip(result[rule], result[f"{rule}: max"])]
    print(table.to_string(index=False))
    print("\nforms chosen by the default:")
    for row in rows:
        print(f"  {row['runs']} / {row['split']}: {row[DEFAULT + ': form']} (previous default: {row[PREVIOUS + ': form']}; "
              f"best: {row['best form']})")
    ratios, wins = {}, {}
    for rule in rules:
        usable = result[np.isfinite(result[rule])]
        ratios[rule] = float(np.exp(np.mean(np.log(usable[rule] / usable["best in hindsight"]))))
        wins[rule] = f"{int(np.sum(np.isclose(usable[rule], usable['best in hindsight'])))}/{len(usable)}"
    print("\ngeometric mean of (rule's error / best in hindsight), and cases where the rule matched the best:")
    for rule in rules:
        print(f"  {rule:32s} {ratios[rule]:.3f}   {wins[rule]}")
    farseer = result[np.isfinite(result["farseer log-lsq"])]
    beat = int(np.sum(farseer["farseer log-lsq"] < farseer[DEFAULT] - 1e-12))
    print(f"\nFarseer (least squares on log-loss, fixed) against the default: lower final error in {beat} of {len(farseer)} "
          f"cases; the default chose Farseer in {int(sum('farseer' in r[DEFAULT + ': form'] for r in rows))}")
    before = result.dropna(subset=["as before: default"])
    before_ratios = {rule: float(np.exp(np.mean(np.log(before[f"as before: {rule}"] / before["as before: best in hindsight"]))))
                     for rule in ("default", "previous default")}
    print(f"\nas the previous version measured it ({len(before)} cases, every final-test run, best over the previous "
          f"default's forms): default {before_ratios['default']:.3f}, previous default {before_ratios['previous default']:.3f}")
    out = ROOT / "experiments" / "results" / "fit_selection_evidence.json"
    out.write_text(json.dumps({"cases": rows, "ratio_to_best": ratios, "matched_best": wins,
                               "farseer_beats_default": f"{beat}/{len(farseer)}", "as_before": before_ratios},
                              indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
