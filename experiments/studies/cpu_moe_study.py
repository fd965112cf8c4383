"""A CPU Mixture-of-Experts mini-study: does an MoE law fitted on small runs predict larger ones, experts and all?

Run:  python experiments/studies/cpu_moe_study.py            (about 45 minutes on 2 idle cores; resumes)
      python experiments/studies/cpu_moe_study.py --analyse  (only the analysis, from the committed runs.csv)

1. Shapes: two active sizes (N_active about 0.19M and 0.7M non-embedding, 4 layers, d_head 8, byte-level
   vocabulary), each trained dense (E = 1) and as Switch-style MoE with E = 2, 4 and 8 top-1 experts as wide as
   the dense MLP: the design Ludziejewski et al. (2025) fitted their joint law on (granularity 1, top-1), so a
   run's expansion E/k is their E and its active count is the dense model's plus the router. Three token
   budgets per size, so tokens and size are not collinear: 24 runs, one seed each.
2. Training: `archscale sweep`'s library call, two local jobs of one thread at a time, on the embedded corpus;
   one row per run lands in runs.csv (with E, k, the expert width and N_active). Re-running resumes.
3. Analysis (experiments/results/cpu_moe_study/): the MoE gain over dense at each size and budget; every law
   (E-blind chinchilla on active or total parameters, and the MoE laws) fitted on all runs but the large size's
   MoE runs and scored on those; and what `archscale fit` chooses with those runs held out and no other option.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from archscale.fit.fitted import law_inputs
from archscale.fit.fitting import evaluate, fit_law
from archscale.fit.runs import load_runs
from archscale.io.figures import plt, save
from archscale.laws import get_law
from archscale.shapes.architecture import Architecture
from archscale.train.config import TrainConfig, write_config_dir

from training_study import study_main

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "experiments" / "results" / "cpu_moe_study"
LAYERS, D_HEAD, VOCAB = 4, 8, 256
EXPERTS = (1, 2, 4, 8)  # 1: the dense model
SIZES = {  # size -> (d_model, heads, d_ff, training-token budgets)
    "S": (64, 8, 160, (300_000, 600_000, 1_200_000)),
    "M": (128, 16, 288, (500_000, 1_000_000, 2_000_000)),
}
SMALL_LIMIT = 4e5  # N_active below this: the small size


def architecture(size: str, experts: int) -> Architecture:
    d_model, heads, d_ff, _ = SIZES[size]
    name = f"{size}-E{experts}"
    if experts == 1:
        return Architecture(LAYERS, d_model, heads, heads, D_HEAD, d_ff, VOCAB, True, name)
    return Architecture(LAYERS, d_model, heads, heads, D_HEAD, d_ff, VOCAB, True, name, n_experts=experts,
                        experts_per_token=1, expert_d_ff=d_ff)


def write_configs(configs: Path, tokens_scale: float) -> int:
    """One config folder per (size, E, token budget); returns how many."""
    count = 0
    for size, (_, _, _, budgets) in SIZES.items():
        for tokens in budgets:
            for experts in EXPERTS:
                arch = architecture(size, experts)
                train = TrainConfig.for_model_size(arch.n_params_active_non_embedding, tokens=int(tokens * tokens_scale))
                write_config_dir(configs / f"{arch.name}-D{tokens // 1000}k", arch, train)
                count += 1
    return count


def with_labels(frame: pd.DataFrame) -> pd.DataFrame:
    experts = frame["n_experts"].fillna(1).clip(lower=1).astype(int) if "n_experts" in frame else 1
    return frame.assign(size=np.where(frame["N_active"] < SMALL_LIMIT, "S", "M"), E=experts)


def moe_gains(frame: pd.DataFrame) -> pd.DataFrame:
    """Each MoE run against the dense run of its size and budget: the relative loss change."""
    rows = []
    for (size, tokens), group in frame.groupby(["size", "D"]):
        dense = group.loc[group["E"] == 1, "loss"]
        for row in group[group["E"] > 1].itertuples():
            rows.append({"size": size, "D": int(tokens), "E": row.E, "N_total": int(row.N), "N_active": int(row.N_active),
                         "loss": row.loss, "dense_loss": float(dense.iloc[0]),
                         "change": row.loss / float(dense.iloc[0]) - 1})
    return pd.DataFrame(rows)


def law_transfer(frame: pd.DataFrame) -> tuple[list[str], dict[str, np.ndarray], np.ndarray]:
    """Every law fitted on all runs but the large size's MoE runs, and scored on those: error and the E order.

    The dense runs of both sizes pin how loss falls with size; the small size's MoE runs show the laws what experts
    do; the large size's MoE runs are predicted. (Fitted on the small size alone, no law could see size at all:
    every run of that size has one N_active.) Returns the lines, each law's predictions and the held-out mask.
    """
    test = ((frame["size"] == "M") & (frame["E"] > 1)).to_numpy()
    loss = frame["loss"].to_numpy(float)
    lines, predictions = [], {}
    for name, n_column in (("chinchilla", "N_active"), ("chinchilla", "N"), ("moe-joint-fixed-exponents", None),
                           ("moe-joint", None)):
        law = get_law(name)
        table = frame.assign(N=frame[n_column]) if n_column else frame
        inputs = law_inputs(law, table, None, "cpu_moe_study runs")
        label = name + (f" on {n_column}" if n_column else "")
        try:
            fit = fit_law(law, {k: v[~test] for k, v in inputs.items()}, loss[~test], "lsq", source=name)
        except Exception as error:  # a form these runs cannot pin down: said, not hidden
            lines.append(f"{label}: not fitted ({error})")
            continue
        predicted = law.predict(fit.params, {k: v[test] for k, v in inputs.items()})
        predictions[label] = predicted
        metrics = evaluate(loss[test], predicted)
        large = frame[test].assign(predicted=predicted)
        order = [spearmanr(g["loss"], g["predicted"]).statistic for _, g in large.groupby("D")]
        degenerate = getattr(fit, "degenerate", None)
        lines.append(f"{label} fitted on the {int((~test).sum())} other runs: on the {int(test.sum())} large MoE runs "
                     f"mean |error| {100 * metrics['mean_rel_error']:.2f}% (max {100 * metrics['max_rel_error']:.2f}%), "
                     f"Spearman {metrics['spearman']:.2f}; E order within each large budget, Spearman "
                     + ", ".join(f"{v:.2f}" for v in order)
                     + "; params " + ", ".join(f"{k} {v:.4g}" for k, v in fit.params.items())
                     + (f"; degenerate: {', '.join(degenerate)}" if degenerate else ""))
    return lines, predictions, test


HOLDOUT = "N_active >= 4e5 and n_experts > 1"
"""The large size's MoE runs, as ``archscale fit --holdout`` takes them."""


def default_fit(runs: Path, results: Path) -> list[str]:
    """What `archscale fit` says with the large size's MoE runs held out and nothing else given."""
    out = results / "fit_auto.json"
    out.unlink(missing_ok=True)  # archscale never overwrites; this study's own output is rewritten on each analysis
    shown = [str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p) for p in (runs, out)]
    command = [sys.executable, "-m", "archscale", "fit", shown[0], "--holdout", HOLDOUT, "--out", shown[1]]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "COLUMNS": "160"})
    text = (done.stdout + done.stderr).strip()
    (results / "fit_auto.txt").write_text(f'$ archscale fit {shown[0]} --holdout "{HOLDOUT}" --out {shown[1]}\n{text}\n')
    return [f"archscale fit, large MoE runs held out, no other option (exit {done.returncode}): see fit_auto.txt"]


STYLES = {"chinchilla on N_active": ":", "chinchilla on N": (0, (1, 3)), "moe-joint-fixed-exponents": "--",
          "moe-joint": "-."}


def figure(frame: pd.DataFrame, predictions: dict[str, np.ndarray], test: np.ndarray, path: Path) -> None:
    """Loss against E per (size, budget), measured, and for the large size's MoE runs as each law predicted them."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.6), squeeze=False, gridspec_kw={"width_ratios": [1, 1, 0.42]})
    held = frame[test]
    for ax, size in zip(axes[0], ("S", "M")):
        rows = frame[frame["size"] == size]
        for i, (tokens, group) in enumerate(rows.groupby("D")):
            group = group.sort_values("E")
            color = f"C{i}"
            ax.plot(group["E"], group["loss"], "o-", color=color, label=f"measured, D = {tokens / 1e6:.1f}M")
            if size != "M":
                continue
            at = (held["D"] == tokens).to_numpy()
            order = np.argsort(held["E"].to_numpy()[at])
            for label, values in predictions.items():
                ax.plot(held["E"].to_numpy()[at][order], values[at][order], linestyle=STYLES.get(label, "-"),
                        color=color, alpha=0.7)
        if size == "M":  # the laws' legend in grey: colour is the token budget, the line style the law
            for label in predictions:
                ax.plot([], [], linestyle=STYLES.get(label, "-"), color="0.35", label=f"predicted by {label}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(EXPERTS), [str(e) for e in EXPERTS])
        ax.set_xlabel("experts E (top-1; 1 = dense)")
        ax.set_ylabel("validation loss (nats/byte)")
        active = f"{rows['N_active'].median() / 1e6:.2f}M"
        role = "fitted" if size == "S" else "dense fitted, MoE (E > 1) predicted; lines: laws"
        ax.set_title(f"N_active ~{active}: {role}", fontsize=9)
        ax.grid(alpha=0.3)
        if size == "S":
            ax.legend(fontsize=7, loc="center right")
    key = axes[0][2]  # the large panel's legend beside it, where it hides no point
    key.axis("off")
    key.legend(*axes[0][1].get_legend_handles_labels(), fontsize=8, loc="center left", frameon=False)
    fig.suptitle("CPU MoE study: laws fitted on every run but the large size's MoE runs, scored on those", fontsize=10)
    save(fig, path)


def analyse(runs: Path, results: Path) -> None:
    frame = with_labels(load_runs(runs))
    gains = moe_gains(frame)
    lines = [f"runs: {len(frame)} ({(frame['size'] == 'S').sum()} small, {(frame['size'] == 'M').sum()} large); "
             f"training took {float((frame['D'] / frame['tokens_per_s']).sum() / 60):.1f} min at the tokens/s each logged"]
    for row in gains.itertuples():
        lines.append(f"{row.size} D {row.D / 1e6:.1f}M E {row.E}: loss {row.loss:.4f} vs dense {row.dense_loss:.4f} "
                     f"({100 * row.change:+.2f}%), N_total {row.N_total:,}, N_active {row.N_active:,}")
    law_lines, predictions, test = law_transfer(frame)
    lines += law_lines
    lines += default_fit(runs, results)
    gains.to_csv(results / "gains.csv", index=False)
    figure(frame, predictions, test, results / "moe.png")
    summary = "\n".join(lines)
    print(summary)
    (results / "summary.txt").write_text(summary + "\n")


def main() -> None:
    study_main(__doc__.splitlines()[0], RESULTS, Path("/tmp/archscale_cpu_moe_study"), write_configs, analyse)


if __name__ == "__main__":
    main()
