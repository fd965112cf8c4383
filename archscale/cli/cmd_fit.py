"""``archscale fit`` and ``archscale predict``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import typer
from rich.table import Table

from archscale.cli import Command, app, bootstrap_bar, console, examples, print_json
from archscale.cli.options import COLUMN_MAP, COUNT, DROP_INVALID, FIT_MIN_TOKENS_PER_PARAM, WHERE, parse_assignments
from archscale.io.units import format_count, parse_count
from archscale.io.errors import UserError
from archscale.io.files import write_json
from archscale.laws import LAWS, MULTIPLICATIVE
from archscale.fit.hygiene import describe_outliers
from archscale.io.outputs import check_outputs, written_together
from archscale.fit.runs import parse_column_map, read_runs
from archscale.fit.fitted import load_fit
from archscale.fit.study import Study, run_study



PREDICT_FLAG_COLUMNS = {"--d-model": ("x", "R"), "--layers": ("R",), "--ratio": ("r",), "--gqa": ("gqa",),
                        "--l-opt": ("L_opt",)}
"""The law inputs each of predict's shape flags sets: a flag none of whose inputs the law reads changes nothing."""


def _refuse_unread_flags(fitted: Any, given: dict[str, Any]) -> None:
    """A flag the law does not read would be echoed beside a prediction it did not change; and a law that reads
    inputs predict has no flag for (the MoE laws' G, E/k, N_active) cannot be given them here."""
    reads = set(fitted.law.columns)
    moe = [column for column in ("G", "expansion", "N_active") if column in reads]
    if moe:
        raise UserError(f"law {fitted.law.name} is a Mixture-of-Experts law (it reads {', '.join(moe)}), and predict "
                        "takes dense shapes: rank MoE shapes with archscale search --experts E --experts-per-token K "
                        "(see archscale search --help)")
    for flag, value in given.items():
        if value is not None and not reads & set(PREDICT_FLAG_COLUMNS[flag]):
            raise UserError(f"{flag}: law {fitted.law.name} does not read it (its inputs: "
                            f"{', '.join(fitted.law.columns)}), so it would not change the prediction; drop it")


def _outside_shape(fitted: Any, row: dict[str, float], layers: int | None) -> list[str]:
    """The shape coordinates given that lie outside the fit's runs, as search labels them (empty when inside, or
    when the fit records no coverage)."""
    from archscale.fit.coverage import outside_coverage, outside_label
    from archscale.search.constrained import law_coordinates, sees_depth

    given = {name: row[name] for name in ("x", "r", "gqa") if name in row}
    if layers is not None and sees_depth(fitted):
        given["n_layers"] = float(layers)
    if not fitted.coverage or not given:
        return []
    mask = int(outside_coverage(pd.DataFrame([given]), fitted.coverage, law_coordinates(fitted))[0])
    if not mask:
        return []
    return [f"the shape lies outside the fit's runs: {outside_label(given, mask, fitted.coverage)}; the law has not "
            "seen it (search ranks such shapes only with --extrapolate)"]


def _loose_optimum(fit: Any) -> str:
    """A caveat for a closed-form optimum built from parameters the runs do not pin down (standard error above the
    value): it moves as far as they do, so it is not a finding of these runs."""
    loose = [name for name, error in fit.stderr.items()
             if error is not None and error > abs(fit.params[name]) and name not in fit.fixed]
    base = fit.law.optimum(fit.params)
    moved = [name for name in loose
             if any(not math.isclose(base[k], v, rel_tol=1e-6) for k, v in
                    fit.law.optimum({**fit.params, name: fit.params[name] * 1.01}).items() if k in base)]
    if not moved:
        return ""
    return (f"from {', '.join(moved)}, whose standard errors exceed their values: these runs do not determine "
            "it")


def _caveats(*parts: str) -> str:
    """`` (a; b)`` after a printed figure, or nothing when there is no caveat."""
    given = [part for part in parts if part]
    return f" ({'; '.join(given)})" if given else ""


def _negative_r2(values: dict) -> str:
    """A note for an R^2 below zero, which reads as a fit worse than useless: it is often a few runs of nearly
    equal loss (the held-out 1B runs), whose spread is smaller than small errors. ``{label}`` is left to fill."""
    r2, mse = values.get("r2"), values.get("mse")
    if r2 is None or mse is None or not math.isfinite(r2) or r2 >= 0:
        return ""
    spread = math.sqrt(mse / (1 - r2))  # R^2 = 1 - MSE / variance
    return (f"note: R^2 {r2:.3g} on the {{label}} rows: their losses spread by {spread:.3g} (standard deviation), less "
            f"than the errors ({math.sqrt(mse):.3g} root mean square); R^2 scores the errors against that spread, "
            "not against the loss, so read the relative errors beside it")


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}g}"


def _print_selection(study: Study) -> None:
    """The candidate forms, each scored by how it predicted the larger runs from the smaller ones."""
    selection = study.form_selection
    if selection is None:
        return
    if selection.candidates:
        unit = selection.column
        folds = "; ".join(f"fold {i + 1}: fit {f.n_train} runs with {unit} < {f.threshold:.3g}, predict the {f.n_test} from there up"
                          for i, f in enumerate(selection.folds))
        console.print(f"form selection by extrapolation ({folds})")
        if selection.split_reason:
            console.print(f"split by {'budget C' if selection.split == 'budget' else 'size ' + selection.size_column}: {selection.split_reason} "
                          "(--split sets it)")
        floors = len({candidate.floor for candidate in selection.candidates}) > 1
        tested = selection.tested_floor
        table = Table()
        for column in ("law", "objective", "free params", *(["min D/N"] if floors else []), "score",
                       *[f"fold {i + 1}" for i in range(len(selection.folds))], "worst run", ""):
            table.add_column(column, justify="left" if column in ("law", "objective", "") else "right")
        for candidate in sorted(selection.candidates, key=lambda c: (c.score is None, bool(c.degenerate), c.score or 0)):
            floor = [_floor_label(candidate.floor)] if floors else []
            if candidate.score is None:
                table.add_row(candidate.law, candidate.objective, str(candidate.free_params), *floor, "-",
                              *["-" for _ in selection.folds], "-",
                              f"not fitted: {_unfitted_reason(candidate.error)}")
                continue
            chosen = (candidate.law, candidate.objective, candidate.floor) == (selection.law, selection.objective, selection.floor)
            remark = "[bold]selected[/bold]" if chosen else ""
            if candidate.degenerate:
                remark = " ".join(filter(None, [remark, f"degenerate: {_degenerate_label(candidate.degenerate)}"]))
            table.add_row(candidate.law, candidate.objective, str(candidate.free_params), *floor, f"{100 * candidate.score:.2f}%",
                          *[f"{100 * e:.2f}%" for e in candidate.fold_errors], f"{100 * candidate.max_rel_error:.2f}%", remark)
        console.print(table)
        console.print("score: mean relative error on each fold's larger runs, averaged over folds"
                      + (f", scored on the runs with D/N >= {tested:g} for every candidate" if tested is not None else "")
                      + ("; min D/N: runs trained on fewer tokens per parameter were left out of that candidate's fits"
                         if floors else "")
                      + ("; a degenerate candidate is chosen only when nothing else could be scored"
                         if any(c.degenerate for c in selection.candidates) else ""))
    if selection.note:
        console.print(f"note: {selection.note}")
    if selection.warning:
        console.print(f"[yellow]warning:[/yellow] {selection.warning}")


def _unfitted_reason(error: str | None) -> str:
    """Why a candidate could not be fitted, without the source and law its row already names."""
    reason = (error or "").split(": ", 1)[-1]
    return reason.split("is not identifiable from these runs: ", 1)[-1] if "not identifiable" in reason else reason


def _floor_label(floor: float | None) -> str:
    return "-" if floor is None else f"{floor:g}"


def _degenerate_label(degenerate: dict[str, str]) -> str:
    """``E collapsed, alpha at its upper bound``: the first words of each reason, for a table cell."""
    return ", ".join(f"{name} {'collapsed' if 'collapsed' in why else 'at its bound'}" for name, why in degenerate.items())


def _print_study(study: Study) -> None:
    from archscale.fit.coverage import optimum_outside

    fit = study.fit
    _print_selection(study)
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
    for label, values in rows:
        if values and _negative_r2(values):
            console.print(_negative_r2(values).format(label=label.split(":")[0]))
    optimum = fit.law.optimum(fit.params)
    if optimum:
        console.print("closed-form optimum: " + ", ".join(f"{k}* = {_fmt(v)}" for k, v in optimum.items())
                      + _caveats(optimum_outside(optimum, study.fitted.coverage), _loose_optimum(fit)))
    console.print(f"objective ({fit.objective}): {fit.objective_value:.10g}, best of {fit.n_starts} starts")
    if study.fitted.gqa is not None:
        console.print(f"GQA in the search: {'traded' if study.fitted.gqa.traded else 'held'}; {study.fitted.gqa.reason}")
    hygiene = study.hygiene
    for line in hygiene.get("dropped_invalid", [])[:5]:
        console.print(f"dropped invalid {line}")
    if len(hygiene.get("dropped_invalid", [])) > 5:
        console.print(f"... {len(hygiene['dropped_invalid'])} invalid rows dropped in all")
    if hygiene.get("dropped_undertrained"):
        why = (" (the floor form selection chose: the forms fitted without those runs predicted the larger runs best; "
               "--min-tokens-per-param sets another)" if hygiene.get("floor_chosen_by_selection") else "")
        console.print(f"dropped {hygiene['dropped_undertrained']} runs trained on fewer than "
                      f"{hygiene['min_tokens_per_param']:g} tokens per parameter{why}")
    if study.outliers:
        console.print(f"[yellow]outliers:[/yellow] {describe_outliers(study.outliers)}")
    for warning in fit.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")


@app.command("fit", cls=Command, epilog=examples(
    'archscale fit data/chinchilla_epoch.csv --where "loss < 3.42" --out out/fit.json --plot out/fit.png',
    'archscale fit data/aspect_ratio_morph.csv --law aspect --loss lsq --holdout "N>=1e9" --out out/aspect.json',
))
def fit(
    runs: Path = typer.Argument(..., help="Runs table (.csv, .parquet or .jsonl): one row per training run."),
    law: str = typer.Option("auto", "--law", help=f"Law to fit: {', '.join(LAWS)}, or auto: choose by how well each predicts the larger runs."),
    loss: str = typer.Option("auto", "--loss", help="Objective: lsq (Levenberg-Marquardt on loss), huber (on log-loss, delta 1e-3), log-lsq (least squares on log-loss), or auto: choose as for --law (each law has its own: lsq and huber; Farseer log-lsq)."),
    split: str = typer.Option("auto", "--split", help="How --law/--loss auto score candidates: fit the smaller sizes N (size) or lower budgets C (budget), predict the rest; auto: budget on isoFLOP profiles, else size."),
    col: Optional[list[str]] = COLUMN_MAP,
    where: Optional[str] = WHERE,
    holdout: Optional[str] = typer.Option(None, "--holdout", help='Hold out rows matching this condition and score on them, e.g. "N>=1e9" (never used to choose the form).'),
    min_tokens_per_param: Optional[float] = FIT_MIN_TOKENS_PER_PARAM,
    n_definition: str = typer.Option("auto", "--n-kind", help="What the N column counts, stored in the fit JSON: "
                                     "non-embedding, strict (weight matrices only), total, or auto (non-embedding for "
                                     "archscale train's runs, else unstated)."),
    drop_invalid: bool = DROP_INVALID,
    progressive: bool = typer.Option(False, "--progressive", help="Also run the paper's progressive tasks: fit on the k smallest sizes, test on the next."),
    reference: Optional[Path] = typer.Option(None, "--reference", help="Chinchilla fit JSON giving L_opt(N,D) for conditional laws (default: best measured loss per (N,D))."),
    fix: Optional[list[str]] = typer.Option(None, "--fix", help="Hold a parameter at a value, e.g. --fix alpha=0.34 (conditional-mult fixes b0=1 by default)."),
    bootstrap: int = typer.Option(0, "--bootstrap", min=0, help="Bootstrap resamples for 95% confidence intervals (stored in the JSON for plan and search)."),
    max_evals: Optional[int] = typer.Option(None, "--max-evals", min=1, help="Cap on function evaluations per optimiser start."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the fit as JSON (read by predict, plan and search)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG: predicted vs measured (held-out as crosses), U-curves for conditional laws."),
    as_json: bool = typer.Option(False, "--json", help="Print the fit JSON to stdout instead of tables."),
) -> None:
    """Fit a scaling law to a table of training runs and say how well it predicts held-out runs.

    By default the law's form (Chinchilla tied or free, the aspect laws where the runs have shapes) and its
    objective are chosen by how well each, fitted on the smaller runs, predicts the larger ones.
    """
    check_outputs(("--out", out, "json"), ("--plot", plot, "png"), inputs=(runs, reference))
    table = read_runs(runs, parse_column_map(col), drop_invalid=drop_invalid, hint="or drop invalid rows with --drop-invalid")
    fitted_reference = load_fit(reference) if reference else None
    with bootstrap_bar(bootstrap, quiet=as_json) as progress:
        study = run_study(table.frame, law, objective=loss, where=where, holdout=holdout, reference=fitted_reference,
                          fixed=parse_assignments(fix, "--fix", "b0=1"), bootstrap_samples=bootstrap, progressive=progressive,
                          max_evals=max_evals, source=str(runs), progress=progress,
                          min_tokens_per_param=min_tokens_per_param, split=split, n_definition=n_definition)
    study.hygiene["dropped_invalid"] = table.dropped
    document = study.to_json()
    with written_together(("--plot", plot), ("--out", out)):
        if plot:
            from archscale.fit.plots import plot_study

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



@app.command("predict", cls=Command, epilog=examples(
    "archscale predict data/fits/dissertation_1b_mult.json --n 1e9 --tokens 1e11 --d-model 2560 --ratio 1.07",
    "archscale predict experiments/results/plan/chinchilla_huber.json --n 70B --tokens 1.4T",
))
def predict(
    fit_file: Path = typer.Argument(..., help="Fit JSON from archscale fit (or a published fit in data/fits)."),
    n_text: str = typer.Option(..., "--n", metavar=COUNT, help="Non-embedding parameters N, e.g. 1e9 or 975M."),
    tokens_text: Optional[str] = typer.Option(None, "--tokens", metavar=COUNT, help="Training tokens D, e.g. 1e11 or 100B."),
    d_model: Optional[int] = typer.Option(None, "--d-model", min=1, help="Hidden size (for d/sqrt(N) and the aspect ratio)."),
    layers: Optional[int] = typer.Option(None, "--layers", min=1, help="Number of layers (aspect law: R = d_model/layers)."),
    ratio: Optional[float] = typer.Option(None, "--ratio", help="MLP-to-attention parameter ratio r (conditional laws)."),
    gqa: Optional[float] = typer.Option(None, "--gqa", help="GQA group: query heads per KV head (the GQA-aware conditional laws)."),
    l_opt: Optional[float] = typer.Option(None, "--l-opt", help="Reference loss L_opt(N,D) for a conditional law "
                                          "without a reference law (without it, the loss is relative to L_opt)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Predict the loss of one configuration from a fitted law.

    A conditional law fitted without a reference law (the published fits in data/fits) predicts the loss relative to L_opt(N, D), as search ranks shapes with it; --l-opt or a fit made with --reference gives an absolute loss.
    """
    from archscale.fit.coverage import optimum_outside, outside_sizes
    from archscale.search.constrained import losses_are_relative, relative_unit

    for flag, number in (("--ratio", ratio), ("--gqa", gqa), ("--l-opt", l_opt)):
        if number is not None and not (math.isfinite(number) and number > 0):
            raise UserError(f"{flag} must be a positive number, got {number:g}"
                            + ("; L_opt is a loss in nats/token" if flag == "--l-opt" else ""))
    fitted = load_fit(fit_file)
    _refuse_unread_flags(fitted, {"--d-model": d_model, "--layers": layers, "--ratio": ratio, "--gqa": gqa,
                                  "--l-opt": l_opt})
    n = parse_count(n_text, "--n")
    row: dict[str, float] = {"N": n}
    if tokens_text is not None:
        row["D"] = parse_count(tokens_text, "--tokens")
    if d_model is not None:
        row["x"] = d_model / math.sqrt(n)
        if layers is not None:
            row["R"] = d_model / layers
    if ratio is not None:
        row["r"] = ratio
    if gqa is not None:
        row["gqa"] = gqa
    relative = losses_are_relative(fitted) and l_opt is None
    if relative:
        l_opt = 1.0 if fitted.law.name in MULTIPLICATIVE else 0.0  # the factor alone: L / L_opt, or L - L_opt
    needs_reference = "L_opt" in fitted.law.columns and l_opt is None
    needed = [c for c in fitted.law.columns if c != "L_opt"] + (["N", "D"] if needs_reference else [])
    flags = {"N": "--n", "D": "--tokens", "x": "--d-model", "R": "--d-model and --layers", "r": "--ratio", "gqa": "--gqa"}
    for column in needed:
        if column not in row:
            raise UserError(f"law {fitted.law.name} needs {flags[column]} to predict")
        if not (row[column] > 0 and math.isfinite(row[column])):
            raise UserError(f"{flags[column]} must be a positive number, got {row[column]}")
    value = float(fitted.predict(pd.DataFrame([row]), None if l_opt is None else np.array([l_opt]))[0])
    unit = relative_unit(fitted) if relative else "nats/token"
    result = {"law": fitted.law.name, "inputs": row, "loss": value, "loss_units": unit, "optimum": fitted.optimum() or None}
    unchecked = "gqa" in fitted.law.columns and not (fitted.gqa is not None and fitted.gqa.traded)
    if unchecked:  # the number is printed, but not as something the search would rank on
        result["gqa_note"] = (fitted.gqa.reason if fitted.gqa is not None
                              else "the fit records no held-out check of its GQA term")
    extrapolation = outside_sizes(fitted.size_range, n, row.get("D")) + _outside_shape(fitted, row, layers)
    if extrapolation:
        result["extrapolation"] = extrapolation
    optimum_caveat = optimum_outside(result["optimum"] or {}, fitted.coverage)
    if optimum_caveat:
        result["optimum_note"] = optimum_caveat
    if as_json:
        print_json(result)
        return
    inputs = ", ".join(f"{k}={v:.4g}" for k, v in row.items())
    if relative:
        console.print(f"{fitted.law.name} predicts {unit} = {value:.4f} at {inputs}")
        console.print(f"note: {fitted.source} has no reference law, so the loss is relative to L_opt(N, D); "
                      "give --l-opt, or a fit made with --reference, for an absolute loss")
    else:
        console.print(f"{fitted.law.name} predicts loss {value:.4f} at {inputs}")
    for note in extrapolation:
        console.print(f"warning: {note}")
    if unchecked:
        console.print(f"note: the GQA factor is not one the search trades on: {result['gqa_note']}")
    if result["optimum"]:
        console.print("closed-form optimum: " + ", ".join(f"{k}* = {_fmt(v)}" for k, v in result["optimum"].items())
                      + _caveats(optimum_caveat))
