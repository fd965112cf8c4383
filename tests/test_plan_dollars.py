"""plan's inference-aware optimum in dollars, and at a latency-limited operating point."""

import json
import warnings

import pytest

from archscale.plan.inference_optimal import CostModel, Serving, inference_aware_optimum
from archscale.serving import GPU, LatencyLimits, Workload, load_gpu
from helpers import one_line_error
from test_planning import TARGET, WORKED

VOLUMES = [1e11, 1e12, 1e13]
PRICE = 2.5


def _cost(kind: str = "gpu-hours", price: float | None = None, limits: LatencyLimits | None = None) -> CostModel:
    serving = Serving(load_gpu("h100-sxm"), Workload(64, 4096, 1024), limits=limits)
    return CostModel(kind, 0.4, serving, usd_per_gpu_hour=price)


@pytest.fixture
def worked_fit(tmp_path):
    path = tmp_path / "worked.json"
    path.write_text(json.dumps({"law": "chinchilla", "params": WORKED.params}))
    return path


def _plan_json(cli, fit, *args):
    result = cli("plan", "--fit", fit, "--target-loss", str(TARGET), "--inference-tokens", "1e11,1e12,1e13", *args, "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)["inference_aware"]


# ---- dollars --------------------------------------------------------------------------------------------------------
def test_dollars_are_the_gpu_hours_plan_at_the_price():
    hours = inference_aware_optimum(WORKED, TARGET, VOLUMES, _cost())
    dollars = inference_aware_optimum(WORKED, TARGET, VOLUMES, _cost("dollars", PRICE))
    assert dollars.cost.unit == "USD"
    # one price for training and serving is a constant factor: the same N and D minimise both
    for usd, gpu_h in zip(dollars.optima + dollars.chinchilla, hours.optima + hours.chinchilla):
        assert usd.n == pytest.approx(gpu_h.n, rel=1e-6) and usd.d == pytest.approx(gpu_h.d, rel=1e-6)
        assert usd.training == pytest.approx(PRICE * gpu_h.training, rel=1e-6)
        assert usd.inference == pytest.approx(PRICE * gpu_h.inference, rel=1e-6)
        assert usd.total == pytest.approx(PRICE * gpu_h.total, rel=1e-6)
    # training by hand: 6ND FLOPs at 40% of an H100's 989 TFLOP/s, in hours, at $2.50 an hour
    first = dollars.optima[0]
    assert first.training == pytest.approx(6 * first.n * first.d / (0.4 * 989e12) / 3600 * 2.5, rel=1e-9)


def test_plan_cost_dollars_on_the_command_line(cli, worked_fit):
    hours = _plan_json(cli, worked_fit, "--cost", "gpu-hours")
    dollars = _plan_json(cli, worked_fit, "--cost", "dollars", "--gpu-price", "2.5")
    assert dollars["unit"] == "USD" and dollars["usd_per_gpu_hour"] == 2.5 and hours["usd_per_gpu_hour"] is None
    for usd, gpu_h in zip(dollars["optima"], hours["optima"]):
        assert usd["N"] == pytest.approx(gpu_h["N"], rel=1e-6)
        assert usd["total_cost"] == pytest.approx(2.5 * gpu_h["total_cost"], rel=1e-6)
    assert dollars["savings"] == pytest.approx(hours["savings"], rel=1e-6)


def test_plan_prints_dollars_with_the_price(cli, worked_fit):
    result = cli("plan", "--fit", worked_fit, "--target-loss", "2.1", "--inference-tokens", "1e12", "--cost", "dollars",
                 "--gpu-price", "2.5")
    assert result.code == 0, result.err
    assert "dollars at $2.5 per GPU-hour" in result.out and "total USD" in result.out


def test_the_price_comes_from_the_gpu_file_unless_the_flag_gives_one(cli, worked_fit, tmp_path):
    prices = tmp_path / "prices.csv"
    prices.write_text("name,usd_per_hour\nh100-sxm,2.49\n")
    assert _plan_json(cli, worked_fit, "--cost", "dollars", "--gpu-file", prices)["usd_per_gpu_hour"] == 2.49
    overridden = _plan_json(cli, worked_fit, "--cost", "dollars", "--gpu-file", prices, "--gpu-price", "3")
    assert overridden["usd_per_gpu_hour"] == 3.0


# ---- a latency-limited operating point ------------------------------------------------------------------------------
def test_a_tpot_limit_raises_inference_cost_and_moves_the_optimum_to_smaller_models():
    """TPOT grows with N (each decode step reads all the weights), so a limit cuts the batch of large shapes first:
    their GPU-hours per token rise more than small shapes', and the optimum moves to a smaller N (more tokens)."""
    free = inference_aware_optimum(WORKED, TARGET, VOLUMES, _cost())
    limited = inference_aware_optimum(WORKED, TARGET, VOLUMES, _cost(limits=LatencyLimits(tpot_ms=6.0)))
    for before, after in zip(free.optima, limited.optima):
        assert after.n < before.n and after.d > before.d
        assert after.total > before.total  # the limit can only cost more
        assert after.operating_batch < 64  # it binds at the optimum
    # at a fixed size (the Chinchilla point, 1B) serving the same tokens costs more: fewer requests at once
    assert limited.chinchilla[0].n == pytest.approx(free.chinchilla[0].n)
    assert limited.chinchilla[0].inference > 1.2 * free.chinchilla[0].inference
    assert free.chinchilla[0].operating_batch is None and limited.chinchilla[0].operating_batch < 64


def test_plan_states_the_operating_point_in_its_header_and_json(cli, worked_fit):
    result = cli("plan", "--fit", worked_fit, "--target-loss", "2.1", "--inference-tokens", "1e12", "--cost", "gpu-hours",
                 "--tpot-ms", "6")
    assert result.code == 0, result.err
    assert "serving at the most requests up to 64 with TPOT p99 <= 6 ms" in " ".join(result.out.split())
    document = _plan_json(cli, worked_fit, "--cost", "dollars", "--gpu-price", "2", "--tpot-ms", "6", "--ttft-ms", "900",
                          "--percentile", "p90")
    assert document["serving"]["limits"] == {"tpot_ms": 6.0, "ttft_ms": 900.0, "statistic": "p90"}
    assert document["serving"]["operating_point"] == ("serving at the most requests up to 64 with TPOT p90 <= 6 ms "
                                                      "and TTFT p90 <= 900 ms")
    assert _plan_json(cli, worked_fit, "--cost", "gpu-hours")["serving"]["limits"] is None


def test_shapes_too_slow_for_the_limit_are_unservable_and_the_note_says_why(cli, worked_fit):
    document = _plan_json(cli, worked_fit, "--cost", "gpu-hours", "--tpot-ms", "3")
    notes = " ".join(document["notes"])
    assert "miss TPOT p99 <= 3 ms on one h100-sxm replica (tp 1) even serving one request alone" in notes
    assert "do not fit" not in notes  # the weights fit: the limit, not memory, is why
    assert document["chinchilla_point"][0]["inference_cost"] is None  # infinite: the 1B point cannot meet 3 ms
    assert document["savings"][0] is None  # no saving against a point that cannot be served, rather than 100%
    assert all(o["inference_cost"] > 0 for o in document["optima"])


def test_shapes_too_big_for_memory_under_a_limit_are_still_put_down_to_memory():
    small = GPU("small", 989.0, 3.35, 4.0, 900.0)  # 4 GiB: shapes from about 0.66B up do not fit
    serving = Serving(small, Workload(64, 4096, 1024), limits=LatencyLimits(tpot_ms=1000.0))  # a limit every shape meets
    notes = " ".join(inference_aware_optimum(WORKED, TARGET, VOLUMES, CostModel("gpu-hours", 0.4, serving)).notes)
    assert "up do not fit one small replica (tp 1) even serving one request" in notes
    assert "miss TPOT" not in notes


# ---- refusals: one line, exit 2, nothing written --------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--cost", "dollars"], "--cost dollars needs a price: give --gpu-price (US dollars per GPU-hour), or a usd_per_hour "
                            "for h100-sxm in a --gpu-file"),
    (["--cost", "dollars", "--gpu-price", "-1"], "--gpu-price must be a positive price in US dollars per GPU-hour, got -1"),
    (["--cost", "gpu-hours", "--gpu-price", "2"], "--gpu-price does not apply to --cost gpu-hours: it prices GPU-hours in "
                                                  "dollars; drop it, or use --cost dollars"),
    (["--tpot-ms", "40"], "--tpot-ms does not apply to --cost flops (training 6ND, inference 2N per token): it limits "
                          "serving latency; drop it, or use --cost gpu-hours or dollars"),
    (["--cost", "gpu-hours", "--ttft-ms", "0"], "--ttft-ms must be a positive number of milliseconds"),
    (["--cost", "gpu-hours", "--tpot-ms", "40", "--percentile", "p95"], "--percentile 'p95': not a measured statistic"),
    (["--cost", "gpu-hours", "--percentile", "p50"], "--percentile picks the statistic of a latency limit"),
    (["--cost", "euros"], "--cost 'euros': choose one of flops, gpu-hours, dollars"),
    (["--cost", "gpu-hours", "--tpot-ms", "1"], "no size reaches the target at a finite cost with this serving setup; "
                                                "raise --tp, relax the latency limit"),
])
def test_plan_refuses_prices_and_limits_it_cannot_use(cli, worked_fit, tmp_path, args, message):
    out = tmp_path / "plan.json"
    result = cli("plan", "--fit", worked_fit, "--target-loss", "2.1", "--inference-tokens", "1e12", *args, "--out", out)
    assert result.code == 2, result.out
    assert message in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert not out.exists()


# ---- flags --cost flops does not read, and absurd values: one line naming the flag, no numpy warning ---------------
@pytest.mark.parametrize("flag", [["--mfu", "0.5"], ["--gpu", "h200"], ["--batch", "8"], ["--tp", "2"], ["--input-len", "512"],
                                  ["--output-len", "128"], ["--inference-counts", "output"], ["--ttft-ms", "400"],
                                  ["--percentile", "p90"], ["--gpu-file", "gpus.csv"], ["--gpu-price", "2.5"]],
                         ids=lambda flag: flag[0])
def test_cost_flops_refuses_the_gpu_flags_it_does_not_read(cli, worked_fit, flag):
    result = cli("plan", "--fit", worked_fit, "--target-loss", "2.1", "--inference-tokens", "1e12", *flag)
    assert one_line_error(result), (result.code, result.err)
    assert result.err.startswith(f"error: {flag[0]} does not apply to --cost flops")
    assert "drop it, or use --cost" in result.err


def test_the_gpu_costs_read_every_gpu_flag(cli, worked_fit):
    """The refusals must not reach a flag a GPU cost reads: each one, given, changes the plan or is echoed in it."""
    base = _plan_json(cli, worked_fit, "--cost", "dollars", "--gpu-price", "2.5")
    for flags in (["--mfu", "0.5"], ["--gpu", "h200"], ["--tp", "2"], ["--batch", "8"], ["--input-len", "1024"],
                  ["--output-len", "256"], ["--inference-counts", "output"], ["--tpot-ms", "40"],
                  ["--ttft-ms", "4000", "--percentile", "p90"]):
        changed = _plan_json(cli, worked_fit, "--cost", "dollars", "--gpu-price", "2.5", *flags)
        assert changed != base, flags


@pytest.mark.parametrize("args, message", [
    (["--inference-tokens", "1e300"], "--inference-tokens 1e+300: the inference cost overflows (past 1.8e+308 FLOPs)"),
    (["--inference-tokens", "1e12", "--cost", "dollars", "--gpu-price", "1e306"],
     "--gpu-price 1e+306: the costs in dollars overflow"),
    (["--inference-tokens", "1e12", "--cost", "gpu-hours", "--mfu", "1e-300"], "--mfu 1e-300: training at that utilisation"),
])
def test_costs_that_overflow_name_the_flag_without_a_numpy_warning(cli, worked_fit, args, message):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = cli("plan", "--fit", worked_fit, "--target-loss", "2.1", *args)
    assert one_line_error(result), (result.code, result.err)
    assert result.err.startswith("error: ") and message in result.err
    assert not caught, [str(w.message) for w in caught]


def test_a_target_whose_smallest_model_no_gpu_holds_says_so_without_a_numpy_warning(cli, worked_fit):
    """Near E the smallest model that reaches the target has 4e19 parameters: its reference shapes once wrapped int64
    (numpy warned 'invalid value encountered in log'); now they are unservable, and the line says how to continue."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = cli("plan", "--fit", worked_fit, "--target-loss", "1.700001", "--inference-tokens", "1e12", "--cost",
                     "gpu-hours")
    assert one_line_error(result), (result.code, result.err)
    assert "no size reaches the target at a finite cost with this serving setup" in result.err
    assert "raise --target-loss (the smallest model that reaches 1.7 has N = 4" in result.err
    assert not caught, [str(w.message) for w in caught]
