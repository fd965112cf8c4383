"""``archscale fit`` and ``archscale predict``."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

from archscale.cli import app, console, print_json
from archscale.cli.options import format_count
from archscale.errors import UserError
from archscale.files import write_json
from archscale.laws import LAWS
from archscale.outputs import check_outputs
from archscale.runs import load_runs, parse_column_map
from archscale.study import Study, load_fit, run_study



def parse_fixed(items: list[str] | None) -> dict[str, float]:
    """``--fix b0=1`` items to a dict."""
    fixed: dict[str, float] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        try:
            fixed[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise UserError(f"--fix {item!r}: expected NAME=NUMBER, e.g. b0=1")
    return fixed


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}g}"


def _print_study(study: Study) -> None:
    fit = study.fit
    console.print(f"[bold]{fit.law.name}[/bold]: {fit.law.description}  ({fit.objective} fit on {fit.n_points} runs)")
    params = Table()
    params.add_column("parameter")
    params.add_column("value", justify="right")
    params.add_column("std. err.", justify="right")
    if fit.ci:
        params.add_column("95% bootstrap CI", justify="right")
    for name in fit.law.param_names:
        row = [name, _fmt(fit.params[name], 5), "fixed" if name in fit.fixed else _fmt(fit.stderr.get(name))]
        if fit.ci:
            low, high = fit.ci[name]
            row.append(f"{_fmt(low)} .. {_fmt(high)}")
        params.add_row(*row)
    console.print(params)

    metrics = Table()
    for column in ("rows", "n", "MSE", "R^2", "max rel. err", "mean rel. err", "Spearman"):
        metrics.add_column(column, justify="right")
    rows = [("fit", study.metrics["fit"]), ("holdout", study.metrics.get("holdout"))]
    rows += [(f"progressive: fit N {', '.join(map(format_count, task['fit_sizes']))} -> {format_count(task['test_sizes'][0])}",
              task.get("metrics")) for task in study.progressive]
    for label, values in rows:
        if not values:
            continue
        metrics.add_row(label, str(values["n"]), _fmt(values["mse"], 3), _fmt(values["r2"], 4),
                        f"{100 * values['max_rel_error']:.2f}%", f"{100 * values['mean_rel_error']:.2f}%",
                        _fmt(values["spearman"], 3))
    console.print(metrics)
    optimum = fit.law.optimum(fit.params)
    if optimum:
        console.print("closed-form optimum: " + ", ".join(f"{k}* = {_fmt(v)}" for k, v in optimum.items()))
    console.print(f"objective ({fit.objective}): {fit.objective_value:.6g}, best of {fit.n_starts} LM starts")
    for warning in fit.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")


@app.command(epilog="Example: archscale fit data/chinchilla_epoch.csv --law chinchilla --loss huber --where \"loss < 3.42\" --out fit.json --plot fit.png")
def fit(
    runs: Path = typer.Argument(..., help="Runs table (.csv, .parquet or .jsonl): one row per training run."),
    law: str = typer.Option("chinchilla", "--law", help=f"Law to fit: {', '.join(LAWS)}."),
    loss: str = typer.Option("lsq", "--loss", help="Objective: lsq (Levenberg-Marquardt on loss) or huber (on log-loss, delta 1e-3)."),
    col: Optional[list[str]] = typer.Option(None, "--col", help='Map a file column to a canonical one, e.g. --col N="Model Size" (C = training FLOPs, D = C/6N).'),
    where: Optional[str] = typer.Option(None, "--where", help='Use only rows matching this condition, e.g. "loss < 3.42".'),
    holdout: Optional[str] = typer.Option(None, "--holdout", help='Hold out rows matching this condition and score on them, e.g. "N>=1e9".'),
    progressive: bool = typer.Option(False, "--progressive", help="Also run the paper's progressive tasks: fit on the k smallest sizes, test on the next."),
    reference: Optional[Path] = typer.Option(None, "--reference", help="Chinchilla fit JSON giving L_opt(N,D) for conditional laws (default: best measured loss per (N,D))."),
    fix: Optional[list[str]] = typer.Option(None, "--fix", help="Hold a parameter at a value, e.g. --fix alpha=0.34 (conditional-mult fixes b0=1 by default)."),
    bootstrap: int = typer.Option(0, "--bootstrap", min=0, help="Bootstrap resamples for 95% confidence intervals."),
    max_evals: Optional[int] = typer.Option(None, "--max-evals", min=1, help="Cap on function evaluations per LM start."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the fit as JSON (read by predict and search)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG: predicted vs measured (held-out as crosses), U-curves for conditional laws."),
    as_json: bool = typer.Option(False, "--json", help="Print the fit JSON to stdout instead of tables."),
) -> None:
    """Fit a scaling law to a table of training runs and say how well it predicts held-out runs."""
    check_outputs(("--out", out, "json"), ("--plot", plot, "png"), inputs=(runs, reference))
    frame = load_runs(runs, parse_column_map(col))
    fitted_reference = load_fit(reference) if reference else None
    with _bootstrap_bar(bootstrap, quiet=as_json) as progress:
        study = run_study(frame, law, objective=loss, where=where, holdout=holdout, reference=fitted_reference,
                          fixed=parse_fixed(fix), bootstrap_samples=bootstrap, progressive=progressive,
                          max_evals=max_evals, source=str(runs), progress=progress)
    document = study.to_json()
    if plot:
        from archscale.plots import plot_study

        plot_study(study, plot)
    if out:
        write_json(out, document)
    if as_json:
        print_json(document)
        return
    _print_study(study)
    for label, path in (("fit", out), ("plot", plot)):
        if path:
            console.print(f"wrote {label}: {path}")


@contextlib.contextmanager
def _bootstrap_bar(samples: int, quiet: bool) -> Iterator[Callable[[int], None] | None]:
    """A progress bar over bootstrap resamples (on stderr), or no callback when there is nothing to show."""
    if not samples or quiet:
        yield None
        return
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("bootstrap", total=samples)
        yield lambda n: bar.advance(task, n)


@app.command(epilog="Example: archscale predict data/fits/dissertation_1b_mult.json --n 1e9 --d 1e11 --d-model 2560 --ratio 1.07")
def predict(
    fit_file: Path = typer.Argument(..., help="Fit JSON from archscale fit (or a published fit in data/fits)."),
    n: float = typer.Option(..., "--n", help="Non-embedding parameters N."),
    d: Optional[float] = typer.Option(None, "--d", help="Training tokens D."),
    d_model: Optional[int] = typer.Option(None, "--d-model", help="Hidden size (for d/sqrt(N) and the aspect ratio)."),
    layers: Optional[int] = typer.Option(None, "--layers", help="Number of layers (aspect law: R = d_model/layers)."),
    ratio: Optional[float] = typer.Option(None, "--ratio", help="MLP-to-attention parameter ratio r (conditional laws)."),
    l_opt: Optional[float] = typer.Option(None, "--l-opt", help="Reference loss L_opt(N,D) for conditional laws without a reference law."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Predict the loss of one configuration from a fitted law."""
    fitted = load_fit(fit_file)
    row: dict[str, float] = {"N": n}
    if d is not None:
        row["D"] = d
    if d_model is not None:
        row["x"] = d_model / math.sqrt(n)
        if layers is not None:
            row["R"] = d_model / layers
    if ratio is not None:
        row["r"] = ratio
    needs_reference = "L_opt" in fitted.law.columns and l_opt is None
    needed = [c for c in fitted.law.columns if c != "L_opt"] + (["N", "D"] if needs_reference else [])
    flags = {"N": "--n", "D": "--d", "x": "--d-model", "R": "--d-model and --layers", "r": "--ratio"}
    for column in needed:
        if column not in row:
            raise UserError(f"law {fitted.law.name} needs {flags[column]} to predict")
        if not (row[column] > 0 and math.isfinite(row[column])):
            raise UserError(f"{flags[column]} must be a positive number, got {row[column]}")
    value = float(fitted.predict(pd.DataFrame([row]), None if l_opt is None else np.array([l_opt]))[0])
    result = {"law": fitted.law.name, "inputs": row, "loss": value, "optimum": fitted.optimum() or None}
    if as_json:
        print_json(result)
        return
    inputs = ", ".join(f"{k}={v:.4g}" for k, v in row.items())
    console.print(f"{fitted.law.name} predicts loss {value:.4f} at {inputs}")
    if fitted.optimum():
        console.print("closed-form optimum: " + ", ".join(f"{k}* = {_fmt(v)}" for k, v in fitted.optimum().items()))
