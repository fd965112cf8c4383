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


# ---------------------------------------------------------------------------
# may the search trade on GQA? only through a GQA term that predicted the larger runs
# ---------------------------------------------------------------------------
def gqa_search(fitted, slack=0.03, **changes):
    spec = SearchSpec(n=2e8, tokens=4e9, n_layers=12, d_head=64, gpu=load_gpu("h100-sxm"),
                      workload=Workload(16, 1024, 256), gqa_values=(1, 2, 4, 8, 16), vocab_size=32000,
                      r_range=(1.0, 4.0), **changes)
    return search(fitted, spec, slack=slack)


def test_a_gqa_term_that_predicts_the_larger_runs_is_traded_on(reference):
    study = run_study(synthetic_runs(TRUE_C), "conditional-mult-gqa", "lsq", reference=reference)
    check = study.fitted.gqa
    assert check.traded and check.mean_abs_error < 0.01 and check.spearman >= 0.8
    assert check.test_variants == 36 and check.test_runs == 36  # the 2e8 size: 3 x 3 x 4 GQA, one run each
    result = gqa_search(study.fitted)
    assert result.gqa.traded and result.gqa.held_at is None
    assert "passed its held-out check" in result.notes[0]


def test_a_noisy_gqa_term_fails_its_check_and_the_search_holds_gqa_at_the_baseline(reference):
    study = run_study(synthetic_runs(TRUE_C, noise=0.03), "conditional-mult-gqa", "lsq", reference=reference)
    check = study.fitted.gqa
    assert not check.traded and check.mean_abs_error > 0.01
    assert check.baseline == 1.0 and check.runs_by_gqa == {"1": 27, "2": 27, "4": 27, "8": 27}  # a tie: the smallest
    result = gqa_search(study.fitted)
    assert set(result.top_k["gqa"]) == {1}
    assert "failed its held-out check" in result.notes[0] and "search-gqa" in result.notes[0]
    extrapolated = gqa_search(study.fitted, extrapolate=True)
    labelled = extrapolated.top_k[extrapolated.top_k["gqa"] > 1]
    assert not labelled.empty
    assert all("(held at 1; runs 1-8)" in label for label in labelled["extrapolation"])


def test_a_law_without_a_gqa_term_on_runs_that_vary_gqa_holds_it_at_the_most_common_group(reference):
    runs = synthetic_runs(TRUE_C)
    runs = pd.concat([runs, runs[runs["gqa"] == 4].assign(loss=lambda f: f["loss"] * 1.0001)])  # GQA 4 most common
    study = run_study(runs, "conditional-mult", "lsq", reference=reference)
    assert not study.fitted.gqa.traded and study.fitted.gqa.baseline == 4.0
    assert "no GQA term" in study.fitted.gqa.reason
    result = gqa_search(study.fitted)
    assert set(result.top_k["gqa"]) == {4}  # not the largest group, which a GQA-blind law would make free


def test_the_check_travels_in_the_fit_json_and_a_broken_block_is_one_line(reference, tmp_path):
    from archscale.fit.fitted import fitted_from_json
    from archscale.io.errors import UserError

    study = run_study(synthetic_runs(TRUE_C, noise=0.03), "conditional-mult-gqa", "lsq", reference=reference)
    document = study.to_json()
    again = fitted_from_json(document, "fit.json")
    assert again.gqa == study.fitted.gqa
    with pytest.raises(UserError, match=r"fit.json: 'gqa' must hold traded, baseline"):
        fitted_from_json({**document, "gqa": {"traded": True}}, "fit.json")
