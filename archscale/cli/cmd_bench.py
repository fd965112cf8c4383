"""``archscale bench``: measure (torch, vLLM) or estimate (roofline) throughput; show the store; calibrate.

Three commands:

* ``archscale bench SPEC... --backend B``: run a sweep, append records to ``--store``;
  ``archscale bench --show --store STORE``: print the store;
* ``archscale bench calibrate --store STORE --gpu KEY --out PROFILE.json``: fit a throughput
  profile (see :mod:`archscale.bench.calibrate`) for one engine on one device;
* ``archscale bench probe --out cpu.json``: measure this CPU as a device entry for ``--gpu-file``.

``bench calibrate`` and ``bench probe`` are commands of their own (their own flags and
``--help``): the root group resolves the two words (:class:`archscale.cli.Group`); a
config directory literally named ``calibrate`` is benchmarked as ``./calibrate``.
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

from archscale.bench.records import BACKENDS, MEASURED_BACKENDS, NOISY_CV
from archscale.bench.store import STORE
from archscale.cli import EMIT_TINY_CONFIGS, Command, app, console, examples, print_json, study
from archscale.cli.options import GPU_PRICE, given_on_command_line, gpu_help, parse_assignments, parse_int_list, typed_options
from archscale.serving.estimate import EngineSettings
from archscale.serving.price import format_usd
from archscale.serving.profiles import check_engine
from archscale.io.errors import UserError
from archscale.io.files import jsonable
from archscale.io.outputs import check_outputs
from archscale.io.units import DTYPE_HELP, parse_dtype

DEFAULT_STORE = Path("bench.sqlite")
STORE_HELP = "Results store (.sqlite/.db), appended to by every run and read by --show, calibrate and search --store."
BACKEND_FLAGS = {
    "repeats": ("torch", "vllm"),
    "max_noise": ("torch", "vllm"),
    "seed": ("torch", "vllm"),
    "device": ("torch",),
    "compile_step": ("torch",),
    "timeout": ("vllm",),
    "enforce_eager": ("vllm",),
    "verbose": ("vllm",),
    "engine": ("roofline",),
}
"""The run flags only some backends read (parameter name: those backends); typed for another, one line refuses them.
(``--threads``, ``--vllm-python`` and ``--profile`` are refused by their own checks, with their own advice.)"""
SHOW_FILTERS = {"dtype": "dtype", "batch_sizes": "batch_size", "tp": "tp", "input_len": "input_len",
                "output_len": "output_len", "threads": "threads"}
"""Run flags that ``--show`` reads as filters on the rows' recorded values (parameter name: column), beside
``--backend`` and ``--gpu``; every other run flag typed with ``--show`` is refused."""
SHOW_FLAGS = ("store", "backend", "gpu", "gpu_file", "show", "as_json", "export", "gpu_price", "progress", *SHOW_FILTERS)


@app.command("bench", cls=Command, epilog=examples(
    EMIT_TINY_CONFIGS,
    "archscale bench out/configs-tiny/*/ --backend torch --device cpu --batch-sizes 1,8 --input-len 128 --output-len 64 "
    "--store out/bench.sqlite",
    "archscale bench llama-3.2-1b surefire-1b --backend roofline --gpu h200 --batch-sizes 16,32,64,128 --store out/bench.sqlite",
    "archscale bench --show --store out/bench.sqlite --export out/bench.csv",
    "archscale bench llama-3.2-1b surefire-1b --backend vllm --batch-sizes 16,32,64,128 --input-len 4096 --output-len 1024 "
    "--repeats 5 --store out/bench.sqlite   # needs: a GPU with vLLM",
) + "\n\nAlso: archscale bench calibrate (fit a throughput profile to the store), archscale bench probe (this CPU as a device).")
def bench_command(
    ctx: typer.Context,
    specs: Optional[list[str]] = typer.Argument(None, metavar="SPEC...", help="Config directories, config.json files or preset names."),
    backend: Optional[str] = typer.Option(None, "--backend", help="torch (default: archscale's model, any machine), "
                                          "vllm (one subprocess and engine per config; CPU or GPU) or roofline (analytic; needs --gpu)."),
    batch_sizes: str = typer.Option("1", "--batch-sizes", help="Comma-separated batch sizes, e.g. 16,32,64,128."),
    input_len: int = typer.Option(4096, "--input-len", help="Prompt tokens per request (the default is search's: with "
                                  "--batch-sizes 64, search's default batch, a row is one a default search --store uses)."),
    output_len: int = typer.Option(1024, "--output-len", help="Generated tokens per request."),
    repeats: int = typer.Option(3, "--repeats", help="Timed repeats per (config, batch size), after one warm-up."),
    max_noise: float = typer.Option(NOISY_CV, "--max-noise", help="Store a measurement as noisy (kept, but not used by "
                                    "search or calibrate, and measured again by a resumed study) when its repeats' std "
                                    "exceeds this fraction of their mean."),
    store: Optional[Path] = typer.Option(None, "--store", help=STORE_HELP + " Default bench.sqlite for torch/vllm; "
                                         "roofline rows are stored only with --store."),
    gpu: Optional[str] = typer.Option(None, "--gpu", help=gpu_help("Device key, required for roofline; overrides the key "
                                                                   "read from the CUDA device name")),
    gpu_file: Optional[Path] = typer.Option(None, "--gpu-file", help="Extra devices (JSON/CSV with the GPU table's fields), e.g. a CPU."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help=DTYPE_HELP + " Default bfloat16 on CUDA, float32 for "
                                        "torch on CPU."),
    device: str = typer.Option("auto", "--device", help="torch backend: auto, cpu, cuda or cuda:N."),
    tp: int = typer.Option(1, "--tp", help="Tensor-parallel degree (vllm and roofline)."),
    compile_step: bool = typer.Option(False, "--compile", help="torch backend: torch.compile the model step (dynamic shapes)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads per measurement (torch on CPU: "
                                          "intra-op threads; default torch's own), recorded in every row (the CPU's "
                                          "peak at those threads: bench probe --threads)."),
    enforce_eager: bool = typer.Option(False, "--enforce-eager", help="vllm: no CUDA graphs (faster start, slower run)."),
    profile: Optional[str] = typer.Option(None, "--profile", help="roofline: throughput profile (a JSON path or a name; "
                                          "`none` for the uncalibrated roofline). Default: the profile matching --engine, --gpu and dtype."),
    engine: str = typer.Option("vllm", "--engine", help="roofline: the serving engine whose throughput is estimated "
                               "(vllm, torch, sglang); picks the profile."),
    timeout: float = typer.Option(3600.0, "--timeout", help="vllm: seconds a worker may go without progress (engine "
                                  "start, a warm-up, a repeat) before it is killed and recorded as failed."),
    vllm_python: Optional[Path] = typer.Option(None, "--vllm-python", help="vllm: the Python of the environment vLLM is "
                                               "installed in (default $ARCHSCALE_VLLM_PYTHON, else this Python)."),
    seed: int = typer.Option(0, "--seed", help="Seed for random weights and prompts."),
    show: bool = typer.Option(False, "--show", help="Print the store given by --store (only the rows matching "
                              "--backend, --gpu, --dtype, --batch-sizes, --tp, --input-len, --output-len or --threads "
                              "where given)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    export: Optional[Path] = typer.Option(None, "--export", help="With --show: also write the store as CSV here."),
    gpu_price: Optional[float] = GPU_PRICE,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar on stderr."),
    verbose: bool = typer.Option(False, "--verbose", help="vllm: echo the workers' logs to stderr."),
    executor: Optional[str] = study.executor_option(None, "as a job of a resumable study (measured rows are skipped; "
                                                    "default: no study, measure everything here)"),
    jobs_dir: Optional[Path] = study.STORE_JOBS_DIR,
    partition: Optional[str] = study.PARTITION,
    job_gpus: Optional[int] = study.JOB_GPUS,
    job_cpus: Optional[int] = study.JOB_CPUS,
    job_mem: Optional[float] = study.JOB_MEM,
    job_time: Optional[str] = study.JOB_TIME,
    max_parallel: Optional[int] = study.MAX_PARALLEL,
    wait: bool = study.WAIT,
    status: bool = study.STATUS,
) -> None:
    """Benchmark architectures (torch, vLLM, roofline) into an SQLite store, or show the store."""
    specs = list(specs or [])
    dtype = parse_dtype(dtype)
    if show:
        if specs:
            raise UserError("--show prints a store; give it no configs")
        unused = [flag for flag in typed_options(ctx) if flag[0] not in SHOW_FLAGS]
        if unused:
            raise UserError(f"{unused[0][1]} does not apply to --show: it picks rows only by --backend, --gpu, --dtype, "
                            "--batch-sizes, --tp, --input-len, --output-len and --threads"
                            + (" (a store's rows name their engine as --backend)" if unused[0][0] == "engine" else "")
                            + f"; drop {unused[0][1]}")
        check_outputs(("--export", export, "csv"), inputs=(store, gpu_file))
        given = {"dtype": [dtype], "batch_sizes": parse_int_list(batch_sizes, "--batch-sizes"), "tp": [tp],
                 "input_len": [input_len], "output_len": [output_len], "threads": [threads]}
        filters = {SHOW_FILTERS[name]: (flag, given[name]) for name, flag in typed_options(ctx) if name in SHOW_FILTERS}
        _show_mode(store, backend, gpu, gpu_file, export, as_json, gpu_price, filters)
        return
    if export is not None:
        raise UserError("--export writes a store as CSV with --show: add --show (archscale bench --show --store STORE "
                        "--export FILE.csv)")
    if gpu_price is not None:
        raise UserError("--gpu-price prices the rows --show prints: add --show (archscale bench --show --store STORE "
                        "--gpu-price USD)")
    if not specs:
        raise UserError("give configs to benchmark (config folders, config.json files or presets), or --show --store STORE")
    if profile is not None and (backend or "torch") != "roofline":
        raise UserError("--profile applies to --backend roofline only (measurements need no profile)")
    if vllm_python is not None and backend != "vllm":
        raise UserError("--vllm-python applies to --backend vllm only")
    _refuse_other_backends_flags(ctx, backend or "torch")
    if store is None and (backend or "torch") != "roofline":
        store = DEFAULT_STORE
    check_outputs(("--store", store, STORE), inputs=(*specs, gpu_file, profile))
    from archscale.bench.types import BenchOptions

    options = BenchOptions(backend=backend or "torch", batch_sizes=tuple(parse_int_list(batch_sizes, "--batch-sizes")),
                           input_len=input_len, output_len=output_len, repeats=repeats, gpu=gpu, gpu_file=gpu_file,
                           dtype=dtype, device=device, tp=tp, compile=compile_step, threads=threads, enforce_eager=enforce_eager,
                           profile=profile, engine=engine, seed=seed, worker_timeout_s=timeout, verbose=verbose,
                           vllm_python=vllm_python, max_noise=max_noise)
    if executor is not None or status:  # a study: one job per config (archscale.bench.jobs)
        flags = dict(jobs_dir=jobs_dir, partition=partition, gpus=job_gpus, cpus=job_cpus, mem_gb=job_mem, time=job_time,
                     max_parallel=max_parallel, wait=wait)
        study.bench_study_mode(specs, executor, status, options, store, flags, progress, as_json)
        return
    _sweep_mode(specs, options, store, as_json, progress)


@app.command("bench calibrate", cls=Command, epilog=examples(
    "archscale bench calibrate --store data/dissertation_throughput.csv --gpu h200 --engine vllm "
    "--holdout \"name.str.startswith('surefire')\" --out out/my-h200.json",
    "archscale bench llama-3.2-1b --backend roofline --gpu h200 --profile out/my-h200.json",
))
def calibrate_command(
    ctx: typer.Context,
    store: Optional[Path] = typer.Option(None, "--store", help="The measured rows (required): a bench store (.sqlite/.db) or a CSV of bench records."),
    gpu: Optional[str] = typer.Option(None, "--gpu", help=gpu_help("The device whose measured rows to fit (required; a CPU needs a --gpu-file "
                                                        "entry with its peak FLOP/s and bandwidth, see bench probe)")),
    gpu_file: Optional[Path] = typer.Option(None, "--gpu-file", help="Extra devices (JSON/CSV with the GPU table's fields), e.g. a CPU."),
    engine: str = typer.Option("vllm", "--engine", help="The serving engine whose rows to fit (vllm, torch, sglang)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="Which dtype's rows to fit: " + DTYPE_HELP),
    fit_terms: Optional[str] = typer.Option(None, "--fit", help="Comma-separated terms to fit (default "
                                            "eta_weights,t_step,t_seq; also eta_compute, eta_kv, t_layer, t_allreduce, t_expert_gb, "
                                            "t_attn_gflop), "
                                            "or `auto`: the set that best predicts each architecture left out of the fit."),
    fix: Optional[list[str]] = typer.Option(None, "--fix", metavar="<name=value>", help="Hold a term at a value, e.g. "
                                            "--fix eta_kv=0.8 (repeatable)."),
    holdout: Optional[str] = typer.Option(None, "--holdout", help="Rows to keep out of the fit and score on, "
                                          "e.g. \"name.str.startswith('surefire')\"."),
    name: Optional[str] = typer.Option(None, "--name", help="The profile's name (default: the --out file's name "
                                       "without .json, so that it is not mistaken for a shipped profile; without --out, "
                                       "ENGINE-DEVICE-DTYPE)."),
    memory_fraction: float = typer.Option(0.9, "--memory-fraction", help="The engine's share of device memory "
                                          "(vLLM's gpu_memory_utilization) when the rows were measured."),
    max_num_seqs: int = typer.Option(256, "--max-num-seqs", min=1, help="The engine's limit on running sequences."),
    kv_cache_gib: Optional[float] = typer.Option(None, "--kv-cache-gib", help="Fixed KV-cache space in GiB "
                                                 "(vLLM on CPU: VLLM_CPU_KVCACHE_SPACE) instead of a memory share "
                                                 "(so not with --memory-fraction); at most the device's memory."),
    prefill_chunk: Optional[int] = typer.Option(None, "--prefill-chunk", help="Prompt tokens per prefill pass the rows "
                                                "ran with (vLLM's max_num_batched_tokens). Default: what the rows "
                                                "recorded (archscale bench --backend vllm records it), else 8192."),
    first_prompt_alone: Optional[bool] = typer.Option(None, "--first-prompt-alone/--all-prompts-at-once", help="Whether "
                                                      "the engine started on the first request alone, the others "
                                                      "arriving after (vLLM's offline LLM). Default: what the rows "
                                                      "recorded, else all at once."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the fitted profile JSON here (use it with --profile, or "
                                       "put it in a folder listed in $ARCHSCALE_PROFILES)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Fit a throughput profile (the serving model's terms) to measured bench rows of one engine on one device."""
    check_outputs(("--out", out, "json"), inputs=(store, gpu_file))
    engine_settings = {"memory_fraction": memory_fraction, "max_num_seqs": max_num_seqs, "kv_cache_gib": kv_cache_gib}
    EngineSettings.refuse_bad_values(engine_settings, {name: f"--{name.replace('_', '-')}" for name in engine_settings})
    if len(given_on_command_line(ctx, "memory_fraction", "kv_cache_gib")) == 2:
        raise UserError("--memory-fraction does not apply with --kv-cache-gib: a fixed KV-cache size replaces the "
                        "engine's share of device memory; drop one of them")
    if name is not None and not name.strip():
        raise UserError("--name is empty: give the profile a name, or leave --name out for the default (the --out "
                        "file's name without .json)")
    name = name or (out.stem if out is not None else None)
    _calibrate_mode(store, gpu, gpu_file, check_engine(engine), parse_dtype(dtype), fit_terms, fix, holdout, name, out,
                    EngineSettings(**engine_settings),
                    as_json, {"prefill_chunk_tokens": positive_chunk(prefill_chunk), "first_prompt_alone": first_prompt_alone})


def positive_chunk(prefill_chunk: Optional[int]) -> Optional[int]:
    """``--prefill-chunk`` as given (None: not given), a value below 1 refused in one line."""
    if prefill_chunk is not None and prefill_chunk < 1:
        raise UserError(f"--prefill-chunk must be a positive number of tokens, got {prefill_chunk}")
    return prefill_chunk


@app.command("bench probe", cls=Command, epilog=examples(
    "archscale bench probe --threads 1 --out out/cpu.json",
    "archscale arch llama-3.2-1b --gpu cpu --gpu-file out/cpu.json --batch 1 --input-len 128 --output-len 64",
))
def probe_command(
    gpu: str = typer.Option("cpu", "--gpu", help="Name of the device entry written (then used as --gpu NAME --gpu-file FILE)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="The dtype whose matmul rate to measure: " + DTYPE_HELP
                                        + " Default float32."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Torch threads to measure the CPU with."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the device entry (a GPU-file JSON) here."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a line."),
) -> None:
    """Measure this CPU (peak FLOP/s, copy bandwidth, memory) as a device entry for --gpu-file."""
    check_outputs(("--out", out, "json"))
    _probe_mode(out, gpu, parse_dtype(dtype) or "float32", threads, as_json)


def _refuse_other_backends_flags(ctx: typer.Context, backend: str) -> None:
    """A run flag the chosen backend does not read is one line, not silence (an unknown backend is refused later)."""
    if backend not in BACKENDS:
        return
    for name, flag in typed_options(ctx):
        users = BACKEND_FLAGS.get(name)
        if users is None or backend in users:
            continue
        if backend == "roofline":
            raise UserError(f"{flag} does not apply to --backend roofline: it estimates, measuring nothing "
                            f"({flag} is for --backend {' and '.join(users)}); drop {flag}")
        why = " (a measurement's engine is its --backend)" if name == "engine" else ""
        raise UserError(f"{flag} applies to --backend {' and '.join(users)} only, not {backend}{why}; drop {flag}")


# ---- sweep --------------------------------------------------------------------------
def _sweep_mode(specs: list[str], options, out: Optional[Path], as_json: bool, progress: bool) -> None:
    """Measure (or estimate) every config at every batch size into ``out`` (checked by the output policy already)."""
    from archscale.bench.sweep import check_targets, make_backend, resolve_targets, run_sweep

    backend_name, sizes = options.backend, options.batch_sizes
    store = out
    targets = resolve_targets(specs)
    check_targets(targets, options)
    backend = make_backend(options)
    errors = Console(stderr=True)
    if backend_name == "roofline" and not as_json:
        console.print(f"estimates from {backend.profile.describe()}", markup=False, highlight=False, soft_wrap=True)
    total = len(targets) * (options.progress_units_per_target + len(sizes) * options.progress_units_per_batch)
    with _progress(errors, total, enabled=progress) as bar:
        result = run_sweep(targets, options, store, _hooks(bar, errors), backend=backend)
    _report_sweep(result, as_json, errors, options.gpu_file)


def _progress(errors: Console, total: int, enabled: bool) -> Progress:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
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
            errors.print(f"{record['status']}: {record['name'] or record['source']} batch {record['batch_size']}: {record['error']}",
                         markup=False, highlight=False)

    def advanced(n: int, description: str | None = None) -> None:
        bar.update(task, advance=n, **({"description": description} if description else {}))

    return Hooks(started=started, advanced=advanced, recorded=recorded)


def _report_sweep(result, as_json: bool, errors: Console, gpu_file: Path | None = None) -> None:
    """Print the sweep's records; exit 130 if interrupted, 2 if every benchmark failed. ``gpu_file``'s devices give
    measured rows on them (a CPU entry) their "vs estimate", as ``--show`` does."""
    frame = pd.DataFrame(result.records)
    if as_json:
        print_json(_json_rows(frame))
    elif len(frame):
        console.print(_results_table(frame, title=f"{len(frame)} benchmark records", gpu_file=gpu_file))
    count = f"{len(result.records)} records"
    done = f"appended {count} to {result.store}" if result.store else f"{count}, not stored (no --store)"
    if result.interrupted:
        kept = f"{count} appended to {result.store} are kept" if result.store else done
        errors.print(f"interrupted: {kept}", markup=False, highlight=False)
        raise SystemExit(130)  # not typer.Exit: main() runs the app with standalone_mode=False, which drops its code
    noisy = f", {result.n_noisy} noisy (not used by search or calibrate)" if result.n_noisy else ""
    errors.print(f"{done}, {result.n_failed} failed{noisy}", markup=False, highlight=False)
    where = f" to {result.store}" if result.store else " (not stored: no --store)"
    if result.records and result.n_failed == len(result.records):
        raise UserError(f"every benchmark failed ({len(result.records)} recorded{where})")


# ---- show ---------------------------------------------------------------------------
def _show_mode(store, backend, gpu, gpu_file, export, as_json, gpu_price=None, filters=None) -> None:
    """Print the store's rows matching --backend, --gpu and ``filters`` (column: (flag, admitted values))."""
    from archscale.bench.store import export_csv, load_results
    from archscale.serving.devices import gpu_table

    if store is None:
        raise UserError("--show needs --store STORE (the .sqlite, .db or .csv to print)")
    known = tuple(dict.fromkeys((*BACKENDS, *MEASURED_BACKENDS)))
    if backend and backend not in known:
        raise UserError(f"--backend {backend!r}: unknown backend; a store's rows come from {', '.join(known)}")
    out = store
    whole = load_results(out)
    devices = sorted(set(whole["gpu"].dropna().astype(str).str.lower()))
    if gpu and gpu.strip().lower() not in devices and gpu.strip().lower() not in gpu_table(gpu_file):
        raise UserError(f"--gpu {gpu!r}: unknown device, and {out} has no rows on it (its rows are on "
                        f"{', '.join(devices) or 'no device: it is empty'}); give one of those, or drop --gpu")
    filters = {**({"backend": ("--backend", [backend])} if backend else {}),
               **({"gpu": ("--gpu", [gpu.strip().lower()])} if gpu else {}), **(filters or {})}
    frame = whole
    for column, (_, values) in filters.items():
        cells = frame[column].astype(str).str.lower() if column == "gpu" else frame[column]
        if column not in ("backend", "gpu", "dtype"):
            cells = pd.to_numeric(cells, errors="coerce")
        frame = frame[cells.isin(values)]
    frame = _priced(frame, gpu_price, gpu_file)
    if export is not None:
        count = export_csv(out, export)
        whole_store = " (the whole store: the filters choose what is printed)" if filters else ""
        Console(stderr=True).print(f"wrote {count} rows{whole_store} to {export}", markup=False, highlight=False)
    if as_json:
        print_json(_json_rows(frame))
        return
    if whole.empty:
        console.print(f"{out}: the store is empty (no records)", markup=False, highlight=False, soft_wrap=True)
        return
    if frame.empty:
        held = "; ".join(f"{flag} {', '.join(_held(whole[column], column))}" for column, (flag, _) in filters.items())
        console.print(f"{out}: no records matching the filters (the store's rows have {held})", markup=False,
                      highlight=False, soft_wrap=True)
        return
    console.print(_results_table(frame.reset_index(drop=True), title=f"{out}: {len(frame)} records", gpu_file=gpu_file,
                                 latency=True))


def _held(column: pd.Series, name: str) -> list[str]:
    """The distinct values a store column holds, as the --show filter on it spells them."""
    values = column.dropna()
    if name == "gpu":
        values = values.astype(str).str.lower()
    elif name not in ("backend", "dtype"):
        values = pd.to_numeric(values, errors="coerce").dropna().astype(int)
    return [str(v) for v in sorted(set(values))] or ["none"]


def _priced(frame: pd.DataFrame, gpu_price: float | None, gpu_file: Path | None) -> pd.DataFrame:
    """Rows with ``usd_per_m_output``: dollars per million output tokens of a replica (``tp`` GPUs) at each row's
    throughput, at ``--gpu-price`` or the row device's ``usd_per_hour`` from --gpu-file; unchanged without a price.

    One --gpu-price prices one device: on a store of several it is refused unless --gpu picks one (a price for an
    H200 is not a price for this CPU)."""
    from archscale.serving.devices import gpu_table
    from archscale.serving.price import check_price, usd_per_million_tokens

    devices = sorted(set(frame["gpu"].dropna().astype(str).str.lower()))
    if gpu_price is not None:
        check_price(gpu_price, "--gpu-price")
        if len(devices) > 1:
            raise UserError(f"--gpu-price prices one device, but the rows shown are on {', '.join(devices)}; "
                            "pick one with --gpu, or give each a usd_per_hour in --gpu-file")
        prices = {name: gpu_price for name in devices}
    else:
        table = gpu_table(gpu_file) if gpu_file is not None else {}
        prices = {name: table[name].usd_per_hour for name in devices if name in table and table[name].usd_per_hour}
    if not prices:
        return frame
    frame = frame.copy()
    per_row = frame["gpu"].astype(str).str.lower().map(prices).to_numpy(float)
    tp = pd.to_numeric(frame["tp"], errors="coerce").fillna(1).to_numpy(float)
    rate = pd.to_numeric(frame["output_tokens_per_s"], errors="coerce").to_numpy(float)
    # usd/hour x tp GPUs / 3600 / tokens/s x 1e6, per row (each row its own price and tp): the price module's formula
    unit = usd_per_million_tokens(rate, 1.0, 1)
    frame["usd_per_m_output"] = per_row * tp * unit
    return frame


def _json_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return jsonable(frame.to_dict("records"))


def _number(value: Any, digits: str = ",.0f") -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "-"
    return "-" if math.isnan(value) else format(value, digits)


LATENCY_SHOWN = (("TTFT p50/p99 ms", "ttft_ms"), ("TPOT p50/p99 ms", "tpot_ms"))
"""The latency columns ``--show`` prints (header, column prefix); the means, p90 and ITL are in ``--json`` and CSV."""


def _results_table(frame: pd.DataFrame, title: str, gpu_file: Path | None = None, latency: bool = False) -> Table:
    """Records as a table, both throughput units labelled; measured rows also show how they compare with the estimate.

    "vs estimate" is measured / estimated total tokens/s for the row's shape
    and workload, from the profile matching its engine, device and dtype (the
    uncalibrated roofline where there is none), named beside the ratio.
    Estimated rows name their profile, and say when the KV cache made the
    batch run in waves. With ``latency`` (``--show``), TTFT and TPOT p50/p99
    are shown when some row has them (the sweep's own table keeps the
    columns its transcripts show). Prefill/decode seconds, the other latency
    statistics and config hashes are in ``--json`` and CSV exports.
    """
    from archscale.bench.calibrate import estimate_ratio

    ratio, compared = estimate_ratio(frame, gpu_file)
    shown = [(header, prefix) for header, prefix in LATENCY_SHOWN
             if latency and frame[[f"{prefix}_p50", f"{prefix}_p99"]].notna().any().any()]
    priced = "usd_per_m_output" in frame and frame["usd_per_m_output"].notna().any()
    table = Table(title=title)
    headers = ("name", "backend", "gpu", "dtype", "batch", "in/out", "total tok/s", "out tok/s",
               *(header for header, _ in shown), *(["$/M out"] if priced else []), "vs estimate", "status")
    for column in headers:
        table.add_column(column, justify="left" if column in ("name", "backend", "gpu", "dtype", "status", "vs estimate")
                         else "right", no_wrap=column in ("in/out", "total tok/s", "vs estimate",
                                                          *(header for header, _ in shown)))
    for index, row in frame.iterrows():
        if row["backend"] == "roofline":
            versus = f"is {row['profile'] or 'uncalibrated'}"
        elif math.isnan(ratio.loc[index]):
            versus = "-"
        else:
            versus = f"{ratio.loc[index]:.2f}x {compared.loc[index]}"
        spread = _number(row["tokens_per_s_std"])
        total = _number(row["tokens_per_s"]) + ("" if spread == "-" else f" ± {spread}")
        table.add_row(str(row["name"] or row.get("source") or "?"), str(row["backend"]), str(row["gpu"]),
                      str(row["dtype"]), str(row["batch_size"]),
                      f"{row['input_len']}/{row['output_len']}", total, _number(row["output_tokens_per_s"]),
                      *(_percentiles(row, prefix) for _, prefix in shown),
                      *([format_usd(float(row["usd_per_m_output"]))] if priced else []), versus, _status(row))
    return table


def _percentiles(row: pd.Series, prefix: str) -> str:
    """``p50 / p99`` of one latency in milliseconds; "-" for a row without it."""
    p50, p99 = (_milliseconds(row[f"{prefix}_{statistic}"]) for statistic in ("p50", "p99"))
    return "-" if p50 == p99 == "-" else f"{p50} / {p99}"


def _milliseconds(value: Any) -> str:
    """Whole milliseconds from 100 up, one decimal from 10, two below (a tiny model's decode step takes under 1 ms)."""
    number = pd.to_numeric(value, errors="coerce")
    return _number(number, ",.0f" if abs(number) >= 100 else ".1f" if abs(number) >= 10 else ".2f")


def _status(row: pd.Series) -> str:
    if row["status"] != "ok":
        return f"{row['status']}: {row['error']}"
    concurrency = pd.to_numeric(row.get("concurrency"), errors="coerce")
    if row["backend"] == "roofline" and concurrency == concurrency and concurrency < row["batch_size"]:
        return f"ok; KV cache holds {int(concurrency)}/{row['batch_size']}: waves"
    return "ok"


# ---- calibrate ----------------------------------------------------------------------
def _calibrate_mode(store, gpu, gpu_file, engine, dtype, fit_terms, fix, holdout, name, save, settings, as_json,
                    given_settings) -> None:
    from archscale.bench.calibrate import AUTO, DEFAULT_FREE, calibrate, measured_rows, settings_from_rows
    from archscale.bench.store import load_results
    from archscale.serving.devices import load_gpu
    from archscale.serving.profiles import save_profile
    from archscale.fit.rows import select

    if store is None:
        raise UserError("calibrate needs --store STORE (the measured results: a bench store or a CSV of records)")
    if not gpu:
        raise UserError("calibrate needs --gpu (the device whose measured rows to fit, e.g. h200; "
                        "a CPU needs a --gpu-file entry with its peak FLOP/s and bandwidth)")
    if fit_terms is None:
        free = DEFAULT_FREE
    elif fit_terms.strip() == AUTO:
        free = AUTO
    else:
        free = tuple(t.strip() for t in fit_terms.split(","))
        if not all(free):
            raise UserError(f"--fit {fit_terms!r}: an empty term; give comma-separated terms such as "
                            f"{','.join(DEFAULT_FREE)}, or {AUTO}")
    fixed = parse_assignments(fix, "--fix")
    device = load_gpu(gpu, gpu_file)
    if settings.kv_cache_gib is not None and settings.kv_cache_gib > device.memory_gb:
        raise UserError(f"--kv-cache-gib {settings.kv_cache_gib:g} is more than {device.name}'s "
                        f"{device.memory_gb:g} GiB of memory; give the KV-cache space the engine had, at most "
                        f"{device.memory_gb:g}")
    results = load_results(store)
    if results.empty:
        raise UserError(f"--store {store}: the store is empty (no records); fill it with archscale bench SPEC... "
                        f"--store {store}, or give a store with measured rows")
    mask = select(results, holdout, "--holdout", str(store)).to_numpy() if holdout is not None else None
    settings, from_rows = settings_from_rows(measured_rows(results, gpu, engine, dtype), settings, given_settings)
    result = calibrate(results, device, engine, dtype, free, fixed, mask,
                       settings, name, source=str(store))
    if save is not None:
        save_profile(result.profile, save)
    if as_json:
        print_json({"profile": result.profile.to_json(), "rows": _json_rows(result.rows.drop(columns=["_heldout"])),
                    "speedups": _json_rows(result.speedups)})
        return
    if from_rows:
        console.print("engine settings as the rows recorded them: " + "; ".join(from_rows))
    _print_calibration(result)
    if save is not None:
        console.print(f"saved profile to {save} (use it with --profile {save}, or put it in a directory listed in "
                      "$ARCHSCALE_PROFILES to have bench and search pick it up for this engine, device and dtype)")


def _print_calibration(result) -> None:
    from archscale.bench.calibrate import format_term, term_table

    profile, unit = result.profile, result.summary["unit"]
    selection = result.summary.get("term_selection")
    if isinstance(selection, list):
        chooser = Table(title="--fit auto: terms chosen by leave-one-architecture-out error on the fitted rows")
        for column in ("terms", "mean |error| of left-out architectures", "note"):
            chooser.add_column(column)
        for row in selection:
            error = row["loao_mean_abs_rel_err"]
            chosen = list(profile.fitted) == row["terms"]
            chooser.add_row(("* " if chosen else "  ") + ", ".join(row["terms"]),
                            "-" if error is None else f"{100 * error:.1f}%", row["refused"] or "")
        console.print(chooser)
    elif selection:
        console.print(f"--fit auto: {selection}")
    rows = Table(title=f"{profile.engine} on {profile.device.name} ({profile.dtype}): measured vs estimated {unit}")
    for column in ("name", "split", "batch", "in/out", "measured", "uncalibrated", "err", "profile", "err "):
        rows.add_column(column, justify="left" if column in ("name", "split") else "right")
    for row in result.rows.itertuples():
        rows.add_row(str(row.arch_name), row.split, str(int(row.batch_size)), f"{int(row.input_len)}/{int(row.output_len)}",
                     _number(row.measured), _number(row.uncalibrated), f"{100 * row.rel_err_uncalibrated:+.1f}%",
                     _number(row.estimate), f"{100 * row.rel_err:+.1f}%")
    console.print(rows)
    terms = Table(title=f"profile {profile.name}: terms")
    for column in ("term", "value", "", "bounds", "meaning"):
        terms.add_column(column)
    for term in term_table(profile):
        low, high = term["bounds"]
        terms.add_row(term["term"], format_term(term["term"], term["value"]), "fitted" if term["fitted"] else "fixed",
                      f"{format_term(term['term'], low)} .. {format_term(term['term'], high)}", term["meaning"])
    console.print(terms)
    for key, label in (("fit", "fitted rows"), ("leave_one_architecture_out", "leave one architecture out"),
                       ("heldout", "held-out rows")):
        summary = result.summary.get(key)
        if not summary:
            continue
        if summary.get("mean_abs_rel_err") is None:
            reasons = "; ".join(f"{arch}: {why}" for arch, why in (summary.get("refused") or {}).items())
            console.print(f"{label}: not available ({reasons or 'no rows'})")
            continue
        line = (f"{label}: |error| mean {100 * summary['mean_abs_rel_err']:.1f}%, max {100 * summary['max_abs_rel_err']:.1f}% "
                f"over {summary['n_rows']} rows")
        if summary.get("n_pairs"):
            line += (f"; speedup between same-size architectures: |error| mean {summary['speedup_mean_abs_points']:.1f} "
                     f"points, max {summary['speedup_max_abs_points']:.1f} ({summary['n_pairs']} pairs)")
        console.print(line)
    for split, label in (("fit", "fitted rows"), ("heldout", "held-out rows")):
        latency = (result.summary.get("latency") or {}).get(split)
        if latency:
            console.print(f"latency on {label}: " + "; ".join(
                f"{column.replace('_ms_', ' ').upper()} median |error| {100 * entry['median_abs_rel_err']:.1f}%, max "
                f"{100 * entry['max_abs_rel_err']:.1f}% ({entry['n_rows']} rows)" for column, entry in latency.items()))
    before = result.summary["uncalibrated_fit"]
    console.print(f"uncalibrated roofline on the fitted rows: |error| mean {100 * before['mean_abs_rel_err']:.1f}%, "
                  f"max {100 * before['max_abs_rel_err']:.1f}%")


# ---- probe --------------------------------------------------------------------------
def _probe_mode(save: Optional[Path], name: str, kind: str, threads: Optional[int], as_json: bool) -> None:
    from dataclasses import asdict

    from archscale.serving.probe import probe_cpu
    from archscale.io.files import write_json

    probe = probe_cpu(name, threads, kind)
    device = probe.device
    if save is not None:
        write_json(save, [asdict(device)])
    if as_json:
        print_json({**asdict(device), "flops_per_cycle": probe.flops_per_cycle, "mhz": probe.mhz, "threads": probe.threads,
                    "matmul_flops": probe.matmul_flops, "copy_bytes_per_s": probe.copy_bytes_per_s})
        return
    theory = probe.flops_per_cycle * probe.mhz * 1e6 * probe.threads
    console.print(f"{device.name}: peak {device.bf16_tflops * 1e3:.1f} GFLOP/s (the larger of {probe.flops_per_cycle} fp32 "
                  f"FLOPs/cycle x {probe.mhz:.0f} MHz x {probe.threads} threads = {theory / 1e9:.1f} and torch's {kind} "
                  f"matmul, {probe.matmul_flops / 1e9:.1f}), {device.hbm_tb_s * 1e3:.1f} GB/s copy, "
                  f"{device.memory_gb:g} GiB RAM")
    if save is not None:
        console.print(f"saved {save}: use it with --gpu {device.name} --gpu-file {save} (bench calibrate, bench --backend "
                      "roofline, search)")
