"""MoE candidates over experts E, top-k and granularity G at an active and/or total budget (library and CLI)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest

from archscale.io.errors import UserError
from archscale.serving import Workload, estimate_throughput_many, load_gpu
from archscale.shapes.architecture import Architecture, non_embedding_params
from archscale.shapes.moe_candidates import MOE_COLUMNS, dense_reference_d_ff, generate_moe_candidates

ACTIVE, TOTAL = 1e9, 7e9


@pytest.fixture(scope="module")
def at_active() -> pd.DataFrame:
    return generate_moe_candidates(ACTIVE, n_layers=16, d_head=128)


@pytest.fixture(scope="module")
def at_both() -> pd.DataFrame:
    return generate_moe_candidates(ACTIVE, TOTAL, n_layers=16, d_head=128, experts=(8, 16, 32, 64), top_k=(1, 2, 4))


def _counts(frame: pd.DataFrame, active: bool) -> np.ndarray:
    """The one parameter count, applied to the table's columns."""
    return non_embedding_params(frame.n_layers.to_numpy(), frame.d_model.to_numpy(), frame.n_heads.to_numpy(),
                                frame.n_kv_heads.to_numpy(), frame.d_head.to_numpy(), frame.d_ff.to_numpy(),
                                n_experts=frame.n_experts.to_numpy(), experts_per_token=frame.experts_per_token.to_numpy(),
                                expert_d_ff=frame.expert_d_ff.to_numpy(), active=active)


def test_columns_and_every_grid_value_present(at_active):
    assert tuple(at_active.columns) == MOE_COLUMNS
    assert sorted(at_active.n_experts.unique()) == [4, 8, 16, 32, 64]
    assert sorted(at_active.experts_per_token.unique()) == [1, 2, 4, 8]
    assert sorted(at_active.G.unique()) == [1, 2, 4, 8]


@pytest.mark.parametrize("fixture", ["at_active", "at_both"])
def test_every_row_meets_the_budgets_and_k_le_e(fixture, request):
    frame = request.getfixturevalue(fixture)
    assert len(frame) > 0
    assert (np.abs(frame.N_active / ACTIVE - 1) <= 0.05).all()
    if fixture == "at_both":
        assert (np.abs(frame.N / TOTAL - 1) <= 0.05).all()
    assert (frame.experts_per_token <= frame.n_experts).all()
    assert (frame.r.between(0.5, 5.0)).all()
    # granularity as Krajewski et al. define it: the dense reference width over the expert width
    assert (dense_reference_d_ff(frame.d_model) == frame.G * frame.expert_d_ff).all()


@pytest.mark.parametrize("fixture", ["at_active", "at_both"])
def test_total_and_active_equal_the_one_count_row_by_row(fixture, request):
    frame = request.getfixturevalue(fixture)
    assert (frame.N.to_numpy() == _counts(frame, active=False)).all()
    assert (frame.N_active.to_numpy() == _counts(frame, active=True)).all()
    sparse = frame.experts_per_token < frame.n_experts
    assert (frame.N[sparse] > frame.N_active[sparse]).all() and (frame.N[~sparse] == frame.N_active[~sparse]).all()


def test_a_row_is_an_architecture_with_the_same_counts(at_both):
    row = at_both.iloc[len(at_both) // 2]
    arch = Architecture(n_layers=int(row.n_layers), d_model=int(row.d_model), n_heads=int(row.n_heads),
                        n_kv_heads=int(row.n_kv_heads), d_head=int(row.d_head), d_ff=int(row.d_ff),
                        n_experts=int(row.n_experts), experts_per_token=int(row.experts_per_token),
                        expert_d_ff=int(row.expert_d_ff))
    assert (arch.n_params_non_embedding, arch.n_params_active_non_embedding) == (row.N, row.N_active)


def test_matches_brute_force_enumeration():
    """Every (d_model, heads, E, k, G) a plain loop finds within both budgets and the r range, and nothing else."""
    d_values, experts, top_k, granularity = (256, 384, 512), (4, 8), (1, 2, 4), (1, 2, 4)
    n_active, n_total, layers, d_head, tol, r_range = 3e7, 6.7e7, 4, 32, 0.05, (0.5, 5.0)
    expected = set()
    for d, e, k, g in itertools.product(d_values, experts, top_k, granularity):
        if k > e:
            continue
        width = 4 * d // g
        for kv in range(1, 200):
            for group in range(1, 200 // kv):
                heads = kv * group
                routing = dict(n_experts=e, experts_per_token=k, expert_d_ff=width)
                active = non_embedding_params(layers, d, heads, kv, d_head, width, **routing, active=True)
                total = non_embedding_params(layers, d, heads, kv, d_head, width, **routing)
                r = 3 * k * width / (2 * d_head * (heads + kv))
                if (abs(active / n_active - 1) <= tol and abs(total / n_total - 1) <= tol
                        and r_range[0] <= r <= r_range[1]):
                    expected.add((d, heads, kv, e, k, g))
    frame = generate_moe_candidates(n_active, n_total, n_layers=layers, d_head=d_head, experts=experts, top_k=top_k,
                                    granularity=granularity, d_model_values=d_values, tolerance=tol, r_range=r_range)
    got = set(map(tuple, frame[["d_model", "n_heads", "n_kv_heads", "n_experts", "experts_per_token", "G"]]
                  .to_numpy().tolist()))
    assert len(expected) > 20
    assert got == expected


def test_the_serving_estimate_accepts_the_table(at_both):
    sample = at_both.iloc[:: max(1, len(at_both) // 50)]
    estimate = estimate_throughput_many(sample, load_gpu("h100-sxm"), Workload(batch_size=8, input_len=512,
                                                                              output_len=128))
    assert len(estimate) == len(sample)
    assert np.isfinite(estimate.tokens_per_s).all() and (estimate.tokens_per_s > 0).all()
    # memory holds every expert: the total count, so the same active count with more experts needs more memory
    by_total = sample.assign(memory=estimate.memory_gb).sort_values("N")
    assert by_total.memory.iloc[-1] > by_total.memory.iloc[0]


@pytest.mark.parametrize("kwargs, message", [
    (dict(), "needs a budget"),
    (dict(n_active=2e9, n_total=1e9), "below --n-active"),
    (dict(n_active=1e9, experts=(4,), top_k=(8,)), "--top-k 8 exceeds every --experts value (4)"),
    (dict(n_active=1e9, experts=(1,)), "--experts must be integers >= 2"),
    (dict(n_active=1e9, granularity=(3,)), "--granularity 3 does not divide"),
    (dict(n_active=1e8, experts=(64,), top_k=(8,), granularity=(1,)), "no MoE shape reaches N_active=1e+08"),
    (dict(n_active=1e9, n_total=2e10, experts=(8, 16), top_k=(1, 2)), "N_total/N_active 2 to 13.5, the nearest to 20 being 13.5"),
    (dict(n_active=3e7, n_total=8e7, n_layers=4, d_head=32, experts=(4, 8), top_k=(1, 2, 4), granularity=(1, 2, 4),
          d_model_values=(256, 384, 512)), "the nearest to 2.67 being"),
])
def test_bad_input_raises_user_error(kwargs, message):
    with pytest.raises(UserError, match=message.replace("+", r"\+").replace("(", r"\(").replace(")", r"\)")):
        generate_moe_candidates(**{"n_layers": 16, "d_head": 128} | kwargs)


def test_a_refusal_names_the_calling_commands_flags():
    """search spells the experts-per-token grid --experts-per-token and has no width-range flag: its refusals say so
    (candidates' say --top-k and --x-min)."""
    from archscale.shapes.moe_candidates import SEARCH_FLAGS

    unreachable = dict(n_active=1e8, experts=(64,), top_k=(8,), granularity=(1,), n_layers=16, d_head=128)
    with pytest.raises(UserError) as candidates_says:
        generate_moe_candidates(**unreachable)
    assert "a smaller --top-k" in str(candidates_says.value) and "a smaller --x-min" in str(candidates_says.value)
    with pytest.raises(UserError) as search_says:
        generate_moe_candidates(**unreachable, flags=SEARCH_FLAGS)
    assert "a smaller --experts-per-token" in str(search_says.value) and "--x-min" not in str(search_says.value)
    assert "--top-k" not in str(search_says.value)
    with pytest.raises(UserError, match=r"^--experts-per-token 8 exceeds every --experts value \(4\)"):
        generate_moe_candidates(n_active=1e9, experts=(4,), top_k=(8,), n_layers=16, d_head=128, flags=SEARCH_FLAGS)


# ---- CLI ----------------------------------------------------------------------------
def test_cli_writes_the_moe_table_with_total_and_active_n(cli, tmp_path):
    out = tmp_path / "moe.csv"
    result = cli("candidates", "--n-active", "1e9", "--n-total", "7e9", "--experts", "16,32,64", "--top-k", "1,2,4",
                 "--granularity", "1,2,4", "--layers", "16", "--head-dim", "128", "--out", str(out))
    assert result.code == 0, result.err
    frame = pd.read_csv(out)
    assert f"{len(frame):,} candidates" in result.out
    assert "N total" in result.out and "N active" in result.out
    assert set(frame.n_experts) <= {16, 32, 64} and set(frame.G) <= {1, 2, 4}
    assert (np.abs(frame.N_active / 1e9 - 1) <= 0.05).all() and (np.abs(frame.N / 7e9 - 1) <= 0.05).all()


def test_cli_json_summary_lists_the_routing_values(cli):
    result = cli("candidates", "--n-active", "1e9", "--experts", "8", "--top-k", "2", "--granularity", "4",
                 "--layers", "16", "--head-dim", "128", "--json")
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    assert (summary["n_experts_values"], summary["experts_per_token_values"], summary["G_values"]) == ([8], [2], [4])
    assert 0.95e9 <= summary["ranges"]["N_active"][0] <= summary["ranges"]["N_active"][1] <= 1.05e9


@pytest.mark.parametrize("args, message", [
    (("--n-active", "1e9", "--experts", "4", "--top-k", "8"), "--top-k 8 exceeds every --experts value (4)"),
    (("--n-active", "1e8", "--experts", "64", "--top-k", "8", "--granularity", "1"),
     "no MoE shape reaches N_active=1e+08"),
    (("--experts", "8"), "needs a budget: give --n-active"),
    (("--n-active", "1e9", "--n-total", "5e8"), "--n-total 5e+08 is below --n-active 1e+09"),
    (("--n", "1e9", "--experts", "8"), "--n is a dense budget"),
    (("--n-active", "1e9", "--ff-multiple", "64"), "drop --ff-multiple"),
    (("--n-active", "lots"), "--n-active 'lots'"),
    (("--n-active", "1e9", "--top-k", "1,x"), "--top-k"),
    ((), "give the budget: --n COUNT"),
])
def test_cli_bad_input_is_one_line(cli, tmp_path, args, message):
    out = tmp_path / "never.csv"
    result = cli("candidates", "--layers", "16", "--head-dim", "128", *args, "--out", str(out))
    assert result.code == 2
    assert message in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert "Traceback" not in result.err + result.out
    assert not out.exists()


def test_an_moe_candidate_row_builds_the_moe_architecture_it_describes_not_a_dense_one():
    """architecture_from_row is how emit, measure and search-gqa turn a row into a model: an MoE row must keep its
    experts (the same total and active counts as the row), and a dense row in a mixed table (empty cells) stays dense."""
    from archscale.shapes.candidates import architecture_from_row

    rows = generate_moe_candidates(n_active=2e8, n_layers=8, d_head=64, experts=(8,), top_k=(2,), granularity=(2,))
    row = rows.iloc[0]
    arch = architecture_from_row(row)
    assert (arch.n_experts, arch.experts_per_token, arch.expert_d_ff) == (8, 2, int(row["expert_d_ff"]))
    assert arch.n_params_non_embedding == int(row["N"]) and "-e8k2" in arch.name
    dense = pd.Series({**{k: row[k] for k in ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_head", "d_ff")},
                       "n_experts": float("nan"), "experts_per_token": float("nan")})
    assert architecture_from_row(dense).is_dense_llama
