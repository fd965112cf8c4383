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
import numpy as np  # noqa: E402

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
        if best is not None and np.isfinite(best):
            ax.axvline(best, color="tab:green", ls=":", label=f"optimum {best:.3g}")
        ax.set_xscale("log")
        ax.set_xlabel(labels[column])
        ax.set_ylabel(ylabel)
        ax.set_title(f"U-curve in {labels[column]}", fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)


def plot_study(study: Any, path: str | Path) -> Path:
    """The ``archscale fit --plot`` figure: predicted vs actual, plus U-curves for conditional laws."""
    conditional = study.fit.law.name in CONDITIONAL
    fig, axes = plt.subplots(1, 3 if conditional else 1, figsize=(15 if conditional else 6, 5), squeeze=False)
    axes = list(axes[0])
    title = f"{study.fit.law.name}: {study.fit.law.description}\n({study.fit.objective} fit on {study.fit.n_points} runs)"
    predicted_vs_actual(axes[0], study.frame["loss"], study.predicted, study.fit_mask, study.metrics, title)
    if conditional:
        _u_curve_panels(axes[1:], study)
    return save(fig, path)


def save(fig: plt.Figure, path: str | Path) -> Path:
    """Write a PNG (via a temporary file, so a failure leaves nothing half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=130)
    plt.close(fig)
    tmp.replace(path)
    return path
