"""The local GQA search: a pick's GQA variants trained at a proxy budget, the walk's rule, and kill -9 resume."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

import archscale.search.gqa_local as gqa_local
from archscale.io.errors import UserError
from archscale.search.gqa_local import Proxy, local_gqa_search
from conftest import DATA
from helpers import one_line_error

MINI_STUDY_FIT = DATA.parent / "experiments" / "results" / "cpu_mini_study" / "cond.json"
PROXY = ["--proxy-n", "1.5e4", "--proxy-tokens", "30K", "--proxy-layers", "2", "--proxy-head-dim", "8"]


@pytest.fixture(scope="module")
def search_json(tmp_path_factory):
    """A tiny search whose first pick (d_model 80, 5/1 heads) has GQA variants 1, 2 and 5."""
    out = tmp_path_factory.mktemp("search") / "search.json"
    command = [sys.executable, "-m", "archscale", "search", "--fit", str(MINI_STUDY_FIT), "--n", "2e5", "--tokens", "1.5e6",
               "--layers", "4", "--head-dim", "16", "--vocab", "256", "--d-multiple", "16", "--ff-multiple", "16",
               "--gqa", "1-8", "--extrapolate", "--batch", "8", "--input-len", "64", "--output-len", "16",
               "--slack", "0.02", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return out


def fake_training(losses_by_gqa, trained):
    """Stand-in for training: each variant gets the loss the test says, and the call is counted."""
    def train(variant, runs, out, data, dispatch, echo):
        trained.append(variant.gqa)
        variant.losses = [losses_by_gqa[variant.gqa]]
    return train


@pytest.mark.parametrize("losses, confirmed, tried", [
    ({1: 2.000, 2: 2.010, 5: 2.030}, 2, [1, 2, 5]),   # GQA 5 costs 1.5% > 1%: the walk stops there, GQA 2 stands
    ({1: 2.000, 2: 2.030, 5: 2.000}, 1, [1, 2]),      # the first faster variant already fails: the baseline stands
    ({1: 2.000, 2: 2.005, 5: 2.015}, 5, [1, 2, 5]),   # every variant within 1%: the fastest is confirmed
])
def test_the_walk_stops_at_the_first_variant_over_the_tolerance(search_json, tmp_path, monkeypatch, losses, confirmed, tried):
    trained = []
    monkeypatch.setattr(gqa_local, "train_variant", fake_training(losses, trained))
    result = local_gqa_search(search_json, tmp_path / "out", tmp_path / "runs.csv", Proxy(1.5e4, 30_000, 2, 8),
                              tolerance=0.01, echo=lambda line: None)
    assert trained == tried
    assert result.confirmed.gqa == confirmed
    decisions = json.loads((tmp_path / "out" / "decisions.json").read_text())["decisions"]
    assert [d["gqa"] for d in decisions] == tried
    assert all("decision" in d for d in decisions)


@pytest.mark.parametrize("losses, notes", [
    ({1: 5.3311, 2: 5.3333, 5: 5.3311}, ["the proxies barely learned", "saves nothing"]),  # the README proxies' losses
    ({1: 2.000, 2: 2.005, 5: 2.015}, ["saves nothing"]),  # learned, but GQA 5 is estimated no faster than GQA 1
    ({1: 2.000, 2: 2.030, 5: 2.000}, []),  # the baseline stands: nothing to add
])
def test_the_verdict_says_when_proxies_barely_learned_or_the_gqa_saves_nothing(search_json, tmp_path, monkeypatch,
                                                                               losses, notes):
    """At this tiny search's workload every variant is estimated 1.00x the baseline, and 30K proxy tokens leave the
    loss near ln(256): the walk 'confirmed' GQA 5 on noise, for no speed, without a word."""
    monkeypatch.setattr(gqa_local, "train_variant", fake_training(losses, []))
    result = local_gqa_search(search_json, tmp_path / "out", tmp_path / "runs.csv", Proxy(1.5e4, 30_000, 2, 8),
                              tolerance=0.01, echo=lambda line: None)
    assert [any(word in note for note in result.notes) for word in notes] == [True] * len(notes)
    assert len(result.notes) == len(notes)
    assert json.loads((tmp_path / "out" / "gqa_search.json").read_text())["notes"] == result.notes


def test_variants_are_tried_in_order_of_estimated_throughput(search_json, tmp_path, monkeypatch):
    trained = []
    monkeypatch.setattr(gqa_local, "train_variant", fake_training({1: 2.0, 2: 2.0, 5: 2.0}, trained))
    result = local_gqa_search(search_json, tmp_path / "out", tmp_path / "runs.csv", Proxy(1.5e4, 30_000, 2, 8),
                              echo=lambda line: None)
    speeds = [v.tokens_per_s for v in result.variants]
    assert speeds == sorted(speeds) and result.baseline.gqa == 1  # the mini-study's runs are all GQA 1
    for variant in result.variants:  # each proxy keeps the group it stands for, at one shape
        assert variant.proxy.gqa_group == variant.gqa
    assert len({(v.proxy.d_model, v.proxy.d_ff, v.proxy.n_heads + v.proxy.n_kv_heads) for v in result.variants}) == 1


def test_a_rerun_with_other_proxy_flags_into_the_same_out_is_refused_before_training(search_json, tmp_path, monkeypatch):
    """The same --out with another proxy size would find the first walk's configs, and its runs in the runs table,
    and read them as its own; it is refused, naming the folder, and nothing is trained or rewritten."""
    trained = []
    monkeypatch.setattr(gqa_local, "train_variant", fake_training({1: 2.0, 2: 2.0, 5: 2.0}, trained))
    out = tmp_path / "out"
    local_gqa_search(search_json, out, tmp_path / "runs.csv", Proxy(1.5e4, 30_000, 2, 8), echo=lambda line: None)
    written = {path: path.read_bytes() for path in out.rglob("*.json") if path.name != "decisions.json"}
    trained.clear()
    with pytest.raises(UserError, match=r"holds a proxy config from an earlier search-gqa with other flags"):
        local_gqa_search(search_json, out, tmp_path / "runs.csv", Proxy(2e4, 60_000, 2, 8), echo=lambda line: None)
    assert trained == [] and {path: path.read_bytes() for path in written} == written
    # the same flags again resume the walk
    local_gqa_search(search_json, out, tmp_path / "runs.csv", Proxy(1.5e4, 30_000, 2, 8), echo=lambda line: None)
    assert trained == [1, 2, 5]


def test_real_training_end_to_end_and_a_rerun_retrains_nothing(search_json, tmp_path, cli, one_thread):
    out, runs = tmp_path / "gqa", tmp_path / "runs.csv"
    first = cli("search-gqa", str(search_json), *PROXY, "--runs", str(runs), "--out", str(out))
    assert first.code == 0, first.err
    assert "confirmed: GQA" in first.out and "one seed per variant" in " ".join(first.out.split())
    table = pd.read_csv(runs)
    decided = json.loads((out / "gqa_search.json").read_text())
    assert len(table) == len(decided["decisions"])  # one trained run per variant tried
    assert set((table["n_heads"] / table["n_kv_heads"]).astype(int)) == {d["gqa"] for d in decided["decisions"]}
    again = cli("search-gqa", str(search_json), *PROXY, "--runs", str(runs), "--out", str(out))
    assert again.code == 0, again.err
    assert again.out.count("not retrained") == len(decided["decisions"])
    assert len(pd.read_csv(runs)) == len(table)
    assert json.loads((out / "gqa_search.json").read_text())["confirmed"] == decided["confirmed"]
    confirmed = json.loads((out / "confirmed" / "config.json").read_text())  # trainable at full scale
    assert confirmed["hidden_size"] == decided["confirmed"]["d_model"]
    assert confirmed["num_attention_heads"] // confirmed["num_key_value_heads"] == decided["confirmed"]["gqa"]
    assert (out / "confirmed" / "train.json").exists()


def test_kill_9_mid_walk_then_rerun_keeps_the_finished_variants(search_json, tmp_path):
    out, runs = tmp_path / "gqa", tmp_path / "runs.csv"
    longer = [("120K" if previous == "--proxy-tokens" else item) for previous, item in zip(["", *PROXY], PROXY)]
    command = [sys.executable, "-m", "archscale", "search-gqa", str(search_json), *longer, "--runs", str(runs), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)
    decisions = out / "decisions.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if decisions.exists() and len(json.loads(decisions.read_text())["decisions"]) >= 1:
            break
        time.sleep(0.2)
    assert process.poll() is None, "the walk ended before it could be killed: " + process.stderr.read()
    time.sleep(1.0)  # into the next variant's training
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = len(pd.read_csv(runs))
    assert finished >= 1
    rerun = subprocess.run(command, capture_output=True, text=True, env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert "GQA 1: already in" in rerun.stdout  # the baseline was not trained again
    table = pd.read_csv(runs)
    assert not table["recipe_hash"].duplicated().any()
    assert len(table) == len(json.loads(decisions.read_text())["decisions"])


def test_a_baseline_the_shape_lacks_is_one_line(search_json, tmp_path, cli):
    result = cli("search-gqa", str(search_json), *PROXY, "--baseline-gqa", "3", "--runs", str(tmp_path / "r.csv"),
                 "--out", str(tmp_path / "o"))
    assert one_line_error(result) and "--baseline-gqa 3" in result.err, result.err


def test_a_file_that_is_not_a_search_result_is_one_line(tmp_path, cli):
    other = tmp_path / "fit.json"
    other.write_text(MINI_STUDY_FIT.read_text())
    result = cli("search-gqa", str(other), *PROXY, "--runs", str(tmp_path / "r.csv"), "--out", str(tmp_path / "o"))
    assert one_line_error(result) and "not a search result" in result.err, result.err


GQA_STUDY_RUNS = DATA.parent / "experiments" / "results" / "cpu_gqa_study" / "runs.csv"


def test_the_gqa_study_fit_fails_its_check_so_the_search_holds_gqa_and_training_settles_it(tmp_path, cli, monkeypatch):
    """The CPU GQA study's 48 runs: the GQA term misses the larger size's variants (1.68% > 1%), so the search
    does not trade on it: it ranks GQA 1 only (the groups tie in run count: the smallest) and the walk starts there."""
    fit = cli("fit", GQA_STUDY_RUNS, "--law", "conditional-mult-gqa", "--loss", "lsq", "--out", tmp_path / "fit.json")
    assert fit.code == 0, fit.err
    printed = " ".join(fit.out.split())  # the console wraps long lines
    assert "GQA in the search: held" in printed and "mean error 1.68% and Spearman 0.81" in printed
    predicted = cli("predict", tmp_path / "fit.json", "--n", "2e5", "--d-model", "80", "--ratio", "1.2", "--gqa", "8")
    assert predicted.code == 0 and "not one the search trades on" in " ".join(predicted.out.split())
    searched = cli("search", "--fit", tmp_path / "fit.json", "--n", "2e5", "--tokens", "8e5", "--layers", "4",
                   "--head-dim", "8", "--vocab", "256", "--d-multiple", "16", "--ff-multiple", "16", "--gqa", "1-8",
                   "--batch", "8", "--input-len", "64", "--output-len", "16", "--slack", "0.02",
                   "--out", tmp_path / "search.json")
    assert searched.code == 0, searched.err
    printed = " ".join(searched.out.split())
    assert "next: GQA is held at 1" in printed and "archscale search-gqa" in printed
    document = json.loads((tmp_path / "search.json").read_text())
    assert document["gqa"]["traded"] is False and document["gqa"]["held_at"] == 1
    assert {pick["gqa"] for pick in document["top_k"]} == {1}
    trained = []
    monkeypatch.setattr(gqa_local, "train_variant", fake_training({1: 2.0, 2: 2.01, 5: 2.1, 8: 2.1}, trained))
    result = local_gqa_search(tmp_path / "search.json", tmp_path / "gqa", tmp_path / "runs.csv",
                              Proxy(2e5, 800_000, 4, 8), echo=lambda line: None)
    assert trained[0] == 1 and result.baseline.gqa == 1  # the walk starts from the held group
    assert result.confirmed.gqa == 2
    settled = json.loads((tmp_path / "gqa" / "confirmed" / "candidate.json").read_text())
    assert settled["gqa"] == 2 and settled["settled_by"].startswith("training")
