"""``archscale plan``: how big a model and how many tokens, for a training budget or for a model's whole life."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.table import Table

from archscale.cli import Command, app, bootstrap_bar, console, examples, print_json
from archscale.io.outputs import check_outputs, written_together
from archscale.cli.options import (COLUMN_MAP, DROP_INVALID, GPU_PRICE, MIN_TOKENS_PER_PARAM, PERCENTILE, TPOT_MS, TTFT_MS,
                                   WHERE, given_on_command_line, gpu_help, latency_limits)
from archscale.io.units import format_count, parse_count
from archscale.io.errors import UserError
from archscale.io.files import write_json

# the price and latency flags (search can take the same ones, with the same meaning)
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


def parse_window(text: str) -> float | None:
    """``--window 3`` (a factor in N around each minimum) or ``--window all`` (every run of a budget: None)."""
    from archscale.plan.isoflop import check_window

    if text.strip().lower() == "all":
        return None
    try:
        factor = float(text)
    except ValueError:
        raise UserError(f"--window {text}: give a factor in N above 1 (e.g. 3: the runs within 3x of each minimum), "
                        "or all for the whole profile") from None
    check_window(factor)
    return factor


def _interval(pair: Any, digits: int = 3) -> str:
    return "-" if not pair else f"{pair[0]:.{digits}g}-{pair[1]:.{digits}g}"


def _count_interval(pair: Any) -> str:
    return "-" if not pair else f"{format_count(pair[0])}-{format_count(pair[1])}"


def _exponents(result: Any, a_label: str = "a", b_label: str = "b", fixed: str | None = None, count: bool = True) -> str:
    """``a = ... (95% CI ...), b = ... (...)``: each interval with its note when it has one, or the reason the
    exponents carry none (a law that fixes them); ``count`` adds how many resamples made the intervals."""
    if fixed:
        return f"{a_label} = {result.a:.3f} ({fixed}), {b_label} = {result.b:.3f} (fixed)"
    ci, notes = result.intervals or {}, result.interval_notes or {}
    parts = []
    for name, label in (("a", a_label), ("b", b_label)):
        pair = ci.get(name)
        note = f"; {notes[name]}" if notes.get(name) else ""
        parts.append(f"{label} = {getattr(result, name):.3f} (95% CI {f'{pair[0]:.3f}-{pair[1]:.3f}' if pair else '-'}{note})")
    return ", ".join(parts) + (f"; {ci['resamples']} bootstrap resamples" if count and ci.get("resamples") else "")


def _print_frontier(frontier: Any, source: str) -> None:
    from archscale.plan.isoflop import window_rule

    where = "through all its runs" if frontier.window is None else "near its minimum"
    console.print(f"[bold]Approach 2[/bold] on {source}: per budget a parabola of loss in ln N {where}, then ln N* against ln C")
    console.print(f"window: {window_rule(frontier.window)}")
    table = Table()
    for column in ("budget C", "runs", "sizes", "N tried", "fitted", "N fitted", "N*", "D*", "loss at N*", ""):
        table.add_column(column, justify="left" if column == "" else "right")
    for p in frontier.profiles:
        role = {"fit": "", "holdout": "held out", "excluded": "left out: no bracketed minimum"}[p.role]
        if p.wide and p.role != "excluded":
            role = ", ".join(filter(None, [role, "wide"]))
        fitted = p.window_range
        table.add_row(f"{p.budget:.3g}", str(p.n_runs), str(p.n_sizes), f"{format_count(p.n_range[0])}-{format_count(p.n_range[1])}",
                      str(int(p.fitted.sum())), f"{format_count(fitted[0])}-{format_count(fitted[1])}" if fitted else "-",
                      format_count(p.n_opt) if p.n_opt else "-", format_count(p.d_opt) if p.d_opt else "-",
                      f"{p.loss_opt:.4f}" if p.loss_opt else "-", role)
    console.print(table)
    console.print(_exponents(frontier, "N* ~ C^a with a", "D* ~ C^b with b"))
    message = frontier.wide_message()
    if message:
        label = "[yellow]warning:[/yellow]" if frontier.window is None else "note:"
        console.print(f"{label} {message}")
    for row in frontier.holdout:
        console.print(f"held-out budget C = {row['C']:.3g}: its own minimum N* = {format_count(row['N_opt'])}, the frontier "
                      f"fitted without it predicts {format_count(row['N_predicted'])} ({100 * row['relative_error']:+.1f}%)")
    for note in frontier.notes:
        console.print(f"note: {note}")


def _print_approach3(result: Any, window: float | None) -> None:
    runs = "every run of Approach 2's budgets" if window is None else "Approach 2's windows"
    console.print(f"[bold]Approach 3[/bold]: L = E + A/N^alpha + B/D^beta by variable projection on {result.runs} runs ({runs}; "
                  "each budget weighs the same)")
    p = result.params
    console.print(f"E = {p['E']:.4g}, A = {p['A']:.4g}, B = {p['B']:.4g}, alpha = {p['alpha']:.4f}, beta = {p['beta']:.4f}; "
                  f"RMS residual {result.rms:.4f}")
    if result.problem:
        console.print(f"note: {result.problem}")
    else:
        console.print(_exponents(result, "N* ~ C^a with a = beta/(alpha+beta)", "D* ~ C^b with b"))
    for row in result.holdout:
        console.print(f"held-out budget C = {row['C']:.3g}: its own (Approach 2) minimum N* = {format_count(row['N_opt'])}, the "
                      f"surface fitted without it predicts {format_count(row['N_predicted'])} ({100 * row['relative_error']:+.1f}%)")
    for note in result.notes:
        console.print(f"note: {note}")


NAMES = {"N": "N*", "D": "D*", "loss": "loss"}


def _print_allocations(budgets: list[float], sources: list[tuple[str, Any]]) -> None:
    """One row per budget and route (Approach 2, Approach 3, the law), each interval marked when it has a note;
    the notes follow the table."""
    from archscale.plan.intervals import SKEW_MARK

    if not budgets or not sources:
        return
    table = Table(title="compute-optimal allocation at your budgets")
    for column in ("budget C", "from", "N*", "95% CI", "D*", "95% CI", "loss", "95% CI"):
        table.add_column(column, justify="left" if column == "from" else "right")
    footnotes = []

    def cell(label: str, key: str, i: int, text: Callable[[Any], str], result: Any) -> str:
        pair = ((result.intervals or {}).get(key) or [None] * len(budgets))[i]
        note = ((result.interval_notes or {}).get(key) or [None] * len(budgets))[i]
        if note:
            footnotes.append(f"{SKEW_MARK} {label}, {NAMES[key]} at C = {budgets[i]:.3g}: {note}")
        return text(pair) + (SKEW_MARK if note else "")

    for i, budget in enumerate(budgets):
        for label, result in sources:
            losses = getattr(result, "loss", None)
            row = [f"{budget:.3g}", label, format_count(result.n_opt[i]), cell(label, "N", i, _count_interval, result),
                   format_count(result.d_opt[i]), cell(label, "D", i, _count_interval, result)]
            if losses:
                row += [f"{losses[i]:.4f}", cell(label, "loss", i, lambda pair: _interval(pair, 4), result)]
            else:
                row += ["-", "-"]
            table.add_row(*row)
    console.print(table)
    for line in footnotes:
        console.print(line)


def _print_law(law: Any) -> None:
    from archscale.plan.numeric_optimum import SEARCHED_LAWS

    label = "a = d ln N*/d ln C" if law.law in SEARCHED_LAWS else "a = beta/(alpha+beta)"
    console.print(f"[bold]{law.law}[/bold] fit {law.source}: {_exponents(law, label, fixed=law.fixed, count=False)}")
    for note in law.notes:
        console.print(f"note: {note}")



def _cost_header(cost: Any) -> str:
    """The plan's cost accounting in words: what training and inference are counted as, and how serving runs."""
    from archscale.plan.inference_optimal import serving_profile

    if cost.kind == "flops":
        return "flops: training 6ND, inference 2N per token"
    serving = cost.serving
    price = f" at ${cost.usd_per_gpu_hour:g} per GPU-hour" if cost.kind == "dollars" else ""
    return (f"{cost.kind}{price}: training 6ND at MFU {cost.mfu:g} on {serving.gpu.name}, inference at the cost model's "
            f"throughput, {serving_profile(serving).label}; {serving.operating_point()} per tp-{serving.tp} replica")


def _print_lifetime(plan: Any) -> None:
    unit = plan.cost.unit
    limited = plan.cost.serving is not None and plan.cost.serving.limits is not None
    console.print(f"[bold]inference-aware optimum[/bold] at loss {plan.target_loss:g} ({_cost_header(plan.cost)})")
    table = Table()
    for column in ("inference tokens", "N*", "D*", "D/N", *(("requests at once",) if limited else ()), f"training {unit}",
                   f"inference {unit}", f"total {unit}", "Chinchilla point N, D", f"its total {unit}", "saving"):
        table.add_column(column, justify="right")
    for optimum, chinchilla in zip(plan.optima, plan.chinchilla):
        saving = 1 - optimum.total / chinchilla.total if math.isfinite(chinchilla.total) else float("nan")
        table.add_row(f"{optimum.inference_tokens:.3g}", format_count(optimum.n), format_count(optimum.d),
                      f"{optimum.d / optimum.n:.0f}", *((str(optimum.operating_batch),) if limited else ()),
                      f"{optimum.training:.3g}", f"{optimum.inference:.3g}", f"{optimum.total:.3g}",
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
    "archscale plan data/chinchilla_isoflops_epoch.csv --drop-unbracketed --window all --bootstrap 0",
    "archscale plan --fit experiments/results/plan/chinchilla_huber.json --target-loss 2.1 --inference-tokens 1T,10T,100T",
    "archscale plan --fit experiments/results/plan/chinchilla_huber.json --target-loss 2.1 --inference-tokens 1T,10T "
    "--cost dollars --gpu h100-sxm --gpu-price 2.5 --tpot-ms 40",
))
def plan(
    ctx: typer.Context,
    runs: Optional[Path] = typer.Argument(None, help="isoFLOP runs table (columns N, D or C, loss): Approaches 2 and 3 on its profiles."),
    fit: Optional[Path] = typer.Option(None, "--fit", help="A Chinchilla (or aspect) fit JSON: N*(C) from the law, with intervals when it was fitted with --bootstrap."),
    budget: Optional[str] = typer.Option(None, "--budget", metavar="<counts>", help="Training budgets C in FLOPs to plan for, e.g. 1e22,5.76e23."),
    col: Optional[list[str]] = COLUMN_MAP,
    where: Optional[str] = WHERE,
    holdout: Optional[str] = typer.Option(None, "--holdout", help='Hold out whole budgets, e.g. "C >= 3e21": the frontier fitted without them predicts their N*.'),
    min_tokens_per_param: Optional[float] = MIN_TOKENS_PER_PARAM,
    drop_invalid: bool = DROP_INVALID,
    drop_unbracketed: bool = typer.Option(False, "--drop-unbracketed", help="Leave out budgets whose parabola's minimum lies outside the sizes they tried (else refused)."),
    window: str = typer.Option("3", "--window", metavar="<factor|all>", help="Approach 2 fits each budget's parabola to the runs within this factor in N of its minimum (at least 5 sizes); all: to every run, as the paper did (biased on wide profiles)."),
    resamples: int = typer.Option(1000, "--bootstrap", min=0, help="Bootstrap resamples for the intervals of Approaches 2 and 3 (0: none)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    target_loss: Optional[float] = typer.Option(None, "--target-loss", help="Inference-aware optimum: the loss the model must reach (needs --fit)."),
    inference_tokens: Optional[str] = typer.Option(None, "--inference-tokens", metavar="<counts>", help="Tokens served over the model's life, e.g. 1e12,1e13,1e14 or 1T,10T."),
    cost: str = typer.Option("flops", "--cost", help="flops (6ND + 2N per inference token), gpu-hours (training at --mfu, serving at the cost model's throughput) or dollars (those GPU-hours at --gpu-price)."),
    mfu: float = typer.Option(0.4, "--mfu", help="Training model-FLOPs utilisation, for --cost gpu-hours or dollars."),
    gpu: str = typer.Option("h100-sxm", "--gpu", help=gpu_help("Device for --cost gpu-hours or dollars")),
    gpu_file: Optional[Path] = typer.Option(None, "--gpu-file", help="Extra GPUs (JSON or CSV), optionally with a usd_per_hour price each."),
    gpu_price: Optional[float] = GPU_PRICE,
    tpot_ms: Optional[float] = TPOT_MS,
    ttft_ms: Optional[float] = TTFT_MS,
    percentile: Optional[str] = PERCENTILE,
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
    from archscale.plan.approach3 import approach3, holdout_rows
    from archscale.plan.isoflop import isoflop_frontier, law_allocation
    from archscale.fit.fitted import load_fit

    budgets = parse_positive_list(budget, "--budget")
    factor = parse_window(window)
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
    check_unused_flags(ctx, runs is not None, lifetime_asked, cost, resamples)
    check_outputs(("--out", out, "json"), ("--plot", plot, "png"), inputs=(runs, fit, gpu_file))

    fitted = load_fit(fit) if fit else None
    cost_model = None
    if lifetime_asked:
        from archscale.serving import Workload

        cost_model = _cost_model(cost, mfu, gpu, gpu_file, gpu_price, tp, Workload(batch, input_len, output_len), counts,
                                 latency_limits(tpot_ms, ttft_ms, percentile))
    if lifetime_asked:
        from archscale.plan.inference_optimal import check_target

        check_target(fitted, target_loss)  # before any slow work
    frontier = surface = None
    if runs is not None:
        frame, held = _isoflop_inputs(runs, col, where, holdout, min_tokens_per_param, drop_invalid)
        with bootstrap_bar(2 * resamples, quiet=as_json) as progress:
            frontier = isoflop_frontier(frame, budgets, held, drop_unbracketed=drop_unbracketed, resamples=resamples, seed=seed,
                                        source=str(runs), window=factor, progress=progress)
            surface = approach3(frame.iloc[frontier.fitted_rows()], budgets, resamples=resamples, seed=seed, progress=progress)
        surface.holdout = holdout_rows(surface, frontier.holdout)
    allocation = law_allocation(fitted, budgets) if fitted is not None and (budgets or runs is not None) else None
    lifetime = None
    if lifetime_asked:
        from archscale.plan.inference_optimal import inference_aware_optimum

        lifetime = inference_aware_optimum(fitted, target_loss, volumes, cost_model)

    document = {"inputs": {"runs": runs, "fit": fit, "budgets": budgets, "where": where, "holdout": holdout,
                           "min_tokens_per_param": min_tokens_per_param},
                "approach2": frontier.to_json() if frontier else None,
                "approach3": surface.to_json() if surface else None,
                "law": allocation.to_json() if allocation else None,
                "inference_aware": lifetime.to_json() if lifetime else None}
    with written_together(("--plot", plot), ("--out", out)):
        if plot is not None:
            from archscale.plan.plots import plot_isoflops

            plot_isoflops(frontier, allocation, budgets, plot, title=str(runs), surface=surface)
        if out is not None:
            write_json(out, document)
    if as_json:
        print_json(document)
        return
    if frontier is not None:
        _print_frontier(frontier, str(runs))
        _print_approach3(surface, frontier.window)
    if allocation is not None:
        _print_law(allocation)
    routes = [("Approach 2", frontier), ("Approach 3", None if surface is None or surface.problem else surface),
              (f"law ({allocation.law})" if allocation else "", allocation)]
    _print_allocations(budgets, [(label, result) for label, result in routes if result is not None])
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
    frame = frame[select(frame, where, "--where", str(runs)).to_numpy()]
    frame, _ = drop_undertrained(frame, min_tokens_per_param, str(runs))
    frame = frame.reset_index(drop=True)
    return frame, select(frame, holdout, "--holdout", str(runs)).to_numpy()


# What each flag that only some plans read does, in words (parameter name: what it does): a flag typed for a plan
# that does not read it is refused, since a plan that silently left it out would answer a question not asked.
RUNS_TABLE_FLAGS = {
    "col": "maps the runs table's columns", "where": "selects rows of the runs table",
    "holdout": "holds out budgets of the runs table", "min_tokens_per_param": "drops undertrained runs of the runs table",
    "drop_invalid": "drops invalid rows of the runs table",
    "drop_unbracketed": "leaves out the runs table's budgets without a bracketed minimum",
    "window": "sets the runs Approach 2 fits around each budget's minimum",
    "resamples": "sets the bootstrap resamples of Approaches 2 and 3", "seed": "seeds the bootstrap of Approaches 2 and 3",
}
LIFETIME_FLAGS = {"cost": "sets what the inference-aware optimum minimises"}
GPU_COST_FLAGS = {  # read by --cost gpu-hours and dollars: training on a GPU, serving on a replica of them
    "mfu": "sets the training GPU-hours", "gpu": "sets the device that trains and serves",
    "gpu_file": "adds devices for training and serving", "tp": "sets the serving replica's GPUs",
    "batch": "sets the serving workload", "input_len": "sets the serving workload", "output_len": "sets the serving workload",
    "counts": "says which served tokens cost GPU time", "tpot_ms": "limits serving latency",
    "ttft_ms": "limits serving latency", "percentile": "picks the statistic of a serving latency limit",
}
DOLLAR_FLAGS = {"gpu_price": "prices GPU-hours in dollars"}


def check_unused_flags(ctx: typer.Context, with_runs: bool, lifetime: bool, cost: str, resamples: int) -> None:
    """Refuse, in one line, the first flag the user typed that this plan would not read: the runs table's flags
    without a runs table, --seed without a bootstrap, the cost flags without the inference-aware optimum, the GPU
    flags with --cost flops, and --gpu-price with any cost but dollars."""
    from archscale.plan.inference_optimal import COSTS, GPU_COSTS

    def refuse(flags: dict[str, str], plan: str, instead: str) -> None:
        for name, does in flags.items():
            for flag in given_on_command_line(ctx, name):
                raise UserError(f"{flag} does not apply to {plan}: it {does}; drop it, or {instead}")

    if not with_runs:
        refuse(RUNS_TABLE_FLAGS, "a plan without an isoFLOP runs table", "give the runs table (archscale plan RUNS.csv ...)")
    elif resamples == 0:
        refuse({"seed": RUNS_TABLE_FLAGS["seed"]}, "--bootstrap 0 (no resamples)", "give --bootstrap N")
    if not lifetime:
        refuse({**LIFETIME_FLAGS, **GPU_COST_FLAGS, **DOLLAR_FLAGS}, "a training-budget plan",
               "give --target-loss and --inference-tokens for the inference-aware optimum")
        return
    if cost not in COSTS:
        raise UserError(f"--cost {cost!r}: choose one of {', '.join(COSTS)}")
    if cost not in GPU_COSTS:
        refuse({**GPU_COST_FLAGS, **DOLLAR_FLAGS}, f"--cost {cost} (training 6ND, inference 2N per token)",
               "use --cost gpu-hours or dollars")
    elif cost != "dollars":
        refuse(DOLLAR_FLAGS, f"--cost {cost}", "use --cost dollars")


def _cost_model(kind: str, mfu: float, gpu: str, gpu_file: Path | None, gpu_price: float | None, tp: int, workload: Any,
                counts: str, limits: Any):
    from archscale.plan.inference_optimal import GPU_COSTS, CostModel, Serving

    if kind not in GPU_COSTS:
        return CostModel(kind, mfu)
    from archscale.serving import load_gpu
    from archscale.serving.price import resolve_price

    device = load_gpu(gpu, gpu_file)
    price = resolve_price(gpu_price, device) if kind == "dollars" else None
    return CostModel(kind, mfu, Serving(device, workload, tp, counts, limits=limits), usd_per_gpu_hour=price)
