"""Real vLLM on this CPU over Mixture-of-Experts shapes of one active budget: data to validate the MoE serving model.

    python experiments/studies/cpu_vllm_moe.py --vllm-python .venv-vllm/bin/python [--repeats 2]

Eight Mixtral-style shapes (6 layers, d_model 384, 6 query and 2 KV heads of 64, vocabulary 8192, untied) with
13.0M active non-embedding parameters each: every token goes through k routed experts of width 1536 / k, so
``k x expert_d_ff`` is the 1536 of the dense MLP of the same active size, and the granularity (that dense width over
the expert width, Krajewski et al. 2024) equals k. E is 4, 8 or 16 and k 1, 2 or 4, so the total parameters run from
23.6M to 172M (:data:`SHAPES`); three shapes of 44.8M total ((4, 1), (8, 2), (16, 4)) differ only in how many
experts a batch touches. What the serving model says differs between them is the weights a forward pass reads: the
distinct experts its tokens touch, ``E (1 - (1 - k/E)^tokens)`` per layer (k at one sequence, towards E at 32).

Each shape is measured with real vLLM (``archscale bench --backend vllm``'s machinery: one engine for all batch
sizes, its CPU default dtype, eager) at batch 1, 4, 16 and 32, 128 prompt and 32 output tokens, in a shuffled
(seeded) order. The measurement machinery is ``cpu_vllm_shapes.py``'s (imported): the load average is logged
before and after each shape, and a store already holding a shape at every batch size is resumed, not remeasured.
Before measuring, the run waits (30 s at a time, up to 10 min) while the 1-minute load average is above 1.2, and
before each shape while another job keeps more than 0.3 cores busy (:func:`wait_for_other_jobs`): on a machine of
two cores, vLLM's model worker and engine loop take both, and one other job slows every step it shares.

Writes ``experiments/results/cpu_vllm_moe/``: ``configs/`` (one config.json per shape), ``bench.sqlite`` (the
store; not committed), ``cpu_vllm_moe.csv`` (its export), ``load.csv`` and ``summary.txt``.

``--set fresh`` measures a second set, made after the serving model's serial expert term was chosen on the first,
so that the first set's profile can be scored on shapes nothing was designed on: another width and active budget
(d_model 512, 8 query and 2 KV heads, 2048 active MLP width: 22.8M active), and E and k the first set did not have
(:data:`FRESH_SHAPES`). It writes ``experiments/results/cpu_vllm_moe_fresh/`` the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import pandas as pd

from archscale.bench.store import export_csv, load_results
from archscale.bench.sweep import resolve_targets, run_sweep
from archscale.bench.types import BenchOptions
from archscale.shapes.architecture import Architecture
from archscale.shapes.hf_config import write_hf_config

from cpu_vllm_shapes import load_average, measured_pairs, wait_for_other_jobs, wait_until_quiet

OUT = Path(__file__).resolve().parents[1] / "results" / "cpu_vllm_moe"
FRESH_OUT = OUT.with_name("cpu_vllm_moe_fresh")
LAYERS, D_MODEL, HEADS, KV_HEADS, HEAD_DIM, VOCAB = 6, 384, 6, 2, 64, 8192
ACTIVE_WIDTH = 1536
"""k x expert_d_ff: the routed MLP width one token goes through, the same in every shape (one active budget)."""
SHAPES = ((4, 1), (4, 2), (8, 1), (8, 2), (8, 4), (16, 1), (16, 2), (16, 4))
"""(E, k) of each shape, sorted as the validation splits them (every other one in each half)."""
FRESH_GEOMETRY = (6, 512, 8, 2, 64, 8192, 2048)
"""(layers, d_model, heads, KV heads, d_head, vocabulary, k x expert width) of the fresh set."""
FRESH_SHAPES = ((2, 1), (6, 2), (12, 1), (12, 3), (24, 2), (32, 4))
"""(E, k) of the fresh set: E 2, 6, 12, 24, 32 and k 3 appear in no shape of the first."""
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vllm-python", type=Path, default=None, help="Python with vLLM (default $ARCHSCALE_VLLM_PYTHON).")
    parser.add_argument("--batch-sizes", default="1,4,16,32")
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="vLLM with torch.compile (default: eager).")
    parser.add_argument("--set", choices=("main", "fresh"), default="main", dest="shape_set",
                        help="main: the eight shapes the model was validated on; fresh: six shapes measured after it")
    parser.add_argument("--out", type=Path, default=None, help="Default: results/cpu_vllm_moe (or _fresh).")
    return parser.parse_args()


def moe_shapes(shape_set: str = "main") -> list[Architecture]:
    """The study's shapes, named ``e{E}-k{k}-f{expert_d_ff}`` (``d{d_model}-`` first in the fresh set)."""
    if shape_set == "fresh":
        layers, d_model, heads, kv, d_head, vocab, width = FRESH_GEOMETRY
        pairs, prefix = FRESH_SHAPES, f"d{d_model}-"
    else:
        layers, d_model, heads, kv, d_head, vocab, width = LAYERS, D_MODEL, HEADS, KV_HEADS, HEAD_DIM, VOCAB, ACTIVE_WIDTH
        pairs, prefix = SHAPES, ""
    return [Architecture(layers, d_model, heads, kv, d_head, width // k, vocab_size=vocab, n_experts=experts,
                         experts_per_token=k, expert_d_ff=width // k, name=f"{prefix}e{experts}-k{k}-f{width // k}")
            for experts, k in pairs]


def main() -> None:
    args = parse_args()
    out = args.out or (FRESH_OUT if args.shape_set == "fresh" else OUT)
    store = out / "bench.sqlite"
    done = measured_pairs(store, len(args.batch_sizes.split(","))) if store.exists() else set()
    specs = []
    for arch in moe_shapes(args.shape_set):
        directory = out / "configs" / arch.name
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(write_hf_config(arch), indent=2) + "\n")
        specs.append(str(directory))
    targets = resolve_targets(specs)
    options = BenchOptions(backend="vllm", enforce_eager=not args.compile, vllm_python=args.vllm_python,
                           worker_timeout_s=1800, batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",")),
                           input_len=args.input_len, output_len=args.output_len, repeats=args.repeats)
    order = list(range(len(targets)))
    random.Random(0).shuffle(order)
    start_load = wait_until_quiet()
    print(f"measuring at load {start_load:.2f}", flush=True)
    load_rows, started = [], time.perf_counter()
    for index in order:
        target = targets[index]
        if (target.label, "vllm") in done:
            continue
        busy = wait_for_other_jobs()
        before, t0 = load_average(), time.perf_counter()
        run_sweep([target], options, store)
        load_rows.append({"shape": target.label, "backend": "vllm", "seconds": round(time.perf_counter() - t0, 1),
                          "busy_cores_before": round(busy, 2), "load_before": before, "load_after": load_average()})
        print(f"[{time.perf_counter() - started:6.0f} s] {target.label}: {load_rows[-1]['seconds']} s, "
              f"{busy:.2f} cores busy before, load {before:.1f} -> {load_rows[-1]['load_after']:.1f}", flush=True)
    count = export_csv(store, out / "cpu_vllm_moe.csv")
    loads = pd.DataFrame(load_rows, columns=["shape", "backend", "seconds", "busy_cores_before", "load_before",
                                             "load_after"])
    if done and (out / "load.csv").exists():  # a resumed run: keep the loads of the shapes it kept
        earlier = pd.read_csv(out / "load.csv")
        loads = pd.concat([earlier[[(s, b) in done for s, b in zip(earlier["shape"], earlier["backend"])]], loads],
                          ignore_index=True)
    loads.to_csv(out / "load.csv", index=False)
    write_summary(out, load_results(store), loads, args, time.perf_counter() - started, count, start_load)


def write_summary(out: Path, rows: pd.DataFrame, loads: pd.DataFrame, args, seconds: float, count: int,
                  start_load: float) -> None:
    """What ran, on what, under which load, and the measured throughput and latency per shape and batch size."""
    loads_seen = loads[["load_before", "load_after"]].stack()
    failed = rows[rows["status"] != "ok"]
    chosen = f" --set {args.shape_set}" if args.shape_set != "main" else ""
    lines = [f"command: python experiments/studies/cpu_vllm_moe.py{chosen} --batch-sizes {args.batch_sizes} --input-len "
             f"{args.input_len} --output-len {args.output_len} --repeats {args.repeats}" + (" --compile" if args.compile else ""),
             f"{count} rows ({len(failed)} failed); this run {seconds / 60:.1f} min; load average (1 min) at the start "
             f"{start_load:.2f}, over the measurements median {loads_seen.median():.1f}, max {loads_seen.max():.1f} "
             f"on {os.cpu_count()} CPUs; cores busy with other jobs before each shape: at most "
             f"{loads['busy_cores_before'].max():.2f}",
             f"vLLM {sorted(set(rows['vllm_version'].dropna()))}, dtype {sorted(set(rows['dtype'].dropna()))}, threads "
             f"{sorted(set(rows['threads'].dropna().astype(int)))}, cores {sorted(set(rows['cpu_binding'].dropna()))}, "
             f"{sorted(set(rows['device_name'].dropna()))}"]
    index = ["name", "n_experts", "experts_per_token", "expert_d_ff"]
    for value, title in (("tokens_per_s", "total tokens/s"), ("tpot_ms_p50", "TPOT p50 (ms)"),
                         ("ttft_ms_p50", "TTFT p50 (ms)")):
        table = rows.pivot_table(index=index, columns="batch_size", values=value)
        lines += ["", f"{title}:", table.round(1 if value != "tokens_per_s" else 0).to_string()]
    if len(failed):
        lines += ["", "failed rows:", failed[["name", "batch_size", "error"]].to_string()]
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
