"""The GQA-aware conditional laws: fitted when runs vary GQA, chosen by extrapolation, and seen by the search."""

import numpy as np
import pandas as pd
import pytest

from archscale.fit.fitted import FittedLaw
from archscale.fit.study import run_study
from archscale.laws import get_law
from archscale.search.constrained import SearchSpec, search
from archscale.serving.devices import load_gpu
from archscale.serving.estimate import Workload

CHINCHILLA = {"E": 1.82, "A": 482.0, "B": 2085.0, "alpha": 0.3478, "beta": 0.3658}
TRUE_C = 0.012  # 1.2% more loss per e-fold of the group: GQA 8 is 2.5% worse than GQA 1


def synthetic_runs(c: float, seed: int = 0, noise: float = 0.001) -> pd.DataFrame:
    """Runs of known law: conditional-mult-gqa on Chinchilla's L_opt, at three sizes, with GQA 1-8."""
    rng = np.random.default_rng(seed)
    law = get_law("conditional-mult-gqa")
    reference = FittedLaw(get_law("chinchilla"), CHINCHILLA)
    params = {"a0": 1.0, "a1": 0.05, "a2": 0.004, "b0": 1.0, "b1": 0.02, "b2": 0.02, "c": c}
    rows = []
    for n in (2e7, 6e7, 2e8):
        for x in (0.05, 0.08, 0.15):
            for r in (1.0, 2.5, 4.0):
                for g in (1, 2, 4, 8):
                    rows.append({"N": n, "D": 20 * n, "x": x, "r": r, "gqa": float(g)})
    frame = pd.DataFrame(rows)
    frame["L_opt"] = reference.predict(frame)
    frame["loss"] = law.predict(params, {k: frame[k].to_numpy() for k in law.columns}) * (1 + noise * rng.standard_normal(len(frame)))
    return frame.drop(columns="L_opt")


@pytest.fixture(scope="module")
def reference():
    return FittedLaw(get_law("chinchilla"), CHINCHILLA, source="chinchilla (test)")


def test_the_gqa_factor_is_recovered_from_runs_that_vary_gqa(reference):
    study = run_study(synthetic_runs(TRUE_C), "conditional-mult-gqa", "lsq", reference=reference)
    assert study.fit.params["c"] == pytest.approx(TRUE_C, abs=0.002)
    assert study.fitted.coverage["gqa"] == [1.0, 8.0]


def test_selection_chooses_a_gqa_form_when_the_runs_show_an_effect(reference):
    study = run_study(synthetic_runs(TRUE_C), "auto", "auto", reference=reference)
    assert study.fit.law.name.startswith("conditional-mult-gqa")


def test_without_a_gqa_effect_the_gqa_factor_fits_to_about_zero(reference):
    study = run_study(synthetic_runs(0.0), "conditional-mult-gqa", "lsq", reference=reference)
    assert abs(study.fit.params["c"]) < 0.002


def test_the_search_gives_gqa_variants_different_losses_and_ranks_inside_the_runs_gqa(reference):
    study = run_study(synthetic_runs(TRUE_C), "conditional-mult-gqa", "lsq", reference=reference)
    spec = SearchSpec(n=2e8, tokens=4e9, n_layers=12, d_head=64, gpu=load_gpu("h100-sxm"),
                      workload=Workload(16, 1024, 256), gqa_values=(1, 2, 4, 8, 16), vocab_size=32000)
    result = search(study.fitted, spec, slack=0.01)
    candidates = result.candidates
    one_shape = candidates[candidates["shape_id"] == candidates["shape_id"].iloc[0]]
    if one_shape["gqa"].nunique() > 1:
        assert one_shape["predicted_loss"].nunique() > 1
    assert result.top_k["gqa"].max() <= 8  # GQA 16 is beyond the runs, so not ranked
    assert any(note.startswith("GQA enters the fitted law") for note in result.notes)
