"""``archscale sweep``: train a directory of config directories, safely re-runnable, in this process or as jobs.

Each subdirectory with a ``config.json`` is one recipe. A recipe is skipped
when the runs table already has a row with its config hash, or when its run
directory holds ``result.json``; a run directory with a checkpoint is resumed.
So after a crash, a killed job or a pre-emption the same command picks up
where it stopped and never duplicates a row.

Each recipe is one task of a study (:mod:`archscale.jobs.dispatch`): trained in
this process one after another (``inline``, the default), or as a job through
submitit on this machine (``local``) or on Slurm (``slurm``), where a job
with several processes runs under ``torchrun``. A recipe that fails (a bad
shape, a corrupt checkpoint, a killed job) is recorded with its cause and how
to recover, and the sweep goes on with the others.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from archscale.jobs.dispatch import DispatchOptions, Task, TaskRecord, run_study, study_status
from archscale.io.errors import UserError
from archscale.train.checkpoint import checkpoint_path
from archscale.train.config import CONFIG_FILE
from archscale.fit.runs import check_appendable
from archscale.train.loop import RESULT_FILE, RunSpec, resolve_run, train
from archscale.train.preflight import check_recipes_fit

DEVICES = ("auto", "cpu", "cuda")
LOST_RECOVERY = "run the same command again: the config resumes from its last checkpoint"


@dataclass
class SweepOutcome:
    """One recipe's fate in a sweep."""

    name: str
    # "trained", "resumed", "skipped: in runs table", "skipped: finished", "failed", or (jobs not waited for)
    # "queued" / "running"
    status: str
    run_dir: Path
    recipe_hash: str
    val_loss: float | None = None
    cause: str | None = None
    recovery: str | None = None
    job_id: str | None = None


def config_dirs(configs_dir: str | Path) -> list[Path]:
    """Sorted subdirectories that hold a ``config.json``."""
    root = Path(configs_dir)
    if not root.is_dir():
        raise UserError(f"{root}: not a directory (expected a directory of config directories)")
    found = sorted(p for p in root.iterdir() if p.is_dir() and (p / CONFIG_FILE).exists())
    if not found:
        raise UserError(f"{root}: no subdirectory with a {CONFIG_FILE}")
    return found


def recorded_hashes(runs: Path) -> set[tuple[str, str | None]]:
    """(recipe hash, data hash) of each row of the runs table: the runs it already holds.

    The recipe hash is read under ``recipe_hash`` or, in older tables, ``config_hash``; the data hash is None for a
    row written before rows named their data (:func:`has_row_for`)."""
    if not runs.exists():
        return set()
    if runs.is_dir():
        raise UserError(f"--runs {runs}: is a directory, expected a CSV runs table")
    import pandas as pd

    try:
        frame = pd.read_csv(runs, dtype=str)
    except pd.errors.EmptyDataError:
        return set()
    except (ValueError, pd.errors.ParserError) as exc:
        raise UserError(f"--runs {runs}: cannot be read as CSV: {str(exc).splitlines()[0]}") from None
    from archscale.fit.runs import recipe_hashes

    recipes = recipe_hashes(frame)
    data = frame["data_hash"] if "data_hash" in frame.columns else pd.Series([None] * len(frame), index=frame.index)
    return {(recipe, None if pd.isna(trained_on) else trained_on) for recipe, trained_on in zip(recipes, data)
            if not pd.isna(recipe)}


def has_row_for(done: set[tuple[str, str | None]], recipe: str, data: str) -> bool:
    """Whether the runs table holds this recipe trained on this data. A row that names no data (written before rows
    did) counts as this data's, as it always has: such a table cannot tell."""
    return (recipe, data) in done or (recipe, None) in done


def default_jobs_dir(runs: str | Path) -> Path:
    """Where a sweep keeps its study records unless told: beside the runs table (``runs.csv.jobs``)."""
    runs = Path(runs)
    return runs.with_name(runs.name + ".jobs")


# ---- the job -----------------------------------------------------------------------------------
def train_config(config_dir: str, data_dir: str, run_dir: str, runs: str, tokens: int | None = None,
                 seed: int | None = None, device: str = "auto", nproc: int = 1, progress: bool = False,
                 threads: int | None = None) -> dict[str, Any]:
    """One sweep task: train (or resume) one config and append its row; what happened, as a dict.

    Runs in a job (or inline). With ``nproc > 1`` it launches ``torchrun``
    with that many processes on this node (one per GPU: DDP). A checkpoint
    that cannot be read is reported with how to recover, not retried forever.
    """
    run = Path(run_dir)
    checkpoint = checkpoint_path(run)
    resume = checkpoint.exists()
    if resume:
        problem = _unreadable(checkpoint)
        if problem:
            return {"status": "failed", "cause": f"{checkpoint}: cannot be loaded ({problem}), so this run cannot resume",
                    "recovery": f"move {checkpoint} away (to keep it) or delete it, then run the same command again: "
                                "this config restarts from its first step"}
    if nproc > 1:
        row = _torchrun(config_dir, data_dir, run, runs, tokens, seed, device, nproc, resume, threads)
        if "error" in row:
            return {"status": "failed", "cause": row["error"], "recovery": LOST_RECOVERY if checkpoint.exists() else None}
        val_loss = row["val_loss"]
    else:
        val_loss = train(config_dir, data_dir, run, tokens=tokens, seed=seed, resume=resume, runs=runs, device=device,
                         progress=progress, threads=threads).val_loss
    verb = ("resumed" if resume else "trained") + (f" by {nproc} processes (torchrun)" if nproc > 1 else "")
    return {"status": "done", "resumed": resume, "val_loss": val_loss, "note": f"{verb}, val loss {val_loss:.4f}"}


def _unreadable(path: Path) -> str | None:
    """Why a checkpoint cannot be loaded, or None. Memory-mapped: checks the file's structure without reading its tensors."""
    import zipfile

    import torch

    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a truncated one has lost its directory
        return "not a complete torch checkpoint: truncated or overwritten"
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # a truncated, overwritten or foreign file
        return f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
    return None


def _torchrun(config_dir: str, data_dir: str, run: Path, runs: str, tokens: int | None, seed: int | None,
              device: str, nproc: int, resume: bool, threads: int | None = None) -> dict[str, Any]:
    """``torchrun --standalone --nproc_per_node N -m archscale.train ...``: the row, or ``{"error": cause}``.

    Its stderr is passed through (to the job's log) and its last lines kept
    for the cause; each process gets ``threads`` OpenMP threads (``--threads``), else the cores split between them.
    """
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "archscale.train", str(config_dir), "--data", str(data_dir), "--out", str(run),
               "--runs", str(runs), "--device", device, "--no-progress", "--json"]
    command += [flag for flag, value in (("--tokens", tokens), ("--seed", seed)) if value is not None for flag in (flag, str(value))]
    if resume:
        command.append("--resume")
    threads = threads or max(1, int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1) // nproc)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    print(f"archscale: torchrun: {' '.join(command)}", file=sys.stderr, flush=True)
    tail: collections.deque[str] = collections.deque(maxlen=40)
    errors: list[str] = []  # archscale's own one-line errors ("error: ..."), before the ranks' tracebacks bury them
    with tempfile.TemporaryFile("w+") as stdout:
        process = subprocess.Popen(command, stdout=stdout, stderr=subprocess.PIPE, text=True, env=env)
        assert process.stderr is not None
        for line in process.stderr:
            sys.stderr.write(line)
            tail.append(line.rstrip())
            if line.startswith("error: "):
                errors.append(line.rstrip()[len("error: "):])
        code = process.wait()
        stdout.seek(0)
        text = stdout.read()
    if code == 0:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return {"error": f"torchrun ended well but printed no result row (stdout: {text.strip()[-200:]!r})"}
    last = errors[0] if errors else next((line for line in reversed(tail) if line.strip()), "")
    return {"error": f"torchrun with {nproc} processes exited {code}: {last.strip()[:300]}"}


# ---- the study ----------------------------------------------------------------------------------
def sweep_tasks(configs_dir: str | Path, data_dir: str | Path | None, runs: str | Path, *, tokens: int | None = None,
                out_root: str | Path | None = None, seed: int | None = None, device: str = "auto", nproc: int = 1,
                progress: bool = False, will_train: bool = True,
                threads: int | None = None) -> tuple[list[Task], dict[str, tuple[Path, RunSpec]]]:
    """Check every input, then one task per recipe (finished ones marked); also each key's run dir and spec.

    ``will_train`` False (``--status``): the recipes are not checked against this machine's memory, since a status
    query trains nothing and the jobs may run on other machines.

    Nothing is written here: a bad config, data directory, runs table or flag
    stops the sweep before any job is submitted.
    """
    from archscale.train.data import data_fingerprint, default_data_dir, read_meta

    if device not in DEVICES:
        raise UserError(f"--device must be {', '.join(DEVICES)}, got {device!r}")
    if nproc < 1:
        raise UserError(f"--nproc-per-run must be at least 1, got {nproc}")
    runs = Path(runs).resolve()
    dirs = config_dirs(configs_dir)
    specs = [resolve_run(d, tokens=tokens, seed=seed) for d in dirs]  # validate every config before training any
    check_appendable(runs)
    if will_train:
        check_recipes_fit(specs, device)
    data = (Path(data_dir) if data_dir is not None else default_data_dir()).resolve()
    meta = read_meta(data)
    vocab, data_hash = int(meta["vocab_size"]), data_fingerprint(meta)
    done = recorded_hashes(runs)
    tasks, where = [], {}
    for config_dir, spec in zip(dirs, specs):
        if vocab > spec.arch.vocab_size:
            raise UserError(f"{config_dir / CONFIG_FILE}: vocab_size {spec.arch.vocab_size} < the data's tokenizer "
                            f"vocabulary {vocab} (--data {data})")
        cfg = spec.train_config
        if cfg.batch_size % (cfg.micro_batch_size * nproc):
            raise UserError(f"{config_dir / 'train.json'}: batch_size {cfg.batch_size} must be a multiple of "
                            f"micro_batch_size {cfg.micro_batch_size} x {nproc} processes (--nproc-per-run)")
        run_dir = (Path(out_root) / config_dir.name if out_root is not None else config_dir / "run").resolve()
        if run_dir.exists() and not run_dir.is_dir():
            raise UserError(f"{run_dir}: exists and is not a directory (the run directory of {config_dir.name})")
        finished = ("in runs table" if has_row_for(done, spec.recipe_hash, data_hash)
                    else _finished_run(run_dir, config_dir, spec, data, data_hash, will_train))
        key = f"{config_dir.name}-{spec.recipe_hash}"
        kwargs = dict(config_dir=str(config_dir.resolve()), data_dir=str(data), run_dir=str(run_dir), runs=str(runs),
                      tokens=tokens, seed=seed, device=device, nproc=nproc, progress=progress, threads=threads)
        tasks.append(Task(key, config_dir.name, train_config, kwargs, finished=finished, lost_recovery=LOST_RECOVERY))
        where[key] = (run_dir, spec)
    return tasks, where


def _finished_run(run_dir: Path, config_dir: Path, spec: RunSpec, data: Path, data_hash: str,
                  will_train: bool) -> str | None:
    """``"finished"`` when the run directory holds this recipe's finished run on this data, else None.

    A finished run of another recipe (other --tokens, --seed or train.json) or on other data is not this sweep's to
    report as done: a sweep that will train refuses it, before anything runs; --status calls it not submitted.
    """
    from archscale.fit.runs import current_names

    try:
        row = current_names(json.loads((run_dir / RESULT_FILE).read_text()))
    except (OSError, json.JSONDecodeError, AttributeError):
        return None  # no finished run there (a checkpoint is the resume's to judge)
    recipe, trained_on = row.get("recipe_hash"), row.get("data_hash")
    if recipe == spec.recipe_hash and trained_on in (None, data_hash):
        return "finished"
    if not will_train:
        return None
    what = (f"a finished run of another recipe of {config_dir.name} (recipe hash {recipe}; these flags give "
            f"{spec.recipe_hash}: other --tokens, --seed or train.json)" if recipe != spec.recipe_hash else
            f"{config_dir.name}'s run on other data (data hash {trained_on}; --data {data} is {data_hash})")
    raise UserError(f"{run_dir}: holds {what}; give --out a new folder for these runs, or the flags that run had")


def sweep(configs_dir: str | Path, data_dir: str | Path | None, runs: str | Path, *, tokens: int | None = None,
          out_root: str | Path | None = None, seed: int | None = None, device: str = "auto", progress: bool = True,
          echo: Callable[[str], None] | None = None, dispatch: DispatchOptions | None = None, nproc: int | None = None,
          on_event: Callable[[TaskRecord], None] | None = None, threads: int | None = None) -> list[SweepOutcome]:
    """Train each recipe under ``configs_dir`` not yet in ``runs``; return what happened to each.

    ``dispatch`` chooses how (default: in this process, records beside
    ``runs``); it must have passed :meth:`DispatchOptions.checked`.
    ``nproc`` processes per run (torchrun when > 1; default: the job's GPUs
    when more than one, else 1). ``on_event`` sees each change of state;
    without it, ``echo`` gets one line per change.
    """
    dispatch = dispatch or DispatchOptions(jobs_dir=default_jobs_dir(runs))
    gpus = dispatch.resources.gpus or 0
    nproc = nproc if nproc is not None else (gpus if gpus > 1 else 1)
    inline_progress = progress and dispatch.executor == "inline"
    tasks, where = sweep_tasks(configs_dir, data_dir, runs, tokens=tokens, out_root=out_root, seed=seed, device=device,
                               nproc=nproc, progress=inline_progress, threads=threads)
    if on_event is None and echo is not None:
        on_event = lambda record: echo(record.line())  # noqa: E731
    records = run_study(tasks, dispatch, on_event)
    return [_outcome(record, *where[record.key]) for record in records]


def sweep_status(configs_dir: str | Path, data_dir: str | Path | None, runs: str | Path, *, tokens: int | None = None,
                 out_root: str | Path | None = None, seed: int | None = None,
                 jobs_dir: str | Path | None = None) -> list[TaskRecord]:
    """Each recipe's state now (queued, running, done, failed, not submitted); submits and writes nothing."""
    tasks, _ = sweep_tasks(configs_dir, data_dir, runs, tokens=tokens, out_root=out_root, seed=seed, will_train=False)
    return study_status(tasks, jobs_dir or default_jobs_dir(runs))


def _outcome(record: TaskRecord, run_dir: Path, spec: RunSpec) -> SweepOutcome:
    if record.state == "done":
        if record.note and record.note.startswith("skipped"):
            status = record.note
        else:
            status = "resumed" if record.result.get("resumed") else "trained"
    else:
        status = record.state
    return SweepOutcome(record.name, status, run_dir, spec.recipe_hash, record.result.get("val_loss"),
                        record.cause, record.recovery, record.job_id)
