"""Speed of form selection: every candidate form scored by extrapolation on 250 runs (benchmark, not a test).

Run:  python experiments/benchmarks/bench_selection_speed.py

Three tables of about 250 runs, each selected as `archscale fit` does with no options (its split, its candidate
forms, its candidate floors on tokens per parameter): 250 drawn from the aspect law (plausible parameters, 0.3%
noise, random sizes, token counts and aspect ratios; 11 forms: Chinchilla tied and free, Kaplan and the aspect
laws with least squares and Huber, Farseer); an isoFLOP study of 250 runs with wings (10 budgets x 25 sizes from
the law and wing excess of data/synthetic_isoflops_wings.csv; 7 forms x 3 floors, split by budget); and the
245 shipped Chinchilla points (7 forms x 3 floors). Each selection (2 folds x every candidate) is timed 3
times; the median wall and CPU seconds are printed with the machine's load. Target: under 5 s on a 2-core
machine. Whether selection helps is measured in experiments/validate/fit_selection_evidence.py.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd

import sys

from archscale.laws import get_law
from archscale.fit.runs import load_runs
from archscale.fit.selection import candidate_forms, default_split, select_form, wing_floors

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "experiments" / "validate"))
import make_synthetic_isoflops as synthetic  # noqa: E402  (the wing study's law and wing excess)

TRUTH = dict(E=2.4, A=6000.0, B=2e6, eps=3e-5, alpha=0.49, beta=0.66, gamma=1.2)
TARGET_S = 5.0


def synthetic_runs(n: int = 250, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    size = np.exp(rng.uniform(np.log(5e7), np.log(3e9), n))
    frame = pd.DataFrame({"N": size, "D": size * np.exp(rng.uniform(np.log(10), np.log(200), n)),
                          "R": np.exp(rng.uniform(np.log(20), np.log(300), n))})
    frame["loss"] = get_law("aspect").predict(TRUTH, frame) * (1 + rng.normal(0, 0.003, n))
    return frame


def isoflop_runs(budgets: int = 10, sizes: int = 25, seed: int = 0) -> pd.DataFrame:
    """An isoFLOP study from the wing study's law: ``budgets`` budgets from 1e18, ``sizes`` sizes each."""
    rng = np.random.default_rng(seed)
    rows = []
    for budget in np.geomspace(1e18, 1e21, budgets):
        centre = synthetic.optimal_size(budget)
        n = np.geomspace(centre / synthetic.SPAN, centre * synthetic.SPAN, sizes)
        d = budget / (6 * n)
        loss = synthetic.law_loss(n, d) * synthetic.wing_excess(d / n) * np.exp(rng.normal(0, synthetic.NOISE, sizes))
        rows.append(pd.DataFrame({"C": budget, "N": n, "D": d, "loss": loss}))
    return pd.concat(rows, ignore_index=True)


def timed(frame: pd.DataFrame, repeats: int = 3) -> tuple[float, float, object]:
    forms = candidate_forms(frame, "auto", "auto", False)
    split, floors = default_split(frame)[0], wing_floors(frame)
    walls, cpus, selection = [], [], None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        selection = select_form(frame, forms, split, floors=floors)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus), selection


def main() -> None:
    warm = synthetic_runs(40)
    select_form(warm, candidate_forms(warm, "chinchilla", "lsq", False))  # imports lmfit and scipy once
    cases = {"aspect law, 250 runs": synthetic_runs(),
             "isoFLOP with wings, 250 runs": isoflop_runs(),
             "chinchilla_epoch.csv, 245 runs": load_runs(ROOT / "data" / "chinchilla_epoch.csv")}
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"{'runs':32s} {'fits':>5s} {'median wall s':>13s} {'median CPU s':>12s}  selected")
    worst = 0.0
    for label, frame in cases.items():
        wall, cpu, selection = timed(frame)
        worst = max(worst, wall)
        floor = f", D/N >= {selection.floor:g}" if selection.floor is not None else ""
        print(f"{label:32s} {len(selection.candidates) * len(selection.folds):5d} {wall:13.2f} {cpu:12.2f}  "
              f"{selection.law} / {selection.objective}{floor} (split by {selection.split})")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(f"slowest selection {worst:.2f} s wall -> {'PASS' if worst < TARGET_S else 'FAIL'} (target < {TARGET_S:g} s)")


if __name__ == "__main__":
    main()
