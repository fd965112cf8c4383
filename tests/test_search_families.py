"""Dense and MoE shapes in one search: the published joint law, its coverage, memory, the verdict and bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from archscale.fit.fitted import load_fit
from archscale.fit.selection import extrapolation_split, sizes
from archscale.laws.moe import e_hat
from archscale.search.families import DENSE, MOE, decide_winner, law_sizes
from archscale.serving.devices import load_gpu
from archscale.shapes.architecture import Architecture
from conftest import DATA
from helpers import one_line_error, write_config

JOINT = "data/fits/ludziejewski2025_joint.json"
# the README's search: 1B active at 16 layers on H200, the law's own vocabulary (GPT-2, untied), at 20B tokens
BASE = ("search", "--fit", JOINT, "--n", "1e9", "--tokens", "2e10", "--layers", "16", "--head-dim", "64",
        "--vocab", "50257", "--untie-embeddings", "--gpu", "h200", "--batch", "64", "--experts", "2,4,8,16,32",
        "--experts-per-token", "1,2", "--granularity", "4/3,2")


@pytest.fixture(scope="module")
def document(tmp_path_factory):
    from typer.testing import CliRunner

    from archscale.cli import _register_commands, app

    _register_commands()
    out = tmp_path_factory.mktemp("families") / "search.json"
    result = CliRunner().invoke(app, [*BASE, "--target-loss", "2.555", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def test_the_search_returns_a_pick_of_each_family_inside_the_laws_runs(document):
    picks = pd.DataFrame(document["picks"])
    assert set(picks["family"]) == {DENSE, MOE}
    assert (picks["extrapolation"] == "").all()  # every pick is a shape the law's runs had: MHA, r 2.25, top-1
    assert (picks["gqa"] == 1).all() and np.allclose(picks["r"], 2.25, rtol=0.02)
    moe = picks[picks["family"] == MOE]
    assert (moe["experts_per_token"] == 1).all() and (moe["n_experts"] <= 32).all()
    assert (picks["predicted_loss"] <= 2.555).all()


def test_every_pick_fits_the_device_with_its_total_weights(document):
    picks = pd.DataFrame(document["picks"])
    assert (picks["memory_gb"] <= load_gpu("h200").memory_gb).all()
    moe = picks[picks["family"] == MOE]
    assert (moe["N"] > 1.5 * moe["N_active"]).all()  # the memory counted every expert, not the active ones


def test_the_output_names_the_source_of_each_number_and_the_winner(document):
    assert document["loss"]["source"] == JOINT and document["loss"]["N_kind"] == "total"
    assert document["throughput_estimates"]["profile"] == "vllm-h200-bf16"
    winner = document["winner"]
    assert winner["winner"] in (DENSE, MOE, None) and "x" in winner["verdict"]
    dense = [p for p in document["picks"] if p["family"] == DENSE][0]
    moe = [p for p in document["picks"] if p["family"] == MOE][0]
    assert winner["moe_over_dense"] == pytest.approx(moe["output_tokens_per_s"] / dense["output_tokens_per_s"])


def test_more_experts_at_one_active_size_predict_a_lower_loss(document):
    moe = pd.DataFrame([p for p in document["picks"] if p["family"] == MOE])
    by_experts = moe.groupby("n_experts")["predicted_loss"].min().sort_index()
    assert by_experts.is_monotonic_decreasing and len(by_experts) > 1


def test_the_law_counts_the_embeddings_its_published_fit_counts():
    fitted = load_fit(JOINT)
    row = pd.DataFrame({"N_active": [9.0e8], "d_model": [2048], "vocab": [50257], "tie_embeddings": [False]})
    n = 9.0e8 + 2 * 2048 * 50257
    assert law_sizes(fitted, row)[0] == pytest.approx(n)
    p = fitted.params
    log_e = np.log(e_hat(np.array([1.0]), p["E_start"], p["E_max"]))[0]
    by_hand = (p["a"] * np.exp(p["delta"] * log_e) * n ** (p["alpha"] + p["gamma"] * log_e)
               + p["b"] * np.exp(p["omega"] * log_e) * 2e10 ** (p["beta"] + p["zeta"] * log_e) + p["c"])
    predicted = fitted.predict(pd.DataFrame({"N_active": [n], "D": [2e10], "expansion": [1.0]}))[0]
    assert predicted == pytest.approx(by_hand)


def test_extrapolate_ranks_shapes_the_law_has_not_seen_and_labels_them(cli, tmp_path):
    out = tmp_path / "x.json"
    result = cli(*BASE, "--target-loss", "2.555", "--extrapolate", "--out", out)
    assert result.code == 0, result.err
    picks = pd.DataFrame(json.loads(out.read_text())["picks"])
    labelled = picks[picks["extrapolation"] != ""]
    assert len(labelled) and labelled["extrapolation"].str.contains("runs").all()


def test_a_target_no_shape_meets_is_one_line(cli):
    result = cli(*BASE, "--target-loss", "1.0")
    assert one_line_error(result) and "no dense or MoE candidate meets the target loss 1.0000" in result.err


def test_a_tie_within_the_profiles_error_names_no_winner():
    picks = pd.DataFrame({"family": [DENSE, MOE], "rank": [1, 1], "output_tokens_per_s": [1000.0, 1030.0],
                          "predicted_loss": [2.55, 2.53]})

    class Spec:
        tie_rule = (0.048, "the profile's held-out error")

    verdict = decide_winner(picks, Spec())
    assert verdict["winner"] is None and verdict["verdict"].startswith("a tie on throughput")
    assert "MoE predicts the lower loss (2.5300 against 2.5500)" in verdict["verdict"]
    picks.loc[1, "output_tokens_per_s"] = 1500.0
    assert decide_winner(picks, Spec())["winner"] == MOE


@pytest.mark.parametrize("flags, fragment", [
    (("--experts", "2", "--experts-per-token", "4"), "--experts-per-token 4 exceeds every --experts value"),
    (("--granularity", "3"), "--granularity 3 does not divide"),
    (("--granularity", "a/b"), "--granularity 'a/b'"),
    (("--confidence", "0.9"), "--confidence is not available in a dense and MoE search"),
])
def test_bad_family_input_is_one_line(cli, flags, fragment):
    args = list(BASE)
    for flag in ("--experts", "--experts-per-token", "--granularity"):  # the test's own value replaces BASE's
        if flag in flags:
            index = args.index(flag)
            del args[index:index + 2]
    result = cli(*args, *flags, "--target-loss", "2.6")
    assert one_line_error(result) and fragment in result.err, result.err


def test_expert_flags_with_a_dense_law_are_one_line(cli):
    result = cli("search", "--fit", "data/fits/dissertation_1b_mult.json", "--n", "1e9", "--tokens", "1e11",
                 "--layers", "16", "--experts", "8")
    assert one_line_error(result) and "--experts needs a law that predicts MoE runs" in result.err


def test_selection_orders_moe_runs_by_their_active_size():
    """An 8-expert model of a small active size is not among the large runs it would be by its total count."""
    frame = pd.DataFrame({"N": [1e6, 4e6, 1.5e6, 2e6, 8e6, 6e6], "N_active": [1e6, 1e6, 1.5e6, 2e6, 2e6, 6e6],
                          "D": [1e7] * 6})
    assert list(sizes(frame)) == list(frame["N_active"])
    test = extrapolation_split(frame, "size")
    # the largest active sizes are predicted, the dense and the MoE run of 2e6 active together; by total count
    # the 8e6-total MoE run would have been predicted without its dense peer (2e6 total)
    assert sorted(frame.loc[test, "N_active"]) == [2e6, 2e6, 6e6] and test[3] and test[4]


def test_match_sets_the_target_to_the_reference_predicted_loss(cli, tmp_path):
    """A dense reference of the law's own shape: its predicted loss is the target, and it is reported beside the picks."""
    reference = Architecture(16, 2176, 34, 34, 64, 6528, vocab_size=50257, tie_embeddings=False, name="joint-dense")
    out = tmp_path / "m.json"
    result = cli(*BASE, "--match", write_config(tmp_path / "joint-dense", reference), "--out", out)
    assert result.code == 0, result.err
    document = json.loads(out.read_text())
    target = document["target"]
    assert target["source"] == "--match joint-dense" and target["reference"]["family"] == DENSE
    assert all(p["predicted_loss"] <= target["loss"] + 1e-12 for p in document["picks"])
    fitted = load_fit(JOINT)
    n = reference.n_params_active_non_embedding + 2 * 2176 * 50257
    assert target["loss"] == pytest.approx(fitted.predict(pd.DataFrame({"N_active": [n], "D": [2e10],
                                                                        "expansion": [1.0]}))[0])


def test_an_moe_reference_with_a_dense_law_is_one_line(cli, tmp_path):
    moe = Architecture(4, 512, 8, 8, 64, 1024, vocab_size=1000, n_experts=8, experts_per_token=2, expert_d_ff=1024,
                       name="tiny-moe")
    result = cli("search", "--fit", "data/fits/dissertation_1b_mult.json", "--n", "1e9", "--tokens", "1e11",
                 "--layers", "16", "--match", write_config(tmp_path / "moe", moe))
    assert one_line_error(result) and "needs a law that predicts MoE runs" in result.err


def test_plot_draws_each_familys_shapes_frontier_target_and_picks(cli, tmp_path):
    from PIL import Image

    png = tmp_path / "families.png"
    result = cli(*BASE, "--target-loss", "2.555", "--plot", png)
    assert result.code == 0, result.err
    assert f"wrote plot: {png}" in " ".join(result.out.split()) and Image.open(png).size[0] > 800


def test_the_figure_labels_every_pick_and_names_its_throughput_source():
    from archscale.search.constrained import SearchSpec
    from archscale.search.families import ExpertGrid, search_families
    from archscale.search.plots import draw_families
    from archscale.serving.estimate import Workload
    from archscale.serving.profiles import resolve_profile

    gpu = load_gpu("h200")
    spec = SearchSpec(n=1e9, tokens=2e10, n_layers=16, d_head=64, gpu=gpu, workload=Workload(64, 4096, 1024),
                      vocab_size=50257, tie_embeddings=False, profile=resolve_profile(None, gpu, "vllm"))
    result = search_families(load_fit(JOINT), spec, ExpertGrid((2, 4, 8), (1,), (4 / 3,)), target_loss=2.555)
    figure = draw_families(result, spec)
    ax = figure.axes[0]
    labels = {text.get_text() for text in ax.texts}
    assert labels == {"dense #1", "E2 k1 #1", "E4 k1 #2", "E8 k1 #3"}
    assert "vllm-h200-bf16" in ax.get_xlabel()
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert any(entry.startswith("target 2.5550") for entry in legend)
    assert any(entry.startswith("MoE frontier (") for entry in legend)
    dense = next(entry for entry in legend if entry.startswith("dense frontier ("))  # its span said, however short
    assert "tok/s)" in dense


def test_under_a_tpot_limit_each_pick_meets_it_and_costs_what_its_throughput_says(cli, tmp_path):
    out = tmp_path / "limited.json"
    base = list(BASE)
    base[base.index("--batch") + 1] = "256"  # the largest concurrency each pick may run at
    result = cli(*base, "--target-loss", "2.555", "--tpot-ms", "15", "--gpu-price", "3.5", "--out", out)
    assert result.code == 0, result.err
    assert "$/M" in result.out  # the price column (the batch and latency columns are checked in the JSON)
    picks = json.loads(out.read_text())["picks"]
    for pick in picks:
        assert pick["meets_limits"] and pick["tpot_ms_p99"] <= 15 and 1 <= pick["operating_batch"] <= 256
        assert pick["usd_per_m_output"] == pytest.approx(3.5 / (pick["output_tokens_per_s"] * 3600) * 1e6)


def test_emit_writes_a_trainable_config_per_pick_and_an_moe_pick_trains(cli, tmp_path, corpus_data):
    """Search dense and MoE at a tiny budget, emit the picks, train the MoE one: the runs row records its experts."""
    configs, runs = tmp_path / "configs", tmp_path / "runs.csv"
    result = cli("search", "--fit", JOINT, "--n", "2.4e5", "--tokens", "2e4", "--layers", "2", "--head-dim", "16",
                 "--vocab", "256", "--d-multiple", "16", "--ff-multiple", "16", "--gpu", "h200", "--batch", "8",
                 "--input-len", "64", "--output-len", "16", "--experts", "2,4", "--experts-per-token", "1",
                 "--granularity", "4/3", "--slack", "0.08", "--top-k", "1", "--emit", configs,
                 "--out", tmp_path / "search.json")
    assert result.code == 0, result.err
    assert "extrapolation below the fitted runs" in " ".join(result.out.split())  # 240K active: far below 79M
    labels = [pick["extrapolation"] for pick in json.loads((tmp_path / "search.json").read_text())["picks"]]
    assert all(label.startswith("N ") and "(runs 7.9e+07-2.7e+09)" in label for label in labels)  # each pick too
    picked = {path.name: json.loads((path / "candidate.json").read_text()) for path in configs.iterdir()}
    assert {(p["family"], p["rank"]) for p in picked.values()} == {(DENSE, 1), (MOE, 1)}
    moe_dir = next(configs / name for name, p in picked.items() if p["family"] == MOE)
    assert json.loads((moe_dir / "config.json").read_text())["model_type"] == "mixtral"
    trained = cli("train", moe_dir, "--runs", runs, "--out", tmp_path / "run")
    assert trained.code == 0, trained.err
    row = pd.read_csv(runs).iloc[-1]
    assert row["n_experts"] == picked[moe_dir.name]["n_experts"] and row["N_active"] < row["N"]


def test_the_granularity_law_is_refused_with_the_law_that_can_search(cli):
    result = cli("search", "--fit", "data/fits/krajewski2024_granularity.json", "--n", "1e9", "--tokens", "1e11",
                 "--layers", "16")
    assert one_line_error(result) and "search with a joint law (moe-joint" in result.err


# ---- --measure: the measurements decide the family ------------------------------------------------------------------
MOE_STUDY_FIT = "experiments/results/cpu_moe_study/fit_auto.json"
CPU_DEVICE = [{"name": "cpu", "bf16_tflops": 0.17, "hbm_tb_s": 0.033, "memory_gb": 16, "interconnect_gb_s": 1.0}]
TINY_FAMILIES = ("search", "--fit", MOE_STUDY_FIT, "--n", "7e5", "--tokens", "2e6", "--layers", "4", "--head-dim", "32",
                 "--vocab", "256", "--gpu", "cpu", "--batch", "4", "--input-len", "32", "--output-len", "8",
                 "--experts", "2,4", "--experts-per-token", "1", "--d-multiple", "32", "--ff-multiple", "32",
                 "--target-loss", "1.95", "--top-k", "2", "--extrapolate", "--strict-hf")


class StandInEngine:
    """A measuring backend that returns set throughputs: MoE shapes at ``moe`` output tokens/s, dense at ``dense``,
    each with a ``spread`` (std over mean) across its repeats."""

    name = "vllm"

    def __init__(self, dense: float, moe: float, spread: float):
        self.speeds, self.spread, self.measured = {DENSE: dense, MOE: moe}, spread, []

    def run(self, target, tick):
        family = MOE if target.arch.n_experts else DENSE
        self.measured.append((target.spec, family))
        speed = self.speeds[family]
        tick(1)
        yield 4, {"gpu": "cpu", "tokens_per_s": speed * 5, "output_tokens_per_s": speed,
                  "tokens_per_s_std": speed * 5 * self.spread, "output_tokens": 32, "status": "ok"}


def measured_search(cli, tmp_path, monkeypatch, engine: StandInEngine, *extra: str):
    from archscale.bench.types import BenchOptions
    from archscale.cli import cmd_search

    options = BenchOptions(backend="vllm", batch_sizes=(4,), input_len=32, output_len=8, repeats=3, gpu="cpu")
    monkeypatch.setattr(cmd_search, "_measuring", lambda spec, name, eager: (options, engine))
    device = tmp_path / "cpu.json"
    device.write_text(json.dumps(CPU_DEVICE))
    out = tmp_path / "search.json"
    result = cli(*TINY_FAMILIES, "--gpu-file", device, "--engine", "vllm", "--measure", "1", "--out", out, *extra)
    return result, (json.loads(out.read_text()) if out.exists() else None)


def test_measure_decides_the_family_on_the_measurements_against_the_estimate(cli, tmp_path, monkeypatch):
    """The estimate (uncalibrated on this CPU) says dense is 1.10x faster; the stand-in engine measures MoE 1.5x faster
    with 2% scatter: the measured winner is MoE, and the output says the estimate named the other family."""
    engine = StandInEngine(dense=400.0, moe=600.0, spread=0.02)
    result, document = measured_search(cli, tmp_path, monkeypatch, engine)
    assert result.code == 0, result.err
    assert sorted(family for _, family in engine.measured) == sorted([DENSE, MOE])  # the first pick of each family, once
    measured = document["measured"]
    assert document["winner"]["winner"] == DENSE  # what the estimate said
    assert measured["winner"] == MOE and measured["moe_over_dense"] == pytest.approx(1.5)
    assert measured["estimate_agrees"] is False
    text = " ".join(result.out.split())  # the console wraps long lines
    assert "MoE is faster as measured: 1.50x" in text and "the estimate named the other family" in text


def test_a_measured_gap_within_the_repeats_scatter_is_a_tie(cli, tmp_path, monkeypatch):
    """The same 1.5x with 25% scatter per row: 2 standard deviations of the difference allow 2.0x, so it is a tie as
    measured, and the estimate's winner is called unconfirmed."""
    result, document = measured_search(cli, tmp_path, monkeypatch, StandInEngine(dense=400.0, moe=600.0, spread=0.25))
    assert result.code == 0, result.err
    assert document["measured"]["winner"] is None
    assert document["measured"]["estimate_agrees"] is None  # neither agrees nor disagrees: the measurement cannot tell
    text = " ".join(result.out.split())  # the console wraps long lines
    assert "a tie as measured" in text and "the measurements cannot confirm" in text


def test_measure_in_a_family_search_with_the_torch_engine_is_one_line_up_front(cli, tmp_path):
    device = tmp_path / "cpu.json"
    device.write_text(json.dumps(CPU_DEVICE))
    result = cli(*TINY_FAMILIES, "--gpu-file", device, "--engine", "torch", "--measure", "1")
    assert one_line_error(result) and "does not measure Mixture-of-Experts" in result.err and "--engine vllm" in result.err


def test_measured_picks_stored_by_measure_rank_as_measured_in_the_next_search(cli, tmp_path, monkeypatch):
    """--measure with --store appends the measurements; the same search with --store (nothing measured now) then
    ranks those shapes on them, matched on the whole shape with its experts, and puts the other estimates on the
    measurements' scale, saying so."""
    store = tmp_path / "bench.sqlite"
    result, first = measured_search(cli, tmp_path, monkeypatch, StandInEngine(dense=400.0, moe=600.0, spread=0.02),
                                    "--store", str(store))
    assert result.code == 0, result.err and store.exists()
    device = tmp_path / "cpu.json"
    again = cli(*TINY_FAMILIES, "--gpu-file", device, "--store", store, "--out", tmp_path / "again.json")
    assert again.code == 0, again.err
    picks = pd.DataFrame(json.loads((tmp_path / "again.json").read_text())["picks"])
    moe_pick = picks[(picks["family"] == MOE) & (picks["rank"] == 1)].iloc[0]
    assert moe_pick["throughput_source"] == "measured" and moe_pick["output_tokens_per_s"] == pytest.approx(600.0)
    assert (picks.loc[picks["throughput_source"] != "measured", "throughput_source"] == "estimate, scaled to measurements").all()
    text = " ".join(again.out.split())
    # both measured shapes were found again, experts and all; the dense one (400) now ranks below scaled estimates
    assert "2 candidates use a measured throughput" in text and "600 (measured)" in text
    assert "measured and estimated throughputs are ranked on one scale" in text


def test_a_trained_moe_shape_takes_its_measured_loss(cli, tmp_path):
    """--runs: a run of the MoE pick's exact shape at this token budget replaces its predicted loss; a dense run with
    the same dense columns would not (the expert layout is part of the shape)."""
    device = tmp_path / "cpu.json"
    device.write_text(json.dumps(CPU_DEVICE))
    out = tmp_path / "first.json"
    assert cli(*TINY_FAMILIES, "--gpu-file", device, "--out", out).code == 0
    moe = next(p for p in json.loads(out.read_text())["picks"] if p["family"] == MOE and p["rank"] == 1)
    shape = {c: moe[c] for c in ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_head", "d_ff")}
    runs = pd.DataFrame([{**shape, "N": moe["N"], "D": 2e6, "loss": 1.80, "n_experts": moe["n_experts"],
                          "experts_per_token": moe["experts_per_token"], "expert_d_ff": moe["expert_d_ff"]},
                         {**shape, "N": moe["N_active"], "D": 2e6, "loss": 1.10}])  # dense, same dense columns
    runs.to_csv(tmp_path / "runs.csv", index=False)
    result = cli(*TINY_FAMILIES, "--gpu-file", device, "--runs", tmp_path / "runs.csv", "--out", tmp_path / "second.json")
    assert result.code == 0, result.err
    candidates = pd.DataFrame(json.loads((tmp_path / "second.json").read_text())["picks"])
    again = candidates[(candidates["family"] == MOE) & (candidates["d_model"] == moe["d_model"])
                       & (candidates["n_heads"] == moe["n_heads"]) & (candidates["n_experts"] == moe["n_experts"])]
    assert list(again["loss_source"]) == ["measured"] and list(again["predicted_loss"]) == [pytest.approx(1.80)]
    assert (candidates.loc[candidates["family"] == DENSE, "predicted_loss"] != 1.10).all()


def test_measure_under_a_latency_limit_is_one_line(cli, tmp_path):
    """Under a TPOT limit each pick runs at its own batch; --measure measures all at --batch, so it is refused rather
    than compare the picks at a batch the ranking did not use."""
    device = tmp_path / "cpu.json"
    device.write_text(json.dumps(CPU_DEVICE))
    result = cli(*TINY_FAMILIES, "--gpu-file", device, "--engine", "vllm", "--measure", "1", "--tpot-ms", "50")
    assert one_line_error(result) and "--measure with a latency limit" in result.err, result.err


def test_shapes_that_meet_the_loss_but_not_the_memory_name_the_expert_count(cli, monkeypatch):
    """4,096 experts: the loss is within reach, and no such shape fits an H200; it said to relax the target or raise
    --n, neither of which helps."""
    monkeypatch.chdir(DATA.parent)
    result = cli("search", "--fit", JOINT, "--n", "1e9", "--tokens", "2e10", "--layers", "16", "--head-dim", "64",
                 "--vocab", "50257", "--untie-embeddings", "--gpu", "h200", "--experts", "4096",
                 "--experts-per-token", "1,2", "--granularity", "4/3,2,8", "--target-loss", "2.4")
    assert one_line_error(result) and "that meet the target loss 2.4000" in result.err
    assert "do not fit in h200 memory at batch 64; use fewer experts (--experts)" in result.err
