"""The ``archscale search --plot`` figure: candidates, the Pareto frontier, the target and the picks, and each
pick's throughput against batch size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import matplotlib.patches
import matplotlib.ticker
import numpy as np

from archscale.io.figures import legend_below, plt, save, settle_legends, si_count


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
    limits = getattr(spec, "limits", None)
    batch = (f"batch {spec.workload.batch_size}" if limits is None
             else f"at most {spec.workload.batch_size} requests meeting {limits.describe()}")
    return (f"output tokens/s ({source_on_device(spec, result)}; {batch}, "
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
    ranked = shown["ranked"] if "ranked" in shown else shown["feasible"]
    infeasible, feasible = shown[~shown["feasible"]], shown[ranked]
    outside = shown[shown["feasible"] & ~ranked]
    unfit = int((~fits).sum())
    label = (lambda text, n: f"{text} ({n:,})") if counts else (lambda text, n: None)
    ax.scatter(infeasible[SPEED], infeasible["predicted_loss"], s=3, color="0.8", rasterized=True,
               label=label("over target", len(infeasible)))
    if len(outside):  # feasible by the law, but where its runs never were: counted, not ranked
        ax.scatter(outside[SPEED], outside["predicted_loss"], s=3, color="tab:orange", alpha=0.25, rasterized=True,
                   label=label("feasible, outside the fit's runs (not ranked)", len(outside)))
    ax.scatter(feasible[SPEED], feasible["predicted_loss"], s=3, color="tab:blue", alpha=0.4, rasterized=True,
               label=label("feasible, inside the fit's runs", len(feasible)) if len(outside) else label("feasible", len(feasible)))
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


def clipped_notes(candidates: Any, y_limits: tuple[float, float]) -> list[str]:
    """What the loss axis leaves out, one note per kind and side ("812 over-target candidates above the axis, not shown").

    The axis is fitted to the frontier and the target, so most over-target candidates of a small search lie above
    it; drawn points that fall outside say so rather than vanish.
    """
    shown = candidates[candidates["fits"]]
    loss = shown["predicted_loss"].to_numpy(float)
    notes = []
    for kind, rows in (("over-target", ~shown["feasible"].to_numpy(bool)), ("feasible", shown["feasible"].to_numpy(bool))):
        for side, outside in (("above", loss > y_limits[1]), ("below", loss < y_limits[0])):
            count = int((rows & outside).sum())
            if count:
                notes.append(f"{count:,} {kind} candidate{'s' if count != 1 else ''} {side} the axis, not shown")
    return notes


def _visible_speeds(result: Any, y_limits: tuple[float, float]) -> tuple[float, float]:
    """The throughput axis's range: what the loss axis shows, padded (candidates beyond it, counted in the legend,
    would otherwise crowd the points that are drawn into a corner)."""
    shown = result.candidates[result.candidates["fits"]]
    loss = shown["predicted_loss"]
    speeds = shown.loc[(loss >= y_limits[0]) & (loss <= y_limits[1]), SPEED].tolist()
    if result.target.reference:
        speeds.append(result.target.reference[SPEED])
    low, high = min(speeds), max(speeds)
    pad = 0.04 * max(high - low, 1e-3 * high)
    return low - pad, high + pad


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


BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
"""Batch sizes of the throughput-by-batch panel (concurrent requests, 1 to 256)."""


def plot_search(result: Any, spec: Any, path: str | Path, batch_sizes: tuple[int, ...] = BATCH_SIZES) -> Path:
    """The ``archscale search --plot`` figure, written as a PNG."""
    return save(draw_search(result, spec, batch_sizes), path)


def draw_search(result: Any, spec: Any, batch_sizes: tuple[int, ...] = BATCH_SIZES) -> plt.Figure:
    """The ``archscale search --plot`` figure.

    Left: predicted loss against throughput for every candidate that fits in
    memory (the count of those that do not is in the legend), the feasible set
    coloured, the Pareto frontier, the target loss, the matched reference and
    the picks; candidates beyond the loss axis are counted in the legend. When
    the picks lie too close to tell apart there (often within 1% of each
    other), a box marks them and a middle panel enlarges it. Those panels'
    legends sit below them, off the data. Right: estimated throughput against
    batch size for the picks and the reference (the search's throughput profile
    at each batch size), each pick in the same colour and marker in every
    panel. Throughput is output tokens/s, and the axes name the profile behind it.
    """
    unit = "loss / $L_{opt}$ (relative)" if result.relative else "predicted loss (nats/token)"
    frontier = result.frontier
    low, high = frontier["predicted_loss"].min(), max(result.target.loss, frontier["predicted_loss"].min())
    span = max(high - low, 1e-4)
    y_limits = (low - 0.5 * span, high + 2.5 * span)
    x_limits = _visible_speeds(result, y_limits)
    zoom = _picks_overlap(result, x_limits[1] - x_limits[0], y_limits[1] - y_limits[0])
    limited = getattr(spec, "limits", None) is not None
    ratios = [1.25] + ([1] if zoom else []) + [1] + ([1.1] if limited else [])
    fig, axes = plt.subplots(1, len(ratios), figsize=(6.5 * len(ratios) + 1, 7), gridspec_kw={"width_ratios": ratios})
    left, right = axes[0], axes[2 if zoom else 1]
    middle = axes[1] if zoom else None

    _candidate_clouds(left, result, counts=True)
    left.set_xlim(*x_limits)
    _picks(left, result, labelled=not zoom)
    if zoom:
        (x_low, x_high), (y_low, y_high) = _zoom_window(result)
        left.add_patch(matplotlib.patches.Rectangle((x_low, y_low), x_high - x_low, y_high - y_low, fill=False,
                                                    ec="black", lw=1, zorder=9, label="picks (enlarged in the middle)"))
    left.set_xlabel(throughput_label(spec, result))
    left.set_ylabel(unit)
    left.set_title(f"N = {si_count(spec.n)} non-embedding params, D = {si_count(spec.tokens)} tokens, "
                   f"{spec.layers_label} layers", fontsize=10)
    left.set_ylim(*y_limits)
    for note in clipped_notes(result.candidates, y_limits):
        left.plot([], [], " ", label=note)
    legend_below(left)
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
        legend_below(middle, ncol=1)
        middle.grid(alpha=0.3)
        middle.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(5))
        middle.xaxis.set_major_formatter(matplotlib.ticker.EngFormatter(sep=""))
        decimals = max(4, int(np.ceil(-np.log10(max(y_high - y_low, 1e-12)))) + 1)  # ticks that differ
        middle.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter(f"%.{decimals}f"))

    _throughput_by_batch(right, result, spec, batch_sizes)
    if limited:
        _per_user_per_device(axes[-1], result, spec, batch_sizes)
    settle_legends(fig)
    return fig


def _per_user_per_device(ax: plt.Axes, result: Any, spec: Any, batch_sizes: tuple[int, ...]) -> None:
    """Output tokens/s per user (1000 / TPOT) against output tokens/s per device as the batch grows, for each pick and
    the reference, with the TPOT limit and each shape's operating point: the curve serving engineers read."""
    from archscale.search.latency_limited import user_device_curve

    limits, label = spec.limits, spec.limits.statistic_label
    batches = np.unique(np.concatenate([np.asarray(batch_sizes), [spec.workload.batch_size]]))
    batches = batches[batches <= spec.workload.batch_size]
    shapes = [(f"#{row.rank}: d={row.d_model}, r={row.r:.2f}, GQA {row.gqa}", row._asdict(), pick_style(row.rank))
              for row in result.top_k.itertuples()]
    if result.target.reference:
        reference = result.target.reference
        shapes.append((f"reference: {reference['name']}", reference, ("black", "o", "--")))
    for index, (name, row, (color, marker, style)) in enumerate(shapes):
        curve = user_device_curve(spec.throughput_model, row, spec.workload, spec.tp, limits.statistic, batches)
        ax.plot(curve["per_user"], curve["per_device"], color=color, marker=marker, ls=style, ms=7 - min(index, 3),
                lw=1.6, label=name, zorder=3 + index)
        if "operating_batch" in row and bool(row.get("meets_limits", True)):
            point = user_device_curve(spec.throughput_model, row, spec.workload, spec.tp, limits.statistic,
                                      np.array([int(row["operating_batch"])]))
            ax.scatter(point["per_user"], point["per_device"], s=160, facecolors="none", edgecolors=color, lw=2,
                       zorder=10)
    ax.plot([], [], "o", mfc="none", mec="gray", ms=11, label="operating point (most requests meeting the limit)")
    if limits.tpot_ms is not None:
        ax.axvline(1e3 / limits.tpot_ms, color="crimson", ls=":", lw=1.5,
                   label=f"TPOT {label} <= {limits.tpot_ms:g} ms (right of the line)")
    ax.set_xscale("log")
    ax.set_xlabel(f"output tokens/s per user (1000 / TPOT {label} in ms)")
    ax.set_ylabel(f"output tokens/s per {spec.gpu.name} (replica / --tp {spec.tp})")
    ax.set_title(f"per user against per device, batch 1 to {spec.workload.batch_size}", fontsize=10)
    ax.legend(fontsize=7.5, loc="upper right")
    ax.grid(alpha=0.3, which="both")
    ax.yaxis.set_major_formatter(matplotlib.ticker.EngFormatter(sep=""))
    plain = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)


def _throughput_by_batch(ax: plt.Axes, result: Any, spec: Any, batch_sizes: tuple[int, ...]) -> None:
    """Estimated throughput against batch size for each pick and the reference; says so when the picks coincide."""
    import pandas as pd

    from archscale.serving.estimate import Workload

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


FAMILY_COLOURS = {"dense": "tab:blue", "MoE": "tab:orange"}
"""Each family's colour in the dense and MoE figure: its candidates and its picks."""
FRONTIER_COLOURS = {"dense": "navy", "MoE": "saddlebrown"}
"""Each family's frontier, darker than its cloud so that it shows on top of it."""
PICK_OFFSETS = ((9, 7), (9, -14), (-64, 7), (-64, -14))
"""Where the k-th pick's label sits (points), so that picks close together keep their labels apart."""


def plot_families(result: Any, spec: Any, path: str | Path) -> Path:
    """The dense and MoE search's figure (``search --plot`` with a joint law), written as a PNG."""
    return save(draw_families(result, spec), path)


def draw_families(result: Any, spec: Any) -> plt.Figure:
    """Predicted loss against throughput for the shapes each family may rank (they fit, and lie inside the fit's runs
    unless --extrapolate), each family's Pareto frontier, the target, and the picks labelled by family and experts."""
    from archscale.search.constrained import pareto_mask

    candidates = result.candidates
    rankable = candidates[candidates["fits"] & ((candidates["outside"] == 0) | spec.extrapolate)]
    fig, ax = plt.subplots(figsize=(8.5, 5.6))
    for family, colour in FAMILY_COLOURS.items():
        rows = rankable[rankable["family"] == family]
        if rows.empty:
            continue
        ax.scatter(rows[SPEED], rows["predicted_loss"], s=9, color=colour, alpha=0.35,
                   label=f"{family}: {len(rows):,} shapes that may be ranked")
        front = rows[pareto_mask(rows["predicted_loss"].to_numpy(), rows[SPEED].to_numpy())].sort_values(SPEED)
        low, high = front[SPEED].min(), front[SPEED].max()
        span = f"{low:,.0f}" if len(front) == 1 else f"{low:,.0f}-{high:,.0f}"
        # the shapes marked too: a frontier of one shape, or of a few close together, is otherwise hidden by a pick
        ax.plot(front[SPEED], front["predicted_loss"], color=FRONTIER_COLOURS[family], linewidth=1.4, zorder=5,
                marker="s", markersize=3,
                label=f"{family} frontier ({len(front)} shape{'s' if len(front) != 1 else ''}, {span} tok/s)")
    ax.axhline(result.target, color="black", linestyle="--", linewidth=1,
               label=f"target {result.target:.4f} ({result.target_source})")
    for row in result.picks.to_dict("records"):
        colour, moe = FAMILY_COLOURS[row["family"]], row["family"] == "MoE"
        ax.scatter([row[SPEED]], [row["predicted_loss"]], marker="D" if moe else "o", s=70, color=colour,
                   edgecolor="black", zorder=8)
        name = f"E{int(row['n_experts'])} k{int(row['experts_per_token'])}" if moe else "dense"
        ax.annotate(f"{name} #{row['rank']}", (row[SPEED], row["predicted_loss"]),
                    xytext=PICK_OFFSETS[(int(row["rank"]) - 1) % len(PICK_OFFSETS)], textcoords="offset points",
                    fontsize=8, color=FRONTIER_COLOURS[row["family"]], fontweight="bold", zorder=9,
                    bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "alpha": 0.8, "linewidth": 0})
    ax.set_xlabel(throughput_label(spec, spec))  # the spec carries the profile the estimates came from
    ax.set_ylabel("predicted loss (nats/token, the law's units)")
    ax.set_title(f"dense and MoE at {si_count(spec.n)} active, {si_count(spec.tokens)} tokens: picks are the fastest "
                 "that meet the target", fontsize=10)
    ax.grid(alpha=0.3)
    legend_below(ax, ncol=2)
    return fig
