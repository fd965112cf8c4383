"""Picks a reviewer can defend: the search ranks only what the fit's runs cover, and calls a gap smaller than the
estimate's own error a tie."""

import json

import pandas as pd
import pytest

from archscale.fit.coverage import coverage_of, outside_coverage, outside_label
from archscale.fit.fitted import load_fit
from archscale.search.constrained import SearchSpec, search
from archscale.serving.devices import GPU, load_gpu
from archscale.serving.estimate import Workload
from archscale.serving.profiles import Profile, resolve_profile
from archscale.shapes.hf_config import load_architecture
from conftest import DATA
from helpers import one_line_error

FIT_1B = DATA / "fits" / "dissertation_1b_mult.json"
MINI_STUDY_RUNS = DATA.parent / "experiments" / "results" / "cpu_mini_study" / "runs.csv"
MINI_STUDY_FIT = MINI_STUDY_RUNS.parent / "cond.json"


def h200_spec(**changes) -> SearchSpec:
    gpu = load_gpu("h200")
    settings = dict(n=1e9, tokens=1e11, n_layers=16, d_head=64, gpu=gpu, workload=Workload(64, 4096, 1024),
                    profile=resolve_profile(None, gpu, "vllm"))
    return SearchSpec(**{**settings, **changes})


@pytest.fixture(scope="module")
def default_1b():
    return search(load_fit(FIT_1B), h200_spec(), match=load_architecture("llama-3.2-1b"))


@pytest.fixture(scope="module")
def extrapolated_1b():
    return search(load_fit(FIT_1B), h200_spec(extrapolate=True), match=load_architecture("llama-3.2-1b"))


def test_the_published_fit_says_it_has_seen_gqa_4_only():
    fitted = load_fit(FIT_1B)
    assert fitted.coverage["gqa"] == [4.0, 4.0]
    assert fitted.coverage["x"][0] < 0.08 < fitted.coverage["x"][1]  # Panda-1B's optimum is inside


def test_by_default_every_pick_is_inside_the_runs_so_none_takes_a_gqa_the_law_never_saw(default_1b):
    picks = default_1b.top_k
    assert set(picks["gqa"]) == {4}
    assert (picks["outside"] == 0).all()  # in shape; their size is the law's (3.3x its runs), a note of its own
    assert all(label.startswith("N ") for label in picks["extrapolation"])
    assert all("gqa" in inside.split(",") for inside in picks["inside_data"])
    ranked = default_1b.candidates[default_1b.candidates["ranked"]]
    assert set(ranked["gqa"]) == {4}
    assert any("not ranked" in note and "gqa" in note for note in default_1b.notes)


def test_extrapolate_ranks_the_rest_and_labels_what_is_out(extrapolated_1b):
    picks = extrapolated_1b.top_k
    assert (picks["gqa"] > 4).any()  # the law gives large groups the same loss, so they win on speed
    for gqa, label in zip(picks["gqa"], picks["extrapolation"]):
        assert (gqa == 4) == (label == "") or "gqa" not in label
        if gqa != 4:
            assert f"gqa {gqa}" in label and "(runs 4)" in label
    assert any("ranked anyway (--extrapolate)" in note for note in extrapolated_1b.notes)


def test_a_reference_outside_the_runs_makes_the_target_an_extrapolation(default_1b):
    # LLaMA-3.2-1B has r 4.8; the published fit's runs reach r 4.2
    assert any("llama-3.2-1b" in note and "r 4.8" in note and "extrapolation" in note for note in default_1b.notes)


def test_the_published_1b_law_used_at_1b_and_16_layers_says_both_are_extrapolations(default_1b):
    # its runs were 80M-297M parameters at 12 layers, trained on 100 N tokens (Tables C.1 and 6.1)
    notes = " ".join(default_1b.notes)
    assert "the fit's runs had 12 layers and this search is at 16" in notes
    assert "x the largest its runs had (3.05e+08)" in notes and "tokens up to 1e+11, 3.28x" in notes
    for pick in default_1b.top_k.to_dict("records"):
        assert "(runs 7.79e+07-3.05e+08)" in pick["extrapolation"]  # the JSON's label names it per pick
        assert pick["extrapolation_brief"] == ""  # every pick shares it: the table leaves it to the note


def test_a_size_cell_says_how_far_and_which_way():
    from archscale.fit.coverage import size_brief

    runs = {"N": [7.79e7, 3.05e8], "D": [7.79e9, 3.05e10]}
    assert size_brief(runs, 3.05e8, 3.05e10) == ""  # the largest run is inside
    assert size_brief(runs, 3.15e8, 2e10) == "N 1.03x"  # past the 2% slack, and not printed as 1x
    assert size_brief(runs, 7.2e10, 7.2e9) == "N 236x, D 1.08x below"


def test_the_published_fits_own_run_sizes_are_inside_their_range(cli):
    """The fits record their runs' counted sizes (Table C.1), so a size they trained on is not an extrapolation."""
    for fit, n in (("dissertation_1b_mult.json", "3.05e8"), ("dissertation_1b_mult.json", "7.8e7"),
                   ("dissertation_3b_from_1b_mult.json", "9.5e8")):
        tokens = f"{float(n) * 100:g}"
        result = cli("predict", DATA / "fits" / fit, "--n", n, "--tokens", tokens, "--d-model", "1024", "--ratio", "1.5",
                     "--json")
        notes = json.loads(result.out).get("extrapolation", [])
        assert not any("fitted runs" in note for note in notes), (fit, n, notes)


def test_at_the_depth_of_the_runs_no_depth_note_is_given():
    at_12 = search(load_fit(FIT_1B), h200_spec(n=2e8, tokens=2e10, n_layers=12), match=None)
    assert not any("layers unmeasured" in note for note in at_12.notes)
    assert not any("extrapolation past the fitted runs" in note for note in at_12.notes)


def test_ties_are_ordered_by_predicted_loss_and_stated(default_1b):
    picks = default_1b.top_k
    tolerance = default_1b.throughput_model.heldout_speedup_points / 100
    fastest = default_1b.candidates.loc[default_1b.candidates["ranked"], "tokens_per_s"].max()
    tied = picks[picks["tie"]]
    assert len(tied) >= 2  # the top shapes are closer than the profile's error
    assert (tied["tokens_per_s"] >= fastest * (1 - tolerance)).all()
    assert tied["predicted_loss"].is_monotonic_increasing
    assert any(note.startswith("tie rule:") and "held-out speedup error" in note for note in default_1b.notes)


def test_without_a_tie_tolerance_the_order_is_by_throughput():
    result = search(load_fit(FIT_1B), h200_spec(tie_tolerance=0.0), match=load_architecture("llama-3.2-1b"))
    assert not result.top_k["tie"].any()
    assert result.top_k["tokens_per_s"].is_monotonic_decreasing


def test_an_uncalibrated_estimate_says_no_tie_can_be_judged():
    gpu = load_gpu("l4")
    spec = SearchSpec(n=1e9, tokens=1e11, n_layers=16, d_head=64, gpu=gpu, workload=Workload(8, 512, 128))
    result = search(load_fit(FIT_1B), spec)
    assert any(note.startswith("no tie rule") for note in result.notes)


def test_a_fit_records_the_range_its_runs_cover(cli, tmp_path):
    out = tmp_path / "cond.json"
    result = cli("fit", str(MINI_STUDY_RUNS), "--law", "conditional-mult", "--loss", "lsq", "--out", str(out))
    assert result.code == 0, result.err
    coverage = json.loads(out.read_text())["coverage"]
    runs = pd.read_csv(MINI_STUDY_RUNS)
    assert coverage["gqa"] == [1.0, 1.0]  # the mini-study has no GQA
    assert coverage["n_layers"] == [4.0, 4.0]
    assert coverage["x"][0] == pytest.approx((runs["d_model"] / runs["N"] ** 0.5).min())


@pytest.mark.parametrize("budget, word", [(("--n", "7B", "--tokens", "140B", "--layers", "24", "--gqa", "4"), "past"),
                                          (("--n", "30M", "--tokens", "300M", "--layers", "6", "--gqa", "1"), "below")])
def test_a_budget_outside_the_runs_sizes_is_called_an_extrapolation(cli, tmp_path, budget, word):
    """The aspect law fitted on the shipped runs (78M-1.67B parameters, 1.6B-49B tokens), searched at 7B parameters
    and 140B tokens, and at 30M and 300M: each pick's loss is the law's beyond its runs, and the notes say how far."""
    fit = tmp_path / "aspect.json"
    assert cli("fit", str(DATA / "aspect_ratio_morph.csv"), "--law", "aspect", "--loss", "lsq", "--out", str(fit)).code == 0
    low, high = json.loads(fit.read_text())["size_range"]["N"]
    result = cli("search", "--fit", str(fit), *budget, "--json")
    assert result.code == 0, result.err
    document = json.loads(result.out)
    note = next(n for n in document["notes"] if f"extrapolation {word} the fitted runs" in n)
    sizes = [pick["N"] for pick in document["top_k"]]
    if word == "past":
        assert f"parameters up to {max(sizes):.3g}, {max(sizes) / high:.3g}x the largest its runs had" in note
    else:
        assert f"parameters down to {min(sizes):.3g}, {low / min(sizes):.3g}x below the smallest its runs had" in note
    assert "tokens" in note  # both budgets' tokens are outside the runs' too
    runs = f"(runs {low:.3g}-{high:.3g})"
    assert all(f"N {pick['N']:.3g} {runs}" in pick["extrapolation"] and "; D " in pick["extrapolation"]
               for pick in document["top_k"])  # each pick says so too
    inside = json.loads(cli("search", "--fit", str(fit), "--n", "500M", "--tokens", "10B", "--layers", "12", "--gqa", "1",
                            "--json").out)
    assert not [n for n in inside["notes"] if "fitted runs" in n]
    assert all(pick["extrapolation"] == "" for pick in inside["top_k"])


def test_coverage_masks_name_each_coordinate_that_is_out():
    coverage = {"x": [0.05, 0.2], "r": [0.5, 4.0], "gqa": [4.0, 4.0]}
    shapes = pd.DataFrame({"d_model": [100, 400, 100], "N": [1e6, 1e6, 1e6], "r": [1.0, 1.0, 6.0],
                           "n_heads": [8, 8, 16], "n_kv_heads": [2, 2, 1]})
    mask = outside_coverage(shapes, coverage)
    assert mask[0] == 0
    assert outside_label(shapes.iloc[1].to_dict(), int(mask[1]), coverage) == "x 0.4 (runs 0.05-0.2)"
    assert outside_label(shapes.iloc[2].to_dict(), int(mask[2]), coverage) == "r 6 (runs 0.5-4); gqa 16 (runs 4)"
    assert coverage_of(shapes)["gqa"] == [4.0, 16.0]


def test_nothing_inside_the_runs_is_one_line_naming_the_way_out(cli):
    result = cli("search", "--fit", str(FIT_1B), "--n", "1e9", "--tokens", "1e11", "--layers", "16",
                 "--gqa", "8,16", "--gpu", "h200", "--batch", "8", "--input-len", "512", "--output-len", "128")
    assert one_line_error(result), result.err
    assert "outside the fit's runs" in result.err and "--extrapolate" in result.err and "gqa" in result.err


@pytest.mark.parametrize("value", ["-0.1", "1", "nan"])
def test_a_tie_that_is_not_a_fraction_is_refused(cli, value):
    result = cli("search", "--fit", str(FIT_1B), "--n", "1e9", "--tokens", "1e11", "--layers", "16", "--tie", value)
    assert one_line_error(result) and "--tie" in result.err, result.err


def test_the_search_json_carries_ties_labels_and_the_rule(cli, tmp_path):
    out = tmp_path / "search.json"
    result = cli("search", "--fit", str(FIT_1B), "--n", "1e9", "--tokens", "1e11", "--layers", "16",
                 "--match", "llama-3.2-1b", "--gpu", "h200", "--extrapolate", "--out", str(out))
    assert result.code == 0, result.err
    document = json.loads(out.read_text())
    assert document["coverage"]["of_fit"]["gqa"] == [4.0, 4.0] and document["coverage"]["extrapolate"] is True
    assert document["tie_rule"]["tolerance"] == pytest.approx(document["throughput_estimates"]["heldout_speedup_error_points"] / 100)
    first = document["top_k"][0]
    assert {"tie", "extrapolation", "inside_data"} <= set(first)
    assert first["extrapolation"].startswith("gqa")


def tiny_cpu_spec() -> SearchSpec:
    """The README's CPU flow: the mini-study's law, tiny shapes, the uncalibrated estimate on this CPU."""
    cpu = GPU(name="cpu", bf16_tflops=1.0, hbm_tb_s=0.02, memory_gb=16, interconnect_gb_s=10)  # as bench probe writes
    return SearchSpec(n=2e5, tokens=1.5e6, n_layers=4, d_head=16, gpu=cpu, workload=Workload(8, 64, 16),
                      vocab_size=256, d_multiple=16, ff_multiple=16, gqa_values=(1, 2))


def test_one_measured_shape_is_not_outranked_by_the_raw_estimate_of_its_twin():
    """The 25x case: a measured CPU throughput beside uncalibrated estimates ranked the estimates first."""
    fitted = load_fit(MINI_STUDY_FIT)
    plain = search(fitted, tiny_cpu_spec(), slack=0.02, top_k=2)
    first = plain.top_k.iloc[0]
    measured_tps = first["tokens_per_s"] / 25  # what the torch backend measured, about 25x below the roofline
    share = 16 / (64 + 16)
    bench = pd.DataFrame([{**{c: int(first[c]) for c in ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_head", "d_ff")},
                           "gpu": "cpu", "batch_size": 8, "input_len": 64, "output_len": 16, "tp": 1,
                           "tokens_per_s": measured_tps, "output_tokens_per_s": measured_tps * share}])
    result = search(fitted, tiny_cpu_spec(), slack=0.02, top_k=2, bench=bench)
    ranked = result.candidates[result.candidates["ranked"]]
    measured = ranked[ranked["throughput_source"] == "measured"]
    assert len(measured) == 1
    # on one scale, no estimate beats the measurement by more than the estimate's own ratio between the two shapes
    estimated_ratio = plain.candidates.loc[plain.candidates["ranked"], "tokens_per_s"].max() / first["tokens_per_s"]
    assert ranked["tokens_per_s"].max() / measured_tps <= estimated_ratio * (1 + 1e-9)
    assert ranked["tokens_per_s"].max() < 2 * measured_tps  # not 25x
    assert any("one scale" in note and "one-point calibration" in note for note in result.notes)


def test_a_device_without_a_profile_gets_a_transferred_one_with_its_measured_error(cli):
    result = cli("search", "--fit", str(FIT_1B), "--n", "1e9", "--tokens", "1e11", "--layers", "16", "--match",
                 "llama-3.2-1b", "--gpu", "h100-sxm", "--batch", "64")
    assert result.code == 0, result.err
    text = " ".join(result.out.split())
    assert "transferred from profile vllm-h200-bf16" in text
    assert "a100-40gb to h200" in text and "h200 to a100-40gb" in text  # both measured directions are quoted
    assert "uncalibrated" not in text


def test_the_name_a_transferred_profile_prints_is_accepted_by_profile():
    printed = resolve_profile(None, load_gpu("h100-sxm"), "vllm")
    by_name = resolve_profile(printed.name, load_gpu("h100-sxm"), "vllm")
    assert by_name.name == "vllm-h200-bf16-on-h100-sxm" and by_name.terms == printed.terms


def test_an_edited_profile_is_refused(cli, tmp_path):
    document = json.loads((DATA / "profiles" / "vllm-h200-bf16.json").read_text())
    document["device"]["hbm_tb_s"] = 6.0  # a device block changed after the fit
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(document))
    result = cli("search", "--fit", str(FIT_1B), "--n", "1e9", "--tokens", "1e11", "--layers", "16", "--gpu", "h200",
                 "--profile", str(edited))
    assert one_line_error(result) and "changed after it was fitted" in result.err, result.err


def test_a_profile_with_no_measured_transfer_cannot_stand_in_for_another_device():
    from archscale.io.errors import UserError
    from archscale.serving.profiles import load_profile

    profile = load_profile(DATA / "profiles" / "vllm-h200-bf16.json")
    bare = Profile(**{**vars(profile), "validation": {k: v for k, v in profile.validation.items() if k != "transfer"}})
    with pytest.raises(UserError, match="no measured cross-device error"):
        bare.transferred(load_gpu("h100-sxm"))


def test_each_speedup_carries_its_interval_over_the_admissible_eta_kv_refits(default_1b):
    refits = default_1b.throughput_model.validation["eta_kv_range"]["refits"]
    assert sum(bool(r.get("admissible")) for r in refits) >= 2  # eta_kv is not pinned by the rows: its range is carried
    reference = default_1b.target.reference["output_tokens_per_s"]
    for row in default_1b.top_k.itertuples():
        speedup = row.output_tokens_per_s / reference
        assert row.speedup_low <= speedup + 1e-9 and speedup <= row.speedup_high + 1e-9
        assert row.speedup_high > row.speedup_low  # the spread is real, not a point


CPU_DEVICE = [{"name": "cpu", "bf16_tflops": 0.17, "hbm_tb_s": 0.033, "memory_gb": 16, "interconnect_gb_s": 1.0}]
TINY_SEARCH = ["--fit", str(MINI_STUDY_FIT), "--n", "2e5", "--tokens", "1.5e6", "--layers", "4", "--head-dim", "16",
               "--vocab", "256", "--d-multiple", "16", "--ff-multiple", "16", "--gqa", "1,2", "--batch", "4",
               "--input-len", "32", "--output-len", "8", "--slack", "0.05", "--top-k", "2", "--gpu", "cpu"]


def test_measure_re_ranks_the_picks_on_torch_measurements_and_judges_the_spread(cli, tmp_path, one_thread):
    device = tmp_path / "cpu.json"
    device.write_text(json.dumps(CPU_DEVICE))
    out = tmp_path / "search.json"
    result = cli("search", *TINY_SEARCH, "--gpu-file", str(device), "--engine", "torch", "--measure", "2", "--out", str(out))
    assert result.code == 0, result.err
    measured = json.loads(out.read_text())["measured"]
    picks = measured["picks"]
    assert [p["measured_rank"] for p in picks] == [1, 2]  # listed fastest measured first
    assert picks[0]["measured_output_tokens_per_s"] >= picks[1]["measured_output_tokens_per_s"] > 0
    verdict = {True: "so the estimate's speedups hold", False: "not trusted",
               None: "neither the measured order nor the spread is settled"}
    if measured["spread_trusted"] is not None:
        assert measured["spread_trusted"] == (measured["spread_error_points"] <= 15)
    else:  # the repeats scattered too much to judge
        assert measured["spread_uncertainty_points"] > 15
    assert verdict[measured["spread_trusted"]] in " ".join(result.out.split())


def test_measurements_that_scatter_more_than_the_verdict_needs_give_no_verdict():
    """Repeats 58% apart (a loaded machine) made a 2.64x measured spread "not trusted" and its order "an order";
    within that scatter neither is a measurement."""
    from archscale.search.measure import MeasuredPicks

    table = pd.DataFrame({"rank": [2, 1], "measured_rank": [1, 2], "d_model": [64, 48], "n_heads": [4, 4],
                          "n_kv_heads": [4, 4], "d_ff": [176, 256], "estimated_output_tokens_per_s": [900.0, 1000.0],
                          "measured_output_tokens_per_s": [2555.0, 968.0], "relative_spread": [0.58, 0.2]})
    noisy = MeasuredPicks(table, "torch", None, 1000 / 900, 2555 / 968)
    assert noisy.spread_trusted is None and noisy.spread_uncertainty_points > 15
    assert "neither the measured order nor the spread is settled" in " ".join(noisy.summary())
    quiet = MeasuredPicks(table.assign(relative_spread=[0.01, 0.01]), "torch", None, 1000 / 900, 2555 / 968)
    assert quiet.spread_trusted is False and "not trusted" in " ".join(quiet.summary())


def test_measure_with_a_backend_that_only_estimates_is_one_line(cli, tmp_path):
    device = tmp_path / "cpu.json"
    device.write_text(json.dumps(CPU_DEVICE))
    result = cli("search", *TINY_SEARCH, "--gpu-file", str(device), "--engine", "roofline", "--measure", "2")
    assert one_line_error(result) and "--engine 'roofline': unknown serving engine" in result.err, result.err
    result = cli("search", *TINY_SEARCH, "--gpu-file", str(device), "--engine", "sglang", "--measure", "2")
    assert one_line_error(result) and "--measure" in result.err, result.err  # an engine, but not one archscale runs


def test_measure_into_a_store_that_cannot_be_written_is_refused_before_measuring(cli, tmp_path, monkeypatch):
    """--measure appends to --store: an output, checked up front. A store under a file was found only after the
    picks were measured, and the measurements were lost."""
    import archscale.search.measure as measure_module

    device = tmp_path / "cpu.json"
    device.write_text(json.dumps(CPU_DEVICE))
    (tmp_path / "afile").write_text("mine\n")
    monkeypatch.setattr(measure_module, "run_sweep", lambda *a, **k: pytest.fail("measured before the store was checked"))
    result = cli("search", *TINY_SEARCH, "--gpu-file", str(device), "--engine", "torch", "--measure", "2",
                 "--store", str(tmp_path / "afile" / "m.sqlite"))
    assert one_line_error(result) and "--store" in result.err and "is a file, not a folder" in result.err, result.err
    assert (tmp_path / "afile").read_text() == "mine\n"


def test_measure_under_a_latency_limit_is_one_line(cli, tmp_path):
    device = tmp_path / "cpu.json"
    device.write_text(json.dumps(CPU_DEVICE))
    result = cli("search", *TINY_SEARCH, "--gpu-file", str(device), "--engine", "torch", "--measure", "2",
                 "--tpot-ms", "50")
    assert one_line_error(result) and "each runs at its own operating batch" in result.err, result.err


def test_measure_with_vllm_where_it_cannot_run_is_one_line_before_searching(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHSCALE_VLLM_PYTHON", str(tmp_path / "no-python"))
    device = tmp_path / "cpu.json"
    device.write_text(json.dumps(CPU_DEVICE))
    result = cli("search", *TINY_SEARCH, "--gpu-file", str(device), "--engine", "vllm", "--measure", "2", "--strict-hf")
    assert one_line_error(result) and "no-python" in result.err, result.err


def test_a_transferred_profile_that_does_not_name_its_source_is_refused(cli, tmp_path):
    from archscale.serving.profiles import save_profile, transferred_profile

    carried = transferred_profile("vllm", load_gpu("h100-sxm"))
    path = save_profile(carried, tmp_path / "h100.json")
    assert cli("search", "--fit", str(FIT_1B), "--n", "1e9", "--tokens", "1e11", "--layers", "16", "--gpu", "h100-sxm",
               "--profile", str(path)).code == 0  # a saved transfer names its source: accepted
    document = json.loads(path.read_text())
    document["validation"]["transferred"] = {"from": "vllm-h200-bf16"}  # the source device is gone
    path.write_text(json.dumps(document))
    result = cli("search", "--fit", str(FIT_1B), "--n", "1e9", "--tokens", "1e11", "--layers", "16", "--gpu", "h100-sxm",
                 "--profile", str(path))
    assert one_line_error(result) and "does not name the profile and device" in result.err, result.err


def test_measure_with_vllm_without_strict_hf_is_one_line_before_searching(cli, tmp_path):
    device = tmp_path / "cpu.json"
    device.write_text(json.dumps(CPU_DEVICE))
    result = cli("search", *TINY_SEARCH, "--gpu-file", str(device), "--engine", "vllm", "--measure", "2")
    assert one_line_error(result) and "--strict-hf" in result.err, result.err


def test_the_slack_is_taken_over_the_lowest_loss_the_law_has_seen():
    """When the lowest predicted loss lies outside the fit's runs (here: runs narrowed to x >= 0.1, past the law's
    optimum x 0.08), --slack is taken over the lowest inside them, and the target line says so; with --extrapolate
    it is taken over the lowest of all."""
    import dataclasses

    fitted = load_fit(FIT_1B)
    narrowed = dataclasses.replace(fitted, coverage={**fitted.coverage, "x": [0.1, fitted.coverage["x"][1]]})
    result = search(narrowed, h200_spec())
    candidates = result.candidates
    inside = candidates["outside"] == 0
    lowest_inside = candidates.loc[inside, "predicted_loss"].min()
    assert candidates["predicted_loss"].min() < lowest_inside  # the lowest of all is outside
    assert result.target.loss == pytest.approx(lowest_inside * 1.01)
    assert "inside the fit's runs (the lowest of all lies outside them)" in result.target.source
    assert result.best_discrete["predicted_loss"] == candidates["predicted_loss"].min()  # still shown as it is
    extrapolated = search(narrowed, h200_spec(extrapolate=True))
    assert extrapolated.target.loss == pytest.approx(candidates["predicted_loss"].min() * 1.01)
    assert extrapolated.target.source == "--slack 1.0% over the predicted optimum"


def test_the_lowest_loss_shown_is_a_gqa_variant_the_law_has_seen():
    """GQA variants of one shape tie on predicted loss (the law has no GQA term); the one shown as the lowest is the
    GQA the fit's runs had, not whichever variant comes first."""
    result = search(load_fit(FIT_1B), h200_spec())
    assert result.best_discrete["gqa"] == 4 and result.target.source == "--slack 1.0% over the predicted optimum"
