"""What a job costs: the same 3-config sweep inline, as submitit local jobs, and as Slurm jobs.

Why: ``archscale sweep`` trains in this process by default (``--executor
inline``) and runs configs as jobs only when asked. This measures the price
of a job per config (a fresh interpreter importing torch, submitit's files,
the scheduler's latency) on tiny configs, where it is all overhead.

    python experiments/benchmarks/dispatch_overhead.py [--rounds 3]

Rounds are interleaved (inline, local, slurm, inline, ...), each from a
clean runs table; one torch thread per process. Slurm is skipped when no
cluster answers (``bash .ci/setup-slurm.sh`` starts one, as root).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from archscale.shapes.architecture import Architecture
from archscale.train.config import TrainConfig, write_config_dir

RECIPE = TrainConfig(tokens=128 * 6, seq_len=32, batch_size=4, micro_batch_size=4, lr_max=3e-3, warmup_steps=2,
                     eval_every=1000, eval_tokens=256, checkpoint_every=1000, log_every=2)
SHAPES = [Architecture(2, 32, 2, 1, 16, 64, vocab_size=256), Architecture(1, 32, 2, 2, 16, 96, vocab_size=256),
          Architecture(2, 48, 3, 1, 16, 64, vocab_size=256)]


def slurm_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    done = subprocess.run(["sinfo", "--noheader", "--format=%t"], capture_output=True, text=True)
    return done.returncode == 0 and any(s in ("idle", "mix") for s in done.stdout.split())


def one_sweep(work: Path, executor: str, env: dict[str, str]) -> float:
    configs, runs = work / "configs", work / "runs.csv"
    for leftover in [runs, work / "runs.csv.jobs", work / "runs.csv.lock", *configs.glob("*/run")]:
        shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)
    command = [sys.executable, "-m", "archscale", "sweep", str(configs), "--runs", str(runs), "--device", "cpu",
               "--executor", executor, "--no-progress"]
    if executor == "slurm":
        command += ["--job-cpus", "1", "--job-mem", "1"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if done.returncode != 0 or done.stdout.count("trained") != len(SHAPES):
        raise SystemExit(f"{executor} sweep failed (exit {done.returncode}): {done.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    executors = ["inline", "local"] + (["slurm"] if slurm_up() else [])
    work = Path(tempfile.mkdtemp(prefix="archscale-dispatch-"))
    try:
        for index, arch in enumerate(SHAPES):
            write_config_dir(work / "configs" / f"c{index}", arch, RECIPE)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "ARCHSCALE_CACHE": str(work / "cache")}
        subprocess.run([sys.executable, "-c", "from archscale.train.data import default_data_dir; default_data_dir()"],
                       env=env, check=True)
        times: dict[str, list[float]] = {name: [] for name in executors}
        for round_ in range(args.rounds):
            for name in executors:
                times[name].append(one_sweep(work, name, env))
                print(f"round {round_ + 1} {name:7s} {times[name][-1]:6.1f} s", flush=True)
        load = os.getloadavg()[0]
        base = statistics.median(times["inline"])
        print(f"\n3-config sweep of tiny recipes, wall time, median of {args.rounds} interleaved rounds "
              f"(load average {load:.1f} on {os.cpu_count()} cores):")
        for name in executors:
            median = statistics.median(times[name])
            print(f"  {name:7s} {median:6.1f} s  ({median / base:.2f}x inline; "
                  f"{(median - base) / len(SHAPES):+.1f} s per config)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
