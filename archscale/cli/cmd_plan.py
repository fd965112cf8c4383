"""``archscale plan``: how big a model and how many tokens, for a training budget or for a model's whole life."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from archscale.cli import Command, app, console, examples, print_json
from archscale.io.outputs import check_outputs
from archscale.cli.options import COLUMN_MAP, DROP_INVALID, MIN_TOKENS_PER_PARAM, WHERE, gpu_help
from archscale.io.units import format_count, parse_count
from archscale.io.errors import UserError
from archscale.io.files import write_json


def parse_positive_list(text: str | None, flag: str) -> list[float]:
    """``"1e22,5.76e23"`` or ``"1T,10T"`` to floats; zero or a negative value is one clear line."""
    if text is None:
        return []
    values = []
    for part in text.split(","):
        part = part.strip()
        try:
            number = float(part)
        except ValueError:
            number = parse_count(part, flag)
        if not (math.isfinite(number) and number > 0):
            raise UserError(f"{flag} {part}: must be a positive number")
        values.append(number)
    return values


def _interval(pair: Any, digits: int = 3) -> str:
    return "-" if not pair else f"{pair[0]:.{digits}g}-{pair[1]:.{digits}g}"


def _count_interval(pair: Any) -> str:
    return "-" if not pair else f"{format_count(pair[0])}-{format_count(pair[1])}"


def _print_frontier(frontier: Any, source: str) -> None:
    console.print(f"[bold]Approach 2[/bold] on {source}: per budget a parabola of loss in ln N, then ln N* against ln C")
    table = Table()
    for column in ("budget C", "runs", "sizes", "N tried", "N*", "D*", "loss at N*", ""):
        table.add_column(column, justify="left" if column == "" else "right")
    for p in frontier.profiles:
        role = {"fit": "", "holdout": "held out", "excluded": "left out: no bracketed minimum"}[p.role]
        table.add_row(f"{p.budget:.3g}", str(p.n_runs), str(p.n_sizes), f"{format_count(p.n_range[0])}-{format_count(p.n_range[1])}",
                      format_count(p.n_opt) if p.n_opt else "-", format_count(p.d_opt) if p.d_opt else "-",
                      f"{p.loss_opt:.4f}" if p.loss_opt else "-", role)
    console.print(table)
    ci = frontier.intervals or {}
    console.print(f"N* ~ C^a with a = {frontier.a:.3f} (95% CI {_interval(ci.get('a'))}); "
                  f"D* ~ C^b with b = {frontier.b:.3f} (95% CI {_interval(ci.get('b'))})"
                  + (f"; {ci['resamples']} bootstrap resamples" if ci.get("resamples") else ""))
    for row in frontier.holdout:
        console.print(f"held-out budget C = {row['C']:.3g}: its own minimum N* = {format_count(row['N_opt'])}, the frontier "
                      f"fitted without it predicts {format_count(row['N_predicted'])} ({100 * row['relative_error']:+.1f}%)")
    for note in frontier.notes:
        console.print(f"note: {note}")


def _print_allocations(budgets: list[float], frontier: Any, law: Any) -> None:
    if not budgets:
        return
    table = Table(title="compute-optimal allocation at your budgets")
    table.add_column("budget C", justify="right")
    if frontier is not None:
        for column in ("Approach 2 N*", "95% CI", "D*", "95% CI"):
            table.add_column(column, justify="right")
    if law is not None:
        for column in (f"law N* ({law.law})", "95% CI", "D*", "loss", "95% CI"):
            table.add_column(column, justify="right")
    for i, budget in enumerate(budgets):
        row = [f"{budget:.3g}"]
        if frontier is not None:
            ci = frontier.intervals or {}
            row += [format_count(frontier.n_opt[i]), _count_interval((ci.get("N") or [None] * len(budgets))[i]),
                    format_count(frontier.d_opt[i]), _count_interval((ci.get("D") or [None] * len(budgets))[i])]
        if law is not None:
            ci = law.intervals or {}
            row += [format_count(law.n_opt[i]), _count_interval((ci.get("N") or [None] * len(budgets))[i]),
                    format_count(law.d_opt[i]), f"{law.loss[i]:.4f}", _interval((ci.get("loss") or [None] * len(budgets))[i], 4)]
        table.add_row(*row)
    console.print(table)


def _print_law(law: Any) -> None:
    ci = law.intervals or {}
    console.print(f"[bold]{law.law}[/bold] fit {law.source}: a = beta/(alpha+beta) = {law.a:.3f} (95% CI {_interval(ci.get('a'))}), "
                  f"b = {law.b:.3f} (95% CI {_interval(ci.get('b'))})")
    for note in law.notes:
        console.print(f"note: {note}")


def _print_lifetime(plan: Any) -> None:
    from archscale.plan.inference_optimal import serving_profile

    unit = plan.cost.unit
    console.print(f"[bold]inference-aware optimum[/bold] at loss {plan.target_loss:g} ({plan.cost.kind}: training "
                  + ("6ND, inference 2N per token" if plan.cost.kind == "flops" else
                     f"6ND at MFU {plan.cost.mfu:g} on {plan.cost.serving.gpu.name}, inference at the cost model's throughput, "
                     f"{serving_profile(plan.cost.serving).label}") + ")")
    table = Table()
    for column in ("inference tokens", "N*", "D*", "D/N", f"training {unit}", f"inference {unit}", f"total {unit}",
                   "Chinchilla point N, D", f"its total {unit}", "saving"):
        table.add_column(column, justify="right")
    for optimum, chinchilla in zip(plan.optima, plan.chinchilla):
        saving = 1 - optimum.total / chinchilla.total if math.isfinite(chinchilla.total) else float("nan")
        table.add_row(f"{optimum.inference_tokens:.3g}", format_count(optimum.n), format_count(optimum.d),
                      f"{optimum.d / optimum.n:.0f}", f"{optimum.training:.3g}", f"{optimum.inference:.3g}", f"{optimum.total:.3g}",
                      f"{format_count(chinchilla.n)}, {format_count(chinchilla.d)}", f"{chinchilla.total:.3g}",
                      f"{100 * saving:.1f}%" if math.isfinite(saving) else "-")
    console.print(table)
    for note in plan.notes:
        console.print(f"note: {note}")
    best = plan.optima[-1]
    console.print(f"next: archscale search --fit <architecture law> --n {best.n:.3g} --tokens {best.d:.3g} ... picks the shape at that N")


@app.command("plan", cls=Command, epilog=examples(
    "archscale plan data/chinchilla_isoflops_epoch.csv --drop-unbracketed --fit experiments/results/plan/chinchilla_huber.json "
    "--budget 5.76e23 --out out/plan.json --plot out/plan.png",
    "archscale plan --fit experiments/results/plan/chinchilla_huber.json --target-loss 2.1 --inference-tokens 1T,10T,100T",
))
def plan(
    runs: Optional[Path] = typer.Argument(None, help="isoFLOP runs table (columns N, D or C, loss): Approach 2 on its profiles."),
    fit: Optional[Path] = typer.Option(None, "--fit", help="A Chinchilla (or aspect) fit JSON: N*(C) from the law, with intervals when it was fitted with --bootstrap."),
    budget: Optional[str] = typer.Option(None, "--budget", metavar="<counts>", help="Training budgets C in FLOPs to plan for, e.g. 1e22,5.76e23."),
    col: Optional[list[str]] = COLUMN_MAP,
    where: Optional[str] = WHERE,
    holdout: Optional[str] = typer.Option(None, "--holdout", help='Hold out whole budgets, e.g. "C >= 3e21": the frontier fitted without them predicts their N*.'),
    min_tokens_per_param: Optional[float] = MIN_TOKENS_PER_PARAM,
    drop_invalid: bool = DROP_INVALID,
    drop_unbracketed: bool = typer.Option(False, "--drop-unbracketed", help="Leave out budgets whose parabola's minimum lies outside the sizes they tried (else refused)."),
    resamples: int = typer.Option(1000, "--bootstrap", min=0, help="Bootstrap resamples for Approach 2's intervals (0: none)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    target_loss: Optional[float] = typer.Option(None, "--target-loss", help="Inference-aware optimum: the loss the model must reach (needs --fit)."),
    inference_tokens: Optional[str] = typer.Option(None, "--inference-tokens", metavar="<counts>", help="Tokens served over the model's life, e.g. 1e12,1e13,1e14 or 1T,10T."),
    cost: str = typer.Option("flops", "--cost", help="flops (6ND + 2N per inference token) or gpu-hours (training at --mfu, serving at the cost model's throughput)."),
    mfu: float = typer.Option(0.4, "--mfu", help="Training model-FLOPs utilisation, for --cost gpu-hours."),
    gpu: str = typer.Option("h100-sxm", "--gpu", help=gpu_help("Device for --cost gpu-hours")),
    gpu_file: Optional[Path] = typer.Option(None, "--gpu-file", help="Extra GPUs (JSON or CSV)."),
    tp: int = typer.Option(1, "--tp", min=1, help="Tensor-parallel degree of a serving replica."),
    batch: int = typer.Option(64, "--batch", min=1, help="Concurrent requests in the serving workload."),
    input_len: int = typer.Option(4096, "--input-len", min=1, help="Prompt tokens per request."),
    output_len: int = typer.Option(1024, "--output-len", min=1, help="Generated tokens per request."),
    counts: str = typer.Option("total", "--inference-counts", help="What --inference-tokens counts: total (prompt + generated) or output tokens."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the plan as JSON."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write the isoFLOP figure (profiles, minima, frontier, extrapolation) as PNG."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON instead of tables."),
) -> None:
    """Plan a training run: N* and D* for a compute budget (from isoFLOP profiles, a fitted law, or both), or the
    inference-aware optimum for a target loss and the tokens the model will serve."""
    from archscale.plan.isoflop import isoflop_frontier, law_allocation
    from archscale.fit.fitted import load_fit

    budgets = parse_positive_list(budget, "--budget")
    volumes = parse_positive_list(inference_tokens, "--inference-tokens")
    lifetime_asked = target_loss is not None or inference_tokens is not None
    if runs is None and fit is None:
        raise UserError("plan needs an isoFLOP runs table, a --fit, or both")
    if lifetime_asked and (fit is None or target_loss is None or not volumes):
        raise UserError("the inference-aware optimum needs --fit, --target-loss and --inference-tokens together")
    if runs is None and not budgets and not lifetime_asked:
        raise UserError("with --fit alone, give --budget C (FLOPs) to plan for, or --target-loss and --inference-tokens")
    if plot is not None and runs is None:
        raise UserError("--plot draws isoFLOP profiles: give the runs table too")
    if counts not in ("total", "output"):
        raise UserError(f"--inference-counts {counts!r}: choose total or output")
    check_outputs(("--out", out, "json"), ("--plot", plot, "png"), inputs=(runs, fit, gpu_file))

    fitted = load_fit(fit) if fit else None
    cost_model = _cost_model(cost, mfu, gpu, gpu_file, tp, batch, input_len, output_len, counts) if lifetime_asked else None
    if lifetime_asked:
        from archscale.plan.inference_optimal import check_target

        check_target(fitted, target_loss)  # before any slow work
    frontier = None
    if runs is not None:
        frame, held = _isoflop_inputs(runs, col, where, holdout, min_tokens_per_param, drop_invalid)
        frontier = isoflop_frontier(frame, budgets, held, drop_unbracketed=drop_unbracketed, resamples=resamples, seed=seed,
                                    source=str(runs))
    allocation = law_allocation(fitted, budgets) if fitted is not None and (budgets or runs is not None) else None
    lifetime = None
    if lifetime_asked:
        from archscale.plan.inference_optimal import inference_aware_optimum

        lifetime = inference_aware_optimum(fitted, target_loss, volumes, cost_model)

    document = {"inputs": {"runs": runs, "fit": fit, "budgets": budgets, "where": where, "holdout": holdout,
                           "min_tokens_per_param": min_tokens_per_param},
                "approach2": frontier.to_json() if frontier else None,
                "law": allocation.to_json() if allocation else None,
                "inference_aware": lifetime.to_json() if lifetime else None}
    if plot is not None:
        from archscale.plan.plots import plot_isoflops

        plot_isoflops(frontier, allocation, budgets, plot, title=str(runs))
    if out is not None:
        write_json(out, document)
    if as_json:
        print_json(document)
        return
    if frontier is not None:
        _print_frontier(frontier, str(runs))
    if allocation is not None:
        _print_law(allocation)
    _print_allocations(budgets, frontier, allocation)
    if lifetime is not None:
        _print_lifetime(lifetime)
    for label, path in (("plan", out), ("plot", plot)):
        if path:
            console.print(f"wrote {label}: {path}")


def _isoflop_inputs(runs: Path, col, where, holdout, min_tokens_per_param, drop_invalid):
    """The runs after --where and hygiene, and the mask of held-out runs (whole budgets)."""
    from archscale.fit.hygiene import drop_undertrained
    from archscale.fit.runs import parse_column_map, read_runs
    from archscale.fit.rows import select

    table = read_runs(runs, parse_column_map(col), drop_invalid=drop_invalid, hint="or drop invalid rows with --drop-invalid")
    frame = table.frame
    frame = frame[select(frame, where, "--where").to_numpy()]
    if frame.empty:
        raise UserError(f"--where {where!r}: selects no rows of {runs}")
    frame, _ = drop_undertrained(frame, min_tokens_per_param, str(runs))
    frame = frame.reset_index(drop=True)
    return frame, select(frame, holdout, "--holdout").to_numpy()


def _cost_model(kind: str, mfu: float, gpu: str, gpu_file: Path | None, tp: int, batch: int, input_len: int,
                output_len: int, counts: str):
    from archscale.plan.inference_optimal import CostModel, Serving

    if kind != "gpu-hours":
        return CostModel(kind, mfu)
    from archscale.serving import Workload, load_gpu

    return CostModel(kind, mfu, Serving(load_gpu(gpu, gpu_file), Workload(batch, input_len, output_len), tp, counts))
