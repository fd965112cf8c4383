"""``archscale train`` vs a minimal nanoGPT-style loop on the same model, eager and compiled, on this CPU.

    python experiments/benchmarks/bench_train_cpu.py [--rounds 3] [--steps 30] [--no-compile] [--json results.json]

Both loops train :class:`archscale.model.transformer.Transformer` (a ~0.85M-parameter
shape, byte vocabulary, on the embedded corpus) with the same recipe: float32,
sequences of 128, 16 per step, AdamW (0.9, 0.95) with weight decay on
matrices, fused where torch has it, cosine learning rate, gradient clipping at
1.0, no evaluation or checkpoints during the timed steps. The minimal loop is
what nanoGPT does: random offsets into a ``numpy.memmap``, forward, backward,
clip, step. archscale's figure is what ``archscale train`` reports
(:func:`archscale.train.loop.train`): steady-state tokens/s after its warm-up
steps, which it reports apart (``startup_s``, compilation included). The
minimal loop is timed the same way: wall time per optimizer step, the first
``STARTUP_STEPS`` apart.

Every run is a fresh Python process (as every ``archscale train`` is), so
each compiled run compiles: within one process torch.compile would reuse the
first run's compiled code and hide its cost; and each starts with an empty
inductor cache directory, so the reported warm-up holds a cold compile (what a
first run pays; a warm on-disk cache makes later ones cheaper). Rounds
interleave the four variants (the order rotates each round), each with a fresh
model from the same seed; the table shows medians over rounds and the ratios
of medians. One thread (``torch.set_num_threads(1)``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from archscale.shapes.architecture import Architecture
from archscale.model.transformer import Transformer
from archscale.train.config import TrainConfig
from archscale.train.data import default_data_dir
from archscale.train.loop import STARTUP_STEPS, train

ARCH = Architecture(4, 128, 4, 2, 32, 384, vocab_size=256, name="cpu-1m")
SEQ_LEN, BATCH, LR = 128, 16, 3e-3


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30, help="Optimizer steps per run, warm-up steps included.")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="Eager only.")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--one", choices=("archscale", "minimal"), help=argparse.SUPPRESS)  # one run, in this process
    parser.add_argument("--compiled", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def recipe(steps: int) -> TrainConfig:
    return TrainConfig(tokens=steps * SEQ_LEN * BATCH, seq_len=SEQ_LEN, batch_size=BATCH, micro_batch_size=BATCH,
                       lr_max=LR, warmup_steps=max(1, steps // 10), eval_every=0, eval_tokens=SEQ_LEN * BATCH,
                       checkpoint_every=0, log_every=10_000, dtype="float32")


def run_archscale(steps: int, compile_model: bool, data: Path) -> tuple[float, float]:
    """(steady tokens/s, warm-up seconds) as ``archscale train`` reports them."""
    with tempfile.TemporaryDirectory(prefix="bench-train-") as out:
        result = train(ARCH, data, Path(out) / "run", train_config=recipe(steps), device="cpu", progress=False,
                       compile_model=compile_model)
    return result.tokens_per_s, result.startup_s


def run_minimal(steps: int, compile_model: bool, data: Path) -> tuple[float, float]:
    """nanoGPT's loop on the same model and recipe; (steady tokens/s, seconds of the first STARTUP_STEPS steps)."""
    torch.manual_seed(0)
    model = Transformer(ARCH, max_seq_len=SEQ_LEN)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.95), fused=True)
    runner = torch.compile(model) if compile_model else model
    tokens = np.memmap(data / "train.bin", dtype=np.uint16, mode="r")
    rng = np.random.default_rng(0)
    warmup = max(1, steps // 10)
    seconds = []
    for step in range(steps):
        started = time.perf_counter()
        starts = rng.integers(0, len(tokens) - SEQ_LEN - 1, BATCH)
        x = torch.from_numpy(np.stack([tokens[s:s + SEQ_LEN] for s in starts]).astype(np.int64))
        y = torch.from_numpy(np.stack([tokens[s + 1:s + 1 + SEQ_LEN] for s in starts]).astype(np.int64))
        lr = LR * (step + 1) / warmup if step < warmup else \
            0.1 * LR + 0.45 * LR * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - 1 - warmup)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        _, loss = runner(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - started)
    assert math.isfinite(float(loss.detach()))
    steady = seconds[STARTUP_STEPS:]
    return len(steady) * SEQ_LEN * BATCH / sum(steady), sum(seconds[:STARTUP_STEPS])


def run_in_subprocess(name: str, compiled: bool, steps: int) -> tuple[float, float]:
    """One run in a fresh interpreter: (steady tokens/s, seconds of the first STARTUP_STEPS steps)."""
    command = [sys.executable, __file__, "--one", name, "--steps", str(steps)] + (["--compiled"] if compiled else [])
    with tempfile.TemporaryDirectory(prefix="inductor-cache-") as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr}")
    rate, warm = json.loads(done.stdout.strip().splitlines()[-1])
    return rate, warm


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    data = default_data_dir()
    if args.one is not None:
        runner = run_archscale if args.one == "archscale" else run_minimal
        print(json.dumps(runner(args.steps, args.compiled, data)))
        return 0
    variants = [("archscale", False), ("minimal", False)]
    if args.compile:
        variants += [("archscale", True), ("minimal", True)]
    one, five, _ = os.getloadavg()
    print(f"{ARCH.n_params_total / 1e6:.2f}M-parameter model, {SEQ_LEN} x {BATCH} tokens a step, {args.steps} steps a run "
          f"({STARTUP_STEPS} warm-up), {args.rounds} rounds, 1 thread, torch {torch.__version__}; load {one:.1f}/{five:.1f}",
          flush=True)
    results: dict[tuple[str, bool], list[tuple[float, float]]] = {v: [] for v in variants}
    for round_index in range(args.rounds):
        order = variants[round_index % len(variants):] + variants[:round_index % len(variants)]
        for name, compiled in order:
            rate, warm = run_in_subprocess(name, compiled, args.steps)
            results[(name, compiled)].append((rate, warm))
            print(f"  round {round_index + 1} {name:<9} {'compiled' if compiled else 'eager':<8} {rate:>9,.0f} tokens/s "
                  f"steady, first {STARTUP_STEPS} steps {warm:.2f} s", flush=True)
    median = {v: statistics.median(r for r, _ in rs) for v, rs in results.items()}
    warm = {v: statistics.median(w for _, w in rs) for v, rs in results.items()}
    one, five, _ = os.getloadavg()
    lines = [f"medians of {args.rounds} interleaved rounds (load {one:.1f}/{five:.1f})"]
    for (name, compiled), rate in median.items():
        lines.append(f"{name:<9} {'compiled' if compiled else 'eager':<8} {rate:>9,.0f} tokens/s steady, "
                     f"first {STARTUP_STEPS} steps {warm[(name, compiled)]:.2f} s")
    lines.append(f"archscale / minimal, eager: {median[('archscale', False)] / median[('minimal', False)]:.3f}x "
                 f"(target >= 0.95)")
    if args.compile:
        lines.append(f"archscale / minimal, compiled: {median[('archscale', True)] / median[('minimal', True)]:.3f}x")
        for name in ("archscale", "minimal"):
            lines.append(f"compile's effect on {name}: steady {median[(name, True)] / median[(name, False)]:.2f}x, "
                         f"warm-up {warm[(name, True)]:.1f} s vs {warm[(name, False)]:.1f} s eager")
    print("\n".join(lines))
    if args.json is not None:
        args.json.write_text(json.dumps({"results": {f"{n} {'compiled' if c else 'eager'}": v
                                                     for (n, c), v in results.items()}, "summary": lines}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
