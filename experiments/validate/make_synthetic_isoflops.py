"""Writes data/synthetic_isoflops_wings.csv: an isoFLOP study drawn from a known law, with wings.

Run:  python experiments/validate/make_synthetic_isoflops.py        (instant; the CSV is committed)

The law is Chinchilla's own Approach 3 fit (Hoffmann et al. 2022): L = 1.69 + 406.4/N^0.34 + 410.7/D^0.28, so
the compute-optimal exponent is a = 0.28 / (0.34 + 0.28) = 0.4516. Seven budgets, 1e18 to 1e21 FLOPs in steps of
about 3x; at each, 13 sizes spaced evenly in ln N from N*/30 to 30 N*, so each profile is wide and its smallest
models see tens of thousands of tokens per parameter while its largest see a few hundredths of one.

Wings: a run trained on fewer than 2 tokens per parameter loses more than the law says, by the factor
1 + 0.015 ln(2 / (D/N))^2 (0.7% at D/N = 1, 2.9% at 0.5, 24% at 0.036, the size of the excess the Chinchilla
profiles' smallest-D/N runs show over a fit through the rest). Every loss carries 0.3% log-normal noise (seed 0).
A law of N and D fitted through the wings bends towards them; one fitted above them recovers the law. Tests
and experiments/validate/fit_selection_evidence.py read the CSV.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "data" / "synthetic_isoflops_wings.csv"
LAW = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
BUDGETS = (1e18, 3e18, 1e19, 3e19, 1e20, 3e20, 1e21)
SIZES_PER_BUDGET = 13
SPAN = 30.0  # sizes from N*/SPAN to N* x SPAN
WING_BELOW = 2.0  # tokens per parameter under which the wing excess starts
WING_STRENGTH = 0.015
NOISE = 0.003


def law_loss(n: np.ndarray, d: np.ndarray) -> np.ndarray:
    return LAW["E"] + LAW["A"] * n ** -LAW["alpha"] + LAW["B"] * d ** -LAW["beta"]


def optimal_size(budget: float) -> float:
    """N*(C) of the law: G (C/6)^a."""
    alpha, beta = LAW["alpha"], LAW["beta"]
    g = (alpha * LAW["A"] / (beta * LAW["B"])) ** (1 / (alpha + beta))
    return g * (budget / 6) ** (beta / (alpha + beta))


def wing_excess(tokens_per_param: np.ndarray) -> np.ndarray:
    """The factor by which a run far below compute-optimal tokens per parameter exceeds the law."""
    shortfall = np.log(np.maximum(WING_BELOW / tokens_per_param, 1.0))
    return 1 + WING_STRENGTH * shortfall**2


def study(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for budget in BUDGETS:
        centre = optimal_size(budget)
        sizes = np.exp(np.linspace(np.log(centre / SPAN), np.log(centre * SPAN), SIZES_PER_BUDGET))
        tokens = budget / (6 * sizes)
        loss = law_loss(sizes, tokens) * wing_excess(tokens / sizes) * np.exp(rng.normal(0, NOISE, len(sizes)))
        rows += [{"C": budget, "N": round(n), "D": round(d), "loss": round(l, 6)} for n, d, l in zip(sizes, tokens, loss)]
    return pd.DataFrame(rows)


if __name__ == "__main__":
    frame = study()
    frame.to_csv(OUT, index=False)
    print(f"wrote {OUT.relative_to(ROOT)}: {len(frame)} runs, {frame['C'].nunique()} budgets, "
          f"{int((frame['D'] / frame['N'] < 1).sum())} below one token per parameter")
