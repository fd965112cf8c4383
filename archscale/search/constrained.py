"""Loss-constrained throughput search (the dissertation's Eq. 6.4 and Algorithm 5).

Given a parameter budget N, a token budget D and a fitted architecture law:

1. enumerate shapes at that budget (:mod:`archscale.shapes.candidates`);
2. predict each shape's loss with the law, or take a measured loss from the
   runs table when one exists for that exact shape and budget;
3. estimate each shape's serving throughput with the serving model and the
   calibration profile for the engine and device (the uncalibrated roofline
   when there is none), or take a measured one from a bench results file when
   it has that shape, GPU and workload;
4. keep the shapes whose predicted loss is within the target and whose
   weights and KV cache fit, rank them by throughput, and report the
   loss-vs-throughput Pareto frontier and the top-k (predict, rank, select).

The law says nothing about GQA (shapes that differ only in GQA have the same
``x`` and ``r``, hence the same predicted loss), so GQA variants of one shape
are kept together: the top-k are distinct shapes, each with its best GQA, and
its other GQA variants are listed beside it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from archscale.shapes.architecture import MOE_FIELDS, Architecture, require_serving_modelled, transformers_loadable
from archscale.shapes.candidates import ROW_BYTES, generate_candidates_at_depths
from archscale.serving.devices import GPU
from archscale.serving.price import usd_per_million_tokens
from archscale.serving.profiles import Profile
from archscale.io.vocabulary import LATENCY_COLUMNS, latency_column
from archscale.serving.estimate import LatencyLimits, Workload, check_tensor_parallel
from archscale.search.latency_limited import (add_fixed_batch, check_some_meet, comparison_note, operating_point,
                                              operating_point_note)
from archscale.io.errors import UserError
from archscale.laws import CONDITIONAL, MULTIPLICATIVE
from archscale.fit.coverage import (COORDINATES, _span, describe_coverage, outside_coverage, outside_label,
                                    outside_names, outside_sizes, size_brief, size_label)
from archscale.fit.fitted import FittedLaw

SHAPE_COLUMNS = ["n_layers", "d_model", "n_heads", "n_kv_heads", "d_head", "d_ff"]
MISSING_LATENCY = latency_column("ttft", 50)
"""The column whose NaN marks a shape scored without its latency (TTFT is NaN otherwise only where nothing fits)."""
SEARCHABLE_LAWS = (*CONDITIONAL, "aspect", "aspect-tied")
SEARCH_ROW_BYTES = 2 * ROW_BYTES
"""Search keeps predictions and throughput beside each candidate: about 450 bytes a row at peak (tracemalloc, 1B search)."""
GQA_NOTE = ("GQA does not enter the fitted law: GQA variants of a shape share its predicted loss; "
            "measured losses from --runs decide between them where present")
LIMITED_STORE_NOTE = ("--store measurements are not used under a latency limit: they are at fixed batches, and each shape "
                      "runs at its own batch here; the ranking is the estimate's")
NO_COVERAGE_NOTE = ("the fit records no coverage (the shapes its runs had), so no candidate can be checked for "
                    "extrapolation; refit with this version of archscale fit, or add a 'coverage' block to the fit JSON")


@dataclass
class SearchSpec:
    """What to search for: the budget, the candidate space and the serving workload."""

    n: float
    tokens: float
    n_layers: int | Sequence[int]  # one depth, or several whose shapes compete in one ranking (``layers``)
    d_head: int
    gpu: GPU
    workload: Workload
    tp: int = 1
    tolerance: float | None = None  # None: 0.05, or 0.02 when losses are relative to L_opt (see search)
    r_range: tuple[float, float] = (0.5, 5.0)
    # GQA groups tried; the law cannot judge GQA, so very large groups (MQA) are not tried unless asked for
    gqa_values: Sequence[int] | None = tuple(range(1, 17))
    vocab_size: int = 128256
    tie_embeddings: bool = True
    strict_hf: bool = False  # only shapes transformers (and so vLLM) loads: d_model a multiple of n_heads
    strict_hf_reason: str = "--strict-hf"  # why, as the search's note says it (the CLI: on by default with --emit)
    d_multiple: int = 128  # hardware-friendly widths; tiny CPU models want finer steps
    ff_multiple: int = 64
    profile: Profile | None = None  # None: the uncalibrated roofline on ``gpu``
    limits: LatencyLimits | None = None  # rank at each shape's most requests (up to the batch) that meet these
    usd_per_gpu_hour: float | None = None  # a GPU's price: each shape's dollars per million output tokens at its operating point
    extrapolate: bool = False  # rank candidates outside the fit's runs too (each labelled with what is out)
    tie_tolerance: float | None = None  # None: the profile's held-out speedup error (no ties when it has none)

    @property
    def layers(self) -> tuple[int, ...]:
        """The depths searched, ascending (one for the paper's search at a fixed depth)."""
        depths = [self.n_layers] if isinstance(self.n_layers, (int, np.integer)) else self.n_layers
        return tuple(sorted({int(depth) for depth in depths}))

    @property
    def layers_label(self) -> str:
        """``16`` or ``8,12,16,24``: the depths as ``--layers`` takes them, for messages and titles."""
        return ",".join(map(str, self.layers))

    @property
    def tie_rule(self) -> tuple[float, str] | None:
        """(relative throughput tolerance, where it comes from); None when nothing says how far to trust a gap."""
        if self.tie_tolerance is not None:
            return self.tie_tolerance, f"--tie {self.tie_tolerance:g}"
        error = self.throughput_model.heldout_speedup_points if self.throughput_model.calibrated else None
        if error is None:
            return None
        return error / 100, f"the held-out speedup error of profile {self.throughput_model.name}, {error:.1f} points"

    @property
    def throughput_model(self) -> Profile:
        """The profile estimates come from (the uncalibrated roofline on ``gpu`` when none was given)."""
        return self.profile or Profile.uncalibrated(self.gpu)

    def estimate(self, shapes: pd.DataFrame, workload: Workload | None = None) -> pd.DataFrame:
        """Estimates at a fixed batch (``workload``'s, default the search's)."""
        return self.throughput_model.estimate(shapes, workload or self.workload, self.tp)

    def serve(self, shapes: pd.DataFrame, profile: Profile | None = None, with_latency: bool = True) -> pd.DataFrame:
        """Estimates at the operating point the search ranks by: the fixed batch, or under ``limits`` each shape's own
        (``with_latency=False``: at a fixed batch, without the TTFT/TPOT columns, which nothing ranks by there)."""
        return operating_point(profile or self.throughput_model, shapes, self.workload, self.tp, self.limits, with_latency)

    def add_latency(self, shapes: pd.DataFrame, rows: Any = None) -> pd.DataFrame:
        """The TTFT, TPOT and ITL columns of shapes scored without them, for ``rows`` (a mask or index; default all)
        and NaN elsewhere: a fixed-batch search ranks a million shapes by throughput and fills them only for what it
        reports. Shapes scored under limits already have them."""
        if shapes.empty or self.limits is not None:
            return shapes
        chosen = shapes if rows is None else shapes.loc[rows]
        if MISSING_LATENCY in shapes.columns:  # some rows filled already: fill the rest of those asked for
            chosen = chosen[chosen[MISSING_LATENCY].isna()]
        out = shapes.copy()
        for column in LATENCY_COLUMNS:
            if column not in out.columns:
                out[column] = np.nan
        if len(chosen):
            latency = self.throughput_model.estimate(chosen, self.workload, self.tp)
            for column in LATENCY_COLUMNS:
                out.loc[chosen.index, column] = latency[column].to_numpy()
        out.attrs = dict(shapes.attrs)  # select_top_k's tie count rides on the picks
        return out


@dataclass
class Target:
    """The loss constraint ``L <= loss`` and where it came from."""

    loss: float
    source: str
    reference: dict[str, Any] | None = None


@dataclass
class SearchResult:
    candidates: pd.DataFrame
    target: Target
    continuous_optimum: dict[str, float]
    best_discrete: dict[str, Any]
    top_k: pd.DataFrame
    relative: bool
    notes: list[str]
    throughput_model: Profile | None = None
    coverage: dict[str, list[float]] | None = None  # the fit's, for the output
    gqa: "GqaPolicy | None" = None  # whether GQA was ranked by the law or held at one group
    limit_comparison: dict[str, Any] | None = None  # under a latency limit: its pick beside the fixed batch's, and why

    def speedup_source(self, row: Any) -> str:
        """Where a row's speedup over the reference comes from: measurements, or the profile that estimated both."""
        reference = self.target.reference or {}
        measured = (getattr(row, "throughput_source", None) == "measured",
                    reference.get("throughput_source") == "measured")
        if all(measured):
            return "measured"
        if any(measured):
            return "one measured, one estimated and scaled to the measurements"
        model = self.throughput_model
        if model is None or not model.calibrated:
            return "uncalibrated roofline"
        error = model.heldout_speedup_points
        return f"profile {model.name}" + (f" (held-out speedup error {error:.1f} points)" if error is not None else "")

    @property
    def feasible(self) -> pd.DataFrame:
        return self.candidates[self.candidates["feasible"]]

    @property
    def frontier(self) -> pd.DataFrame:
        return self.candidates[self.candidates["on_frontier"]].sort_values("tokens_per_s")


# ---------------------------------------------------------------------------
# loss
# ---------------------------------------------------------------------------
def check_searchable(fitted: FittedLaw) -> None:
    if "G" in fitted.law.columns:  # the granularity law: MoE runs only, no dense form, no term for E
        raise UserError(f"{fitted.source}: law {fitted.law.name} predicts MoE runs at one expansion rate only (no dense "
                        "form, no term for the number of experts), so it cannot rank dense against MoE shapes; search "
                        "with a joint law (moe-joint, e.g. data/fits/ludziejewski2025_joint.json)")
    if fitted.law.name not in SEARCHABLE_LAWS:
        raise UserError(f"{fitted.source}: search needs an architecture law ({', '.join(SEARCHABLE_LAWS)}), "
                        f"but this fit is law {fitted.law.name!r}, which cannot tell shapes of one size apart")


def losses_are_relative(fitted: FittedLaw) -> bool:
    """A conditional law without a reference law for ``L_opt`` predicts losses relative to ``L_opt``."""
    return "L_opt" in fitted.law.columns and fitted.reference is None


def relative_unit(fitted: FittedLaw) -> str:
    """What a relative prediction of a conditional law is: ``L / L_opt`` (multiplicative) or ``L - L_opt`` (additive)."""
    return "L / L_opt" if fitted.law.name in MULTIPLICATIVE else "L - L_opt"


def predict_loss(fitted: FittedLaw, shapes: pd.DataFrame, tokens: float) -> np.ndarray:
    """Predicted loss of each shape at ``tokens`` (relative, see :func:`losses_are_relative`).

    Without a reference law, a conditional law can still rank shapes: it
    predicts ``L / L_opt`` (multiplicative) or ``L - L_opt`` (additive),
    which is what the comparison against a matched architecture needs.
    """
    frame = pd.DataFrame({
        "N": shapes["N"].to_numpy(float),
        "D": np.full(len(shapes), float(tokens)),
        "x": shapes["x"].to_numpy(float),
        "r": shapes["r"].to_numpy(float),
        "R": (shapes["d_model"] / shapes["n_layers"]).to_numpy(float),
        "gqa": shapes["gqa"].to_numpy(float),
    })
    if losses_are_relative(fitted):
        neutral = 1.0 if fitted.law.name in MULTIPLICATIVE else 0.0
        return fitted.predict(frame, l_opt=np.full(len(frame), neutral))
    return fitted.predict(frame)


def shape_row(arch: Architecture) -> dict[str, Any]:
    """One candidate-table row for an architecture (used for the matched reference)."""
    return {**arch.shape_columns(), "N": arch.n_params_non_embedding, "r": arch.r_mlp_attn, "x": arch.d_over_sqrt_n,
            "gqa": arch.gqa_group, "R": arch.aspect_ratio}


def resolve_target(fitted: FittedLaw, spec: SearchSpec, relative: bool, optimum_loss: float,
                   target_loss: float | None, match: Architecture | None, slack: float | None,
                   optimum_label: str = "the predicted optimum") -> Target:
    """Exactly one of ``--target-loss``, ``--match`` or ``--slack`` sets the constraint (slack 1% by default).

    ``optimum_loss`` is what the slack is taken over, and ``optimum_label`` says what it is."""
    given = [flag for flag, value in (("--target-loss", target_loss), ("--match", match), ("--slack", slack)) if value is not None]
    if len(given) > 1:
        raise UserError(f"{' and '.join(given)} both set the loss target; give only one")
    if target_loss is not None:
        if relative:
            raise UserError(f"--target-loss needs absolute losses, but {fitted.source} has no reference law for L_opt; "
                            "use --match or --slack, or give --reference chinchilla.json")
        if not target_loss > 0:
            raise UserError(f"--target-loss must be positive, got {target_loss}")
        return Target(float(target_loss), "--target-loss")
    if match is not None:
        check_tensor_parallel(match.n_heads, match.n_kv_heads, spec.tp, f"--match {match.name}")
        row = pd.DataFrame([shape_row(match)])
        loss = predict_loss(fitted, row, spec.tokens)
        throughput = spec.serve(row).iloc[0]
        reference = {**shape_row(match), "name": match.name, "predicted_loss": float(loss[0]),
                     "tokens_per_s": float(throughput["tokens_per_s"]),
                     "output_tokens_per_s": float(throughput["output_tokens_per_s"]), "fits": bool(throughput["fits"]),
                     "throughput_source": "estimate"}
        if spec.limits is not None:
            reference.update(operating_batch=int(throughput["operating_batch"]),
                             meets_limits=bool(throughput["meets_limits"]),
                             **{c: float(throughput[c]) for c in limit_columns(spec.limits)})
        return Target(float(loss[0]), f"--match {match.name}", reference)
    slack = 0.01 if slack is None else slack
    if not 0 <= slack < 1:
        raise UserError(f"--slack must be a fraction in [0, 1), got {slack}")
    if relative and fitted.law.name == "conditional-add":
        return Target(optimum_loss + slack, f"--slack {slack} over {optimum_label} (additive, absolute units)")
    return Target(optimum_loss * (1 + slack), f"--slack {slack:.1%} over {optimum_label}")


# ---------------------------------------------------------------------------
# loss uncertainty: the fit's bootstrap refits carried into the choice
# ---------------------------------------------------------------------------
def _with_params(fitted: FittedLaw, params: dict[str, float]) -> FittedLaw:
    return dataclasses.replace(fitted, params=params, draws=[])


def check_confidence(fitted: FittedLaw, confidence: float | None) -> None:
    """``--confidence`` is a share of refits in (0, 1] (1: every refit must meet the target), and needs refits."""
    if confidence is None:
        return
    if not 0 < confidence <= 1:
        raise UserError(f"--confidence must be a probability in (0, 1]: the share of the fit's bootstrap refits under "
                        f"which a pick meets the target (1: every refit), got {confidence:g}")
    if not fitted.draws:
        raise UserError(f"--confidence needs a fit with bootstrap refits, and {fitted.source} has none: "
                        "refit with archscale fit ... --bootstrap 200")


def meets_target_probability(fitted: FittedLaw, candidates: pd.DataFrame, spec: SearchSpec, target: Target,
                             target_loss: float | None, match: Architecture | None, slack: float | None) -> np.ndarray:
    """The share of the fit's bootstrap refits under which each candidate's loss meets the target.

    The target is re-derived under every refit the way it was set: a fixed ``--target-loss`` stays put; a
    ``--match`` target is the matched architecture's loss under the same refit (the comparison is paired, so
    what both share cancels); a ``--slack`` target is that refit's own best candidate (of :func:`slack_pool`)
    times ``1 + slack``.
    A measured loss (``--runs``) is certain: it meets the target or not.
    """
    meets = np.zeros(len(candidates))
    pool = slack_pool(candidates, spec.extrapolate)
    match_row = pd.DataFrame([shape_row(match)]) if match is not None else None
    for params in fitted.draws:
        draw = _with_params(fitted, params)
        losses = predict_loss(draw, candidates, spec.tokens)
        if target_loss is not None:
            bar = target.loss
        elif match_row is not None:
            bar = float(predict_loss(draw, match_row, spec.tokens)[0])
        else:
            bar = _slack_target(draw, float(np.min(losses[pool])), slack)
        meets += losses <= bar + 1e-12
    probability = meets / len(fitted.draws)
    measured = (candidates["loss_source"] == "measured").to_numpy()
    probability[measured] = (candidates["predicted_loss"].to_numpy()[measured] <= target.loss + 1e-12).astype(float)
    return probability


def _slack_target(fitted: FittedLaw, best: float, slack: float | None) -> float:
    slack = 0.01 if slack is None else slack
    if losses_are_relative(fitted) and fitted.law.name == "conditional-add":
        return best + slack
    return best * (1 + slack)


def loss_intervals(fitted: FittedLaw, shapes: pd.DataFrame, tokens: float) -> tuple[np.ndarray, np.ndarray]:
    """95% interval of each shape's predicted loss over the fit's bootstrap refits (NaN without refits)."""
    if not fitted.draws or shapes.empty:
        return np.full(len(shapes), np.nan), np.full(len(shapes), np.nan)
    draws = np.array([predict_loss(_with_params(fitted, params), shapes, tokens) for params in fitted.draws])
    low, high = np.percentile(draws, [2.5, 97.5], axis=0)
    measured = (shapes["loss_source"] == "measured").to_numpy() if "loss_source" in shapes else np.zeros(len(shapes), bool)
    low[measured] = high[measured] = shapes["predicted_loss"].to_numpy()[measured]
    return low, high


def loss_feasible(candidates: pd.DataFrame, fitted: FittedLaw, spec: SearchSpec, target: Target, confidence: float | None,
                  target_loss: float | None, match: Architecture | None, slack: float | None) -> pd.Series:
    """Whether each candidate's loss meets the target: its prediction, and with ``confidence`` that share of refits
    too. ``--confidence`` only narrows: a low share (0.1) must not admit a shape whose own prediction misses."""
    meets = candidates["predicted_loss"] <= target.loss + 1e-12
    if confidence is None:
        return meets
    candidates["p_meets_target"] = meets_target_probability(fitted, candidates, spec, target, target_loss, match, slack)
    return meets & (candidates["p_meets_target"] >= confidence)


def add_loss_intervals(top: pd.DataFrame, fitted: FittedLaw, tokens: float) -> pd.DataFrame:
    """The picks with the 95% interval of their predicted loss (``loss_low``, ``loss_high``) when the fit has refits."""
    if fitted.draws and not top.empty:
        top["loss_low"], top["loss_high"] = loss_intervals(fitted, top, tokens)
    return top


def continuous_optimum(fitted: FittedLaw, spec: SearchSpec) -> dict[str, float]:
    """The law's closed-form optimum, with the hidden size it implies at this budget.

    Its loss is predicted at each searched depth; with several depths and a law that sees depth, the optimum is
    the one at the best depth and says which (``n_layers``). A law blind to depth predicts one loss at all.
    """
    optimum = fitted.optimum()
    if "x" in optimum and math.isfinite(optimum["x"]):
        optimum["d_model"] = optimum["x"] * math.sqrt(spec.n)
    if optimum and all(math.isfinite(v) for v in optimum.values()) and {"x", "r"} <= set(optimum):
        depths = spec.layers
        frame = pd.DataFrame({"N": spec.n, "x": optimum["x"], "r": optimum["r"], "d_model": optimum.get("d_model", 0.0),
                              "n_layers": list(depths), "gqa": 1.0})  # a GQA-aware law's factor is 1 at multi-head attention
        loss = predict_loss(fitted, frame, spec.tokens)
        best = int(np.argmin(loss))
        optimum["predicted_loss"] = float(loss[best])
        if len(depths) > 1 and sees_depth(fitted):
            optimum["n_layers"] = float(depths[best])
    return optimum


# ---------------------------------------------------------------------------
# measurements that replace predictions
# ---------------------------------------------------------------------------
def _shape_key(frame: pd.DataFrame) -> pd.Series:
    """A hashable key per exact shape: the shape integers and the expert layout, all 0 for a dense shape (a table
    without expert columns, or a row with at most one expert), so that a dense candidate never takes the measurement
    of an MoE model with the same dense columns, nor an MoE candidate another expert layout's."""
    experts = {c: (pd.to_numeric(frame[c], errors="coerce").fillna(0).astype("int64") if c in frame.columns
                   else pd.Series(0, index=frame.index, dtype="int64")) for c in MOE_FIELDS}
    dense = experts["n_experts"] <= 1
    columns = [frame[c].astype("int64") for c in SHAPE_COLUMNS] + [experts[c].where(~dense, 0) for c in MOE_FIELDS]
    return pd.Series(list(zip(*columns)), index=frame.index)


def apply_measured_losses(candidates: pd.DataFrame, runs: pd.DataFrame | None, tokens: float) -> pd.DataFrame:
    """Replace predicted losses by measured ones for shapes trained at (within 10% of) this token budget."""
    candidates["loss_source"] = "predicted"
    if runs is None:
        return candidates
    missing = [c for c in SHAPE_COLUMNS if c not in runs.columns]
    if missing:
        raise UserError(f"--runs: the runs table has no shape column {missing[0]!r}, so no run can be matched to a "
                        f"candidate (it needs {', '.join(SHAPE_COLUMNS)}, as train writes them); give a runs table of "
                        "trained shapes, or leave out --runs")
    same_budget = runs[(runs["D"] / tokens - 1).abs() <= 0.10].dropna(subset=SHAPE_COLUMNS)
    if same_budget.empty:
        return candidates
    measured = same_budget.groupby(_shape_key(same_budget))["loss"].min().rename("predicted_loss")
    return _override(candidates, measured, "loss_source")


def apply_measured_throughput(candidates: pd.DataFrame, bench: pd.DataFrame | None, spec: SearchSpec) -> pd.DataFrame:
    """Use measured tokens/s from a bench results table where it has this shape, GPU and workload.

    ``bench`` holds measurements only (``archscale.bench.store.load_results(path, measured_only=True)``).
    """
    candidates["throughput_source"] = "estimate"
    if bench is None:
        return candidates
    needed = SHAPE_COLUMNS + ["gpu", "batch_size", "input_len", "output_len", "tokens_per_s"]
    missing = [c for c in needed if c not in bench.columns]
    if missing:
        raise UserError(f"--store: the results table needs column {missing[0]!r}")
    rows = bench[(bench["gpu"].astype(str).str.lower() == spec.gpu.name.lower())
                 & (bench["batch_size"] == spec.workload.batch_size)
                 & (bench["input_len"] == spec.workload.input_len)
                 & (bench["output_len"] == spec.workload.output_len)
                 & bench["tokens_per_s"].notna()].copy()
    # the same workload fixes the ratio of the two units; a table with only the total still gives the output rate
    share = spec.workload.output_len / (spec.workload.input_len + spec.workload.output_len)
    given = rows["output_tokens_per_s"] if "output_tokens_per_s" in rows else pd.Series(np.nan, index=rows.index)
    rows["output_tokens_per_s"] = given.fillna(rows["tokens_per_s"] * share)
    if "tp" in rows.columns:
        rows = rows[rows["tp"] == spec.tp]
    if rows.empty:
        return candidates
    means = rows.groupby(_shape_key(rows))[["tokens_per_s", "output_tokens_per_s"]].mean()
    return _override(candidates, means, "throughput_source")


def use_measured_throughput(candidates: pd.DataFrame, bench: pd.DataFrame | None, spec: SearchSpec,
                            notes: list[str]) -> tuple[pd.DataFrame, tuple[float, int] | None, pd.DataFrame | None]:
    """The measured throughputs of ``bench`` in place of the estimates, and every other estimate on their scale
    (:func:`measured_scale`); returns the candidates, the scale, and the bench rows still in use: under a latency
    limit none, since measurements are at fixed batches and each shape runs at its own (``notes`` says so)."""
    if spec.limits is not None and bench is not None:
        notes.append(LIMITED_STORE_NOTE)
        bench = None
    estimated = candidates["tokens_per_s"].copy()
    candidates = apply_measured_throughput(candidates, bench, spec)
    scale = measured_scale(candidates, estimated)
    if scale is not None:
        candidates = scale_estimates(candidates, scale[0])
    return candidates, scale, bench


def measured_scale(candidates: pd.DataFrame, estimated: pd.Series) -> tuple[float, int] | None:
    """(median measured / estimated tokens/s over the measured shapes, how many), or None when none is measured.

    Estimates and measurements are on different scales (an uncalibrated roofline is 25x a CPU measurement), so
    ranking them together ranks the source, not the shape. Scaling every estimate by this ratio puts them on the
    measurements' scale; with one measured shape that is a one-point calibration, and the output says so.
    """
    measured = (candidates["throughput_source"] == "measured").to_numpy()
    if not measured.any():
        return None
    ratio = candidates.loc[measured, "tokens_per_s"].to_numpy(float) / estimated[measured].to_numpy(float)
    ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
    return (float(np.median(ratio)), int(measured.sum())) if len(ratio) else None


def scale_estimates(frame: pd.DataFrame, scale: float) -> pd.DataFrame:
    """Estimated rows (not measured ones) times ``scale``, marked as scaled."""
    estimated = frame["throughput_source"] == "estimate"
    for column in ("tokens_per_s", "output_tokens_per_s"):
        frame.loc[estimated, column] = frame.loc[estimated, column] * scale
    frame.loc[estimated, "throughput_source"] = "estimate, scaled to measurements"
    return frame


def scale_note(scale: tuple[float, int], spec: SearchSpec) -> str:
    value, count = scale
    shapes = f"{count} measured shape{'s' if count != 1 else ''}"
    caveat = ("; one shape is a one-point calibration: the order among unmeasured shapes is still the estimate's"
              if count == 1 else "")
    return (f"measured and estimated throughputs are ranked on one scale: every estimate is multiplied by {value:.3g}, "
            f"the median measured/estimated ratio of {shapes} on {spec.gpu.name} at this workload{caveat}")


def measured_count_notes(candidates: pd.DataFrame) -> list[str]:
    """How many candidates took a measured loss (``--runs``) or throughput (``--store``) instead of the estimate."""
    notes = []
    for column, what in (("loss_source", "loss"), ("throughput_source", "throughput")):
        count = int((candidates[column] == "measured").sum()) if column in candidates else 0
        if count:
            notes.append(f"{count:,} candidates use a measured {what} instead of the estimate")
    return notes


def _override(candidates: pd.DataFrame, measured: pd.Series | pd.DataFrame, source_column: str) -> pd.DataFrame:
    """Replace the measured columns by their values for every candidate whose exact shape was measured."""
    keys = _shape_key(candidates)
    hit = keys.isin(measured.index)
    frame = measured.to_frame() if isinstance(measured, pd.Series) else measured
    for column in frame.columns:
        candidates.loc[hit, column] = keys[hit].map(frame[column]).to_numpy()
    candidates.loc[hit, source_column] = "measured"
    return candidates


# ---------------------------------------------------------------------------
# where the law has seen runs
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class GqaPolicy:
    """Whether the search ranks GQA variants by the law, or holds GQA at one group, and why."""

    traded: bool
    held_at: float | None  # the one group ranked when not traded (None: nothing known to hold it at)
    note: str
    runs: list[float] | None = None  # [low, high] of the groups the fit's runs had


def gqa_policy(fitted: FittedLaw) -> GqaPolicy:
    """The search trades on GQA only through a GQA term that passed the fit's held-out check.

    Otherwise GQA is held at the fit's baseline group (the one most runs had) and other groups are extrapolations,
    ranked only with ``--extrapolate`` and labelled; ``archscale search-gqa`` settles the group by training.
    """
    seen = (fitted.coverage or {}).get("gqa")
    has_term = "gqa" in fitted.law.columns
    term = (f"GQA enters the fitted law ({fitted.law.description}, c = {fitted.params['c']:.3g}"
            f"{f' on runs with GQA {seen[0]:.3g}-{seen[1]:.3g}' if seen else ''})" if has_term else "")
    check = fitted.gqa
    if check is not None and check.traded:
        return GqaPolicy(True, None, f"{term}; {check.reason}: the search ranks GQA variants by it", check.spread)
    settle = "; archscale search-gqa on this search's --out settles the group by training"
    if check is not None:
        lead = f"{term}, but " if has_term else ""
        return GqaPolicy(False, check.baseline, f"{lead}{check.reason}{settle if len(check.runs_by_gqa) > 1 else ''}",
                         check.spread)
    if not seen:
        return GqaPolicy(not has_term, None, term or GQA_NOTE)
    if has_term or seen[0] != seen[1]:
        why = "the fit records no held-out check of its GQA term" if has_term else "the law has no GQA term"
        return GqaPolicy(False, seen[0], f"{term + '; ' if term else ''}{why} (refit with this version of archscale "
                         f"fit): GQA is held at {seen[0]:.3g}, the smallest group the runs had{settle}", seen)
    return GqaPolicy(False, seen[0], GQA_NOTE, seen)


def ranking_coverage(fitted: FittedLaw, policy: GqaPolicy) -> dict[str, list[float]] | None:
    """The box a candidate must lie in to be ranked: the fit's runs, with GQA narrowed to the held group."""
    if not fitted.coverage:
        return None
    coverage = dict(fitted.coverage)
    if policy.held_at is not None and "gqa" in coverage:
        coverage["gqa"] = [policy.held_at, policy.held_at]
    return coverage


def held_bounds(policy: GqaPolicy) -> dict[str, str]:
    """``{"gqa": "held at 1; runs 1-8"}`` when GQA is held inside a wider range the runs had."""
    runs = policy.runs
    if policy.held_at is None or not runs or runs[0] == runs[1]:
        return {}
    return {"gqa": f"held at {policy.held_at:.3g}; runs {runs[0]:.3g}-{runs[1]:.3g}"}


def law_coordinates(fitted: FittedLaw) -> tuple[str, ...]:
    """The coordinates whose range decides whether a candidate lies inside the fit's runs.

    Width (x) and MLP share (r) are the conditional laws' inputs; GQA is no input of theirs, so a law fitted
    at one GQA says nothing about another; depth counts only for the aspect laws, which see it (R = d/layers).
    """
    return ("x", "r", "gqa", "n_layers") if sees_depth(fitted) else ("x", "r", "gqa")


def sees_depth(fitted: FittedLaw) -> bool:
    """Whether the law's prediction changes with depth (the aspect laws, through R = d/layers)."""
    return "R" in fitted.law.columns


def fit_depths(fitted: FittedLaw) -> str:
    """``4 layers``, ``4-8 layers``, or that the fit records none: the depth(s) of the fit's runs, for messages."""
    seen = (fitted.coverage or {}).get("n_layers")
    return f"{_span(*seen)} layers" if seen else "no depth recorded in the fit"


def depth_blind(fitted: FittedLaw, depths: Sequence[int]) -> bool:
    """A law that cannot see depth asked to compare several: each depth but the fit's own is an extrapolation.

    One depth keeps the paper's use (a conditional law fitted at one depth, searched at the target's).
    """
    return not sees_depth(fitted) and len(depths) > 1


def carried_depth_note(fitted: FittedLaw, depths: Sequence[int]) -> str | None:
    """A note when a law blind to depth, fitted at one depth, is searched at another: every shape's loss then rests
    on the law carrying over to that depth unmeasured (as the dissertation carried its 12-layer law to 16 layers)."""
    seen = (fitted.coverage or {}).get("n_layers")
    if sees_depth(fitted) or len(depths) != 1 or not seen or seen[0] != seen[1] or int(depths[0]) == int(seen[0]):
        return None
    return (f"depth: the fit's runs had {fit_depths(fitted)} and this search is at {int(depths[0])}; law "
            f"{fitted.law.name} cannot see depth, so its losses are carried to {int(depths[0])} layers unmeasured "
            "(an extrapolation every shape shares)")


def check_depths(fitted: FittedLaw, spec: SearchSpec) -> None:
    """Several depths with a law blind to depth are ranked only with ``--extrapolate``, each labelled."""
    if depth_blind(fitted, spec.layers) and not spec.extrapolate:
        raise UserError(f"--layers {spec.layers_label}: law {fitted.law.name} cannot tell depths apart (its runs had "
                        f"{fit_depths(fitted)}): it gives shapes of one x and r the same loss at every depth; add "
                        "--extrapolate to rank other depths as extrapolations, or give one depth")


def depth_bounds(fitted: FittedLaw, depths: Sequence[int]) -> dict[str, str]:
    """``{"n_layers": "law cannot see depth; runs 4"}`` for a depth-blind search's labels."""
    if not depth_blind(fitted, depths):
        return {}
    seen = (fitted.coverage or {}).get("n_layers")
    return {"n_layers": "law cannot see depth" + (f"; runs {_span(*seen)}" if seen else "")}


def _outside_depth(candidates: pd.DataFrame, fitted: FittedLaw, depths: Sequence[int]) -> np.ndarray:
    """The depth bit for every candidate of a depth-blind search whose depth is not the one the fit's runs had."""
    if not depth_blind(fitted, depths):
        return np.zeros(len(candidates), dtype=np.int64)
    seen = (fitted.coverage or {}).get("n_layers")
    depth = candidates["n_layers"].to_numpy()
    other = np.ones(len(candidates), bool) if not seen or seen[0] != seen[1] else depth != seen[0]
    return other.astype(np.int64) << list(COORDINATES).index("n_layers")


def checked_coordinates(fitted: FittedLaw, depths: Sequence[int]) -> tuple[str, ...]:
    """The coordinates a candidate is checked on: the law's, and depth as well when a depth-blind law compares several."""
    coordinates = law_coordinates(fitted)
    return coordinates + ("n_layers",) if depth_blind(fitted, depths) and "n_layers" not in coordinates else coordinates


def mark_coverage(candidates: pd.DataFrame, fitted: FittedLaw, policy: GqaPolicy,
                  depths: Sequence[int] = ()) -> pd.DataFrame:
    """``outside``: per candidate, the bit mask of coordinates outside the fit's runs (0 inside, or no coverage).

    ``depths``: the depths searched; with several and a law blind to depth, every depth but the fit's is out.
    """
    coverage = ranking_coverage(fitted, policy)
    if coverage:
        candidates["outside"] = outside_coverage(candidates, coverage, law_coordinates(fitted))
    else:
        candidates["outside"] = np.zeros(len(candidates), dtype=np.int64)
    candidates["outside"] |= _outside_depth(candidates, fitted, depths)
    return candidates


def coverage_notes(candidates: pd.DataFrame, fitted: FittedLaw, extrapolate: bool, policy: GqaPolicy,
                   depths: Sequence[int] = ()) -> list[str]:
    """What lies outside the fit's runs among the feasible candidates, and whether it was ranked."""
    coverage = ranking_coverage(fitted, policy)
    blind = [f"law {fitted.law.name} cannot tell depths apart (its runs had {fit_depths(fitted)}): at each x and r "
             "it predicts one loss for every depth, so depths other than its runs' are ranked by throughput "
             "alone, labelled"] if depth_blind(fitted, depths) else []
    if not coverage:
        return [NO_COVERAGE_NOTE] + blind
    out = candidates.loc[candidates["feasible"], "outside"].to_numpy()
    if not out.any():
        return blind
    counts = [f"{name} {int(((out >> bit) & 1).sum()):,}" for bit, name in enumerate(COORDINATES) if ((out >> bit) & 1).any()]
    checked = {c: coverage[c] for c in checked_coordinates(fitted, depths) if c in coverage}
    held = " held" if held_bounds(policy) else ""
    what = (f"{int((out > 0).sum()):,} feasible candidates lie outside the fit's runs "
            f"({describe_coverage(checked)}{held}; out by {', '.join(counts)})")
    if extrapolate:
        return [f"{what}: ranked anyway (--extrapolate), each labelled with what is out"] + blind
    unseen = "the law has not seen them, or may not rank their GQA" if held else "the law has not seen them"
    return [f"{what} and are not ranked: {unseen}; --extrapolate ranks them, labelled"] + blind


def label_extrapolations(picks: pd.DataFrame, fitted: FittedLaw, policy: GqaPolicy,
                         depths: Sequence[int] = (), tokens: float | None = None) -> pd.DataFrame:
    """``extrapolation`` (what is out, "" inside: shape coordinates, then size and ``tokens`` past or below the
    fit's runs) and ``inside_data`` (the shape coordinates checked and inside) per pick."""
    if picks.empty:
        return picks
    coverage = ranking_coverage(fitted, policy) or {}
    checked = [c for c in checked_coordinates(fitted, depths) if c in coverage]
    bounds = {**held_bounds(policy), **depth_bounds(fitted, depths)}
    labels, shapes, briefs, inside = [], [], [], []
    for row in picks.to_dict("records"):
        mask = int(row.get("outside", 0))
        shape = outside_label(row, mask, coverage, bounds) if mask else ""
        size = size_label(fitted.size_range, row["N"], tokens) if tokens is not None else ""
        labels.append("; ".join(part for part in (shape, size) if part))
        shapes.append(shape)
        briefs.append(size_brief(fitted.size_range, row["N"], tokens) if tokens is not None else "")
        inside.append(",".join(c for c in checked if c not in outside_names(mask)))
    picks["extrapolation"] = labels
    picks["extrapolation_brief"] = table_labels(shapes, briefs)
    picks["inside_data"] = inside
    return picks


def table_labels(shapes: list[str], sizes: list[str]) -> list[str]:
    """A table's extrapolation cell per pick: its shape label, with its size (``N 3.28x``) only where the picks differ
    in which sizes lie outside the runs, or which way; what every pick shares is the note under the table (with the
    largest multiple), not a column repeated on every row."""
    shared = len({re.sub(r"[0-9.]+x", "", size) for size in sizes}) == 1  # the same sizes out, the same way
    return ["; ".join(part for part in (shape, "" if shared else size) if part) for shape, size in zip(shapes, sizes)]


def reference_note(target: Target, fitted: FittedLaw) -> str | None:
    """A matched reference outside the fit's runs makes the target loss itself an extrapolation of the law."""
    reference = target.reference
    if not reference or not fitted.coverage:
        return None
    mask = int(outside_coverage(pd.DataFrame([reference]), fitted.coverage, law_coordinates(fitted))[0])
    if not mask:
        return None
    return (f"the target is the law's prediction for {reference.get('name', 'the reference')}, whose "
            f"{outside_label(reference, mask, fitted.coverage)} lies outside the fit's runs: the target itself is an extrapolation")


# ---------------------------------------------------------------------------
# ranking
# ---------------------------------------------------------------------------
def pareto_mask(loss: np.ndarray, throughput: np.ndarray) -> np.ndarray:
    """Rows no other row beats on both lower loss and higher throughput.

    Sorted fastest first, a row is on the frontier when its loss is lower than
    that of every faster row: one running minimum, no pairwise comparison.
    """
    order = np.lexsort((loss, -throughput))  # fastest first, ties by lower loss
    sorted_loss = loss[order]
    best_before = np.concatenate(([np.inf], np.minimum.accumulate(sorted_loss)[:-1]))
    mask = np.zeros(len(loss), dtype=bool)
    mask[order] = sorted_loss < best_before
    return mask


def within_tie(throughput: Any, fastest: Any, tolerance: float) -> Any:
    """True where ``throughput`` is within ``tolerance`` (relative) of ``fastest``: closer than the estimate's stated
    error, so the estimate cannot order them. The search's tie rule, and the rule its validation scores by."""
    return throughput >= fastest * (1 - tolerance)


def select_top_k(feasible: pd.DataFrame, k: int, tie: tuple[float, str] | None = None) -> pd.DataFrame:
    """The k fastest shape families (depth, d_model and attention width), each at its fastest d_ff and GQA.

    Candidates that differ only in ``d_ff`` by a rounding step, or only in GQA,
    are one choice for training; listing them as separate top-k entries would
    hide real alternatives. The GQA variants of each pick are listed beside it.

    ``tie`` = (tolerance, source): families whose throughput is within ``tolerance`` (relative) of the fastest
    are a tie, since the estimate cannot order them; within the tie the lowest predicted loss comes first, and
    ``tie`` marks them. Outside it, the order is by throughput.
    """
    if feasible.empty:
        return feasible
    ranked = feasible.sort_values(["tokens_per_s", "predicted_loss"], ascending=[False, True])
    # one family: depth, width and attention width (GQA variants and d_ff steps of one shape are one choice)
    family = pd.Series(list(zip(ranked["n_layers"], ranked["d_model"], ranked["n_heads"] + ranked["n_kv_heads"])),
                       index=ranked.index)
    families = ranked[~family.duplicated()]
    tied = np.zeros(len(families), dtype=bool)
    if tie is not None:
        fastest = float(families["tokens_per_s"].iloc[0])
        within = within_tie(families["tokens_per_s"], fastest, tie[0]).to_numpy()
        if within.sum() > 1:  # a tie of one is no tie
            families = pd.concat([families[within].sort_values(["predicted_loss", "tokens_per_s"], ascending=[True, False]),
                                  families[~within]])
            tied = np.sort(within)[::-1]  # the tie now leads
    best = families.head(k).copy()
    best["tie"] = tied[: len(best)]
    best["gqa_variants"] = [
        ",".join(str(int(g)) for g in ranked.loc[ranked["shape_id"] == shape, "gqa"]) for shape in best["shape_id"]
    ]
    best.insert(0, "rank", range(1, len(best) + 1))
    best.attrs["tie_size"] = int(tied.sum())
    return best


def add_speedup_intervals(picks: pd.DataFrame, target: Target, spec: SearchSpec) -> pd.DataFrame:
    """``speedup_low``/``speedup_high``: each pick's speedup over the reference under every admissible term set of the
    profile (eta_kv refits that fit its rows about as well). Estimated rows only; a measured pair has no such spread."""
    model = spec.throughput_model
    reference = target.reference
    sets = model.term_sets if model.calibrated else []
    if picks.empty or not reference or len(sets) < 2:
        return picks
    ratios = []
    for terms in sets:
        alternative = dataclasses.replace(model, terms=terms)
        speed = spec.serve(picks, alternative)["output_tokens_per_s"].to_numpy(float)
        base = spec.serve(pd.DataFrame([reference]), alternative)["output_tokens_per_s"].iloc[0]
        ratios.append(speed / base)
    ratios = np.array(ratios)
    estimated = (picks["throughput_source"] != "measured").to_numpy() & (reference.get("throughput_source") != "measured")
    picks["speedup_low"] = np.where(estimated, ratios.min(axis=0), np.nan)
    picks["speedup_high"] = np.where(estimated, ratios.max(axis=0), np.nan)
    return picks


def reported_rows(candidates: pd.DataFrame) -> pd.Index:
    """The candidates a search's output shows beyond its picks: the frontier, and the lowest predicted loss of
    each GQA group (the best discrete shape, and the GQA-4 baseline the JSON gives)."""
    frontier = candidates.index[candidates["on_frontier"].to_numpy(bool)]
    lowest = candidates.groupby("gqa")["predicted_loss"].idxmin().to_numpy()
    return frontier.union(pd.Index(lowest))


def tie_note(picks: pd.DataFrame, tie: tuple[float, str] | None) -> str:
    """One line stating the tie rule and what it did (or why no tie could be judged)."""
    if tie is None:
        return ("no tie rule: these throughputs have no held-out error (uncalibrated estimate), so gaps between "
                "picks are not validated; --tie FRACTION sets one")
    size = int(picks.attrs.get("tie_size", 0))
    rule = (f"tie rule: shapes within {100 * tie[0]:.1f}% of the fastest estimated throughput ({tie[1]}) are a tie, "
            "ordered by lower predicted loss")
    if size > 1:
        return f"{rule}; {size} shape families tie for first" + (f" (the first {len(picks)} shown)" if size > len(picks) else "")
    return f"{rule}; the fastest is ahead of the rest by more than that"


def lowest_losses(candidates: pd.DataFrame, extrapolate: bool) -> tuple[Any, Any, str]:
    """The candidate of lowest predicted loss (an inside one where several tie, as GQA variants the law cannot tell
    apart do), the candidate ``--slack`` is taken over, and how to name that one.

    The slack base is the lowest predicted loss, unless it lies outside the fit's runs and they may not be ranked
    (no ``--extrapolate``): then the lowest inside them. A target set by an extrapolated loss would hold what may
    be ranked to a loss the law has not seen, and could refuse every shape it has seen."""
    losses, inside = candidates["predicted_loss"], candidates["outside"] == 0
    best = losses.idxmin()
    if inside.any() and losses[inside].min() <= losses[best]:
        best = losses[inside].idxmin()
    base = losses[slack_pool(candidates, extrapolate)].idxmin()
    if losses[base] <= losses[best]:
        return best, best, "the predicted optimum"
    return best, base, "the lowest predicted loss inside the fit's runs (the lowest of all lies outside them)"


def slack_pool(candidates: pd.DataFrame, extrapolate: bool) -> np.ndarray:
    """The candidates ``--slack`` takes its base over: those inside the fit's runs, unless ``--extrapolate`` ranks
    the rest too (or none is inside); the bootstrap refits of ``--confidence`` take theirs over the same."""
    inside = (candidates["outside"] == 0).to_numpy()
    return inside if inside.any() and not extrapolate else np.ones(len(candidates), dtype=bool)


def refuse_if_none_fits(candidates: pd.DataFrame, spec: SearchSpec) -> None:
    """When no shape fits in device memory at all, that is the reason nothing can be ranked: say so, naming the
    flags that set it, rather than a loss target that some shapes meet."""
    if candidates["fits"].any():
        return
    device = f"{spec.gpu.name} x{spec.tp}" if spec.tp > 1 else spec.gpu.name
    room = f"{spec.gpu.memory_gb * spec.tp:,.0f} GiB"  # the datasheet's figure, which is GiB (GPU's docstring)
    least = f"{candidates['memory_gb'].min() * 1e9 / 2**30:,.0f} GiB"
    if spec.limits is not None:
        raise UserError(f"no candidate fits in {device} memory ({room}) even serving one request of "
                        f"{spec.workload.input_len}+{spec.workload.output_len} tokens (the least any needs: {least}); "
                        "give a device with more memory (--gpu), raise --tp, or shorten --input-len/--output-len")
    raise UserError(f"no candidate holds the whole workload in {device} memory ({room}; the least any needs: "
                    f"{least}): --batch {spec.workload.batch_size} requests of --input-len {spec.workload.input_len} + "
                    f"--output-len {spec.workload.output_len} tokens, with --vocab {spec.vocab_size}; lower --batch, "
                    "raise --tp, or shorten the requests")


def nearest_misses(candidates: pd.DataFrame, target: Target, count: int = 3) -> str:
    """A one-line description of the candidates that come closest to the target."""
    closest = candidates[candidates["fits"]].nsmallest(count, "predicted_loss")
    parts = [f"d_model {int(r.d_model)}, r {r.r:.2f}, GQA {int(r.gqa)}: loss {r.predicted_loss:.4f} "
             f"({r.predicted_loss - target.loss:+.4f})" for r in closest.itertuples()]
    return "; ".join(parts)


def enumerate_candidates(spec: SearchSpec, tolerance: float) -> tuple[pd.DataFrame, list[str]]:
    """The shapes the search ranks, at every depth of ``spec.layers``; with ``spec.strict_hf`` only those
    transformers loads. Notes: the depths left out for want of a shape, and how many strict_hf removed (the
    whole set is enumerated either way, so the count is exact)."""
    candidates, left_out = generate_candidates_at_depths(
        spec.n, spec.layers, spec.d_head, tolerance=tolerance, r_range=spec.r_range, gqa_values=spec.gqa_values,
        tp=spec.tp, vocab_size=spec.vocab_size, d_multiple=spec.d_multiple, ff_multiple=spec.ff_multiple,
        row_bytes=SEARCH_ROW_BYTES)
    candidates = candidates.reset_index(drop=True)
    notes = [f"--layers {depth}: left out, no candidate at this depth ({why})" for depth, why in left_out.items()]
    if not spec.strict_hf:
        return candidates, notes
    loadable = transformers_loadable(candidates["d_model"], candidates["n_heads"])
    total, kept = len(candidates), int(loadable.sum())
    if not kept:
        raise UserError(f"none of the {total:,} candidates for N={spec.n:.4g} has a d_model that is a multiple of n_heads, "
                        f"which transformers and vLLM need ({spec.strict_hf_reason}); widen --tolerance or the r range, "
                        "use a smaller --d-multiple, or pass --no-strict-hf")
    notes.append(f"{spec.strict_hf_reason}: only shapes whose d_model is a multiple of n_heads were searched "
                 f"(transformers and vLLM refuse the others); that removed {total - kept:,} of {total:,} candidates")
    return candidates[loadable].reset_index(drop=True), notes


def search(
    fitted: FittedLaw,
    spec: SearchSpec,
    target_loss: float | None = None,
    match: Architecture | None = None,
    slack: float | None = None,
    top_k: int = 3,
    runs: pd.DataFrame | None = None,
    bench: pd.DataFrame | None = None,
    confidence: float | None = None,
) -> SearchResult:
    """Solve ``max throughput s.t. predicted loss <= target`` over the candidate shapes.

    With ``confidence`` (and a fit with bootstrap refits) a candidate must meet the target under at least
    that share of the refits, not just under the point fit.
    """
    check_searchable(fitted)
    check_confidence(fitted, confidence)
    check_depths(fitted, spec)
    if match is not None:  # a dense law: an MoE reference, or one the serving model cannot cost, is refused up front
        if match.is_moe:
            raise UserError(f"--match {match.name}: a Mixture-of-Experts reference needs a law that predicts MoE runs "
                            f"(moe-joint, e.g. data/fits/ludziejewski2025_joint.json); {fitted.source} is law "
                            f"{fitted.law.name}, dense only")
        require_serving_modelled(match.shape_columns(), f"--match {match.name}")
    relative = losses_are_relative(fitted)
    # Relative losses do not see that a smaller N trains to a higher loss: hold the budget tighter then.
    tolerance = spec.tolerance if spec.tolerance is not None else (0.02 if relative else 0.05)
    candidates, notes = enumerate_candidates(spec, tolerance)
    candidates["tie_embeddings"] = spec.tie_embeddings
    candidates["predicted_loss"] = predict_loss(fitted, candidates, spec.tokens)
    candidates = apply_measured_losses(candidates, runs, spec.tokens)
    throughput = spec.serve(candidates, with_latency=False)
    candidates = pd.concat([candidates, throughput], axis=1)
    if spec.limits is not None:
        candidates = add_fixed_batch(candidates, spec.throughput_model, spec.workload, spec.tp, spec.limits)
    candidates, scale, bench = use_measured_throughput(candidates, bench, spec, notes)
    # GQA variants of one shape share d_model, d_ff and the attention width n_heads + n_kv_heads
    candidates["shape_id"] = candidates.groupby(["n_layers", "d_model", "d_ff",
                                                 candidates["n_heads"] + candidates["n_kv_heads"]]).ngroup()

    optimum = continuous_optimum(fitted, spec)
    policy = gqa_policy(fitted)
    candidates = mark_coverage(candidates, fitted, policy, spec.layers)
    best_index, base_index, base_label = lowest_losses(candidates, spec.extrapolate)
    target = resolve_target(fitted, spec, relative, float(candidates.loc[base_index, "predicted_loss"]),
                            target_loss, match, slack, base_label)
    if target.reference is not None and bench is not None:  # a measured reference beats its estimate too
        measured = apply_measured_throughput(pd.DataFrame([target.reference]), bench, spec).iloc[0]
        target.reference.update({k: measured[k] for k in ("tokens_per_s", "output_tokens_per_s", "throughput_source")})
        if scale is not None and target.reference["throughput_source"] == "estimate":
            target.reference.update(scale_estimates(pd.DataFrame([target.reference]), scale[0]).iloc[0].to_dict())
    refuse_if_none_fits(candidates, spec)
    candidates["feasible_loss"] = loss_feasible(candidates, fitted, spec, target, confidence, target_loss, match, slack)
    candidates["feasible"] = candidates["feasible_loss"] & candidates["fits"]
    if spec.limits is not None:
        check_some_meet(candidates, spec.limits, spec.workload)
        candidates["feasible"] &= candidates["meets_limits"]
    candidates["ranked"] = candidates["feasible"] & ((candidates["outside"] == 0) | spec.extrapolate)
    candidates["on_frontier"] = False
    # the frontier of what may be ranked: shapes that fit, inside the fit's runs unless --extrapolate
    fitting = (candidates["fits"] & ((candidates["outside"] == 0) | spec.extrapolate)).to_numpy()
    if spec.limits is not None:
        fitting = fitting & candidates["meets_limits"].to_numpy()
    frontier = pareto_mask(candidates.loc[fitting, "predicted_loss"].to_numpy(), candidates.loc[fitting, "tokens_per_s"].to_numpy())
    candidates.loc[candidates.index[fitting][frontier], "on_frontier"] = True
    candidates = spec.add_latency(candidates, reported_rows(candidates))
    if not candidates["feasible"].any():
        chance = f" with probability {confidence:g}" if confidence is not None else ""
        raise UserError(f"no candidate meets the target loss {target.loss:.4f} ({target.source}){chance}; "
                        f"nearest: {nearest_misses(candidates, target)}")
    if not candidates["ranked"].any():
        out = coverage_notes(candidates, fitted, False, policy, spec.layers)
        raise UserError(f"no candidate inside the fit's runs meets the target loss {target.loss:.4f}: "
                        f"{out[0] if out else 'all lie outside'}; widen what the runs cover, narrow --gqa/--r-min/--r-max "
                        "to the runs' range, or add --extrapolate")
    notes += [policy.note] + coverage_notes(candidates, fitted, spec.extrapolate, policy, spec.layers)
    notes += [note for note in [carried_depth_note(fitted, spec.layers)] if note]
    if scale is not None:
        notes.append(scale_note(scale, spec))
    note = reference_note(target, fitted)
    if note:
        notes.append(note)
    if optimum and len(spec.layers) > 1:
        notes.append(f"the continuous optimum is the law's at the best of the depths searched ({optimum['n_layers']:g} layers)"
                     if "n_layers" in optimum else
                     f"the continuous optimum is the same at every depth searched: law {fitted.law.name} does not see depth")
    for column, label in (("x", "d_model/sqrt(N)"), ("r", "r")):
        value, low, high = optimum.get(column), candidates[column].min(), candidates[column].max()
        if value is not None and math.isfinite(value) and not low <= value <= high:
            notes.append(f"the law's optimum {label} = {value:.3g} lies outside the candidates ({low:.3g}-{high:.3g}): "
                         "an extrapolation; the best candidates sit at the edge of the range")
    if relative:
        notes.append("the fit has no reference law, so losses are relative to L_opt(N, D) "
                     f"({relative_unit(fitted)}); give --reference for absolute losses")
    notes += measured_count_notes(candidates)
    unfit = int((~candidates["fits"]).sum())
    if unfit:
        at = "even serving one request" if spec.limits is not None else f"at batch {spec.workload.batch_size}"
        notes.append(f"{unfit:,} candidates do not fit in {spec.gpu.name} memory {at} and are not ranked")
    if spec.limits is not None:
        missed = int((candidates["feasible_loss"] & candidates["fits"] & ~candidates["meets_limits"]).sum())
        notes.append(operating_point_note(spec)
                     + (f"; {missed:,} shapes that meet the loss target cannot meet the limit even alone" if missed else ""))
    if spec.usd_per_gpu_hour is not None:
        candidates["usd_per_m_output"] = usd_per_million_tokens(candidates["output_tokens_per_s"].to_numpy(float),
                                                                spec.usd_per_gpu_hour, spec.tp)
        if target.reference is not None:
            target.reference["usd_per_m_output"] = float(usd_per_million_tokens(
                target.reference["output_tokens_per_s"], spec.usd_per_gpu_hour, spec.tp))
        notes.append(f"dollars per million output tokens at ${spec.usd_per_gpu_hour:g} per GPU-hour x {spec.tp} GPU"
                     f"{'s' if spec.tp > 1 else ''} per replica, at each shape's throughput above")
    picks = label_extrapolations(select_top_k(candidates[candidates["ranked"]], top_k, spec.tie_rule), fitted, policy,
                                 spec.layers, spec.tokens)
    picks = add_speedup_intervals(spec.add_latency(picks), target, spec)
    notes += outside_sizes(fitted.size_range, picks["N"].to_numpy(float), [spec.tokens])
    notes.append(tie_note(picks, spec.tie_rule))
    if len(picks) < top_k:
        notes.append(f"only {len(picks)} distinct shape{'s meet' if len(picks) != 1 else ' meets'} the target loss, "
                     f"fewer than the {top_k} asked for (--top-k); relax the target for more")
    comparison = None
    if spec.limits is not None:
        comparison = compare_with_fixed_batch(candidates, picks, spec)
        notes.append(comparison["note"])
    return SearchResult(
        candidates=candidates,
        target=target,
        continuous_optimum=optimum,
        best_discrete=candidates.loc[best_index].to_dict(),
        top_k=add_loss_intervals(picks, fitted, spec.tokens),
        relative=relative,
        notes=notes,
        throughput_model=spec.throughput_model,
        coverage=fitted.coverage,
        gqa=policy,
        limit_comparison=comparison,
    )


def compare_with_fixed_batch(candidates: pd.DataFrame, picks: pd.DataFrame, spec: SearchSpec) -> dict[str, Any]:
    """The pick the search would make at the fixed batch with no limit (same loss target, coverage and tie rule),
    beside the pick under the limit: whether they differ, and the batch each can run."""
    assert spec.limits is not None
    eligible = candidates[candidates["feasible_loss"] & candidates["fixed_fits"]
                          & ((candidates["outside"] == 0) | spec.extrapolate)]
    fixed = None
    if not eligible.empty:
        ranked = eligible.assign(tokens_per_s=eligible["fixed_tokens_per_s"])
        fixed = candidates.loc[select_top_k(ranked, 1, spec.tie_rule).index[0]].to_dict()
    limited = picks.iloc[0].to_dict()
    changed = fixed is not None and any(limited[k] != fixed[k] for k in ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff"))
    keep = [*SHAPE_COLUMNS, "r", "gqa", "operating_batch", "tokens_per_s", "output_tokens_per_s", "meets_limits",
            "fixed_tokens_per_s", "fixed_output_tokens_per_s", "fixed_meets_limits", *limit_columns(spec.limits),
            *(f"fixed_{c}" for c in limit_columns(spec.limits))]
    return {"limits": spec.limits.describe(), "changed": bool(changed),
            "under_limit": {k: _plain(limited[k]) for k in keep},
            "fixed_batch": None if fixed is None else {k: _plain(fixed[k]) for k in keep},
            "note": comparison_note(limited, fixed, spec.limits, spec.workload, spec.tie_rule,
                                    spec.throughput_model.latency_measured_for(list(spec.limits.bounded)))}


def limit_columns(limits: LatencyLimits) -> list[str]:
    """The latency columns a limit is judged on (TPOT and TTFT at its statistic)."""
    return [latency_column(metric, limits.statistic) for metric in ("tpot", "ttft")]


def _plain(value: Any) -> Any:
    """numpy scalars as Python ones, for JSON."""
    return value.item() if hasattr(value, "item") else value


def best_at_gqa(result: SearchResult, gqa: int) -> dict[str, Any] | None:
    """The lowest-predicted-loss candidate with a given GQA group (the paper's GQA=4 baseline)."""
    rows = result.candidates[result.candidates["gqa"] == gqa]
    return None if rows.empty else rows.loc[rows["predicted_loss"].idxmin()].to_dict()
