"""A CPU mini-study of the whole loop: sweep tiny shapes, fit the conditional law, search with it.

Run:  python experiments/studies/cpu_mini_study.py            (about 30 minutes on 2 idle cores)
      python experiments/studies/cpu_mini_study.py --quick    (fewer tokens per run, for a smoke run)

1. Shapes: two sizes (N_non_embed about 0.2M and 0.6M, 4 layers, d_head 16, no GQA, byte-level vocabulary), at each
   an x-sweep (d_model/sqrt(N) at r about 1.5) and an r-sweep (r from 0.5 to 5 at a fixed d_model), as in the
   dissertation's Figures 6.9 and 6.10: 14-16 configs, written with the same candidate generator `search` uses.
2. Training: `archscale sweep`'s library call on the embedded corpus (Python's own standard library, bytes),
   a fixed token budget per size; one row per run lands in runs.csv. Re-running resumes and skips finished runs.
3. Fit: the multiplicative conditional law on every run (L_opt = best run per size), with the paper's
   progressive task (fit the small size, predict the large one); U-curve plot.
4. Search: with the fitted law at N = 2e6, the shapes fastest on an H100 within 1% of the law's optimum.

Writes everything under experiments/results/cpu_mini_study/ (runs.csv, cond.json, cond.png, search.json,
pareto.png, summary.txt). The run directories with checkpoints go to a scratch folder (--work).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from archscale.shapes.candidates import architecture_from_row, generate_candidates
from archscale.serving.devices import load_gpu
from archscale.serving.estimate import Workload
from archscale.io.files import write_json
from archscale.fit.plots import plot_study
from archscale.search.plots import plot_search
from archscale.fit.runs import load_runs
from archscale.search.constrained import SearchSpec, search
from archscale.fit.study import run_study
from archscale.train.config import TrainConfig, write_config_dir
from archscale.train.data import default_data_dir
from archscale.train.sweep import sweep

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "experiments" / "results" / "cpu_mini_study"


def shown_path(path: Path) -> str:
    """``path`` as the committed results name it: repository-relative inside the repository, so they name no machine."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
SIZES = {"S": (2.0e5, 1_500_000), "M": (6.0e5, 2_000_000)}  # N target -> training tokens
LAYERS, D_HEAD, GQA = 4, 16, 1
X_SWEEP = (0.08, 0.12, 0.18, 0.27)
R_SWEEP = (0.5, 1.0, 2.5, 5.0)
R_FOR_X_SWEEP = 1.5


def pick_shapes(n_target: float) -> pd.DataFrame:
    """The x-sweep at r about 1.5 and the r-sweep at the x-sweep's middle width, nearest candidates to each point."""
    table = generate_candidates(n_target, LAYERS, D_HEAD, tolerance=0.06, r_range=(0.4, 6.0), d_multiple=16,
                                ff_multiple=16, gqa_values=[GQA], vocab_size=256, x_range=(0.05, 0.6))
    picks = []
    for x in X_SWEEP:
        score = np.abs(np.log(table["x"] / x)) + 0.5 * np.abs(np.log(table["r"] / R_FOR_X_SWEEP)) + np.abs(np.log(table["N"] / n_target))
        picks.append(table.loc[score.idxmin()])
    middle = picks[len(X_SWEEP) // 2]["d_model"]  # the r-sweep runs at the x-sweep's third width
    at_width = table[table["d_model"] == middle]
    for r in R_SWEEP:
        score = np.abs(np.log(at_width["r"] / r)) + np.abs(np.log(at_width["N"] / n_target))
        picks.append(at_width.loc[score.idxmin()])
    shapes = pd.DataFrame(picks).drop_duplicates(subset=["d_model", "n_heads", "d_ff"]).reset_index(drop=True)
    return shapes


def write_configs(configs: Path, tokens_scale: float) -> list[dict]:
    written = []
    for size, (n_target, tokens) in SIZES.items():
        for index, row in pick_shapes(n_target).iterrows():
            name = f"{size}-{index:02d}-d{int(row.d_model)}-r{row.r:.2f}"
            arch = architecture_from_row({**row.to_dict(), "name": name, "tie_embeddings": True})
            train = TrainConfig.for_model_size(arch.n_params_non_embedding, tokens=int(tokens * tokens_scale))
            write_config_dir(configs / name, arch, train)
            written.append({"name": name, "N": arch.n_params_non_embedding, "x": arch.d_over_sqrt_n, "r": arch.r_mlp_attn})
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the tokens per run (smoke run)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/archscale_cpu_mini_study"), help="scratch folder for configs and run directories")
    args = parser.parse_args()
    results = args.work / "results" if args.quick else RESULTS  # a smoke run does not overwrite the committed study
    results.mkdir(parents=True, exist_ok=True)
    runs = results / "runs.csv"
    configs = args.work / "configs"
    shapes = write_configs(configs, 0.1 if args.quick else 1.0)
    print(f"{len(shapes)} configs under {configs}")
    start = time.perf_counter()
    outcomes = sweep(configs, default_data_dir(), runs, out_root=args.work / "runs", echo=print, progress=False)
    elapsed = time.perf_counter() - start
    print(f"sweep: {sum(o.status in ('trained', 'resumed') for o in outcomes)} trained, "
          f"{sum(o.status.startswith('skipped') for o in outcomes)} skipped, {elapsed / 60:.1f} min")

    frame = load_runs(runs)
    counts = {size: int(((frame["N"] / n_target - 1).abs() < 0.1).sum()) for size, (n_target, _) in SIZES.items()}
    training_min = float((frame["D"] / frame["tokens_per_s"]).sum() / 60)
    lines = [f"runs: {len(frame)} ({', '.join(f'{count} at {size}' for size, count in counts.items())}); "
             f"their training took {training_min:.1f} min at the tokens/s each run logged"]
    study = run_study(frame, "conditional-mult", "lsq", progressive=True, source=shown_path(runs))
    write_json(results / "cond.json", study.to_json())
    plot_study(study, results / "cond.png")
    optimum = study.fitted.optimum()
    params = study.fit.params
    lines.append("conditional-mult fit (L_opt = best run per size): " + ", ".join(f"{k}={v:.4g}" for k, v in params.items()))
    lines.append(f"fit: MSE {study.metrics['fit']['mse']:.3g}, R^2 {study.metrics['fit']['r2']:.3f}, Spearman {study.metrics['fit']['spearman']:.3f}")
    for task in study.progressive:
        m = task.get("metrics")
        lines.append(f"progressive: fit {task['fit_sizes']} -> test {task['test_sizes']}: "
                     + (f"MSE {m['mse']:.3g}, max rel err {100 * m['max_rel_error']:.2f}%, Spearman {m['spearman']:.3f}" if m else task.get("error", "")))
    inside = {c: bool(frame[c].min() <= optimum[c] <= frame[c].max()) for c in ("x", "r")}
    lines.append(f"closed-form optimum: x* = {optimum['x']:.4g} ({'inside' if inside['x'] else 'outside'} the runs' "
                 f"{frame['x'].min():.3g}-{frame['x'].max():.3g}), r* = {optimum['r']:.4g} "
                 f"({'inside' if inside['r'] else 'outside'} the runs' {frame['r'].min():.3g}-{frame['r'].max():.3g})")
    for size, (n_target, _) in SIZES.items():
        group = frame[(frame["N"] / n_target - 1).abs() < 0.1].sort_values("loss")
        best = group.iloc[0]
        lines.append(f"best measured at {size} (N~{n_target:.0e}): d_model {int(best.d_model)}, r {best.r:.2f}, x {best.x:.3f}, "
                     f"loss {best.loss:.4f}; worst {group['loss'].max():.4f}")

    spec = SearchSpec(n=2e6, tokens=1e7, n_layers=LAYERS, d_head=D_HEAD, gpu=load_gpu("h100-sxm"),
                      workload=Workload(64, 512, 256), vocab_size=256, gqa_values=(1, 2, 4), tolerance=0.05)
    if all(np.isfinite(list(optimum.values()))):
        result = search(study.fitted, spec, slack=0.01)
        top = result.top_k.iloc[0]
        lines.append(f"search at N=2e6: {len(result.candidates)} candidates, best discrete d_model {int(result.best_discrete['d_model'])} "
                     f"r {result.best_discrete['r']:.2f}; fastest within 1% of the optimum: d_model {int(top.d_model)}, "
                     f"heads {int(top.n_heads)}/{int(top.n_kv_heads)}, d_ff {int(top.d_ff)}, r {top.r:.2f}, "
                     f"{top.tokens_per_s:,.0f} tokens/s estimated")
        plot_search(result, spec, results / "pareto.png")
        write_json(results / "search.json", {"top_k": result.top_k.to_dict("records"), "target": result.target.loss})
    else:
        lines.append("search skipped: the fitted law has no interior optimum in x or r on these runs")
    summary = "\n".join(lines)
    print(summary)
    (results / "summary.txt").write_text(summary + "\n")


if __name__ == "__main__":
    main()
