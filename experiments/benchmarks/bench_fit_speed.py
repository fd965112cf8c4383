"""Speed of every law's default multi-start fit on 250 points (benchmark, not a test).

Run:  python experiments/benchmarks/bench_fit_speed.py

For each law, 250 runs are drawn from the law itself (plausible parameters, 0.3% multiplicative noise) over a
realistic design; the fit is timed 5 times and the median printed. Target: under 2 s each on a 2-core machine.
The Kaplan and Farseer forms are fitted to runs drawn from the Chinchilla law (no published parameters of theirs
fit this design), the MoE laws to runs drawn from their published fits (data/fits). Every law archscale has is
timed: a law without a design here fails the script rather than being skipped.
The Huber-vs-grid speed ratio is measured in experiments/reproduce/chinchilla_replication.py.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np

from archscale.fit.fitting import fit_law
from archscale.laws import LAWS

TRUTH = {
    "chinchilla": dict(E=1.8, A=480.0, B=2100.0, alpha=0.35, beta=0.37),
    "chinchilla-tied": dict(E=1.8, A=480.0, B=2100.0, alpha=0.35),
    "aspect": dict(E=2.4, A=6000.0, B=2e6, eps=3e-5, alpha=0.49, beta=0.66, gamma=1.2),
    "aspect-tied": dict(E=2.5, A=1e5, B=1.7e6, eps=1e-3, alpha=0.65),
    "conditional-mult": dict(a0=1.04, a1=0.038, a2=0.003, b0=1.0, b1=0.016, b2=0.017),
    "conditional-add": dict(a0=0.12, a1=0.11, a2=0.0088, b1=0.048, b2=0.05),
    "ucurve-x": dict(c0=3.0, c1=0.1, c2=0.008),
    "ucurve-r": dict(c0=3.0, c1=0.02, c2=0.02),
}
TRUTH["conditional-mult-gqa"] = TRUTH["conditional-mult-gqa-sat"] = {**TRUTH["conditional-mult"], "c": 0.01}
DRAWN_FROM = {"kaplan": "chinchilla", "farseer": "chinchilla"}  # runs drawn from another law's truth
for published in ("krajewski2024_granularity", "ludziejewski2025_joint"):
    document = json.loads((Path(__file__).resolve().parents[2] / "data" / "fits" / f"{published}.json").read_text())
    TRUTH[document["law"]] = document["params"]
TRUTH["moe-joint-fixed-exponents"] = TRUTH["moe-joint"]


def design(rng: np.random.Generator, n: int = 250) -> dict[str, np.ndarray]:
    size = np.exp(rng.uniform(np.log(5e7), np.log(3e9), n))
    return {"N": size, "D": size * np.exp(rng.uniform(np.log(10), np.log(200), n)),
            "R": np.exp(rng.uniform(np.log(20), np.log(300), n)), "x": rng.uniform(0.03, 0.2, n),
            "r": np.exp(rng.uniform(np.log(0.5), np.log(5), n)), "L_opt": rng.uniform(2.5, 3.5, n),
            "gqa": rng.choice([1.0, 2.0, 4.0, 8.0], n), "G": rng.choice([1.0, 2.0, 4.0, 8.0, 16.0], n),
            "N_active": size, "expansion": rng.choice([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0], n)}


def main() -> None:
    rng = np.random.default_rng(0)
    print(f"{'law':26s} {'points':>6s} {'starts':>6s} {'median s':>9s} {'max s':>7s}  target < 2 s")
    worst = 0.0
    for name, law in LAWS.items():
        data = design(rng)
        truth = DRAWN_FROM.get(name, name)
        loss = LAWS[truth].predict(TRUTH[truth], data) * (1 + rng.normal(0, 0.003, 250))
        inputs = {c: data[c] for c in law.columns}
        times = []
        for _ in range(5):
            start = time.perf_counter()
            fit = fit_law(law, inputs, loss)
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        worst = max(worst, median)
        print(f"{name:26s} {len(loss):6d} {fit.n_starts:6d} {median:9.3f} {max(times):7.3f}  {'PASS' if median < 2 else 'FAIL'}")
    print(f"slowest law: {worst:.3f} s median -> {'PASS' if worst < 2 else 'FAIL'}")


if __name__ == "__main__":
    main()
