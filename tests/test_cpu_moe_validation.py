"""Real vLLM on a CPU over MoE shapes of one active budget: a profile fitted on half the shapes predicts the other half
(experiments/validate/cpu_moe_validation.py on the committed experiments/results/cpu_vllm_moe/ data).

The expected figures are what the script printed (validation.txt there); the bounds are half a point either way (0.01
for rank correlations), so a change to the serving model or the calibration that moves a held-out prediction, better
or worse, fails here and the recorded figures (validation.txt, the folder's README) must be brought up to date.
"""

from __future__ import annotations


import pytest

from archscale.serving.devices import load_gpu

from conftest import DATA
from helpers import assert_figures_as_recorded, validation_script

CSV = DATA.parent / "experiments" / "results" / "cpu_vllm_moe" / "cpu_vllm_moe.csv"
TOLERANCE = 0.005  # half a point of median |relative error|
RANK_TOLERANCE = 0.01
MEASURED = {  # per fitting half: the terms chosen and the held-out figures, as validation.txt records them
    "the validation": {
        "A": {"terms": ("eta_compute", "t_step", "t_seq", "t_expert_gb"), "median_abs_err": 0.0378,
              "spearman_rows": 0.9765, "spearman_within_batch": 0.6500, "tpot_ms_p50": 0.0750, "ttft_ms_p50": 0.0281},
        "B": {"terms": ("eta_compute", "t_step", "t_seq", "t_expert_gb"), "median_abs_err": 0.0532,
              "spearman_rows": 0.9824, "spearman_within_batch": 0.8000, "tpot_ms_p50": 0.0686, "ttft_ms_p50": 0.0513},
    },
    "the dense procedure": {
        "A": {"terms": ("eta_kv", "t_step"), "median_abs_err": 0.2645, "spearman_rows": 0.9742,
              "spearman_within_batch": 0.6973, "tpot_ms_p50": 0.2569, "ttft_ms_p50": 0.5774},
        "B": {"terms": ("t_step", "t_seq"), "median_abs_err": 0.2279, "spearman_rows": 0.9845,
              "spearman_within_batch": 0.8872, "tpot_ms_p50": 0.1821, "ttft_ms_p50": 0.5809},
    },
}

FRESH = {  # the fresh set (cpu_vllm_moe_fresh/), predicted by a profile calibrated on all eight shapes
    "with the serial expert term": ({}, {"terms": ("eta_compute", "t_step", "t_seq", "t_expert_gb"),
                                         "median_abs_err": 0.0987, "spearman_rows": 0.9817,
                                         "spearman_within_batch": 0.7571, "tpot_ms_p50": 0.1484, "ttft_ms_p50": 0.0638}),
    "without it": ({"t_expert_gb": 0.0}, {"terms": ("eta_compute", "eta_kv", "t_step"), "median_abs_err": 0.0332,
                                          "spearman_rows": 0.9833, "spearman_within_batch": 0.8382,
                                          "tpot_ms_p50": 0.1047, "ttft_ms_p50": 0.0857}),
}
FRESH_CSV = CSV.parent.with_name("cpu_vllm_moe_fresh") / "cpu_vllm_moe.csv"

pytestmark = pytest.mark.skipif(not CSV.exists(), reason=f"{CSV.name} not present (made by experiments/studies/cpu_vllm_moe.py)")


@pytest.fixture(scope="module")
def script():
    """The validation script as a module."""
    yield from validation_script("cpu_moe_validation")


@pytest.fixture(scope="module")
def figures(script):
    """Both procedures' held-out figures per half, from one run of each."""
    rows = script.vllm_rows(CSV)
    device = load_gpu("cpu", script.DEVICE)
    return {label: {split.name: script.figures(split) for split in script.validate(rows, device, fixed)}
            for label, fixed in script.PROCEDURES.items()}


@pytest.mark.parametrize("label", list(MEASURED))
@pytest.mark.parametrize("half", ["A", "B"])
def test_held_out_moe_shapes_stay_as_measured(figures, label, half):
    assert_figures_as_recorded(figures[label][half], MEASURED[label][half], TOLERANCE, RANK_TOLERANCE)


def test_the_halves_alternate_in_e_and_k_and_every_shape_was_measured_at_every_batch(script):
    rows = script.vllm_rows(CSV)
    first, _ = script.halves(rows)
    assert sorted(map(tuple, rows.loc[first, script.ROUTING].drop_duplicates().to_numpy())) == [
        (4, 1), (8, 1), (8, 4), (16, 2)]
    assert all(sorted(group) == [1, 4, 16, 32] for _, group in rows.groupby("name")["batch_size"])
    assert rows["name"].nunique() == 8 and set(rows["dtype"]) == {"bfloat16"}


@pytest.mark.skipif(not FRESH_CSV.exists(), reason="the fresh set is not present (cpu_vllm_moe.py --set fresh)")
@pytest.mark.parametrize("variant", list(FRESH))
def test_the_fresh_set_is_predicted_as_measured(script, variant):
    """Shapes measured after the model was settled: the throughput error stays under 15% with or without the serial
    expert term. With it (the validation's procedure) the within-batch ranking stays short of 0.8 (the write-up's
    verdict); without it, since ``--fit auto`` may choose (eta_compute, eta_kv, t_step), it reaches 0.84 here, but
    the same variant ranks the eight shapes' held-out halves at 0.70 / 0.75 (test below), so no procedure meets
    0.8 on every held-out test."""
    extra, expected = FRESH[variant]
    rows, fresh = script.vllm_rows(CSV), script.vllm_rows(FRESH_CSV)
    split = script.fresh_split(rows, fresh, load_gpu("cpu", script.DEVICE), {**script.PROCEDURES["the validation"], **extra})
    got = script.figures(split)
    assert_figures_as_recorded(got, expected, TOLERANCE, RANK_TOLERANCE)
    assert got["median_abs_err"] <= 0.15
    assert (got["spearman_within_batch"] >= 0.8) == (variant == "without it")


def test_without_the_serial_term_the_eight_shapes_are_ranked_short_of_the_target(script):
    """The variant that ranks the fresh set at 0.84 (serial expert term held at 0) ranks the eight shapes' held-out
    halves at 0.70 / 0.75: dropping the term would trade one held-out test for the other, so the validation keeps
    it to --fit auto's choice."""
    rows = script.vllm_rows(CSV)
    device = load_gpu("cpu", script.DEVICE)
    splits = script.validate(rows, device, {**script.PROCEDURES["the validation"], "t_expert_gb": 0.0})
    within = [script.figures(split)["spearman_within_batch"] for split in splits]
    assert within == pytest.approx([0.697, 0.753], abs=RANK_TOLERANCE)


ORDERS = {"A": (17.8, 5, 24), "B": (11.3, 4, 24)}  # stated speedup error (points), pairs the model orders, pairs in all


@pytest.mark.parametrize("half", ["A", "B"])
def test_every_order_the_model_claims_beyond_its_stated_error_is_measured_so_in_both_sessions(script, half):
    """The search's tie rule on held-out shapes: where the estimates of two shapes at one batch size differ by more
    than the profile's leave-one-shape-out speedup error (fitting rows only), the shapes are measured in that order,
    in the first session and in the retest; the other pairs are ties, and at batch 1 all of them are."""
    rows, retest = script.vllm_rows(CSV), script.retest_rows(script.RETEST)
    split = {s.name: s for s in script.validate(rows, load_gpu("cpu", script.DEVICE), script.PROCEDURES["the validation"])}[half]
    error, claimed, total = ORDERS[half]
    assert 100 * script.stated_error(split) == pytest.approx(error, abs=0.1)
    pairs = script.ordered_pairs(split, retest)
    ordered = pairs[pairs["ordered"]]
    assert (len(ordered), len(pairs)) == (claimed, total)
    assert ordered["as_measured"].all() and ordered["as_retested"].all()
    assert not pairs.query("batch == 1")["ordered"].any()


@pytest.mark.skipif(not FRESH_CSV.exists(), reason="the fresh set is not present (cpu_vllm_moe.py --set fresh)")
def test_on_the_fresh_set_every_claimed_order_holds_in_both_sessions(script):
    rows, fresh = script.vllm_rows(CSV), script.vllm_rows(FRESH_CSV)
    split = script.fresh_split(rows, fresh, load_gpu("cpu", script.DEVICE), script.PROCEDURES["the validation"])
    pairs = script.ordered_pairs(split, script.retest_rows(script.FRESH_RETEST))
    ordered = pairs[pairs["ordered"]]
    assert (len(ordered), len(pairs)) == (24, 60)
    assert ordered["as_measured"].all() and ordered["as_retested"].all()
