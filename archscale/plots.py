"""Every figure archscale draws. Drawing only: the numbers come from the library.

Conventions follow the dissertation's figures: points used for fitting are
dots, held-out points are crosses, and the identity line marks a perfect
prediction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from archscale.cli.options import format_count  # noqa: E402
from archscale.files import atomic_file  # noqa: E402
from archscale.laws import CONDITIONAL, u_factor  # noqa: E402

FIT_COLOR, HOLDOUT_COLOR = "tab:orange", "tab:purple"


def _metric_text(metrics: Mapping[str, Any] | None) -> str:
    if not metrics:
        return ""
    parts = [f"MSE {metrics['mse']:.2g}"]
    if metrics.get("r2") is not None:
        parts.append(f"$R^2$ {metrics['r2']:.3f}")
    if metrics.get("spearman") is not None:
        parts.append(f"Spearman {metrics['spearman']:.2f}")
    parts.append(f"max rel. err {100 * metrics['max_rel_error']:.1f}%")
    return ", ".join(parts)


def predicted_vs_actual(ax: plt.Axes, actual: np.ndarray, predicted: np.ndarray, fit_mask: np.ndarray,
                        metrics: Mapping[str, Any], title: str) -> None:
    """Predicted against measured loss: fit rows as dots, held-out rows as crosses."""
    actual, predicted, fit_mask = map(np.asarray, (actual, predicted, fit_mask))
    low = min(actual.min(), predicted.min())
    high = max(actual.max(), predicted.max())
    pad = 0.03 * (high - low or 1)
    ax.plot([low - pad, high + pad], [low - pad, high + pad], color="0.6", lw=1, ls="--", label="perfect prediction")
    ax.scatter(actual[fit_mask], predicted[fit_mask], s=18, color=FIT_COLOR, label=f"fit ({fit_mask.sum()}): {_metric_text(metrics.get('fit'))}")
    if (~fit_mask).any():
        ax.scatter(actual[~fit_mask], predicted[~fit_mask], s=50, marker="x", color=HOLDOUT_COLOR,
                   label=f"held out ({(~fit_mask).sum()}): {_metric_text(metrics.get('holdout'))}")
    ax.set_xlabel("measured loss (nats/token)")
    ax.set_ylabel("predicted loss (nats/token)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)


def _log_x(ax: plt.Axes) -> None:
    """A log x-axis with plain-number ticks at 1, 2 and 5 per decade (readable over less than a decade too)."""
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _u_curve_panels(axes: list[plt.Axes], study: Any) -> None:
    """For conditional laws: each factor's fitted U-curve over the measured losses with the other factor removed."""
    law, params = study.fit.law, study.fit.params
    frame = study.frame
    inputs = {c: frame[c].to_numpy(float) for c in ("x", "r")}
    from archscale.study import law_inputs

    l_opt = law_inputs(law, frame, study.fitted.reference, study.source)["L_opt"]
    loss = frame["loss"].to_numpy(float)
    multiplicative = law.name == "conditional-mult"
    b0 = params.get("b0", 0.0)
    factor = {
        "x": lambda v: u_factor(params["a0"], params["a1"], params["a2"], v),
        "r": lambda v: u_factor(b0, params["b1"], params["b2"], v),
    }
    other = {"x": "r", "r": "x"}
    labels = {"x": "$d_{model}/\\sqrt{N}$", "r": "$r_{mlp/attn}$"}
    for ax, column in zip(axes, ("x", "r")):
        if multiplicative:
            measured = loss / (l_opt * factor[other[column]](inputs[other[column]]))
            ylabel = f"loss / ($L_{{opt}}$ x {other[column]}-factor)"
        else:
            measured = loss - l_opt - factor[other[column]](inputs[other[column]])
            ylabel = f"loss - $L_{{opt}}$ - {other[column]}-factor"
        mask = study.fit_mask
        ax.scatter(inputs[column][mask], measured[mask], s=14, color=FIT_COLOR, label="fit runs")
        if (~mask).any():
            ax.scatter(inputs[column][~mask], measured[~mask], s=40, marker="x", color=HOLDOUT_COLOR, label="held out")
        grid = np.geomspace(inputs[column].min() * 0.9, inputs[column].max() * 1.1, 200)
        ax.plot(grid, factor[column](grid), color="black", lw=1.5, label="fitted factor")
        best = study.fitted.optimum().get(column)
        low, high = inputs[column].min(), inputs[column].max()
        if best is not None and np.isfinite(best) and low / 2 <= best <= high * 2:
            ax.axvline(best, color="tab:green", ls=":", label=f"optimum {best:.3g}")
        elif best is not None:
            # an optimum far outside the runs is an extrapolation: say so instead of stretching the axis to it
            ax.plot([], [], " ", label=f"optimum {best:.3g}: outside the runs ({low:.2g}-{high:.2g})")
        _log_x(ax)
        ax.set_xlabel(labels[column])
        ax.set_ylabel(ylabel)
        ax.set_title(f"U-curve in {labels[column]}", fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)


def _aspect_panel(ax: plt.Axes, study: Any) -> None:
    """For the aspect-ratio law: the shape penalty ``1 + eps R^gamma`` over the measured losses with size removed."""
    law, params, frame = study.fit.law, study.fit.params, study.frame
    size_term = params["E"] + params["A"] * frame["N"] ** -params["alpha"] + params["B"] * frame["D"] ** -law.beta(params)
    measured = frame["loss"] / size_term
    mask = study.fit_mask
    ax.scatter(frame["R"][mask], measured[mask], s=14, color=FIT_COLOR, label="fit runs")
    if (~mask).any():
        ax.scatter(frame["R"][~mask], measured[~mask], s=40, marker="x", color=HOLDOUT_COLOR, label="held out")
    grid = np.geomspace(frame["R"].min() * 0.9, frame["R"].max() * 1.1, 200)
    ax.plot(grid, 1 + params["eps"] * grid ** law.gamma(params), color="black", lw=1.5, label="fitted 1 + eps R^gamma")
    _log_x(ax)
    ax.set_xlabel("aspect ratio R = d_model / n_layers")
    ax.set_ylabel("loss / (E + A N^-alpha + B D^-beta)")
    ax.set_title("shape penalty in the aspect ratio", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def plot_study(study: Any, path: str | Path) -> Path:
    """The ``archscale fit --plot`` figure: predicted vs actual, plus each architecture factor for shape laws."""
    law_name = study.fit.law.name
    extra = 2 if law_name in CONDITIONAL else 1 if law_name.startswith("aspect") else 0
    fig, axes = plt.subplots(1, 1 + extra, figsize=(6 + 4.5 * extra, 5), squeeze=False)
    axes = list(axes[0])
    title = f"{law_name}: {study.fit.law.description}\n({study.fit.objective} fit on {study.fit.n_points} runs)"
    predicted_vs_actual(axes[0], study.frame["loss"], study.predicted, study.fit_mask, study.metrics, title)
    if law_name in CONDITIONAL:
        _u_curve_panels(axes[1:], study)
    elif extra:
        _aspect_panel(axes[1], study)
    return save(fig, path)


def save(fig: plt.Figure, path: str | Path) -> Path:
    """Write a PNG (via a temporary file, so a failure leaves nothing half-written)."""
    fig.tight_layout()
    with atomic_file(path, "wb") as out:
        fig.savefig(out, dpi=130, format="png")
    plt.close(fig)
    return Path(path)


def plot_search(result: Any, spec: Any, path: str | Path, batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)) -> Path:
    """The ``archscale search --plot`` figure.

    Left: predicted loss against throughput for every candidate that fits in
    memory, the feasible set coloured, the Pareto frontier drawn as a line,
    the target loss and the matched reference architecture marked, the top-k
    labelled. Right: estimated throughput against batch size for the top-k and
    the reference (the roofline at each batch size).
    """
    from archscale.cost.roofline import Workload, estimate_throughput_many

    candidates = result.candidates[result.candidates["fits"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5.5))
    infeasible = candidates[~candidates["feasible"]]
    feasible = candidates[candidates["feasible"]]
    left.scatter(infeasible["tokens_per_s"], infeasible["predicted_loss"], s=3, color="0.8", label=f"over target ({len(infeasible):,})", rasterized=True)
    left.scatter(feasible["tokens_per_s"], feasible["predicted_loss"], s=3, color="tab:blue", alpha=0.4, label=f"feasible ({len(feasible):,})", rasterized=True)
    frontier = result.frontier
    left.plot(frontier["tokens_per_s"], frontier["predicted_loss"], color="tab:red", lw=2, marker="o", ms=3, zorder=7,
              label=f"Pareto frontier ({len(frontier)} shape{'s' if len(frontier) != 1 else ''})")
    left.axhline(result.target.loss, color="black", ls="--", lw=1, label=f"target loss ({result.target.source})")
    reference = result.target.reference
    if reference:
        left.scatter([reference["tokens_per_s"]], [reference["predicted_loss"]], marker="*", s=250, color="gold",
                     edgecolor="black", zorder=5, label=f"reference: {reference['name']}")
    for row in result.top_k.itertuples():
        left.scatter([row.tokens_per_s], [row.predicted_loss], marker="D", s=50, color="tab:green", edgecolor="black", zorder=6,
                     label=f"#{row.rank}: d={row.d_model}, heads {row.n_heads}/{row.n_kv_heads}, d_ff {row.d_ff}, r={row.r:.2f}")
        left.annotate(f"#{row.rank}", (row.tokens_per_s, row.predicted_loss), xytext=(-4, 6 + 9 * (row.rank - 1)),
                      textcoords="offset points", fontsize=8, ha="right")
    unit = "loss / $L_{opt}$ (relative)" if result.relative else "predicted loss (nats/token)"
    left.set_xlabel(f"estimated throughput (total tokens/s; {spec.gpu.name}, batch {spec.workload.batch_size}, "
                    f"{spec.workload.input_len} in / {spec.workload.output_len} out)")
    left.set_ylabel(unit)
    left.set_title(f"N = {spec.n:.3g} non-embedding params, D = {spec.tokens:.3g} tokens, {spec.n_layers} layers", fontsize=10)
    low, high = frontier["predicted_loss"].min(), max(result.target.loss, frontier["predicted_loss"].min())
    span = max(high - low, 1e-4)
    left.set_ylim(low - 0.5 * span, high + 2.5 * span)
    left.legend(fontsize=8, loc="upper left")
    left.grid(alpha=0.3)
    left.xaxis.set_major_formatter(matplotlib.ticker.EngFormatter(sep=""))

    rows = [(f"#{row.rank}: d={row.d_model}, r={row.r:.2f}, GQA {row.gqa}", dict(row._asdict())) for row in result.top_k.itertuples()]
    if reference:
        rows.append((f"reference: {reference['name']}", reference))
    import pandas as pd

    for label, row in rows:
        shape = pd.DataFrame([{k: row[k] for k in ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_head", "d_ff", "vocab", "tie_embeddings")}])
        throughput = [estimate_throughput_many(shape, spec.gpu, Workload(b, spec.workload.input_len, spec.workload.output_len),
                                               spec.tp, spec.efficiency).iloc[0] for b in batch_sizes]
        style = dict(ls="--", color="black") if label.startswith("reference") else {}
        right.plot(batch_sizes, [t["tokens_per_s"] for t in throughput], marker="o", label=label, **style)
    right.set_xscale("log", base=2)
    right.set_xlabel("batch size (concurrent requests)")
    right.set_ylabel("estimated throughput (total tokens/s)")
    right.set_title(f"roofline estimate vs batch size, {spec.gpu.name}", fontsize=10)
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    right.yaxis.set_major_formatter(matplotlib.ticker.EngFormatter(sep=""))
    return save(fig, path)


def plot_isoflops(frontier: Any, law: Any, budgets: list[float], path: str | Path, title: str = "") -> Path:
    """The ``archscale plan --plot`` figure: isoFLOP profiles and the compute-optimal frontier.

    Left: loss against N for each budget (one colour per budget), the fitted parabolas over the sizes each
    budget tried, and their minima (stars); held-out budgets drawn with crosses, budgets left out (no
    bracketed minimum) in grey. Right: N* and D* against C on log axes, the Approach 2 power laws through
    the minima with their 95% bootstrap band, the extrapolation to the planned budgets (dashed, with the
    planned points), and the fitted law's N*(C) when one was given.
    """
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 6.6))
    used = [p for p in frontier.profiles if p.role != "excluded"]
    colours = plt.cm.viridis(np.linspace(0, 0.9, max(len(used), 1)))
    colour_of = {id(p): c for p, c in zip(used, colours)}
    for profile in frontier.profiles:
        colour = colour_of.get(id(profile), "0.65")
        runs_n, runs_loss = profile.runs
        marker = "x" if profile.role == "holdout" else "o"
        label = f"C = {profile.budget:.2g}" + {"fit": "", "holdout": " (held out)", "excluded": " (left out: no bracketed minimum)"}[profile.role]
        left.scatter(runs_n, runs_loss, s=16, marker=marker, color=colour, alpha=0.85, label=label)
        if np.all(np.isfinite(profile.coefficients)):
            grid = np.geomspace(*profile.n_range, 100)
            c2, c1, c0 = profile.coefficients
            left.plot(grid, c2 * np.log(grid) ** 2 + c1 * np.log(grid) + c0, color=colour, lw=1.2,
                      ls="--" if profile.role == "excluded" else "-")
        if profile.n_opt is not None:
            left.scatter([profile.n_opt], [profile.loss_opt], marker="*", s=160, color=colour, edgecolor="black", zorder=5)
    left.scatter([], [], marker="*", s=120, color="white", edgecolor="black", label="parabola minimum N*")
    left.set_xscale("log")
    left.set_xlabel("parameters N")
    left.set_ylabel("loss (nats/token)")
    fitted_losses = np.concatenate([p.runs[1] for p in frontier.profiles])
    low, high = np.percentile(fitted_losses, [0, 97])
    left.set_ylim(low - 0.03 * (high - low), high + 0.1 * (high - low))
    left.set_title(f"isoFLOP profiles{': ' + title if title else ''}", fontsize=10)
    left.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.11))
    left.grid(alpha=0.3, which="both")

    minima = [p for p in frontier.profiles if p.n_opt is not None and p.role != "excluded"]
    fitted = [p for p in minima if p.role == "fit"]
    held = [p for p in minima if p.role == "holdout"]
    data_c = np.array([p.budget for p in frontier.profiles])
    span_low, span_high = data_c.min() / 2, max([data_c.max() * 2, *[b * 1.5 for b in budgets]])
    inside = np.geomspace(data_c.min() / 1.5, data_c.max() * 1.5, 50)
    beyond = np.geomspace(data_c.max() * 1.5, span_high, 50)
    ci = frontier.intervals or {}
    for series, colour, points in (("N", "tab:blue", [p.n_opt for p in fitted]), ("D", "tab:orange", [p.d_opt for p in fitted])):
        name = "a" if series == "N" else "b"
        exponent = getattr(frontier, name)
        interval_text = f", 95% CI {ci[name][0]:.3f}-{ci[name][1]:.3f}" if ci.get(name) else ""
        predict = frontier.predict_n if series == "N" else (lambda c: c / (6 * frontier.predict_n(c)))
        right.scatter([p.budget for p in fitted], points, color=colour, s=30, zorder=5)
        right.plot(inside, predict(inside), color=colour, lw=1.8,
                   label=f"Approach 2: {series}* ~ C^{exponent:.3f}{interval_text}")
        right.plot(beyond, predict(beyond), color=colour, lw=1.5, ls="--")
        if held:
            right.scatter([p.budget for p in held], [p.n_opt if series == "N" else p.d_opt for p in held], color=colour,
                          marker="x", s=60, zorder=6, label=f"held-out budgets' own {series}*")
    if budgets and ci.get("N"):
        for series, colour in (("N", "tab:blue"), ("D", "tab:orange")):
            bands = [band for band in ci[series] if band]
            if len(bands) == len(budgets):
                lows, highs = zip(*bands)
                values = frontier.n_opt if series == "N" else frontier.d_opt
                right.errorbar(budgets, values, yerr=[np.subtract(values, lows), np.subtract(highs, values)], fmt="none",
                               ecolor=colour, capsize=4, lw=1.2)
    lines = []
    for index, c in enumerate(budgets):
        right.scatter([c], [frontier.n_opt[index]], marker="D", s=60, color="tab:blue", edgecolor="black", zorder=7)
        right.scatter([c], [frontier.d_opt[index]], marker="D", s=60, color="tab:orange", edgecolor="black", zorder=7)
        n_band, d_band = (ci.get("N") or [None] * len(budgets))[index], (ci.get("D") or [None] * len(budgets))[index]
        lines.append(f"C = {c:.3g}: N* {format_count(frontier.n_opt[index])}"
                     + (f" ({format_count(n_band[0])}-{format_count(n_band[1])})" if n_band else "")
                     + f", D* {format_count(frontier.d_opt[index])}"
                     + (f" ({format_count(d_band[0])}-{format_count(d_band[1])})" if d_band else ""))
    if lines:
        right.text(0.98, 0.03, "planned (diamonds), Approach 2, 95% CI:\n" + "\n".join(lines), transform=right.transAxes,
                   fontsize=8, ha="right", va="bottom", bbox=dict(boxstyle="round", facecolor="white", alpha=0.9))
    if law is not None:
        grid = np.geomspace(span_low, span_high, 100)
        n_law, d_law = law.curve(grid)
        right.plot(grid, n_law, color="tab:green", lw=1.2, ls=":", label=f"{law.law} law ({Path(law.source).name}): N* ~ C^{law.a:.3f}")
        right.plot(grid, d_law, color="tab:red", lw=1.2, ls=":", label=f"{law.law} law ({Path(law.source).name}): D* ~ C^{law.b:.3f}")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlim(span_low, span_high)
    right.set_xlabel("training compute C (FLOPs); dashed: extrapolation beyond the profiles")
    right.set_ylabel("compute-optimal parameters N* and tokens D*")
    right.set_title("compute-optimal frontier (points: each profile's minimum; bars: 95% bootstrap interval)", fontsize=10)
    right.legend(fontsize=8, loc="upper left")
    right.grid(alpha=0.3, which="both")
    return save(fig, path)

