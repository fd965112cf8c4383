"""How fast is the search's scoring with its safeguards? Over a million candidates: predicted loss, throughput with a
calibrated profile, the fit's coverage marks, the tie-aware top-k, and speedup intervals over the profile's
admissible term sets.

Candidates: the same 8B sweep as bench_candidates_speed.py (1.25M shapes: 32 layers, d_head 128, every GQA group),
the dissertation's published 1B law (its coverage: GQA 4 only), the H200 vLLM profile, batch 64, 4096 in / 1024 out,
LLaMA-3.1-8B's shape as the reference. Generation is timed apart (it is not part of the scoring).

Prints the median of 5 timings of each stage and of the scoring in all, and whether that is under 2 s (exit 1 if not).
Throughput is scored without the latency columns, which the search computes for the shapes it reports: the
frontier's and each GQA group's best (timed with the frontier), and the picks' (timed with the intervals).

Run: ``python experiments/benchmarks/bench_search_ranking_speed.py``
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

from archscale.fit.fitted import load_fit
from archscale.search.constrained import (SearchSpec, Target, add_speedup_intervals, gqa_policy, label_extrapolations, mark_coverage,
                                          pareto_mask, predict_loss, reported_rows, select_top_k, shape_row)
from archscale.serving import Workload, load_gpu, resolve_profile
from archscale.shapes.architecture import Architecture
from archscale.shapes.candidates import generate_candidates

from bench_candidates_speed import SWEEP  # one definition of the sweep

ROOT_FIT = Path(__file__).resolve().parents[2] / "data" / "fits" / "dissertation_1b_mult.json"

REPEATS = 5
LIMIT_S = 2.0


def one_run(spec: SearchSpec, fitted, candidates, reference: dict) -> dict[str, float]:
    frame = candidates.copy()
    times = {}
    start = time.perf_counter()
    frame["predicted_loss"] = predict_loss(fitted, frame, spec.tokens)
    times["loss"] = time.perf_counter()
    frame = frame.join(spec.serve(frame, with_latency=False))  # as the search does: latency for what it reports
    frame["throughput_source"] = "estimate"
    times["throughput"] = time.perf_counter()
    frame["feasible"] = (frame["predicted_loss"] <= np.quantile(frame["predicted_loss"], 0.3)) & frame["fits"]
    policy = gqa_policy(fitted)
    frame = mark_coverage(frame, fitted, policy)
    frame["ranked"] = frame["feasible"] & (frame["outside"] == 0)
    times["coverage"] = time.perf_counter()
    ranked = frame["ranked"].to_numpy()
    frame["on_frontier"] = False
    front = pareto_mask(frame.loc[ranked, "predicted_loss"].to_numpy(), frame.loc[ranked, "tokens_per_s"].to_numpy())
    frame.loc[frame.index[ranked][front], "on_frontier"] = True
    frame = spec.add_latency(frame, reported_rows(frame))  # the frontier's and best shapes' TTFT/TPOT, as the search
    times["frontier"] = time.perf_counter()
    frame["shape_id"] = frame.groupby(["d_model", "d_ff", frame["n_heads"] + frame["n_kv_heads"]]).ngroup()
    picks = label_extrapolations(select_top_k(frame[frame["ranked"]], 3, spec.tie_rule), fitted, policy)
    times["ties"] = time.perf_counter()
    add_speedup_intervals(spec.add_latency(picks), Target(1.0, "bench", reference), spec)
    times["intervals"] = time.perf_counter()
    stages, previous = {}, start
    for name, moment in times.items():
        stages[name], previous = moment - previous, moment
    stages["total"] = times["intervals"] - start
    return stages


def main() -> int:
    gpu = load_gpu("h200")
    spec = SearchSpec(n=SWEEP["n_target"], tokens=1.6e11, n_layers=SWEEP["n_layers"], d_head=SWEEP["d_head"], gpu=gpu,
                      workload=Workload(64, 4096, 1024), profile=resolve_profile(None, gpu, "vllm"))
    fitted = load_fit(ROOT_FIT)
    start = time.perf_counter()
    candidates = generate_candidates(**SWEEP)
    generation = time.perf_counter() - start
    llama = Architecture(32, 4096, 32, 8, 128, 14336, 128256, False, "llama-3.1-8b")
    reference = {**shape_row(llama), "name": llama.name, "throughput_source": "estimate"}
    one_run(spec, fitted, candidates, reference)  # warm-up
    runs = [one_run(spec, fitted, candidates, reference) for _ in range(REPEATS)]
    medians = {name: statistics.median(r[name] for r in runs) for name in runs[0]}
    print(f"candidates: {len(candidates):,} (generated in {generation:.2f} s, not counted); profile {spec.throughput_model.name}")
    print("median of 5: " + ", ".join(f"{name} {value:.3f} s" for name, value in medians.items()))
    ok = len(candidates) >= 1_000_000 and medians["total"] < LIMIT_S
    print(f"{'PASS' if ok else 'FAIL'}: >= 1,000,000 candidates scored with coverage, ties and intervals in under {LIMIT_S:g} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
