"""``archscale plan``: compute-optimal N* and D* (Approach 2 and from a law) and the inference-aware optimum."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from archscale.serving import Workload, load_gpu
from archscale.plan.inference_optimal import CostModel, Serving, chinchilla_point, inference_aware_optimum
from archscale.laws import get_law
from archscale.plan.isoflop import law_allocation
from archscale.fit.fitted import FittedLaw
from conftest import DATA
from helpers import one_line_error

ISOFLOPS = DATA / "chinchilla_isoflops_epoch.csv"


@pytest.fixture(scope="module")
def huber_fit(tmp_path_factory):
    """The Huber fit of the Figure 4 points, with bootstrap refits (as a user would make it)."""
    from archscale.fit.runs import load_runs
    from archscale.fit.study import run_study

    path = tmp_path_factory.mktemp("fit") / "huber.json"
    frame = load_runs(DATA / "chinchilla_epoch.csv")
    study = run_study(frame, "chinchilla", "huber", where="loss < 3.42", bootstrap_samples=40)
    from archscale.io.files import write_json

    write_json(path, study.to_json())
    return path


def test_approach_2_on_the_chinchilla_profiles_in_one_command(cli, tmp_path, huber_fit):
    out, plot = tmp_path / "plan.json", tmp_path / "plan.png"
    result = cli("plan", ISOFLOPS, "--drop-unbracketed", "--fit", huber_fit, "--budget", "5.76e23",
                 "--bootstrap", "300", "--out", out, "--plot", plot)
    assert result.code == 0, result.err
    document = json.loads(out.read_text())
    approach2 = document["approach2"]
    assert 0.462 <= approach2["a"] <= 0.534  # the paper's interval for its 0.49 (Table 2)
    assert approach2["b"] == pytest.approx(1 - approach2["a"])
    low, high = approach2["ci95"]["a"]
    assert low < approach2["a"] < high and high - low < 0.15
    assert len(approach2["profiles"]) == 9
    assert [p["C"] for p in approach2["profiles"] if p["role"] == "excluded"] == [1e20]  # its minimum is below its sizes
    # N*(C) from the Huber law beside it, with its own exponent and intervals from the fit's bootstrap refits
    law = document["law"]
    assert 0.45 < law["a"] < 0.56 and law["ci95"]["a"] is not None
    n_law, n_approach2 = law["budgets"][0]["N"], approach2["budgets"][0]["N"]
    assert 3e10 < n_approach2 < 1.5e11 and 3e10 < n_law < 1.5e11
    assert "Approach 2" in result.out and "Approach 3" in result.out and "law (chinchilla)" in result.out
    assert f"a = {approach2['a']:.3f}" in result.out and "window: the runs within a factor 3 in N" in " ".join(result.out.split())
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_holding_out_the_top_budget_predicts_its_minimum(cli):
    result = cli("plan", ISOFLOPS, "--drop-unbracketed", "--holdout", "C >= 3e21", "--bootstrap", "0", "--json")
    assert result.code == 0, result.err
    holdout = json.loads(result.out)["approach2"]["holdout"]
    assert len(holdout) == 1 and holdout[0]["C"] == pytest.approx(3e21)
    assert abs(holdout[0]["relative_error"]) < 0.5  # the frontier of 7 lower budgets lands within a factor 1.5
    assert "held-out budget" in cli("plan", ISOFLOPS, "--drop-unbracketed", "--holdout", "C >= 3e21", "--bootstrap", "0").out


def test_law_allocation_is_the_minimum_along_the_budget():
    params = dict(E=1.8172, A=477.8, B=2143.4, alpha=0.3473, beta=0.3672)
    allocation = law_allocation(FittedLaw(get_law("chinchilla"), params, source="test"), [1e21, 1e24])
    assert allocation.a == pytest.approx(0.3672 / (0.3473 + 0.3672))
    for budget, n_opt, d_opt in zip(allocation.budgets, allocation.n_opt, allocation.d_opt):
        assert 6 * n_opt * d_opt == pytest.approx(budget)
        sizes = n_opt * np.geomspace(0.5, 2, 101)
        losses = get_law("chinchilla").predict(params, {"N": sizes, "D": budget / (6 * sizes)})
        assert sizes[np.argmin(losses)] == pytest.approx(n_opt, rel=0.02)


# ---------------------------------------------------------------------------
# the inference-aware optimum, against a worked example
# ---------------------------------------------------------------------------
# L(N, D) = 1.7 + A/N^0.5 + B/D^0.5 with A = 0.2 sqrt(1e9), B = 0.2 sqrt(2e10), target 2.1 (so target - E = 0.4).
# Write u = A N^-1/2 and v = B D^-1/2, u + v = 0.4; then N = (A/u)^2 and D = (B/v)^2.
# Chinchilla point (least 6ND): minimise 1/(u v)^2 on u + v = 0.4 -> u = v = 0.2 -> N = 1e9, D = 2e10.
# With D_inf tokens served (FLOPs 6ND + 2N D_inf): cost(u) = 6 A^2 B^2/(u^2 v^2) + 2 D_inf A^2/u^2, v = 0.4 - u.
# d cost/du = 0  <=>  12 A^2 B^2 (u - v)/(u^3 v^3) = 4 D_inf A^2/u^3  <=>  u - v = D_inf v^3 / (3 B^2),
# so v solves the cubic  D_inf v^3/(3 B^2) + 2 v - 0.4 = 0  (one positive root), u = 0.4 - v.
A, B, E, TARGET = 0.2 * np.sqrt(1e9), 0.2 * np.sqrt(2e10), 1.7, 2.1
WORKED = FittedLaw(get_law("chinchilla"), dict(E=E, A=A, B=B, alpha=0.5, beta=0.5), source="worked example")


def hand_optimum(inference_tokens: float) -> tuple[float, float]:
    roots = np.roots([inference_tokens / (3 * B**2), 0.0, 2.0, -(TARGET - E)])
    v = float(next(r.real for r in roots if abs(r.imag) < 1e-9 and r.real > 0))
    return (A / (TARGET - E - v)) ** 2, (B / v) ** 2


def test_the_chinchilla_point_of_the_worked_example():
    n, d = chinchilla_point(WORKED, TARGET)
    assert n == pytest.approx(1e9, rel=1e-9) and d == pytest.approx(2e10, rel=1e-9)


def test_inference_aware_optimum_reproduces_the_worked_example():
    volumes = [1e12, 1e13, 1e14]
    plan = inference_aware_optimum(WORKED, TARGET, volumes)
    for optimum, volume in zip(plan.optima, volumes):
        n, d = hand_optimum(volume)
        assert optimum.n == pytest.approx(n, rel=1e-5) and optimum.d == pytest.approx(d, rel=1e-5)
        assert optimum.training == pytest.approx(6 * n * d, rel=1e-5)
        assert optimum.inference == pytest.approx(2 * n * volume, rel=1e-5)
    # by hand: 1e12 tokens -> N 397M, D 117B; the optimum moves to smaller N and more D as inference grows
    assert plan.optima[0].n == pytest.approx(3.970e8, rel=1e-3) and plan.optima[0].d == pytest.approx(1.1726e11, rel=1e-3)
    sizes, tokens = [o.n for o in plan.optima], [o.d for o in plan.optima]
    assert sizes == sorted(sizes, reverse=True) and tokens == sorted(tokens)
    assert all(o.total < c.total for o, c in zip(plan.optima, plan.chinchilla))
    assert all(c.n == pytest.approx(1e9, rel=1e-9) for c in plan.chinchilla)


def test_gpu_hours_move_the_same_way_and_use_the_cost_model():
    serving = Serving(load_gpu("h100-sxm"), Workload(64, 4096, 1024))
    plan = inference_aware_optimum(WORKED, TARGET, [1e12, 1e13, 1e14], CostModel("gpu-hours", 0.4, serving))
    sizes = [o.n for o in plan.optima]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] < 1e9
    assert all(o.total < c.total for o, c in zip(plan.optima, plan.chinchilla))
    # training: 6ND FLOPs at 40% of the H100's 989 TFLOP/s
    first = plan.optima[0]
    assert first.training == pytest.approx(6 * first.n * first.d / (0.4 * 989e12) / 3600, rel=1e-6)


@pytest.mark.parametrize("tp", [1, 2, 4, 8, 16])
def test_reference_shapes_are_ones_a_tp_way_replica_serves(tp):
    """plan invents its serving shapes, so they must be ones --tp splits (it refused its own 36/9 heads at --tp 8)."""
    from archscale.plan.inference_optimal import reference_shapes
    from archscale.serving.estimate import check_tensor_parallel

    shapes = reference_shapes(np.geomspace(1e8, 1e12, 48), 128256, tp)
    check_tensor_parallel(shapes["n_heads"].to_numpy(), shapes["n_kv_heads"].to_numpy(), tp)
    assert (shapes["n_heads"] % shapes["n_kv_heads"] == 0).all()
    if tp == 1:  # unchanged without tensor parallelism: GQA 4 exactly
        assert (shapes["n_heads"] == 4 * shapes["n_kv_heads"]).all()


def test_plan_gpu_hours_at_tp_8_as_the_readme_runs_it(cli, tmp_path):
    fit = tmp_path / "worked.json"
    fit.write_text(json.dumps({"law": "chinchilla", "params": WORKED.params}))
    result = cli("plan", "--fit", fit, "--target-loss", "2.1", "--inference-tokens", "1e11,1e13", "--cost", "gpu-hours",
                 "--gpu", "h100-sxm", "--mfu", "0.4", "--tp", "8", "--batch", "64", "--input-len", "4096",
                 "--output-len", "1024", "--json")
    assert result.code == 0, result.err
    document = json.loads(result.out)["inference_aware"]
    assert document["serving"]["tp"] == 8 and all(o["inference_cost"] > 0 for o in document["optima"])


def test_plan_prints_the_inference_aware_table(cli, tmp_path):
    fit = tmp_path / "worked.json"
    fit.write_text(json.dumps({"law": "chinchilla", "params": WORKED.params}))
    out = tmp_path / "plan.json"
    result = cli("plan", "--fit", fit, "--target-loss", "2.1", "--inference-tokens", "1e12,1e13,1e14", "--out", out)
    assert result.code == 0, result.err
    assert "inference-aware optimum" in result.out and "Chinchilla point" in result.out
    document = json.loads(out.read_text())["inference_aware"]
    assert document["optima"][0]["N"] == pytest.approx(hand_optimum(1e12)[0], rel=1e-5)
    assert all(saving > 0 for saving in document["savings"])


# ---------------------------------------------------------------------------
# bad input, as a new user would try it: one line, exit 2, nothing written
# ---------------------------------------------------------------------------
def _isoflop_table(tmp_path, frame: pd.DataFrame):
    path = tmp_path / "iso.csv"
    frame.to_csv(path, index=False)
    return path


def _profiles(budgets=(1e19, 1e20, 1e21), sizes=5, offset=0.0):
    """Parabolic profiles with their minimum at N* = 0.1 sqrt(C) x e^offset (offset moves it off the sizes)."""
    rows = []
    for c in budgets:
        best = np.log(0.1 * np.sqrt(c))
        for u in best + np.linspace(-1.2, 1.2, sizes) + offset:
            rows.append(dict(C=c, N=np.exp(u), loss=2.0 + 0.05 * (u - best) ** 2 - 0.1 * np.log10(c / 1e19)))
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    "make, args, message",
    [
        (lambda p: _isoflop_table(p, _profiles(sizes=2)), [], "budget C = 1e+19 has 2 model sizes; a parabola needs at least 3"),
        (lambda p: _isoflop_table(p, _profiles(offset=2.0)), [], "the sizes do not bracket the minimum"),
        (lambda p: _isoflop_table(p, _profiles(offset=2.0)), ["--drop-unbracketed"], "0 budgets locate a minimum"),
        (lambda p: _isoflop_table(p, _profiles()), ["--fit", DATA / "fits" / "dissertation_1b_mult.json", "--budget", "1e22"],
         "needs a law of N and D"),
        (lambda p: p / "missing.csv", [], "no such file"),
        (lambda p: _isoflop_table(p, _profiles().rename(columns={"loss": "Loss"})), [], "missing column 'loss'"),
        (lambda p: _isoflop_table(p, _profiles()), ["--budget", "-1e22"], "--budget -1e22: must be a positive number"),
        (lambda p: _isoflop_table(p, _profiles()), ["--holdout", "N > 1e9"], "hold out whole budgets"),
        (lambda p: _isoflop_table(p, _profiles()), ["--window", "1"], "--window 1: give a factor in N above 1"),
        (lambda p: _isoflop_table(p, _profiles()), ["--window", "wide"], "--window wide: give a factor in N above 1"),
    ],
)
def test_plan_bad_isoflop_input(cli, tmp_path, make, args, message):
    out, plot = tmp_path / "plan.json", tmp_path / "plan.png"
    result = cli("plan", make(tmp_path), *args, "--bootstrap", "20", "--out", out, "--plot", plot)
    assert result.code == 2, result.out
    assert message in result.err
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err
    assert not out.exists() and not plot.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--target-loss", "1.6", "--inference-tokens", "1e12"], "--target-loss 1.6 is not above the law's irreducible loss E = 1.7"),
        (["--target-loss", "2.1", "--inference-tokens", "-1e12"], "--inference-tokens -1e12: must be a positive number"),
        (["--target-loss", "2.1", "--inference-tokens", "0"], "--inference-tokens 0: must be a positive number"),
        (["--target-loss", "2.1"], "needs --fit, --target-loss and --inference-tokens together"),
        (["--target-loss", "2.1", "--inference-tokens", "1e12", "--cost", "euros"], "--cost 'euros'"),
        ([], "give --budget C"),
        (["--target-loss", "nan", "--inference-tokens", "1e12"], "--target-loss nan: must be a finite positive number"),
        (["--target-loss", "inf", "--inference-tokens", "1e12"], "--target-loss inf: must be a finite positive number"),
        (["--target-loss", "-2", "--inference-tokens", "1e12"], "--target-loss -2: must be a finite positive number"),
        # above the loss of one parameter with unlimited data (E + A = 6326): every size reaches it, N* would be < 1
        (["--target-loss", "1e10", "--inference-tokens", "1e12"], "--target-loss 1e+10 is reached by every model of one "
                                                                  "parameter or more: the law gives 6326 at N = 1"),
        (["--target-loss", "1e300", "--inference-tokens", "1e12"], "give a target below 6326"),  # crashed in geomspace
        (["--target-loss", "2.1", "--inference-tokens", "1e300"], "--inference-tokens 1e+300: the inference cost overflows"),
    ],
)
def test_plan_bad_lifetime_input(cli, tmp_path, args, message):
    fit = tmp_path / "worked.json"
    fit.write_text(json.dumps({"law": "chinchilla", "params": WORKED.params}))
    out = tmp_path / "plan.json"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = cli("plan", "--fit", fit, *args, "--out", out)
    assert result.code == 2, result.out
    assert message in result.err
    assert len(result.err.strip().splitlines()) == 1 and result.err.startswith("error: ")
    assert not out.exists()
    assert not caught, [str(w.message) for w in caught]  # no numpy RuntimeWarning reaches the user


def test_a_target_just_below_one_parameters_loss_still_plans():
    plan = inference_aware_optimum(WORKED, 6000.0, [1e12])  # E + A = 6326: the smallest size is about 1.2 parameters
    assert plan.optima[0].n >= 1 and plan.optima[0].d > 0


def test_reference_shapes_of_huge_sizes_keep_a_positive_growing_count():
    """Sizes past 9.2e18 wrapped int64 into negative counts (and a numpy warning from log)."""
    from archscale.plan.inference_optimal import reference_shapes

    sizes = reference_shapes(np.geomspace(1e15, 1e24, 12), 128256)["N"].to_numpy()
    assert np.all(sizes > 0) and np.all(np.diff(sizes) > 0)


RUNS_ONLY_FLAGS = [["--window", "5"], ["--bootstrap", "10"], ["--seed", "1"], ["--drop-unbracketed"],
                   ["--min-tokens-per-param", "1"], ["--where", "loss < 3"], ["--holdout", "C >= 1e21"],
                   ["--col", "N=size"], ["--drop-invalid"]]


@pytest.mark.parametrize("flag", RUNS_ONLY_FLAGS, ids=lambda flag: flag[0])
def test_plan_refuses_runs_table_flags_without_a_runs_table(cli, tmp_path, flag):
    fit = tmp_path / "worked.json"
    fit.write_text(json.dumps({"law": "chinchilla", "params": WORKED.params}))
    for mode in (["--budget", "1e22"], ["--target-loss", "2.1", "--inference-tokens", "1e12"]):
        result = cli("plan", "--fit", fit, *mode, *flag)
        assert one_line_error(result), (result.code, result.err)
        assert result.err.startswith(f"error: {flag[0]} does not apply to a plan without an isoFLOP runs table")
        assert "drop it, or give the runs table" in result.err


@pytest.mark.parametrize("flags", [
    ["--cost", "dollars", "--gpu-price", "2.5"],
    ["--cost", "gpu-hours", "--tpot-ms", "40", "--ttft-ms", "400", "--percentile", "p90", "--batch", "8", "--tp", "2",
     "--inference-counts", "output"],
    ["--gpu-price", "2.5"], ["--mfu", "0.5"], ["--gpu", "h200"], ["--tp", "2"], ["--batch", "8"], ["--input-len", "512"],
    ["--output-len", "128"], ["--inference-counts", "output"], ["--tpot-ms", "40"], ["--ttft-ms", "400"],
    ["--percentile", "p90"], ["--cost", "flops"],
], ids=lambda flags: " ".join(flags))
def test_plan_refuses_cost_flags_in_a_training_budget_plan(cli, tmp_path, flags):
    """Only the inference-aware optimum reads the cost flags; a budget plan printed the same with or without them."""
    fit = tmp_path / "worked.json"
    fit.write_text(json.dumps({"law": "chinchilla", "params": WORKED.params}))
    result = cli("plan", "--fit", fit, "--budget", "1e22", *flags)
    assert one_line_error(result), (result.code, result.err)
    assert result.err.startswith(f"error: {flags[0]} does not apply to a training-budget plan")
    assert "give --target-loss and --inference-tokens" in result.err


def test_plan_refuses_to_write_over_its_input(cli, tmp_path):
    runs = _isoflop_table(tmp_path, _profiles())
    result = cli("plan", runs, "--out", runs)
    assert result.code == 2 and "is one of this command's inputs" in result.err
    assert pd.read_csv(runs).shape == _profiles().shape  # untouched


def test_the_numeric_route_of_the_inference_aware_optimum_matches_the_closed_form(monkeypatch):
    """Laws with no closed form (Kaplan, Farseer) are solved by bisection and search: on a Chinchilla law that
    route must land where the closed form does."""
    from archscale.plan import inference_optimal

    fitted = FittedLaw(get_law("chinchilla"), dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28), source="test")
    closed = inference_aware_optimum(fitted, 2.0, [1e12, 1e14])
    closed_point = chinchilla_point(fitted, 2.0)
    monkeypatch.setattr(inference_optimal, "SEARCHED_LAWS", ("chinchilla",))
    searched = inference_aware_optimum(fitted, 2.0, [1e12, 1e14])
    assert chinchilla_point(fitted, 2.0) == pytest.approx(closed_point, rel=1e-6)
    for a, b in zip(closed.optima, searched.optima):
        assert (b.n, b.d) == pytest.approx((a.n, a.d), rel=1e-5)


def test_plan_takes_a_farseer_fit_to_the_inference_aware_optimum(cli, tmp_path):
    fit = tmp_path / "farseer.json"
    assert cli("fit", DATA / "chinchilla_epoch.csv", "--law", "farseer", "--out", fit).code == 0
    result = cli("plan", "--fit", fit, "--target-loss", "2.0", "--inference-tokens", "1e12,1e14", "--json")
    assert result.code == 0, result.err
    optima = json.loads(result.out)["inference_aware"]["optima"]
    params = json.loads(fit.read_text())["params"]
    reached = get_law("farseer").predict(params, {"N": np.array([o["N"] for o in optima]), "D": np.array([o["D"] for o in optima])})
    assert reached == pytest.approx(2.0, rel=1e-6)  # each optimum lies on the target's contour
    assert optima[1]["N"] < optima[0]["N"]  # more inference: a smaller model trained longer
    floor = float(get_law("farseer").predict(params, {"N": np.array([1e40]), "D": np.array([1e40])})[0])
    low = cli("plan", "--fit", fit, "--target-loss", f"{0.99 * floor:.6g}", "--inference-tokens", "1e12")
    assert low.code == 2 and "unlimited parameters and data" in low.err


def test_a_budget_whose_optimum_is_no_model_is_one_line(cli):
    """--budget 1e-300 printed N* 0: below one parameter the law's power law plans nothing."""
    fit = DATA.parent / "experiments" / "results" / "plan" / "chinchilla_huber.json"
    result = cli("plan", "--fit", fit, "--budget", "1e-300")
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1
    assert "--budget 1e-300: the law's optimum there" in result.err and "is not a model" in result.err
