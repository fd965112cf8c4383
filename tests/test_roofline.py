"""The GPU table and the roofline: closed forms, the paper's directions, memory, tensor parallel, Table 6.3 ranking."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from archscale.arch import PRESETS, Architecture
from archscale.candidates import architecture_from_row, generate_candidates
from archscale.cost import GPUS, Efficiency, Workload, estimate_throughput, estimate_throughput_many, load_gpu
from archscale.cost.roofline import _sum_max_affine
from archscale.errors import UserError

PAPER_WORKLOAD = dict(input_len=4096, output_len=1024)  # Table 6.3 and Figures 6.3-6.8
A100 = load_gpu("a100-40gb")


# ---- GPU table ----------------------------------------------------------------------
def test_gpu_table_has_reference_datasheet_numbers():
    assert (GPUS["a100-40gb"].bf16_tflops, GPUS["a100-40gb"].hbm_tb_s, GPUS["a100-40gb"].memory_gb) == (312, 1.555, 40)
    assert (GPUS["h100-sxm"].bf16_tflops, GPUS["h100-sxm"].hbm_tb_s) == (989, 3.35)
    assert (GPUS["h200"].hbm_tb_s, GPUS["h200"].memory_gb) == (4.8, 141)
    assert {"a100-80gb", "h100-pcie", "l40s", "l4"} <= set(GPUS)
    assert load_gpu("H100-SXM") is GPUS["h100-sxm"]


def test_unknown_gpu_lists_known_ones():
    with pytest.raises(UserError, match="unknown GPU 'b200'.*h100-sxm"):
        load_gpu("b200")


def test_user_gpu_file_json_and_csv(tmp_path):
    entry = {"name": "B200", "bf16_tflops": 2250, "hbm_tb_s": 8.0, "memory_gb": 180, "interconnect_gb_s": 1800}
    as_json = tmp_path / "gpus.json"
    as_json.write_text(json.dumps([entry]))
    assert load_gpu("b200", as_json).hbm_tb_s == 8.0
    as_csv = tmp_path / "gpus.csv"
    as_csv.write_text("name,bf16_tflops,hbm_tb_s,memory_gb,interconnect_gb_s\nh100-sxm,900,3.0,80,900\n")
    assert load_gpu("h100-sxm", as_csv).bf16_tflops == 900  # a file overrides a built-in entry


@pytest.mark.parametrize("text, message", [
    ('[{"name": "x", "bf16_tflops": 1}]', "missing hbm_tb_s"),
    ('[{"name": "x", "bf16_tflops": "fast", "hbm_tb_s": 1, "memory_gb": 1, "interconnect_gb_s": 1}]', "not a number"),
    ("{oops", "not valid JSON"),
])
def test_bad_gpu_file_is_a_user_error(tmp_path, text, message):
    path = tmp_path / "gpus.json"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        load_gpu("x", path)


# ---- closed forms -------------------------------------------------------------------
def test_sum_of_max_of_two_lines_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(500):
        a1, b1, a2, b2 = rng.normal(size=4) * [10, 0.1, 10, 0.1]
        if rng.random() < 0.1:
            b2 = b1
        first, count = int(rng.integers(0, 200)), int(rng.integers(0, 300))
        steps = np.arange(first, first + count)
        expected = np.maximum(a1 + b1 * steps, a2 + b2 * steps).sum()
        assert float(_sum_max_affine(a1, b1, a2, b2, first, count)) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def _step_by_step(arch: Architecture, gpu, batch, input_len, output_len, eff=Efficiency()):
    """The model written as a loop over decode steps (the docstring's definition)."""
    peak, bandwidth = gpu.flops_per_s * eff.compute, gpu.bytes_per_s * eff.memory
    lm_head = arch.vocab_size * arch.d_model
    weights_read = (arch.n_params_non_embedding + lm_head) * 2
    kv = arch.kv_cache_bytes_per_token()
    prefill_flops = batch * sum(arch.flops_per_token(p) for p in range(input_len)) + batch * 2 * lm_head
    prefill = max(prefill_flops / peak, (weights_read + batch * input_len * kv) / bandwidth)
    decode = sum(max(batch * (arch.flops_per_token(s) + 2 * lm_head) / peak, (weights_read + batch * s * kv) / bandwidth)
                 for s in range(input_len, input_len + output_len))
    return prefill, decode


@pytest.mark.parametrize("name, batch", [("llama-3.2-1b", 1), ("surefire-1b", 64), ("qwen3-4b", 256)])
def test_closed_form_equals_step_by_step_loop(name, batch):
    arch, gpu = PRESETS[name], load_gpu("h200")
    estimate = estimate_throughput(arch, gpu, Workload(batch, 512, 300))
    assert estimate.fits
    prefill, decode = _step_by_step(arch, gpu, batch, 512, 300)
    assert estimate.prefill_s == pytest.approx(prefill, rel=1e-9)
    assert estimate.decode_s == pytest.approx(decode, rel=1e-9)
    assert estimate.total_tokens_per_s == pytest.approx(batch * 812 / (prefill + decode), rel=1e-9)
    assert estimate.output_tokens_per_s == pytest.approx(batch * 300 / (prefill + decode), rel=1e-9)


def test_many_equals_one_at_a_time():
    frame = generate_candidates(1e9, 16, 64, gqa_values=[4]).sample(50, random_state=1)
    workload = Workload(32, **PAPER_WORKLOAD)
    many = estimate_throughput_many(frame, A100, workload)
    assert list(many.index) == list(frame.index)
    for index, row in frame.iterrows():
        one = estimate_throughput(architecture_from_row(row), A100, workload)
        assert many.loc[index, "tokens_per_s"] == pytest.approx(one.total_tokens_per_s, rel=1e-12)
        assert bool(many.loc[index, "fits"]) == one.fits


# ---- behaviour ----------------------------------------------------------------------
def test_small_batch_decode_is_memory_bound_and_batching_helps():
    arch, gpu = PRESETS["llama-3.2-1b"], load_gpu("h100-sxm")
    estimates = [estimate_throughput(arch, gpu, Workload(b, **PAPER_WORKLOAD)) for b in (1, 2, 4, 8, 16, 32, 64)]
    assert estimates[0].bound == "memory"
    throughputs = [e.total_tokens_per_s for e in estimates]
    assert all(later > earlier for earlier, later in zip(throughputs, throughputs[1:]))


def test_short_context_large_batch_decode_becomes_compute_bound():
    estimate = estimate_throughput(PRESETS["llama-3.2-1b"], load_gpu("h100-sxm"), Workload(1024, 16, 16))
    assert estimate.bound == "compute"


@pytest.fixture(scope="module")
def scored_1b() -> pd.DataFrame:
    """1B candidates (16 layers, d_head 64) scored in the paper's setting: A100-40GB, batch 32, 4096 in / 1024 out."""
    frame = generate_candidates(1e9, 16, 64, tolerance=0.02)
    return frame.join(estimate_throughput_many(frame, A100, Workload(32, **PAPER_WORKLOAD)))


def _mean_by(frame: pd.DataFrame, key) -> pd.Series:
    return frame.groupby(key)["tokens_per_s"].mean()


def _closest(frame: pd.DataFrame, r_target: float) -> pd.DataFrame:
    """Per d_model, the candidate whose r is nearest the target (then N nearest 1e9)."""
    key = (frame.r - r_target).abs() + (frame.N / 1e9 - 1).abs()
    return frame.loc[key.groupby(frame.d_model).idxmin()].sort_values("d_model")


def test_wider_is_faster_at_fixed_n_r_and_gqa(scored_1b):
    """Figure 6.3: fix N, r=2 and GQA=4; larger d_model means fewer heads, fewer attention FLOPs and less KV."""
    subset = scored_1b[(scored_1b.gqa == 4) & scored_1b.d_model.isin([1536, 2048, 2560, 3072, 3584])]
    chosen = _closest(subset, 2.0)
    assert len(chosen) == 5 and chosen.r.between(1.9, 2.1).all()
    assert chosen.tokens_per_s.is_monotonic_increasing


def test_higher_r_is_faster_at_fixed_n_width_and_gqa(scored_1b):
    """Figure 6.4: fix N, d_model=2048 and GQA=4; a larger MLP share means fewer heads."""
    subset = scored_1b[(scored_1b.gqa == 4) & (scored_1b.d_model == 2048)]
    assert _mean_by(subset, subset.r.round(0)).is_monotonic_increasing


def test_higher_gqa_is_faster_at_fixed_n_width_and_r():
    """Figure 6.5: fix N, d_model=2048 and r=4 (48 attention units); trade KV heads for query heads."""
    workload = Workload(32, **PAPER_WORKLOAD)
    throughputs = []
    for group in (1, 2, 3, 5, 7, 11, 15):
        n_kv = 48 // (group + 1)
        arch = Architecture(n_layers=16, d_model=2048, n_heads=48 - n_kv, n_kv_heads=n_kv, d_head=64, d_ff=8192)
        assert arch.r_mlp_attn == pytest.approx(4.0) and arch.gqa_group == group
        throughputs.append(estimate_throughput(arch, A100, workload).total_tokens_per_s)
    assert all(later > earlier for earlier, later in zip(throughputs, throughputs[1:]))


def test_model_too_big_for_memory_is_marked_not_fitting():
    big = Architecture(n_layers=80, d_model=8192, n_heads=64, n_kv_heads=8, d_head=128, d_ff=28672, name="70b")
    alone = estimate_throughput(big, A100, Workload(1, 1024, 128))
    assert not alone.fits and alone.concurrency == 0 and alone.total_tokens_per_s == 0.0
    assert alone.memory_gb_needed > 140
    sharded = estimate_throughput(big, load_gpu("a100-80gb"), Workload(1, 1024, 128), tp=4)
    assert sharded.fits and sharded.total_tokens_per_s > 0


def test_kv_cache_overflow_caps_concurrency_like_vllm():
    arch, workload = PRESETS["llama-3.2-3b"], Workload(128, **PAPER_WORKLOAD)
    capped = estimate_throughput(arch, A100, workload)
    assert not capped.fits and 0 < capped.concurrency < 128
    roomy = estimate_throughput(arch, load_gpu("h200"), workload)
    assert roomy.fits and roomy.concurrency == 128
    # The capped batch runs in waves: no faster than running `concurrency` sequences at once.
    at_cap = estimate_throughput(arch, A100, Workload(capped.concurrency, **PAPER_WORKLOAD))
    assert capped.total_tokens_per_s <= at_cap.total_tokens_per_s * (1 + 1e-9)


def test_tensor_parallel_adds_two_syncs_per_layer_per_pass():
    arch, gpu, workload = PRESETS["llama-3.1-8b"], load_gpu("h100-sxm"), Workload(8, 2048, 256)
    free = estimate_throughput(arch, gpu, workload, tp=2, t_sync_s=0.0)
    synced = estimate_throughput(arch, gpu, workload, tp=2, t_sync_s=5e-6)
    assert synced.prefill_s - free.prefill_s == pytest.approx(2 * 32 * 5e-6)
    assert synced.decode_s - free.decode_s == pytest.approx(256 * 2 * 32 * 5e-6)
    single = estimate_throughput(arch, gpu, workload, tp=1)
    assert free.total_tokens_per_s == pytest.approx(2 * single.total_tokens_per_s, rel=1e-9)
    assert synced.total_tokens_per_s < free.total_tokens_per_s


def test_bad_run_arguments_are_user_errors():
    with pytest.raises(UserError, match="batch_size"):
        Workload(0, 10, 10)
    with pytest.raises(UserError, match="efficiency compute"):
        Efficiency(compute=1.5)
    with pytest.raises(UserError, match="tp must be"):
        estimate_throughput(PRESETS["panda-1b"], A100, Workload(1, 10, 10), tp=0)
    with pytest.raises(UserError, match="missing column"):
        estimate_throughput_many(pd.DataFrame({"d_model": [1]}), A100, Workload(1, 10, 10))


# ---- Table 6.3 ----------------------------------------------------------------------
@pytest.mark.parametrize("gpu_name", ["a100-40gb", "h200"])
@pytest.mark.parametrize("size", ["1b", "3b"])
def test_roofline_ranks_surefire_above_llama_like_table_6_3(gpu_name, size):
    """vLLM, 4096 in / 1024 out: Surefire beat LLaMA-3.2 at every batch size on A100 and H200."""
    gpu = load_gpu(gpu_name)
    for batch in (16, 32, 64, 128):
        workload = Workload(batch, **PAPER_WORKLOAD)
        surefire = estimate_throughput(PRESETS[f"surefire-{size}"], gpu, workload)
        llama = estimate_throughput(PRESETS[f"llama-3.2-{size}"], gpu, workload)
        assert surefire.total_tokens_per_s > llama.total_tokens_per_s, (gpu_name, size, batch)
