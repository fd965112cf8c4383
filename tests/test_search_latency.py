"""``archscale search --tpot-ms/--ttft-ms``: each shape ranked at the most requests that meet a latency limit.

The shipped 1B law (data/fits/dissertation_1b_mult.json) on the shipped H200 profile: at a fixed batch of 256 the
fastest shape runs TPOT p99 above 15 ms; under "TPOT p99 <= 15 ms" a different, wider shape serves more.
"""

import dataclasses
import json

import matplotlib
import pytest

from conftest import DATA
from helpers import one_line_error

matplotlib.use("Agg")

BASE = ["--fit", str(DATA / "fits" / "dissertation_1b_mult.json"), "--n", "1e9", "--tokens", "1e11", "--layers", "16",
        "--head-dim", "64", "--match", "llama-3.2-1b", "--gpu", "h200"]


def _search(cli, *args):
    result = cli("search", *BASE, *args, "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)


def test_a_tpot_limit_changes_the_pick_and_says_why(cli):
    limited = _search(cli, "--batch", "256", "--tpot-ms", "15")
    fixed = _search(cli, "--batch", "256")
    comparison = limited["latency_limits"]["comparison"]
    assert comparison["changed"]
    pick, fixed_pick = comparison["under_limit"], comparison["fixed_batch"]
    # the fixed-batch pick is what the search without the limit picks, and it misses the limit at that batch
    top = fixed["top_k"][0]
    assert (fixed_pick["d_model"], fixed_pick["d_ff"], fixed_pick["n_kv_heads"]) == (top["d_model"], top["d_ff"], top["n_kv_heads"])
    assert not fixed_pick["fixed_meets_limits"] and fixed_pick["fixed_tpot_ms_p99"] > 15
    # under the limit both run fewer requests; the pick meets it and serves more than the fixed pick there
    assert pick["tpot_ms_p99"] <= 15 and pick["operating_batch"] < 256
    assert fixed_pick["operating_batch"] < pick["operating_batch"]
    assert pick["output_tokens_per_s"] > fixed_pick["output_tokens_per_s"]
    for row in limited["top_k"]:
        assert row["meets_limits"] and row["tpot_ms_p99"] <= 15
    note = next(n for n in limited["notes"] if n.startswith("the latency limit changes the pick"))
    assert "Why: under the limit the fixed-batch pick runs only" in note
    # 5.6% is above the throughput estimate's 4.8 points, but the batches rest on latencies nothing measured
    assert note.endswith("so the change is a rank at these operating points, which rest on the profile's unmeasured "
                         "latencies")


def test_the_table_shows_each_picks_batch_and_latency(cli):
    result = cli("search", *BASE, "--batch", "256", "--tpot-ms", "15")
    assert result.code == 0, result.err
    assert "at most 256 requests meeting TPOT p99 <= 15 ms" in result.out
    assert "TPOT p99 ms" in result.out and "TTFT p99 ms" in result.out
    assert "the latency limit changes the pick" in result.out


def test_a_loose_limit_keeps_the_fixed_batch_pick(cli):
    limited = _search(cli, "--batch", "64", "--tpot-ms", "1000")
    comparison = limited["latency_limits"]["comparison"]
    assert not comparison["changed"]
    assert comparison["under_limit"]["operating_batch"] == 64
    assert any(n.startswith("under TPOT p99 <= 1000 ms the pick is the same") for n in limited["notes"])


def test_a_ttft_limit_at_the_median_caps_the_batch(cli):
    limited = _search(cli, "--batch", "256", "--ttft-ms", "500", "--percentile", "p50")
    for row in limited["top_k"]:
        assert row["ttft_ms_p50"] <= 500 and row["operating_batch"] < 256
    assert limited["latency_limits"]["statistic"] == "p50"


def test_a_limit_no_candidate_can_meet_lists_the_nearest_misses(cli):
    result = cli("search", *BASE, "--tpot-ms", "0.5")
    assert result.code == 2 and one_line_error(result)
    assert "meets TPOT p99 <= 0.5 ms even serving one request" in result.err
    assert "nearest: d_model" in result.err and "relax the limit" in result.err


@pytest.mark.parametrize("args, message", [
    (["--tpot-ms", "40", "--percentile", "p95"], "--percentile 'p95': not a measured statistic"),
    (["--percentile", "p50"], "--percentile picks the statistic of a latency limit"),
    (["--tpot-ms", "-3"], "--tpot-ms must be a positive number of milliseconds"),
])
def test_bad_latency_flags_are_one_line(cli, args, message):
    result = cli("search", *BASE, *args)
    assert result.code == 2 and one_line_error(result), result.err
    assert message in result.err


def test_the_figure_gains_the_per_user_per_device_panel(cli, tmp_path):
    path = tmp_path / "pareto.png"
    result = cli("search", *BASE, "--batch", "256", "--tpot-ms", "15", "--plot", str(path))
    assert result.code == 0, result.err
    assert path.stat().st_size > 0
    from archscale.fit.fitted import load_fit
    from archscale.search.constrained import SearchSpec, search
    from archscale.search.plots import draw_search
    from archscale.serving import LatencyLimits, Workload, load_gpu, resolve_profile
    from archscale.shapes.architecture import PRESETS

    gpu = load_gpu("h200")
    spec = SearchSpec(n=1e9, tokens=1e11, n_layers=16, d_head=64, gpu=gpu, workload=Workload(256, 4096, 1024),
                      profile=resolve_profile(None, gpu), limits=LatencyLimits(tpot_ms=15))
    figure = draw_search(search(load_fit(DATA / "fits" / "dissertation_1b_mult.json"), spec, match=PRESETS["llama-3.2-1b"]), spec)
    panel = figure.axes[-1]
    assert panel.get_xlabel() == "output tokens/s per user (1000 / TPOT p99 in ms)"
    assert panel.get_ylabel().startswith("output tokens/s per h200")
    labels = [text.get_text() for text in panel.get_legend().get_texts()]
    assert any(label.startswith("#1:") for label in labels) and "reference: llama-3.2-1b" in labels
    assert "TPOT p99 <= 15 ms (right of the line)" in labels


def test_search_prices_each_shape_at_its_operating_point_by_hand(cli):
    """$3.50 per GPU-hour, a 2-GPU replica: dollars per million output tokens = 3.50 x 2 / 3600 / (tokens/s) x 1e6."""
    limited = _search(cli, "--batch", "256", "--tpot-ms", "15", "--gpu-price", "3.5", "--tp", "2")
    for row in limited["top_k"]:
        assert row["usd_per_m_output"] == pytest.approx(3.5 * 2 / 3600 / row["output_tokens_per_s"] * 1e6)
    reference = limited["target"]["reference"]
    assert reference["usd_per_m_output"] == pytest.approx(7.0 / 3600 / reference["output_tokens_per_s"] * 1e6)
    shown = cli("search", *BASE, "--gpu-price", "3.5")
    assert "$/M out" in shown.out and "dollars per million output tokens at $3.5 per GPU-hour" in shown.out


def test_a_negative_price_is_one_line(cli):
    result = cli("search", *BASE, "--gpu-price", "-1")
    assert one_line_error(result) and "--gpu-price must be a positive price in US dollars per GPU-hour" in result.err


def test_the_search_says_how_far_the_latencies_it_ranks_by_were_checked(cli):
    """A limit ranks by predicted TPOT and TTFT: with the shipped H200 profile, fitted on throughput rows only, the
    note says their error is unmeasured; a profile calibrated with latency quotes its median errors."""
    limited = _search(cli, "--batch", "256", "--tpot-ms", "15")
    note = next(n for n in limited["notes"] if n.startswith("ranked at each shape's operating point"))
    assert "vllm-h200-bf16 was calibrated on throughput alone" in note and "no measured error" in note


def test_a_profile_calibrated_with_latency_quotes_its_latency_errors():
    from archscale.serving.profiles import Profile, load_profile

    shipped = load_profile(DATA / "profiles" / "vllm-h200-bf16.json")
    latency = {"fit": {"tpot_ms_p50": {"n_rows": 20, "median_abs_rel_err": 0.091, "max_abs_rel_err": 0.3}},
               "heldout": {"tpot_ms_p50": {"n_rows": 8, "median_abs_rel_err": 0.038, "max_abs_rel_err": 0.12},
                           "ttft_ms_p50": {"n_rows": 8, "median_abs_rel_err": 0.031, "max_abs_rel_err": 0.08}}}
    checked = dataclasses.replace(shipped, validation={**shipped.validation, "latency": latency})
    assert checked.latency_trust().endswith("median |error| on held-out rows: TPOT p50 3.8%, TTFT p50 3.1%")
    without_heldout = dataclasses.replace(checked, validation={"latency": {"fit": latency["fit"]}})
    assert "on the rows it was fitted on: TPOT p50 9.1%" in without_heldout.latency_trust()
    assert "never compared with a measurement" in Profile.uncalibrated(shipped.device).latency_trust()
    assert checked.latency_measured and without_heldout.latency_measured
    assert not shipped.latency_measured and not Profile.uncalibrated(shipped.device).latency_measured
    # a limit is measured only where its own statistic was: TPOT p50 and TTFT p50, not TPOT p99
    assert checked.latency_measured_for(["tpot_ms_p50", "ttft_ms_p50"])
    assert not checked.latency_measured_for(["tpot_ms_p99"]) and not shipped.latency_measured_for(["tpot_ms_p50"])


def test_a_fixed_batch_search_still_reports_each_shown_shapes_latency(cli):
    """Ranking at a fixed batch scores a million shapes by throughput alone; the TTFT and TPOT it prints in the JSON
    (picks, frontier, the best discrete shape) are computed for those shapes, and agree with one estimate of each."""
    from archscale.serving import Workload, load_gpu, resolve_profile
    import pandas as pd

    result = _search(cli, "--batch", "64", "--top-k", "8", "--tie", "0")  # picks off the frontier too
    profile = resolve_profile(None, load_gpu("h200"), "vllm")
    shown = result["top_k"] + [result["best_discrete"]]
    key = lambda row: (row["n_layers"], row["d_model"], row["n_heads"], row["n_kv_heads"], row["d_ff"])  # noqa: E731
    assert len(result["top_k"]) == 8 and {key(p) for p in result["top_k"]} - {key(f) for f in result["frontier"]}
    assert result["frontier"] and all(row["ttft_ms_p50"] > 0 and row["tpot_ms_p99"] > 0 for row in result["frontier"])
    for row in shown:
        shape = {**row, "d_head": 64, "vocab": 128256, "tie_embeddings": True}  # the search's --head-dim, Llama-3's vocab
        alone = profile.estimate(pd.DataFrame([shape]), Workload(64, 4096, 1024))
        assert row["tpot_ms_p99"] == pytest.approx(float(alone["tpot_ms_p99"].iloc[0]), rel=1e-9)
        assert row["ttft_ms_mean"] == pytest.approx(float(alone["ttft_ms_mean"].iloc[0]), rel=1e-9)
