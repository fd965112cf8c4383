"""The whole loop through the CLI on tiny sizes: fit -> search -> emit -> bench -> train -> refit.

Each handoff is checked where it happens: the fit JSON loads into search, the emitted configs load into bench
and train, and the new run's row loads back into fit. A change that breaks any link fails here.
"""

import json

import numpy as np
import pandas as pd
import pytest

from archscale.bench.store import load_results
from archscale.shapes.candidates import generate_candidates
from archscale.laws import get_law
from archscale.shapes.hf_config import load_architecture

TRUE_LAW = dict(a0=1.04, a1=0.038, a2=0.0031, b0=1.0, b1=0.016, b2=0.017)


@pytest.fixture
def seed_runs(tmp_path):
    """Twelve tiny 'measured' runs at two sizes whose losses follow a known conditional law, with noise."""
    rng = np.random.default_rng(0)
    rows = []
    for n_target, l_opt in ((2e5, 2.9), (6e5, 2.6)):
        table = generate_candidates(n_target, 4, 16, tolerance=0.05, d_multiple=16, ff_multiple=16, gqa_values=[1],
                                    vocab_size=256, x_range=(0.05, 0.5))
        picks = table.sample(6, random_state=int(n_target))
        loss = get_law("conditional-mult").predict(TRUE_LAW, {"x": picks["x"], "r": picks["r"], "L_opt": l_opt})
        for (_, row), value in zip(picks.iterrows(), loss):
            rows.append({c: row[c] for c in ("N", "n_layers", "d_model", "n_heads", "n_kv_heads", "d_head", "d_ff", "vocab")}
                        | {"D": 20 * n_target, "loss": value * (1 + rng.normal(0, 0.002))})
    path = tmp_path / "runs.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_fit_search_emit_bench_train_refit(cli, tmp_path, seed_runs, monkeypatch):
    monkeypatch.setenv("ARCHSCALE_CACHE", str(tmp_path / "cache"))
    cond = tmp_path / "cond.json"
    fitted = cli("fit", seed_runs, "--law", "conditional-mult", "--out", cond)
    assert fitted.code == 0, fitted.err
    assert json.loads(cond.read_text())["n_points"] == 12

    configs = tmp_path / "configs"
    searched = cli("search", "--fit", cond, "--n", "2e5", "--tokens", "4e6", "--layers", "4", "--head-dim", "16",
                   "--vocab", "256", "--gqa", "1,2", "--d-multiple", "16", "--ff-multiple", "16", "--gpu", "h100-sxm", "--batch", "8", "--input-len", "64",
                   "--output-len", "16", "--slack", "0.05", "--top-k", "2", "--emit", configs, "--json")
    assert searched.code == 0, searched.err
    picks = json.loads(searched.out)["top_k"]
    assert [p.name for p in sorted(configs.iterdir())] == ["cand-01", "cand-02"]

    store = tmp_path / "bench.sqlite"
    benched = cli("bench", configs / "cand-01", configs / "cand-02", "--backend", "torch", "--device", "cpu",
                  "--batch-sizes", "1,2", "--input-len", "16", "--output-len", "4", "--repeats", "1", "--store", store)
    assert benched.code == 0, benched.err
    estimated = cli("bench", configs / "cand-01", "--backend", "roofline", "--gpu", "h100-sxm", "--batch-sizes", "1,2",
                    "--input-len", "16", "--output-len", "4", "--store", store)
    assert estimated.code == 0, estimated.err
    results = load_results(store)
    measured = results[results["backend"] == "torch"]
    assert len(measured) == 4 and (measured["status"] == "ok").all() and (measured["tokens_per_s"] > 0).all()
    assert set(results["backend"]) == {"torch", "roofline"}
    assert int(measured.iloc[0]["d_model"]) == picks[0]["d_model"]

    trained = cli("train", configs / "cand-01", "--tokens", "3e4", "--runs", seed_runs, "--out", tmp_path / "run1",
                  "--no-progress")
    assert trained.code == 0, trained.err
    runs = pd.read_csv(seed_runs)
    assert len(runs) == 13
    new = runs.iloc[-1]
    assert (int(new["d_model"]), int(new["n_heads"]), int(new["d_ff"])) == (picks[0]["d_model"], picks[0]["n_heads"], picks[0]["d_ff"])

    refit = tmp_path / "cond2.json"
    again = cli("fit", seed_runs, "--law", "conditional-mult", "--out", refit)
    assert again.code == 0, again.err
    assert json.loads(refit.read_text())["n_points"] == 13


def test_shape_with_d_model_not_divisible_by_heads_trains_and_benchmarks(cli, tmp_path, monkeypatch):
    """Search may emit shapes like Surefire-1B (2560 / 36 heads): written with an explicit head_dim, they must
    load in the bundled trainer, the torch bench backend and a sweep, whatever transformers thinks of them."""
    from archscale.shapes.architecture import Architecture
    from archscale.train.config import TrainConfig, write_config_dir

    monkeypatch.setenv("ARCHSCALE_CACHE", str(tmp_path / "cache"))
    arch = Architecture(n_layers=2, d_model=80, n_heads=6, n_kv_heads=2, d_head=16, d_ff=96, vocab_size=256, name="odd")
    assert arch.d_model % arch.n_heads != 0
    configs = tmp_path / "configs"
    write_config_dir(configs / "odd", arch, TrainConfig.for_model_size(arch.n_params_non_embedding, tokens=20_000))
    written = json.loads((configs / "odd" / "config.json").read_text())
    assert written["head_dim"] == 16 and written["hidden_size"] == 80 and written["num_attention_heads"] == 6
    assert load_architecture(str(configs / "odd")) == arch

    swept = cli("sweep", configs, "--runs", tmp_path / "runs.csv", "--no-progress", "--json")
    assert swept.code == 0, swept.err
    assert [o["status"] for o in json.loads(swept.out)] == ["trained"]
    benched = cli("bench", configs / "odd", "--backend", "torch", "--device", "cpu", "--batch-sizes", "2",
                  "--input-len", "8", "--output-len", "4", "--repeats", "1", "--store", tmp_path / "b.sqlite")
    assert benched.code == 0, benched.err
    assert (load_results(tmp_path / "b.sqlite")["status"] == "ok").all()
