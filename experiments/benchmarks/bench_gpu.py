"""LLaMA-3.2-1B vs Surefire-1B on one GPU: archscale's torch backend, HF transformers, and the roofline.

    OUT=/some/dir python experiments/benchmarks/bench_gpu.py [--quick] [--budget-s 480] [--repeats 3]

Meant for one call of at most 10 minutes on an H100 (or H200). It measures
the torch backend (archscale's model, random weights, bf16) for both shapes at
batch 16/32/64/128 with 4096 prompt and 1024 output tokens, then the same
workload through Hugging Face ``LlamaForCausalLM(config).generate`` (random
weights) for LLaMA-3.2-1B at a subset of batch sizes (Surefire-1B's
2560 / 36 heads is not divisible, which transformers refuses, so it is
skipped there and the summary says so), and the roofline estimate of every
(shape, batch). It reports how much of the memory-bound decode limit (every
decode step reads all weights plus the batch's KV cache once, at datasheet
and at measured copy bandwidth) the torch backend reaches for LLaMA-3.2-1B at
batch 64, and Surefire/LLaMA throughput ratios next to the dissertation's vLLM
ratios (Table 6.3).

Time: the script plans against ``--budget-s`` (default 480 s, leaving room
for start-up within a 600 s call): it predicts each run from the roofline
times the slowdown measured so far, lowers the repeats when time is short and
skips what cannot fit, printing every decision. ``--quick`` measures batch
16 and 64 once each. Writes ``bench_gpu.sqlite``, ``bench_gpu.csv`` (this
run's rows) and ``bench_gpu_summary.txt`` under ``$OUT`` (default
``experiments/results/``) and prints a short table last.

The decode loop is eager PyTorch (one ``forward_step`` per token): the KV
cache is read through a growing slice, whose shape changes every step, so
CUDA graphs do not apply without changing the model; ``--compile`` tries
``torch.compile(dynamic=True)`` on the step (its compile time is excluded by
the warm-up, but counts against the budget).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from archscale.shapes.architecture import PRESETS, Architecture  # noqa: E402
from archscale.bench.records import gpu_key_for_device, make_record, summarize_repeats  # noqa: E402
from archscale.bench.store import append  # noqa: E402
from archscale.bench.sweep import run_sweep
from archscale.bench.types import BenchOptions, Target
from archscale.serving.devices import GPUS, GPU  # noqa: E402
from archscale.serving.profiles import resolve_profile  # noqa: E402
from archscale.serving.estimate import Workload, estimate_throughput  # noqa: E402
from archscale.shapes.hf_config import write_hf_config

MODELS = ("llama-3.2-1b", "surefire-1b")
BATCHES = (16, 32, 64, 128)
HF_BATCHES = (16, 64)
DECODE_CHECK = ("llama-3.2-1b", 64)
# Dissertation Table 6.3, vLLM, 4096 in / 1024 out, tokens/s at batch 16/32/64/128.
TABLE_6_3 = {
    ("A100", "llama-3.2-1b"): (1931.87, 2602.72, 3409.85, 3825.91),
    ("A100", "surefire-1b"): (2116.49, 3290.23, 4028.69, 4800.05),
    ("H200", "llama-3.2-1b"): (4311.97, 6221.14, 8131.65, 9306.36),
    ("H200", "surefire-1b"): (4532.85, 6992.71, 9493.46, 11282.56),
}
INITIAL_SLOWDOWN = 4.0
"""Measured time over roofline time assumed before anything is measured (eager decode is launch-bound)."""
HF_RESERVE_S = 100.0


def log(message: str) -> None:
    print(message, flush=True)


@dataclass
class Planner:
    """Spend a fixed time budget: predict each run, choose its repeats, skip what cannot fit."""

    budget_s: float
    started: float = field(default_factory=time.perf_counter)
    slowdown: float = INITIAL_SLOWDOWN
    measured: bool = False

    @property
    def remaining(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)

    def repeats(self, predicted_repeat_s: float, wanted: int, runs_left: int, reserve_s: float) -> int:
        """Repeats for the next run so the runs left share what remains (0: skip it)."""
        available = self.remaining - reserve_s
        share = available / max(runs_left, 1)
        # a run costs its repeats plus a warm-up (a prefill and a few steps: about half a repeat, generously)
        affordable = int(share / predicted_repeat_s - 0.5)
        if affordable < 1:
            return 1 if available > 1.5 * predicted_repeat_s else 0
        return min(wanted, affordable)

    def learn(self, measured_s: float, roofline_s: float) -> None:
        """Keep the largest slowdown seen: under-predicting is what breaks a budget."""
        if roofline_s > 0:
            ratio = measured_s / roofline_s
            self.slowdown = max(self.slowdown, ratio) if self.measured else ratio
            self.measured = True


def roofline_seconds(arch: Architecture, gpu: GPU, batch: int, input_len: int, output_len: int) -> float:
    estimate = estimate_throughput(arch, gpu, Workload(batch, input_len, output_len))
    return estimate.prefill_s + estimate.decode_s


def memory_bound_decode_s(arch: Architecture, batch: int, input_len: int, output_len: int, bytes_per_s: float) -> float:
    """Lower bound on the torch backend's decode time: each step reads every weight and the whole KV cache once.

    The backend's decode steps process positions ``input_len .. input_len +
    output_len - 2`` (the first output token comes from the prefill); the step
    at position ``p`` reads ``p + 1`` cached tokens per sequence. Weights read
    per step: non-embedding parameters plus the LM head (the input embedding
    is a gather of ``batch`` rows).
    """
    steps = output_len - 1
    weight_bytes = (arch.n_params_non_embedding + arch.vocab_size * arch.d_model) * 2
    cached_tokens = sum(p + 1 for p in range(input_len, input_len + steps))
    return (steps * weight_bytes + batch * cached_tokens * arch.kv_cache_bytes_per_token(2)) / bytes_per_s


def copy_bandwidth(device: str) -> float:
    """Achieved device-to-device copy bandwidth, bytes/s (reads + writes), best of five."""
    import torch

    source = torch.empty(2**28, dtype=torch.bfloat16, device=device)  # 512 MiB
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(6):
        torch.cuda.synchronize()
        start = time.perf_counter()
        target.copy_(source)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    del source, target
    torch.cuda.empty_cache()
    return 2 * 2**28 * 2 / best


# ---- Hugging Face transformers ------------------------------------------------------
def hf_skip_reason(arch: Architecture) -> str | None:
    import importlib.util

    if importlib.util.find_spec("transformers") is None:
        return "transformers is not installed"
    if arch.d_model % arch.n_heads:
        return (f"hidden_size {arch.d_model} is not divisible by {arch.n_heads} heads, "
                "which transformers' Llama refuses even with head_dim given")
    return None


def measure_hf(arch: Architecture, batch: int, input_len: int, output_len: int, repeats: int, device: str,
               seed: int = 0) -> dict[str, Any]:
    """``LlamaForCausalLM(config).generate`` with random weights: greedy, exactly ``output_len`` new tokens."""
    import torch
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    keys = {k: v for k, v in write_hf_config(arch, max_position_embeddings=max(8192, input_len + output_len)).items()
            if k not in ("architectures", "model_type", "torch_dtype")}
    config = LlamaConfig(**keys)
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(previous)
    generator = torch.Generator(device).manual_seed(seed)
    settings = {"do_sample": False, "pad_token_id": 0, "use_cache": True}

    def prompts():
        ids = torch.randint(0, arch.vocab_size, (batch, input_len), device=device, generator=generator)
        return ids, torch.ones_like(ids)

    seconds, totals, generated = [], [], []
    try:
        with torch.inference_mode():
            ids, mask = prompts()
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, min_new_tokens=4, **settings)
            for _ in range(repeats):
                ids, mask = prompts()
                torch.cuda.synchronize()
                start = time.perf_counter()
                out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=output_len,
                                     min_new_tokens=output_len, **settings)
                torch.cuda.synchronize()
                seconds.append(time.perf_counter() - start)
                new_tokens = (out.shape[1] - input_len) * batch
                generated.append(new_tokens)
                totals.append(batch * input_len + new_tokens)
    finally:
        del model
        torch.cuda.empty_cache()
    return {**summarize_repeats(seconds, totals, generated), "output_tokens": round(sum(generated) / len(generated)),
            "status": "ok", "dtype": "bfloat16", "torch_version": torch.__version__,
            "device_name": torch.cuda.get_device_name(), "error": None,
            "_transformers_version": transformers.__version__}


# ---- the run ----------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Batch 16 and 64, one repeat, HF at batch 16 only.")
    parser.add_argument("--budget-s", type=float, default=480.0, help="Seconds for all measurements (default 480).")
    parser.add_argument("--repeats", type=int, default=3, help="Timed repeats per run when time allows (default 3).")
    parser.add_argument("--input-len", type=int, default=4096)
    parser.add_argument("--output-len", type=int, default=1024)
    parser.add_argument("--batch-sizes", default=None, help="Override, e.g. 16,64.")
    parser.add_argument("--compile", action="store_true", help="torch.compile the decode step (dynamic shapes).")
    parser.add_argument("--no-hf", action="store_true", help="Skip the transformers comparison.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        log("bench_gpu.py needs a CUDA GPU (for CPU, run experiments/bench_cpu_smoke.py)")
        return 2
    out_dir = Path(os.environ.get("OUT") or REPO / "experiments" / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    store = out_dir / "bench_gpu.sqlite"
    device_name = torch.cuda.get_device_name()
    gpu_key = gpu_key_for_device(device_name)
    gpu = GPUS.get(gpu_key, GPUS["h100-sxm"])
    batches = tuple(int(b) for b in args.batch_sizes.split(",")) if args.batch_sizes else (
        (16, 64) if args.quick else BATCHES)
    repeats = 1 if args.quick else args.repeats
    hf_batches = (16,) if args.quick else tuple(b for b in HF_BATCHES if b in batches) or batches[:1]
    planner = Planner(args.budget_s)
    log(f"{device_name} -> gpu key {gpu_key} (roofline uses {gpu.name}); torch {torch.__version__}; "
        f"workload {args.input_len} in / {args.output_len} out; batches {list(batches)}; "
        f"budget {args.budget_s:.0f} s for measurements; results in {out_dir}")
    bandwidth = copy_bandwidth("cuda")
    log(f"measured copy bandwidth {bandwidth / 1e12:.2f} TB/s (datasheet {gpu.hbm_tb_s:.2f} TB/s)")

    records: list[dict[str, Any]] = []
    hf_wanted = not args.no_hf and hf_skip_reason(PRESETS["llama-3.2-1b"]) is None
    reserve = (HF_RESERVE_S / (2 if args.quick else 1)) if hf_wanted else 0.0
    runs = [(name, batch) for name in MODELS for batch in batches]
    for index, (name, batch) in enumerate(runs):
        arch = PRESETS[name]
        predicted = planner.slowdown * roofline_seconds(arch, gpu, batch, args.input_len, args.output_len)
        chosen = planner.repeats(predicted, repeats, len(runs) - index, reserve)
        if chosen == 0:
            log(f"skip torch {name} batch {batch}: predicted {predicted:.0f} s per repeat, {planner.remaining:.0f} s left")
            continue
        log(f"torch {name} batch {batch}: {chosen} repeat(s), predicted {predicted:.1f} s each, "
            f"{planner.remaining:.0f} s left")
        options = BenchOptions(backend="torch", device="cuda", batch_sizes=(batch,), input_len=args.input_len,
                               output_len=args.output_len, repeats=chosen, compile=args.compile, gpu=gpu_key)
        result = run_sweep([Target(spec=name, arch=arch, hf_config=write_hf_config(arch))], options, store)
        records += result.records
        row = result.records[-1]
        if row["status"] == "ok":
            measured_s = batch * (args.input_len + args.output_len) / row["tokens_per_s"]
            planner.learn(measured_s, roofline_seconds(arch, gpu, batch, args.input_len, args.output_len))
            peak = f", peak {row['memory_gb']:.1f} GB" if row["memory_gb"] is not None else ""
            log(f"  {row['tokens_per_s']:,.0f} tok/s (prefill {row['prefill_s']:.2f} s, decode {row['decode_s']:.2f} s{peak})")
        else:
            log(f"  failed: {row['error']}")
        if result.interrupted:
            break

    hf_versions = set()
    for name in MODELS:
        arch = PRESETS[name]
        reason = "--no-hf" if args.no_hf else hf_skip_reason(arch)
        if reason:
            log(f"skip transformers {name}: {reason}")
            continue
        for batch in hf_batches:
            predicted = 1.5 * planner.slowdown * roofline_seconds(arch, gpu, batch, args.input_len, args.output_len)
            if planner.remaining < 1.5 * predicted:
                log(f"skip transformers {name} batch {batch}: predicted {predicted:.0f} s, {planner.remaining:.0f} s left")
                continue
            log(f"transformers {name} batch {batch}: 1 repeat, predicted {predicted:.0f} s, {planner.remaining:.0f} s left")
            workload = {"batch_size": batch, "input_len": args.input_len, "output_len": args.output_len, "repeats": 1, "tp": 1}
            try:
                measured = measure_hf(arch, batch, args.input_len, args.output_len, 1, "cuda")
                hf_versions.add(measured.pop("_transformers_version"))
            except Exception as exc:  # a transformers API difference must not lose the torch results
                torch.cuda.empty_cache()
                measured = {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "device_name": device_name}
            record = make_record(arch, f"hf:{name}", "transformers", workload, {**measured, "gpu": gpu_key})
            append(store, [record])
            records.append(record)
            log(f"  {record['tokens_per_s'] or 0:,.0f} tok/s" if record["status"] == "ok" else f"  failed: {record['error']}")

    roofline = run_sweep([Target(spec=n, arch=PRESETS[n], hf_config={}) for n in MODELS],
                         BenchOptions(backend="roofline", gpu=gpu.name, batch_sizes=batches, input_len=args.input_len,
                                      output_len=args.output_len), store)
    records += roofline.records
    frame = pd.DataFrame(records)
    frame.to_csv(out_dir / "bench_gpu.csv", index=False)
    summary = summarize(frame, gpu, bandwidth, args, device_name, hf_versions)
    (out_dir / "bench_gpu_summary.txt").write_text(summary + "\n", encoding="utf-8")
    log("")
    log(summary)
    return 0


def summarize(frame: pd.DataFrame, gpu: GPU, bandwidth: float, args: argparse.Namespace, device_name: str,
              hf_versions: set[str]) -> str:
    """The text summary: decode-limit check, Surefire/LLaMA ratios vs Table 6.3, then the throughput table (last)."""
    lines = [f"# {device_name}: {args.input_len} in / {args.output_len} out, tokens/s (total = batch x (in + out) / time)",
             f"# transformers: {', '.join(sorted(hf_versions)) or 'not run'}; roofline: {resolve_profile(None, gpu, 'vllm').label}",
             ""]
    ok = frame[frame["status"] == "ok"]
    for row in frame[frame["status"] != "ok"].itertuples():
        lines.append(f"failed: {row.backend} {row.name} batch {row.batch_size}: {row.error}")
    lines += decode_check(ok, gpu, bandwidth, args)
    lines.append("")
    lines += surefire_ratios(ok)
    if (frame["backend"] == "transformers").any():
        lines.append("note: transformers cannot build Surefire-1B (2560 / 36 heads is not an integer): no HF row for it")
    lines.append("")
    if ok.empty:
        lines.append("no successful measurement")
    else:
        pivot = ok.pivot_table(index=["name", "backend"], columns="batch_size", values="tokens_per_s", aggfunc="mean")
        lines.append(pivot.round(0).to_string())
    return "\n".join(lines)


def decode_check(ok: pd.DataFrame, gpu: GPU, bandwidth: float, args: argparse.Namespace) -> list[str]:
    name, batch = DECODE_CHECK
    row = ok[(ok["name"] == name) & (ok["backend"] == "torch") & (ok["batch_size"] == batch)]
    if row.empty or pd.isna(row["decode_s"].iloc[0]):
        return [f"decode check: no torch measurement of {name} at batch {batch}"]
    arch, measured = PRESETS[name], float(row["decode_s"].iloc[0])
    datasheet = memory_bound_decode_s(arch, batch, args.input_len, args.output_len, gpu.bytes_per_s)
    achieved = memory_bound_decode_s(arch, batch, args.input_len, args.output_len, bandwidth)
    return [f"decode check, {name} batch {batch}: measured decode {measured:.2f} s for {args.output_len - 1} steps; "
            f"memory-bound limit {datasheet:.2f} s at {gpu.hbm_tb_s:.2f} TB/s datasheet "
            f"({100 * datasheet / measured:.0f}% reached), {achieved:.2f} s at the measured {bandwidth / 1e12:.2f} TB/s copy "
            f"bandwidth ({100 * achieved / measured:.0f}% reached)"]


def surefire_ratios(ok: pd.DataFrame) -> list[str]:
    lines = ["Surefire-1B / LLaMA-3.2-1B throughput (dissertation Table 6.3 is vLLM on A100 and H200):"]
    for backend in ("torch", "transformers", "roofline"):
        rows = ok[ok["backend"] == backend].pivot_table(index="name", columns="batch_size", values="tokens_per_s")
        if {"llama-3.2-1b", "surefire-1b"} <= set(rows.index):
            ratio = rows.loc["surefire-1b"] / rows.loc["llama-3.2-1b"]
            lines.append(f"  {backend:9s} " + "  ".join(f"b{int(b)}: {r:.2f}" for b, r in ratio.dropna().items()))
    for gpu_name in ("A100", "H200"):
        llama, surefire = TABLE_6_3[(gpu_name, "llama-3.2-1b")], TABLE_6_3[(gpu_name, "surefire-1b")]
        lines.append(f"  vLLM {gpu_name} " + "  ".join(f"b{b}: {s / l:.2f}" for b, s, l in zip(BATCHES, surefire, llama)))
    return lines


if __name__ == "__main__":
    sys.exit(main())
