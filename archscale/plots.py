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
import matplotlib.patches  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from archscale.cli.options import format_count  # noqa: E402
from archscale.files import atomic_file  # noqa: E402
from archscale.laws import CONDITIONAL, u_factor  # noqa: E402

FIT_COLOR, HOLDOUT_COLOR = "tab:orange", "tab:purple"


def _metric_text(metrics: Mapping[str, Any] | None) -> str:
    """The fit's scores with the digits ``archscale fit`` prints, so the figure and the table agree."""
    if not metrics:
        return ""
    parts = [f"MSE {metrics['mse']:.3g}"]
    if metrics.get("r2") is not None:
        parts.append(f"$R^2$ {metrics['r2']:.4g}")
    if metrics.get("spearman") is not None:
        parts.append(f"Spearman {metrics['spearman']:.3g}")
    parts.append(f"max rel. err {100 * metrics['max_rel_error']:.2f}%")
    return ", ".join(parts)


def predicted_vs_actual(ax: plt.Axes, actual: np.ndarray, predicted: np.ndarray, fit_mask: np.ndarray,
                        metrics: Mapping[str, Any], title: str,
                        excluded: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """Predicted against measured loss: fit rows as dots, held-out rows as crosses, rows --where left out as rings.

    The scores go in the legend, which is placed where it covers no point.
    """
    actual, predicted, fit_mask = map(np.asarray, (actual, predicted, fit_mask))
    every = [actual, predicted] + (list(excluded) if excluded is not None else [])
    low = min(float(np.min(v)) for v in every)
    high = max(float(np.max(v)) for v in every)
    pad = 0.03 * (high - low or 1)
    ax.plot([low - pad, high + pad], [low - pad, high + pad], color="0.6", lw=1, ls="--", label="perfect prediction")
    ax.scatter(actual[fit_mask], predicted[fit_mask], s=18, color=FIT_COLOR,
               label=f"fit ({fit_mask.sum()})\n{_metric_text(metrics.get('fit'))}")
    if (~fit_mask).any():
        ax.scatter(actual[~fit_mask], predicted[~fit_mask], s=50, marker="x", color=HOLDOUT_COLOR,
                   label=f"held out ({(~fit_mask).sum()})\n{_metric_text(metrics.get('holdout'))}")
    if excluded is not None and len(excluded[0]):
        ax.scatter(excluded[0], excluded[1], s=22, facecolors="none", edgecolors="0.45",
                   label=f"left out by --where ({len(excluded[0])}; not fitted, not scored)")
    ax.set_xlim(low - pad, high + pad)
    ax.set_ylim(low - pad, high + pad)
    ax.set_xlabel("measured loss (nats/token)")
    ax.set_ylabel("predicted loss (nats/token)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)


LOG_TICK_STEPS = ((1.0,), (1.0, 2.0, 5.0), (1.0, 2.0, 3.0, 5.0), (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0),
                  (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0))
"""Tick mantissas tried in turn on a log axis until enough ticks fall inside the data's range."""


def _log_x(ax: plt.Axes, low: float, high: float, min_ticks: int = 4) -> None:
    """A log x-axis over [low, high] with plain-number ticks: 1-2-5 per decade, denser when the range is short.

    A range under a decade would otherwise get only one or two labels.
    """
    ax.set_xscale("log")
    ax.set_xlim(low, high)
    ticks: list[float] = []
    for mantissas in LOG_TICK_STEPS:
        decades = range(int(np.floor(np.log10(low))), int(np.ceil(np.log10(high))) + 1)
        ticks = [m * 10.0 ** k for k in decades for m in mantissas if low <= m * 10.0 ** k <= high]
        if len(ticks) >= min_ticks:
            break
    ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(ticks))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _optimum_marker(ax: plt.Axes, best: float | None, low: float, high: float, symbol: str) -> str:
    """Draw the factor's minimum: a line when it is on the chart, an arrow to the edge when it is not.

    Returns where the legend fits without covering the curve (a factor that only
    falls over the runs leaves the lower left empty, one that only rises the lower right).
    """
    if best is None or not np.isfinite(best):
        return "best"
    if low <= best <= high:
        ax.axvline(best, color="tab:green", ls=":", lw=1.5, label=f"minimum {symbol}* = {best:.3g}")
        return "best"
    right = best > high
    edge = 0.98 if right else 0.02
    ax.annotate(f"minimum at {symbol}* = {best:.3g},\noff the chart", xy=(edge, 0.93), xycoords="axes fraction",
                xytext=(edge - 0.3 if right else edge + 0.3, 0.93), textcoords="axes fraction", fontsize=7,
                color="tab:green", ha="right" if right else "left", va="center",
                arrowprops=dict(arrowstyle="->", color="tab:green", lw=1.2))
    return "lower left" if right else "lower right"


def _u_curve_panels(axes: list[plt.Axes], study: Any) -> None:
    """For conditional laws: each factor's fitted curve over the measured losses with the other factor removed."""
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
        low, high = inputs[column].min() * 0.9, inputs[column].max() * 1.1
        best = study.fitted.optimum().get(column)
        grid = np.geomspace(low, high, 200)
        curve = factor[column](grid)
        ax.plot(grid, curve, color="black", lw=1.5, label="fitted factor")
        where = _optimum_marker(ax, best, low, high, column)
        _log_x(ax, low, high)
        ax.set_xlabel(labels[column])
        ax.set_ylabel(ylabel)
        inside = best is not None and np.isfinite(best) and low <= best <= high
        shape = "U-curve" if inside else ("falling" if best is not None and best > high else "rising") + " factor"
        ax.set_title(f"{shape} in {labels[column]}" + ("" if inside else " (minimum outside these runs)"), fontsize=10)
        ax.legend(fontsize=7, loc=where)
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
    low, high = frame["R"].min() * 0.9, frame["R"].max() * 1.1
    grid = np.geomspace(low, high, 200)
    ax.plot(grid, 1 + params["eps"] * grid ** law.gamma(params), color="black", lw=1.5, label="fitted 1 + eps R^gamma")
    _log_x(ax, low, high)
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
    predicted_vs_actual(axes[0], study.frame["loss"], study.predicted, study.fit_mask, study.metrics, title,
                        _excluded_points(study))
    if law_name in CONDITIONAL:
        _u_curve_panels(axes[1:], study)
    elif extra:
        _aspect_panel(axes[1], study)
    return save(fig, path)


def _excluded_points(study: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """(measured, predicted) for the rows ``--where`` left out, or None when there are none or they cannot be predicted.

    Conditional laws with the empirical ``L_opt`` take it per (N, D) level over
    all rows, so a left-out row is compared with the best run of its level.
    """
    import pandas as pd

    from archscale.errors import UserError
    from archscale.study import law_inputs

    excluded = getattr(study, "excluded", None)
    if excluded is None or excluded.empty:
        return None
    law = study.fit.law
    every = pd.concat([study.frame, excluded], ignore_index=True)
    try:
        inputs = law_inputs(law, every, study.fitted.reference, study.source)
    except UserError:  # the left-out rows lack a column the law needs: nothing to place
        return None
    predicted = law.predict(study.fit.params, inputs)[len(study.frame):]
    return excluded["loss"].to_numpy(float), np.asarray(predicted, float)


def save(fig: plt.Figure, path: str | Path) -> Path:
    """Write a PNG (via a temporary file, so a failure leaves nothing half-written)."""
    fig.tight_layout()
    with atomic_file(path, "wb") as out:
        fig.savefig(out, dpi=130, format="png")
    plt.close(fig)
    return Path(path)


def si_count(value: float) -> str:
    """A count at a glance, as the tables print it: 1B, 975M, 100B, 2e+15 beyond T."""
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if value >= scale:
            return f"{value / scale:.3g}{unit}" if value < 1e15 else f"{value:.3g}"
    return f"{value:.3g}"


SPEED = "output_tokens_per_s"
"""The throughput the search figure plots (output tokens/s, as search's table prints it)."""

PICK_STYLES = (("tab:green", "D", "-"), ("tab:purple", "s", "--"), ("tab:brown", "^", "-."),
               ("tab:cyan", "v", ":"), ("tab:olive", "P", "-"), ("tab:pink", "X", "--"))
"""(colour, marker, line style) of the k-th pick, the same in every panel, so each legend entry matches one mark."""


def pick_style(rank: int) -> tuple[str, str, str]:
    return PICK_STYLES[(rank - 1) % len(PICK_STYLES)]


def throughput_source(result: Any | None) -> str:
    """Where the plotted throughputs come from: the search's profile, or the uncalibrated roofline."""
    model = getattr(result, "throughput_model", None)
    return model.label if model is not None else "estimate"


def source_on_device(spec: Any, result: Any | None = None) -> str:
    """Where the throughputs come from and for which device, naming the device once.

    An uncalibrated roofline's label already names it ("uncalibrated roofline (H100-SXM)"), and so does a
    profile's name as a rule ("vllm-h200-bf16"); the device is added only where the label lacks it.
    """
    source, device = throughput_source(result), spec.gpu.name
    return source if device.lower() in source.lower() else f"{source}, {device}"


def throughput_label(spec: Any, result: Any | None = None) -> str:
    """What the throughput axis measures (one place, so its wording follows where the numbers come from)."""
    return (f"output tokens/s ({source_on_device(spec, result)}; batch {spec.workload.batch_size}, "
            f"{spec.workload.input_len} in / {spec.workload.output_len} out)")


def _zoom_window(result: Any) -> tuple[tuple[float, float], tuple[float, float]]:
    """Throughput and loss limits that separate the picks (they often lie within 1% of each other)."""
    picks = result.top_k
    x_low, x_high = float(picks[SPEED].min()), float(picks[SPEED].max())
    width = max(x_high - x_low, 0.01 * x_high)
    y_low = float(picks["predicted_loss"].min())
    y_high = max(float(result.target.loss), float(picks["predicted_loss"].max()))
    height = max(y_high - y_low, 2e-4 * y_high)
    return (x_low - 0.6 * width, x_high + 0.6 * width), (y_low - 0.6 * height, y_high + 0.4 * height)


def _candidate_clouds(ax: plt.Axes, result: Any, counts: bool) -> None:
    """Candidates that fit in memory (over the target grey, feasible blue), the frontier, the target and reference."""
    fits = result.candidates["fits"]
    shown = result.candidates[fits]
    infeasible, feasible = shown[~shown["feasible"]], shown[shown["feasible"]]
    unfit = int((~fits).sum())
    label = (lambda text, n: f"{text} ({n:,})") if counts else (lambda text, n: None)
    ax.scatter(infeasible[SPEED], infeasible["predicted_loss"], s=3, color="0.8", rasterized=True,
               label=label("over target", len(infeasible)))
    ax.scatter(feasible[SPEED], feasible["predicted_loss"], s=3, color="tab:blue", alpha=0.4, rasterized=True,
               label=label("feasible", len(feasible)))
    if counts and unfit:
        ax.plot([], [], " ", label=f"do not fit in GPU memory ({unfit:,}, not drawn)")
    frontier = result.frontier
    ax.plot(frontier[SPEED], frontier["predicted_loss"], color="tab:red", lw=2, marker="o", ms=3, zorder=7,
            label=f"Pareto frontier ({len(frontier)} shape{'s' if len(frontier) != 1 else ''})" if counts else None)
    ax.axhline(result.target.loss, color="black", ls="--", lw=1,
               label=f"target loss ({result.target.source})" if counts else "target loss")
    reference = result.target.reference
    if reference:
        ax.scatter([reference[SPEED]], [reference["predicted_loss"]], marker="*", s=250, color="gold",
                   edgecolor="black", zorder=5, label=f"reference: {reference['name']}" if counts else None)


def _picks(ax: plt.Axes, result: Any, labelled: bool) -> None:
    """The top-k, each in its own colour and marker; with ``labelled``, '#k' beside each and a legend entry."""
    offsets = ((8, 8), (8, -14), (-24, 8), (-24, -14))
    for index, row in enumerate(result.top_k.itertuples()):
        color, marker, _ = pick_style(row.rank)
        ax.scatter([getattr(row, SPEED)], [row.predicted_loss], marker=marker, s=70 if labelled else 40, color=color,
                   edgecolor="black", zorder=8,
                   label=f"#{row.rank}: d={row.d_model}, heads {row.n_heads}/{row.n_kv_heads}, d_ff {row.d_ff}, "
                         f"r={row.r:.2f}" if labelled else None)
        if labelled:
            x_low, x_high = ax.get_xlim()
            dx, dy = offsets[index % len(offsets)]
            if getattr(row, SPEED) > x_low + 0.85 * (x_high - x_low):  # near the right edge: label on the left
                dx = -abs(dx) - 16
            ax.annotate(f"#{row.rank}", (getattr(row, SPEED), row.predicted_loss), xytext=(dx, dy),
                        textcoords="offset points", fontsize=9, color=color, fontweight="bold")


PICK_SEPARATION = 0.04
"""Picks closer than this (as a fraction of the overview's axes) would be drawn over each other: they get a zoom panel."""


def _picks_overlap(result: Any, x_span: float, y_span: float) -> bool:
    """Whether two picks would sit within :data:`PICK_SEPARATION` of each other in the overview."""
    points = np.column_stack([result.top_k[SPEED] / max(x_span, 1e-12),
                              result.top_k["predicted_loss"] / max(y_span, 1e-12)])
    if len(points) < 2:
        return False
    gaps = np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(-1))
    return bool(gaps[np.triu_indices(len(points), 1)].min() < PICK_SEPARATION)


def plot_search(result: Any, spec: Any, path: str | Path, batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)) -> Path:
    """The ``archscale search --plot`` figure.

    Left: predicted loss against throughput for every candidate that fits in
    memory (the count of those that do not is in the legend), the feasible set
    coloured, the Pareto frontier, the target loss, the matched reference and
    the picks. When the picks lie too close to tell apart there (often within
    1% of each other), a box marks them and a middle panel enlarges it. Right:
    estimated throughput against batch size for the picks and the reference
    (the search's throughput profile at each batch size), each pick in the same
    colour and marker in every panel. Throughput is output tokens/s, and the
    axes name the profile behind it.
    """
    unit = "loss / $L_{opt}$ (relative)" if result.relative else "predicted loss (nats/token)"
    frontier = result.frontier
    low, high = frontier["predicted_loss"].min(), max(result.target.loss, frontier["predicted_loss"].min())
    span = max(high - low, 1e-4)
    y_limits = (low - 0.5 * span, high + 2.5 * span)
    shown = result.candidates.loc[result.candidates["fits"], SPEED]
    zoom = _picks_overlap(result, float(shown.max() - shown.min()), y_limits[1] - y_limits[0])
    if zoom:
        fig, (left, middle, right) = plt.subplots(1, 3, figsize=(19, 5.8), gridspec_kw={"width_ratios": [1.25, 1, 1]})
    else:
        fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5.8))

    _candidate_clouds(left, result, counts=True)
    _picks(left, result, labelled=not zoom)
    if zoom:
        (x_low, x_high), (y_low, y_high) = _zoom_window(result)
        left.add_patch(matplotlib.patches.Rectangle((x_low, y_low), x_high - x_low, y_high - y_low, fill=False,
                                                    ec="black", lw=1, zorder=9, label="picks (enlarged in the middle)"))
    left.set_xlabel(throughput_label(spec, result))
    left.set_ylabel(unit)
    left.set_title(f"N = {si_count(spec.n)} non-embedding params, D = {si_count(spec.tokens)} tokens, "
                   f"{spec.n_layers} layers", fontsize=10)
    left.set_ylim(*y_limits)
    left.legend(fontsize=7.5, loc="upper left")
    left.grid(alpha=0.3)
    left.xaxis.set_major_formatter(matplotlib.ticker.EngFormatter(sep=""))

    if zoom:
        _candidate_clouds(middle, result, counts=False)
        middle.set_xlim(x_low, x_high)
        middle.set_ylim(y_low, y_high)
        _picks(middle, result, labelled=True)
        middle.set_xlabel("output tokens/s")
        middle.set_ylabel(unit)
        middle.set_title(f"the top {len(result.top_k)} enlarged", fontsize=10)
        middle.legend(fontsize=7.5, loc="upper left")
        middle.grid(alpha=0.3)
        middle.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(5))
        middle.xaxis.set_major_formatter(matplotlib.ticker.EngFormatter(sep=""))
        middle.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.4f"))

    _throughput_by_batch(right, result, spec, batch_sizes)
    return save(fig, path)


def _throughput_by_batch(ax: plt.Axes, result: Any, spec: Any, batch_sizes: tuple[int, ...]) -> None:
    """Estimated throughput against batch size for each pick and the reference; says so when the picks coincide."""
    import pandas as pd

    from archscale.cost.serving import Workload

    def curve(row: Mapping[str, Any]) -> list[float]:
        shape = pd.DataFrame([{k: row[k] for k in ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_head", "d_ff",
                                                   "vocab", "tie_embeddings")}])
        return [float(spec.estimate(shape, Workload(b, spec.workload.input_len, spec.workload.output_len)).iloc[0][SPEED])
                for b in batch_sizes]

    curves = []
    for index, row in enumerate(result.top_k.itertuples()):
        color, marker, style = pick_style(row.rank)
        values = curve(row._asdict())
        curves.append(values)
        # later picks drawn smaller on top, so coinciding lines stay visible
        ax.plot(batch_sizes, values, color=color, marker=marker, ls=style, ms=9 - 2 * min(index, 3), lw=2 - 0.4 * min(index, 2),
                label=f"#{row.rank}: d={row.d_model}, r={row.r:.2f}, GQA {row.gqa}", zorder=3 + index)
    reference = result.target.reference
    if reference:
        ax.plot(batch_sizes, curve(reference), marker="o", ls="--", color="black", label=f"reference: {reference['name']}")
    title = None
    if len(curves) > 1:
        spread = np.max(np.ptp(np.asarray(curves), axis=0) / np.max(np.asarray(curves), axis=0))
        if spread < 0.02:
            title = f"the {len(curves)} picks lie within {max(spread, 0.001):.1%} of each other (lines overlap)"
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size (concurrent requests)")
    ax.set_ylabel("estimated output tokens/s")
    ax.set_title(f"{source_on_device(spec, result)}, by batch size", fontsize=10)
    ax.legend(fontsize=7.5, title=title, title_fontsize=7.5, loc="upper left")
    ax.grid(alpha=0.3)
    ax.yaxis.set_major_formatter(matplotlib.ticker.EngFormatter(sep=""))


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

