"""Real vLLM on this CPU, and the torch backend beside it, over shapes of one parameter budget: data for a `cpu` profile.

    python experiments/studies/cpu_vllm_shapes.py --vllm-python .venv-vllm/bin/python [--limit 8] [--compile]
        [--backends vllm] [--input-len 320 --out experiments/results/cpu_vllm_latency]

Ten LLaMA-style shapes at 20M non-embedding parameters (6 layers, head dim 64, vocabulary 8192), chosen from
``archscale.shapes.candidates.generate_candidates`` to spread d_model (256-1024), the MLP-to-attention ratio r
(0.52-4.5) and the GQA group (1-8); each is measured with real vLLM (one engine for all batch sizes) and with
archscale's torch backend, at the same batch sizes and lengths, in the same dtype (vLLM's default here:
float32 on a CPU without AVX512_BF16/AMX; the torch backend's CPU default is float32 too), one thread each on
core 0: vLLM binds its model worker itself (``auto``: core 0, core 1 left to its scheduler; the
``threads``/``cpu_binding`` columns say so per row), the torch backend runs in this process with one torch
thread and this process pinned to core 0 while it measures. Shapes are visited in a shuffled (seeded) order,
both backends back to back per shape, so slow drifts of the shared machine's load fall on both and on shapes
alike; the load average is logged before and after each measurement. Before measuring, the run waits (30 s at a
time, up to 10 min) while the 1-minute load average is above 1.2, and before each measurement while another job
keeps more than 0.3 cores busy (:func:`wait_for_other_jobs`; the quiet-machine protocol, shared with
``cpu_vllm_moe.py``; the first two dense sets and the dense retest were measured before it was added here).

``--set fresh`` measures ten other shapes (:data:`FRESH_TARGETS`: 8 layers, 30M non-embedding parameters, d_model
320-896), chosen after the serving model's latency terms were settled on ``cpu_vllm_latency/``, so that a profile
can be scored on shapes nothing was designed on; it writes ``experiments/results/cpu_vllm_latency_fresh/``.
``--set third`` measures ten more (:data:`THIRD_TARGETS`: 10 layers, 30M, d_model 352-800), chosen after the engine's
staggered admission of requests was modelled, for the same reason; it writes ``cpu_vllm_latency_third/``.
``--set fourth`` measures ten more (:data:`FOURTH_TARGETS`: 12 layers, 30M, d_model 416-736), chosen after the bench
rows began to record the engine's settings, so that ``bench calibrate`` reading them off the rows is tested on shapes
nothing was designed on; it writes ``cpu_vllm_latency_fourth/``.
``--set fifth`` measures ten more (:data:`FIFTH_TARGETS`: 14 layers, 30M, d_model 432-688), chosen after the serial
decode-attention term was designed on the earlier sets; it writes ``cpu_vllm_latency_fifth/``.

Writes ``experiments/results/cpu_vllm/``: ``configs/`` (one config.json per shape), ``bench.sqlite`` (the
store; not committed), ``cpu_vllm.csv`` (its export, as ``archscale bench --show --store STORE --export FILE``
writes it), ``load.csv`` and ``summary.txt``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from pathlib import Path

import pandas as pd

from archscale.bench.store import export_csv, load_results
from archscale.bench.sweep import resolve_targets, run_sweep
from archscale.bench.types import BenchOptions
from archscale.shapes.candidates import architecture_from_row, generate_candidates
from archscale.shapes.hf_config import write_hf_config

OUT = Path(__file__).resolve().parents[1] / "results" / "cpu_vllm"
BUDGET, LAYERS, HEAD_DIM, VOCAB = 2e7, 6, 64, 8192
TARGETS = [  # (d_model, r wanted, GQA group): narrow to wide, attention-heavy to MLP-heavy, MHA to GQA 8
    (256, 2.3, 1), (256, 1.7, 8),  # at d_model 256 the budget allows r of about 1.7-2.3 only (16-32 heads)
    (384, 1.0, 2), (384, 4.5, 4), (512, 0.5, 1), (512, 2.5, 8), (640, 1.5, 4), (768, 4.0, 2), (768, 0.7, 8), (1024, 1.0, 4),
]
FRESH_BUDGET, FRESH_LAYERS = 3e7, 8
FRESH_TARGETS = [  # a second set, measured after the latency model was settled on the first (``--set fresh``)
    (320, 2.0, 2), (320, 1.5, 4), (448, 3.0, 1), (448, 0.8, 8), (576, 1.2, 2), (576, 3.5, 8), (704, 2.0, 1),
    (704, 0.6, 4), (896, 1.0, 2), (896, 3.0, 4),
]
"""(d_model, r wanted, GQA group) of the fresh set: 8 layers at 30M non-embedding parameters, d_model values the
first set does not have."""
FRESH_OUT = OUT.with_name("cpu_vllm_latency_fresh")
THIRD_BUDGET, THIRD_LAYERS = 3e7, 10
THIRD_TARGETS = [  # a third set, measured after the engine's staggered admission was modelled (``--set third``)
    (352, 2.5, 2), (352, 1.2, 8), (480, 0.7, 4), (480, 3.5, 2), (544, 1.5, 1), (544, 2.5, 4), (672, 1.0, 8),
    (672, 4.0, 1), (800, 0.8, 2), (800, 2.0, 8),
]
"""(d_model, r wanted, GQA group) of the third set: 10 layers at 30M non-embedding parameters, d_model values
neither earlier set has. Chosen and committed, with the validation that scores it, before it was measured."""
THIRD_OUT = OUT.with_name("cpu_vllm_latency_third")
FOURTH_BUDGET, FOURTH_LAYERS = 3e7, 12
FOURTH_TARGETS = [  # a fourth set, measured after the rows began to record the engine's settings (``--set fourth``)
    (416, 2.5, 2), (416, 1.0, 8), (464, 3.0, 1), (464, 1.5, 4), (608, 0.8, 2), (608, 2.0, 8), (656, 1.2, 4),
    (656, 0.7, 1), (736, 0.5, 8), (736, 0.6, 2),
]
"""(d_model, r wanted, GQA group) of the fourth set: 12 layers at 30M non-embedding parameters, a depth and d_model
values no earlier set has. Chosen and committed, with the validation that scores it, before it was measured."""
FOURTH_OUT = OUT.with_name("cpu_vllm_latency_fourth")
FIFTH_BUDGET, FIFTH_LAYERS = 3e7, 14
FIFTH_TARGETS = [  # a fifth set, measured after the serial decode-attention term was designed (``--set fifth``)
    (432, 3.0, 2), (432, 1.2, 4), (496, 2.0, 8), (496, 0.8, 1), (560, 2.5, 4), (560, 1.0, 2), (624, 1.5, 1),
    (624, 0.6, 8), (688, 0.7, 4), (688, 0.4, 2),
]
"""(d_model, r wanted, GQA group) of the fifth set: 14 layers at 30M non-embedding parameters, a depth and d_model
values no earlier set has. Chosen and committed, with the validation that scores it, before it was measured."""
FIFTH_OUT = OUT.with_name("cpu_vllm_latency_fifth")
SETS = {"main": (BUDGET, LAYERS, TARGETS, OUT), "fresh": (FRESH_BUDGET, FRESH_LAYERS, FRESH_TARGETS, FRESH_OUT),
        "third": (THIRD_BUDGET, THIRD_LAYERS, THIRD_TARGETS, THIRD_OUT),
        "fourth": (FOURTH_BUDGET, FOURTH_LAYERS, FOURTH_TARGETS, FOURTH_OUT),
        "fifth": (FIFTH_BUDGET, FIFTH_LAYERS, FIFTH_TARGETS, FIFTH_OUT)}
"""Each shape set: its budget, depth, targets and default output folder."""
BACKENDS = ("vllm", "torch")
QUIET_LOAD, QUIET_WAIT_S, QUIET_TIMEOUT_S = 1.2, 30, 600
QUIET_BUSY_CORES, BUSY_SAMPLE_S = 0.3, 5.0
"""Between shapes nothing of this study runs, so more than 0.3 busy cores over 5 s is another job: wait for it. (The
load average cannot tell: the shape just measured keeps it above 1 for a minute.)"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vllm-python", type=Path, default=None, help="Python with vLLM (default $ARCHSCALE_VLLM_PYTHON).")
    parser.add_argument("--limit", type=int, default=len(TARGETS), help="Measure the first N shapes (at least 8).")
    parser.add_argument("--batch-sizes", default="1,4,16,32")
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="vLLM with torch.compile (default: eager, "
                        "which starts each engine ~1-2 min sooner on this machine).")
    parser.add_argument("--backends", type=parse_backends, default=BACKENDS,
                        help="Comma-separated subset of vllm,torch to measure (default both): vllm alone measures the "
                             "engine's latency at longer prompts in the time both would take at short ones.")
    parser.add_argument("--set", choices=tuple(SETS), default="main", dest="shape_set",
                        help="main: ten 6-layer 20M shapes; fresh: ten 8-layer 30M shapes (FRESH_TARGETS), measured "
                             "after the latency model was settled on the first; third: ten 10-layer 30M shapes "
                             "(THIRD_TARGETS), measured after the staggered admission was modelled; fourth: ten "
                             "12-layer 30M shapes (FOURTH_TARGETS), measured after the rows recorded the engine's "
                             "settings; fifth: ten 14-layer 30M shapes (FIFTH_TARGETS), measured after the "
                             "serial decode-attention term was designed")
    parser.add_argument("--out", type=Path, default=None, help="Default: results/cpu_vllm (fresh: "
                        "cpu_vllm_latency_fresh, third: cpu_vllm_latency_third, fourth: cpu_vllm_latency_fourth, fifth: cpu_vllm_latency_fifth).")
    return parser.parse_args()


def parse_backends(text: str) -> tuple[str, ...]:
    """``"vllm"`` -> ``("vllm",)``; kept in :data:`BACKENDS` order so the alternation per shape stays as it was."""
    names = {name.strip() for name in text.split(",") if name.strip()}
    unknown = sorted(names - set(BACKENDS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown backend(s) {', '.join(unknown) or '(none given)'}; "
                                         f"choose from {','.join(BACKENDS)}")
    return tuple(name for name in BACKENDS if name in names)


def pick_shapes(limit: int, shape_set: str = "main") -> list:
    """The candidate nearest each target (r on a log scale, then the budget), as architectures."""
    budget, layers, targets, _ = SETS[shape_set]
    table = generate_candidates(budget, layers, HEAD_DIM, tolerance=0.05, vocab_size=VOCAB, gqa_values=[1, 2, 4, 8],
                                d_model_values=sorted({d for d, _, _ in targets}), strict_hf=True)
    shapes = []
    for d_model, r_wanted, group in targets[:limit]:
        rows = table[(table["d_model"] == d_model) & (table["gqa"] == group)]
        distance = (rows["r"] / r_wanted).map(math.log).abs() + (rows["N"] / budget - 1).abs()
        row = rows.loc[distance.idxmin()]
        arch = architecture_from_row(row)
        shapes.append(arch.__class__(**{**arch.__dict__, "name": f"d{arch.d_model}-r{row['r']:.2f}-g{group}"}))
    return shapes


def load_average() -> float:
    return os.getloadavg()[0]


def wait_until_quiet() -> float:
    """Wait while other jobs keep the machine busy (the load is logged, not hidden); the load when measuring starts."""
    waited = 0
    while (load := load_average()) > QUIET_LOAD and waited < QUIET_TIMEOUT_S:
        print(f"load {load:.2f} > {QUIET_LOAD}: waiting {QUIET_WAIT_S} s", flush=True)
        time.sleep(QUIET_WAIT_S)
        waited += QUIET_WAIT_S
    return load


def busy_cores(seconds: float = BUSY_SAMPLE_S) -> float:
    """Cores kept busy over the next ``seconds`` (``/proc/stat``: all time but idle and I/O wait), by anything."""
    def sample() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return sum(values), values[3] + values[4]
    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return (os.cpu_count() or 1) * (1.0 - (idle1 - idle0) / max(total1 - total0, 1))


def wait_for_other_jobs() -> float:
    """Before each shape: wait (up to 10 min) while another job keeps more than :data:`QUIET_BUSY_CORES` busy."""
    waited = 0.0
    while (busy := busy_cores()) > QUIET_BUSY_CORES and waited < QUIET_TIMEOUT_S:
        print(f"{busy:.2f} cores busy with other jobs: waiting {QUIET_WAIT_S} s", flush=True)
        time.sleep(QUIET_WAIT_S)
        waited += QUIET_WAIT_S + BUSY_SAMPLE_S
    return busy


def measure_torch(target, options: BenchOptions, store: Path) -> None:
    """The torch backend in this process: one torch thread, pinned to core 0 (as vLLM's worker is)."""
    import torch

    affinity, threads = os.sched_getaffinity(0), torch.get_num_threads()
    os.sched_setaffinity(0, {0})
    torch.set_num_threads(1)
    try:
        run_sweep([target], options, store)
    finally:
        torch.set_num_threads(threads)
        os.sched_setaffinity(0, affinity)


def main() -> None:
    args = parse_args()
    if args.limit < 8:
        raise SystemExit("--limit: at least 8 shapes (half to fit a profile on, half to predict)")
    out = args.out or SETS[args.shape_set][3]
    store = out / "bench.sqlite"
    done = measured_pairs(store, len(args.batch_sizes.split(","))) if store.exists() else set()
    if done:
        print(f"{store} exists: measuring only the (shape, backend) pairs it lacks", flush=True)
    shapes = pick_shapes(args.limit, args.shape_set)
    specs = []
    for arch in shapes:
        directory = out / "configs" / arch.name
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(write_hf_config(arch), indent=2) + "\n")
        specs.append(str(directory))
    targets = resolve_targets(specs)
    common = dict(batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",")), input_len=args.input_len,
                  output_len=args.output_len, repeats=args.repeats)
    vllm = BenchOptions(backend="vllm", enforce_eager=not args.compile, vllm_python=args.vllm_python,
                        worker_timeout_s=1800, **common)
    torch_options = BenchOptions(backend="torch", device="cpu", **common)
    order = list(range(len(targets)))
    random.Random(0).shuffle(order)
    start_load = wait_until_quiet()
    print(f"measuring at load {start_load:.2f}", flush=True)
    load_rows = []
    started = time.perf_counter()
    for step, index in enumerate(order):
        target = targets[index]
        for backend, options in (("vllm", vllm), ("torch", torch_options))[:: 1 if step % 2 == 0 else -1]:
            if (target.label, backend) in done or backend not in args.backends:
                continue
            busy = wait_for_other_jobs()
            before, t0 = load_average(), time.perf_counter()
            if backend == "vllm":
                run_sweep([target], options, store)
            else:
                measure_torch(target, options, store)
            load_rows.append({"shape": target.label, "backend": backend, "seconds": round(time.perf_counter() - t0, 1),
                              "busy_cores_before": round(busy, 2), "load_before": before, "load_after": load_average()})
            print(f"[{time.perf_counter() - started:6.0f} s] {target.label} {backend}: {load_rows[-1]['seconds']} s, "
                  f"load {before:.1f} -> {load_rows[-1]['load_after']:.1f}", flush=True)
    count = export_csv(store, out / "cpu_vllm.csv")
    loads = pd.DataFrame(load_rows)
    if done and (out / "load.csv").exists():  # a resumed run: keep the loads of the earlier rows it kept
        earlier = pd.read_csv(out / "load.csv")
        kept = [(shape, backend) in done for shape, backend in zip(earlier["shape"], earlier["backend"])]
        loads = pd.concat([earlier[kept], loads], ignore_index=True)
    loads.to_csv(out / "load.csv", index=False)
    write_summary(out, load_results(store), loads, args, time.perf_counter() - started, count, start_load)


def measured_pairs(store: Path, n_batch_sizes: int) -> set[tuple[str, str]]:
    """(shape name, backend) pairs the store already holds a row for at every batch size."""
    rows = load_results(store)
    counts = rows.groupby(["name", "backend"])["batch_size"].nunique()
    return {pair for pair, count in counts.items() if count >= n_batch_sizes}


def write_summary(out: Path, rows: pd.DataFrame, loads: pd.DataFrame, args, seconds: float, count: int,
                  start_load: float) -> None:
    table = rows.pivot_table(index=["name", "d_model", "n_heads", "n_kv_heads", "d_ff"], columns=["backend", "batch_size"],
                             values="tokens_per_s").round(0)
    failed = rows[rows["status"] != "ok"]
    lines = [f"command: python experiments/studies/cpu_vllm_shapes.py --limit {args.limit} --batch-sizes {args.batch_sizes} "
             f"--input-len {args.input_len} --output-len {args.output_len} --repeats {args.repeats}"
             + (" --compile" if args.compile else "") + (f" --set {args.shape_set}" if args.shape_set != "main" else "")
             + (f" --backends {','.join(args.backends)}" if args.backends != BACKENDS else ""),
             f"{count} rows ({len(failed)} failed); this run {seconds / 60:.1f} min; load average (1 min) over the "
             f"measurements: median {loads[['load_before', 'load_after']].stack().median():.1f}, "
             f"max {loads[['load_before', 'load_after']].stack().max():.1f} on {os.cpu_count()} CPUs; at the start "
             f"{start_load:.2f}; cores busy with other jobs before each measurement: at most "
             f"{loads['busy_cores_before'].max():.2f}",
             f"vLLM rows: dtype {sorted(set(rows.loc[rows.backend == 'vllm', 'dtype']))}, threads "
             f"{sorted(set(rows.loc[rows.backend == 'vllm', 'threads'].dropna().astype(int)))}, cores "
             f"{sorted(set(rows.loc[rows.backend == 'vllm', 'cpu_binding'].dropna()))}"
             + (f"; torch rows: dtype {sorted(set(rows.loc[rows.backend == 'torch', 'dtype']))}, 1 thread on core 0"
                if (rows.backend == "torch").any() else ""),
             "", "total tokens/s:", table.to_string()]
    if len(failed):
        lines += ["", "failed rows:", failed[["name", "backend", "batch_size", "error"]].to_string()]
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
