"""Validate the serving model on a real engine here: fit a CPU profile on half the shapes, predict the other half.

Input: ``experiments/results/cpu_vllm/cpu_vllm.csv``, written by
``python experiments/studies/cpu_vllm_shapes.py`` (shapes of one ~20M non-embedding
budget that differ in d_model, r and GQA, each measured with real vLLM on this
CPU and with archscale's torch backend, at several batch sizes), and
``cpu_device.json`` in the same folder (this CPU as a device entry, from
``archscale bench probe --threads 1``; written if missing).

For each engine (vllm, torch): sort the shapes by (d_model, r), put every
other one in the fitting half so both halves span the range, calibrate a
profile on the fitting half with ``--fit auto`` (the terms chosen by
leave-one-architecture-out error on that half alone; the compute efficiency is
and weight-read efficiencies are fixed at the probe's measured rates, see
``FIXED``), and predict the
other half; then swap the halves. Prints, per split: the chosen terms, the held-out
median and mean absolute error, Spearman rank correlation of predicted and
measured throughput over the held-out rows and of the held-out shapes at each
batch size, and the error of predicted speedups between shapes. Writes
``validation.txt`` and ``predicted_vs_measured.png`` beside the data.

    python experiments/validate/cpu_profile_validation.py
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from archscale.shapes.architecture import mlp_attention_ratio
from archscale.bench.calibrate import AUTO, Calibration, calibrate
from archscale.bench.store import load_results
from archscale.serving.devices import load_gpu
from archscale.serving.estimate import EngineSettings

RESULTS = Path(__file__).resolve().parents[1] / "results" / "cpu_vllm"
DATA, DEVICE = RESULTS / "cpu_vllm.csv", RESULTS / "cpu_device.json"
TARGETS = {"median_abs_err": 0.15, "spearman": 0.8}  # issue 9
FIXED = {"eta_compute": 1.0, "eta_weights": 1.0}
"""Matmuls at the rate the probe saw torch reach, weights read at the probe's copy bandwidth (the device entry's
peaks). At one parameter budget every shape does nearly the same matmul FLOPs and reads nearly the same weight
bytes, so the rows cannot tell a compute efficiency from a per-sequence time, nor a weight-read efficiency from a
per-step time (fitted together they trade off until one hits a bound and is refused). The probe measures them
instead; what differs between the shapes (the KV cache, attention) and the engine's overheads are fitted."""


def ranking_words(spearman: float) -> str:
    """How well a rank correlation tells shapes apart, in words for a figure title."""
    if spearman < 0.3:
        return "not told apart"
    return "partly told apart" if spearman < 0.7 else "told apart"


def device_file() -> Path:
    """This CPU at one thread (the measurements use one), probed once and kept with the data."""
    if not DEVICE.exists():
        from archscale.serving.probe import probe_cpu

        DEVICE.write_text(json.dumps([asdict(probe_cpu("cpu", threads=1).device)], indent=2) + "\n")
    return DEVICE


def halves(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the two halves: shapes sorted by (d_model, r), alternately assigned."""
    columns = ["d_model", "n_heads", "n_kv_heads", "d_head", "d_ff"]
    shapes = rows[columns].drop_duplicates()
    order = shapes.assign(r=mlp_attention_ratio(*(shapes[c] for c in columns))).sort_values(["d_model", "r"])
    first = {tuple(row) for row in order[columns].to_numpy()[::2]}
    in_first = rows[columns].apply(tuple, axis=1).isin(first).to_numpy()
    return in_first, ~in_first


def score(result: Calibration) -> dict:
    held = result.rows[result.rows["split"] == "heldout"]
    errors = (held["estimate"] / held["measured"] - 1).abs()
    per_batch = [spearmanr(g["estimate"], g["measured"]).statistic for _, g in held.groupby("batch_size") if len(g) > 2]
    pairs = result.speedups[result.speedups["split"] == "heldout"]
    return {
        "terms": result.profile.fitted,
        "fit_shapes": sorted(result.rows.loc[result.rows["split"] == "fit", "arch_name"].unique()),
        "n_heldout_rows": len(held),
        "median_abs_err": float(errors.median()),
        "mean_abs_err": float(errors.mean()),
        "max_abs_err": float(errors.max()),
        "spearman_rows": float(spearmanr(held["estimate"], held["measured"]).statistic),
        "spearman_shapes_per_batch": float(np.mean(per_batch)) if per_batch else float("nan"),
        "speedup_mean_abs_points": float(pairs["error_points"].mean()) if len(pairs) else float("nan"),
        "uncalibrated_median_abs_err": float((held["uncalibrated"] / held["measured"] - 1).abs().median()),
    }


def plot(results: dict[str, list[Calibration]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 5.8), squeeze=False)
    for ax, (engine, splits) in zip(axes[0], results.items()):
        frame = pd.concat([s.rows.assign(split_no=i) for i, s in enumerate(splits)], ignore_index=True)
        held = frame[frame["split"] == "heldout"]
        batches = sorted(held["batch_size"].unique())
        colours = plt.cm.viridis(np.linspace(0, 0.9, len(batches)))
        for batch, colour in zip(batches, colours):
            group = held[held["batch_size"] == batch]
            ax.scatter(group["measured"], group["estimate"], s=36, color=colour, edgecolor="black", linewidth=0.4,
                       label=f"held out, batch {batch}", zorder=3)
        fitted = frame[frame["split"] == "fit"]
        ax.scatter(fitted["measured"], fitted["estimate"], s=20, facecolor="none", edgecolor="0.5",
                   label="fitted rows (both splits)", zorder=2)
        low = 0.8 * min(frame["measured"].min(), frame["estimate"].min())
        high = 1.25 * max(frame["measured"].max(), frame["estimate"].max())
        line = np.array([low, high])
        ax.plot(line, line, color="black", lw=1, label="predicted = measured")
        ax.fill_between(line, line / 1.15, line * 1.15, color="0.85", zorder=0, label="within 15%")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(low, high)
        ax.set_ylim(low, high)
        ax.set_xlabel("measured output tokens/s")
        ax.set_ylabel("predicted output tokens/s (profile fitted on the other half)")
        stats = [score(s) for s in splits]
        within = np.mean([s['spearman_shapes_per_batch'] for s in stats])
        ax.set_title(f"{engine} on this CPU, held out (mean of both splits):\nmedian |error| "
                     f"{100 * np.mean([s['median_abs_err'] for s in stats]):.1f}%, Spearman over rows "
                     f"{np.mean([s['spearman_rows'] for s in stats]):.2f};\nshapes within one batch size: Spearman "
                     f"{within:.2f} ({ranking_words(within)})", fontsize=9.5)
        ax.legend(fontsize=8, loc="upper left")
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def shape_trends(rows) -> str:
    """Pearson correlation of each shape's mean relative throughput with d_model, heads and d_ff.

    Relative throughput is a row's tokens/s over the mean of its batch size,
    so every batch size weighs the same; what it says is which way throughput
    moves with each shape parameter at one budget, which bytes and FLOPs alone
    (equal across these shapes) cannot say.
    """
    relative = rows["tokens_per_s"] / rows.groupby("batch_size")["tokens_per_s"].transform("mean")
    shapes = rows.assign(relative=relative).groupby(["name", "d_model", "n_heads", "d_ff"])["relative"].mean().reset_index()
    parts = [f"{column} {np.corrcoef(shapes[column], shapes['relative'])[0, 1]:+.2f}" for column in ("d_model", "n_heads", "d_ff")]
    return "correlation of a shape's mean relative throughput with " + ", ".join(parts)


def main() -> None:
    results = load_results(DATA)
    device = load_gpu("cpu", device_file())
    lines, by_engine = [], {}
    for engine in ("vllm", "torch"):
        rows = results[(results["backend"] == engine) & (results["status"] == "ok")].reset_index(drop=True)
        if rows.empty:
            lines.append(f"{engine}: no ok rows in {DATA.name}")
            continue
        kv = EngineSettings(max_num_seqs=int(rows["batch_size"].max()), kv_cache_gib=4.0)
        first, second = halves(rows)
        splits = []
        for name, heldout in (("A", second), ("B", first)):
            result = calibrate(rows, device, engine, free=AUTO, fixed=FIXED, holdout=heldout, settings=kv,
                               source=f"{DATA.name} half {name}")
            splits.append(result)
            s = score(result)
            lines.append(
                f"{engine}, fit on half {name} ({', '.join(s['fit_shapes'])}); terms {', '.join(s['terms'])}\n"
                f"  held-out {s['n_heldout_rows']} rows: median |error| {100 * s['median_abs_err']:.1f}%, mean "
                f"{100 * s['mean_abs_err']:.1f}%, max {100 * s['max_abs_err']:.1f}% (uncalibrated roofline: median "
                f"{100 * s['uncalibrated_median_abs_err']:.0f}%); Spearman over rows {s['spearman_rows']:.3f}, of shapes "
                f"per batch size {s['spearman_shapes_per_batch']:.3f}; speedup between shapes |error| "
                f"{s['speedup_mean_abs_points']:.1f} points")
        by_engine[engine] = splits
        lines.append(f"{engine}: {shape_trends(rows)}")
        verdict = all(score(s)["median_abs_err"] <= TARGETS["median_abs_err"]
                      and score(s)["spearman_rows"] >= TARGETS["spearman"] for s in splits)
        lines.append(f"{engine}: median |error| <= 15% and Spearman >= 0.8 on both held-out halves: "
                     f"{'met' if verdict else 'NOT met'}")
    text = "\n".join(lines)
    print(text)
    (RESULTS / "validation.txt").write_text(text + "\n")
    if by_engine:
        plot(by_engine, RESULTS / "predicted_vs_measured.png")
        print(f"wrote {RESULTS / 'validation.txt'} and {RESULTS / 'predicted_vs_measured.png'}")


if __name__ == "__main__":
    main()
