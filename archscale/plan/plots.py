"""The ``archscale plan --plot`` figure: isoFLOP profiles and the compute-optimal frontier."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from archscale.io.figures import plt, save
from archscale.io.units import format_count


def plot_isoflops(frontier: Any, law: Any, budgets: list[float], path: str | Path, title: str = "", surface: Any = None) -> Path:
    """The ``archscale plan --plot`` figure: isoFLOP profiles and the compute-optimal frontier.

    Left: loss against N for each budget (one colour per budget), the fitted parabolas over the runs each was
    fitted to (filled points; hollow ones lie outside the window near the minimum), and their minima (stars);
    held-out budgets drawn with crosses, budgets left out (no bracketed minimum) in grey. Right: N* and D*
    against C on log axes, the Approach 2 power laws through the minima with their 95% bootstrap band, the
    extrapolation to the planned budgets (dashed, with the planned points), Approach 3's N*(C) and D*(C)
    (dash-dot) and the fitted law's (dotted) when there are.
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
        inside = profile.fitted
        left.scatter(runs_n[inside], runs_loss[inside], s=16, marker=marker, color=colour, alpha=0.85, label=label)
        if (~inside).any():
            left.scatter(runs_n[~inside], runs_loss[~inside], s=16, marker=marker, facecolors="none" if marker == "o" else colour,
                         edgecolors=colour, alpha=0.6, lw=0.8)
        if profile.parabola is not None:
            grid = np.geomspace(*profile.window_range, 100)
            left.plot(grid, profile.parabola(np.log(grid)), color=colour, lw=1.2, ls="--" if profile.role == "excluded" else "-")
        if profile.n_opt is not None:
            left.scatter([profile.n_opt], [profile.loss_opt], marker="*", s=160, color=colour, edgecolor="black", zorder=5)
    left.scatter([], [], marker="*", s=120, color="white", edgecolor="black", label="parabola minimum N*")
    if any((~p.fitted).any() for p in frontier.profiles):
        left.scatter([], [], marker="o", s=16, facecolors="none", edgecolors="black", label="outside the window near the minimum")
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
    if surface is not None and not surface.problem:
        grid = np.geomspace(span_low, span_high, 100)
        n_surface, d_surface = surface.curve(grid)
        band = (surface.intervals or {}).get("a")
        text = f", 95% CI {band[0]:.3f}-{band[1]:.3f}" if band else ""
        right.plot(grid, n_surface, color="tab:purple", lw=1.4, ls="-.", label=f"Approach 3: N* ~ C^{surface.a:.3f}{text}")
        right.plot(grid, d_surface, color="tab:brown", lw=1.4, ls="-.", label=f"Approach 3: D* ~ C^{surface.b:.3f}")
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
    right.set_title("compute-optimal frontier\n(points: each profile's minimum; bars: 95% bootstrap interval)", fontsize=10)
    right.legend(fontsize=8, loc="upper left")
    right.grid(alpha=0.3, which="both")
    return save(fig, path)
