"""Speed of form selection: every candidate form scored by extrapolation on 250 runs (benchmark, not a test).

Run:  python experiments/benchmarks/bench_selection_speed.py

Two tables of 250 runs: 250 drawn from the aspect law (plausible parameters, 0.3% noise, random sizes, token
counts and aspect ratios), which gives all 8 candidate forms (Chinchilla and aspect, tied and free, least
squares and Huber); and the 245 shipped Chinchilla points (4 forms). Each selection (2 folds x every form) is
timed 3 times; the median wall and CPU seconds are printed with the machine's load. Target: under 5 s on a
2-core machine. Whether selection helps is measured in experiments/validate/fit_selection_evidence.py.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd

from archscale.laws import get_law
from archscale.fit.runs import load_runs
from archscale.fit.selection import candidate_forms, select_form

ROOT = Path(__file__).resolve().parents[2]
TRUTH = dict(E=2.4, A=6000.0, B=2e6, eps=3e-5, alpha=0.49, beta=0.66, gamma=1.2)
TARGET_S = 5.0


def synthetic_runs(n: int = 250, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    size = np.exp(rng.uniform(np.log(5e7), np.log(3e9), n))
    frame = pd.DataFrame({"N": size, "D": size * np.exp(rng.uniform(np.log(10), np.log(200), n)),
                          "R": np.exp(rng.uniform(np.log(20), np.log(300), n))})
    frame["loss"] = get_law("aspect").predict(TRUTH, frame) * (1 + rng.normal(0, 0.003, n))
    return frame


def timed(frame: pd.DataFrame, repeats: int = 3) -> tuple[float, float, object]:
    forms = candidate_forms(frame, "auto", "auto", False)
    walls, cpus, selection = [], [], None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        selection = select_form(frame, forms)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus), selection


def main() -> None:
    warm = synthetic_runs(40)
    select_form(warm, candidate_forms(warm, "chinchilla", "lsq", False))  # imports lmfit and scipy once
    cases = {"aspect law, 250 runs": synthetic_runs(),
             "chinchilla_epoch.csv, 245 runs": load_runs(ROOT / "data" / "chinchilla_epoch.csv")}
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"{'runs':32s} {'forms':>5s} {'median wall s':>13s} {'median CPU s':>12s}  selected")
    worst = 0.0
    for label, frame in cases.items():
        wall, cpu, selection = timed(frame)
        worst = max(worst, wall)
        print(f"{label:32s} {len(selection.candidates):5d} {wall:13.2f} {cpu:12.2f}  {selection.law} / {selection.objective}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(f"slowest selection {worst:.2f} s wall -> {'PASS' if worst < TARGET_S else 'FAIL'} (target < {TARGET_S:g} s)")


if __name__ == "__main__":
    main()
