"""A CPU GQA study: does grouping KV heads change the loss of tiny models, beyond seed-to-seed noise?

Run:  python experiments/studies/cpu_gqa_study.py            (about 35 minutes on 2 idle cores; resumes)
      python experiments/studies/cpu_gqa_study.py --analyse  (only the analysis, from the committed runs.csv)

1. Shapes: two sizes (N_non_embed about 0.2M and 0.6M, 4 layers, d_head 8, byte-level vocabulary), two shapes
   (d_model, d_ff) per size, and at each shape four GQA variants that keep n_heads + n_kv_heads = 18, so N and r
   stay fixed and only the grouping changes, as the search's GQA variants do: 9/9 (GQA 1), 12/6 (2), 15/3 (5),
   16/2 (8). Three seeds per variant (initialisation and data order): 48 runs.
2. Training: `archscale sweep`'s library call, two local jobs of one thread at a time, on the embedded corpus;
   one row per run lands in runs.csv. Re-running resumes and skips finished runs.
3. Analysis (experiments/results/cpu_gqa_study/): the noise floor (seed-to-seed spread of each variant), the GQA
   effect per shape against it, and the GQA-aware law fitted on the small size and scored on the large one.
"""

from __future__ import annotations

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
RESULTS = ROOT / "experiments" / "results" / "cpu_gqa_study"
LAYERS, D_HEAD, VOCAB = 4, 8, 256
HEAD_PAIRS = ((9, 9), (12, 6), (15, 3), (16, 2))  # (query heads, KV heads): GQA 1, 2, 5, 8 at 18 heads in all
SEEDS = (0, 1, 2)
SIZES = {  # size -> (training tokens, shapes as (d_model, d_ff))
    "S": (800_000, ((64, 160), (96, 80))),
    "M": (1_200_000, ((128, 288), (192, 160))),
}


def write_configs(configs: Path, tokens_scale: float) -> int:
    """One config folder per (size, shape, GQA, seed); returns how many."""
    count = 0
    for size, (tokens, shapes) in SIZES.items():
        for d_model, d_ff in shapes:
            for n_heads, n_kv in HEAD_PAIRS:
                for seed in SEEDS:
                    name = f"{size}-d{d_model}-f{d_ff}-g{n_heads // n_kv}-s{seed}"
                    arch = Architecture(LAYERS, d_model, n_heads, n_kv, D_HEAD, d_ff, VOCAB, True, name)
                    train = TrainConfig.for_model_size(arch.n_params_non_embedding, tokens=int(tokens * tokens_scale))
                    train.seed = seed
                    write_config_dir(configs / name, arch, train)
                    count += 1
    return count


def variants(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (size, shape, GQA): the seeds' mean loss, their spread, and how many there are."""
    frame = frame.assign(size=np.where(frame["N"] < 4e5, "S", "M"), gqa=(frame["n_heads"] / frame["n_kv_heads"]).astype(int))
    grouped = frame.groupby(["size", "d_model", "d_ff", "gqa"])["loss"]
    table = grouped.agg(mean="mean", std="std", n="count", low="min", high="max").reset_index()
    table["rel_std"] = table["std"] / table["mean"]
    table["rel_range"] = (table["high"] - table["low"]) / table["mean"]
    return table


def gqa_effects(table: pd.DataFrame) -> pd.DataFrame:
    """Each variant against the GQA-1 variant of its shape: relative difference, its standard error, and a verdict."""
    rows = []
    for (size, d_model, d_ff), shape in table.groupby(["size", "d_model", "d_ff"]):
        base = shape[shape["gqa"] == 1].iloc[0]
        for row in shape[shape["gqa"] != 1].itertuples():
            diff = row.mean / base["mean"] - 1
            error = np.sqrt((row.std / np.sqrt(row.n)) ** 2 + (base["std"] / np.sqrt(base["n"])) ** 2) / base["mean"]
            rows.append({"size": size, "d_model": d_model, "d_ff": d_ff, "gqa": row.gqa, "effect": diff,
                         "std_error": error, "verdict": "effect" if abs(diff) > 2 * error else "no effect (within noise)"})
    return pd.DataFrame(rows)


def law_transfer(frame: pd.DataFrame) -> tuple[list[str], dict[str, np.ndarray]]:
    """Fit the conditional laws with and without the GQA factor on the small size; predict every large-size run."""
    small = (frame["N"] < 4e5).to_numpy()
    lines, predictions = [], {}
    for name in ("conditional-mult", "conditional-mult-gqa", "conditional-mult-gqa-sat"):
        law = get_law(name)
        inputs = law_inputs(law, frame, None, "cpu_gqa_study runs")
        loss = frame["loss"].to_numpy(float)
        fit = fit_law(law, {k: v[small] for k, v in inputs.items()}, loss[small], "lsq", source=name)
        predicted = law.predict(fit.params, {k: v[~small] for k, v in inputs.items()})
        predictions[name] = predicted
        metrics = evaluate(loss[~small], predicted)
        large = frame[~small].assign(predicted=predicted, gqa=(frame["n_heads"] / frame["n_kv_heads"]).astype(int))
        means = large.groupby(["d_model", "d_ff", "gqa"])[["loss", "predicted"]].mean().reset_index()
        within = []  # the GQA order inside each large shape: what the GQA factor alone has to get right
        for _, shape in means.groupby(["d_model", "d_ff"]):
            if shape["predicted"].nunique() > 1:
                within.append(spearmanr(shape["loss"], shape["predicted"]).statistic)
        seeds = evaluate(means["loss"].to_numpy(float), means["predicted"].to_numpy(float))
        c = f", c = {fit.params['c']:.4f}" if "c" in fit.params else ""
        lines.append(f"{name} fitted on the {int(small.sum())} small runs{c}: on the {int((~small).sum())} large runs "
                     f"mean |error| {100 * metrics['mean_rel_error']:.2f}% (max {100 * metrics['max_rel_error']:.2f}%), "
                     f"Spearman {metrics['spearman']:.2f} over all runs; against the {len(means)} variants' seed means "
                     f"mean |error| {100 * seeds['mean_rel_error']:.2f}%, Spearman {seeds['spearman']:.2f}; "
                     "within-shape GQA order (seed means) Spearman "
                     + (", ".join(f"{v:.2f}" for v in within) if within else "n/a (no GQA term: one loss per shape)")
                     + (f"; degenerate: {fit.degenerate}" if getattr(fit, "degenerate", None) else ""))
    return lines, predictions


def figure(frame: pd.DataFrame, table: pd.DataFrame, path: Path) -> None:
    """Loss against GQA per shape: each seed, the seeds' mean with its standard error."""
    shapes = table[["size", "d_model", "d_ff"]].drop_duplicates().sort_values(["size", "d_model"], ascending=[False, True])
    fig, axes = plt.subplots(1, len(shapes), figsize=(4 * len(shapes), 4.2), squeeze=False)
    frame = frame.assign(gqa=(frame["n_heads"] / frame["n_kv_heads"]).astype(int))
    for ax, shape in zip(axes[0], shapes.itertuples()):
        runs = frame[(frame["d_model"] == shape.d_model) & (frame["d_ff"] == shape.d_ff)]
        rows = table[(table["d_model"] == shape.d_model) & (table["d_ff"] == shape.d_ff)]
        ax.scatter(runs["gqa"], runs["loss"], s=14, color="0.6", label="one seed")
        ax.errorbar(rows["gqa"], rows["mean"], yerr=rows["std"] / np.sqrt(rows["n"]), color="tab:blue", marker="o",
                    capsize=3, label="mean of seeds ± s.e.")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(rows["gqa"]), [str(g) for g in sorted(rows["gqa"])])
        n_label = "0.2M" if shape.size == "S" else "0.6M"
        ax.set_title(f"N~{n_label}: d_model {shape.d_model}, d_ff {shape.d_ff}", fontsize=9)
        ax.set_xlabel("GQA group (query heads per KV head)")
        ax.set_ylabel("validation loss (nats/byte)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("CPU GQA study: 4 layers, d_head 8, n_heads + n_kv_heads = 18 (same N and r across a shape's "
                 "GQA variants), 3 seeds each", fontsize=10)
    save(fig, path)


def analyse(runs: Path, results: Path) -> None:
    frame = load_runs(runs)
    table = variants(frame)
    effects = gqa_effects(table)
    lines = [f"runs: {len(frame)} ({(frame['N'] < 4e5).sum()} small, {(frame['N'] >= 4e5).sum()} large); "
             f"training took {float((frame['D'] / frame['tokens_per_s']).sum() / 60):.1f} min at the tokens/s each logged"]
    floor = float(table["rel_std"].median())
    lines.append(f"noise floor: seed-to-seed standard deviation of a variant's loss, median over the {len(table)} variants "
                 f"{100 * floor:.2f}% of the loss (range {100 * table['rel_std'].min():.2f}-{100 * table['rel_std'].max():.2f}%); "
                 f"largest spread between the seeds of one variant {100 * table['rel_range'].max():.2f}%")
    lines.append("variants (mean loss over seeds, std): " + "; ".join(
        f"{r.size} d{r.d_model}/f{r.d_ff} GQA {r.gqa}: {r.mean:.4f} ({r.std:.4f})" for r in table.itertuples()))
    for r in effects.itertuples():
        lines.append(f"effect {r.size} d{r.d_model}/f{r.d_ff} GQA {r.gqa} vs 1: {100 * r.effect:+.2f}% "
                     f"(standard error {100 * r.std_error:.2f}%): {r.verdict}")
    significant = effects[effects["verdict"] == "effect"]
    lines.append(f"{len(significant)} of {len(effects)} GQA variants differ from their shape's GQA 1 by more than twice "
                 "the standard error of the difference")
    law_lines, _ = law_transfer(frame)
    lines += law_lines
    table.to_csv(results / "variants.csv", index=False)
    effects.to_csv(results / "effects.csv", index=False)
    figure(frame, table, results / "gqa.png")
    summary = "\n".join(lines)
    print(summary)
    (results / "summary.txt").write_text(summary + "\n")


def main() -> None:
    study_main(__doc__.splitlines()[0], RESULTS, Path("/tmp/archscale_cpu_gqa_study"), write_configs, analyse)


if __name__ == "__main__":
    main()
