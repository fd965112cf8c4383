"""The one figure style every stage draws with: a headless backend, plain-number log axes, counts as the
tables print them, and an atomic PNG save (a failure leaves nothing half-written).

Each stage draws its own figures beside its code (:mod:`archscale.fit.plots`, :mod:`archscale.plan.plots`,
:mod:`archscale.search.plots`); the numbers come from the library, the drawing from there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import matplotlib.legend  # noqa: E402
import matplotlib.transforms  # noqa: E402
import numpy as np  # noqa: E402

from archscale.io.files import atomic_file  # noqa: E402


LOG_TICK_STEPS = ((1.0,), (1.0, 2.0, 5.0), (1.0, 2.0, 3.0, 5.0), (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0),
                  (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0))
"""Tick mantissas tried in turn on a log axis until enough ticks fall inside the data's range."""


def log_x(ax: plt.Axes, low: float, high: float, min_ticks: int = 4) -> None:
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


LEGEND_DROP_IN = 0.5
"""How far under its axes (inches) a legend below the data starts: clear of the tick labels and a one-line x label."""


def legend_below(ax: plt.Axes, ncol: int = 2, fontsize: float = 7.5, **kwargs: Any) -> matplotlib.legend.Legend:
    """The axes' legend under its x label, where it covers no data however the points fall.

    A legend inside a dense scatter hides points whichever corner it takes; the offset is fixed in inches, so it
    stays clear of the x label whatever height the layout leaves the axes.
    """
    offset = matplotlib.transforms.ScaledTranslation(0, -LEGEND_DROP_IN, ax.figure.dpi_scale_trans)
    return ax.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), bbox_transform=ax.transAxes + offset,
                     ncol=ncol, fontsize=fontsize, **kwargs)


def covered_points(ax: plt.Axes, box: matplotlib.transforms.Bbox) -> int:
    """How many of the axes' drawn data points (scatter marks, line vertices, inside the axes) a display-space box covers."""
    inside = ax.get_window_extent()
    shown = [c.get_offset_transform().transform(np.asarray(c.get_offsets(), float).reshape(-1, 2)) for c in ax.collections]
    shown += [line.get_transform().transform(np.asarray(line.get_xydata(), float).reshape(-1, 2)) for line in ax.lines]
    xy = np.concatenate(shown) if shown else np.empty((0, 2))
    x, y = xy[:, 0], xy[:, 1]
    drawn = (x >= inside.x0) & (x <= inside.x1) & (y >= inside.y0) & (y <= inside.y1)
    return int((drawn & (x >= box.x0) & (x <= box.x1) & (y >= box.y0) & (y <= box.y1)).sum())


def settle_legends(fig: plt.Figure) -> None:
    """At the figure's final layout, move under its axes every legend that covers a data point.

    matplotlib's "best" only minimises the overlap, and a corner chosen to keep clear of a curve can still hide
    a run; checked once the panels have their final size, such a legend goes under the x label instead.
    """
    fig.tight_layout()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is None or not covered_points(ax, legend.get_window_extent(renderer).padded(3)):
            continue
        fontsize, title = legend.get_texts()[0].get_fontsize(), legend.get_title().get_text() or None
        legend.remove()
        legend_below(ax, ncol=1, fontsize=fontsize, title=title, title_fontsize=fontsize)


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
