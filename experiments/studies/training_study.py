"""What the CPU training studies share: train a folder of configs as local jobs, and the command line around it.

``cpu_gqa_study.py`` and ``cpu_moe_study.py`` each write their configs and analyse their runs; both train through
``archscale sweep``'s library call (two local jobs of one thread at a time, resumable) and take the same flags.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable

from archscale.jobs.dispatch import DispatchOptions
from archscale.jobs.slurm import Resources
from archscale.train.data import default_data_dir
from archscale.train.sweep import sweep


def train_configs(work: Path, runs: Path, written: int, parallel: int) -> None:
    """Train every config under ``work/configs`` (``written`` of them) into ``runs``, ``parallel`` jobs at a time."""
    configs = work / "configs"
    print(f"{written} configs under {configs}")
    dispatch = DispatchOptions(executor="local", jobs_dir=work / "jobs", resources=Resources(cpus=1),
                               max_parallel=parallel).checked()
    start = time.perf_counter()
    outcomes = sweep(configs, default_data_dir(), runs, out_root=work / "runs", echo=print, progress=False,
                     dispatch=dispatch)
    print(f"sweep: {sum(o.status in ('trained', 'resumed') for o in outcomes)} trained, "
          f"{sum(o.status.startswith('skipped') for o in outcomes)} skipped, "
          f"{(time.perf_counter() - start) / 60:.1f} min")


def study_main(description: str, results: Path, work: Path, write_configs: Callable[[Path, float], int],
               analyse: Callable[[Path, Path], None]) -> None:
    """``--quick`` (a tenth of the tokens, results under the scratch folder), ``--analyse``, ``--parallel``, ``--work``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a tenth of the tokens per run (smoke run, not committed)")
    parser.add_argument("--analyse", action="store_true", help="skip training; analyse the committed runs.csv")
    parser.add_argument("--parallel", type=int, default=2, help="training jobs at once (one thread each)")
    parser.add_argument("--work", type=Path, default=work, help="scratch folder for configs, jobs and run directories")
    args = parser.parse_args()
    results = args.work / "results" if args.quick else results
    results.mkdir(parents=True, exist_ok=True)
    runs = results / "runs.csv"
    if not args.analyse:
        written = write_configs(args.work / "configs", 0.1 if args.quick else 1.0)
        train_configs(args.work, runs, written, args.parallel)
    analyse(runs, results)
