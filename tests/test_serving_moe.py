"""Mixture of Experts in the serving model: the experts a pass reads, total weights in memory, active FLOPs, and bench.

Hand computations on the closed forms: with uniform routing a forward pass of ``t`` tokens reads ``E (1 - (1 -
k/E)^t)`` distinct experts per MoE layer, so one decode sequence reads exactly its k experts (the active weights) and
a large batch all E (the total). Dense rows are checked unchanged by the dense tests (tests/test_serving.py,
tests/test_latency_model.py); here, that a dense row beside MoE rows in one table, or with empty MoE cells as a
store holding both kinds has, gives exactly its dense numbers.
"""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest

from archscale.bench.store import load_results
from archscale.io.errors import UserError
from archscale.serving import CostTerms, Workload, estimate_throughput_many, load_gpu
from archscale.serving.estimate import _per_gpu_costs, _shape_arrays, expected_distinct_experts
from archscale.shapes.architecture import PRESETS, Architecture
from archscale.shapes.hf_config import write_hf_config
from helpers import one_line_error

H100 = load_gpu("h100-sxm")
BARE = CostTerms(eta_compute=1.0, eta_weights=1.0, eta_kv=1.0, t_allreduce=0.0)
"""The roofline at peak rates and no overheads: every second is a byte or a FLOP, so hand sums can match exactly."""
MOE = Architecture(4, 512, 8, 8, 64, 1024, vocab_size=1000, n_experts=8, experts_per_token=2, expert_d_ff=1024,
                   name="moe")
EXPERT = 3 * 512 * 1024  # one expert's gate, up and down matrices
ROUTED = 4 * 8 * EXPERT  # every routed expert of the 4 MoE layers
DENSE = Architecture(4, 512, 8, 8, 64, 2048, vocab_size=1000, name="dense")


def estimate(arch_or_frame, batch: int, input_len: int = 1, output_len: int = 2, tp: int = 1) -> pd.Series:
    frame = arch_or_frame if isinstance(arch_or_frame, pd.DataFrame) else pd.DataFrame([arch_or_frame.shape_columns()])
    return estimate_throughput_many(frame, H100, Workload(batch, input_len, output_len), tp, BARE).iloc[0]


# ---- the expected-distinct-experts term -----------------------------------------------------------
def test_one_token_reads_its_k_experts_and_many_tokens_read_all_of_them():
    assert expected_distinct_experts(8, 2, 1) == pytest.approx(2.0)  # 8 (1 - 6/8)
    assert expected_distinct_experts(8, 2, 2) == pytest.approx(3.5)  # 8 (1 - (6/8)^2) = 8 x 7/16
    assert expected_distinct_experts(8, 2, 256) == pytest.approx(8.0)
    assert expected_distinct_experts(8, 8, 1) == 8.0  # k = E: every expert, from the first token
    assert expected_distinct_experts(0, 0, 64) == 0.0 and expected_distinct_experts(8, 2, 0) == 0.0


def test_a_decode_step_reads_the_dense_parts_once_and_the_experts_the_batch_touches():
    """One memory-bound decode step (input 1, output 2) at context 2, summed by hand: the weights (dense parts, the
    distinct experts, the LM head), the batch's logits and KV cache, all in bf16 at the H100's peak bandwidth."""
    kv_per_token = 2 * 4 * 8 * 64 * 2
    for batch in (1, 4, 64):
        experts = 8 * (1 - 0.75 ** batch)
        weights = (MOE.n_params_non_embedding - ROUTED + 4 * experts * EXPERT + 1000 * 512) * 2
        seconds = (weights + batch * 1000 * 16 + batch * 2 * kv_per_token) / H100.bytes_per_s
        assert estimate(MOE, batch)["decode_s"] == pytest.approx(seconds, rel=1e-12)
    # one sequence reads exactly the active weights, however many experts the memory holds
    assert (MOE.n_params_non_embedding - ROUTED + 4 * 2 * EXPERT) == MOE.n_params_active_non_embedding


def test_the_serial_expert_term_adds_the_routed_bytes_each_pass_reads_and_leaves_dense_rows_alone():
    """t_expert_gb: seconds per GB of routed experts a pass reads, added after the roofline's max (a CPU grouped GEMM
    streams its experts). A decode step at batch b pays it on the distinct experts b tokens touch; a prefill of one
    pass on those its prompt tokens touch."""
    rate = 0.05
    serial = dataclasses.replace(BARE, t_expert_gb=rate)
    for batch in (1, 4, 64):
        base = estimate(MOE, batch)
        frame = pd.DataFrame([MOE.shape_columns()])
        added = estimate_throughput_many(frame, H100, Workload(batch, 1, 2), 1, serial).iloc[0]
        step_bytes = 4 * 8 * (1 - 0.75 ** batch) * EXPERT * 2  # distinct experts of 4 layers, bf16
        assert added["decode_s"] - base["decode_s"] == pytest.approx(rate * step_bytes / 1e9, rel=1e-9)
        assert added["prefill_s"] - base["prefill_s"] == pytest.approx(rate * step_bytes / 1e9, rel=1e-9)
    dense = pd.DataFrame([DENSE.shape_columns()])
    pd.testing.assert_series_equal(estimate_throughput_many(dense, H100, Workload(16, 128, 32), 1, serial).iloc[0],
                                   estimate(DENSE, 16, input_len=128, output_len=32), check_exact=True)


def test_memory_holds_every_expert_and_prefill_computes_only_the_active_ones():
    """Mixtral-8x7B's 46.7B parameters (93 GB in bf16) do not fit one H100 though its 12.9B active ones would; on
    an H200 it runs, and a compute-bound prefill costs the active FLOPs: ``2 N_active`` per token."""
    mixtral = PRESETS["mixtral-8x7b"]
    assert estimate(mixtral, 1)["concurrency"] == 0
    on_h200 = estimate_throughput_many(pd.DataFrame([mixtral.shape_columns()]), load_gpu("h200"),
                                       Workload(1, 1, 2), 1, BARE).iloc[0]
    assert on_h200["concurrency"] == 1 and on_h200["memory_used_gb"] > 2 * mixtral.n_params_total / 1e9
    prompt = 4096
    row = estimate(MOE, 1, input_len=prompt)
    flops = prompt * 2 * MOE.n_params_active_non_embedding + 4 * 4 * 512 * prompt * (prompt - 1) / 2 + 2 * 1000 * 512
    assert row["prefill_s"] == pytest.approx(flops / H100.flops_per_s, rel=1e-12)


def test_experts_split_across_tensor_parallel_ranks_like_dense_matrices():
    one, two = (_per_gpu_costs(_shape_arrays(pd.DataFrame([MOE.shape_columns()])), tp, 2) for tp in (1, 2))
    for key in ("expert_read_bytes", "weight_read_bytes", "weight_bytes", "flops_per_token"):
        assert two[key][0] == pytest.approx(one[key][0] / 2), key
    assert one["expert_read_bytes"][0] == 4 * EXPERT * 2


# ---- dense rows are what they were ------------------------------------------------------------------
def test_a_dense_row_is_unchanged_beside_moe_rows_or_with_empty_moe_cells():
    alone = estimate(DENSE, 16, input_len=128, output_len=32)
    mixed = pd.DataFrame([DENSE.shape_columns(), MOE.shape_columns()])  # the dense row's MoE cells are NaN
    assert mixed["n_experts"].isna().iloc[0]
    beside = estimate_throughput_many(mixed, H100, Workload(16, 128, 32), 1, BARE).iloc[0]
    pd.testing.assert_series_equal(beside, alone, check_exact=True)


def test_an_moe_row_with_k_above_e_is_refused_naming_both():
    frame = pd.DataFrame([{**MOE.shape_columns(), "experts_per_token": 9}])
    with pytest.raises(UserError, match="row 1 has experts_per_token 9 with n_experts 8"):
        estimate(frame, 1)
    with pytest.raises(UserError, match="experts_per_token 9 exceeds n_experts 8"):
        Architecture(4, 512, 8, 8, 64, 1024, n_experts=8, experts_per_token=9, expert_d_ff=1024)


def test_bench_roofline_refuses_a_config_with_k_above_e_in_one_line(cli, tmp_path):
    config = {**write_hf_config(PRESETS["mixtral-8x7b"]), "num_experts_per_tok": 9}
    (tmp_path / "config.json").write_text(json.dumps(config))
    store = tmp_path / "s.sqlite"
    result = cli("bench", tmp_path, "--backend", "roofline", "--gpu", "h200", "--store", store, "--no-progress")
    assert one_line_error(result) and "num_experts_per_tok 9 exceeds num_local_experts 8" in result.err
    assert not store.exists()


# ---- bench --------------------------------------------------------------------------------------------
def test_bench_roofline_estimates_an_moe_config_and_stores_its_experts(cli, tmp_path):
    store = tmp_path / "s.sqlite"
    result = cli("bench", "mixtral-8x7b", "--backend", "roofline", "--gpu", "h200", "--batch-sizes", "1,64",
                 "--input-len", "512", "--output-len", "64", "--store", store, "--no-progress")
    assert result.code == 0, result.err
    rows = load_results(store)
    assert list(rows["status"]) == ["ok", "ok"] and (rows["tokens_per_s"] > 0).all()
    assert set(rows["n_experts"]) == {8} and set(rows["experts_per_token"]) == {2} and set(rows["expert_d_ff"]) == {14336}


def test_bench_torch_refuses_an_moe_config_and_latent_attention_stays_refused(cli, tmp_path):
    store = tmp_path / "s.sqlite"
    torch = cli("bench", "mixtral-8x7b", "--backend", "torch", "--store", store, "--no-progress")
    assert one_line_error(torch) and "--backend torch does not measure Mixture-of-Experts shapes" in torch.err
    assert "n_experts 8" in torch.err and "--backend vllm" in torch.err
    latent = cli("bench", "deepseek-v2-lite", "--backend", "roofline", "--gpu", "h200", "--store", store, "--no-progress")
    assert one_line_error(latent) and "latent-attention (MLA) serving cost is not modelled yet" in latent.err
    assert not store.exists()
