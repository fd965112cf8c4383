"""Real vLLM on this CPU against itself: each CPU serving study measured again in a later session
(experiments/validate/cpu_retest.py on the committed experiments/results/*_retest*/ data).

The expected figures are what the script printed (experiments/results/cpu_retest.txt). They back the closing
verdicts of issues 21 and 22: once the session's common shift is divided out, the dense study's first session
differs from the later ones by about 10% in TPOT p50 shape by shape, while two quiet sessions agree within 5% (so
on quiet data a 10% TPOT target is within reach of a model, and the miss is the model's); the fresh dense set's
loaded session is 6.9% from its quiet one shape by shape; and the fresh MoE set's
sessions do not agree on the order of shapes within a batch size to the 0.8 asked of the model.
"""

from __future__ import annotations

import pytest

from archscale.serving.devices import load_gpu

from helpers import validation_script

TOLERANCE = 0.05  # points of median |difference| %, as the report rounds them
RANK_TOLERANCE = 0.01
ENGINE_AGAINST_ITSELF = {  # study (by its committed folder): median |retest / committed - 1| % and Spearman
    "cpu_vllm_latency": {("throughput", "median |diff| %"): 11.15, ("TPOT p50", "median |diff| %"): 13.56,
                         ("TPOT p50", "less shift %"): 11.28,
                         ("TTFT p50", "median |diff| %"): 9.28, ("throughput", "Spearman mean"): 0.63,
                         ("throughput", "rho b1"): 0.14, ("TPOT p50", "rho b1"): 0.27},
    "cpu_vllm_latency_retest": {("throughput", "median |diff| %"): 10.77, ("TPOT p50", "median |diff| %"): 12.94,
                                ("TPOT p50", "less shift %"): 4.30, ("throughput", "less shift %"): 3.90,
                                ("throughput", "Spearman mean"): 0.85},  # the third session (quiet) vs the second
    "cpu_vllm_latency_fresh": {("TPOT p50", "median |diff| %"): 10.76, ("TPOT p50", "less shift %"): 6.87,
                               ("TTFT p50", "median |diff| %"): 5.28, ("throughput", "Spearman mean"): 0.61},
    "cpu_vllm_latency_third": {("TPOT p50", "median |diff| %"): 4.20, ("TPOT p50", "less shift %"): 2.44,
                               ("TTFT p50", "median |diff| %"): 3.25, ("throughput", "Spearman mean"): 0.82},
    "cpu_vllm_latency_fifth": {("TPOT p50", "median |diff| %"): 11.20, ("TPOT p50", "less shift %"): 6.86,
                               ("TTFT p50", "median |diff| %"): 7.67, ("throughput", "Spearman mean"): 0.57},
    "cpu_vllm_moe": {("throughput", "median |diff| %"): 4.23, ("TPOT p50", "median |diff| %"): 6.66,
                     ("throughput", "Spearman mean"): 0.86, ("throughput", "rho b1"): 0.64},
    "cpu_vllm_moe_fresh": {("throughput", "median |diff| %"): 2.94, ("TPOT p50", "median |diff| %"): 5.13,
                           ("throughput", "Spearman mean"): 0.60, ("throughput", "rho b1"): 0.03},
}


@pytest.fixture(scope="module")
def script():
    yield from validation_script("cpu_retest")


def study(script, folder: str):
    found = [s for s in script.STUDIES if s.committed.parent.name == folder]
    if not found[0].retest.exists():
        pytest.skip(f"{found[0].retest} not present (made by the command in its folder's README)")
    return found[0]


@pytest.mark.parametrize("folder", list(ENGINE_AGAINST_ITSELF))
def test_the_engine_agrees_with_itself_as_recorded(script, folder):
    chosen = study(script, folder)
    committed, retest = (script.latency.vllm_rows(path) for path in (chosen.committed, chosen.retest))
    pairs = script.paired(committed, retest)
    assert len(pairs) == len(committed) == len(retest), "every row was measured in both sessions"
    agreement = script.agreement_table(pairs)
    for (column, statistic), expected in ENGINE_AGAINST_ITSELF[folder].items():
        allowed = TOLERANCE if "%" in statistic else RANK_TOLERANCE
        assert agreement.loc[column, statistic] == pytest.approx(expected, abs=allowed), (column, statistic)


def test_quiet_sessions_agree_shape_by_shape_so_the_dense_tpot_miss_is_the_models(script):
    """Issue 21's TPOT p50 target (10% on held-out shapes) against the dense study's sessions. The sessions differ by
    more than 10% in TPOT p50, but mostly by a shift of the whole session, which a calibration inside one session
    absorbs: shape by shape, the two quiet sessions agree within 5%, the first (loaded) session is 11% from the
    second. A profile calibrated on half the shapes of the first session predicts the other half's shapes in the
    second session as the report records (TPOT p50 21.6%, throughput 15.2%)."""
    chosen = study(script, "cpu_vllm_latency")
    committed, retest = (script.latency.vllm_rows(path) for path in (chosen.committed, chosen.retest))
    agreement = script.agreement_table(script.paired(committed, retest))
    assert agreement.loc["TPOT p50", "median |diff| %"] > 10.0 and agreement.loc["TPOT p50", "less shift %"] > 10.0
    quiet = study(script, "cpu_vllm_latency_retest")
    later = script.agreement_table(script.paired(*(script.latency.vllm_rows(p) for p in (quiet.committed, quiet.retest))))
    assert later.loc["TPOT p50", "median |diff| %"] > 10.0 and later.loc["TPOT p50", "less shift %"] < 5.0
    device = load_gpu("cpu", chosen.device)
    first, _ = chosen.halves(committed)
    split = script.model_split(committed, retest, chosen, device, first, "A", "committed -> retest")
    got = script.model_figures(split)
    assert got["TPOT p50"] == pytest.approx(0.2160, abs=0.005)
    assert got["throughput"] == pytest.approx(0.1515, abs=0.005)
