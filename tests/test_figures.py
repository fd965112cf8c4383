"""What the --plot figures show, read from their matplotlib artists (not pixels): the outliers the text flags, the
formula of the law actually fitted, legends off the data, and a count of what the loss axis leaves out."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

import archscale.fit.plots
import archscale.search.plots
from archscale.fit.study import run_study
from archscale.io.figures import covered_points
from conftest import DATA
from test_laws_gqa import CHINCHILLA, TRUE_C, synthetic_runs
from test_selection import contaminated_runs

MINI_STUDY_FIT = DATA.parent / "experiments" / "results" / "cpu_mini_study" / "cond.json"
MINI_STUDY_RUNS = MINI_STUDY_FIT.with_name("runs.csv")
TINY_SEARCH = ("--fit", MINI_STUDY_FIT, "--n", "200K", "--tokens", "1.5M", "--layers", "4", "--head-dim", "16",
               "--vocab", "256", "--d-multiple", "16", "--ff-multiple", "16", "--gqa", "1,2", "--batch", "8",
               "--input-len", "64", "--output-len", "16", "--slack", "0.05", "--top-k", "2")
SEARCH_1B = ("--fit", DATA / "fits" / "dissertation_1b_mult.json", "--n", "1e9", "--tokens", "1e11", "--layers", "16",
             "--head-dim", "64", "--match", "llama-3.2-1b", "--gpu", "h200", "--batch", "64", "--input-len", "4096",
             "--output-len", "1024", "--top-k", "3")


@pytest.fixture
def drawn(monkeypatch):
    """The figures the CLI draws, as saved (laid out, then written): ``drawn(module, "draw_search")`` -> list."""

    def capture(module, name: str) -> list:
        figures, draw = [], getattr(module, name)

        def keep(*args, **kwargs):
            figures.append(draw(*args, **kwargs))
            return figures[-1]

        monkeypatch.setattr(module, name, keep)
        return figures

    return capture


def texts(ax) -> list[str]:
    """Every word a reader sees on one panel: title, axis labels, legend entries and notes."""
    legend = ax.get_legend()
    return ([ax.get_title(), ax.get_xlabel(), ax.get_ylabel()] + [t.get_text() for t in ax.texts]
            + ([t.get_text() for t in legend.get_texts()] if legend else []))


def points_under_legend(ax) -> int:
    """How many drawn data points the panel's legend covers, at the layout the figure was saved with."""
    canvas = FigureCanvasAgg(ax.figure)  # closed once saved: draw it again to measure it
    canvas.draw()
    return covered_points(ax, ax.get_legend().get_window_extent(canvas.get_renderer()))


def test_fit_plot_rings_the_outliers_its_text_flags(cli, tmp_path, drawn):
    runs, out = tmp_path / "runs.csv", tmp_path / "fit.json"
    contaminated_runs().to_csv(runs, index=False)
    figures = drawn(archscale.fit.plots, "draw_study")
    result = cli("fit", runs, "--law", "chinchilla", "--loss", "huber", "--min-tokens-per-param", "1",
                 "--out", out, "--plot", tmp_path / "fit.png")
    assert result.code == 0, result.err
    assert "outliers:" in result.out and "row 4 " in result.out and "row 41 " in result.out
    flagged = json.loads(out.read_text())["hygiene"]["outliers"]
    (ax,) = figures[0].axes
    legend = ax.get_legend()
    entry = next(t.get_text() for t in legend.get_texts() if t.get_text().startswith("outliers"))
    assert "rows 4, 41" in entry
    # the ringed marks are those runs: their measured losses, and nothing else
    rings = next(c for c in ax.collections if c.get_label() == entry)
    assert sorted(rings.get_offsets()[:, 0]) == pytest.approx(sorted(o["loss"] for o in flagged))
    assert points_under_legend(ax) == 0
    assert rings.get_facecolor().size == 0 or rings.get_facecolor()[0][3] == 0  # a ring, not a dot over the dot


def test_every_panel_rings_the_outliers_and_no_legend_hides_a_run(cli, tmp_path, drawn):
    """The mini study's conditional fit: a corner legend would hide an outlier in the x-factor panel."""
    figures = drawn(archscale.fit.plots, "draw_study")
    result = cli("fit", MINI_STUDY_RUNS, "--law", "conditional-mult", "--loss", "lsq", "--plot", tmp_path / "fit.png")
    assert result.code == 0, result.err
    rows = re.findall(r"row (\d+) \(loss", result.out)
    assert rows
    for ax in figures[0].axes:
        entry = next(t for t in texts(ax) if t.startswith("outlier"))
        assert entry.endswith(", ".join(rows))
        rings = next(c for c in ax.collections if c.get_label() == entry)
        assert len(rings.get_offsets()) == len(rows)
        assert points_under_legend(ax) == 0, ax.get_title()


@pytest.mark.parametrize("law, own, foreign", [
    ("aspect-tied", ("(E + A N^-a + B D^-a)", "1 + eps R^a"), ("alpha", "beta", "gamma")),
    ("aspect", ("(E + A N^-alpha + B D^-beta)", "1 + eps R^gamma"), ("N^-a ", "R^a ")),
])
def test_every_fit_panel_names_the_law_actually_fitted(cli, tmp_path, drawn, law, own, foreign):
    figures = drawn(archscale.fit.plots, "draw_study")
    result = cli("fit", DATA / "aspect_ratio_morph.csv", "--law", law, "--loss", "lsq", "--plot", tmp_path / "fit.png")
    assert result.code == 0, result.err
    overview, penalty = figures[0].axes
    assert overview.get_title().startswith(f"{law}: ")
    words = " ".join(texts(penalty)) + " "
    assert law in penalty.get_title() and all(term in words for term in own)
    assert not [term for term in foreign if term in words], words
    assert [points_under_legend(ax) for ax in figures[0].axes] == [0, 0]


def test_a_gqa_laws_factor_panels_take_the_gqa_factor_out(drawn):
    """The x-factor panel shows loss / (L_opt g(r) h(gqa)): on the law's own runs its points sit on the curve."""
    from archscale.fit.fitted import FittedLaw
    from archscale.laws import get_law

    reference = FittedLaw(get_law("chinchilla"), CHINCHILLA)
    study = run_study(synthetic_runs(TRUE_C), "conditional-mult-gqa", "lsq", reference=reference)
    figure = archscale.fit.plots.draw_study(study)
    overview, x_panel, _ = figure.axes
    assert "\n(a0 + a1 log x" in overview.get_title()  # too long for one line above the panel: the formula gets its own
    assert "GQA factor" in x_panel.get_ylabel()
    points = x_panel.collections[0].get_offsets()
    curve = next(line for line in x_panel.lines if line.get_label().startswith("fitted a0 + a1 log x + a2/x"))
    on_curve = np.interp(np.log(points[:, 0]), np.log(curve.get_xdata()), curve.get_ydata())
    assert np.max(np.abs(points[:, 1] / on_curve - 1)) < 0.006  # the noise; GQA 8 left in would be 2.5% off


@pytest.mark.parametrize("args", [TINY_SEARCH, SEARCH_1B], ids=["tiny", "1b"])
def test_search_plot_legends_cover_no_point_and_clipped_candidates_are_counted(cli, tmp_path, drawn, args):
    figures = drawn(archscale.search.plots, "draw_search")
    result = cli("search", *args, "--plot", tmp_path / "search.png")
    assert result.code == 0, result.err
    figure = figures[0]
    scatter_panels = figure.axes[:-1]  # overview (and the enlarged picks); the last is throughput by batch size
    for ax in figure.axes:
        assert points_under_legend(ax) == 0, ax.get_title()
    left = scatter_panels[0]
    over_target = next(c for c in left.collections if c.get_label().startswith("over target"))
    above = int((over_target.get_offsets()[:, 1] > left.get_ylim()[1]).sum())
    assert above > 0
    notes = [t for t in texts(left) if "above the axis, not shown" in t]
    assert notes == [f"{above:,} over-target candidates above the axis, not shown"]


def test_the_fit_plot_shows_the_runs_the_chosen_floor_left_out(cli, tmp_path, drawn):
    """Wings left out by the floor selection chose are drawn (hollow triangles), not silently gone."""
    figures = drawn(archscale.fit.plots, "draw_study")
    out = tmp_path / "fit.json"
    result = cli("fit", DATA / "chinchilla_isoflops_epoch.csv", "--out", out, "--plot", tmp_path / "fit.png")
    assert result.code == 0, result.err
    hygiene = json.loads(out.read_text())["hygiene"]
    (ax,) = figures[0].axes
    label = f"left out: D/N below {hygiene['min_tokens_per_param']:g} ({hygiene['dropped_undertrained']}; not fitted, not scored)"
    assert label in texts(ax)
    wings = next(c for c in ax.collections if c.get_label() == label)
    assert len(wings.get_offsets()) == hygiene["dropped_undertrained"] > 0
    assert points_under_legend(ax) == 0
