"""Search under a latency limit: each shape at the most requests that meet TTFT/TPOT limits, and what that changes.

Why: ``search`` ranks shapes by throughput at one fixed batch, but a
deployment is judged by throughput subject to limits on time to first token
and time per output token (vLLM's benchmarks, MLPerf's interactive scenario,
DistServe). A TPOT limit caps the batch a shape can run, and shapes reach it
at different batches (a shape with a large KV cache or many layers slows
each step sooner), so the fastest shape at batch 64 need not be the fastest
under "TPOT p99 <= 20 ms". The serving model gives each shape its operating
point (:func:`archscale.serving.estimate.max_concurrency`); this module keeps
the fixed-batch figures beside it, finds the pick each rule makes, and says
whether and why they differ. It also draws the engineers' curve: output
tokens/s per user against output tokens/s per device, as the batch grows.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd

from archscale.io.errors import UserError
from archscale.serving.estimate import LatencyLimits, Workload, latency_column
from archscale.serving.profiles import Profile

SHAPE_FIELDS = ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_head", "d_ff", "vocab", "tie_embeddings")


def operating_point_note(spec: Any) -> str:
    """The note every search under a limit prints: how it ranks, and how far the latencies it ranks by were checked."""
    return (f"ranked at each shape's operating point: the most requests (up to --batch {spec.workload.batch_size}) "
            f"that meet {spec.limits.describe()}, submitted together as bench measures them; "
            f"{spec.throughput_model.latency_trust()}")


def operating_point(profile: Profile, shapes: pd.DataFrame, workload: Workload, tp: int,
                    limits: LatencyLimits | None, with_latency: bool = True) -> pd.DataFrame:
    """The estimate a search ranks by: at ``workload.batch_size`` requests, or under ``limits`` at the most requests
    up to it that meet them (with ``operating_batch`` and ``meets_limits``). At a fixed batch the latency columns
    only when ``with_latency`` (under limits they decide the batch, so always)."""
    if limits is None:
        return profile.estimate(shapes, workload, tp, with_latency=with_latency)
    return profile.estimate_under_limits(shapes, workload, limits, tp)


def add_fixed_batch(candidates: pd.DataFrame, profile: Profile, workload: Workload, tp: int,
                    limits: LatencyLimits) -> pd.DataFrame:
    """Each candidate's throughput and latency at the fixed batch too (``fixed_*`` columns), and whether it meets the
    limits there: the ranking the search would make without the limit, for the comparison."""
    fixed = profile.estimate(candidates, workload, tp)
    candidates["fixed_tokens_per_s"] = fixed["tokens_per_s"].to_numpy()
    candidates["fixed_output_tokens_per_s"] = fixed["output_tokens_per_s"].to_numpy()
    candidates["fixed_fits"] = fixed["fits"].to_numpy()
    for metric in ("tpot", "ttft"):
        column = latency_column(metric, limits.statistic)
        candidates[f"fixed_{column}"] = fixed[column].to_numpy()
    candidates["fixed_meets_limits"] = limits.met(fixed)
    return candidates


def check_some_meet(candidates: pd.DataFrame, limits: LatencyLimits, workload: Workload, count: int = 3) -> None:
    """Refuse, in one line with the nearest misses, when no shape that meets the loss target meets the limits."""
    eligible = candidates[candidates["feasible_loss"] & candidates["fits"]]  # fits: weights and one request fit
    if eligible.empty or eligible["meets_limits"].any():
        return
    misses = eligible.assign(_over=_overshoot(eligible, limits)).nsmallest(count, "_over")
    shown = "; ".join(f"d_model {int(r.d_model)}, {int(r.n_layers)} layers, GQA {int(r.gqa)}: "
                      + ", ".join(f"{name.upper()} {limits.statistic_label} {getattr(r, latency_column(name, limits.statistic)):.3g} ms"
                                  for name in ("tpot", "ttft") if getattr(limits, f"{name}_ms") is not None)
                      for r in misses.itertuples())
    raise UserError(f"no candidate that meets the target loss meets {limits.describe()} even serving one request at a "
                    f"time ({workload.input_len} in / {workload.output_len} out); nearest: {shown}; relax the limit, "
                    "shorten --input-len, or serve on a faster --gpu / more --tp")


def _overshoot(frame: pd.DataFrame, limits: LatencyLimits) -> np.ndarray:
    """How far each row is over its worst limit, as a ratio (1.3 = 30% over)."""
    worst = np.zeros(len(frame))
    for name in ("tpot", "ttft"):
        limit = getattr(limits, f"{name}_ms")
        if limit is not None:
            worst = np.maximum(worst, frame[latency_column(name, limits.statistic)].to_numpy(float) / limit)
    return worst


def format_ms(value: float) -> str:
    """Milliseconds as people read them: 3 significant figures below 100, whole numbers with separators above."""
    return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"


def describe_pick(row: Mapping[str, Any], limits: LatencyLimits, workload: Workload, under_limit: bool) -> str:
    """One pick in words: its shape, the batch it runs and its throughput there, and its latency."""
    shape = f"d_model {int(row['d_model'])}, {int(row['n_layers'])} layers, r {float(row['r']):.2f}, GQA {int(row['gqa'])}"
    tpot, ttft = latency_column("tpot", limits.statistic), latency_column("ttft", limits.statistic)
    if under_limit:
        return (f"{shape}: {int(row['operating_batch'])} requests at once, {float(row['output_tokens_per_s']):,.0f} "
                f"output tokens/s (TPOT {limits.statistic_label} {format_ms(float(row[tpot]))} ms, "
                f"TTFT {limits.statistic_label} {format_ms(float(row[ttft]))} ms)")
    verdict = "meets the limit" if bool(row["fixed_meets_limits"]) else "misses the limit"
    return (f"{shape}: {workload.batch_size} requests at once, {float(row['fixed_output_tokens_per_s']):,.0f} output "
            f"tokens/s, TPOT {limits.statistic_label} {format_ms(float(row['fixed_' + tpot]))} ms and TTFT "
            f"{format_ms(float(row['fixed_' + ttft]))} ms there: {verdict}")


def comparison_note(limited_pick: Mapping[str, Any], fixed_pick: Mapping[str, Any] | None, limits: LatencyLimits,
                    workload: Workload, tie: tuple[float, str] | None = None, latency_measured: bool = True) -> str:
    """Whether the pick under the limit differs from the pick at the fixed batch, why (the batch each could run),
    and whether the gap between them under the limit is larger than the estimate's error (``tie``). That error is
    the throughput estimate's at a given batch; without ``latency_measured`` (the limited latencies compared with
    measurements) the batches themselves rest on unmeasured latencies, and a gap above it is said to be a rank
    only as far as they hold."""
    under = describe_pick(limited_pick, limits, workload, under_limit=True)
    if fixed_pick is None:
        return f"under {limits.describe()}: pick {under}; no shape that meets the loss target fits at batch {workload.batch_size}"
    same = all(limited_pick[k] == fixed_pick[k] for k in ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff"))
    if same:
        return (f"under {limits.describe()} the pick is the same as at the fixed batch of {workload.batch_size}: {under}")
    if not bool(fixed_pick["meets_limits"]):
        why = "the fixed-batch pick cannot meet the limit even alone"
    else:
        gain = float(limited_pick["output_tokens_per_s"]) / float(fixed_pick["output_tokens_per_s"]) - 1.0
        rank = ("the change is a rank" if latency_measured else
                "the change is a rank at these operating points, which rest on the profile's unmeasured latencies")
        size = ("" if tie is None else
                f"; {gain:.1%} is {'more' if gain > tie[0] else 'less'} than the estimate's error ({tie[1]}), so "
                + (rank if gain > tie[0] else "the two are a tie under the limit"))
        why = (f"under the limit the fixed-batch pick runs only {int(fixed_pick['operating_batch'])} requests at once, "
               f"{float(fixed_pick['output_tokens_per_s']):,.0f} output tokens/s; the pick serves {gain:.1%} more{size}")
    return (f"the latency limit changes the pick. Under {limits.describe()}: {under}. At the fixed batch "
            f"(--batch {workload.batch_size}, no limit): {describe_pick(fixed_pick, limits, workload, under_limit=False)}. "
            f"Why: {why}")


def user_device_curve(profile: Profile, row: Mapping[str, Any], workload: Workload, tp: int, statistic: str | int,
                      batch_sizes: np.ndarray) -> pd.DataFrame:
    """Output tokens/s per user (1000 / TPOT at ``statistic``) and per device (the replica's output tokens/s / tp)
    at each batch size: one vectorised estimate over the batches (rows that carry their own workload)."""
    from archscale.serving.estimate import estimate_rows

    rows = pd.DataFrame([{k: row[k] for k in SHAPE_FIELDS}] * len(batch_sizes))
    rows = rows.assign(batch_size=batch_sizes, input_len=workload.input_len, output_len=workload.output_len, tp=tp)
    estimate = estimate_rows(rows, profile.device, profile.terms, profile.settings)
    running = estimate["concurrency"].to_numpy() >= np.asarray(batch_sizes)  # beyond the KV cache the batch waits
    return pd.DataFrame({"batch_size": batch_sizes,
                         "per_user": 1e3 / estimate[latency_column("tpot", statistic)].to_numpy(float),
                         "per_device": estimate["output_tokens_per_s"].to_numpy(float) / tp}).loc[running]
