"""The range of shapes a fit's runs cover, and which candidates lie outside it.

A law predicts well only where its runs were: a conditional law fitted on GQA-4 runs has no GQA term, so it
gives every GQA variant of a shape the same loss, and a search that trusts it takes the largest group allowed.
The fit therefore records, per coordinate, the smallest and largest value its runs had (``coverage`` in the fit
JSON), and the search labels a candidate outside that box an extrapolation, naming the coordinate.

Coordinates: ``x`` = d_model / sqrt(N), ``r`` = MLP-to-attention ratio, ``gqa`` = query heads per KV head,
``n_layers`` = depth; for Mixture-of-Experts runs also ``expansion`` = E / k (1 for a dense run), ``experts_per_token``
= k (1 for a dense run) and ``G`` = the granularity (MoE rows only); ``q_width`` = n_heads d_head / d_model, the
attention's width against the residual stream's (1 in a standard Llama). A coordinate is recorded only when the runs
table has what it needs.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import pandas as pd

from archscale.io.errors import UserError
from archscale.shapes.moe_candidates import dense_reference_d_ff

COORDINATES = {
    "x": "d_model/sqrt(N)",
    "r": "r (MLP-to-attention ratio)",
    "gqa": "GQA (query heads per KV head)",
    "n_layers": "depth (layers)",
    "expansion": "expansion E/k (routed experts per expert a token uses)",
    "experts_per_token": "experts per token k",
    "G": "granularity G (4 d_model / expert width)",
    "q_width": "query width n_heads d_head / d_model",
}
"""Each coordinate a fit's coverage may record, with the name the output gives it."""

RELATIVE_SLACK = 0.02
"""A candidate within 2% of a bound is inside: the published tables print x and r to two or three digits."""


def past(value: Any, high: float) -> Any:
    """Whether ``value`` (a number or an array) lies past a range's ``high`` bound by more than :data:`RELATIVE_SLACK`."""
    return value > high * (1 + RELATIVE_SLACK)


def under(value: Any, low: float) -> Any:
    """Whether ``value`` (a number or an array) lies under a range's ``low`` bound by more than :data:`RELATIVE_SLACK`."""
    return value < low * (1 - RELATIVE_SLACK)


def coordinates_of(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Each coordinate the table holds, directly or from its shape columns."""
    values: dict[str, np.ndarray] = {}
    columns = set(frame.columns)
    if "x" in columns:
        values["x"] = frame["x"].to_numpy(float)
    elif {"d_model", "N"} <= columns:
        values["x"] = frame["d_model"].to_numpy(float) / np.sqrt(frame["N"].to_numpy(float))
    if "r" in columns:
        values["r"] = frame["r"].to_numpy(float)
    if "gqa" in columns:
        values["gqa"] = frame["gqa"].to_numpy(float)
    elif {"n_heads", "n_kv_heads"} <= columns:
        values["gqa"] = frame["n_heads"].to_numpy(float) / frame["n_kv_heads"].to_numpy(float)
    if "n_layers" in columns:
        values["n_layers"] = frame["n_layers"].to_numpy(float)
    if {"n_heads", "d_head", "d_model"} <= columns:
        values["q_width"] = (frame["n_heads"].to_numpy(float) * frame["d_head"].to_numpy(float)
                             / frame["d_model"].to_numpy(float))
    values.update(_expert_coordinates(frame))
    return {k: v for k, v in values.items() if np.isfinite(v).any()}


def expansion_of(frame: pd.DataFrame) -> np.ndarray:
    """E / k per row, 1 for a dense row (``n_experts`` empty, 0 or 1): the joint MoE law's expert count."""
    experts = pd.to_numeric(frame["n_experts"], errors="coerce").to_numpy(float)
    moe = experts > 1
    k = pd.to_numeric(frame["experts_per_token"], errors="coerce").to_numpy(float)
    return np.where(moe, experts / np.where(moe, k, 1.0), 1.0)


def _expert_coordinates(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """``expansion``, ``experts_per_token`` and ``G`` of a table with an ``n_experts`` column (dense rows: E = k = 1,
    no G), as the joint MoE law reads them (:func:`archscale.fit.runs.derive`)."""
    if "n_experts" not in frame.columns:
        return {}
    experts = pd.to_numeric(frame["n_experts"], errors="coerce").to_numpy(float)
    dense = ~(experts > 1)
    values: dict[str, np.ndarray] = {}
    if "experts_per_token" in frame.columns:
        k = pd.to_numeric(frame["experts_per_token"], errors="coerce").to_numpy(float)
        values["experts_per_token"] = np.where(dense, 1.0, k)
        values["expansion"] = expansion_of(frame)
    if "G" in frame.columns:
        values["G"] = np.where(dense, np.nan, pd.to_numeric(frame["G"], errors="coerce").to_numpy(float))
    elif {"d_model", "expert_d_ff"} <= set(frame.columns):
        width = pd.to_numeric(frame["expert_d_ff"], errors="coerce").to_numpy(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            values["G"] = np.where(dense, np.nan, dense_reference_d_ff(frame["d_model"].to_numpy(float)) / width)
    return values


def coverage_of(frame: pd.DataFrame) -> dict[str, list[float]]:
    """``{coordinate: [low, high]}`` over the rows a law was fitted on."""
    return {name: [float(np.nanmin(v)), float(np.nanmax(v))] for name, v in coordinates_of(frame).items()}


def coverage_from_json(block: Any, source: str) -> dict[str, list[float]] | None:
    """The ``coverage`` block of a fit JSON (None when the fit records none: written before coverage existed)."""
    return _ranges_from_json(block, "coverage", tuple(COORDINATES), source)


def _ranges_from_json(block: Any, key: str, names: tuple[str, ...], source: str) -> dict[str, list[float]] | None:
    """``{name: [low, high]}`` from a fit JSON block, each checked (finite, low <= high); other keys ride along."""
    if block is None:
        return None
    if not isinstance(block, Mapping):
        raise UserError(f"{source}: {key!r} must map {', '.join(names)} to [low, high]")
    ranges: dict[str, list[float]] = {}
    for name in names:
        if name not in block:
            continue
        try:
            low, high = (float(b) for b in block[name])
        except (TypeError, ValueError):
            raise UserError(f"{source}: {key} {name!r} must be [low, high], got {block[name]!r}") from None
        if not (math.isfinite(low) and math.isfinite(high) and low <= high):
            raise UserError(f"{source}: {key} {name!r} must be finite with low <= high, got {block[name]!r}")
        ranges[name] = [low, high]
    return ranges


def outside_coverage(candidates: pd.DataFrame, coverage: Mapping[str, list[float]],
                     checked: tuple[str, ...] = tuple(COORDINATES)) -> np.ndarray:
    """Per candidate, a bit mask of the coordinates outside the fit's runs (0 when inside).

    Bit ``i`` stands for the i-th coordinate of :data:`COORDINATES`; :func:`outside_label` spells a mask out.
    One vectorised comparison per coordinate, so a million candidates cost milliseconds.
    """
    values = coordinates_of(candidates)
    mask = np.zeros(len(candidates), dtype=np.int64)
    for bit, name in enumerate(COORDINATES):
        if name not in checked or name not in coverage or name not in values:
            continue
        low, high = coverage[name]
        value = values[name]
        mask |= ((under(value, low) | past(value, high)) * (1 << bit)).astype(np.int64)
    return mask


def outside_label(row: Mapping[str, Any], mask: int, coverage: Mapping[str, list[float]],
                  bounds: Mapping[str, str] | None = None) -> str:
    """``"gqa 16 (runs 4)"``: the coordinates of one candidate that lie outside the fit's runs, "" when none.

    ``bounds`` replaces the ``runs 4`` text of a coordinate whose range is not the runs' (GQA held at one group).
    """
    values = coordinates_of(pd.DataFrame([dict(row)]))
    bounds = bounds or {}
    parts = [f"{name} {float(values[name][0]):.3g} ({bounds.get(name) or 'runs ' + _span(*coverage[name])})"
             for bit, name in enumerate(COORDINATES) if int(mask) >> bit & 1 and name in values]
    return "; ".join(parts)


def outside_names(mask: int) -> list[str]:
    """The coordinate names set in a mask."""
    return [name for bit, name in enumerate(COORDINATES) if int(mask) >> bit & 1]


def optimum_outside(optimum: Mapping[str, float], coverage: Mapping[str, list[float]] | None) -> str:
    """``"x* outside the runs' x 0.0717-0.274: an extrapolation"`` for a law's closed-form optimum whose coordinates
    lie outside the fit's runs ("" inside, or with no coverage): the law's minimum there is where its curve turns,
    not a loss any run measured."""
    out = [f"{name}* outside the runs' {name} {_span(*coverage[name])}" for name, value in optimum.items()
           if coverage and name in coverage and math.isfinite(value)
           and (under(value, coverage[name][0]) or past(value, coverage[name][1]))]
    return f"{', '.join(out)}: an extrapolation" if out else ""


def describe_coverage(coverage: Mapping[str, list[float]]) -> str:
    """``x 0.042-0.34, r 0.5-4.2, GQA 4`` for an output line."""
    return ", ".join(f"{'GQA' if name == 'gqa' else name} {_span(*bounds)}" for name, bounds in coverage.items())


def _span(low: float, high: float) -> str:
    return f"{low:.3g}" if low == high else f"{low:.3g}-{high:.3g}"


SIZE_COLUMNS = {"N": "parameters", "D": "tokens"}
"""The scale columns a fit's ``size_range`` records, with the word the output uses."""


def size_range_of(frame: pd.DataFrame) -> dict[str, list[float]]:
    """``{"N": [low, high], "D": [low, high]}`` over the runs a law was fitted on."""
    return {name: [float(frame[name].min()), float(frame[name].max())] for name in SIZE_COLUMNS if name in frame.columns}


def size_range_from_json(block: Any, source: str) -> dict[str, list[float]] | None:
    """The ``size_range`` block of a fit JSON (None when the fit records none)."""
    return _ranges_from_json(block, "size_range", tuple(SIZE_COLUMNS), source)


def beyond_sizes(size_range: Mapping[str, list[float]] | None, sizes: Any, tokens: Any,
                 size_word: str = SIZE_COLUMNS["N"]) -> str | None:
    """A note when planned sizes or token counts lie past the largest runs a law was fitted on, else None.

    A law's N*(C) or inference-aware optimum far past its runs is an extrapolation, and the output says so with
    how far (``4.5x the largest run's``), so that no number is read as measured. ``size_word`` names N as the law
    counts it (``active parameters`` for an MoE law).
    """
    parts = []
    for name, word, values in _size_values(size_range, sizes, tokens, size_word):
        high = size_range[name][1]
        if past(values.max(), high):
            parts.append(f"{word} up to {values.max():.3g}, {values.max() / high:.3g}x the largest its runs had ({high:.3g})")
    return ("extrapolation past the fitted runs: " + "; ".join(parts)) if parts else None


def below_sizes(size_range: Mapping[str, list[float]] | None, sizes: Any, tokens: Any,
                size_word: str = SIZE_COLUMNS["N"]) -> str | None:
    """A note when sizes or token counts lie below the smallest runs a law was fitted on, else None: a prediction
    there is as much an extrapolation as one past the largest (a law's power terms are steepest there)."""
    parts = []
    for name, word, values in _size_values(size_range, sizes, tokens, size_word):
        low = size_range[name][0]
        if under(values.min(), low):
            parts.append(f"{word} down to {values.min():.3g}, {low / values.min():.3g}x below the smallest its runs had "
                         f"({low:.3g})")
    return ("extrapolation below the fitted runs: " + "; ".join(parts)) if parts else None


def outside_sizes(size_range: Mapping[str, list[float]] | None, sizes: Any, tokens: Any,
                  size_word: str = SIZE_COLUMNS["N"]) -> list[str]:
    """The notes of :func:`beyond_sizes` and :func:`below_sizes` that apply (none inside the runs' range)."""
    return [note for note in (beyond_sizes(size_range, sizes, tokens, size_word),
                              below_sizes(size_range, sizes, tokens, size_word)) if note]


def size_label(size_range: Mapping[str, list[float]] | None, n: float, tokens: float) -> str:
    """``"N 7.19e+09 (runs 7.77e+07-1.67e+09)"``: a pick's size and tokens where they lie outside the fit's runs, in
    :func:`outside_label`'s words, "" when inside (so a pick's label names every way its loss is extrapolated)."""
    parts = []
    for name, _, values in _size_values(size_range, [n], [tokens], "N"):
        low, high = size_range[name]
        value = float(values[0])
        if under(value, low) or past(value, high):
            parts.append(f"{name} {value:.3g} (runs {_span(low, high)})")
    return "; ".join(parts)


def size_brief(size_range: Mapping[str, list[float]] | None, n: float, tokens: float) -> str:
    """``"N 3.28x, D 1.5x below"``: :func:`size_label` as a table cell has room for it, each value as a multiple of
    the largest run's (past the runs) or the smallest run's over it (below them), as the note under the table says."""
    parts = []
    for name, _, values in _size_values(size_range, [n], [tokens], "N"):
        low, high = size_range[name]
        value = float(values[0])
        if past(value, high):
            parts.append(f"{name} {_times(value / high)}")
        elif under(value, low):
            parts.append(f"{name} {_times(low / value)} below")
    return ", ".join(parts)


def _times(ratio: float) -> str:
    """``3.28x``, ``236x``: three significant figures, whole numbers from 100 (never ``2.4e+02x``)."""
    return f"{ratio:.0f}x" if ratio >= 100 else f"{ratio:.3g}x"


def _size_values(size_range: Mapping[str, list[float]] | None, sizes: Any, tokens: Any,
                 size_word: str) -> list[tuple[str, str, np.ndarray]]:
    """(column, word, finite values) for N and D where the fit records a range and there is a value to check."""
    if not size_range:
        return []
    out = []
    for name, word, values in (("N", size_word, sizes), ("D", SIZE_COLUMNS["D"], tokens)):
        finite = np.asarray([v for v in np.atleast_1d(values) if v is not None and np.isfinite(v) and v > 0], float)
        if name in size_range and len(finite):
            out.append((name, word, finite))
    return out
