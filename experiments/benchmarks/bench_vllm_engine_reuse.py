"""Wall time of a vLLM bench sweep: one engine per config (now) against one engine per (config, batch size) (before).

    python experiments/benchmarks/bench_vllm_engine_reuse.py --vllm-python .venv-vllm/bin/python

Both designs run the same sweep (2 configs x 3 batch sizes, the same workload and repeats) through
archscale's vLLM backend, side by side in one run: "one engine per config" is ``run_sweep`` as ``archscale
bench`` calls it; "one engine per batch size" is the same backend given one batch size at a time, which
starts one worker and one engine per (config, batch size), as the backend did before. The designs are
interleaved config by config (new then old for the first config, old then new for the second, ...), so that
a change in the machine's load falls on both; each config's run of each design has its own empty vLLM compile
cache (``VLLM_CACHE_ROOT``), as a sweep of new shapes would. One untimed engine start comes first, so that
neither design pays for reading vLLM and torch from a cold disk cache (the first worker of a run is otherwise
10-20 s slower). That start also leaves what vLLM learns once per model *class*, not per shape: its inspection
of ``LlamaForCausalLM`` (``VLLM_CACHE_ROOT/modelinfos``, about 12 s of an engine start here when missing). A
user's persistent cache holds it after their first vLLM run, so with ``--model-info-cache warm`` (the default)
every fresh cache starts with a copy of it; ``cold`` leaves it out, so each config's first engine pays it (the
old design then pays it once per config, not once per engine, which lowers the ratio). With ``--rounds R``
the whole comparison repeats R times, the order flipped each round. Prints each design's wall time per config
and in all, tokens/s per row, the ratio of wall times (in all and per round), and the machine load.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from archscale.shapes.architecture import Architecture
from archscale.bench.sweep import resolve_targets, run_sweep
from archscale.bench.types import BenchOptions
from archscale.shapes.hf_config import write_hf_config

CONFIGS = {  # two small LLaMA-style shapes (vLLM needs d_model divisible by the heads)
    "d256-h4kv2": Architecture(4, 256, 4, 2, 64, 704, vocab_size=8192, name="d256-h4kv2"),
    "d512-h8kv2": Architecture(4, 512, 8, 2, 64, 1408, vocab_size=8192, name="d512-h8kv2"),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vllm-python", type=Path, default=None, help="Python with vLLM (default $ARCHSCALE_VLLM_PYTHON).")
    parser.add_argument("--batch-sizes", default="1,4,16")
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--enforce-eager", action="store_true", help="Skip vLLM's torch.compile (shorter engine starts).")
    parser.add_argument("--rounds", type=int, default=1, help="Repeat the comparison, order flipped each round.")
    parser.add_argument("--model-info-cache", choices=("warm", "cold"), default="warm",
                        help="Start each fresh vLLM cache with the model-class inspection (warm, as a user's cache) or empty.")
    parser.add_argument("--cores", default=None, help="VLLM_CPU_OMP_THREADS_BIND for every engine (e.g. 1; default vLLM's auto).")
    return parser.parse_args()


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


MODEL_INFO = "modelinfos"
"""The folder of ``VLLM_CACHE_ROOT`` where vLLM keeps its per-model-class inspection (shape-independent)."""


def sweep(targets, options: BenchOptions, per_batch: bool, seed_cache: Path | None = None) -> tuple[float, list[dict]]:
    """Wall time and records of one design, with a fresh vLLM compile cache (holding ``seed_cache``'s model info)."""
    records: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="vllm-cache-") as cache:
        os.environ["VLLM_CACHE_ROOT"] = cache
        if seed_cache is not None and (seed_cache / MODEL_INFO).is_dir():
            shutil.copytree(seed_cache / MODEL_INFO, Path(cache) / MODEL_INFO)
        start = time.perf_counter()
        if per_batch:
            for target in targets:
                for batch in options.batch_sizes:
                    one = dataclasses.replace(options, batch_sizes=(batch,))
                    records += run_sweep([target], one).records
        else:
            records = run_sweep(targets, options).records
        return time.perf_counter() - start, records


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="engine-reuse-") as scratch:
        specs = []
        for name, arch in CONFIGS.items():
            directory = Path(scratch) / name
            directory.mkdir()
            (directory / "config.json").write_text(json.dumps(write_hf_config(arch)))
            specs.append(str(directory))
        targets = resolve_targets(specs)
        options = BenchOptions(backend="vllm", batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",")),
                               input_len=args.input_len, output_len=args.output_len, repeats=args.repeats,
                               enforce_eager=args.enforce_eager, vllm_python=args.vllm_python, worker_timeout_s=1800)
        print(f"{len(targets)} configs x batch sizes {args.batch_sizes}, input {args.input_len} / output "
              f"{args.output_len}, {args.repeats} repeats, {'eager' if args.enforce_eager else 'torch.compile (default)'}")
        if args.cores is not None:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = args.cores
        print(f"before: {load()}")
        seed_cache = Path(scratch) / "warm-up-cache"
        os.environ["VLLM_CACHE_ROOT"] = str(seed_cache)
        start = time.perf_counter()
        run_sweep(targets[:1], dataclasses.replace(options, batch_sizes=options.batch_sizes[:1]))
        print(f"warm-up engine start (untimed in the comparison): {time.perf_counter() - start:.1f} s ({load()})", flush=True)
        warm = args.model_info_cache == "warm"
        if warm and not (seed_cache / MODEL_INFO).is_dir():
            raise SystemExit(f"the warm-up left no {seed_cache / MODEL_INFO}: this vLLM keeps its model info elsewhere; "
                             "use --model-info-cache cold")
        print(f"model-class inspection cache: {args.model_info_cache} in every fresh vLLM cache")
        seed_cache = seed_cache if warm else None
        new_s = old_s = 0.0
        new_rows, old_rows = [], []
        for round_ in range(args.rounds):
            round_new = round_old = 0.0
            for index, target in enumerate(targets):
                for per_batch in ((False, True) if (index + round_) % 2 == 0 else (True, False)):
                    seconds, rows = sweep([target], options, per_batch=per_batch, seed_cache=seed_cache)
                    label = "one engine per batch size" if per_batch else "one engine per config"
                    print(f"round {round_ + 1}  {target.label:12s} {label:26s} {seconds:7.1f} s  ({load()})", flush=True)
                    if per_batch:
                        round_old, old_rows = round_old + seconds, old_rows + rows
                    else:
                        round_new, new_rows = round_new + seconds, new_rows + rows
            print(f"round {round_ + 1}: {round_old:.1f} s / {round_new:.1f} s = {round_old / round_new:.2f}x", flush=True)
            new_s, old_s = new_s + round_new, old_s + round_old
        print(f"one engine per config:      {new_s:7.1f} s in all")
        print(f"one engine per batch size:  {old_s:7.1f} s in all")
        print(f"speed-up of the sweep (wall time, per batch size / per config): {old_s / new_s:.2f}x")
        print("tokens/s, per config vs per batch size (same workload; status):")
        for new, old in zip(new_rows, old_rows):
            print(f"  {new['name']:12s} batch {new['batch_size']:3d}: {new['tokens_per_s'] or float('nan'):9.1f} vs "
                  f"{old['tokens_per_s'] or float('nan'):9.1f}  ({new['status']}/{old['status']}, {new['dtype']}, "
                  f"threads {new['threads']}, cores {new['cpu_binding']})")


if __name__ == "__main__":
    main()
