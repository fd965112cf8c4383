"""Enumerate Mixture-of-Experts shapes over experts E, top-k and expert granularity G at an active and/or total budget.

The dense sweep (:mod:`archscale.shapes.candidates`) moves ``d_model``, the head layout and ``d_ff``. An MoE layer
replaces the dense MLP by E routed SwiGLU experts of width ``expert_d_ff`` (each token uses k of them) plus a router
(``d x E``). Here the expert width is not a free axis: it follows from the granularity, as Krajewski et al. (2024,
"Scaling Laws for Fine-Grained Mixture of Experts") define it, ``G = d_ff / expert_d_ff`` with ``d_ff`` the dense
reference width of :func:`dense_reference_d_ff`. So for each (``d_model``, E, k, G) the only thing left to spend or
save the budget is attention: the rows are the dense generator's head layouts whose attention width puts the
active (and/or total) count within the tolerance, with the MLP-to-attention ratio ``r`` in range.

Every (``d_model``, E, k, G) group takes one contiguous slice of the head layouts (sorted by attention width), so
the whole table is a ``searchsorted`` and a ``repeat``, with no Python loop over rows or over the E/k/G grid.
All MoE layers, no shared expert, no dense layer before the first MoE layer (the columns the serving model reads
default to that).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from archscale.io.errors import UserError
from archscale.shapes.architecture import non_embedding_params, transformers_loadable
from archscale.shapes.candidates import (COLUMNS, ROW_BYTES, X_RANGE_DEFAULT, _check_arguments, _check_fits_in_memory,
                                         _d_model_grid, _head_layouts, _ranges, shape_columns)

MOE_COLUMNS = COLUMNS + ("N_active", "n_experts", "experts_per_token", "expert_d_ff", "G")
"""The dense columns (``N`` is the total, every expert counted; ``d_ff`` is the expert width, as an
:class:`~archscale.shapes.architecture.Architecture` with no dense layer spells it; ``r`` and ``x`` are active, see
:func:`generate_moe_candidates`) plus the routing columns the serving model reads and the granularity."""

EXPERTS_DEFAULT = (4, 8, 16, 32, 64)
TOP_K_DEFAULT = (1, 2, 4, 8)
GRANULARITY_DEFAULT = (1, 2, 4, 8)
"""The default E, k and G grids: Mixtral's 8 and top-2 to OLMoE's and Qwen3-MoE's 64 and 128 experts, top-8."""

DENSE_FF_PER_D_MODEL = 4
"""The dense reference MLP width per unit of ``d_model`` that granularity is measured against (see
:func:`dense_reference_d_ff`)."""


def dense_reference_d_ff(d_model):
    """The dense MLP width ``d_ff`` in ``G = d_ff / expert_d_ff``: ``4 d_model``, ints or arrays alike.

    Why 4 d_model and not "the d_ff a dense model of the same d_model and r would have": any reference taken from
    the row's own budget makes the k active experts (``k d_ff / G`` wide) spend what the dense MLP spends only when
    k = G, so G would collapse onto k and the sweep would lose an axis. A reference set by ``d_model`` alone keeps
    E, k and G independent, and it is the convention Krajewski et al. fitted their law under (``d_ff = 4 d_model``),
    so a row's G is the G of their law.
    """
    return DENSE_FF_PER_D_MODEL * d_model


@dataclass(frozen=True)
class MoeFlags:
    """The caller's names for what a refusal asks the user to change (``candidates`` and ``search`` spell the
    experts-per-token grid differently, and only ``candidates`` sweeps the width range by flag)."""

    top_k: str = "--top-k"
    narrower: str | None = "a smaller --x-min"
    wider: str | None = "a larger --x-max"


SEARCH_FLAGS = MoeFlags(top_k="--experts-per-token", narrower=None, wider=None)
"""``archscale search``'s names: its widths come from the budget, with no flag for their range."""


def generate_moe_candidates(
    n_active: float | None = None,
    n_total: float | None = None,
    *,
    n_layers: int,
    d_head: int,
    experts: Iterable[int] = EXPERTS_DEFAULT,
    top_k: Iterable[int] = TOP_K_DEFAULT,
    granularity: Iterable[float] = GRANULARITY_DEFAULT,
    tolerance: float = 0.05,
    r_range: tuple[float, float] = (0.5, 5.0),
    d_model_values: Sequence[int] | None = None,
    d_multiple: int = 128,
    gqa_values: Iterable[int] | None = None,
    tp: int = 1,
    strict_hf: bool = False,
    vocab_size: int = 128256,
    x_range: tuple[float, float] = X_RANGE_DEFAULT,
    row_bytes: int = ROW_BYTES,
    flags: MoeFlags = MoeFlags(),
) -> pd.DataFrame:
    """Every MoE shape whose active and/or total non-embedding count is within ``tolerance`` of its budget.

    Args:
        n_active: budget for what one token uses (attention, k experts, router, norms); None: any.
        n_total: budget for every parameter (all E experts); None: any. At least one budget is needed.
        n_layers, d_head: held fixed, as in the dense sweep; every layer is an MoE layer.
        experts, top_k, granularity: the E, k and G grids; pairs with k > E are skipped, a k above every E refused.
        tolerance: keep rows with ``|N / budget - 1| <= tolerance`` for each budget given.
        r_range: bounds on ``r``, here the active MLP (k experts) over attention: the router is left out of it.
        d_model_values, d_multiple, x_range: widths swept; ``x = d_model / sqrt(N_active)``, and the default grid
            takes x relative to the active budget (the total one when only it is given), since an MoE's width goes
            with what a token computes.
        gqa_values, tp, strict_hf, vocab_size, row_bytes: as in
            :func:`~archscale.shapes.candidates.generate_candidates`.
        flags: the calling command's flag names, for the refusals (:class:`MoeFlags`).

    Returns:
        A DataFrame with :data:`MOE_COLUMNS`, ordered by d_model, n_experts, experts_per_token, G, then attention
        width.

    Raises:
        UserError: no budget, a total budget below the active one, a bad grid (k above every E, E < 2, a G that
        leaves a fractional expert width), a granularity whose expert width cannot reach the budget (the message
        gives the smallest and largest count reachable), or no row within both budgets.
    """
    budget = _check_budgets(n_active, n_total)
    _check_arguments(budget, n_layers, d_head, tolerance, r_range, d_multiple, 1, tp, vocab_size)
    d_models = _d_model_grid(budget, d_model_values, d_multiple, x_range)
    d, e_count, k, g = _groups(d_models, experts, top_k, granularity, flags.top_k)
    kv, group = _head_layouts(budget, n_layers, d_head, int(d_models.min()), tolerance, r_range[0], gqa_values, tp)
    units = kv * (group + 1)
    first, counts = _attention_window(units, d, e_count, k, g, n_active, n_total, n_layers, d_head, tolerance,
                                      r_range, tp)
    _check_fits_in_memory((float(counts.sum()), 0.0), row_bytes, budget, n_layers, d_head)
    pick = _ranges(first, counts)
    source = np.repeat(np.arange(d.size), counts)
    frame = _frame(n_layers, d_head, vocab_size, d[source], kv[pick] * group[pick], kv[pick], e_count[source],
                   k[source], g[source], n_active, n_total, tolerance, r_range, strict_hf)
    if frame.empty:
        raise UserError(_no_candidate_message(d, e_count, k, g, n_active, n_total, n_layers, d_head, tolerance,
                                              r_range, tp, options=dict(
                                                  experts=experts, top_k=top_k, granularity=granularity,
                                                  d_model_values=d_model_values, d_multiple=d_multiple,
                                                  gqa_values=gqa_values, tp=tp, strict_hf=strict_hf,
                                                  x_range=x_range, flags=flags)))
    return frame


# ---- arguments -------------------------------------------------------------------------
def _check_budgets(n_active: float | None, n_total: float | None) -> float:
    """The budget that bounds the sweep (the active one if given: attention and width follow it)."""
    if n_active is None and n_total is None:
        raise UserError("an MoE sweep needs a budget: give --n-active (what one token uses) and/or --n-total "
                        "(every expert counted)")
    for label, value in (("--n-active", n_active), ("--n-total", n_total)):
        if value is not None and not (isinstance(value, (int, float, np.integer, np.floating))
                                      and not isinstance(value, bool) and math.isfinite(value) and value > 0):
            raise UserError(f"{label} must be a positive number of parameters, got {value!r}")
    if n_active is not None and n_total is not None and n_total < n_active:
        raise UserError(f"--n-total {n_total:.4g} is below --n-active {n_active:.4g}: the total counts every expert, "
                        "so it is at least the active count; swap them or raise --n-total")
    return float(n_active if n_active is not None else n_total)


def _positive_grid(values: Iterable[int], label: str, smallest: int = 1) -> np.ndarray:
    """A user's E, k or G list as a sorted array of distinct integers, each at least ``smallest``."""
    try:
        grid = np.unique(np.asarray(list(values), dtype=np.int64))
    except (TypeError, ValueError):
        raise UserError(f"{label} must be integers, got {values!r}") from None
    if grid.size == 0 or (grid < smallest).any():
        raise UserError(f"{label} must be integers >= {smallest}, got {list(values)!r}"
                        + (" (one expert is a dense MLP: use archscale candidates --n)" if smallest == 2 else ""))
    return grid


def _granularity_grid(values: Iterable[float]) -> np.ndarray:
    """A user's G list as sorted distinct positive numbers (a fraction such as 4/3 is allowed: G = 4/3 makes each
    expert 3 d_model wide, the dense MLP of Ludziejewski et al. 2025)."""
    try:
        grid = np.unique(np.asarray(list(values), dtype=np.float64))
    except (TypeError, ValueError):
        raise UserError(f"--granularity must be numbers, got {values!r}") from None
    if grid.size == 0 or not np.all(np.isfinite(grid)) or (grid <= 0).any():
        raise UserError(f"--granularity must be positive numbers, got {list(values)!r}")
    return grid


def _groups(d_models: np.ndarray, experts, top_k, granularity, top_k_flag: str = "--top-k") -> tuple[np.ndarray, ...]:
    """(d_model, E, k, G) of every group, d_model outermost (so the table comes out ordered), k <= E only."""
    e_grid = _positive_grid(experts, "--experts", smallest=2)
    k_grid = _positive_grid(top_k, top_k_flag)
    g_grid = _granularity_grid(granularity)
    too_many = k_grid[k_grid > e_grid.max()]
    if too_many.size:
        raise UserError(f"{top_k_flag} {', '.join(map(str, too_many))} exceeds every --experts value "
                        f"({', '.join(map(str, e_grid))}): each token picks k of the E routed experts, so k <= E; "
                        "drop that k or add a larger E")
    reference = dense_reference_d_ff(d_models)
    widths = reference[:, None] / g_grid[None, :]
    whole = np.isclose(widths, np.rint(widths), rtol=0, atol=1e-6)
    if not whole.all():
        width, column = np.argwhere(~whole)[0]
        raise UserError(f"--granularity {g_grid[column]:g} does not divide the dense width {DENSE_FF_PER_D_MODEL} x "
                        f"d_model {int(d_models[width])}: the expert width d_ff/G would not be whole; use a power of "
                        "two, a fraction such as 4/3 whose numerator divides it, or a --d-multiple it divides")
    e, k = np.meshgrid(e_grid, k_grid, indexing="ij")
    keep = k <= e
    e, k = np.repeat(e[keep], g_grid.size), np.repeat(k[keep], g_grid.size)
    g = np.tile(g_grid, int(keep.sum()))
    d = np.repeat(d_models.astype(np.int64), e.size)
    return d, np.tile(e, d_models.size), np.tile(k, d_models.size), np.tile(g, d_models.size)


# ---- the enumeration ---------------------------------------------------------------------
def _mlp_and_router(d, e_count, routed, g):
    """Per-layer parameters besides attention of an MoE layer with ``routed`` experts counted: experts, router,
    the two norms (float64, for the window arithmetic; the exact count is :func:`non_embedding_params`)."""
    d = d.astype(np.float64)
    expert_ff = dense_reference_d_ff(d) / g
    return 3.0 * d * expert_ff * routed + d * e_count + 2.0 * d


def _attention_window(units, d, e_count, k, g, n_active, n_total, n_layers, d_head, tolerance, r_range, tp):
    """(first layout, layout count) per group: the attention widths whose count meets every budget and r range.

    Attention costs ``2 d d_head u`` per layer; a budget ``B`` within the tolerance is then a window of ``u``
    once the experts, router and norms are subtracted, and ``r = 3 k expert_d_ff / (2 d_head u)`` in range is
    another. The windows are widened by a hair so no row the exact filter would keep is lost.
    """
    df = d.astype(np.float64)
    per_unit = 2.0 * df * d_head
    lo = np.full(d.size, 2.0 * tp)
    hi = np.full(d.size, np.inf)
    for budget, routed in ((n_active, k), (n_total, e_count)):
        if budget is None:
            continue
        rest = _mlp_and_router(d, e_count, routed, g)
        lo = np.maximum(lo, ((budget * (1 - tolerance) - df) / n_layers - rest) / per_unit)
        hi = np.minimum(hi, ((budget * (1 + tolerance) - df) / n_layers - rest) / per_unit)
    active_mlp = 3.0 * k * dense_reference_d_ff(df) / g
    lo = np.maximum(lo, active_mlp / (r_range[1] * 2.0 * d_head))
    hi = np.minimum(hi, active_mlp / (r_range[0] * 2.0 * d_head))
    first = np.searchsorted(units, np.ceil(lo * (1 - 1e-12)), side="left")
    last = np.searchsorted(units, np.floor(hi * (1 + 1e-12)), side="right")
    return first, np.maximum(last - first, 0)


def _frame(n_layers, d_head, vocab_size, d, n_heads, n_kv, e_count, k, g, n_active, n_total, tolerance, r_range,
           strict_hf) -> pd.DataFrame:
    """Exact integer counts (the one count, total and active), the descriptors, and the final filters."""
    expert_ff = np.rint(dense_reference_d_ff(d) / g).astype(np.int64)
    routing = dict(n_experts=e_count, experts_per_token=k, expert_d_ff=expert_ff)
    total = non_embedding_params(n_layers, d, n_heads, n_kv, d_head, expert_ff, **routing)
    active = non_embedding_params(n_layers, d, n_heads, n_kv, d_head, expert_ff, **routing, active=True)
    r = 3.0 * k * expert_ff / (2.0 * d_head * (n_heads + n_kv))
    keep = (r >= r_range[0]) & (r <= r_range[1])
    for budget, count in ((n_active, active), (n_total, total)):
        if budget is not None:
            keep &= np.abs(count / budget - 1.0) <= tolerance
    if strict_hf:
        keep &= transformers_loadable(d, n_heads)
    d, n_heads, n_kv, e_count, k, g = d[keep], n_heads[keep], n_kv[keep], e_count[keep], k[keep], g[keep]
    expert_ff, total, active, r = expert_ff[keep], total[keep], active[keep], r[keep]
    return pd.DataFrame({
        **shape_columns(n_layers, d, n_heads, n_kv, d_head, expert_ff, vocab_size, total, r, active),
        "N_active": active,
        "n_experts": e_count,
        "experts_per_token": k,
        "expert_d_ff": expert_ff,
        "G": g,
    }, copy=False)  # every column is a fresh array: no copy into 2-D blocks (most of the time at 1e6 rows)


# ---- why the table is empty ---------------------------------------------------------------
def _reachable(d, e_count, k, g, routed, n_layers, d_head, r_range, tp) -> tuple[np.ndarray, np.ndarray]:
    """Per group, the smallest and largest count (``routed`` experts) its attention widths in the r range allow."""
    df = d.astype(np.float64)
    active_mlp = 3.0 * k * dense_reference_d_ff(df) / g
    u_lo = np.maximum(2.0 * tp, np.ceil(active_mlp / (r_range[1] * 2.0 * d_head)))
    u_hi = np.floor(active_mlp / (r_range[0] * 2.0 * d_head))
    rest = _mlp_and_router(d, e_count, routed, g)
    count = lambda u: n_layers * (2.0 * df * d_head * u + rest) + df  # noqa: E731
    valid = u_hi >= u_lo
    return np.where(valid, count(u_lo), np.nan), np.where(valid, count(u_hi), np.nan)


def _no_candidate_message(d, e_count, k, g, n_active, n_total, n_layers, d_head, tolerance, r_range, tp,
                          options) -> str:
    """One line: which budget the expert widths cannot reach (with the reachable span), else what to relax."""
    for label, budget, routed in (("N_active", n_active, k), ("N_total", n_total, e_count)):
        if budget is None:
            continue
        low, high = _reachable(d, e_count, k, g, routed, n_layers, d_head, r_range, tp)
        if np.isnan(low).all():
            break
        smallest, largest = np.nanmin(low), np.nanmax(high)
        if budget * (1 + tolerance) < smallest or budget * (1 - tolerance) > largest:
            flags = options.get("flags", MoeFlags())
            experts_hint = "/--experts" if routed is e_count else ""
            smaller = budget < smallest
            turns = [f"a {'larger' if smaller else 'smaller'} --granularity ({'narrower' if smaller else 'wider'} experts)",
                     f"a {'smaller' if smaller else 'larger'} {flags.top_k}{experts_hint}",
                     f"{'fewer' if smaller else 'more'} --layers", flags.narrower if smaller else flags.wider]
            turns = [turn for turn in turns if turn]
            hint = ", ".join(turns[:-1]) + f" or {turns[-1]}"
            return (f"no MoE shape reaches {label}={budget:.4g}: with expert width {DENSE_FF_PER_D_MODEL} d_model / G "
                    f"for G in {sorted(set(g.tolist()))}, these experts, top-k, widths and r range reach {label} "
                    f"{smallest:.4g} to {largest:.4g}; try {hint}")
    if n_active is not None and n_total is not None:
        try:
            alone = generate_moe_candidates(n_active, None, n_layers=n_layers, d_head=d_head, tolerance=tolerance,
                                            r_range=r_range, row_bytes=0, **options)
            ratio, wanted = (alone["N"] / alone["N_active"]).to_numpy(), n_total / n_active
            below, above = ratio[ratio < wanted], ratio[ratio > wanted]
            nearest = " and ".join(f"{value:.3g}" for value in (below.max() if below.size else None,
                                                                 above.min() if above.size else None)
                                   if value is not None)
            return (f"no MoE shape meets both N_active={n_active:.4g} and N_total={n_total:.4g} within tolerance "
                    f"{tolerance:g}: at that active budget these E, k and G give N_total/N_active {ratio.min():.3g} "
                    f"to {ratio.max():.3g}, the nearest to {wanted:.3g} being {nearest}; change "
                    "--experts/--top-k/--granularity, a budget or --tolerance")
        except UserError as exc:
            return str(exc)
    return (f"no MoE candidate within tolerance {tolerance:g} and r in [{r_range[0]:g}, {r_range[1]:g}] with "
            f"{n_layers} layers and d_head {d_head}: widen --tolerance, the r range or the d_model range, or use "
            "a smaller --d-multiple" + (" or --tp" if tp > 1 else "") + (" or drop --strict-hf"
                                                                         if options["strict_hf"] else ""))
