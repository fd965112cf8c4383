"""The dissertation's Figure 5.8: the aspect-ratio law against Chinchilla on the same runs.

Run:  python experiments/reproduce/aspect_fig58.py

Fits both laws on every run below 1B at 20N and 160N tokens (Table 5.3's selection), evaluates on the
four held-out 1B runs, prints one table, and draws one figure (experiments/results/aspect_fig58.png).
Then refits the aspect law on all runs below 1B (40N included) and checks it still ranks the 1B runs.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from archscale.fit.plots import predicted_vs_actual

from archscale.io.figures import save
from archscale.fit.runs import load_runs
from archscale.fit.study import run_study

ROOT = Path(__file__).resolve().parents[2]
SELECTION = "tokens_budget in ['20N', '160N']"


def main() -> None:
    runs = load_runs(ROOT / "data" / "aspect_ratio_morph.csv")
    studies = {law: run_study(runs, law, "lsq", where=SELECTION, holdout="N >= 1e9") for law in ("chinchilla", "aspect", "aspect-tied")}
    print(f"fit on {studies['aspect'].fit.n_points} runs below 1B (20N and 160N); held out: the four 1B runs\n")
    print(f"{'law':12s} {'fit MSE':>9s} {'fit R2':>7s} {'1B MSE':>9s} {'1B max rel err':>15s} {'1B rel errs':>28s} {'1B Spearman':>12s}")
    for law, study in studies.items():
        fit, hold = study.metrics["fit"], study.metrics["holdout"]
        held = study.holdout_mask
        rel = abs(study.predicted[held] - study.frame["loss"][held]) / study.frame["loss"][held]
        print(f"{law:12s} {fit['mse']:9.5f} {fit['r2']:7.4f} {hold['mse']:9.5f} {100 * hold['max_rel_error']:14.2f}% "
              f"{' '.join(f'{100 * e:.2f}%' for e in rel):>28s} {hold['spearman']:12.2f}")

    everything = run_study(runs, "aspect", "lsq", holdout="N >= 1e9")
    spearman = everything.metrics["holdout"]["spearman"]
    print(f"\naspect law fitted on all {everything.fit.n_points} runs below 1B (40N included): "
          f"1B Spearman {spearman:.2f}, max rel err {100 * everything.metrics['holdout']['max_rel_error']:.2f}%")

    checks = {
        "aspect: 1B max rel err <= 1.2%": studies["aspect"].metrics["holdout"]["max_rel_error"] <= 0.012,
        "aspect: 1B Spearman = 1.0": abs(studies["aspect"].metrics["holdout"]["spearman"] - 1) < 1e-9,
        "chinchilla: 1B ranked wrongly (Spearman < 0)": studies["chinchilla"].metrics["holdout"]["spearman"] < 0,
        "aspect on all runs below 1B: 1B Spearman = 1.0": abs(spearman - 1) < 1e-9,
    }
    for label, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {label}")

    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, law, name in zip(axes, ("chinchilla", "aspect"), ("Chinchilla, Eq. 5.2", "aspect-ratio law, Eq. 5.4 (free exponent on R)")):
        study = studies[law]
        predicted_vs_actual(ax, study.frame["loss"], study.predicted, study.fit_mask, study.metrics,
                            f"{name}\nfit: runs < 1B at 20N and 160N; crosses: the four 1B runs")
    path = save(fig, ROOT / "experiments" / "results" / "aspect_fig58.png")
    print(f"wrote {path.relative_to(ROOT)}")
    if not all(checks.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
