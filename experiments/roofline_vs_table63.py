"""Roofline estimate beside the dissertation's measured vLLM throughput (Table 6.3).

Setting: vLLM, 4096 input / 1024 output tokens, batch 16/32/64/128, on an
A100 (taken as the 40GB part, as the paper's Figures 6.5-6.8 say) and an H200.
Prints measured tokens/s, the estimate (total and output tokens/s), their
ratios, and the measured and estimated Surefire-over-LLaMA speedups; then
checks that the estimate ranks Surefire above LLaMA-3.2 at every batch size
on both GPUs, as measured. Exit status 1 if it does not.

Run: ``python experiments/roofline_vs_table63.py``
"""

from __future__ import annotations

import sys

from archscale.arch import PRESETS
from archscale.cost import Workload, estimate_throughput, load_gpu

BATCHES = (16, 32, 64, 128)
INPUT_LEN, OUTPUT_LEN = 4096, 1024

# Dissertation Table 6.3, vLLM rows (tokens/s).
MEASURED = {
    "a100-40gb": {
        "llama-3.2-1b": (1931.87, 2602.72, 3409.85, 3825.91),
        "surefire-1b": (2116.49, 3290.23, 4028.69, 4800.05),
        "llama-3.2-3b": (904.83, 1121.39, 1136.61, 1222.03),
        "surefire-3b": (1005.44, 1356.07, 1613.32, 1476.22),
    },
    "h200": {
        "llama-3.2-1b": (4311.97, 6221.14, 8131.65, 9306.36),
        "surefire-1b": (4532.85, 6992.71, 9493.46, 11282.56),
        "llama-3.2-3b": (2269.53, 3119.94, 3872.14, 4311.43),
        "surefire-3b": (2309.48, 3271.63, 4242.33, 4841.53),
    },
}
PAIRS = (("surefire-1b", "llama-3.2-1b"), ("surefire-3b", "llama-3.2-3b"))


def estimates(gpu_name: str) -> dict[str, list]:
    """Roofline estimate for every model and batch size on one GPU."""
    gpu = load_gpu(gpu_name)
    return {
        model: [estimate_throughput(PRESETS[model], gpu, Workload(batch, INPUT_LEN, OUTPUT_LEN)) for batch in BATCHES]
        for model in MEASURED[gpu_name]
    }


def print_comparison(gpu_name: str, estimated: dict[str, list]) -> None:
    print(f"\n== {gpu_name}: vLLM {INPUT_LEN} in / {OUTPUT_LEN} out ==")
    print(f"{'model':14s} {'batch':>5s} {'measured':>10s} {'est total':>10s} {'est out':>9s} "
          f"{'meas/total':>10s} {'meas/out':>9s} {'fits':>5s} {'conc':>5s}")
    for model, rows in estimated.items():
        for batch, measured, estimate in zip(BATCHES, MEASURED[gpu_name][model], rows):
            print(f"{model:14s} {batch:5d} {measured:10.0f} {estimate.total_tokens_per_s:10.0f} "
                  f"{estimate.output_tokens_per_s:9.0f} {measured / estimate.total_tokens_per_s:10.3f} "
                  f"{measured / estimate.output_tokens_per_s:9.3f} {'yes' if estimate.fits else 'no':>5s} "
                  f"{estimate.concurrency:5d}")


def check_ranking(gpu_name: str, estimated: dict[str, list]) -> bool:
    """Surefire above LLaMA at every batch size; prints measured vs estimated speedups."""
    ok = True
    for fast, slow in PAIRS:
        for i, batch in enumerate(BATCHES):
            est = estimated[fast][i].total_tokens_per_s / estimated[slow][i].total_tokens_per_s
            meas = MEASURED[gpu_name][fast][i] / MEASURED[gpu_name][slow][i]
            verdict = "PASS" if est > 1.0 else "FAIL"
            ok &= est > 1.0
            print(f"{verdict} {gpu_name:9s} {fast} / {slow} at batch {batch:3d}: "
                  f"estimated speedup {est:.3f}, measured {meas:.3f}")
    return ok


def main() -> int:
    results = {gpu_name: estimates(gpu_name) for gpu_name in MEASURED}
    for gpu_name, estimated in results.items():
        print_comparison(gpu_name, estimated)
    print("\n== ranking check: Surefire above LLaMA-3.2 at every batch size ==")
    ok = all([check_ranking(gpu_name, estimated) for gpu_name, estimated in results.items()])
    print("\nPASS: the roofline ranks Surefire above LLaMA everywhere" if ok else "\nFAIL: see the rows above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
