"""The serving model's latency: TTFT, TPOT and ITL per request, and the operating point under latency limits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from archscale.io.errors import UserError
from archscale.serving import EngineSettings, LatencyLimits, Workload, estimate_under_limits, load_gpu
from archscale.io.vocabulary import LATENCY_COLUMNS
from archscale.serving.estimate import (
    CostTerms,
    _floor_sum,
    estimate_throughput_many,
    max_concurrency,
    parse_statistic,
)
from archscale.shapes.architecture import PRESETS
from archscale.shapes.candidates import generate_candidates

H200 = load_gpu("h200")
TERMS = CostTerms(eta_weights=0.5, t_step=1.3e-3, t_seq=4e-5)
LLAMA_1B = pd.DataFrame([PRESETS["llama-3.2-1b"].shape_columns()])


def estimate(frame, batch, input_len=4096, output_len=1024, engine=EngineSettings()):
    return estimate_throughput_many(frame, H200, Workload(batch, input_len, output_len), terms=TERMS, engine=engine).iloc[0]


def test_every_estimate_carries_the_latency_columns_a_bench_row_has():
    row = estimate(LLAMA_1B, 16)
    assert all(np.isfinite(row[c]) and row[c] > 0 for c in LATENCY_COLUMNS)
    assert row["ttft_ms_p50"] <= row["ttft_ms_p90"] <= row["ttft_ms_p99"]


def test_one_request_spends_its_prefill_before_the_first_token_and_the_decode_after():
    row = estimate(LLAMA_1B, 1, input_len=128, output_len=256)
    assert row["ttft_ms_mean"] == pytest.approx(row["prefill_s"] * 1e3)
    assert row["tpot_ms_mean"] == pytest.approx(row["decode_s"] * 1e3 / 255)
    assert row["tpot_ms_p99"] == pytest.approx(row["tpot_ms_mean"]) and row["itl_ms_p99"] == pytest.approx(row["tpot_ms_mean"])


def test_chunked_prefill_spreads_first_tokens_over_passes_and_slows_early_requests_decode():
    """8 prompts of 4096 tokens in passes of 8192: request j finishes its prompt in pass ceil((j+1)/2), so the
    median request waits 2 of 4 passes and the last all 4; the first request decodes through 3 prefill passes."""
    row = estimate(LLAMA_1B, 8)
    pass_ms = row["prefill_s"] * 1e3 / 4
    assert row["ttft_ms_p50"] == pytest.approx(2 * pass_ms)
    assert row["ttft_ms_p99"] == pytest.approx(4 * pass_ms)
    assert row["ttft_ms_mean"] == pytest.approx(2.5 * pass_ms)  # mean of 1,1,2,2,3,3,4,4
    step_ms = row["decode_s"] * 1e3 / 1023
    assert row["tpot_ms_p99"] == pytest.approx((3 * pass_ms + 1020 * step_ms) / 1023)
    assert row["tpot_ms_p50"] < row["tpot_ms_p99"]


def test_requests_beyond_the_kv_cache_queue_behind_whole_waves():
    engine = EngineSettings(kv_cache_gib=2.0)
    one_wave = estimate(LLAMA_1B, 64, engine=engine)
    capacity = int(one_wave["concurrency"])
    assert 1 <= capacity < 64
    waves = estimate(LLAMA_1B, 4 * capacity, engine=engine)
    single = estimate(LLAMA_1B, capacity, engine=engine)
    wave_s = single["prefill_s"] + single["decode_s"]
    assert waves["ttft_ms_p99"] == pytest.approx(3 * wave_s * 1e3 + single["ttft_ms_p99"])
    assert waves["tpot_ms_p50"] == pytest.approx(single["tpot_ms_p50"])


def test_floor_sum_is_exact():
    rng = np.random.default_rng(0)
    n, a, m = rng.integers(1, 200, 300), rng.integers(1, 5000, 300), rng.integers(1, 5000, 300)
    brute = [sum(-(-(j * aa) // mm) for j in range(1, nn + 1)) for nn, aa, mm in zip(n, a, m)]
    assert np.array_equal(_floor_sum(n, m, a, a + m - 1), np.array(brute, dtype=float))


def test_the_operating_point_is_the_largest_batch_that_meets_the_limit():
    shapes = generate_candidates(1e9, 16, 64, tolerance=0.05, gqa_values=(1, 4, 8)).sample(40, random_state=0)
    workload, limits = Workload(128, 1024, 256), LatencyLimits(tpot_ms=12.0, ttft_ms=900.0)
    chosen = max_concurrency(shapes, H200, workload, limits, terms=TERMS)
    assert (chosen >= 1).all() and (chosen < 128).any()
    for row, c in zip(shapes.itertuples(index=False), chosen):
        frame = pd.DataFrame([row._asdict()])
        at = estimate_throughput_many(frame, H200, Workload(int(c), 1024, 256), terms=TERMS).iloc[0]
        assert at["tpot_ms_p99"] <= 12.0 and at["ttft_ms_p99"] <= 900.0
        if c < 128:
            over = estimate_throughput_many(frame, H200, Workload(int(c) + 1, 1024, 256), terms=TERMS).iloc[0]
            assert over["tpot_ms_p99"] > 12.0 or over["ttft_ms_p99"] > 900.0
    limited = estimate_under_limits(shapes, H200, workload, limits, terms=TERMS)
    assert (limited["operating_batch"].to_numpy() == chosen).all() and limited["meets_limits"].all()


def test_a_limit_no_request_can_meet_is_marked_not_met():
    limited = estimate_under_limits(LLAMA_1B, H200, Workload(64, 4096, 1024), LatencyLimits(tpot_ms=0.01), terms=TERMS)
    assert not limited["meets_limits"].iloc[0] and limited["operating_batch"].iloc[0] == 1


@pytest.mark.parametrize("text, expected", [("p99", 99), ("P50", 50), ("mean", "mean"), ("p90", 90)])
def test_statistics_bench_rows_carry_are_accepted(text, expected):
    assert parse_statistic(text) == expected


@pytest.mark.parametrize("kwargs, message", [
    ({"tpot_ms": -1.0}, "--tpot-ms must be a positive"),
    ({}, "needs --tpot-ms and/or --ttft-ms"),
    ({"ttft_ms": float("nan")}, "--ttft-ms must be a positive"),
])
def test_bad_limits_are_one_line(kwargs, message):
    with pytest.raises(UserError, match=message):
        LatencyLimits(**kwargs)


def test_a_percentile_no_row_carries_is_refused():
    with pytest.raises(UserError, match="--percentile 'p95': not a measured statistic; .* p50, p90, p99 and mean"):
        parse_statistic("p95")



def test_a_partly_full_last_pass_takes_its_share_of_the_prefill():
    """32 prompts of 320 tokens in passes of 4,096: 10,240 tokens in passes of 4,096, 4,096 and 2,048. The median
    request ends its prompt in pass 2, at 8,192 of the 10,240 tokens: TTFT p50 / p99 = 0.8 (vLLM on this CPU
    measured 0.80, where passes of equal time would give 0.67)."""
    engine = EngineSettings(prefill_chunk_tokens=4096)
    row = estimate(LLAMA_1B, 32, input_len=320, output_len=32, engine=engine)
    assert row["ttft_ms_p99"] == pytest.approx(row["prefill_s"] * 1e3)
    assert row["ttft_ms_p50"] / row["ttft_ms_p99"] == pytest.approx(0.8)
    # mean over the 32 requests of min(pass_j x 4096, 10240) / 10240
    passes = [-(-(j + 1) * 320 // 4096) for j in range(32)]
    expected = np.mean([min(k * 4096, 10240) / 10240 for k in passes])
    assert row["ttft_ms_mean"] == pytest.approx(expected * row["prefill_s"] * 1e3)


def first_prompt_alone_layout(batch: int, input_len: int, chunk: int) -> tuple[list[int], list[int]]:
    """The prompt tokens of each prefill pass, and the pass each request's prompt ends in (1-based), laying the
    tokens out pass by pass as the engine does when the first prompt is prefilled before the others arrive."""
    tokens_per_pass, pass_of, filled = [], [], 0
    for request in range(batch):
        left = input_len
        while left:
            if not tokens_per_pass or filled == chunk or (request == 1 and left == input_len):
                tokens_per_pass.append(0)
                filled = 0
            take = min(left, chunk - filled)
            tokens_per_pass[-1] += take
            filled += take
            left -= take
        pass_of.append(len(tokens_per_pass))
    return tokens_per_pass, pass_of


def first_prompt_alone_brute(batch: int, input_len: int, chunk: int) -> tuple[list[int], list[int], int]:
    """Per request, the pass its prompt ends in and the prompt tokens done by then; and the number of passes."""
    tokens_per_pass, pass_of = first_prompt_alone_layout(batch, input_len, chunk)
    cumulative = np.cumsum(tokens_per_pass)
    return pass_of, [int(cumulative[p - 1]) for p in pass_of], len(tokens_per_pass)


@pytest.mark.parametrize("batch,input_len,chunk", [(4, 320, 4096), (32, 320, 4096), (16, 4096, 8192),
                                                   (5, 5000, 4096), (3, 2000, 2000), (64, 1000, 8192)])
def test_the_first_prompt_alone_takes_its_own_pass_and_the_first_request_waits_on_the_rest(batch, input_len, chunk):
    """With ``first_prompt_alone`` (vLLM's offline engine starts on the first request before the rest arrive) the
    first prompt is prefilled in passes of its own: the pass count, every request's TTFT (the prompt tokens done by
    the end of its pass, times the prefill's time per token) and the mean TTFT match a pass-by-pass layout, and
    the first request's TPOT includes every later pass."""
    engine = EngineSettings(prefill_chunk_tokens=chunk, first_prompt_alone=True)
    row = estimate(LLAMA_1B, batch, input_len=input_len, output_len=64, engine=engine)
    pass_of, done, passes = first_prompt_alone_brute(batch, input_len, chunk)
    tokens = batch * input_len
    per_token_ms = row["prefill_s"] * 1e3 / tokens
    ranks = {p: max(int(np.ceil(p / 100 * batch)) - 1, 0) for p in (50, 90, 99)}
    for p, rank in ranks.items():
        assert row[f"ttft_ms_p{p}"] == pytest.approx(done[rank] * per_token_ms)
    assert row["ttft_ms_mean"] == pytest.approx(np.mean(done) * per_token_ms)
    steps = 63
    step_ms = row["decode_s"] * 1e3 / steps
    waiting = min(passes - pass_of[0], steps)
    first_tpot = ((tokens - done[0]) * per_token_ms + (steps - waiting) * step_ms) / steps if passes > pass_of[0] else step_ms
    assert row["tpot_ms_p99"] == pytest.approx(first_tpot)
    together = estimate(LLAMA_1B, batch, input_len=input_len, output_len=64,
                        engine=EngineSettings(prefill_chunk_tokens=chunk))
    extra = passes - int(np.ceil(tokens / chunk))
    assert extra in (0, 1)
    assert row["prefill_s"] >= together["prefill_s"]
    assert (row["prefill_s"] > together["prefill_s"]) == (extra == 1)


def test_one_pass_of_prompts_becomes_two_when_the_first_arrives_alone():
    """4 prompts of 320 tokens fit one pass of 4,096: submitted together, every request decodes at the same pace
    (TPOT p99 = p50); arriving one after another, the first request's decode waits on the others' prefill pass
    (vLLM on this CPU, where a pass is long beside a decode step: TPOT p99 / p50 1.85 at batch 4) and its first
    token comes sooner. One request is the same either way."""
    together = estimate(LLAMA_1B, 4, input_len=320, output_len=32, engine=EngineSettings(prefill_chunk_tokens=4096))
    alone = estimate(LLAMA_1B, 4, input_len=320, output_len=32,
                     engine=EngineSettings(prefill_chunk_tokens=4096, first_prompt_alone=True))
    assert together["tpot_ms_p99"] == pytest.approx(together["tpot_ms_p50"])
    assert alone["tpot_ms_p99"] > alone["tpot_ms_p50"] and alone["tpot_ms_p99"] > together["tpot_ms_p99"]
    assert alone["ttft_ms_mean"] < alone["ttft_ms_p50"]
    single = estimate(LLAMA_1B, 1, input_len=320, output_len=32, engine=EngineSettings(prefill_chunk_tokens=4096))
    single_alone = estimate(LLAMA_1B, 1, input_len=320, output_len=32,
                            engine=EngineSettings(prefill_chunk_tokens=4096, first_prompt_alone=True))
    assert single_alone["ttft_ms_p99"] == pytest.approx(single["ttft_ms_p99"])


@pytest.mark.parametrize("batch,input_len,chunk", [(4, 320, 4096), (32, 320, 4096), (5, 5000, 4096), (1, 700, 512)])
def test_routed_expert_reads_follow_the_passes_the_first_prompt_alone_makes(batch, input_len, chunk):
    """An MoE prefill reads, per pass, the experts that pass's tokens touch: with the first prompt alone the passes
    hold other token counts, and the expert bytes are the sum over the pass-by-pass layout."""
    from archscale.serving.estimate import _per_gpu_costs, _prefill_expert_bytes, _routed_expert_bytes, _shape_arrays

    olmoe = pd.DataFrame([PRESETS["olmoe-1b-7b"].shape_columns()])
    cost = _per_gpu_costs(_shape_arrays(olmoe), 1, 2.0)
    engine = EngineSettings(prefill_chunk_tokens=chunk, first_prompt_alone=True)
    shift = engine.prefill_shift(input_len)
    passes = np.ceil((batch * input_len + shift) / chunk)
    tokens_per_pass, _ = first_prompt_alone_layout(batch, input_len, chunk)
    assert len(tokens_per_pass) == passes
    expected = sum(float(np.squeeze(_routed_expert_bytes(cost, float(t)))) for t in tokens_per_pass)
    got = _prefill_expert_bytes(cost, float(batch), passes, input_len, chunk, shift)
    assert float(np.squeeze(got)) == pytest.approx(expected)


def test_a_profile_setting_that_is_not_true_or_false_is_one_line():
    with pytest.raises(UserError, match="first_prompt_alone must be true or false, got 'yes'"):
        EngineSettings(first_prompt_alone="yes")


@pytest.mark.parametrize("batch", [1, 16])
def test_serial_decode_attention_adds_its_gflop_at_its_rate_and_leaves_the_prefill(batch):
    """``t_attn_gflop``: each decode step at context s computes ``4 L h d_head s`` FLOPs of attention per sequence
    (Llama-3.2-1B: 16 layers, 32 query heads of 64); the term adds that many GFLOP times its rate, summed over the
    255 steps from context 129 to 383, after the roofline's max, and nothing to the prefill."""
    frame, workload = LLAMA_1B, Workload(batch, 128, 256)
    plain = estimate_throughput_many(frame, H200, workload, terms=TERMS).iloc[0]
    serial = estimate_throughput_many(frame, H200, workload, terms=CostTerms(**{**TERMS.as_dict(), "t_attn_gflop": 0.02})).iloc[0]
    flops_per_context = 4 * 16 * 32 * 64
    gflop = batch * flops_per_context * sum(range(129, 129 + 255)) / 1e9
    assert serial["decode_s"] - plain["decode_s"] == pytest.approx(0.02 * gflop, rel=1e-9)
    assert serial["prefill_s"] == pytest.approx(plain["prefill_s"], rel=1e-12)
    assert serial["tpot_ms_mean"] > plain["tpot_ms_mean"]
