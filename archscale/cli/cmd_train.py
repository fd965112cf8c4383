"""``archscale train``, ``sweep``, ``export`` and ``data prepare``: thin wrappers over :mod:`archscale.train`."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

import typer

from archscale.cli import EMIT_TINY_CONFIGS, Command, Group, app, examples, print_json, study
from archscale.cli.options import COUNT
from archscale.io.units import DTYPE_HELP, parse_count
from archscale.fit.runs import RUNS_TABLE
from archscale.io.outputs import check_outputs

data_app = typer.Typer(cls=Group, help="Prepare token data for training (archscale data prepare --help).",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")

DEVICE_HELP = "auto (CUDA when present), cpu or cuda."
TOKENS_HELP = "Token budget, e.g. 2e6, 1.5M or 20B (overrides train.json)."
THREADS_HELP = ("CPU threads for training (default: torch's, every core; on a machine other work shares, fewer can be "
                "faster). A flag, not a recipe setting: the recipe hash is the same.")


def _tokens(text: Optional[str]) -> Optional[int]:
    return None if text is None else int(parse_count(text, "--tokens"))


def default_run_dir(config_dir: Path) -> Path:
    """Where ``train`` puts a run without ``--out``: ``CONFIGS-runs/NAME`` for the config ``CONFIGS/NAME``.

    Beside the configs folder, never inside it: a run directory holds a config.json, so inside the folder it would
    be one more config to a later ``sweep``, and ``search --emit`` refuses to emit again into a folder holding runs
    (it did, after the ``train`` example of ``--help``). The path stays as relative as the one given.
    """
    config = Path(os.path.normpath(config_dir))
    if config.name in ("", ".", "..") or config.parent.name in ("", ".", ".."):
        config = config.resolve()
    return config.parent.parent / f"{config.parent.name or 'configs'}-runs" / config.name


@app.command("train", cls=Command, epilog=examples(
    EMIT_TINY_CONFIGS,
    "archscale train out/configs-tiny/cand-01 --tokens 100K --runs out/runs.csv",
    "torchrun --nproc_per_node 8 -m archscale.train out/configs-tiny/cand-01 --tokens 300M --out out/run-ddp "
    "--runs out/runs.csv   # needs: 8 GPUs",
))
def train_cmd(
    config_dir: Path = typer.Argument(..., help="Config directory: config.json (HF Llama-style) and optional train.json."),
    data: Optional[Path] = typer.Option(None, "--data", help="Prepared data directory (default: the embedded stdlib corpus, byte tokens)."),
    tokens: Optional[str] = typer.Option(None, "--tokens", metavar=COUNT, help=TOKENS_HELP),
    out: Optional[Path] = typer.Option(None, "--out", help="The run directory it creates (default: beside the configs "
                                       "folder, CONFIGS-runs/NAME for CONFIGS/NAME: out/configs-tiny/cand-01 trains "
                                       "into out/configs-tiny-runs/cand-01)."),
    runs: Optional[Path] = typer.Option(None, "--runs", help="Append the finished run's row to this CSV runs table."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run directory's last checkpoint."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for init and data order (overrides train.json)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    peak_tflops: Optional[float] = typer.Option(None, "--peak-tflops", help="Peak TFLOP/s per device for MFU (auto on known GPUs)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    fsdp: bool = typer.Option(False, "--fsdp", help="Under torchrun, shard with FSDP2 instead of DDP."),
    compile_model: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the model "
                                                 "(default: train.json's compile, else on CUDA only; CPU needs a C++ compiler)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print the result row as JSON."),
) -> None:
    """Train one model from a config directory and append its row to a runs table."""
    from archscale.train.loop import train

    out = out or default_run_dir(config_dir)
    check_outputs(("--out", out, "dir"), ("--runs", runs, RUNS_TABLE), inputs=(config_dir, data))
    result = train(config_dir, data, out, tokens=_tokens(tokens), seed=seed, resume=resume, runs=runs, device=device,
                   peak_tflops=peak_tflops, progress=progress, fsdp=fsdp, compile_model=compile_model, threads=threads)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return
    if json_out:
        print_json(result.row)
        return
    mfu = "n/a" if result.mfu is None else f"{100 * result.mfu:.1f}%"
    speed = f"{result.tokens_per_s:,.0f}" if math.isfinite(result.tokens_per_s) else "n/a"
    warmup = f"after {result.startup_steps} warm-up steps, {result.startup_s:.1f} s{' incl. compile' if result.compiled else ''}"
    typer.echo(f"{result.run_dir}: {result.steps} steps, {result.tokens:,} tokens, val loss {result.val_loss:.4f}, "
               f"train loss {result.train_loss:.4f}, {speed} tokens/s ({warmup}), MFU {mfu}")


@app.command("sweep", cls=Command, epilog=examples(
    EMIT_TINY_CONFIGS,
    "archscale sweep out/configs-tiny --tokens 100K --runs out/runs.csv --out out/configs-tiny-runs",
    "archscale sweep out/configs-tiny --tokens 100K --runs out/runs.csv --out out/configs-tiny-runs --status",
    "archscale sweep out/configs-tiny --tokens 100K --runs out/runs.csv --out out/configs-tiny-runs --executor slurm "
    "--partition gpu --job-gpus 8   # needs: a Slurm cluster with GPUs",
))
def sweep_cmd(
    configs_dir: Path = typer.Argument(..., help="Directory whose subdirectories are config directories."),
    data: Optional[Path] = typer.Option(None, "--data", help="Prepared data directory (default: the embedded corpus)."),
    runs: Path = typer.Option(..., "--runs", help="CSV runs table: finished recipes are skipped, new rows appended."),
    tokens: Optional[str] = typer.Option(None, "--tokens", metavar=COUNT, help="Token budget for every run, e.g. 2e6 or 1.5M (overrides train.json)."),
    out: Optional[Path] = typer.Option(None, "--out", help="The folder it creates, one run directory per config in it (default: each CONFIG/run)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for every run (overrides train.json)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    as_json: bool = typer.Option(False, "--json", help="Print what happened to each config as JSON."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
    executor: str = study.executor_option("inline", "(default inline)"),
    nproc: Optional[int] = typer.Option(None, "--nproc-per-run", help="Processes per training run: torchrun (DDP) when > 1 "
                                        "(default: --job-gpus when more than 1, else 1).", rich_help_panel=study.PANEL),
    jobs_dir: Optional[Path] = study.JOBS_DIR,
    partition: Optional[str] = study.PARTITION,
    job_gpus: Optional[int] = study.JOB_GPUS,
    job_cpus: Optional[int] = study.JOB_CPUS,
    job_mem: Optional[float] = study.JOB_MEM,
    job_time: Optional[str] = study.JOB_TIME,
    max_parallel: Optional[int] = study.MAX_PARALLEL,
    wait: bool = study.WAIT,
    status: bool = study.STATUS,
) -> None:
    """Train every config directory (in this process, or as local or Slurm jobs); run it again to resume."""
    from archscale.train.sweep import default_jobs_dir, sweep, sweep_status

    check_outputs(("--out", out, "dir"), ("--runs", runs, RUNS_TABLE), inputs=(configs_dir, data))
    options = study.dispatch_options(executor, jobs_dir, default_jobs_dir(runs), partition, job_gpus, job_cpus, job_mem,
                                     job_time, max_parallel, wait)
    if status:
        records = sweep_status(configs_dir, data, runs, tokens=_tokens(tokens), out_root=out, seed=seed, jobs_dir=options.jobs_dir)
        study.print_status(records, options.jobs_dir, as_json)
        return
    options = options.checked()
    view = study.StudyView(live=progress and not as_json and options.executor != "inline", executor=options.executor)
    with view.shown():
        outcomes = sweep(configs_dir, data, runs, tokens=_tokens(tokens), out_root=out, seed=seed, device=device,
                         progress=progress and not as_json, dispatch=options, nproc=nproc, on_event=view, threads=threads)
    if as_json:
        print_json([{"name": o.name, "status": o.status, "run_dir": str(o.run_dir), "recipe_hash": o.recipe_hash,
                     "val_loss": o.val_loss, "cause": o.cause, "recovery": o.recovery, "job_id": o.job_id}
                    for o in outcomes])
    else:
        for outcome in outcomes:
            line = f"{outcome.name}: {outcome.status}"
            if outcome.val_loss is not None:
                line += f", val loss {outcome.val_loss:.4f}"
            if outcome.cause:
                line += f": {outcome.cause}"
            typer.echo(line)
    study.report([o.status if o.status in ("queued", "running", "failed") else "done" for o in outcomes],
                 options.jobs_dir, waited=options.wait)


@app.command("export", cls=Command, epilog=examples(
    EMIT_TINY_CONFIGS,
    "archscale train out/configs-tiny/cand-01 --tokens 100K --out out/run-tiny",
    "archscale export out/run-tiny --out out/tiny-hf",
))
def export_cmd(
    run_dir: Path = typer.Argument(..., help="A run directory (holds checkpoint.pt and config.json)."),
    out: Path = typer.Option(..., "--out", help="The folder it creates: config.json + model.safetensors."),
    dtype: str = typer.Option("float32", "--dtype", help=DTYPE_HELP),
) -> None:
    """Write a trained run as a Hugging Face Llama checkpoint (config.json + model.safetensors)."""
    from archscale.train.export import export_hf

    check_outputs(("--out", out, "dir"), inputs=(run_dir,))
    path = export_hf(run_dir, out, dtype=dtype)
    typer.echo(f"wrote {path}")


@data_app.command("prepare", cls=Command, epilog=examples(
    "archscale data prepare --corpus README.md --corpus 'docs/*.md' --out out/tokens",
))
def prepare_cmd(
    corpus: list[str] = typer.Option(..., "--corpus", metavar="<path>", help="File, directory or glob (repeatable)."),
    out: Path = typer.Option(..., "--out", help="The data folder it creates (train.bin, val.bin, meta.json)."),
    tokenizer: str = typer.Option("byte", "--tokenizer", help="'byte' (vocab 256) or a local tokenizer.json (needs the tokenizers package)."),
    val_fraction: float = typer.Option(0.05, "--val-fraction", help="Fraction of tokens (the tail) held out for validation."),
) -> None:
    """Tokenize text files into train.bin / val.bin / meta.json."""
    from archscale.train.data import prepare

    check_outputs(("--out", out, "data-dir"), inputs=corpus)
    meta = prepare(corpus, out, tokenizer=tokenizer, val_fraction=val_fraction)
    typer.echo(f"{out}: {meta['n_tokens']:,} tokens ({meta['n_train']:,} train, {meta['n_val']:,} val) from "
               f"{meta['n_files']} files, tokenizer {meta['tokenizer']} (vocab {meta['vocab_size']})")
