"""``archscale bench``: torch on CPU end to end, the store, calibration, bad input (vLLM: test_vllm*.py)."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3

import numpy as np
import pandas as pd
import pytest

from archscale.shapes.architecture import PRESETS, Architecture
from archscale.bench import records as records_module
from archscale.bench.records import COLUMN_TYPES, COLUMNS, LATENCY_COLUMNS, config_hash, gpu_key_for_device, \
    latency_fields, make_record
from archscale.bench.store import append, load_results
from archscale.bench.sweep import resolve_targets, run_sweep
from archscale.bench.types import BenchOptions
from archscale.serving.devices import load_gpu
from archscale.shapes.hf_config import write_hf_config
from conftest import DATA
from helpers import TINY_128, TINY_160, assert_one_line_error, assert_plausible_latencies, one_line_error, write_config


# ---- torch backend, through the CLI ---------------------------------------------------
def test_torch_backend_measures_two_tiny_configs_on_cpu(cli, tiny_dirs, tmp_path, one_thread):
    store = tmp_path / "bench.sqlite"
    r = cli("bench", *tiny_dirs, "--backend", "torch", "--batch-sizes", "1,4", "--input-len", "16", "--output-len", "8",
            "--repeats", "2", "--store", store, "--no-progress")
    assert r.code == 0, r.err
    rows = load_results(store)
    assert len(rows) == 4
    assert list(rows["name"]) == ["tiny128", "tiny128", "tiny160", "tiny160"]
    assert list(rows["batch_size"]) == [1, 4, 1, 4]
    # on a busy machine two repeats of a millisecond workload can disagree by over 20%: such a row is "noisy", not "ok"
    measured = rows["status"].isin(["ok", "noisy"])
    assert measured.all() and rows.loc[rows["status"] == "ok", "error"].isna().all()
    assert (rows["tokens_per_s"] > 0).all() and (rows["output_tokens_per_s"] > 0).all()
    assert (rows["prefill_s"] > 0).all() and (rows["decode_s"] > 0).all()
    assert list(rows["output_tokens"]) == [8, 32, 8, 32]  # counted: batch x output_len
    # total tokens/s counts prompt and output tokens; output tokens/s is its output_len / (in + out) share
    assert np.allclose(rows["output_tokens_per_s"] / rows["tokens_per_s"], 8 / 24)
    assert set(rows["gpu"]) == {"cpu"} and set(rows["dtype"]) == {"float32"} and set(rows["backend"]) == {"torch"}
    assert rows.loc[2, "d_model"] == 160 and rows.loc[2, "n_heads"] == 6 and rows.loc[2, "d_head"] == 32
    assert rows.loc[0, "config_hash"] == config_hash(TINY_128) != rows.loc[2, "config_hash"]
    assert rows["torch_version"].notna().all() and rows["timestamp"].notna().all()
    assert "tiny160" in r.out and "appended 4 records to" in r.err
    # latency: the batch prefills together (TTFT = prefill), then decodes a token a step; each step timed on CPU
    assert_plausible_latencies(rows)
    assert np.allclose(rows["ttft_ms_mean"], 1e3 * rows["prefill_s"])
    assert np.allclose(rows["tpot_ms_mean"], 1e3 * rows["decode_s"] / 7)
    assert (rows["itl_ms_mean"] <= rows["tpot_ms_mean"] * (1 + 1e-9)).all()  # the steps, without the final sync
    shown = cli("bench", "--show", "--store", store).out
    assert "TTFT p50/p99 ms" in shown and "TPOT p50/p99 ms" in shown and "tiny160" in shown


def test_show_json_and_csv_export_read_back(cli, tiny_dirs, tmp_path):
    store = tmp_path / "bench.sqlite"
    assert cli("bench", "llama-3.2-1b", "surefire-1b", "--backend", "roofline", "--gpu", "h100-sxm", "--profile", "none",
               "--batch-sizes", "16,64", "--input-len", "4096", "--output-len", "1024", "--store", store).code == 0
    shown = cli("bench", "--show", "--store", store)
    assert shown.code == 0 and "surefire-1b" in shown.out and "roofline" in shown.out
    payload = json.loads(cli("bench", "--show", "--store", store, "--json").out)
    assert [row["batch_size"] for row in payload] == [16, 64, 16, 64]
    assert all(row["profile"] == "uncalibrated" for row in payload)  # --profile none
    csv_path = tmp_path / "bench.csv"
    assert cli("bench", "--show", "--store", store, "--export", csv_path).code == 0
    from_csv, from_store = load_results(csv_path), load_results(store)
    assert list(from_csv.columns[:len(COLUMNS)]) == list(COLUMNS)
    pd.testing.assert_frame_equal(from_csv[["config_hash", "gpu", "batch_size", "tokens_per_s", "tie_embeddings"]],
                                  from_store[["config_hash", "gpu", "batch_size", "tokens_per_s", "tie_embeddings"]],
                                  check_dtype=False)


def test_latency_fields_are_milliseconds_with_linear_percentiles():
    fields = latency_fields([0.1, 0.2, 0.3, 0.4], [0.010, 0.030], None, itl_mean_s=0.02)
    assert list(fields) == list(LATENCY_COLUMNS)
    ttft = [fields[f"ttft_ms_{s}"] for s in ("mean", "p50", "p90", "p99")]
    assert ttft == pytest.approx([250.0, 250.0, 370.0, 397.0])  # linear: p90 sits 0.7 of the way from 300 to 400
    assert [fields[f"tpot_ms_{s}"] for s in ("mean", "p50", "p99")] == pytest.approx([20.0, 20.0, 29.8])
    # no gaps timed: the ITL mean given is kept, its percentiles are not invented
    assert fields["itl_ms_mean"] == pytest.approx(20.0) and fields["itl_ms_p50"] is None and fields["itl_ms_p99"] is None
    gaps = latency_fields(None, [], [0.001, 0.002, 0.003], itl_mean_s=99.0)
    assert all(gaps[f"{m}_ms_{s}"] is None for m in ("ttft", "tpot") for s in ("mean", "p50", "p90", "p99"))
    assert gaps["itl_ms_mean"] == pytest.approx(2.0) and gaps["itl_ms_p90"] == pytest.approx(2.8)  # measured gaps win


def test_torch_latencies_share_the_batch_and_leave_untimed_steps_out():
    from archscale.bench.torch_backend import Timing, batch_latencies

    timed = [Timing(0.5, 0.3, 8, (0.1, 0.1, 0.1)), Timing(0.7, 0.6, 8, (0.1, 0.2, 0.3))]
    fields = batch_latencies(2, 4, timed)
    assert fields["ttft_ms_p50"] == pytest.approx(600.0) and fields["ttft_ms_mean"] == pytest.approx(600.0)
    assert fields["tpot_ms_mean"] == pytest.approx(150.0)  # (0.3 + 0.6) / 2 repeats / 3 gaps
    assert fields["itl_ms_mean"] == pytest.approx(150.0) and fields["itl_ms_p99"] == pytest.approx(300.0)
    untimed = batch_latencies(2, 4, [Timing(0.5, 0.3, 8), Timing(0.7, 0.6, 8)])  # CUDA: no sync per step
    assert untimed["itl_ms_mean"] == pytest.approx(150.0) and untimed["itl_ms_p50"] is None
    one_token = batch_latencies(2, 1, [Timing(0.5, 0.0, 2, ())])
    assert one_token["ttft_ms_mean"] == pytest.approx(500.0)
    assert one_token["tpot_ms_mean"] is None and one_token["itl_ms_mean"] is None  # one token: no gap to time


def test_roofline_rows_equal_estimate_throughput(tmp_path):
    from archscale.serving.estimate import Workload, estimate_throughput

    options = BenchOptions(backend="roofline", gpu="h100-sxm", batch_sizes=(16, 128), input_len=4096, output_len=1024,
                           profile="none")
    result = run_sweep(resolve_targets(["surefire-1b"]), options)
    expected = estimate_throughput(PRESETS["surefire-1b"], load_gpu("h100-sxm"), Workload(128, 4096, 1024))
    assert result.records[1]["tokens_per_s"] == pytest.approx(expected.total_tokens_per_s)
    assert result.records[1]["decode_s"] == pytest.approx(expected.decode_s)


def test_roofline_rows_carry_the_models_latency_in_the_measured_columns():
    from archscale.serving.estimate import Workload, estimate_throughput_many

    options = BenchOptions(backend="roofline", gpu="h100-sxm", batch_sizes=(1, 32), input_len=2048, output_len=256,
                           profile="none")
    record = run_sweep(resolve_targets(["surefire-1b"]), options).records[1]
    frame = pd.DataFrame([PRESETS["surefire-1b"].shape_columns()])
    expected = estimate_throughput_many(frame, load_gpu("h100-sxm"), Workload(32, 2048, 256)).iloc[0]
    assert all(record[c] == pytest.approx(float(expected[c])) for c in LATENCY_COLUMNS)
    assert record["ttft_ms_p50"] < record["ttft_ms_p99"]  # 32 prompts of 2048 tokens take 8 prefill passes


# ---- failures are records, and the sweep goes on --------------------------------------
def test_config_that_does_not_fit_is_recorded_and_sweep_continues(cli, tiny_dirs, tmp_path, one_thread):
    huge = write_config(tmp_path / "huge", Architecture(2, 4096, 32, 8, 128, 8192, vocab_size=2_000_000_000))
    store = tmp_path / "bench.sqlite"
    r = cli("bench", huge, tiny_dirs[0], "--backend", "torch", "--batch-sizes", "1", "--input-len", "8",
            "--output-len", "4", "--repeats", "1", "--store", store, "--no-progress")
    assert r.code == 0, r.err
    rows = load_results(store)
    assert list(rows["status"]) == ["failed", "ok"]
    assert rows.loc[0, "error"].startswith("needs ") and "GB, device has" in rows.loc[0, "error"]
    assert pd.isna(rows.loc[0, "tokens_per_s"])
    assert "failed: huge batch 1: needs" in r.err

    alone = cli("bench", huge, "--backend", "torch", "--batch-sizes", "1", "--input-len", "8", "--output-len", "4",
                "--repeats", "1", "--store", store, "--no-progress")
    assert alone.code == 2 and "every benchmark failed" in alone.err
    assert len(load_results(store)) == 3  # the failure is still recorded


def test_out_of_memory_during_a_run_is_recorded(monkeypatch, tmp_path, one_thread):
    import torch

    from archscale.bench import torch_backend

    real_generate = torch_backend.generate

    def generate(step, prompts, output_len, chunk, synchronize, time_steps=False):
        if prompts.shape[0] == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return real_generate(step, prompts, output_len, chunk, synchronize, time_steps)

    monkeypatch.setattr(torch_backend, "generate", generate)
    ticks = []
    from archscale.bench.sweep import Hooks

    options = BenchOptions(backend="torch", device="cpu", batch_sizes=(2, 3), input_len=8, output_len=4, repeats=2)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "config.json").write_text(json.dumps(write_hf_config(TINY_128)))
    result = run_sweep(resolve_targets([str(tmp_path / "c")]), options, tmp_path / "b.db", Hooks(advanced=ticks.append))
    assert result.records[0]["status"] == "failed" and result.records[1]["status"] in ("ok", "noisy")  # noisy: busy machine
    assert result.records[0]["error"].startswith("out of memory during the run: CUDA out of memory")
    assert all(result.records[0][name] is None for name in LATENCY_COLUMNS)
    assert result.records[1]["ttft_ms_p50"] > 0
    assert sum(ticks) == 4  # the progress bar still reaches its total
    assert len(load_results(tmp_path / "b.db")) == 2


def test_chunked_prefill_matches_whole_prompt_and_decodes_every_position(one_thread):
    import torch

    from archscale.bench.torch_backend import build_model, generate

    model = build_model(TINY_160, 32, torch.device("cpu"), "float32", seed=1)
    prompts = torch.randint(0, TINY_160.vocab_size, (3, 20), generator=torch.Generator().manual_seed(0))
    calls, tokens = [], {}

    def recording(chunk_size):
        def step(idx, start, last_only=False):
            calls.append((chunk_size, start, idx.shape[1]))
            logits = model.forward_step(idx, start, last_only=last_only)
            tokens.setdefault(chunk_size, []).append(logits[:, -1].argmax(-1))
            return logits
        return step

    with torch.inference_mode():
        for chunk_size in (20, 8):
            model.allocate_kv_cache(3, 32)
            timing = generate(recording(chunk_size), prompts, 6, chunk_size, lambda: None, time_steps=True)
            assert timing.tokens == 3 * 6
            # one time per decode step (the first token comes from the prefill), within the decode's time
            assert len(timing.step_s) == 5 and min(timing.step_s) > 0 and sum(timing.step_s) <= timing.decode_s
    assert [(s, n) for c, s, n in calls if c == 8] == [(0, 8), (8, 8), (16, 4), (20, 1), (21, 1), (22, 1), (23, 1), (24, 1)]
    whole, chunked = tokens[20], tokens[8][2:]  # from the last prefill call on, the same tokens
    assert all(torch.equal(a, b) for a, b in zip(whole, chunked))


def test_prefill_is_chunked_to_fit_the_workspace():
    from archscale.model.memory import memory_needed, prefill_chunk, workspace_budget

    arch = PRESETS["llama-3.2-1b"]
    budget = workspace_budget(arch, 128, 4096, 1024, 2, available=79 * 2**30)
    chunk = prefill_chunk(arch, 128, 4096, 2, budget)
    assert 1 <= chunk < 4096  # logits for 128 x 4096 positions alone would be 134 GB
    assert memory_needed(arch, 128, 4096, 1024, 2, chunk) < 79 * 2**30
    assert prefill_chunk(TINY_128, 4, 32, 4, budget) == 32


def test_interrupt_keeps_what_was_measured(monkeypatch, tmp_path):
    from archscale.serving.profiles import Profile

    real = Profile.estimate
    calls = []

    def estimate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(Profile, "estimate", estimate)
    options = BenchOptions(backend="roofline", gpu="a100-40gb", batch_sizes=(1, 2, 4, 8))
    result = run_sweep(resolve_targets(["llama-3.2-1b"]), options, tmp_path / "b.sqlite")
    assert result.interrupted and len(result.records) == 2
    assert list(load_results(tmp_path / "b.sqlite")["batch_size"]) == [1, 2]


def test_interrupted_cli_run_exits_130_and_keeps_rows(cli, monkeypatch, tmp_path):
    from archscale.serving.profiles import Profile

    real, calls = Profile.estimate, []

    def estimate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(Profile, "estimate", estimate)
    store = tmp_path / "b.sqlite"
    r = cli("bench", "llama-3.2-1b", "--backend", "roofline", "--gpu", "h200", "--batch-sizes", "1,2,4", "--store", store)
    assert r.code == 130 and "interrupted: 1 records appended to" in r.err
    assert list(load_results(store)["batch_size"]) == [1]


# ---- the store -----------------------------------------------------------------------------
def _rows_for(writer: int, count: int) -> list[dict]:
    base = make_record(TINY_128, "tiny", "torch", {"batch_size": 1, "input_len": 8, "output_len": 4, "repeats": 1, "tp": 1},
                       {"gpu": "cpu", "tokens_per_s": 1.0})
    return [{**base, "batch_size": writer * 100_000 + i, "tokens_per_s": float(i), "error": f"w{writer}-{i}"}
            for i in range(count)]


def _append_one_at_a_time(path: str, writer: int, count: int) -> None:
    for row in _rows_for(writer, count):
        append(path, [row])


def test_concurrent_appends_lose_nothing(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    writers, count = 4, 150
    processes = [context.Process(target=_append_one_at_a_time, args=(path, w, count)) for w in range(writers)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=120)
    assert [p.exitcode for p in processes] == [0] * writers
    rows = load_results(path)
    assert len(rows) == writers * count
    expected = {f"w{w}-{i}": (w * 100_000 + i, float(i)) for w in range(writers) for i in range(count)}
    got = {e: (b, t) for e, b, t in zip(rows["error"], rows["batch_size"], rows["tokens_per_s"])}
    assert got == expected
    assert (rows["config_hash"] == config_hash(TINY_128)).all() and (rows["tie_embeddings"] == False).all()  # noqa: E712
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_store_rejects_unknown_columns_and_reads_missing_columns(tmp_path):
    with pytest.raises(ValueError, match="unknown column"):
        append(tmp_path / "s.sqlite", [{"config_hash": "x", "bogus": 1}])
    assert not (tmp_path / "s.sqlite").exists() or load_results(tmp_path / "s.sqlite").empty
    csv_path = tmp_path / "old.csv"
    pd.DataFrame([{"n_layers": 16, "d_model": 2048, "gpu": "h100-sxm", "tokens_per_s": 5.0}]).to_csv(csv_path, index=False)
    frame = load_results(csv_path)
    assert list(frame.columns) == list(COLUMNS) and frame.loc[0, "tokens_per_s"] == 5.0


def test_a_store_written_before_the_latency_columns_is_read_and_appended_to(cli, tmp_path):
    """An older store has no latency columns: its rows read with them missing, and a new row adds them."""
    store = tmp_path / "old.sqlite"
    old_columns = [(name, kind) for name, kind in COLUMN_TYPES if name not in LATENCY_COLUMNS]
    old_row = make_record(TINY_128, "tiny", "torch", {"batch_size": 1, "input_len": 8, "output_len": 4, "repeats": 1,
                                                      "tp": 1}, {"gpu": "cpu", "tokens_per_s": 2.0})
    with sqlite3.connect(store) as connection:
        connection.execute("CREATE TABLE results (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                           + ", ".join(f'"{name}" {kind}' for name, kind in old_columns) + ")")
        connection.execute(f"INSERT INTO results ({', '.join(name for name, _ in old_columns)}) VALUES "
                           f"({', '.join('?' for _ in old_columns)})", [old_row[name] for name, _ in old_columns])
    connection.close()
    old = load_results(store)
    assert list(old.columns) == list(COLUMNS) and old.loc[0, "tokens_per_s"] == 2.0
    assert old.loc[0, list(LATENCY_COLUMNS)].isna().all()
    shown = cli("bench", "--show", "--store", store)
    assert shown.code == 0 and "tiny" in shown.out and "TTFT" not in shown.out  # no row has latency: no column

    new_row = {**old_row, **latency_fields([0.01], [0.002], [0.002]), "tokens_per_s": 3.0}
    append(store, [new_row])
    rows = load_results(store)
    assert list(rows["tokens_per_s"]) == [2.0, 3.0]
    assert rows.loc[0, list(LATENCY_COLUMNS)].isna().all()
    assert rows.loc[1, "ttft_ms_p50"] == pytest.approx(10.0) and rows.loc[1, "tpot_ms_p99"] == pytest.approx(2.0)
    shown = cli("bench", "--show", "--store", store).out
    assert "TTFT p50/p99 ms" in shown and "10.0 / 10.0" in shown and "2.00 / 2.00" in shown
    csv_path = tmp_path / "old.csv"
    pd.DataFrame([{"n_layers": 16, "gpu": "h100-sxm", "tokens_per_s": 5.0}]).to_csv(csv_path, index=False)
    assert load_results(csv_path).loc[0, list(LATENCY_COLUMNS)].isna().all()


def test_corrupt_store_is_one_line_error(tmp_path):
    from archscale.io.errors import UserError

    (tmp_path / "bad.sqlite").write_text("not a database")
    with pytest.raises(UserError, match="not a readable results store"):
        load_results(tmp_path / "bad.sqlite")


def test_measured_only_drops_estimates_and_failures(tmp_path):
    workload = {"batch_size": 1, "input_len": 8, "output_len": 4, "repeats": 1, "tp": 1}
    rows = [make_record(TINY_128, "t", "torch", workload, {"gpu": "cpu", "tokens_per_s": 3.0}),
            make_record(TINY_128, "t", "roofline", workload, {"gpu": "cpu", "tokens_per_s": 9.0}),
            make_record(TINY_128, "t", "vllm", workload, records_module.failed("boom", gpu="cpu"))]
    append(tmp_path / "s.db", rows)
    assert len(load_results(tmp_path / "s.db")) == 3
    measured = load_results(tmp_path / "s.db", measured_only=True)
    assert list(measured["backend"]) == ["torch"] and list(measured["tokens_per_s"]) == [3.0]


def test_gpu_names_map_to_archscale_keys():
    assert gpu_key_for_device("NVIDIA H100 80GB HBM3") == "h100-sxm"
    assert gpu_key_for_device("NVIDIA H100 PCIe") == "h100-pcie"
    assert gpu_key_for_device("NVIDIA H200") == "h200"
    assert gpu_key_for_device("NVIDIA A100-SXM4-40GB") == "a100-40gb"
    assert gpu_key_for_device("NVIDIA A100 80GB PCIe") == "a100-80gb"
    assert gpu_key_for_device("NVIDIA L4") == "l4" and gpu_key_for_device("NVIDIA L40S") == "l40s"
    assert gpu_key_for_device("NVIDIA GeForce RTX 4090") == "nvidia geforce rtx 4090"


# ---- bad input: one line, exit 2, nothing written ---------------------------------------------
@pytest.mark.parametrize("args, fragment", [
    (["{missing}"], "no config.json there"),
    (["no-such-preset"], "unknown architecture 'no-such-preset'"),
    (["llama-3.2-1b", "--backend", "roofline"], "--backend roofline needs --gpu"),
    (["{tiny}", "--backend", "tensorrt"], "unknown backend 'tensorrt'"),
    (["{tiny}", "--batch-sizes", "16,x"], "--batch-sizes '16,x': expected integers"),
    (["{tiny}", "--store", "{csv}"], "use a name ending in .sqlite"),
    (["{tiny}", "--input-len", "0"], "--input-len must be a positive integer"),
])
def test_bad_input_is_one_line(cli, tiny_dirs, tmp_path, args, fragment):
    empty = tmp_path / "empty"
    empty.mkdir()
    store = tmp_path / "out.sqlite"
    values = {"missing": empty, "tiny": tiny_dirs[0], "csv": tmp_path / "out.csv"}
    args = [a.format(**values) for a in args]
    if "--store" not in args:
        args += ["--store", str(store)]
    r = cli("bench", *args, "--no-progress")
    assert_one_line_error(r, store, fragment)
    assert not (tmp_path / "out.csv").exists()


def test_mode_mistakes_are_one_line(cli, tmp_path):
    store = tmp_path / "s.sqlite"
    assert_one_line_error(cli("bench", "--show"), store, "--show needs --store")
    assert_one_line_error(cli("bench", "calibrate", "--store", store), store, "calibrate needs --gpu")
    assert_one_line_error(cli("bench", "llama-3.2-1b", "--backend", "roofline", "--gpu", "h100-sxm", "--fit", "auto"),
                           store, "--fit is an option of archscale bench calibrate")
    assert_one_line_error(cli("bench", "--show", "--store", store), store, "no such results file")


# ---- defaults and spellings shared with search ------------------------------------------------
def test_default_bench_workload_is_the_one_search_assumes(cli, tmp_path):
    """A default bench row has the prompt and generated tokens a default search --store looks up (4096/1024)."""
    store = tmp_path / "s.sqlite"
    bench = cli("bench", "llama-3.2-1b", "--backend", "roofline", "--gpu", "h200", "--store", store, "--json",
                "--no-progress")
    search = cli("search", "--fit", DATA / "fits" / "dissertation_1b_mult.json", "--n", "1e9", "--tokens", "1e11",
                 "--layers", "16", "--match", "llama-3.2-1b", "--gpu", "h200", "--top-k", "1", "--json")
    assert bench.code == 0 and search.code == 0, bench.err + search.err
    row, workload = json.loads(bench.out)[0], json.loads(search.out)["workload"]
    assert (row["input_len"], row["output_len"]) == (workload["input_len"], workload["output_len"]) == (4096, 1024)
    assert "4096/1024" in cli("bench", "--show", "--store", store).out


@pytest.mark.parametrize("spelling", ["bf16", "bfloat16", "BF16"])
def test_every_dtype_spelling_is_stored_and_shown_as_one(cli, tmp_path, spelling):
    store = tmp_path / "s.sqlite"
    r = cli("bench", "llama-3.2-1b", "--backend", "roofline", "--gpu", "h200", "--dtype", spelling, "--store", store,
            "--no-progress")
    assert r.code == 0, r.err
    assert list(load_results(store)["dtype"]) == ["bfloat16"]
    shown = cli("bench", "--show", "--store", store).out
    assert "│ bfloat16 │" in shown  # the table's dtype cell: the spelling of the store and the profile line


def test_dtype_spellings_of_a_csv_are_read_as_one(tmp_path):
    path = tmp_path / "old.csv"
    pd.DataFrame([{"backend": "vllm", "dtype": "bf16", "tokens_per_s": 1.0},
                  {"backend": "vllm", "dtype": "fp32", "tokens_per_s": 1.0}]).to_csv(path, index=False)
    assert list(load_results(path)["dtype"]) == ["bfloat16", "float32"]


# ---- reading a store creates nothing beside it ----------------------------------------------------
def _stored(cli, store) -> None:
    assert cli("bench", "llama-3.2-1b", "--backend", "roofline", "--gpu", "h200", "--store", store, "--no-progress").code == 0


def test_reading_a_store_leaves_no_wal_or_shm_beside_it(cli, tmp_path):
    """bench --show, search --store and bench calibrate only read: no -wal or -shm is left, the store is unchanged."""
    store = tmp_path / "s.sqlite"
    _stored(cli, store)
    before = (store.read_bytes(), store.stat().st_mtime_ns)
    assert cli("bench", "--show", "--store", store).code == 0
    # search and calibrate refuse it (roofline rows only: nothing measured), having read it all the same
    searched = cli("search", "--fit", DATA / "fits" / "dissertation_1b_mult.json", "--n", "1e9", "--tokens", "1e11",
                   "--layers", "16", "--match", "llama-3.2-1b", "--gpu", "h200", "--store", store)
    assert one_line_error(searched) and "is a successful torch or vLLM measurement (backends: roofline)" in searched.err
    cli("bench", "calibrate", "--store", store, "--gpu", "h200")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.sqlite"]
    assert (store.read_bytes(), store.stat().st_mtime_ns) == before


def test_reading_a_damaged_store_leaves_nothing_beside_it(cli, tmp_path):
    store = tmp_path / "s.sqlite"
    _stored(cli, store)
    store.write_bytes(store.read_bytes()[:3000])
    assert one_line_error(cli("bench", "--show", "--store", store))
    assert one_line_error(cli("bench", "llama-3.2-3b", "--backend", "roofline", "--gpu", "h200", "--store", store))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.sqlite"]


def test_a_reader_still_sees_rows_a_running_writer_has_not_folded_in(tmp_path):
    """With a -wal beside the store (a writer at work), its rows are read through it, and nothing new is left."""
    store = tmp_path / "s.sqlite"
    append(store, _rows_for(1, 1))
    writer = sqlite3.connect(store)
    try:
        writer.execute("INSERT INTO results (name, backend, status) VALUES ('late', 'torch', 'ok')")
        writer.commit()
        present = sorted(p.name for p in tmp_path.iterdir())
        assert "s.sqlite-wal" in present
        assert list(load_results(store)["error"].fillna("late")) == ["w1-0", "late"]
        assert sorted(p.name for p in tmp_path.iterdir()) == present
    finally:
        writer.close()
    assert list(load_results(store)["error"].fillna("late")) == ["w1-0", "late"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.sqlite"]



def test_show_prices_rows_by_hand_and_refuses_one_price_for_several_devices(cli, tmp_path):
    store = tmp_path / "bench.sqlite"
    for gpu in ("h200", "a100-40gb"):
        assert cli("bench", "llama-3.2-1b", "--backend", "roofline", "--gpu", gpu, "--batch-sizes", "1,64", "--tp", "2",
                   "--store", store, "--no-progress").code == 0
    shown = cli("bench", "--show", "--store", store, "--gpu", "h200", "--gpu-price", "3", "--json")
    assert shown.code == 0, shown.err
    for row in json.loads(shown.out):  # $3 x 2 GPUs / 3600 s / output tokens/s x 1e6
        assert row["usd_per_m_output"] == pytest.approx(3 * 2 / 3600 / row["output_tokens_per_s"] * 1e6)
    table = cli("bench", "--show", "--store", store, "--gpu", "h200", "--gpu-price", "3")
    assert "$/M out" in table.out
    both = cli("bench", "--show", "--store", store, "--gpu-price", "3")
    assert both.code == 2 and "--gpu-price prices one device, but the rows shown are on a100-40gb, h200" in both.err
    run = cli("bench", "llama-3.2-1b", "--backend", "roofline", "--gpu", "h200", "--gpu-price", "3")
    assert run.code == 2 and "--gpu-price" in run.err


# ---- flags a mode or backend does not read are refused, not ignored ---------------------------
@pytest.mark.parametrize("flag", [["--repeats", "5"], ["--max-noise", "0.5"], ["--seed", "3"], ["--device", "cpu"],
                                  ["--compile"], ["--timeout", "60"], ["--enforce-eager"], ["--verbose"]])
def test_roofline_refuses_the_measuring_flags(cli, tmp_path, flag):
    store = tmp_path / "s.sqlite"
    r = cli("bench", "llama-3.2-1b", "--backend", "roofline", "--gpu", "h200", *flag, "--store", store, "--no-progress")
    assert_one_line_error(r, store, f"{flag[0]} does not apply to --backend roofline")


@pytest.mark.parametrize("args, fragment", [
    (["--backend", "vllm", "--compile"], "--compile applies to --backend torch only, not vllm"),
    (["--backend", "vllm", "--device", "cpu"], "--device applies to --backend torch only, not vllm"),
    (["--backend", "torch", "--timeout", "60"], "--timeout applies to --backend vllm only, not torch"),
    (["--enforce-eager"], "--enforce-eager applies to --backend vllm only, not torch"),
    (["--engine", "vllm"], "--engine applies to --backend roofline only"),
])
def test_measured_backends_refuse_the_other_backends_flags(cli, tiny_dirs, tmp_path, args, fragment):
    store = tmp_path / "s.sqlite"
    assert_one_line_error(cli("bench", tiny_dirs[0], *args, "--store", store, "--no-progress"), store, fragment)


@pytest.fixture
def roofline_store(cli, tmp_path):
    """A roofline store on h200 at batch sizes 1 and 8 (the audit's store)."""
    store = tmp_path / "s.sqlite"
    assert cli("bench", "llama-3.2-1b", "--backend", "roofline", "--gpu", "h200", "--batch-sizes", "1,8", "--store", store,
               "--no-progress").code == 0
    return store


@pytest.mark.parametrize("args, batches", [
    (["--batch-sizes", "8"], [8]), (["--batch-sizes", "1-8"], [1, 8]), (["--dtype", "bf16"], [1, 8]),
    (["--tp", "1", "--input-len", "4096", "--output-len", "1024"], [1, 8]), (["--gpu", "H200", "--backend", "roofline"], [1, 8]),
])
def test_show_filters_by_the_run_flags_a_row_records(cli, roofline_store, args, batches):
    shown = cli("bench", "--show", "--store", roofline_store, *args, "--json")
    assert shown.code == 0, shown.err
    assert [row["batch_size"] for row in json.loads(shown.out)] == batches


@pytest.mark.parametrize("args, held", [
    (["--dtype", "float16"], "--dtype bfloat16"), (["--tp", "2"], "--tp 1"), (["--input-len", "5"], "--input-len 4096"),
    (["--gpu", "h100-sxm"], "--gpu h200"), (["--backend", "vllm", "--batch-sizes", "8"], "--backend roofline; --batch-sizes 1, 8"),
])
def test_show_says_what_the_store_holds_when_nothing_matches(cli, roofline_store, args, held):
    shown = cli("bench", "--show", "--store", roofline_store, *args)
    assert shown.code == 0 and "no records matching the filters" in shown.out and held in shown.out, shown.out


@pytest.mark.parametrize("flag", [["--engine", "torch"], ["--repeats", "2"], ["--seed", "1"], ["--max-noise", "0.5"],
                                  ["--device", "cpu"], ["--compile"], ["--timeout", "9"], ["--enforce-eager"],
                                  ["--profile", "none"], ["--executor", "local"]])
def test_show_refuses_the_run_flags_it_does_not_filter_by(cli, roofline_store, flag):
    r = cli("bench", "--show", "--store", roofline_store, *flag)
    assert one_line_error(r) and f"{flag[0]} does not apply to --show" in r.err, r.err
    assert r.out == ""


def test_show_refuses_an_unknown_gpu_naming_the_stores_devices(cli, roofline_store):
    r = cli("bench", "--show", "--store", roofline_store, "--gpu", "nosuch")
    assert one_line_error(r) and "--gpu 'nosuch': unknown device" in r.err and "its rows are on h200" in r.err, r.err


def test_export_and_price_without_show_say_to_add_show(cli, roofline_store, tmp_path):
    for flag, value in (("--export", tmp_path / "b.csv"), ("--gpu-price", "3")):
        r = cli("bench", flag, value, "--store", roofline_store)
        assert one_line_error(r) and f"{flag} " in r.err and "add --show" in r.err, r.err
    assert not (tmp_path / "b.csv").exists()


def test_show_says_an_empty_store_is_empty(cli, tmp_path):
    empty = tmp_path / "e.sqlite"
    empty.touch()
    no_rows = tmp_path / "z.sqlite"
    append(no_rows, [make_record(TINY_128, "t", "torch", {"batch_size": 1, "input_len": 8, "output_len": 4, "repeats": 1,
                                                         "tp": 1}, {"gpu": "cpu"})])
    with sqlite3.connect(no_rows) as connection:
        connection.execute("DELETE FROM results")
    for store in (empty, no_rows):
        shown = cli("bench", "--show", "--store", store)
        assert shown.code == 0 and "the store is empty" in shown.out, shown.out


def test_a_measured_run_on_a_gpu_file_device_is_compared_with_its_estimate(cli, tiny_dirs, tmp_path, one_thread):
    """--gpu-file was read by --show and the roofline only: a torch run on a CPU entry printed "vs estimate" as -."""
    device = tmp_path / "cpu.json"
    device.write_text(json.dumps([{"name": "cpu", "bf16_tflops": 0.17, "hbm_tb_s": 0.033, "memory_gb": 16,
                                   "interconnect_gb_s": 1.0}]))
    r = cli("bench", tiny_dirs[0], "--backend", "torch", "--batch-sizes", "1", "--input-len", "8", "--output-len", "4",
            "--repeats", "2", "--max-noise", "10", "--gpu", "cpu", "--gpu-file", device, "--store", tmp_path / "b.sqlite",
            "--no-progress")
    assert r.code == 0, r.err
    assert "x uncalibrated" in r.out  # the measured/estimated ratio, against the uncalibrated roofline
