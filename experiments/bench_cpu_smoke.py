"""CPU smoke test of ``archscale bench``: two tiny configs, torch backend, and the roofline beside them.

    python experiments/bench_cpu_smoke.py [--threads 1] [--out bench_cpu.sqlite]

Benchmarks two 2-layer configs (d_model 128, and 160 with 6 heads so that
d_model % n_heads != 0 and head_dim is explicit) at batch 1 and 4, 32 prompt
and 16 output tokens, float32, on this CPU, through the same code path as
``archscale bench --backend torch``. To compare with the roofline it first
measures this CPU's achieved float32 matmul rate and copy bandwidth and
describes the CPU as a "GPU" with those peaks (efficiencies 1.0), then prints
measured / roofline for every row. Tiny models on a CPU are dominated by
per-operator overhead the roofline does not model, so expect measured
throughput to be a small fraction of it; the point is that the pipeline runs
end to end and the numbers are comparable row for row.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console

from archscale.arch import Architecture
from archscale.bench.calibrate import calibrate, roofline_estimates
from archscale.bench.store import load_results
from archscale.bench.sweep import BenchOptions, resolve_targets, run_sweep
from archscale.cli.cmd_bench import _results_table
from archscale.cost.gpus import GPU
from archscale.cost.roofline import Efficiency

CONFIGS = {
    "tiny-d128": Architecture(2, 128, 4, 2, 32, 256, vocab_size=512, name="tiny-d128"),
    "tiny-d160": Architecture(2, 160, 6, 2, 32, 256, vocab_size=512, name="tiny-d160"),  # 160 % 6 != 0
}


def best_seconds(work, repeats: int = 5) -> float:
    """Fastest of a few runs: the achievable rate, not the average under noise."""
    work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def cpu_as_gpu(memory_gb: float) -> GPU:
    """This CPU as the roofline sees hardware: achieved fp32 matmul FLOP/s and copy bytes/s."""
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    flops = 2 * n**3 / best_seconds(lambda: a @ b)
    source = torch.empty(32 * 2**20)  # 128 MiB of float32
    target = torch.empty_like(source)
    bandwidth = 2 * source.numel() * 4 / best_seconds(lambda: target.copy_(source))
    return GPU("cpu", bf16_tflops=flops / 1e12, hbm_tb_s=bandwidth / 1e12, memory_gb=memory_gb, interconnect_gb_s=1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: these models are too small to gain from more, and on a shared "
                             "machine a second OpenMP thread waiting for a busy core makes each op take milliseconds).")
    parser.add_argument("--out", type=Path, default=None, help="Keep the store here (default: a temporary file).")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console(width=180)
    with tempfile.TemporaryDirectory(prefix="archscale-smoke-") as scratch:
        scratch = Path(scratch)
        specs = []
        for name, arch in CONFIGS.items():
            (scratch / name).mkdir()
            (scratch / name / "config.json").write_text(json.dumps(arch.to_hf_config()))
            specs.append(str(scratch / name))
        device = cpu_as_gpu(memory_gb=os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 1e9)
        gpu_file = scratch / "cpu_gpu.json"
        gpu_file.write_text(json.dumps([device.__dict__]))
        console.print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; this CPU achieves "
                      f"{device.bf16_tflops * 1e3:.1f} GFLOP/s fp32 matmul and {device.hbm_tb_s * 1e3:.1f} GB/s copy")
        store = args.out or scratch / "bench.sqlite"
        options = BenchOptions(backend="torch", device="cpu", batch_sizes=(1, 4), input_len=32, output_len=16, repeats=3)
        started = time.perf_counter()
        result = run_sweep(resolve_targets(specs), options, store)
        console.print(f"measured {len(result.records)} rows in {time.perf_counter() - started:.1f} s into {store}")
        frame = load_results(store)
        frame = frame[frame["backend"] == "torch"].reset_index(drop=True)
        console.print(_results_table(frame, title="torch backend on CPU (of roofline: at this CPU's measured peaks, "
                                     "efficiency 1.0)", gpu_file=gpu_file, efficiency=Efficiency(1.0, 1.0)))
        estimates = roofline_estimates(frame, device, Efficiency(1.0, 1.0))
        for row, estimate in zip(frame.itertuples(), estimates):
            console.print(f"{row.name:10s} batch {row.batch_size}: measured {row.tokens_per_s:9,.0f} tok/s, roofline "
                          f"{estimate:12,.0f} tok/s, measured/roofline {row.tokens_per_s / estimate:.4f}")
        fit = calibrate(frame, device)
        console.print(f"calibrated on these rows: compute {fit.efficiency.compute:.3f}, memory {fit.efficiency.memory:.3f}; "
                      f"|rel err| max {100 * fit.max_abs_rel_err_before:.0f}% -> {100 * fit.max_abs_rel_err_after:.0f}%, "
                      f"mean {100 * fit.mean_abs_rel_err_before:.0f}% -> {100 * fit.mean_abs_rel_err_after:.0f}%")
        bounded = [name for name, hit in fit.at_bound.items() if hit]
        unidentified = [name for name, ok in fit.identified.items() if not ok]
        if bounded or unidentified:
            console.print(f"note: at a bound: {bounded or 'none'}; not identified by these rows: {unidentified or 'none'}")
        console.print("note: models this small are paced by per-operator overhead, which the roofline does not model; "
                      "the fitted efficiencies describe this CPU run, not the hardware")
    return 0 if result.n_failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
