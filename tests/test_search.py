"""Search (Eq. 6.4 / Algorithm 5) with the dissertation's published 1B fit, and its failure modes."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from archscale.serving.devices import load_gpu
from archscale.serving.estimate import Workload
from archscale.search.constrained import SearchSpec, best_at_gqa, pareto_mask, search
from archscale.fit.fitted import load_fit
from archscale.train.config import TrainConfig
from archscale.shapes.hf_config import load_architecture
from conftest import DATA

FIT_1B = DATA / "fits" / "dissertation_1b_mult.json"


@pytest.fixture(scope="module")
def spec():
    return SearchSpec(n=1e9, tokens=1e11, n_layers=16, d_head=64, gpu=load_gpu("h100-sxm"),
                      workload=Workload(64, 4096, 1024))


@pytest.fixture(scope="module")
def matched(spec):
    return search(load_fit(FIT_1B), spec, match=load_architecture("llama-3.2-1b"))


def test_continuous_optimum_is_the_papers(matched):
    assert matched.continuous_optimum["x"] == pytest.approx(0.080, rel=0.02)
    assert matched.continuous_optimum["r"] == pytest.approx(1.03, rel=0.02)


def test_best_discrete_candidate_at_gqa4_is_panda_1b(matched):
    best = best_at_gqa(matched, 4)
    assert best["d_model"] == 2560
    assert 0.9 <= best["r"] <= 1.2


def test_matching_llama_gives_a_faster_model_within_the_target(matched):
    top = matched.top_k.iloc[0]
    reference = matched.target.reference
    assert matched.target.source == "--match llama-3.2-1b"
    assert top["predicted_loss"] <= matched.target.loss
    assert top["tokens_per_s"] >= 1.2 * reference["tokens_per_s"]
    assert bool(top["fits"])


def test_top_k_are_distinct_shapes_ranked_by_throughput(matched):
    top = matched.top_k
    assert list(top["rank"]) == [1, 2, 3]
    assert top["tokens_per_s"].is_monotonic_decreasing
    assert not (top["d_model"] * 1000 + top["n_heads"] + top["n_kv_heads"]).duplicated().any()
    assert all(str(int(g)) in variants.split(",") for g, variants in zip(top["gqa"], top["gqa_variants"]))


def test_frontier_is_not_dominated(matched):
    frontier = matched.frontier
    # the frontier of what may be ranked: shapes that fit, inside the fit's runs
    fitting = matched.candidates[matched.candidates["fits"] & (matched.candidates["outside"] == 0)]
    for row in frontier.itertuples():
        dominated = (fitting["tokens_per_s"] > row.tokens_per_s) & (fitting["predicted_loss"] < row.predicted_loss)
        assert not dominated.any()


def test_pareto_mask_matches_brute_force():
    rng = np.random.default_rng(1)
    loss, speed = rng.random(300), rng.random(300)
    brute = np.array([not np.any((speed > speed[i]) & (loss < loss[i]) | (speed >= speed[i]) & (loss < loss[i]))
                      for i in range(300)])
    assert np.array_equal(pareto_mask(loss, speed), brute)


def test_measured_throughput_and_loss_replace_estimates(spec):
    fitted = load_fit(FIT_1B)
    first = search(fitted, spec, slack=0.01)
    pick = first.top_k.iloc[0]
    shape = {k: int(pick[k]) for k in ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_head", "d_ff")}
    bench = pd.DataFrame([{**shape, "gpu": "h100-sxm", "batch_size": 64, "input_len": 4096, "output_len": 1024,
                           "tokens_per_s": 1.0}])
    runs = pd.DataFrame([{**shape, "N": pick["N"], "D": 1e11, "loss": 9.9}])
    second = search(fitted, spec, slack=0.01, bench=bench, runs=runs)
    row = second.candidates[(second.candidates[list(shape)] == pd.Series(shape)).all(axis=1)].iloc[0]
    assert row["tokens_per_s"] == 1.0 and row["throughput_source"] == "measured"
    assert row["predicted_loss"] == 9.9 and row["loss_source"] == "measured"
    assert not row["feasible"]  # its measured loss misses the target
    assert any("measured throughput" in note for note in second.notes)


def test_cli_search_emits_trainable_configs_and_plot(cli, tmp_path):
    configs, plot, out = tmp_path / "configs", tmp_path / "pareto.png", tmp_path / "search.json"
    result = cli("search", "--fit", FIT_1B, "--n", "1e9", "--tokens", "1e11", "--layers", "16", "--head-dim", "64",
                 "--match", "llama-3.2-1b", "--gpu", "h100-sxm", "--batch", "64", "--top-k", "2",
                 "--emit", configs, "--plot", plot, "--out", out)
    assert result.code == 0, result.err
    assert "top 2 for training" in result.out and "llama-3.2-1b" in result.out
    document = json.loads(out.read_text())
    best = document["best_discrete_gqa4"]  # Panda-1B (2560, 72 heads) at GQA 4 without --emit; transformers refuses it
    assert len(document["top_k"]) == 2 and best["d_model"] % best["n_heads"] == 0
    emitted = sorted(p.name for p in configs.iterdir())
    assert emitted == ["cand-01", "cand-02"]
    arch = load_architecture(str(configs / "cand-01"))
    assert arch.d_model == document["top_k"][0]["d_model"] and arch.n_kv_heads == document["top_k"][0]["n_kv_heads"]
    train = TrainConfig.load(configs / "cand-01" / "train.json")
    assert train.tokens == int(1e11)
    assert plot.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--match", "llama-9b"], "llama-9b"),
        (["--gpu", "tpu-v9"], "tpu-v9"),
        (["--layers", "64", "--n", "1e6"], "too small"),
        (["--match", "llama-3.2-1b", "--target-loss", "2.8"], "give only one"),
        (["--target-loss", "2.8"], "needs absolute losses"),
        (["--reference", DATA / "fits" / "dissertation_3b_from_1b_mult.json"], "must be a chinchilla fit"),
        (["--gqa", "four"], "--gqa 'four'"),
        (["--gqa", "8-1"], "--gqa '8-1': the range 8-1 runs backwards; write it low to high (1-8)"),
        (["--gqa", "1-1000000000"], "lists 1,000,000,000 values, more than 100,000"),  # would fill memory first
        (["--gqa", "4096"], "--gqa 4096: no such group fits N=1e+09"),  # no shape has that many query heads per KV head
        (["--match", "llama-3.2-1b", "--gpu", "h200", "--batch", "100000"],  # memory, not the loss target, is why
         "no candidate holds the whole workload in h200 memory"),
        (["--match", "llama-3.2-1b", "--gpu", "h200", "--batch", "100000", "--tpot-ms", "40", "--input-len", "50000000"],
         "even serving one request"),
        (["--r-min", "5", "--r-max", "1"], "--r-min"),
        (["--r-max", "inf"], "--r-max inf: must be a finite number"),  # it said need 0 < --r-min <= --r-max
        (["--tokens", "-5"], "--tokens '-5'"),
    ],
)
def test_cli_search_bad_input(cli, tmp_path, args, message):
    out = tmp_path / "s.json"
    base = {"--fit": FIT_1B, "--n": "1e9", "--tokens": "1e11", "--layers": "16"}
    for flag in args[::2]:
        base.pop(flag, None)
    flat = [str(x) for kv in base.items() for x in kv]
    result = cli("search", *flat, *map(str, args), "--out", out, "--emit", tmp_path / "cfg")
    assert result.code == 2, result.out
    assert message in result.err and len(result.err.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "cfg").exists()


def test_cli_search_with_a_non_architecture_law_is_refused(cli, tmp_path):
    chinchilla = tmp_path / "chinchilla.json"
    assert cli("fit", DATA / "chinchilla_epoch.csv", "--out", chinchilla).code == 0
    result = cli("search", "--fit", chinchilla, "--n", "1e9", "--tokens", "1e11", "--layers", "16")
    assert result.code == 2 and "search needs an architecture law" in result.err


def test_cli_search_unreachable_target_names_the_nearest_candidates(cli, tmp_path):
    chinchilla = tmp_path / "chinchilla.json"
    assert cli("fit", DATA / "chinchilla_epoch.csv", "--loss", "huber", "--where", "loss < 3.42", "--out", chinchilla).code == 0
    result = cli("search", "--fit", FIT_1B, "--reference", chinchilla, "--n", "1e9", "--tokens", "1e11",
                 "--layers", "16", "--target-loss", "1.5")
    assert result.code == 2
    assert "no candidate meets the target loss 1.5000" in result.err and "nearest: d_model" in result.err


def test_cli_search_emit_writes_only_configs_transformers_loads(cli, tmp_path):
    """With --emit the search keeps d_model % n_heads == 0 (transformers 5 refuses the rest) and says how many that
    removed; --no-strict-hf searches every shape. (The default 1B search's picks were all 28-head shapes at d_model
    3712-3968, which transformers cannot load.)"""
    base = ["search", "--fit", FIT_1B, "--n", "1e9", "--tokens", "1e11", "--layers", "16", "--head-dim", "64",
            "--match", "llama-3.2-1b", "--gpu", "h100-sxm", "--top-k", "3", "--json"]
    strict = cli(*base, "--emit", tmp_path / "strict")
    assert strict.code == 0, strict.err
    document = json.loads(strict.out)
    configs = [json.loads((tmp_path / "strict" / f"cand-0{i}" / "config.json").read_text()) for i in (1, 2, 3)]
    assert all(c["hidden_size"] % c["num_attention_heads"] == 0 for c in configs)
    note = next(n for n in document["notes"] if n.startswith("--emit writes only configs transformers can load"))
    removed, total = (int(x.replace(",", "")) for x in re.search(r"removed ([\d,]+) of ([\d,]+) candidates", note).groups())
    assert 0 < removed < total and "--no-strict-hf" in note
    assert document["n_candidates"] == total - removed

    loose = cli(*base, "--emit", tmp_path / "loose", "--no-strict-hf")
    assert loose.code == 0, loose.err
    assert json.loads(loose.out)["n_candidates"] == total
    assert not any(n.startswith("--emit writes") for n in json.loads(loose.out)["notes"])
    unstrict = [json.loads((tmp_path / "loose" / f"cand-0{i}" / "config.json").read_text()) for i in (1, 2, 3)]
    assert any(c["hidden_size"] % c["num_attention_heads"] for c in unstrict)  # what --emit used to write
    plain = json.loads(cli(*base).out)  # without --emit nothing is written, and every shape is searched
    assert plain["n_candidates"] == total


def test_a_batch_above_max_num_seqs_is_searched_not_refused(cli, tmp_path):
    """--batch 300 exceeds vLLM's max_num_seqs (256): shapes whose KV cache holds the batch are served in two
    waves and ranked. Every shape was refused as not fitting in memory before."""
    out = tmp_path / "s.json"
    result = cli("search", "--fit", FIT_1B, "--n", "1e9", "--tokens", "1e11", "--layers", "16", "--gpu", "h200",
                 "--batch", "300", "--input-len", "1024", "--output-len", "256", "--out", out)
    assert result.code == 0, result.err
    pick = json.loads(out.read_text())["top_k"][0]
    assert pick["concurrency"] == 256 and pick["output_tokens_per_s"] > 0  # two waves: 256, then 44


@pytest.mark.parametrize("gpu, batch, verdict", [
    ("l4", "8", "slower by more than 9.2%"),  # every ranked pick serves 0.89x the reference on an L4 at batch 8
    ("h200", "64", "a tie with the reference, not a measured gain"),
])
def test_the_top_pick_against_the_reference_always_gets_a_verdict(cli, gpu, batch, verdict):
    """A pick slower than the reference beyond the estimate's error was printed as 0.89x with no word."""
    result = cli("search", "--fit", FIT_1B, "--n", "1e9", "--tokens", "1e11", "--layers", "16", "--head-dim", "64",
                 "--match", "llama-3.2-1b", "--gpu", gpu, "--batch", batch, "--input-len", "4096", "--output-len", "1024")
    assert result.code == 0, result.err
    line = " ".join(result.out.split()).split("top pick vs llama-3.2-1b: ")[1]
    assert verdict in line.split(" note:")[0]


def test_an_empty_store_or_gpu_file_is_refused_not_ignored(cli, tmp_path):
    """A 0-byte store was read as no measurements and a header-only GPU file as no devices, both without a word."""
    store, devices = tmp_path / "empty.sqlite", tmp_path / "gpus.csv"
    store.touch()
    devices.write_text("name,bf16_tflops,hbm_tb_s,memory_gb,interconnect_gb_s\n")
    base = ("search", "--fit", FIT_1B, "--n", "1e9", "--tokens", "1e11", "--layers", "16")
    empty_store = cli(*base, "--store", store)
    assert empty_store.code == 2 and "the store is empty (no records)" in empty_store.err
    no_devices = cli(*base, "--gpu", "h200", "--gpu-file", devices)
    assert no_devices.code == 2 and "gpus.csv: holds no GPU entry" in no_devices.err
    assert len(empty_store.err.strip().splitlines()) == len(no_devices.err.strip().splitlines()) == 1
