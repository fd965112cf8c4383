"""How fast is MoE candidate generation? Enumerate >= 1,000,000 shapes over experts, top-k and granularity.

Sweep: an 8B active budget (N_active = 8e9 non-embedding), 32 layers, d_head 64, d_model a multiple of 64 with
d/sqrt(N_active) in 0.02-0.2, every GQA group, experts E in 4-128, top-k 1-8 (k <= E), granularity G in 1-8
(expert width 4 d_model / G), r (active MLP over attention) in [0.5, 5], N_active within 5%. About 1.1M rows.

Prints the candidate count, the median of 3 timings (after one warm-up call: imports, page faults, allocator),
the time per million rows, and whether it is under 2 s per million (issue 22's target). Exit status 1 if not.

Run: ``python experiments/benchmarks/bench_moe_candidates_speed.py``
"""

from __future__ import annotations

import os
import statistics
import sys
import time

from archscale.shapes.moe_candidates import generate_moe_candidates

SWEEP = dict(n_active=8e9, n_layers=32, d_head=64, d_multiple=64, experts=(4, 8, 16, 32, 64, 128),
             top_k=tuple(range(1, 9)), granularity=(1, 2, 4, 8))
REPEATS = 3
LIMIT_S_PER_MILLION = 2.0


def one_run() -> tuple[int, float]:
    """Generate once; return (rows, seconds)."""
    start = time.perf_counter()
    frame = generate_moe_candidates(**SWEEP)
    return len(frame), time.perf_counter() - start


def main() -> int:
    one_run()  # warm-up
    runs = [one_run() for _ in range(REPEATS)]
    count = runs[0][0]
    median = statistics.median(seconds for _, seconds in runs)
    per_million = median / (count / 1e6)
    print(f"sweep: {SWEEP}; CPUs visible: {os.cpu_count()}")
    print(f"candidates: {count:,}")
    print(f"median of {REPEATS}: {median:.3f} s ({per_million:.3f} s per million rows; "
          f"runs: {', '.join(f'{seconds:.3f}' for _, seconds in runs)} s)")
    ok = count >= 1_000_000 and per_million < LIMIT_S_PER_MILLION
    print(f"{'PASS' if ok else 'FAIL'}: >= 1,000,000 MoE candidates generated in under {LIMIT_S_PER_MILLION:g} s "
          "per million")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
