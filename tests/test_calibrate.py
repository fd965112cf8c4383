"""Throughput profiles: calibration on known terms and on Table 6.3, held-out errors, refusals, profile lookup, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from archscale.shapes.architecture import PRESETS
from archscale.bench.calibrate import calibrate
from archscale.io.units import BYTES_PER_ELEMENT
from archscale.bench.records import make_record
from archscale.bench.store import append, load_results
from archscale.serving import CostTerms, EngineSettings, estimate_rows, load_gpu, load_profile, resolve_profile
from archscale.serving.profiles import ENV_DIRS, SHIPPED_DIR
from archscale.io.errors import UserError

from conftest import DATA

PUBLISHED = DATA / "dissertation_throughput.csv"
H200, A100 = load_gpu("h200"), load_gpu("a100-40gb")
TRUTH = CostTerms(eta_weights=0.55, t_step=1.5e-3, t_seq=4e-5)
MODELS = ("llama-3.2-1b", "surefire-1b", "panda-1b", "olmo-2-1b")


def synthetic(terms: CostTerms = TRUTH, models=MODELS, batches=(8, 32, 128), workloads=((4096, 1024), (1024, 256)),
              device=H200, unit: str = "both", settings: EngineSettings = EngineSettings(),
              dtype: str = "bfloat16") -> pd.DataFrame:
    """"Measured" vLLM rows that are exactly the serving model at ``terms``."""
    rows = []
    for name in models:
        for input_len, output_len in workloads:
            for batch in batches:
                workload = {"batch_size": batch, "input_len": input_len, "output_len": output_len, "repeats": 3, "tp": 1}
                rows.append(make_record(PRESETS[name], name, "vllm", workload, {"gpu": device.name, "dtype": dtype}))
    frame = pd.DataFrame(rows)
    estimate = estimate_rows(frame.assign(bytes_per_element=BYTES_PER_ELEMENT[dtype]), device, terms, settings)
    frame["tokens_per_s"] = estimate["tokens_per_s"] if unit in ("both", "total") else np.nan
    frame["output_tokens_per_s"] = estimate["output_tokens_per_s"] if unit in ("both", "output") else np.nan
    return frame


def table_6_3() -> pd.DataFrame:
    return load_results(PUBLISHED)


def llama_only(results: pd.DataFrame) -> np.ndarray:
    """Hold out everything but the LLaMA-3.2 rows of Table 6.3."""
    return (~(results["name"].str.startswith("llama-3.2") & (results["source"] == "dissertation Table 6.3"))).to_numpy()


# ---- recovering known terms ------------------------------------------------------------------
def test_calibration_recovers_the_terms_that_made_the_rows():
    result = calibrate(synthetic(), H200)
    for name in ("eta_weights", "t_step", "t_seq"):
        assert getattr(result.profile.terms, name) == pytest.approx(getattr(TRUTH, name), rel=1e-4), name
    assert result.summary["fit"]["max_abs_rel_err"] < 1e-6
    assert result.summary["uncalibrated_fit"]["mean_abs_rel_err"] > 0.3  # the bare roofline is far off
    loao = result.summary["leave_one_architecture_out"]
    assert loao["n_rows"] == len(result.rows) and loao["max_abs_rel_err"] < 1e-5 and loao["refused"] is None
    assert result.profile.fitted == ("eta_weights", "t_step", "t_seq") and result.profile.calibrated


def test_latency_rows_are_fitted_with_throughput_and_their_held_out_error_reported():
    """Rows whose throughput says one thing and whose latency another: the fit weighs both, and reports the latency
    error per split. Here the rows are the model at TRUTH, with every measured TPOT 20% above it on the held-out
    architecture: the fit (on the others) is untouched and the held-out TPOT error is 1/1.2 off exactly."""
    rows = synthetic()
    predicted = estimate_rows(rows.assign(bytes_per_element=2), H200, TRUTH)
    for column in ("tpot_ms_p50", "tpot_ms_p99", "ttft_ms_p50", "ttft_ms_p99"):
        rows[column] = predicted[column]
    held = (rows["name"] == "surefire-1b").to_numpy()
    rows.loc[held, ["tpot_ms_p50", "tpot_ms_p99"]] *= 1.2
    result = calibrate(rows, H200, holdout=held)
    assert result.profile.terms.t_seq == pytest.approx(TRUTH.t_seq, rel=1e-4)
    latency = result.summary["latency"]
    assert latency["fit"]["tpot_ms_p50"]["median_abs_rel_err"] < 1e-6
    assert latency["fit"]["ttft_ms_p99"]["n_rows"] == int((~held).sum())
    assert latency["heldout"]["tpot_ms_p50"]["median_abs_rel_err"] == pytest.approx(1 - 1 / 1.2, rel=1e-6)
    assert latency["heldout"]["ttft_ms_p50"]["median_abs_rel_err"] < 1e-6


def test_latency_pulls_the_fit_where_throughput_alone_would_not():
    """Throughput rows at TRUTH, TPOT rows 3% slower everywhere: with the latency rows the fit moves off TRUTH
    (it balances both), without them it recovers TRUTH exactly."""
    rows = synthetic()
    predicted = estimate_rows(rows.assign(bytes_per_element=2), H200, TRUTH)
    rows["tpot_ms_p50"] = predicted["tpot_ms_p50"] * 1.03
    moved = calibrate(rows, H200).profile.terms
    assert abs(moved.t_seq / TRUTH.t_seq - 1) > 0.01 or abs(moved.t_step / TRUTH.t_step - 1) > 0.01


def test_holdout_rows_are_not_fitted_and_are_scored(tmp_path):
    rows = synthetic()
    rows.loc[rows["name"] == "surefire-1b", "output_tokens_per_s"] *= 1.10  # held-out rows 10% faster than the model
    rows.loc[rows["name"] == "surefire-1b", "tokens_per_s"] *= 1.10
    result = calibrate(rows, H200, holdout=(rows["name"] == "surefire-1b").to_numpy())
    assert result.profile.terms.t_seq == pytest.approx(TRUTH.t_seq, rel=1e-4)  # untouched by the held-out rows
    held = result.summary["heldout"]
    assert held["n_rows"] == 6 and held["mean_abs_rel_err"] == pytest.approx(1 - 1 / 1.1, rel=1e-4)
    # surefire vs each same-size architecture at 6 workloads, all 10 points off
    assert held["n_pairs"] == 18 and held["speedup_mean_abs_points"] > 5


# ---- the dissertation's Table 6.3: fit on LLaMA rows, predict Surefire ---------------------------
@pytest.mark.parametrize("gpu, mae_limit, points_limit", [(H200, 0.06, 2.0), (A100, 0.10, 6.0)])
def test_profile_fitted_on_llama_predicts_surefire(gpu, mae_limit, points_limit):
    """Issue 9: within 6% (H200) / 10% (A100-40GB) on the Surefire rows, speedups within 2 / 6 points on average."""
    results = table_6_3()
    result = calibrate(results, gpu, "vllm", holdout=llama_only(results))
    rows = result.rows[result.rows["source"] == "dissertation Table 6.3"]
    fitted = rows[rows["split"] == "fit"]
    assert set(fitted["arch_name"]) == {"llama-3.2-1b", "llama-3.2-3b"} and len(fitted) == 8
    surefire = rows[rows["arch_name"].str.startswith("surefire")]
    assert surefire["rel_err"].abs().mean() < mae_limit
    errors, bare = [], []
    for size in ("1b", "3b"):
        for batch in (16, 32, 64, 128):
            pick = lambda name: rows[(rows["arch_name"] == name) & (rows["batch_size"] == batch)].iloc[0]  # noqa: E731
            fast, slow = pick(f"surefire-{size}"), pick(f"llama-3.2-{size}")
            errors.append(100 * abs(fast.estimate / slow.estimate - fast.measured / slow.measured))
            bare.append(100 * abs(fast.uncalibrated / slow.uncalibrated - fast.measured / slow.measured))
    assert np.mean(errors) < points_limit
    # the bare roofline (what search used before profiles) is optimistic on every row and worse on speedups
    assert (surefire["uncalibrated"] > surefire["measured"]).all() and np.mean(bare) > 2 * np.mean(errors)


def test_efficiencies_alone_end_on_a_bound_and_are_refused():
    """Without time terms the roofline cannot match Table 6.3: the fit runs into eta_kv = 1 and says so."""
    results = table_6_3()
    with pytest.raises(UserError, match=r"term eta_kv .* ended on its upper bound 1: .* --fix eta_kv=VALUE"):
        calibrate(results, H200, "vllm", free=("eta_compute", "eta_weights", "eta_kv"), holdout=llama_only(results))


def test_shipped_profiles_are_what_the_experiment_fits():
    """data/profiles/*.json are reproducible from data/dissertation_throughput.csv (experiments/reproduce/table63_profiles.py)."""
    results = table_6_3()
    for gpu in (H200, A100):
        shipped = load_profile(SHIPPED_DIR / f"vllm-{gpu.name}-bf16.json")
        refit = calibrate(results, gpu, "vllm", holdout=llama_only(results)).profile
        assert shipped.fitted == refit.fitted and shipped.device == gpu
        for name in shipped.terms.as_dict():
            assert getattr(shipped.terms, name) == pytest.approx(getattr(refit.terms, name), rel=1e-6), name
        assert shipped.heldout_speedup_points == pytest.approx(refit.heldout_speedup_points, rel=1e-6)
        assert "Table 6.3" in shipped.source


# ---- refusals: one line, naming what is wrong and how to go on -----------------------------------
def test_too_few_rows_is_refused():
    rows = synthetic(models=("llama-3.2-1b",), batches=(8, 32), workloads=((4096, 1024),))
    with pytest.raises(UserError, match="2 rows cannot calibrate 3 terms .* need at least 4"):
        calibrate(rows, H200)


def test_terms_the_rows_cannot_separate_are_refused():
    """One batch size and one workload: the per-step and per-sequence times trade off exactly."""
    rows = synthetic(batches=(32,), workloads=((4096, 1024),))
    with pytest.raises(UserError, match="not separately determined by these rows .* --fix"):
        calibrate(rows, H200, free=("t_step", "t_seq"))


def test_a_fit_on_a_bound_is_refused():
    """Rows made with a larger KV efficiency than the fixed one need a negative per-sequence time: refused."""
    rows = synthetic(CostTerms(eta_weights=0.55, eta_kv=1.0, t_step=1.5e-3, t_seq=0.0))
    with pytest.raises(UserError, match="term t_seq .* ended on its lower bound 0"):
        calibrate(rows, H200, free=("t_step", "t_seq"), fixed={"eta_kv": 0.6, "eta_weights": 0.55})


def test_rows_of_mixed_units_are_refused():
    rows = pd.concat([synthetic(unit="total").head(6), synthetic(unit="output").iloc[6:]], ignore_index=True)
    with pytest.raises(UserError, match=r"rows of mixed units: row\(s\) \[1, 2, 3\] give only total tokens/s"):
        calibrate(rows, H200)


def test_rows_of_one_unit_are_fitted_in_that_unit():
    two, one_workload = ("llama-3.2-1b", "surefire-1b"), ((4096, 1024),)
    assert calibrate(synthetic(models=two, workloads=one_workload, unit="total"), H200).unit == "total"
    output = calibrate(synthetic(models=two, workloads=one_workload, unit="output"), H200)
    assert output.summary["unit"] == "output tokens/s"
    # three rows of one architecture cannot calibrate three terms: leave-one-out says why instead of guessing
    assert "3 rows cannot calibrate 3 terms" in output.summary["leave_one_architecture_out"]["refused"]["llama-3.2-1b"]


def test_other_mistakes_are_refused():
    rows = synthetic()
    with pytest.raises(UserError, match="no measured ok rows .* devices: h200"):
        calibrate(rows, A100)
    with pytest.raises(UserError, match="unknown cost term 'eta'"):
        calibrate(rows, H200, free=("eta",))
    with pytest.raises(UserError, match="both fitted .* and fixed"):
        calibrate(rows, H200, fixed={"t_seq": 0.0})
    # a held value out of its bounds names the flag and the range, not only the term
    with pytest.raises(UserError, match=r"^--fix eta_kv=-1: eta_kv must be in \[0.02, 1\]; give a value"):
        calibrate(rows, H200, free=("eta_compute",), fixed={"eta_kv": -1.0})
    two_dtypes = pd.concat([rows, rows.assign(dtype="float16")], ignore_index=True)
    with pytest.raises(UserError, match="several dtypes .* --dtype"):
        calibrate(two_dtypes, H200)
    with pytest.raises(UserError, match="holds out every row"):
        calibrate(rows, H200, holdout=np.ones(len(rows), bool))


# ---- finding profiles --------------------------------------------------------------------------
def test_profiles_match_engine_device_and_dtype_only():
    assert resolve_profile(None, H200, "vllm").name == "vllm-h200-bf16"
    # none shipped for H100: the nearest measured device's profile stands in, carried over and saying so
    assert resolve_profile(None, load_gpu("h100-sxm"), "vllm").transferred_from == "vllm-h200-bf16"
    assert resolve_profile(None, H200, "vllm").transferred_from is None
    assert not resolve_profile(None, H200, "sglang").calibrated
    assert not resolve_profile(None, H200, "vllm", "float16").calibrated
    assert not resolve_profile("none", H200, "vllm").calibrated
    assert resolve_profile("vllm-a100-40gb-bf16", A100).calibrated


def test_a_profile_for_another_device_or_engine_is_refused():
    with pytest.raises(UserError, match="fitted on a100-40gb, not h200; a profile holds only for the device"):
        resolve_profile("vllm-a100-40gb-bf16", H200)
    with pytest.raises(UserError, match="fitted for engine 'vllm', not 'torch'"):
        resolve_profile(str(SHIPPED_DIR / "vllm-h200-bf16.json"), H200, "torch")
    with pytest.raises(UserError, match=r"no such profile file or name \(known profiles: .*vllm-h200-bf16"):
        resolve_profile("vllm-b200", H200)


def test_user_profile_directories_come_first(tmp_path, monkeypatch):
    profile = calibrate(synthetic(), H200, name="mine").profile
    from archscale.serving import save_profile

    save_profile(profile, tmp_path / "mine.json")
    monkeypatch.setenv(ENV_DIRS, str(tmp_path))
    found = resolve_profile(None, H200, "vllm")
    assert found.name == "mine" and found.terms == profile.terms


def test_a_broken_profile_file_is_one_line(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"kind": "archscale-throughput-profile", "name": "x"}))
    with pytest.raises(UserError, match="profile is missing 'device'"):
        load_profile(path)
    path.write_text(json.dumps({"law": "chinchilla"}))
    with pytest.raises(UserError, match="not an archscale throughput profile"):
        load_profile(path)


# ---- CLI -----------------------------------------------------------------------------------------
def _one_line(r, fragment: str) -> None:
    assert r.code == 2, (r.out, r.err)
    lines = [line for line in r.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], r.err


def test_calibrate_cli_saves_a_profile_that_bench_and_search_use(cli, tmp_path):
    store = tmp_path / "measured.sqlite"
    append(store, synthetic().to_dict("records"))
    append(store, [{**synthetic().iloc[0].to_dict(), "gpu": "a100-40gb"}])  # another device's row is not fitted
    saved = tmp_path / "mine.json"
    r = cli("bench", "calibrate", "--store", store, "--gpu", "h200", "--holdout", "name == 'olmo-2-1b'", "--out", saved,
            "--name", "mine-h200")
    assert r.code == 0, r.err
    assert "held-out rows: |error| mean 0.0%" in r.out and "leave one architecture out" in r.out
    assert "t_seq" in r.out and "fitted" in r.out and f"saved profile to {saved}" in r.out
    assert load_profile(saved).name == "mine-h200"
    unnamed = tmp_path / "my-h200.json"  # without --name, the file's name: not the shipped vllm-h200-bf16's
    assert cli("bench", "calibrate", "--store", store, "--gpu", "h200", "--out", unnamed).code == 0
    assert load_profile(unnamed).name == "my-h200"
    r = cli("bench", "surefire-1b", "--backend", "roofline", "--gpu", "h200", "--batch-sizes", "32", "--input-len", "4096",
            "--output-len", "1024", "--profile", saved, "--json")
    assert r.code == 0, r.err
    row = json.loads(r.out)[0]
    expected = synthetic(models=("surefire-1b",), batches=(32,), workloads=((4096, 1024),)).iloc[0]
    assert row["profile"] == "mine-h200" and row["output_tokens_per_s"] == pytest.approx(expected["output_tokens_per_s"], rel=1e-4)


def test_bench_and_search_say_which_profile_they_used(cli):
    r = cli("bench", "llama-3.2-1b", "--backend", "roofline", "--gpu", "h200", "--batch-sizes", "64", "--input-len", "4096",
            "--output-len", "1024", "--no-progress")
    assert r.code == 0 and "estimates from profile vllm-h200-bf16" in r.out and "is vllm-h200-bf16" in r.out
    r = cli("bench", "llama-3.2-1b", "--backend", "roofline", "--gpu", "h100-sxm", "--batch-sizes", "64", "--no-progress")
    assert r.code == 0 and "transferred from profile vllm-h200-bf16" in " ".join(r.out.split())
    r = cli("bench", "llama-3.2-1b", "--backend", "roofline", "--gpu", "h100-sxm", "--batch-sizes", "64", "--profile", "none",
            "--no-progress")
    assert r.code == 0 and "uncalibrated roofline on h100-sxm" in r.out
    r = cli("search", "--fit", DATA / "fits" / "dissertation_1b_mult.json", "--n", "1e9", "--tokens", "1e11", "--layers", "16",
            "--head-dim", "64", "--match", "llama-3.2-1b", "--gpu", "h200", "--batch", "64", "--top-k", "1")
    assert r.code == 0, r.err
    line = next(line for line in r.out.splitlines() if line.startswith("top pick vs llama-3.2-1b"))
    speedup = float(line.split(": ")[1].split("x")[0])
    assert 1.0 < speedup < 1.5  # the uncalibrated roofline said 1.8x; Table 6.3 measured 1.05-1.21x for Surefire-1B
    assert "source: profile vllm-h200-bf16 (held-out speedup error" in line


def test_kv_limited_and_oversized_batches_are_marked(cli, tmp_path):
    store = tmp_path / "est.sqlite"
    r = cli("bench", "llama-3.2-3b", "--backend", "roofline", "--gpu", "a100-40gb", "--batch-sizes", "128",
            "--input-len", "4096", "--output-len", "1024", "--store", store, "--no-progress")
    assert r.code == 0 and "KV cache holds" in r.out and "waves" in r.out
    row = load_results(store).iloc[0]
    assert 0 < row["concurrency"] < 128 and row["memory_gb"] <= 40 * 2**30 / 1e9  # memory used, not wished for
    small = tmp_path / "small.json"
    small.write_text(json.dumps({"name": "small", "bf16_tflops": 100, "hbm_tb_s": 1, "memory_gb": 4, "interconnect_gb_s": 1}))
    r = cli("bench", "llama-3.2-3b", "--backend", "roofline", "--gpu", "small", "--gpu-file", small, "--batch-sizes", "1",
            "--store", store, "--no-progress")
    assert r.code == 2 and "weights alone do not fit" in r.err  # every row failed, and is recorded as such
    assert load_results(store).iloc[-1]["status"] == "failed"


@pytest.mark.parametrize("args, fragment", [
    (["arch", "llama-3.2-1b", "--gpu", "h100-sxm", "--tp", "3"], "--tp 3 does not split 32 query heads and 8 KV heads"),
    (["arch", "llama-3.2-1b", "--tp", "3"], "--tp 3 does not split"),
    (["bench", "llama-3.2-1b", "--backend", "roofline", "--gpu", "h100-sxm", "--tp", "3"], "--tp 3 does not split"),
    (["bench", "llama-3.2-1b", "--backend", "roofline", "--gpu", "h200", "--profile", "vllm-a100-40gb-bf16"],
     "fitted on a100-40gb, not h200"),
    (["bench", "llama-3.2-1b", "--backend", "roofline", "--gpu", "h200", "--profile", "nope"], "no such profile file or name"),
    (["bench", "llama-3.2-1b", "--backend", "torch", "--profile", "none"], "--profile applies to --backend roofline only"),
    (["bench", "calibrate", "--store", str(PUBLISHED), "--gpu", "h200", "--fit", "eta_compute,eta_weights,eta_kv",
      "--holdout", "source != 'dissertation Table 6.3' or not name.str.startswith('llama')"], "ended on its upper bound"),
    (["bench", "calibrate", "--store", str(PUBLISHED), "--gpu", "h200", "--fix", "t_seq"], "--fix 't_seq': expected NAME=NUMBER"),
    (["bench", "calibrate", "--store", str(PUBLISHED), "--gpu", "l4"], "no measured ok rows"),
    (["bench", "calibrate", "--store", str(PUBLISHED), "--gpu", "h200", "--out", "p.txt"], "writes a JSON file; use a name ending in .json"),
    (["bench", "llama-3.2-1b", "--backend", "roofline", "--gpu", "h200", "--fit", "t_seq"], "--fit is an option of archscale bench calibrate"),
    (["search", "--fit", str(DATA / "fits" / "dissertation_1b_mult.json"), "--n", "1e9", "--tokens", "1e11", "--layers", "16",
      "--gpu", "h200", "--profile", "vllm-a100-40gb-bf16"], "fitted on a100-40gb, not h200"),
])
def test_bad_input_is_one_line(cli, tmp_path, monkeypatch, args, fragment):
    monkeypatch.chdir(tmp_path)
    before = PUBLISHED.read_bytes()
    _one_line(cli(*args), fragment)
    assert PUBLISHED.read_bytes() == before and not list(Path(tmp_path).iterdir())


# ---- CPU rows: a device entry from the probe, and a profile of their own --------------------------
def test_cpu_probe_reads_the_vector_units_and_measures_copy_bandwidth(tmp_path, monkeypatch):
    from archscale.serving import probe

    assert probe.peak_flops_per_cycle({"avx512f", "avx2", "fma"}) == 64
    assert probe.peak_flops_per_cycle({"avx2", "fma", "avx"}) == 32
    assert probe.peak_flops_per_cycle({"sse2"}) == 8
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\ncpu MHz\t\t: 3000.0\nflags\t\t: fpu sse2 avx avx2 fma\n")
    flags_and_clock = probe._cpuinfo(fake)
    assert flags_and_clock == ({"fpu", "sse2", "avx", "avx2", "fma"}, 3000.0)
    monkeypatch.setattr(probe, "_cpuinfo", lambda: flags_and_clock)
    result = probe.probe_cpu("mycpu", threads=1)
    assert result.device.name == "mycpu"
    assert result.device.bf16_tflops == pytest.approx(max(32 * 3000e6, result.matmul_flops) / 1e12)
    assert result.copy_bytes_per_s > 1e8 and result.matmul_flops > 1e8 and result.device.memory_gb > 0


def test_torch_rows_on_a_cpu_calibrate_a_profile_of_their_own(cli, tmp_path):
    """Before profiles, `bench calibrate` refused CPU rows ("unknown GPU 'cpu'"); a probed device entry makes them usable."""
    device_file = tmp_path / "cpu.json"
    assert cli("bench", "probe", "--threads", "1", "--out", device_file).code == 0
    cpu = load_gpu("cpu", device_file)
    truth = CostTerms(eta_weights=0.4, t_step=2e-3, t_seq=1e-4)
    rows = synthetic(truth, device=cpu, models=("llama-3.2-1b", "surefire-1b", "panda-1b"), batches=(1, 4, 16),
                     workloads=((128, 32),), settings=EngineSettings(kv_cache_gib=4), dtype="float32")
    rows["backend"] = "torch"
    store = tmp_path / "cpu.sqlite"
    append(store, rows.to_dict("records"))
    saved = tmp_path / "torch-cpu.json"
    r = cli("bench", "calibrate", "--store", store, "--gpu", "cpu", "--gpu-file", device_file, "--engine", "torch",
            "--kv-cache-gib", "4", "--out", saved)
    assert r.code == 0, r.err
    profile = load_profile(saved)
    assert (profile.engine, profile.device.name, profile.dtype) == ("torch", "cpu", "float32")
    assert profile.terms.t_seq == pytest.approx(1e-4, rel=1e-3) and profile.settings.kv_cache_gib == 4
    r = cli("bench", "calibrate", "--store", store, "--gpu", "cpu", "--engine", "torch")
    assert r.code == 2 and "unknown GPU 'cpu'" in r.err and "bench probe" in r.err


def test_fit_auto_chooses_the_terms_that_predict_left_out_architectures():
    """Rows made with a low compute efficiency: the default terms (eta_compute fixed) predict left-out shapes worse."""
    truth = CostTerms(eta_compute=0.35, eta_weights=0.55, t_step=1.5e-3, t_seq=4e-5)
    rows = synthetic(truth, batches=(8, 64), workloads=((4096, 256), (512, 512)))
    result = calibrate(rows, H200, free="auto", holdout=(rows["name"] == "olmo-2-1b").to_numpy())
    assert "eta_compute" in result.profile.fitted
    assert result.profile.terms.eta_compute == pytest.approx(0.35, rel=1e-3)
    table = {tuple(row["terms"]): row for row in result.summary["term_selection"]}
    assert "ended on its upper bound" in table[("eta_weights", "t_step", "t_seq")]["refused"]  # not eligible, and why
    assert result.profile.fitted == ("eta_compute", "eta_weights", "t_step", "t_seq")  # the smallest set that fits
    assert result.summary["heldout"]["max_abs_rel_err"] < 1e-4  # the held-out architecture, never seen by the choice


def test_calibrate_takes_the_engine_prefill_chunk_and_staggered_arrival_and_the_profile_keeps_them(cli, tmp_path):
    """Rows made by an engine with passes of 4,096 tokens that starts on the first prompt alone (vLLM's offline LLM on
    a CPU): calibrated with those settings, the terms come back exactly and the profile carries the settings to every
    later estimate; with the defaults (8,192, all prompts at once), the same rows fit worse. A chunk of 0 is one line."""
    vllm_cpu = EngineSettings(prefill_chunk_tokens=4096, first_prompt_alone=True)
    rows = synthetic(TRUTH, batches=(4, 16, 64), workloads=((320, 32), (1024, 64)), settings=vllm_cpu)
    store = tmp_path / "rows.sqlite"
    append(store, rows.to_dict("records"))
    saved = tmp_path / "vllm-cpu-like.json"
    r = cli("bench", "calibrate", "--store", store, "--gpu", "h200", "--prefill-chunk", "4096", "--first-prompt-alone",
            "--out", saved)
    assert r.code == 0, r.err
    profile = load_profile(saved)
    assert (profile.settings.prefill_chunk_tokens, profile.settings.first_prompt_alone) == (4096, True)
    for name in ("eta_weights", "t_step", "t_seq"):
        assert getattr(profile.terms, name) == pytest.approx(getattr(TRUTH, name), rel=1e-4), name
    matched = calibrate(rows, H200, settings=vllm_cpu).summary["fit"]["max_abs_rel_err"]
    default = calibrate(rows, H200).summary["fit"]["max_abs_rel_err"]
    assert matched < 1e-5 < default
    r = cli("bench", "calibrate", "--store", store, "--gpu", "h200", "--prefill-chunk", "0")
    _one_line(r, "--prefill-chunk must be a positive number of tokens, got 0")


def test_calibrate_takes_the_engine_settings_the_rows_recorded(cli, tmp_path):
    """Rows that recorded their engine's prefill chunk and that it started on the first request alone (as `archscale
    bench --backend vllm` records them) calibrate with those settings without a flag, and say so; a flag overrides
    them; rows that recorded different prefill chunks are one line naming the column and the flag."""
    vllm_cpu = EngineSettings(prefill_chunk_tokens=4096, first_prompt_alone=True)
    rows = synthetic(TRUTH, batches=(4, 16, 64), workloads=((320, 32), (1024, 64)), settings=vllm_cpu)
    rows["prefill_chunk_tokens"] = 4096
    rows["first_prompt_alone"] = np.where(rows["batch_size"] == 4, 0.5, 1.0)  # a race: half the repeats at batch 4
    store = tmp_path / "rows.sqlite"
    append(store, rows.to_dict("records"))
    saved = tmp_path / "from-rows.json"
    r = cli("bench", "calibrate", "--store", store, "--gpu", "h200", "--out", saved)
    assert r.code == 0, r.err
    said = " ".join(r.out.split())
    assert "engine settings as the rows recorded them: prefill_chunk_tokens 4096 (recorded in 24 of the 24 rows)" in said
    assert "first_prompt_alone True (the engine started on the first request alone in some repeat of 24 of the 24" in said
    profile = load_profile(saved)
    assert (profile.settings.prefill_chunk_tokens, profile.settings.first_prompt_alone) == (4096, True)
    assert profile.terms.t_step == pytest.approx(TRUTH.t_step, rel=1e-4)
    overridden = tmp_path / "overridden.json"
    r = cli("bench", "calibrate", "--store", store, "--gpu", "h200", "--all-prompts-at-once", "--out", overridden)
    assert r.code == 0, r.err
    assert load_profile(overridden).settings.first_prompt_alone is False
    mixed = rows.copy()
    mixed.loc[mixed["batch_size"] == 4, "prefill_chunk_tokens"] = 8192
    mixed_store = tmp_path / "mixed.sqlite"
    append(mixed_store, mixed.to_dict("records"))
    r = cli("bench", "calibrate", "--store", mixed_store, "--gpu", "h200")
    _one_line(r, "the rows recorded prefill_chunk_tokens 4096, 8192")
    assert "--prefill-chunk" in r.err


def test_terms_print_in_their_units_and_rates_say_per_what():
    from archscale.bench.calibrate import format_term

    assert format_term("eta_kv", 0.2851) == "0.285"
    assert format_term("t_step", 0.0104) == "10.4 ms" and format_term("t_seq", 9.82e-5) == "98.2 us"
    assert format_term("t_expert_gb", 0.055) == "55 ms per GB"
    assert format_term("t_attn_gflop", 0.0256) == "25.6 ms per GFLOP"
    assert format_term("t_attn_gflop", 0.0) == "0"


@pytest.mark.parametrize("flag, value, fragment", [
    ("--memory-fraction", "1.5", "--memory-fraction must be in (0, 1]"),
    ("--kv-cache-gib", "-4", "--kv-cache-gib must be a positive number of GiB"),
    ("--max-num-seqs", "0", "'--max-num-seqs'"),
])
def test_calibrates_engine_settings_are_named_by_their_flags(cli, tmp_path, flag, value, fragment):
    """They were refused in the model's own names (reserved_gib, max_num_seqs), one of them a flag the user never set."""
    result = cli("bench", "calibrate", "--store", tmp_path / "none.sqlite", "--gpu", "h200", flag, value)
    assert result.code == 2 and fragment in result.err and len(result.err.strip().splitlines()) == 1, result.err


# ---- calibrate's flags: refused in one line, naming the flag ----------------------------------------
@pytest.mark.parametrize("args, fragment", [
    (["--kv-cache-gib", "1e300"], "--kv-cache-gib 1e+300 is more than h200's 141 GiB"),
    (["--memory-fraction", "0.3", "--kv-cache-gib", "8"], "--memory-fraction does not apply with --kv-cache-gib"),
    (["--fit", "eta_weights,,t_step"], "--fit 'eta_weights,,t_step': an empty term"),
    (["--fit", ""], "--fit '': an empty term"),
    (["--name", ""], "--name is empty"),
    (["--name", " ", "--out", "p.json"], "--name is empty"),
    (["--dtype", "float16"], "in float16: no measured ok rows (found engines: sglang, vllm; devices: a100-40gb, h200; "
                             "dtypes: bfloat16)"),
])
def test_calibrate_refuses_flags_it_would_misuse(cli, tmp_path, monkeypatch, args, fragment):
    monkeypatch.chdir(tmp_path)
    _one_line(cli("bench", "calibrate", "--store", PUBLISHED, "--gpu", "h200", "--engine", "vllm", *args), fragment)
    assert not list(Path(tmp_path).iterdir())


def test_a_kv_cache_within_the_device_is_taken(cli):
    r = cli("bench", "calibrate", "--store", PUBLISHED, "--gpu", "h200", "--engine", "vllm", "--kv-cache-gib", "100",
            "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["profile"]["settings"]["kv_cache_gib"] == 100


def test_calibrate_refuses_an_empty_store_naming_it(cli, tmp_path):
    empty = tmp_path / "e.sqlite"
    empty.touch()
    no_rows = tmp_path / "z.sqlite"
    append(no_rows, synthetic().head(1).to_dict("records"))
    import sqlite3

    with sqlite3.connect(no_rows) as connection:
        connection.execute("DELETE FROM results")
    header_only = tmp_path / "h.csv"
    header_only.write_text("name,backend,gpu,dtype,tokens_per_s\n")
    for store in (empty, no_rows, header_only):
        _one_line(cli("bench", "calibrate", "--store", store, "--gpu", "h200"), f"--store {store}: the store is empty")
