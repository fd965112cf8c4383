"""The candidate sweep: exact counts, completeness against a brute-force loop, constraints, speed, errors."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest

from archscale.shapes.architecture import PRESETS
from archscale.shapes.candidates import COLUMNS, architecture_from_row, generate_candidates
from archscale.io.errors import UserError


@pytest.fixture(scope="module")
def one_b() -> pd.DataFrame:
    """The paper's 1B setting: N = 1e9, 16 layers, d_head 64, every GQA group."""
    return generate_candidates(1e9, 16, 64)


def _has(frame: pd.DataFrame, d_model: int, n_heads: int, n_kv: int, d_ff: int) -> bool:
    match = frame[(frame.d_model == d_model) & (frame.n_heads == n_heads)
                  & (frame.n_kv_heads == n_kv) & (frame.d_ff == d_ff)]
    return len(match) == 1


def test_columns(one_b):
    assert tuple(one_b.columns) == COLUMNS


def test_contains_panda_and_surefire_1b(one_b):
    assert _has(one_b, 2560, 72, 18, 4096)   # Panda-1B: N 975M, not the d_ff nearest 1e9 (4160)
    assert _has(one_b, 2560, 36, 4, 6144)    # Surefire-1B


def test_contains_them_with_restricted_gqa_too():
    frame = generate_candidates(1e9, 16, 64, gqa_values=[4, 9])
    assert _has(frame, 2560, 72, 18, 4096) and _has(frame, 2560, 36, 4, 6144)
    assert set(frame.gqa) == {4, 9}


def test_contains_panda_and_surefire_3b():
    frame = generate_candidates(2.82e9, 28, 128, gqa_values=[3, 7])
    assert _has(frame, 4096, 36, 12, 4096) and _has(frame, 4096, 42, 6, 4096)


def test_n_and_r_equal_architecture_exactly(one_b):
    sample = one_b.sample(1500, random_state=0)
    for _, row in sample.iterrows():
        arch = architecture_from_row(row)
        assert arch.n_params_non_embedding == row["N"]
        assert arch.r_mlp_attn == row["r"]
        assert arch.d_over_sqrt_n == pytest.approx(row["x"], rel=1e-12)
        assert arch.gqa_group == row["gqa"] and arch.aspect_ratio == row["R"]


def test_every_row_respects_the_constraints(one_b):
    assert (np.abs(one_b.N / 1e9 - 1) <= 0.05).all()
    assert one_b.r.between(0.5, 5.0).all()
    assert (one_b.d_model % 128 == 0).all() and (one_b.d_ff % 64 == 0).all()
    assert (one_b.n_heads == one_b.gqa * one_b.n_kv_heads).all()
    assert not one_b.duplicated(["d_model", "n_heads", "n_kv_heads", "d_ff"]).any()
    assert one_b.x.min() >= 0.019 and one_b.x.max() <= 0.21


def test_rows_are_ordered_by_shape(one_b):
    keys = ["d_model", "n_heads", "n_kv_heads", "d_ff"]
    assert one_b[keys].equals(one_b.sort_values(keys)[keys].reset_index(drop=True))


def _brute_force(n_target, n_layers, d_head, tolerance, r_range, d_values, ff_multiple, tp=1, strict_hf=False):
    """The sweep written as plain loops: the specification the vectorised code must match.

    Loops stop only where N can no longer come back under the upper tolerance
    edge (it grows with every loop variable), so nothing is cut off.
    """
    rows = set()
    n_max = n_target * (1 + tolerance)
    for d in d_values:
        for n_kv in range(tp, 10**6, tp):
            if n_layers * (2 * d * d_head * 2 * n_kv + 2 * d) + d > n_max:
                break
            for g in range(1, 10**6):
                h = g * n_kv
                if n_layers * (2 * d * d_head * (h + n_kv) + 2 * d) + d > n_max:
                    break
                if strict_hf and d % h:
                    continue
                for ff in range(ff_multiple, 10**7, ff_multiple):
                    n = n_layers * (2 * d * d_head * (h + n_kv) + 3 * d * ff + 2 * d) + d
                    if n > n_max:
                        break
                    r = 3 * d * ff / (2 * d * d_head * h + 2 * d * d_head * n_kv)
                    if abs(n / n_target - 1) <= tolerance and r_range[0] <= r <= r_range[1]:
                        rows.add((d, h, n_kv, ff))
    return rows


@pytest.mark.parametrize("tp, strict_hf", [(1, False), (2, False), (1, True)])
def test_matches_brute_force_enumeration(tp, strict_hf):
    d_values = [256, 384, 512, 640]
    frame = generate_candidates(20e6, 4, 32, tolerance=0.03, r_range=(0.5, 5.0), d_model_values=d_values,
                                ff_multiple=64, tp=tp, strict_hf=strict_hf)
    got = set(zip(frame.d_model, frame.n_heads, frame.n_kv_heads, frame.d_ff))
    assert got == _brute_force(20e6, 4, 32, 0.03, (0.5, 5.0), d_values, 64, tp, strict_hf)


def test_tp_divides_kv_heads_and_strict_hf_divides_d_model():
    frame = generate_candidates(1e9, 16, 64, tp=4, strict_hf=True)
    assert (frame.n_kv_heads % 4 == 0).all() and (frame.n_heads % 4 == 0).all()
    assert (frame.d_model % frame.n_heads == 0).all()
    assert not _has(frame, 2560, 36, 4, 6144)  # Surefire-1B: 2560 % 36 != 0


def test_architecture_from_row_round_trips_a_preset():
    arch = PRESETS["surefire-1b"]
    row = {"n_layers": 16, "d_model": 2560, "n_heads": 36, "n_kv_heads": 4, "d_head": 64, "d_ff": 6144,
           "vocab": 128256, "tie_embeddings": True, "name": "surefire-1b"}
    assert architecture_from_row(row) == arch


def test_hundred_thousand_candidates_well_under_two_seconds():
    generate_candidates(1e9, 16, 64)  # warm caches and imports
    start = time.perf_counter()
    frame = generate_candidates(1e9, 16, 64)
    elapsed = time.perf_counter() - start
    assert len(frame) >= 100_000
    assert elapsed < 2.0


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_target=1e5, n_layers=16, d_head=64), "N=1e+05 is too small for 16 layers with d_head 64"),
    (dict(n_target=1e9, n_layers=16, d_head=64, tolerance=0.0001, gqa_values=[7], d_model_values=[2560]),
     "no candidate for N=1e+09"),
    (dict(n_target=1e9, n_layers=16, d_head=64, r_range=(3.0, 1.0)), "r range"),
    (dict(n_target=-1.0, n_layers=16, d_head=64), "N must be a positive number"),
    (dict(n_target=1e9, n_layers=0, d_head=64), "n_layers must be a positive integer"),
    (dict(n_target=1e9, n_layers=16, d_head=64, gqa_values=[0]), "GQA values"),
])
def test_infeasible_or_bad_arguments_raise_user_error(kwargs, message):
    with pytest.raises(UserError, match=message.replace("+", r"\+")):
        generate_candidates(**kwargs)


# ---- CLI ----------------------------------------------------------------------------
def test_cli_candidates_writes_csv_and_summarises(cli, tmp_path):
    out = tmp_path / "cands.csv"
    result = cli("candidates", "--n", "1e9", "--layers", "16", "--head-dim", "64", "--gqa", "4,9", "--out", str(out),
                 "--json")
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    frame = pd.read_csv(out)
    assert summary["count"] == len(frame) > 0
    assert summary["gqa_values"] == [4, 9]
    assert _has(frame, 2560, 72, 18, 4096) and _has(frame, 2560, 36, 4, 6144)


def test_cli_candidates_writes_parquet_and_prints_a_table(cli, tmp_path):
    out = tmp_path / "cands.parquet"
    result = cli("candidates", "--n", "975M", "--layers", "16", "--head-dim", "64", "--tp", "2", "--out", str(out))
    assert result.code == 0, result.err
    frame = pd.read_parquet(out)
    assert f"{len(frame):,} candidates" in result.out
    assert (frame.n_kv_heads % 2 == 0).all()


@pytest.mark.parametrize("args, message", [
    (("--n", "1e6", "--layers", "16", "--head-dim", "64"), "no candidate for N=1e+06"),
    (("--n", "1e5", "--layers", "16", "--head-dim", "64"), "too small for 16 layers"),
    (("--n", "lots", "--layers", "16", "--head-dim", "64"), "--n 'lots'"),
    (("--n", "1e9", "--layers", "16", "--head-dim", "64", "--out", "c.txt"), "use a name ending in .csv, .parquet or .pq"),
    (("--n", "1e9", "--layers", "16", "--head-dim", "64", "--gqa", "4,x"), "--gqa"),
])
def test_cli_candidates_bad_input_is_one_line(cli, args, message):
    result = cli("candidates", *args)
    assert result.code == 2
    assert message in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert "Traceback" not in result.err + result.out


@pytest.mark.parametrize("args, kwargs", [
    ((1e9, 16, 64), {}),
    ((1e8, 8, 64), {}),
    ((3e9, 28, 128), {}),
    ((1e9, 16, 64), {"gqa_values": [4]}),
    ((1e9, 16, 64), {"tp": 4}),
    ((2e5, 4, 16), {"d_multiple": 16, "ff_multiple": 16, "gqa_values": [1, 2]}),
    ((1e7, 4, 32), {"tolerance": 0.02}),
])
def test_size_estimate_is_close_to_the_real_count(args, kwargs):
    """The memory pre-check's row estimate (computed without building anything) within 25% of the real count."""
    from archscale.shapes.candidates import _d_model_grid, estimate_size, X_RANGE_DEFAULT

    n, layers, d_head = args
    widths = _d_model_grid(n, None, kwargs.get("d_multiple", 128), X_RANGE_DEFAULT)
    rows, _ = estimate_size(n, layers, d_head, widths, kwargs.get("tolerance", 0.05), (0.5, 5.0),
                            kwargs.get("ff_multiple", 64), kwargs.get("gqa_values"), kwargs.get("tp", 1))
    actual = len(generate_candidates(*args, **kwargs))
    assert 0.75 < rows / actual < 1.25, (rows, actual)


def test_an_enumeration_too_big_for_memory_is_refused_before_it_starts():
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(UserError, match="would build about"):
            generate_candidates(1e15, 1, 2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50e6  # the enumeration itself once tried to allocate 79.5 GiB here


def test_a_budget_past_any_model_is_one_line_not_an_allocation_failure():
    """--n 1e300 reached numpy's arange as a grid of 1e149 widths ("Maximum allowed size exceeded")."""
    with pytest.raises(UserError, match=r"N=1e\+300 \(--n, or --n-active for MoE\): its widths reach d_model "):
        generate_candidates(1e300, 16, 64)
