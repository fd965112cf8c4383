"""Dense and Mixture-of-Experts shapes in one search: the fastest of each family whose predicted loss meets a target.

``archscale search`` with a law that predicts dense and MoE runs alike (the joint law of Ludziejewski et al. 2025,
``moe-joint``, reads active parameters, tokens and the expansion E/k; a dense model is E = 1) enumerates both
families at one *active* non-embedding budget, predicts every shape's loss with that one law, estimates its
serving throughput with the same profile, and keeps a shape only when its total weights and KV cache fit on the
device. The answer is the fastest shape of each family that meets the target and which family won, by how much,
and whether that gap is larger than the throughput estimate's error.

Why the shape *within* a family is held, not traded: the joint law sees the active size, the tokens and the
expansion, not the width, the MLP share, the KV grouping or the expert granularity. At one active budget it
gives every dense shape the same loss, so ranking dense shapes by it would take whatever serves fastest (the
largest GQA group, the thinnest attention) on no evidence. A candidate is therefore ranked only inside the box
the fit's runs had (its ``coverage``: for the published joint fit, MHA with the MLP three times the width,
top-1 experts as wide as the dense MLP, E up to 32), unless ``--extrapolate``, which ranks the rest labelled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from archscale.fit.coverage import (COORDINATES, describe_coverage, expansion_of, outside_sizes, size_brief, size_label,
                                    outside_coverage, outside_label)
from archscale.fit.fitted import FittedLaw
from archscale.io.errors import UserError
from archscale.search.constrained import (SearchSpec, apply_measured_losses, apply_measured_throughput,
                                          enumerate_candidates, limit_columns, lowest_losses, measured_count_notes,
                                          refuse_if_none_fits, scale_estimates, scale_note, table_labels,
                                          use_measured_throughput)
from archscale.search.latency_limited import operating_point_note
from archscale.serving.price import usd_per_million_tokens
from archscale.shapes.architecture import Architecture, require_serving_modelled
from archscale.shapes.moe_candidates import SEARCH_FLAGS, dense_reference_d_ff, generate_moe_candidates

FAMILY_COORDINATES = ("r", "gqa", "q_width", "expansion", "experts_per_token", "G")
"""What a candidate of either family is checked on against the fit's runs (the law itself reads only the expansion)."""

DENSE, MOE = "dense", "MoE"


@dataclass(frozen=True)
class ExpertGrid:
    """The MoE shapes to try: routed experts E, experts per token k and granularity G (see moe_candidates)."""

    experts: Sequence[int]
    experts_per_token: Sequence[int]
    granularity: Sequence[int]


@dataclass
class FamilyResult:
    """Every candidate, the picks of each family, the target, and what decided it."""

    candidates: pd.DataFrame
    picks: pd.DataFrame  # the top picks of each family, fastest first within each
    target: float
    target_source: str
    winner: dict[str, Any] | None  # which family won, by how much, and whether that is beyond the estimate's error
    notes: list[str] = field(default_factory=list)
    reference: dict[str, Any] | None = None  # the --match architecture's row


def is_family_law(fitted: FittedLaw) -> bool:
    """A law that predicts dense and MoE runs alike: it reads the expansion E/k (dense: 1)."""
    return "expansion" in fitted.law.columns


def law_sizes(fitted: FittedLaw, frame: pd.DataFrame) -> np.ndarray:
    """Each shape's active count as the law's ``N_active`` counts it: with embeddings when its fit says so.

    The published joint fit counts the embedding and the output head (its ``N_definition`` is ``total``), each
    shape's own (``vocab`` and ``tie_embeddings`` columns); a fit of archscale's own runs counts non-embedding
    parameters, which is what the candidate tables hold.
    """
    active = frame["N_active"].to_numpy(float)
    if fitted.n_kind != "total":
        return active
    copies = np.where(frame["tie_embeddings"].to_numpy(bool), 1.0, 2.0)
    return active + frame["d_model"].to_numpy(float) * frame["vocab"].to_numpy(float) * copies


def predict_family_loss(fitted: FittedLaw, frame: pd.DataFrame, spec: SearchSpec) -> np.ndarray:
    inputs = pd.DataFrame({"N_active": law_sizes(fitted, frame),
                           "D": np.full(len(frame), float(spec.tokens)), "expansion": expansion_of(frame)})
    return fitted.predict(inputs)


def enumerate_families(spec: SearchSpec, grid: ExpertGrid, tolerance: float) -> tuple[pd.DataFrame, list[str]]:
    """Dense shapes at ``N = spec.n`` and MoE shapes at ``N_active = spec.n``, in one table with a ``family`` column."""
    if len(spec.layers) != 1:
        raise UserError(f"--layers {spec.layers_label}: a dense and MoE search takes one depth (the joint law cannot "
                        "see depth); give one")
    dense, notes = enumerate_candidates(spec, tolerance)
    dense = dense.assign(N_active=dense["N"], n_experts=0, experts_per_token=0, expert_d_ff=0, G=np.nan, family=DENSE)
    moe = generate_moe_candidates(spec.n, None, n_layers=spec.layers[0], d_head=spec.d_head, experts=grid.experts,
                                  top_k=grid.experts_per_token, granularity=grid.granularity, tolerance=tolerance,
                                  r_range=spec.r_range, d_multiple=spec.d_multiple, gqa_values=spec.gqa_values,
                                  tp=spec.tp, strict_hf=spec.strict_hf, vocab_size=spec.vocab_size,
                                  flags=SEARCH_FLAGS)
    moe = moe.assign(family=MOE)
    frame = pd.concat([dense, moe], ignore_index=True)
    frame["tie_embeddings"] = spec.tie_embeddings
    return frame, notes


def _match_row(match: Architecture) -> pd.DataFrame:
    """The ``--match`` architecture as a candidate row of its family (refused if the serving model cannot cost it)."""
    columns = match.shape_columns()
    require_serving_modelled(columns, f"--match {match.name}")
    moe = match.n_experts > 1
    return pd.DataFrame([{"n_experts": 0, "experts_per_token": 0, "expert_d_ff": 0, **columns,
                          "N": match.n_params_non_embedding, "N_active": match.n_params_active_non_embedding,
                          "r": match.r_mlp_attn, "x": match.d_over_sqrt_n, "gqa": match.gqa_group,
                          "G": dense_reference_d_ff(match.d_model) / match.expert_d_ff if moe else np.nan,
                          "family": MOE if moe else DENSE}])


def resolve_family_target(fitted: FittedLaw, spec: SearchSpec, candidates: pd.DataFrame, target_loss: float | None,
                          match: Architecture | None, slack: float | None) -> tuple[float, str, dict[str, Any] | None]:
    """Exactly one of ``--target-loss``, ``--match`` or ``--slack`` (1% over the lowest predicted loss by default)."""
    given = [flag for flag, value in (("--target-loss", target_loss), ("--match", match), ("--slack", slack)) if value is not None]
    if len(given) > 1:
        raise UserError(f"{' and '.join(given)} both set the loss target; give only one")
    if target_loss is not None:
        if not target_loss > 0:
            raise UserError(f"--target-loss must be positive, got {target_loss}")
        return float(target_loss), "--target-loss", None
    if match is not None:
        row = _match_row(match)
        loss = float(predict_family_loss(fitted, row, spec)[0])
        served = spec.serve(row).iloc[0]
        reference = {**row.iloc[0].to_dict(), "name": match.name, "predicted_loss": loss,
                     "tokens_per_s": float(served["tokens_per_s"]),
                     "output_tokens_per_s": float(served["output_tokens_per_s"]), "fits": bool(served["fits"])}
        return loss, f"--match {match.name}", reference
    slack = 0.01 if slack is None else slack
    if not 0 <= slack < 1:
        raise UserError(f"--slack must be a fraction in [0, 1), got {slack}")
    _, base, label = lowest_losses(candidates, spec.extrapolate)  # needs the coverage marks (mark_family_coverage)
    best = float(candidates.loc[base, "predicted_loss"])
    if label == "the predicted optimum":
        label = "the lowest predicted loss of any candidate"
    return best * (1 + slack), f"--slack {slack:.1%} over {label} ({best:.4f})", None


def mark_family_coverage(candidates: pd.DataFrame, fitted: FittedLaw) -> tuple[pd.DataFrame, dict[str, list[float]]]:
    """``outside``: the coordinates of :data:`FAMILY_COORDINATES` (bit mask as in archscale.fit.coverage) outside
    the fit's runs; returns the coverage checked (the coordinates the fit records)."""
    coverage = {name: bounds for name, bounds in (fitted.coverage or {}).items() if name in FAMILY_COORDINATES}
    candidates["outside"] = outside_coverage(candidates, coverage, tuple(coverage)) if coverage else 0
    return candidates, coverage


def _family_key(frame: pd.DataFrame) -> pd.Series:
    """One training choice: width, attention width and the expert layout (GQA variants and d_ff steps are one)."""
    return pd.Series(list(zip(frame["d_model"], frame["n_heads"] + frame["n_kv_heads"], frame["n_experts"],
                              frame["experts_per_token"], frame["G"].fillna(0))), index=frame.index)


def top_per_family(ranked: pd.DataFrame, k: int) -> pd.DataFrame:
    """The ``k`` fastest distinct shapes of each family (at its fastest d_ff and GQA), fastest first."""
    picks = []
    for family in (DENSE, MOE):
        rows = ranked[ranked["family"] == family].sort_values(["output_tokens_per_s", "predicted_loss"],
                                                              ascending=[False, True])
        rows = rows[~_family_key(rows).duplicated()].head(k).copy()
        rows.insert(0, "rank", range(1, len(rows) + 1))
        picks.append(rows)
    return pd.concat(picks, ignore_index=True)


def decide_winner(picks: pd.DataFrame, spec: SearchSpec) -> dict[str, Any] | None:
    """Which family's best is faster, by what ratio, and whether the estimate's held-out error can tell them apart."""
    firsts = {family: rows.iloc[0] for family, rows in picks[picks["rank"] == 1].groupby("family")}
    if len(firsts) < 2:
        return None
    dense, moe = firsts[DENSE], firsts[MOE]
    ratio = float(moe["output_tokens_per_s"] / dense["output_tokens_per_s"])
    rule = spec.tie_rule
    winner = MOE if ratio > 1 else DENSE
    margin = ratio if ratio >= 1 else 1 / ratio
    tied = rule is not None and abs(margin - 1) <= rule[0]
    if rule is None:
        verdict = (f"{winner} is {margin:.2f}x faster by an uncalibrated estimate with no held-out error: a direction, "
                   "not a validated gap")
    elif tied:
        lower = min((dense, moe), key=lambda row: row["predicted_loss"])
        verdict = (f"a tie on throughput: {margin:.2f}x is within {100 * rule[0]:.1f}% ({rule[1]}); at that speed "
                   f"{lower['family']} predicts the lower loss ({min(dense['predicted_loss'], moe['predicted_loss']):.4f} "
                   f"against {max(dense['predicted_loss'], moe['predicted_loss']):.4f})")
    else:
        verdict = f"{winner} wins: {margin:.2f}x the other family's output tokens/s, beyond {100 * rule[0]:.1f}% ({rule[1]})"
    return {"winner": None if tied else winner, "moe_over_dense": ratio, "verdict": verdict}


def search_families(fitted: FittedLaw, spec: SearchSpec, grid: ExpertGrid, target_loss: float | None = None,
                    match: Architecture | None = None, slack: float | None = None, top_k: int = 3,
                    runs: pd.DataFrame | None = None, bench: pd.DataFrame | None = None) -> FamilyResult:
    """``max throughput s.t. predicted loss <= target`` over dense and MoE shapes at one active budget.

    As in the dense search, a measured loss (``runs``: a shape trained at this budget) replaces the prediction and a
    measured throughput (``bench``: this shape, device and workload) the estimate, matched on the whole shape,
    expert layout included; the other estimates are put on the measurements' scale."""
    tolerance = spec.tolerance if spec.tolerance is not None else 0.05
    candidates, notes = enumerate_families(spec, grid, tolerance)
    candidates["predicted_loss"] = predict_family_loss(fitted, candidates, spec)
    candidates = apply_measured_losses(candidates, runs, spec.tokens)
    candidates = pd.concat([candidates, spec.serve(candidates, with_latency=False)], axis=1)
    candidates, scale, bench = use_measured_throughput(candidates, bench, spec, notes)
    if scale is not None:
        notes.append(scale_note(scale, spec))
    notes += measured_count_notes(candidates)
    candidates, coverage = mark_family_coverage(candidates, fitted)
    target, source, reference = resolve_family_target(fitted, spec, candidates, target_loss, match, slack)
    if reference is not None:  # the reference on the candidates' footing: measured where they are, else scaled
        row = apply_measured_throughput(pd.DataFrame([reference]), bench, spec)
        reference = (scale_estimates(row, scale[0]) if scale is not None else row).iloc[0].to_dict()
    candidates["feasible_loss"] = candidates["predicted_loss"] <= target
    candidates["feasible"] = candidates["feasible_loss"] & candidates["fits"]
    if spec.limits is not None:
        candidates["feasible"] &= candidates["meets_limits"]
    candidates["ranked"] = candidates["feasible"] & ((candidates["outside"] == 0) | spec.extrapolate)
    refuse_if_none_fits(candidates, spec)
    if not candidates["feasible"].any():
        meets = candidates["feasible_loss"]
        if meets.any():  # the loss is within reach: memory (or the latency limit) is what stops every such shape
            families = ", ".join(sorted(set(candidates.loc[meets, "family"].astype(str))))
            limit = " or meet the latency limit" if spec.limits is not None else ""
            raise UserError(f"the {int(meets.sum()):,} candidates that meet the target loss {target:.4f} ({source}; "
                            f"{families}) do not fit in {spec.gpu.name} memory at batch {spec.workload.batch_size}"
                            f"{limit}; use fewer experts (--experts), a smaller --batch, or raise --tp")
        raise UserError(f"no dense or MoE candidate meets the target loss {target:.4f} ({source}); the lowest "
                        f"predicted loss is {candidates['predicted_loss'].min():.4f}: relax the target, or raise the "
                        "budget (--n)")
    if not candidates["ranked"].any():
        raise UserError(f"no candidate inside the fit's runs ({describe_coverage(coverage)}) meets the target loss "
                        f"{target:.4f}: add --extrapolate to rank shapes the law has not seen, labelled")
    picks = spec.add_latency(top_per_family(candidates[candidates["ranked"]], top_k))
    sizes = law_sizes(fitted, picks)
    shapes = [outside_label(row, int(row["outside"]), coverage) if int(row["outside"]) else ""
              for row in picks.to_dict("records")]
    picks["extrapolation"] = ["; ".join(part for part in (shape, size_label(fitted.size_range, size, spec.tokens)) if part)
                              for shape, size in zip(shapes, sizes)]
    picks["extrapolation_brief"] = table_labels(shapes, [size_brief(fitted.size_range, size, spec.tokens) for size in sizes])
    if spec.usd_per_gpu_hour is not None:
        picks["usd_per_m_output"] = usd_per_million_tokens(picks["output_tokens_per_s"].to_numpy(float),
                                                           spec.usd_per_gpu_hour, spec.tp)
    notes += family_notes(candidates, fitted, coverage, spec, picks, sizes)
    return FamilyResult(candidates, picks, target, source, decide_winner(picks, spec), notes, reference)


def family_notes(candidates: pd.DataFrame, fitted: FittedLaw, coverage: dict[str, list[float]], spec: SearchSpec,
                 picks: pd.DataFrame, sizes: np.ndarray) -> list[str]:
    """What decided the answer and what it rests on: coverage, memory, sizes outside the fit's runs (``sizes``: the
    picks' sizes as the law counts them, :func:`law_sizes`), missing families."""
    notes = []
    feasible = candidates["feasible"]
    if coverage:
        out = candidates.loc[feasible, "outside"].to_numpy()
        counts = ", ".join(f"{name} {int(((out >> bit) & 1).sum()):,}" for bit, name in enumerate(COORDINATES)
                           if ((out >> bit) & 1).any())
        held = (f"{int((out > 0).sum()):,} feasible shapes lie outside the fit's runs ({describe_coverage(coverage)}; "
                f"out by {counts})")
        notes.append(f"{held}: " + ("ranked anyway (--extrapolate), each labelled" if spec.extrapolate else
                                    "not ranked, since the law has not seen them; --extrapolate ranks them, labelled")
                     if (out > 0).any() else f"every feasible shape lies inside the fit's runs ({describe_coverage(coverage)})")
    else:
        notes.append(f"{fitted.source} records no coverage: the law cannot tell shapes of one family and active size "
                     "apart, so within a family the pick is by throughput alone, on no loss evidence")
    notes.append(f"law {fitted.law.name} sees the active size, tokens and E/k only: within a family, shapes that meet "
                 "the target are ordered by throughput")
    notes += outside_sizes(fitted.size_range, sizes, [spec.tokens], "active parameters")
    unfit = int((~candidates["fits"]).sum())
    if unfit:
        by_family = candidates.loc[~candidates["fits"], "family"].value_counts()
        notes.append(f"{unfit:,} candidates ({', '.join(f'{n:,} {f}' for f, n in by_family.items())}) do not fit in "
                     f"{spec.gpu.name} memory with their total weights and KV cache, and are not ranked")
    rankable = candidates["fits"] & ((candidates["outside"] == 0) | spec.extrapolate)
    for family in (DENSE, MOE):
        if not (picks["family"] == family).any():
            own = candidates.loc[rankable & (candidates["family"] == family), "predicted_loss"]
            best = f"; its lowest predicted loss there is {own.min():.4f}" if len(own) else "; none of its shapes may be ranked"
            notes.append(f"no {family} shape meets the target among those that fit and lie inside the fit's runs{best}")
    if (picks["family"] == MOE).any():
        notes.append("MoE throughput is the profile's estimate with the expert weights each step reads (the distinct "
                     "experts a batch routes to); unless the profile was calibrated on MoE shapes, its held-out error "
                     "is a floor on the MoE estimates' error, not a bound")
    if spec.limits is not None:
        notes.append(operating_point_note(spec))
    return notes


def family_document(result: FamilyResult, spec: SearchSpec, fitted: FittedLaw, grid: ExpertGrid) -> dict[str, Any]:
    """The JSON of a dense and MoE search (``--out``, ``--json``)."""
    model = spec.throughput_model
    columns = ["family", "rank", "n_layers", "d_model", "n_heads", "n_kv_heads", "d_head", "d_ff", "n_experts",
               "experts_per_token", "expert_d_ff", "G", "N", "N_active", "r", "gqa", "predicted_loss", "loss_source",
               "tokens_per_s", "output_tokens_per_s", "throughput_source", "memory_gb", "concurrency", "extrapolation", "usd_per_m_output",
               "operating_batch", "meets_limits", *(limit_columns(spec.limits) if spec.limits is not None else [])]
    picks = result.picks[[c for c in columns if c in result.picks.columns]]
    return {
        "budget": {"n_active": spec.n, "tokens": spec.tokens, "n_layers": spec.layers[0], "d_head": spec.d_head,
                   "vocab_size": spec.vocab_size, "tie_embeddings": spec.tie_embeddings,
                   "experts": list(grid.experts), "experts_per_token": list(grid.experts_per_token),
                   "granularity": list(grid.granularity)},
        "hardware": {"gpu": spec.gpu.name, "tp": spec.tp},
        "workload": {"batch_size": spec.workload.batch_size, "input_len": spec.workload.input_len,
                     "output_len": spec.workload.output_len},
        "loss": {"law": fitted.law.name, "source": fitted.source, "N_kind": fitted.n_kind, "units": "nats/token"},
        "throughput_estimates": {"profile": model.name, "calibrated": model.calibrated, "description": model.describe(),
                                 "heldout_speedup_error_points": model.heldout_speedup_points},
        "target": {"loss": result.target, "source": result.target_source, "reference": result.reference},
        "n_candidates": {family: int((result.candidates["family"] == family).sum()) for family in (DENSE, MOE)},
        "n_feasible": {family: int((result.candidates["feasible"] & (result.candidates["family"] == family)).sum())
                       for family in (DENSE, MOE)},
        "n_ranked": {family: int((result.candidates["ranked"] & (result.candidates["family"] == family)).sum())
                     for family in (DENSE, MOE)},
        "picks": picks.to_dict("records"),
        "winner": result.winner,
        "notes": result.notes,
    }
