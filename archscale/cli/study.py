"""What ``sweep`` and ``bench`` share to run a study as jobs: the dispatch flags, the progress view, the status table.

Not a ``cmd_`` module: it registers no command; ``cmd_train`` and
``cmd_bench`` use its option objects so both verbs spell the flags alike.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from archscale.cli import console, print_json
from archscale.jobs.dispatch import EXECUTORS, DispatchOptions, TaskRecord
from archscale.io.errors import UserError
from archscale.jobs.slurm import Resources, parse_time_min

PANEL = "Jobs (--executor local or slurm)"

# Option objects, shared by `sweep` and `bench` (typer reads them as parameter defaults).
def jobs_dir_option(beside: str, example: str) -> Any:
    """``--jobs-dir``, its default named by the one output it sits beside on this verb (--runs or --store)."""
    return typer.Option(None, "--jobs-dir", help="Where the study keeps its records, job files and logs "
                        f"(default: beside {beside}, e.g. {example}).", rich_help_panel=PANEL)


JOBS_DIR = jobs_dir_option("--runs", "runs.csv.jobs")  # sweep and search-gqa: beside the runs table they append to
STORE_JOBS_DIR = jobs_dir_option("--store", "bench.sqlite.jobs")  # bench: beside the results store
PARTITION = typer.Option(None, "--partition", help="Slurm partition (default: the cluster's default).", rich_help_panel=PANEL)
JOB_GPUS = typer.Option(None, "--job-gpus", help="GPUs per job (slurm: --gpus-per-node; local: disjoint CUDA devices "
                        "per job).", rich_help_panel=PANEL)
JOB_CPUS = typer.Option(None, "--job-cpus", help="CPUs per job (slurm: --cpus-per-task; local: --job-cpus x --max-parallel "
                        "at most this machine's CPUs); also caps the job's torch threads.",
                        rich_help_panel=PANEL)
JOB_MEM = typer.Option(None, "--job-mem", help="Memory per job in GB (slurm: --mem).", rich_help_panel=PANEL)
JOB_TIME = typer.Option(None, "--job-time", help="Time limit per job: minutes, H:MM:SS or D-HH:MM:SS (slurm default: "
                        "the partition's limit; local: a week).", rich_help_panel=PANEL)
MAX_PARALLEL = typer.Option(None, "--max-parallel", help="Jobs in flight at once (local default 1; slurm default: all, "
                            "the scheduler queues them).", rich_help_panel=PANEL)
WAIT = typer.Option(True, "--wait/--no-wait", help="Wait for the jobs and show progress (--no-wait: slurm only; submit, "
                    "then follow with --status).", rich_help_panel=PANEL)
STATUS = typer.Option(False, "--status", help="Show each config's state (queued, running, done, failed) and submit "
                      "nothing.", rich_help_panel=PANEL)


def executor_option(default: Optional[str], help_default: str) -> Any:
    return typer.Option(default, "--executor", help=f"Run each config {help_default}: inline (in this process, one after "
                        "another), local (a submitit job each, on this machine) or slurm (a batch job each).",
                        rich_help_panel=PANEL)


def parse_job_time(text: Optional[str]) -> Optional[int]:
    """``--job-time`` to minutes: ``90``, ``1:30:00``, ``2-00:00:00``."""
    if text is None:
        return None
    if not re.fullmatch(r"\s*(\d+-)?\d+(:\d+){0,2}\s*", text):
        raise UserError(f"--job-time {text!r}: expected minutes (90), H:MM:SS (1:30:00) or D-HH:MM:SS (2-00:00:00)")
    minutes = parse_time_min(text)
    if not minutes:
        raise UserError(f"--job-time {text!r}: must be at least one minute")
    return minutes


def dispatch_options(executor: str, jobs_dir: Optional[Path], default_jobs_dir: Path, partition: Optional[str] = None,
                     gpus: Optional[int] = None, cpus: Optional[int] = None, mem_gb: Optional[float] = None,
                     time: Optional[str] = None, max_parallel: Optional[int] = None, wait: bool = True) -> DispatchOptions:
    """The dispatch flags as :class:`DispatchOptions` (checked for consistency, not yet against a cluster)."""
    if executor not in EXECUTORS:
        raise UserError(f"--executor {executor!r}: choose {', '.join(EXECUTORS)}")
    if jobs_dir is not None:  # a file where the records' folder goes was found only at the lock, unnamed
        in_the_way = next((folder for folder in (Path(jobs_dir), *Path(jobs_dir).parents) if folder.exists()), None)
        if in_the_way is not None and not in_the_way.is_dir():
            raise UserError(f"--jobs-dir {jobs_dir}: {in_the_way} is a file, not a folder; give a folder for the "
                            "study's records (or leave --jobs-dir out for the default beside the results)")
    resources = Resources(partition=partition, gpus=gpus, cpus=cpus, mem_gb=mem_gb, time_min=parse_job_time(time))
    return DispatchOptions(executor=executor, jobs_dir=jobs_dir or default_jobs_dir, resources=resources,
                           max_parallel=max_parallel, wait=wait)


# ---- the progress view ---------------------------------------------------------------------------
class StudyView:
    """Counts of queued / running / done / failed under a bar, and one line per change of a config's state.

    The bar is drawn only for local and Slurm jobs: inline, the training
    loop draws its own bar, and rich shows one live display at a time.
    """

    def __init__(self, live: bool, executor: str = "inline") -> None:
        self.executor = executor
        self.states: dict[str, str] = {}
        self.seen: dict[str, tuple[str, str | None]] = {}
        self.errors = Console(stderr=True)
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[counts]}"), TimeElapsedColumn(), console=self.errors,
                                 disable=not live, transient=False)
        self.task = self.progress.add_task("study", total=None, counts="")
        self.started = False

    def __call__(self, record: TaskRecord) -> None:
        if not self.started:  # drawn from the first event on: an error before it leaves no empty bar behind
            self.progress.start()
            self.started = True
        before = self.seen.get(record.key)
        self.seen[record.key] = (record.state, record.job_id)
        self.states[record.key] = record.state
        # every config starts queued (counted, not printed); then a line each time its state or its job changes
        if before != self.seen[record.key] and not (before is None and record.state == "queued" and not record.job_id):
            self.errors.print(record.line(), markup=False, highlight=False, soft_wrap=True)
        counts = self.counts()
        self.progress.update(self.task, total=len(self.states), completed=counts["done"] + counts["failed"],
                             counts=" · ".join(f"{counts[s]} {s}" for s in ("queued", "running", "done", "failed")))

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(("queued", "running", "done", "failed"), 0)
        for state in self.states.values():
            counts[state] = counts.get(state, 0) + 1
        return counts

    @contextlib.contextmanager
    def shown(self) -> Iterator["StudyView"]:
        try:
            yield self
        except KeyboardInterrupt:
            if self.executor == "slurm":
                note = ("Slurm jobs already submitted keep running: run the same command again to follow them "
                        "(finished configs are skipped), or add --status to look")
            else:
                note = "run the same command again to go on (finished configs are skipped, interrupted runs resume)"
            self.errors.print(f"interrupted: {note}", markup=False, highlight=False, soft_wrap=True)
            raise
        finally:
            if self.started:
                self.progress.stop()


def report(states: Sequence[str], jobs_dir: Path, waited: bool) -> None:
    """The closing line on stderr; exit 1 when a config failed (its cause is above and in study.json).

    ``states`` holds one of queued, running, done, failed per config.
    """
    counts = dict.fromkeys(("queued", "running", "done", "failed"), 0)
    for state in states:
        counts[state] = counts.get(state, 0) + 1
    errors = Console(stderr=True)
    summary = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
    errors.print(f"{len(states)} configs: {summary} (records in {jobs_dir / 'study.json'})", markup=False, highlight=False, soft_wrap=True)
    if not waited and (counts["queued"] or counts["running"]):
        errors.print("jobs submitted: add --status to the same command to follow them, or run it again to wait for them",
                     markup=False, highlight=False, soft_wrap=True)
    if counts["failed"]:
        errors.print(f"{counts['failed']} failed: fix the cause shown, then run the same command again "
                     "(finished configs are skipped, interrupted runs resume)", markup=False, highlight=False, soft_wrap=True)
        raise SystemExit(1)


def print_status(records: Sequence[TaskRecord], jobs_dir: Path, as_json: bool) -> None:
    """The status table (or JSON): one row per config."""
    if as_json:
        print_json([{**{k: v for k, v in vars(r).items()}} for r in records])
        return
    table = Table(title=f"{jobs_dir}: {len(records)} configs")
    for column in ("config", "state", "executor", "job", "detail"):
        table.add_column(column, overflow="fold")
    for record in records:
        detail = record.note or ""
        if record.state == "failed":
            detail = f"{record.cause or ''}" + (f"; to recover: {record.recovery}" if record.recovery else "")
        table.add_row(record.name, record.state, record.executor or "", record.job_id or "", detail)
    console.print(table)


# ---- bench as a study --------------------------------------------------------------------------------
def bench_study_mode(specs: list[str], executor: Optional[str], status: bool, options: Any, out: Optional[Path],
                     dispatch_flags: dict[str, Any], progress: bool, as_json: bool) -> None:
    """``archscale bench SPEC... --executor E`` (or ``--status``): one job per config, skipping measured rows.

    ``options`` is the :class:`~archscale.bench.sweep.BenchOptions` built
    from the bench flags; ``out`` the store (default bench.sqlite).
    """
    from archscale.bench.jobs import bench_status, bench_study, default_jobs_dir
    from archscale.bench.store import check_store_path
    from archscale.bench.sweep import make_backend, resolve_targets

    store = check_store_path(out or Path("bench.sqlite"))
    dispatch = dispatch_options(executor or "inline", default_jobs_dir=default_jobs_dir(store), **dispatch_flags)
    targets = resolve_targets(specs)
    if status:
        print_status(bench_status(targets, options, store, dispatch.jobs_dir), dispatch.jobs_dir, as_json)
        return
    if dispatch.executor != "slurm":
        make_backend(options)  # the jobs run here: refuse a backend this machine cannot run before submitting any
    dispatch = dispatch.checked()
    view = StudyView(live=progress and not as_json and dispatch.executor != "inline", executor=dispatch.executor)
    with view.shown():
        records = bench_study(targets, options, store, dispatch, on_event=view)
    if as_json:
        print_json([vars(record) for record in records])
    else:
        for record in records:
            console.print(record.line(), markup=False, highlight=False, soft_wrap=True)
    report([record.state for record in records], dispatch.jobs_dir, waited=dispatch.wait)
