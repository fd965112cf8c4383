"""How fast is scoring under a latency limit? A million candidates, each choosing its own concurrency.

Candidates: the 8B sweep of bench_candidates_speed.py (1.25M shapes: 32 layers, d_head 128, every GQA group). Each
is scored by :func:`archscale.serving.estimate.estimate_under_limits` with the H200 vLLM profile: the most requests up
to 256 (4096 in / 1024 out) whose p99 TPOT is at most 40 ms and p99 TTFT at most 10 s, found by a vectorised
bisection over the batch (no loop over candidates or batch sizes), then the throughput and latency at that batch.
Generation is timed apart (it is not part of the scoring).

Prints the median of 5 timings, per million candidates, and whether it is under 3 s (exit 1 if not).

Run: ``python experiments/benchmarks/bench_latency_limit_speed.py``
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np

from archscale.serving import LatencyLimits, Workload, load_gpu, resolve_profile
from archscale.shapes.candidates import generate_candidates

from bench_candidates_speed import SWEEP  # one definition of the sweep

REPEATS = 5
LIMIT_S = 3.0
WORKLOAD = Workload(256, 4096, 1024)
LIMITS = LatencyLimits(tpot_ms=40.0, ttft_ms=10_000.0, statistic=99)


def main() -> int:
    profile = resolve_profile(None, load_gpu("h200"), "vllm")
    started = time.perf_counter()
    candidates = generate_candidates(**SWEEP)
    print(f"{len(candidates):,} candidates generated in {time.perf_counter() - started:.2f} s (not timed below)")
    seconds = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        scored = profile.estimate_under_limits(candidates, WORKLOAD, LIMITS)
        seconds.append(time.perf_counter() - started)
    median = statistics.median(seconds)
    per_million = median / len(candidates) * 1e6
    batches = scored["operating_batch"].to_numpy()
    print(f"operating batch under {LIMITS.describe()}: median {np.median(batches):.0f}, range {batches.min()}-{batches.max()} "
          f"(of at most {WORKLOAD.batch_size}); {int((~scored['meets_limits']).sum()):,} cannot meet it")
    print(f"scoring under the limit: median {median:.2f} s of {REPEATS} runs ({', '.join(f'{s:.2f}' for s in seconds)}), "
          f"{per_million:.2f} s per million candidates; target < {LIMIT_S:g} s per million: "
          f"{'met' if per_million < LIMIT_S else 'NOT met'}")
    return 0 if per_million < LIMIT_S else 1


if __name__ == "__main__":
    sys.exit(main())
