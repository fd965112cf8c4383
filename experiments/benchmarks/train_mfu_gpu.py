"""Training throughput and MFU of the bundled loop on a GPU (the training issue's H100 item).

Run on a machine with a CUDA GPU (not runnable here: no GPU in the task that wrote it):
    python experiments/benchmarks/train_mfu_gpu.py                  # ~125M-parameter LLaMA-style model, seq 2048, bf16
    python experiments/benchmarks/train_mfu_gpu.py --seq-len 1024 --tokens 3e7

Trains through the same `archscale.train.loop.train` users call (bf16 autocast, torch.compile on CUDA, fused
AdamW) on the embedded byte-level corpus with a 32,000-entry vocabulary (the embedding is realistic in size; the
byte tokenizer uses 256 of it), and reports tokens/s and MFU = tokens/s x (6 N + 12 L H Q T) / peak, with the
datasheet bf16 peak (989 TFLOP/s on an H100 SXM) and, beside it, the peak a 8192^3 bf16 matmul reaches on this
card. The target is MFU >= 40%. Writes $OUT/train_mfu.json (or experiments/results/train_mfu.json).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from archscale.shapes.architecture import Architecture
from archscale.train.config import TrainConfig
from archscale.train.data import default_data_dir
from archscale.train.loop import detect_peak_tflops, train, train_flops_per_token

GPT2_SMALL_LIKE = Architecture(n_layers=12, d_model=768, n_heads=12, n_kv_heads=12, d_head=64, d_ff=2048,
                               vocab_size=32000, tie_embeddings=True, name="llama-125m")


def measured_matmul_tflops(size: int = 8192, repeats: int = 20) -> float:
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--tokens", type=float, default=5e7, help="token budget of the timed run")
    parser.add_argument("--micro-batch", type=int, default=16)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("train_mfu_gpu.py needs a CUDA GPU")
    arch = GPT2_SMALL_LIKE
    device = torch.device("cuda")
    config = TrainConfig(tokens=int(args.tokens), seq_len=args.seq_len, batch_size=64, micro_batch_size=args.micro_batch,
                         lr_max=6e-4, warmup_steps=50, eval_every=0, eval_tokens=262_144, checkpoint_every=0, log_every=20,
                         dtype="bfloat16", compile=True)
    peak = detect_peak_tflops(device)
    matmul = measured_matmul_tflops()
    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        result = train(arch, default_data_dir(), Path(scratch) / "run", train_config=config, device="cuda",
                       peak_tflops=peak, progress=False)
        wall = time.perf_counter() - start
    flops = train_flops_per_token(arch, args.seq_len)
    summary = {
        "gpu": torch.cuda.get_device_name(device), "torch": torch.__version__, "model": arch.name,
        "n_non_embedding": arch.n_params_non_embedding, "n_total": arch.n_params_total, "seq_len": args.seq_len,
        "tokens": result.tokens, "wall_s": wall, "tokens_per_s": result.tokens_per_s, "flops_per_token": flops,
        "datasheet_peak_tflops": peak, "mfu_datasheet": result.tokens_per_s * flops / (peak * 1e12) if peak else None,
        "measured_matmul_tflops": matmul, "mfu_vs_measured_matmul": result.tokens_per_s * flops / (matmul * 1e12),
        "val_loss": result.val_loss,
    }
    out = Path(os.environ.get("OUT", Path(__file__).resolve().parents[1] / "results")) / "train_mfu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    for key, value in summary.items():
        print(f"{key:26s} {value}")
    mfu = summary["mfu_datasheet"]
    print(f"MFU {100 * mfu:.1f}% of the datasheet peak -> {'PASS' if mfu and mfu >= 0.4 else 'FAIL'} (target 40%)")


if __name__ == "__main__":
    main()
