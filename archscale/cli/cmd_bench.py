"""``archscale bench``: measure (torch, vLLM) or estimate (roofline) throughput; show the store; calibrate.

One command, three modes, chosen by the first argument and ``--show``:

* ``archscale bench SPEC... --backend B``: run a sweep, append records to ``--out``;
* ``archscale bench --show --out STORE``: print the store;
* ``archscale bench calibrate --out STORE --gpu KEY``: fit the roofline's efficiencies.

(A config directory literally named ``calibrate`` is benchmarked as ``./calibrate``.)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import pandas as pd
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from archscale.cli import app, console, print_json
from archscale.cli.options import parse_int_list
from archscale.errors import UserError
from archscale.files import jsonable

DEFAULT_STORE = Path("bench.sqlite")
EPILOG = (
    "Examples:  "
    "archscale bench configs/*/ --backend torch --batch-sizes 1,8 --input-len 128 --output-len 64 --out bench.sqlite   "
    "|  archscale bench configs/*/ --backend vllm --batch-sizes 16,32,64,128 --input-len 4096 --output-len 1024 "
    "--repeats 5 --out bench.sqlite   "
    "|  archscale bench llama-3.2-1b surefire-1b --backend roofline --gpu h100-sxm --batch-sizes 16,32,64,128   "
    "|  archscale bench --show --out bench.sqlite [--json] [--export bench.csv]   "
    "|  archscale bench calibrate --out bench.sqlite --gpu h100-sxm --save calib.json, then "
    "archscale bench llama-3.2-1b --backend roofline --gpu h100-sxm --efficiency calib.json"
)


@app.command("bench", epilog=EPILOG)
def bench_command(
    specs: Optional[list[str]] = typer.Argument(None, help="Config directories, config.json files or preset names; "
                                                "or the word `calibrate` to fit roofline efficiencies to the store."),
    backend: Optional[str] = typer.Option(None, "--backend", help="torch (default: archscale's model, any machine), "
                                          "vllm (GPU; one subprocess per run) or roofline (analytic; needs --gpu)."),
    batch_sizes: str = typer.Option("1", "--batch-sizes", help="Comma-separated batch sizes, e.g. 16,32,64,128."),
    input_len: int = typer.Option(128, "--input-len", help="Prompt tokens per request."),
    output_len: int = typer.Option(64, "--output-len", help="Generated tokens per request."),
    repeats: int = typer.Option(3, "--repeats", help="Timed repeats per (config, batch size), after one warm-up."),
    out: Optional[Path] = typer.Option(None, "--out", help="Results store (.sqlite/.db), appended to. Default "
                                       "bench.sqlite for torch/vllm; roofline rows are stored only with --out."),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="GPU key (h100-sxm, a100-40gb, h200, ...): required for "
                                      "roofline and calibrate; overrides the key read from the CUDA device name."),
    gpu_file: Optional[Path] = typer.Option(None, "--gpu-file", help="Extra GPUs (JSON/CSV with the GPU table's fields)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="bf16 (default on CUDA), fp16 or float32 (torch on CPU)."),
    device: str = typer.Option("auto", "--device", help="torch backend: auto, cpu, cuda or cuda:N."),
    tp: int = typer.Option(1, "--tp", help="Tensor-parallel degree (vllm and roofline)."),
    compile_step: bool = typer.Option(False, "--compile", help="torch backend: torch.compile the model step (dynamic shapes)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads per measurement (torch on CPU: intra-op "
                                          "threads; default torch's own), recorded in every row."),
    enforce_eager: bool = typer.Option(False, "--enforce-eager", help="vllm: no CUDA graphs (faster start, slower run)."),
    efficiency: Optional[Path] = typer.Option(None, "--efficiency", help="roofline: efficiencies JSON from `bench calibrate --save`."),
    timeout: float = typer.Option(3600.0, "--timeout", help="vllm: seconds before a worker is killed and recorded as failed."),
    seed: int = typer.Option(0, "--seed", help="Seed for random weights and prompts."),
    show: bool = typer.Option(False, "--show", help="Print the store given by --out (filtered by --backend/--gpu if given)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    export: Optional[Path] = typer.Option(None, "--export", help="With --show: also write the store as CSV here."),
    save: Optional[Path] = typer.Option(None, "--save", help="With calibrate: write the fitted efficiencies JSON here."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar on stderr."),
    verbose: bool = typer.Option(False, "--verbose", help="vllm: echo the workers' logs to stderr."),
) -> None:
    """Benchmark architectures (torch, vLLM, roofline) into an SQLite store; show it; calibrate the roofline."""
    specs = list(specs or [])
    if specs and specs[0] == "calibrate":
        if len(specs) > 1:
            raise UserError("`archscale bench calibrate` takes no configs (to benchmark a directory named calibrate, write ./calibrate)")
        _refuse({"--export": export, "--efficiency": efficiency}, "calibrate")
        _calibrate_mode(out, gpu, gpu_file, backend, save, as_json)
        return
    if show:
        if specs:
            raise UserError("--show prints a store; give it no configs")
        _refuse({"--save": save, "--efficiency": efficiency}, "--show")
        _show_mode(out, backend, gpu, gpu_file, export, as_json)
        return
    _refuse({"--save": save, "--export": export}, "a benchmark run")
    _sweep_mode(specs, backend or "torch", batch_sizes, input_len, output_len, repeats, out, gpu, gpu_file, dtype,
                device, tp, compile_step, enforce_eager, efficiency, timeout, seed, as_json, progress, verbose, threads)


def _refuse(flags: dict[str, Any], mode: str) -> None:
    """A flag that does nothing in this mode is a mistake worth one line, not silence."""
    for flag, value in flags.items():
        if value is not None:
            raise UserError(f"{flag} does not apply to {mode}")


# ---- sweep --------------------------------------------------------------------------
def _sweep_mode(specs, backend_name, batch_sizes, input_len, output_len, repeats, out, gpu, gpu_file, dtype, device,
                tp, compile_step, enforce_eager, efficiency, timeout, seed, as_json, progress, verbose, threads=None) -> None:
    from archscale.bench.calibrate import load_efficiency
    from archscale.bench.store import check_store_path
    from archscale.bench.sweep import BenchOptions, make_backend, resolve_targets, run_sweep
    from archscale.cost.roofline import Efficiency

    sizes = tuple(parse_int_list(batch_sizes, "--batch-sizes"))
    if efficiency is not None and backend_name != "roofline":
        raise UserError("--efficiency applies to --backend roofline only")
    options = BenchOptions(backend=backend_name, batch_sizes=sizes, input_len=input_len, output_len=output_len,
                           repeats=repeats, gpu=gpu, gpu_file=gpu_file, dtype=dtype, device=device, tp=tp,
                           compile=compile_step, threads=threads, enforce_eager=enforce_eager,
                           efficiency=load_efficiency(efficiency) if efficiency else Efficiency(), seed=seed,
                           worker_timeout_s=timeout, verbose=verbose)
    if out is None and backend_name != "roofline":
        out = DEFAULT_STORE
    store = check_store_path(out) if out is not None else None
    targets = resolve_targets(specs)
    backend = make_backend(options)
    errors = Console(stderr=True)
    total = len(targets) * len(sizes) * options.progress_units_per_batch
    with _progress(errors, total, enabled=progress) as bar:
        result = run_sweep(targets, options, store, _hooks(bar, errors), backend=backend)
    _report_sweep(result, as_json, errors)


def _progress(errors: Console, total: int, enabled: bool) -> Progress:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("repeats"),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    bar = Progress(*columns, console=errors, disable=not enabled, transient=False)
    bar.add_task("bench", total=total)
    return bar


def _hooks(bar: Progress, errors: Console):
    from archscale.bench.sweep import Hooks

    task = bar.task_ids[0]

    def started(target, batch: int) -> None:
        bar.update(task, description=f"{target.label} batch {batch}")

    def recorded(record: dict) -> None:
        if record["status"] != "ok":
            errors.print(f"failed: {record['name'] or record['source']} batch {record['batch_size']}: {record['error']}",
                         markup=False, highlight=False)

    return Hooks(started=started, advanced=lambda n: bar.advance(task, n), recorded=recorded)


def _report_sweep(result, as_json: bool, errors: Console) -> None:
    """Print the sweep's records; exit 130 if interrupted, 2 if every benchmark failed."""
    frame = pd.DataFrame(result.records)
    if as_json:
        print_json(_json_rows(frame))
    elif len(frame):
        console.print(_results_table(frame, title=f"{len(frame)} benchmark records"))
    where = f" to {result.store}" if result.store else " (not stored: no --out)"
    if result.interrupted:
        errors.print(f"interrupted: {len(result.records)} records appended{where} are kept", markup=False, highlight=False)
        raise SystemExit(130)  # not typer.Exit: main() runs the app with standalone_mode=False, which drops its code
    errors.print(f"appended {len(result.records)} records{where}, {result.n_failed} failed", markup=False, highlight=False)
    if result.records and result.n_failed == len(result.records):
        raise UserError(f"every benchmark failed ({len(result.records)} recorded{where})")


# ---- show ---------------------------------------------------------------------------
def _show_mode(out, backend, gpu, gpu_file, export, as_json) -> None:
    from archscale.bench.store import export_csv, load_results

    if out is None:
        raise UserError("--show needs --out STORE (the .sqlite, .db or .csv to print)")
    frame = load_results(out)
    if backend:
        frame = frame[frame["backend"] == backend]
    if gpu:
        frame = frame[frame["gpu"].astype(str).str.lower() == gpu.lower()]
    if export is not None:
        count = export_csv(out, export)
        Console(stderr=True).print(f"wrote {count} rows to {export}", markup=False, highlight=False)
    if as_json:
        print_json(_json_rows(frame))
        return
    if frame.empty:
        console.print(f"{out}: no records" + (" matching the filters" if backend or gpu else ""))
        return
    console.print(_results_table(frame.reset_index(drop=True), title=f"{out}: {len(frame)} records", gpu_file=gpu_file))


def _json_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return jsonable(frame.to_dict("records"))


def _number(value: Any, digits: str = ",.0f") -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "-"
    return "-" if math.isnan(value) else format(value, digits)


def _results_table(frame: pd.DataFrame, title: str, gpu_file: Path | None = None, efficiency=None) -> Table:
    """Records as a table; measured rows on a known GPU also show the fraction of the roofline they reach.

    "of roofline" is measured / estimated tokens/s at the default efficiencies
    (or ``efficiency``) for the row's shape, workload and GPU.
    """
    from archscale.bench.calibrate import roofline_fraction
    from archscale.cost.roofline import Efficiency

    fraction = roofline_fraction(frame, gpu_file, efficiency or Efficiency())
    table = Table(title=title)
    for column in ("name", "hash", "backend", "gpu", "dtype", "batch", "in/out", "tokens/s", "± std", "out tok/s",
                   "prefill s", "decode s", "of roofline", "status"):
        table.add_column(column, justify="left" if column in ("name", "backend", "gpu", "dtype", "status") else "right",
                         no_wrap=column in ("hash", "in/out", "tokens/s"))
    for index, row in frame.iterrows():
        status = "ok" if row["status"] == "ok" else f"failed: {row['error']}"
        table.add_row(str(row["name"] or row.get("source") or "?"), str(row["config_hash"]), str(row["backend"]),
                      str(row["gpu"]), str(row["dtype"]), str(row["batch_size"]),
                      f"{row['input_len']}/{row['output_len']}", _number(row["tokens_per_s"]),
                      _number(row["tokens_per_s_std"]), _number(row["output_tokens_per_s"]),
                      _number(row["prefill_s"], ".3g"), _number(row["decode_s"], ".3g"),
                      _number(100 * fraction.loc[index], ".0f") + ("%" if not math.isnan(fraction.loc[index]) else ""),
                      status)
    return table


# ---- calibrate ----------------------------------------------------------------------
def _calibrate_mode(out, gpu, gpu_file, backend, save, as_json) -> None:
    from archscale.bench.calibrate import calibrate, save_calibration
    from archscale.bench.records import MEASURED_BACKENDS
    from archscale.bench.store import load_results

    if out is None:
        raise UserError("calibrate needs --out STORE (the measured results)")
    if not gpu:
        raise UserError("calibrate needs --gpu (the GPU whose measured rows to fit, e.g. h100-sxm)")
    if backend is not None and backend not in MEASURED_BACKENDS:
        raise UserError(f"calibrate fits measured rows: --backend must be {' or '.join(MEASURED_BACKENDS)}")
    result = calibrate(load_results(out), gpu, gpu_file, backend)
    if save is not None:
        save_calibration(result, save)
    if as_json:
        print_json(result.to_dict())
        return
    table = Table(title=f"roofline vs measured on {result.gpu}: {len(result.rows)} rows")
    for column in ("name", "backend", "batch", "in/out", "measured tok/s", "before", "err before", "after", "err after"):
        table.add_column(column, justify="left" if column in ("name", "backend") else "right")
    for row in result.rows.itertuples():
        table.add_row(str(row.name), row.backend, str(row.batch_size), f"{row.input_len}/{row.output_len}",
                      _number(row.measured), _number(row.estimate_before), f"{100 * row.rel_err_before:+.1f}%",
                      _number(row.estimate_after), f"{100 * row.rel_err_after:+.1f}%")
    console.print(table)
    before, after = result.initial, result.efficiency
    console.print(f"efficiency compute {before.compute:.3f} -> {after.compute:.3f}, memory {before.memory:.3f} -> {after.memory:.3f}")
    console.print(f"|relative error| max {100 * result.max_abs_rel_err_before:.1f}% -> {100 * result.max_abs_rel_err_after:.1f}%, "
                  f"mean {100 * result.mean_abs_rel_err_before:.1f}% -> {100 * result.mean_abs_rel_err_after:.1f}%")
    for name, identified in result.identified.items():
        if not identified:
            console.print(f"note: no row depends on the {name} efficiency; its value is not determined by these data")
        elif result.at_bound[name]:
            console.print(f"note: the {name} efficiency sits at a bound of [0.05, 1]: the roofline cannot match these "
                          "rows with any efficiency (overheads it does not model?)")
    if save is not None:
        console.print(f"saved efficiencies to {save} (use with --backend roofline --efficiency {save})")
