"""Enumerate every LLaMA-style shape that spends a non-embedding parameter budget.

The dissertation's search (Chapter 6, Algorithm 5) fixes ``n_layers`` and
``d_head`` and moves ``d_model``, the number of heads and ``d_ff``; GQA is then
searched locally. This module lays that space out as one table so a law and a
cost model can score every row at once.

Sweep, per ``d_model`` (a multiple of ``d_multiple``):

* attention "units" ``u = n_heads + n_kv_heads``: attention is
  ``2 d d_head u`` parameters per layer, so ``u`` alone sets how much of the
  budget attention takes, and therefore (once ``d_ff`` fills the rest) ``r``;
* every GQA group ``g`` with ``n_heads = g * n_kv_heads`` and ``u = (g+1) n_kv``;
* every ``d_ff`` multiple of ``ff_multiple`` that keeps ``N`` within the
  tolerance of the target and ``r`` within its range. Several ``d_ff`` per
  head layout are kept on purpose: the dissertation's own Panda-1B
  (``d_ff`` 4096, N 975M) is not the ``d_ff`` closest to 1e9 (that is 4160).

Everything is numpy broadcasting over (d_model x head-layout) and a
``repeat``-based expansion over ``d_ff``; no Python object per row, so 10^5
rows take tens of milliseconds.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from archscale.shapes.architecture import (MAX_DIMENSION, MOE_FIELDS, Architecture, mlp_attention_ratio, non_embedding_params, require_even_head_dim,
                                           transformers_loadable)
from archscale.io.errors import UserError
from archscale.io.machine import available_bytes

COLUMNS = ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_head", "d_ff", "vocab", "N", "r", "x", "gqa", "R")

ROW_BYTES = 240
"""Peak bytes per candidate row while the table is built (226 measured with tracemalloc at 0.5M-50M rows)."""
LAYOUT_BYTES = 64
"""Peak bytes per (n_kv_heads, group) pair while the head layouts are built (the arrays and their temporaries)."""
MEMORY_MARGIN = 1.25
"""The row estimate is within about 20% of the real count; refuse when it, so enlarged, exceeds free memory."""

X_RANGE_DEFAULT = (0.02, 0.2)
"""Default sweep of ``x = d_model / sqrt(N)``: the paper's variants sit in 0.04-0.1,
the published optima at 0.074-0.082; a wide margin costs little."""


def generate_candidates(
    n_target: float,
    n_layers: int,
    d_head: int,
    tolerance: float = 0.05,
    r_range: tuple[float, float] = (0.5, 5.0),
    d_model_values: Sequence[int] | None = None,
    d_multiple: int = 128,
    ff_multiple: int = 64,
    gqa_values: Iterable[int] | None = None,
    tp: int = 1,
    strict_hf: bool = False,
    vocab_size: int = 128256,
    x_range: tuple[float, float] = X_RANGE_DEFAULT,
    row_bytes: int = ROW_BYTES,
) -> pd.DataFrame:
    """All shapes whose non-embedding parameter count is within ``tolerance`` of ``n_target``.

    Args:
        n_target: non-embedding parameter budget ``N``.
        n_layers, d_head: held fixed, as in the paper.
        tolerance: keep rows with ``|N / n_target - 1| <= tolerance``.
        r_range: inclusive bounds on ``r_mlp/attn`` (the laws were fitted on 0.5-5).
        d_model_values: explicit hidden sizes; default: multiples of
            ``d_multiple`` with ``x`` in ``x_range``.
        d_multiple, ff_multiple: hardware-friendly granularity of d_model, d_ff.
        gqa_values: allowed query heads per KV head; default every group size.
        tp: tensor-parallel degree; it must divide ``n_kv_heads`` (hence ``n_heads``)
            so each GPU holds whole KV heads.
        strict_hf: require ``d_model % n_heads == 0`` (transformers refuses
            other Llama configs even with ``head_dim`` set).
        vocab_size: written to the ``vocab`` column (does not affect ``N``).
        x_range: sweep bounds on ``d_model / sqrt(n_target)`` when
            ``d_model_values`` is not given.
        row_bytes: peak memory per row of the caller's work on the table
            (search keeps more columns), for the memory check.

    Returns:
        A DataFrame with :data:`COLUMNS`, sorted by d_model, n_heads, n_kv_heads, d_ff.

    Raises:
        UserError: bad arguments, a budget below the smallest shape, no row
        within tolerance (the message says which constraint to relax), or an
        enumeration that would not fit in memory (checked before it starts).
    """
    _check_arguments(n_target, n_layers, d_head, tolerance, r_range, d_multiple, ff_multiple, tp, vocab_size)
    _check_budget_reachable(n_target, n_layers, d_head, tolerance, r_range[0], d_multiple, ff_multiple, tp)
    d_models = _d_model_grid(n_target, d_model_values, d_multiple, x_range)
    _check_fits_in_memory(estimate_size(n_target, n_layers, d_head, d_models, tolerance, r_range, ff_multiple,
                                        gqa_values, tp), row_bytes, n_target, n_layers, d_head)
    n_kv, group = _head_layouts(n_target, n_layers, d_head, int(d_models.min()), tolerance, r_range[0], gqa_values, tp)
    d, kv, g = _layouts_per_width(d_models, n_kv, group, n_target, n_layers, d_head, tolerance, r_range, strict_hf)
    d, kv, g, ff = _expand_d_ff(d, kv, g, n_target, n_layers, d_head, tolerance, r_range, ff_multiple)
    frame = _frame(n_layers, d, g * kv, kv, d_head, ff, vocab_size, n_target, tolerance, r_range)
    if frame.empty:
        raise UserError(_no_candidate_message(n_target, n_layers, d_head, tolerance, r_range, d_multiple,
                                              ff_multiple, tp, strict_hf))
    return frame


def generate_candidates_at_depths(n_target: float, layers: Iterable[int], d_head: int, row_bytes: int = ROW_BYTES,
                                  **options: Any) -> tuple[pd.DataFrame, dict[int, str]]:
    """The union of :func:`generate_candidates` over several depths, and why each depth left out had no shape.

    Shapes of every depth compete in one table, each row with its own ``n_layers``. The memory check is made
    once for the union (the rows of all depths are held together) before any depth is built; each depth then
    checks only its own head layouts, which are dropped before the next depth. A depth with no candidate (too
    deep for the budget, nothing within tolerance) is left out with its reason, so that the caller can say so;
    when no depth has one, the first depth's reason is raised. One depth is exactly :func:`generate_candidates`.

    ``options`` are :func:`generate_candidates`' keyword arguments.
    """
    depths = sorted({int(depth) for depth in layers})
    if len(depths) == 1:
        return generate_candidates(n_target, depths[0], d_head, row_bytes=row_bytes, **options), {}
    _check_fits_in_memory(_union_size(n_target, depths, d_head, options), row_bytes, n_target, depths, d_head)
    frames, left_out = [], {}
    for depth in depths:
        try:
            frames.append(generate_candidates(n_target, depth, d_head, row_bytes=0, **options))  # rows checked above
        except UserError as exc:
            left_out[depth] = str(exc)
    if not frames:
        raise UserError(next(iter(left_out.values())))
    return pd.concat(frames, ignore_index=True), left_out


def _union_size(n_target: float, depths: Sequence[int], d_head: int, options: Mapping[str, Any]) -> tuple[float, float]:
    """(rows of all depths together, head-layout pairs of the largest depth's step) for the memory check."""
    bound = inspect.signature(generate_candidates).bind(n_target, depths[0], d_head, **options)
    bound.apply_defaults()
    a = bound.arguments
    _check_arguments(n_target, depths[0], d_head, a["tolerance"], a["r_range"], a["d_multiple"], a["ff_multiple"],
                     a["tp"], a["vocab_size"])
    d_models = _d_model_grid(n_target, a["d_model_values"], a["d_multiple"], a["x_range"])
    sizes = [estimate_size(n_target, depth, d_head, d_models, a["tolerance"], a["r_range"], a["ff_multiple"],
                           a["gqa_values"], a["tp"]) for depth in depths]
    return sum(rows for rows, _ in sizes), max(pairs for _, pairs in sizes)


def architecture_from_row(row: Mapping) -> Architecture:
    """Build the :class:`Architecture` of one candidate row (a Series or a dict).

    ``vocab`` (or ``vocab_size``), ``tie_embeddings`` and ``name`` are optional;
    without a name the shape itself becomes one (``L16-d2560-h36kv4-ff6144``),
    so emitted configs and plots can be told apart.
    """
    def get(key, default=None):
        return row[key] if key in row and row[key] is not None else default

    try:
        arch = dict(n_layers=int(row["n_layers"]), d_model=int(row["d_model"]), n_heads=int(row["n_heads"]),
                    n_kv_heads=int(row["n_kv_heads"]), d_head=int(row["d_head"]), d_ff=int(row["d_ff"]))
    except KeyError as exc:
        raise UserError(f"candidate row has no {exc.args[0]!r} column") from None
    experts = _expert_fields(get)
    name = get("name") or (f"L{arch['n_layers']}-d{arch['d_model']}-h{arch['n_heads']}kv{arch['n_kv_heads']}"
                           f"-ff{arch['d_ff']}" + (f"-e{experts['n_experts']}k{experts['experts_per_token']}" if experts else ""))
    return Architecture(**arch, **experts, vocab_size=int(get("vocab", get("vocab_size", 128256))),
                        tie_embeddings=bool(get("tie_embeddings", False)), name=str(name))


def _expert_fields(get) -> dict:
    """A row's Mixture-of-Experts fields (an MoE candidate or run row), none for a dense row: an MoE row is never
    built as the dense shape its other columns describe. Empty cells (a table mixing dense and MoE rows) are dense."""
    def number(key):
        value = get(key)
        return 0 if value is None or (isinstance(value, float) and math.isnan(value)) else value

    if number("n_experts") <= 1:
        return {}
    fields = {key: int(number(key)) for key in MOE_FIELDS if key != "shared_expert_gate"}
    fields["shared_expert_gate"] = bool(number("shared_expert_gate"))
    return fields


# ---- how big the enumeration will be, before it starts -------------------------------
def estimate_size(n_target: float, n_layers: int, d_head: int, d_models: np.ndarray, tolerance: float,
                  r_range: tuple[float, float], ff_multiple: int, gqa_values: Iterable[int] | None,
                  tp: int) -> tuple[float, float]:
    """(rows, head-layout pairs) the enumeration will build, estimated in about a millisecond.

    Rows: per width, the attention widths ``u`` whose share of the budget leaves
    ``r`` in range, times the mean number of (kv heads, group) layouts per
    ``u`` (about ``ln u`` for every group, ``sum 1/(g+1)`` for a given set), times
    the ``d_ff`` steps inside both the N and the r window; integrated at 64
    points per width and at most 2,048 widths. Within about 20% of the real
    count from 0.2M to 10B parameters (``tests/test_candidates.py``).
    Pairs: the head layouts :func:`_head_layouts` lays out at the narrowest width.
    """
    widths = np.asarray(d_models, dtype=np.float64)
    scale = 1.0
    if widths.size > 2048:
        scale = widths.size / 2048
        widths = np.quantile(widths, (np.arange(2048) + 0.5) / 2048)
    r_min, r_max = r_range
    d = widths[:, None]
    budget_hi = (n_target * (1 + tolerance) - d) / n_layers - 2.0 * d
    budget_lo = (n_target * (1 - tolerance) - d) / n_layers - 2.0 * d
    u_lo = np.maximum(np.ceil(budget_lo / (2.0 * d * d_head * (1.0 + r_max))), 2 * tp)
    u_hi = np.floor(budget_hi / (2.0 * d * d_head * (1.0 + r_min)))
    span = np.maximum(u_hi - u_lo + 1, 0)
    u = u_lo + (np.arange(64) + 0.5)[None, :] / 64 * span
    fixed = n_layers * (2 * d * d_head * u + 2 * d) + d
    ff_lo = np.maximum((n_target * (1 - tolerance) - fixed) / (3.0 * n_layers * d), r_min * 2.0 * d_head * u / 3.0)
    ff_hi = np.minimum((n_target * (1 + tolerance) - fixed) / (3.0 * n_layers * d), r_max * 2.0 * d_head * u / 3.0)
    per_layout = np.maximum((ff_hi - ff_lo) / ff_multiple + 1, 0)
    if gqa_values is None:
        density = np.maximum(np.log(np.maximum(u / tp, 1.0)) + np.euler_gamma - 1.0, 0.0) / tp
    else:
        groups = np.unique(np.asarray(list(gqa_values), dtype=np.float64))
        density = ((groups + 1) * tp <= u[..., None]).astype(float) @ (1.0 / ((groups + 1) * tp))
    rows = float(((per_layout * density).mean(axis=1) * span[:, 0]).sum() * scale)

    u_max = int(n_target * (1 + tolerance) / (2 * n_layers * d_head * float(np.min(d_models)) * (1 + r_min))) + 1
    terms = (u_max // 2) // tp
    if terms < 100_000:
        pairs = float(np.maximum(u_max // (np.arange(1, terms + 1) * tp) - 1, 0).sum())
    else:  # sum of u_max / (j tp) - 1 over j: a harmonic number
        pairs = (u_max / tp) * (math.log(terms) + np.euler_gamma) - terms
    return rows, pairs


def _check_fits_in_memory(size: tuple[float, float], row_bytes: int, n_target: float, n_layers: int | Sequence[int],
                          d_head: int) -> None:
    """Refuse an enumeration whose estimate exceeds the memory available now (a budget typo, a tiny d_head).

    ``n_layers``: one depth, or the depths of a union (:func:`generate_candidates_at_depths`), for the message.
    """
    from types import SimpleNamespace

    rows, pairs = size
    needed = MEMORY_MARGIN * (rows * row_bytes + pairs * LAYOUT_BYTES)
    available = available_bytes(SimpleNamespace(type="cpu"))  # no torch import for a CPU-only question
    if available is None or needed <= available:
        return
    depths = [n_layers] if isinstance(n_layers, (int, np.integer)) else list(n_layers)
    layers = f"{', '.join(map(str, depths))} layer{'s' if depths != [1] else ''}"
    raise UserError(f"N={n_target:.4g} with {layers} and d_head {d_head}: enumerating its candidates would "
                    f"build about {rows:.3g} shapes (~{needed / 1e9:,.0f} GB), more than the {available / 1e9:.1f} GB "
                    "of memory available; narrow the sweep: more --layers, a larger --head-dim, fewer --gqa values, "
                    "a smaller --tolerance or larger --d-multiple/--ff-multiple")


# ---- steps ---------------------------------------------------------------------
def _check_arguments(n_target, n_layers, d_head, tolerance, r_range, d_multiple, ff_multiple, tp, vocab_size) -> None:
    if not (isinstance(n_target, (int, float, np.integer, np.floating)) and not isinstance(n_target, bool)
            and math.isfinite(n_target) and n_target > 0):
        raise UserError(f"N must be a positive number, got {n_target!r}")
    for label, value in (("n_layers", n_layers), ("d_head", d_head), ("d_multiple", d_multiple),
                         ("ff_multiple", ff_multiple), ("tp", tp), ("vocab", vocab_size)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
            raise UserError(f"{label} must be a positive integer, got {value!r}")
    require_even_head_dim(d_head, "d_head")
    if not (0 <= tolerance < 1):
        raise UserError(f"tolerance must be in [0, 1), got {tolerance!r}")
    r_min, r_max = r_range
    if not (0 < r_min <= r_max):
        raise UserError(f"r range must satisfy 0 < r_min <= r_max, got [{r_min}, {r_max}]")


def _smallest_shape(n_layers: int, d_head: int, d_multiple: int, ff_multiple: int, tp: int,
                    r_min: float) -> tuple[int, int]:
    """(d_ff, N) of the smallest shape the sweep can produce.

    One width step, ``tp`` query and ``tp`` KV heads, and the smallest d_ff
    multiple that keeps ``r >= r_min``.
    """
    ff = max(ff_multiple, math.ceil(r_min * 2 * d_head * 2 * tp / 3 / ff_multiple) * ff_multiple)
    return ff, int(non_embedding_params(n_layers, d_multiple, tp, tp, d_head, ff))


def _check_budget_reachable(n_target, n_layers, d_head, tolerance, r_min, d_multiple, ff_multiple, tp) -> None:
    ff, smallest = _smallest_shape(n_layers, d_head, d_multiple, ff_multiple, tp, r_min)
    if n_target * (1 + tolerance) < smallest:
        raise UserError(
            f"N={n_target:.4g} is too small for {n_layers} layers with d_head {d_head}: the smallest shape "
            f"(d_model {d_multiple}, {tp}+{tp} heads, d_ff {ff}) has N={smallest:.4g}"
        )


def _no_candidate_message(n_target, n_layers, d_head, tolerance, r_range, d_multiple, ff_multiple, tp,
                          strict_hf) -> str:
    """Why the table came out empty, and what to relax (one line)."""
    message = (f"no candidate for N={n_target:.4g} with {n_layers} layers and d_head {d_head} within tolerance "
               f"{tolerance:g} and r in [{r_range[0]:g}, {r_range[1]:g}]")
    _, smallest = _smallest_shape(n_layers, d_head, d_multiple, ff_multiple, tp, r_range[0])
    if n_target < 20 * smallest:
        message += f" (N is near the smallest shape, N={smallest:.4g}, where shapes are coarse)"
    message += (": widen --tolerance, the r range or the d_model range, or use a smaller --d-multiple/--ff-multiple"
                + (" or --tp" if tp > 1 else "") + (" or drop --strict-hf" if strict_hf else ""))
    return message


def _d_model_grid(n_target: float, d_model_values, d_multiple: int, x_range: tuple[float, float]) -> np.ndarray:
    """Widths to sweep: the user's list, or every multiple of ``d_multiple`` with x in ``x_range``."""
    if d_model_values is not None:
        values = np.unique(np.asarray(list(d_model_values), dtype=np.int64))
        if values.size == 0 or (values <= 0).any():
            raise UserError(f"d_model values must be positive integers, got {list(d_model_values)!r}")
        return values
    x_lo, x_hi = x_range
    if not (0 < x_lo <= x_hi):
        raise UserError(f"x range must satisfy 0 < x_min <= x_max, got [{x_lo}, {x_hi}]")
    root = math.sqrt(n_target)
    if x_hi * root > MAX_DIMENSION:  # the widths would pass any model's, and their grid any memory
        raise UserError(f"N={n_target:.3g} (--n, or --n-active for MoE): its widths reach d_model "
                        f"{x_hi * root:.3g} at x {x_hi:g}, past the largest dimension archscale counts "
                        f"({MAX_DIMENSION:,}); give a budget below {(MAX_DIMENSION / x_hi) ** 2:.3g}")
    lo = max(d_multiple, math.ceil(x_lo * root / d_multiple) * d_multiple)
    hi = max(lo, math.floor(x_hi * root / d_multiple) * d_multiple)
    return np.arange(lo, hi + 1, d_multiple, dtype=np.int64)


def _head_layouts(n_target, n_layers, d_head, d_min, tolerance, r_min, gqa_values, tp) -> tuple[np.ndarray, np.ndarray]:
    """Every (n_kv_heads, group) whose attention can fit the budget at the narrowest width, sorted by units.

    ``u = n_kv (g + 1)`` attention units cost ``2 d d_head u`` per layer and
    leave at least ``r_min`` times that for the MLP, so
    ``u <= N (1 + tol) / (2 L d_head d_min (1 + r_min))``. For each n_kv (a
    multiple of tp) the groups run up to ``u_max / n_kv - 1``: a harmonic
    number of pairs, a few thousand even at 8B, built without a dense grid.
    """
    u_max = int(n_target * (1 + tolerance) / (2 * n_layers * d_head * d_min * (1 + r_min))) + 1
    kv_values = np.arange(tp, u_max // 2 + 1, tp, dtype=np.int64)
    groups_per_kv = u_max // kv_values - 1
    kv = np.repeat(kv_values, groups_per_kv)
    g = _ranges(np.ones_like(kv_values), groups_per_kv)
    if gqa_values is not None:
        allowed = np.unique(np.asarray(list(gqa_values), dtype=np.int64))
        if allowed.size == 0 or (allowed <= 0).any():
            raise UserError(f"GQA values must be positive integers, got {list(gqa_values)!r}")
        keep = np.isin(g, allowed)
        if not keep.any() and g.size:
            raise UserError(f"--gqa {','.join(map(str, allowed))}: no such group fits N={n_target:.4g} with {n_layers} "
                            f"layers and d_head {d_head}: above {int(g.max())} query heads per KV head, attention alone "
                            "exceeds the budget; give smaller groups, or a larger --n")
        kv, g = kv[keep], g[keep]
    order = np.argsort(kv * (g + 1), kind="stable")
    return kv[order], g[order]


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenate ``arange(s, s + c)`` for each (s, c) without a Python loop."""
    counts = np.maximum(counts, 0)
    offsets = np.cumsum(counts) - counts
    step = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(offsets, counts)
    return np.repeat(starts, counts) + step


def _layouts_per_width(d_models, n_kv, group, n_target, n_layers, d_head, tolerance, r_range, strict_hf):
    """Cross widths with head layouts, keeping those whose attention share allows r in range at some d_ff.

    With the MLP filling the rest of the per-layer budget ``P``,
    ``r = (P - 2d) / (2 d d_head u) - 1``: r in range is a window of ``u``, and
    since layouts are sorted by ``u`` each width takes one contiguous slice
    (``searchsorted``), so the work is proportional to the output. The window
    uses the budget's tolerance edges so no row the exact filter would keep is
    lost here.
    """
    r_min, r_max = r_range
    d = d_models.astype(np.float64)
    units = n_kv * (group + 1)
    budget_hi = (n_target * (1 + tolerance) - d) / n_layers - 2.0 * d
    budget_lo = (n_target * (1 - tolerance) - d) / n_layers - 2.0 * d
    u_lo = np.ceil(budget_lo / (2.0 * d * d_head * (1.0 + r_max)) * (1 - 1e-12))
    u_hi = np.floor(budget_hi / (2.0 * d * d_head * (1.0 + r_min)) * (1 + 1e-12))
    first = np.searchsorted(units, u_lo, side="left")
    last = np.searchsorted(units, u_hi, side="right")
    counts = np.maximum(last - first, 0)
    pick = _ranges(first, counts)
    d_rows = np.repeat(d_models, counts)
    kv, g = n_kv[pick], group[pick]
    if strict_hf:
        keep = transformers_loadable(d_rows, kv * g)
        d_rows, kv, g = d_rows[keep], kv[keep], g[keep]
    # Order layouts now (d_model, n_heads, n_kv_heads): the d_ff expansion keeps rows of one layout
    # together and ascending, so the final table needs no sort of its own (the costliest step otherwise).
    order = np.lexsort((kv, g * kv, d_rows))
    return d_rows[order], kv[order], g[order]


def _expand_d_ff(d, kv, g, n_target, n_layers, d_head, tolerance, r_range, ff_multiple):
    """One row per admissible d_ff multiple: the intersection of the N window and the r window."""
    r_min, r_max = r_range
    units = kv * (g + 1)
    fixed = non_embedding_params(n_layers, d, g * kv, kv, d_head, 0).astype(np.float64)
    per_ff = 3.0 * n_layers * d  # N grows by this much per unit of d_ff
    ff_lo_n = (n_target * (1 - tolerance) - fixed) / per_ff
    ff_hi_n = (n_target * (1 + tolerance) - fixed) / per_ff
    ff_lo_r = r_min * 2.0 * d_head * units / 3.0
    ff_hi_r = r_max * 2.0 * d_head * units / 3.0
    # Widen by one step each side; the exact integer filter in _frame decides the edges.
    k_lo = np.maximum(np.ceil(np.maximum(ff_lo_n, ff_lo_r) / ff_multiple) - 1, 1).astype(np.int64)
    k_hi = (np.floor(np.minimum(ff_hi_n, ff_hi_r) / ff_multiple) + 1).astype(np.int64)
    counts = np.maximum(k_hi - k_lo + 1, 0)
    source = np.repeat(np.arange(d.size), counts)
    ff = _ranges(k_lo, counts) * ff_multiple
    return d[source], kv[source], g[source], ff


def _frame(n_layers, d, n_heads, n_kv, d_head, ff, vocab_size, n_target, tolerance, r_range) -> pd.DataFrame:
    """Exact integer N, the descriptors, and the final tolerance and r filters."""
    n = non_embedding_params(n_layers, d, n_heads, n_kv, d_head, ff)
    r = mlp_attention_ratio(d, n_heads, n_kv, d_head, ff)
    keep = (np.abs(n / n_target - 1.0) <= tolerance) & (r >= r_range[0]) & (r <= r_range[1])
    d, n_heads, n_kv, ff, n, r = d[keep], n_heads[keep], n_kv[keep], ff[keep], n[keep], r[keep]
    # already ordered by d_model, n_heads, n_kv_heads, d_ff (see _layouts_per_width)
    return pd.DataFrame(shape_columns(n_layers, d, n_heads, n_kv, d_head, ff, vocab_size, n, r, n), copy=False)


def shape_columns(n_layers: int, d, n_heads, n_kv, d_head: int, ff, vocab_size: int, n, r, n_for_x) -> dict:
    """A candidate table's columns from its arrays: the shape, N, and the descriptors the laws read (``x`` from
    ``n_for_x``: N for a dense shape, the active N for an MoE one). One spelling for dense and MoE tables."""
    size = np.size(d)
    return {
        "n_layers": np.full(size, n_layers, dtype=np.int64),
        "d_model": d,
        "n_heads": n_heads,
        "n_kv_heads": n_kv,
        "d_head": np.full(size, d_head, dtype=np.int64),
        "d_ff": ff,
        "vocab": np.full(size, vocab_size, dtype=np.int64),
        "N": n,
        "r": r,
        "x": d / np.sqrt(n_for_x),
        "gqa": n_heads // n_kv,
        "R": d / n_layers,
    }
