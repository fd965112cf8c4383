"""The ``archscale fit --plot`` figure: predicted against measured loss, and each architecture factor of a shape law.

Conventions follow the dissertation's figures: points used for fitting are dots, held-out points are crosses,
and the identity line marks a perfect prediction. The runs ``archscale fit`` flags as outliers are ringed in red
in every panel, and each panel's labels are the fitted law's own terms.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from archscale.fit.hygiene import MAX_FLAGGED_SHOWN, OUTLIER_Z
from archscale.io.figures import log_x, plt, save, settle_legends
from archscale.laws import CONDITIONAL, MULTIPLICATIVE, Law, u_factor


FIT_COLOR, HOLDOUT_COLOR, OUTLIER_COLOR = "tab:orange", "tab:purple", "tab:red"

Marked = tuple[np.ndarray, str]
"""Runs to ring in every panel: a mask over the study's rows and its legend entry (the flagged outliers)."""


def law_terms(law: Law) -> list[str]:
    """The bracketed terms of the fitted law's formula, as its description (and the title) writes them.

    ``(E + A N^-a + B D^-a)(1 + eps R^a)`` gives the size term and the shape penalty; a conditional law gives
    its x-, r- (and GQA) factors. Panels take their labels from here, so each names the law actually fitted.
    """
    return re.findall(r"\(([^()]*)\)", law.description)


def flagged_outliers(study: Any) -> Marked | None:
    """The runs ``archscale fit`` prints as outliers (by file row), as a mask over ``study.frame``, with a legend entry."""
    outliers = getattr(study, "outliers", None) or []
    rows = getattr(study, "rows", None)
    if not outliers or rows is None:
        return None
    mask = np.isin(np.asarray(rows), [o["row"] for o in outliers])
    shown = ", ".join(str(o["row"]) for o in outliers[:MAX_FLAGGED_SHOWN])
    more = f" and {len(outliers) - MAX_FLAGGED_SHOWN} more" if len(outliers) > MAX_FLAGGED_SHOWN else ""
    return mask, (f"outlier{'s' if len(outliers) != 1 else ''} (> {OUTLIER_Z:g} robust SD from a Huber fit): "
                  f"row{'s' if len(outliers) != 1 else ''} {shown}{more}")


def _ring(ax: plt.Axes, x: Any, y: Any, marked: Marked | None) -> None:
    """A red ring around each flagged run, drawn over its dot or cross, with one legend entry."""
    if marked is None or not marked[0].any():
        return
    mask, label = marked
    ax.scatter(np.asarray(x)[mask], np.asarray(y)[mask], s=110, facecolors="none", edgecolors=OUTLIER_COLOR,
               linewidths=1.6, zorder=6, clip_on=False, label=label)


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
                        excluded: Sequence[tuple[np.ndarray, np.ndarray, str, str]] = (), marked: Marked | None = None) -> None:
    """Predicted against measured loss: fit rows as dots, held-out rows as crosses, rows left out (``excluded``:
    measured, predicted, label and marker per group: by --where, below the floor on tokens per parameter) as grey
    hollow markers, and the ``marked`` rows (the flagged outliers) in red rings.

    The scores go in the legend, which is placed where it covers no point.
    """
    actual, predicted, fit_mask = map(np.asarray, (actual, predicted, fit_mask))
    every = [actual, predicted] + [values for group in excluded for values in group[:2]]
    low = min(float(np.min(v)) for v in every)
    high = max(float(np.max(v)) for v in every)
    pad = 0.03 * (high - low or 1)
    ax.plot([low - pad, high + pad], [low - pad, high + pad], color="0.6", lw=1, ls="--", label="perfect prediction")
    ax.scatter(actual[fit_mask], predicted[fit_mask], s=18, color=FIT_COLOR,
               label=f"fit ({fit_mask.sum()})\n{_metric_text(metrics.get('fit'))}")
    if (~fit_mask).any():
        ax.scatter(actual[~fit_mask], predicted[~fit_mask], s=50, marker="x", color=HOLDOUT_COLOR,
                   label=f"held out ({(~fit_mask).sum()})\n{_metric_text(metrics.get('holdout'))}")
    for measured, estimated, label, marker in excluded:
        ax.scatter(measured, estimated, s=22, marker=marker, facecolors="none", edgecolors="0.45",
                   label=f"{label} ({len(measured)}; not fitted, not scored)")
    _ring(ax, actual, predicted, marked)
    ax.set_xlim(low - pad, high + pad)
    ax.set_ylim(low - pad, high + pad)
    ax.set_xlabel("measured loss (nats/token)")
    ax.set_ylabel("predicted loss (nats/token)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)


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


def _u_curve_panels(axes: list[plt.Axes], study: Any, marked: Marked | None = None) -> None:
    """For conditional laws: each factor's fitted curve over the measured losses with every other term removed.

    The other terms are taken out of the study's own prediction, so a GQA law's factor goes too.
    """
    law, params = study.fit.law, study.fit.params
    frame = study.frame
    inputs = {c: frame[c].to_numpy(float) for c in ("x", "r")}
    loss, predicted = frame["loss"].to_numpy(float), np.asarray(study.predicted, float)
    multiplicative = law.name in MULTIPLICATIVE
    terms = dict(zip(("x", "r"), law_terms(law)))
    gqa = " x GQA factor" if "gqa" in law.columns else ""
    b0 = params.get("b0", 0.0)
    factor = {
        "x": lambda v: u_factor(params["a0"], params["a1"], params["a2"], v),
        "r": lambda v: u_factor(b0, params["b1"], params["b2"], v),
    }
    other = {"x": "r", "r": "x"}
    labels = {"x": "$d_{model}/\\sqrt{N}$", "r": "$r_{mlp/attn}$"}
    for ax, column in zip(axes, ("x", "r")):
        own = factor[column](inputs[column])
        if multiplicative:
            measured = loss * own / predicted
            ylabel = f"loss / ($L_{{opt}}$ x {other[column]}-factor{gqa})"
        else:
            measured = loss - predicted + own
            ylabel = f"loss - $L_{{opt}}$ - {other[column]}-factor"
        mask = study.fit_mask
        ax.scatter(inputs[column][mask], measured[mask], s=14, color=FIT_COLOR, label="fit runs")
        if (~mask).any():
            ax.scatter(inputs[column][~mask], measured[~mask], s=40, marker="x", color=HOLDOUT_COLOR, label="held out")
        _ring(ax, inputs[column], measured, marked)
        low, high = inputs[column].min() * 0.9, inputs[column].max() * 1.1
        best = study.fitted.optimum().get(column)
        grid = np.geomspace(low, high, 200)
        curve = factor[column](grid)
        ax.plot(grid, curve, color="black", lw=1.5, label=f"fitted {terms.get(column, column + '-factor')}")
        where = _optimum_marker(ax, best, low, high, column)
        log_x(ax, low, high)
        ax.set_xlabel(labels[column])
        ax.set_ylabel(ylabel)
        inside = best is not None and np.isfinite(best) and low <= best <= high
        shape = "U-curve" if inside else ("falling" if best is not None and best > high else "rising") + " factor"
        ax.set_title(f"{shape} in {labels[column]}" + ("" if inside else " (minimum outside these runs)"), fontsize=10)
        ax.legend(fontsize=7, loc=where)
        ax.grid(alpha=0.3)


def _aspect_panel(ax: plt.Axes, study: Any, marked: Marked | None = None) -> None:
    """For the aspect-ratio laws: the shape penalty over the measured losses with the size term removed.

    Its labels are the fitted law's own terms (``aspect-tied`` ties every exponent to one ``a``).
    """
    law, params, frame = study.fit.law, study.fit.params, study.frame
    size_term, penalty = law_terms(law)
    ratio = frame["R"].to_numpy(float)
    gamma = law.gamma(params)
    measured = frame["loss"].to_numpy(float) * (1 + params["eps"] * ratio ** gamma) / np.asarray(study.predicted, float)
    mask = study.fit_mask
    ax.scatter(ratio[mask], measured[mask], s=14, color=FIT_COLOR, label="fit runs")
    if (~mask).any():
        ax.scatter(ratio[~mask], measured[~mask], s=40, marker="x", color=HOLDOUT_COLOR, label="held out")
    _ring(ax, ratio, measured, marked)
    low, high = ratio.min() * 0.9, ratio.max() * 1.1
    grid = np.geomspace(low, high, 200)
    ax.plot(grid, 1 + params["eps"] * grid ** gamma, color="black", lw=1.5,
            label=f"fitted {penalty} (eps {params['eps']:.3g}, exponent {gamma:.3g})")
    log_x(ax, low, high)
    ax.set_xlabel("aspect ratio R = d_model / n_layers")
    ax.set_ylabel(f"loss / ({size_term})")
    ax.set_title(f"{law.name}: shape penalty {penalty}", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


TITLE_WIDTH = 72
"""Characters of "law: formula" that fit above the first panel; a longer formula (the GQA laws') gets its own line."""


def plot_study(study: Any, path: str | Path) -> Path:
    """The ``archscale fit --plot`` figure, written as a PNG."""
    return save(draw_study(study), path)


def draw_study(study: Any) -> plt.Figure:
    """Predicted vs actual, plus each architecture factor for shape laws, every panel labelled with the law fitted
    and the flagged outliers ringed."""
    law_name = study.fit.law.name
    extra = 2 if law_name in CONDITIONAL else 1 if law_name.startswith("aspect") else 0
    fig, axes = plt.subplots(1, 1 + extra, figsize=(6 + 4.5 * extra, 5), squeeze=False)
    axes = list(axes[0])
    formula = f"{law_name}: {study.fit.law.description}"
    if len(formula) > TITLE_WIDTH:
        formula = f"{law_name}:\n{study.fit.law.description}"
    title = f"{formula}\n({study.fit.objective} fit on {study.fit.n_points} runs)"
    marked = flagged_outliers(study)
    predicted_vs_actual(axes[0], study.frame["loss"], study.predicted, study.fit_mask, study.metrics, title,
                        _excluded_points(study), marked)
    if law_name in CONDITIONAL:
        _u_curve_panels(axes[1:], study, marked)
    elif extra:
        _aspect_panel(axes[1], study, marked)
    settle_legends(fig)
    return fig


def _excluded_points(study: Any) -> list[tuple[np.ndarray, np.ndarray, str, str]]:
    """(measured, predicted, label, marker) for the rows ``--where`` left out and for those below the floor on tokens
    per parameter, each group only when it has rows the law can predict.

    Conditional laws with the empirical ``L_opt`` take it per (N, D) level over
    all rows, so a left-out row is compared with the best run of its level.
    """
    import pandas as pd

    from archscale.io.errors import UserError
    from archscale.fit.fitted import law_inputs

    floor = study.hygiene.get("min_tokens_per_param")
    groups = [(getattr(study, "excluded", None), "left out by --where", "o"),
              (getattr(study, "undertrained", None), f"left out: D/N below {floor:g}" if floor else "", "^")]
    law, points = study.fit.law, []
    for rows, label, marker in groups:
        if rows is None or rows.empty:
            continue
        every = pd.concat([study.frame, rows], ignore_index=True)
        try:
            inputs = law_inputs(law, every, study.fitted.reference, study.source)
        except UserError:  # the left-out rows lack a column the law needs: nothing to place
            continue
        predicted = law.predict(study.fit.params, inputs)[len(study.frame):]
        points.append((rows["loss"].to_numpy(float), np.asarray(predicted, float), label, marker))
    return points
