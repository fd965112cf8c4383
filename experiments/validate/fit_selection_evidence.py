"""Does choosing the form by extrapolation pick forms that extrapolate? Nested evaluation on shipped data.

Run:  python experiments/validate/fit_selection_evidence.py          (a few minutes on 2 cores)

For each shipped table (the 245 Chinchilla Figure 4 points, the replication's 240 of them, the 76 aspect-ratio
runs, the 123 Chinchilla isoFLOP points) and each way of splitting (by size N, by budget C = 6ND):

1. the runs of the largest sizes (budgets) holding 20% of the runs are set aside as a final test;
2. each rule chooses a form using only the other 80%: `archscale fit`'s default (selection averaged over 2
   forward folds), selection on 1 or 3 folds, or a fixed form (least-squares Chinchilla, the old default;
   Huber Chinchilla; Huber tied Chinchilla);
3. the chosen form is fitted on the 80% and scored on the final test (mean relative error).

The final test never influences any choice. "best in hindsight" is the form that did best on the final test.
Printed: the error of each rule per case, and the geometric mean of its ratio to the best in hindsight.
Writes experiments/results/fit_selection_evidence.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from archscale.io.errors import UserError
from archscale.fit.fitting import fit_law
from archscale.laws import get_law
from archscale.fit.runs import load_runs
from archscale.fit.selection import candidate_forms, extrapolation_split, select_form
from archscale.fit.fitted import law_inputs

ROOT = Path(__file__).resolve().parents[2]
FIXED = {"chinchilla lsq (old default)": ("chinchilla", "lsq"), "chinchilla huber": ("chinchilla", "huber"),
         "chinchilla-tied huber": ("chinchilla-tied", "huber")}
SELECTION_RULES = {"selection, 2 folds (default)": (2, "mean"), "selection, 1 fold": (1, "mean"),
                   "selection, 3 folds": (3, "mean"), "selection, 2 folds, median": (2, "median")}


def tables() -> dict[str, pd.DataFrame]:
    chinchilla = load_runs(ROOT / "data" / "chinchilla_epoch.csv")
    return {
        "chinchilla_epoch (245)": chinchilla,
        "chinchilla_epoch, loss < 3.42 (240)": chinchilla[chinchilla["loss"] < 3.42],
        "aspect_ratio_morph (76)": load_runs(ROOT / "data" / "aspect_ratio_morph.csv"),
        "chinchilla_isoflops_epoch (123)": load_runs(ROOT / "data" / "chinchilla_isoflops_epoch.csv"),
    }


def final_error(form: tuple[str, str], train: pd.DataFrame, test: pd.DataFrame) -> float:
    law = get_law(form[0])
    try:
        fit = fit_law(law, law_inputs(law, train, None, "train"), train["loss"].to_numpy(float), form[1])
    except UserError:
        return float("nan")
    predicted = law.predict(fit.params, law_inputs(law, test, None, "test"))
    return float(np.mean(np.abs(predicted / test["loss"].to_numpy(float) - 1)))


def main() -> None:
    rows = []
    for name, frame in tables().items():
        frame = frame.reset_index(drop=True)
        for split in ("size", "budget"):
            final = extrapolation_split(frame, split)
            train, test = frame[~final].reset_index(drop=True), frame[final].reset_index(drop=True)
            forms = candidate_forms(train, "auto", "auto", False)
            errors = {form: final_error(form, train, test) for form in forms}
            row = {"runs": name, "split": split, "n_train": len(train), "n_test": len(test)}
            for label, (folds, fold_score) in SELECTION_RULES.items():
                chosen = select_form(train, forms, split, n_folds=folds, fold_score=fold_score)
                row[label] = errors[(chosen.law, chosen.objective)]
                row[f"{label}: form"] = f"{chosen.law} {chosen.objective}"
            for label, form in FIXED.items():
                row[label] = errors[form]
            best = min(errors, key=lambda f: errors[f] if np.isfinite(errors[f]) else np.inf)
            row["best in hindsight"], row["best form"] = errors[best], f"{best[0]} {best[1]}"
            rows.append(row)
            print(f"{name} / {split}: best {row['best form']} {100 * errors[best]:.2f}%, "
                  f"default chose {row['selection, 2 folds (default)' + ': form']}", flush=True)
    result = pd.DataFrame(rows)
    rules = [*SELECTION_RULES, *FIXED, "best in hindsight"]
    print("\nmean relative error on the final test (the largest 20% of runs, never seen by any choice)")
    table = result[["runs", "split", *rules]].copy()
    for rule in rules:
        table[rule] = (100 * table[rule]).map(lambda v: f"{v:.2f}%")
    print(table.to_string(index=False))
    ratios = {rule: float(np.exp(np.mean(np.log(result[rule] / result["best in hindsight"])))) for rule in rules}
    wins = {rule: int(np.sum(np.isclose(result[rule], result["best in hindsight"]))) for rule in rules}
    print("\ngeometric mean of (rule's error / best in hindsight), and cases where the rule matched the best:")
    for rule in rules:
        print(f"  {rule:32s} {ratios[rule]:.3f}   {wins[rule]}/{len(result)}")
    out = ROOT / "experiments" / "results" / "fit_selection_evidence.json"
    out.write_text(json.dumps({"cases": rows, "ratio_to_best": ratios, "matched_best": wins}, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
