"""A benchmark as a study: one job per config, all its batch sizes, rows appended to the store as they land.

``archscale bench ... --executor inline|local|slurm`` turns the sweep of
:mod:`archscale.bench.sweep` into tasks of :mod:`archscale.jobs.dispatch`, one per
config, so each config's engine starts once and measures every batch size.
The store is the record of finished work: a (config, batch size) with an
``ok`` row for the same backend and workload is not measured again, so
resubmitting the same command measures only what is missing, and a job
killed half-way leaves its finished batch sizes in place. A measurement that
fails is a ``failed`` row (as in any bench run) and marks its config failed;
resubmitting tries it again.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

from archscale.io.units import canonical_dtype
from archscale.bench.records import config_hash
from archscale.bench.sweep import run_sweep
from archscale.bench.types import BenchOptions, Target
from archscale.jobs.dispatch import DispatchOptions, Task, TaskRecord, run_study, study_status
from archscale.io.errors import UserError

LOST_RECOVERY = "run the same command again: batch sizes already in the store are skipped"


def default_jobs_dir(store: str | Path) -> Path:
    """Where a bench study keeps its records unless told: beside the store (``bench.sqlite.jobs``)."""
    store = Path(store)
    return store.with_name(store.name + ".jobs")


def measured_batch_sizes(store: str | Path, target: Target, options: BenchOptions) -> set[int]:
    """Batch sizes of ``target`` that already have an ``ok`` row for this backend and workload.

    A row matches on the shape's hash, backend, input and output lengths and
    tensor parallelism, and on ``--dtype`` and ``--gpu`` when they were given
    (otherwise the backend decides them where the job runs, so any matches).
    """
    from archscale.bench.store import load_results

    path = Path(store)
    if not path.exists():
        return set()
    rows = load_results(path)
    keep = ((rows["config_hash"] == config_hash(target.arch)) & (rows["backend"] == options.backend)
            & (rows["status"] == "ok") & (rows["input_len"] == options.input_len)
            & (rows["output_len"] == options.output_len) & (rows["tp"].fillna(1) == options.tp))
    if options.dtype is not None:
        keep &= rows["dtype"] == canonical_dtype(options.dtype)
    if options.gpu is not None:
        keep &= rows["gpu"].astype(str).str.lower() == options.gpu.lower()
    return {int(b) for b in rows.loc[keep, "batch_size"]}


def bench_config(target: Target, options: BenchOptions, store: str) -> dict[str, Any]:
    """One bench task: measure the batch sizes of ``target`` missing from ``store``; what happened, as a dict.

    What is missing is read when the job starts, not when it was submitted,
    so a job that is requeued or resubmitted never measures a batch twice.
    """
    done = measured_batch_sizes(store, target, options)
    missing = tuple(b for b in options.batch_sizes if b not in done)
    if not missing:
        return {"status": "done", "note": "already in the store"}
    result = run_sweep([target], replace(options, batch_sizes=missing), store)
    failed = [r for r in result.records if r["status"] != "ok"]
    if result.interrupted:
        return {"status": "failed", "cause": f"interrupted after {len(result.records)} of {len(missing)} batch sizes",
                "recovery": LOST_RECOVERY}
    if failed:
        first = failed[0]
        return {"status": "failed", "cause": f"batch {first['batch_size']}: {first['error']} "
                f"({len(failed)} of {len(result.records)} rows failed, recorded in the store)",
                "recovery": "fix the cause, then run the same command again (rows already measured are kept)"}
    rates = ", ".join(f"batch {r['batch_size']} {r['tokens_per_s']:,.0f} tok/s" for r in result.records)
    return {"status": "done", "rows": len(result.records), "note": f"{len(result.records)} rows: {rates}"}


def bench_tasks(targets: Sequence[Target], options: BenchOptions, store: str | Path) -> list[Task]:
    """One task per config; configs whose every batch size is measured are marked finished."""
    if options.backend == "roofline":
        raise UserError("--executor runs measurements as jobs; --backend roofline is an instant estimate: drop --executor")
    store = Path(store).resolve()
    tasks = []
    for target in targets:
        done = measured_batch_sizes(store, target, options)
        finished = "in the store" if all(b in done for b in options.batch_sizes) else None
        key = f"{_slug(target.label)}-{config_hash(target.arch)}"
        tasks.append(Task(key, target.label, bench_config, dict(target=target, options=options, store=str(store)),
                          finished=finished, lost_recovery=LOST_RECOVERY))
    return tasks


def bench_study(targets: Sequence[Target], options: BenchOptions, store: str | Path, dispatch: DispatchOptions,
                on_event: Callable[[TaskRecord], None] | None = None) -> list[TaskRecord]:
    """Benchmark each config as a task of a study; one record per config."""
    return run_study(bench_tasks(targets, options, store), dispatch, on_event)


def bench_status(targets: Sequence[Target], options: BenchOptions, store: str | Path,
                 jobs_dir: str | Path) -> list[TaskRecord]:
    """Each config's state now; submits and writes nothing."""
    return study_status(bench_tasks(targets, options, store), jobs_dir)


def _slug(label: str) -> str:
    """A config's label as part of a task key (a path or preset name, made file-name safe)."""
    text = "".join(c if c.isalnum() or c in "-_." else "_" for c in label.rstrip("/"))
    return text.strip("_.")[-60:] or "config"
