"""``archscale search``: the fastest architecture whose predicted loss meets a target."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import pandas as pd
import typer
from rich.table import Table

from archscale.shapes.architecture import require_even_head_dim
from archscale.bench.store import STORE, load_results
from archscale.cli import EMIT_TINY_CONFIGS, Command, app, console, examples, print_json, study
from archscale.cli.options import (COUNT, GPU_PRICE, PERCENTILE, TPOT_MS, TTFT_MS, check_sweep_ranges, gpu_help, parse_granularity,
                                   latency_limits, parse_int_list)
from archscale.io.units import format_count, parse_count
from archscale.serving.devices import load_gpu
from archscale.serving.price import format_usd, resolve_price
from archscale.serving.profiles import resolve_profile
from archscale.serving.estimate import LatencyLimits, Workload, latency_column
from archscale.io.errors import UserError
from archscale.io.files import write_json
from archscale.io.outputs import check_outputs, written_together
from archscale.fit.runs import load_runs
from archscale.search.constrained import SearchResult, SearchSpec, best_at_gqa, held_bounds, search
from archscale.search.emit import emit_configs
from archscale.search.latency_limited import format_ms
from archscale.fit.fitted import check_reference, load_fit
from archscale.shapes.hf_config import load_architecture
from archscale.shapes.moe_candidates import EXPERTS_DEFAULT, GRANULARITY_DEFAULT, TOP_K_DEFAULT
from archscale.search.families import ExpertGrid, FamilyResult, family_document, is_family_law, search_families

EMIT_STRICT_HF = "--emit writes only configs transformers can load (--strict-hf is on with --emit; --no-strict-hf keeps every shape)"
"""Why a search with ``--emit`` and neither ``--strict-hf`` nor ``--no-strict-hf`` kept only loadable shapes (its note)."""

TOP_COLUMNS = ["rank", "n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff", "N", "x", "r", "gqa", "predicted_loss",
               "loss_low", "loss_high", "p_meets_target", "loss_source", "tokens_per_s", "output_tokens_per_s",
               "throughput_source", "memory_gb", "concurrency", "gqa_variants", "tie", "extrapolation",
               "inside_data", "speedup_low", "speedup_high", "operating_batch", "meets_limits", "usd_per_m_output",
               *(f"{metric}_ms_{statistic}" for metric in ("ttft", "tpot") for statistic in ("mean", "p50", "p90", "p99"))]


def _records(frame: pd.DataFrame, columns: list[str]) -> list[dict[str, Any]]:
    return frame[[c for c in columns if c in frame.columns]].to_dict("records")


def _speedup(row: Any, reference: dict[str, Any] | None) -> float | None:
    if not reference or not reference["output_tokens_per_s"] > 0:
        return None
    return float(row.output_tokens_per_s / reference["output_tokens_per_s"])


def result_document(result: SearchResult, spec: SearchSpec) -> dict[str, Any]:
    """The JSON written by ``--out`` and printed by ``--json`` (numpy values are converted on writing)."""
    top = _records(result.top_k, TOP_COLUMNS)
    for record, row in zip(top, result.top_k.itertuples()):
        record["speedup_vs_reference"] = _speedup(row, result.target.reference)
        record["speedup_source"] = result.speedup_source(row)
    model = result.throughput_model
    return {
        # one depth: an integer, as before; several: the list (each pick carries its own n_layers)
        "budget": {"n": spec.n, "tokens": spec.tokens,
                   "n_layers": spec.layers[0] if len(spec.layers) == 1 else list(spec.layers), "d_head": spec.d_head,
                   "vocab_size": spec.vocab_size, "tie_embeddings": spec.tie_embeddings},
        "hardware": {"gpu": spec.gpu.name, "tp": spec.tp},
        "throughput_estimates": {"profile": model.name, "calibrated": model.calibrated, "engine": model.engine,
                                 "description": model.describe(),
                                 "heldout_speedup_error_points": model.heldout_speedup_points,
                                 "units": "tokens_per_s counts prompt + generated tokens; output_tokens_per_s generated only"},
        "workload": {"batch_size": spec.workload.batch_size, "input_len": spec.workload.input_len,
                     "output_len": spec.workload.output_len},
        "latency_limits": None if spec.limits is None else {
            "tpot_ms": spec.limits.tpot_ms, "ttft_ms": spec.limits.ttft_ms, "statistic": spec.limits.statistic_label,
            "rule": "each shape is ranked at the most requests (up to batch_size), submitted together, whose TTFT and "
                    "TPOT at the statistic meet the limits; its throughput is the estimate at that batch",
            "comparison": result.limit_comparison},
        "loss_units": "relative to L_opt" if result.relative else "nats/token",
        "target": {"loss": result.target.loss, "source": result.target.source, "reference": result.target.reference},
        "continuous_optimum": result.continuous_optimum,
        "best_discrete": result.best_discrete,
        "best_discrete_gqa4": best_at_gqa(result, 4),
        "n_candidates": len(result.candidates),
        "n_feasible": int(result.candidates["feasible"].sum()),
        "n_ranked": int(result.candidates["ranked"].sum()),
        "coverage": {"of_fit": result.coverage, "extrapolate": spec.extrapolate,
                     "rule": "a candidate is ranked only when its coordinates lie within the ranges of the fit's runs "
                             "(2% slack), unless --extrapolate; extrapolation names what is out"},
        "gqa": None if result.gqa is None else {
            "traded": result.gqa.traded, "held_at": result.gqa.held_at, "runs": result.gqa.runs, "note": result.gqa.note,
            "rule": "GQA variants are ranked by the law only when its GQA term passed the fit's held-out check; "
                    "otherwise GQA is held at held_at (other groups are extrapolations) and archscale search-gqa "
                    "settles it by training"},
        "tie_rule": None if spec.tie_rule is None else {"tolerance": spec.tie_rule[0], "source": spec.tie_rule[1]},
        "top_k": top,
        "frontier": _records(result.frontier, TOP_COLUMNS[1:]),  # what a pick has that a frontier shape has too
        "notes": result.notes,
    }


def _loss_uncertainty(row: Any) -> str:
    """`` [low-high]`` from the fit's bootstrap refits, and ``P=0.97`` with --confidence (loss part of the table)."""
    text = ""
    if getattr(row, "loss_low", None) is not None and pd.notna(row.loss_low) and row.loss_source != "measured":
        text += f" [{row.loss_low:.4f}-{row.loss_high:.4f}]"
    if getattr(row, "p_meets_target", None) is not None and pd.notna(row.p_meets_target):
        text += f" P={row.p_meets_target:.2f}"
    return text


def _interval(row: Any) -> str:
    """`` [1.02-1.09]``: the speedup under every admissible term set of the profile, when it has more than one."""
    low, high = getattr(row, "speedup_low", None), getattr(row, "speedup_high", None)
    if low is None or not pd.notna(low):
        return ""
    return f" [{low:.2f}-{high:.2f}]"


def _within_error(speedup: float | None, spec: SearchSpec) -> str:
    """The verdict on the top pick against the reference: a gap smaller than the estimate's held-out error is a tie;
    a pick slower by more than it says the reference is the faster choice (a search exists to find faster shapes,
    and a silent 0.89x reads as a recommendation)."""
    rule = spec.tie_rule
    if speedup is None or rule is None:
        return ""
    if abs(speedup - 1) <= rule[0]:
        return f"; within {100 * rule[0]:.1f}% ({rule[1]}): a tie with the reference, not a measured gain"
    if speedup < 1:
        return (f"; slower by more than {100 * rule[0]:.1f}% ({rule[1]}): as estimated, the reference is the faster "
                "choice at this loss (--extrapolate also ranks shapes outside the fit's runs, labelled)")
    return ""


def _print_measured(measured: Any) -> None:
    table = Table(title=f"the top {len(measured.table)} measured ({measured.backend}), fastest first")
    for column in ("measured rank", "estimated rank", "d_model", "heads/kv", "d_ff", "GQA", "estimated out tok/s",
                   "measured out tok/s"):
        table.add_column(column, justify="right")
    for row in measured.table.itertuples():
        table.add_row(str(row.measured_rank), str(row.rank), str(row.d_model), f"{row.n_heads}/{row.n_kv_heads}",
                      str(row.d_ff), str(row.gqa), f"{row.estimated_output_tokens_per_s:,.0f}",
                      f"{row.measured_output_tokens_per_s:,.0f}")
    console.print(table)
    for line in measured.summary():
        console.print(f"measured: {line}")


def _served_cells(row: dict[str, Any], limits: LatencyLimits | None) -> list[str]:
    """The operating point's cells under a latency limit: requests at once, TPOT and TTFT (none without a limit)."""
    if limits is None:
        return []
    met = "" if row.get("meets_limits", True) else " (misses)"
    return [f"{int(row['operating_batch'])}{met}"] + [format_ms(float(row[latency_column(m, limits.statistic)]))
                                                      for m in ("tpot", "ttft")]


def _dollar_cells(row: dict[str, Any], spec: SearchSpec) -> list[str]:
    """Dollars per million output tokens, with a price (none without one)."""
    if spec.usd_per_gpu_hour is None:
        return []
    return [format_usd(float(row["usd_per_m_output"]))]


def _serving_label(spec: SearchSpec) -> str:
    """``h200, batch 64, 4096 in / 1024 out`` (or the limits a shape's batch must meet): a result table's title."""
    limits = spec.limits
    batch = (f"at most {spec.workload.batch_size} requests meeting {limits.describe()}" if limits is not None
             else f"batch {spec.workload.batch_size}")
    return f"{spec.gpu.name}, {batch}, {spec.workload.input_len} in / {spec.workload.output_len} out"


def _print(result: SearchResult, spec: SearchSpec) -> None:
    optimum = result.continuous_optimum
    if optimum:
        parts = [f"{k} = {v:.4g}" for k, v in optimum.items()]
        console.print("continuous optimum (closed form): " + ", ".join(parts))
    best = result.best_discrete
    deep = len(spec.layers) > 1  # depths vary: every shape says its own
    depth = f"{best['n_layers']} layers, " if deep else ""
    console.print(f"best discrete candidate (lowest predicted loss): {depth}d_model {best['d_model']}, heads {best['n_heads']}/{best['n_kv_heads']}, "
                  f"d_ff {best['d_ff']}, r {best['r']:.3f}, x {best['x']:.4f}, loss {best['predicted_loss']:.4f}")
    console.print(f"target loss {result.target.loss:.4f} from {result.target.source}; "
                  f"{int(result.candidates['feasible'].sum()):,} of {len(result.candidates):,} candidates feasible")
    reference = result.target.reference
    console.print(f"throughput: {result.throughput_model.describe()}")
    limits = spec.limits
    table = Table(title=f"top {len(result.top_k)} for training ({_serving_label(spec)})")
    outside = bool(result.top_k.get("extrapolation_brief", pd.Series(dtype=str)).astype(bool).any())
    served = ["batch", f"TPOT {limits.statistic_label} ms", f"TTFT {limits.statistic_label} ms"] if limits is not None else []
    columns = (["rank"] + (["layers"] if deep else []) + ["d_model", "heads/kv", "d_ff", "N", "r", "x", "GQA", "loss"]
               + served + ["out tok/s"] + (["$/M out"] if spec.usd_per_gpu_hour is not None else []) + ["vs ref", "GQA variants"])
    for column in columns + (["extrapolation"] if outside else []):
        table.add_column(column, justify="right")
    for row in result.top_k.itertuples():
        ratio = _speedup(row, reference)
        loss = f"{row.predicted_loss:.4f}" + (" (measured)" if row.loss_source == "measured" else "") + _loss_uncertainty(row)
        speed = f"{row.output_tokens_per_s:,.0f}" + (" (measured)" if row.throughput_source == "measured" else "")
        rank = f"{row.rank} tie" if getattr(row, "tie", False) else str(row.rank)
        versus = "-" if ratio is None else f"{ratio:.2f}x" + _interval(row)
        table.add_row(rank, *([str(row.n_layers)] if deep else []), str(row.d_model), f"{row.n_heads}/{row.n_kv_heads}",
                      str(row.d_ff), format_count(row.N), f"{row.r:.2f}", f"{row.x:.4f}", str(row.gqa), loss,
                      *_served_cells(row._asdict(), limits), speed, *_dollar_cells(row._asdict(), spec), versus,
                      row.gqa_variants, *([row.extrapolation_brief or "-"] if outside else []))
    if reference:
        measured = " (measured)" if reference.get("throughput_source") == "measured" else ""
        table.add_row("ref", *([str(reference["n_layers"])] if deep else []), str(reference["d_model"]),
                      f"{reference['n_heads']}/{reference['n_kv_heads']}", str(reference["d_ff"]), format_count(reference["N"]), f"{reference['r']:.2f}", f"{reference['x']:.4f}", str(reference["gqa"]),
                      f"{reference['predicted_loss']:.4f}", *_served_cells(reference, limits),
                      f"{reference['output_tokens_per_s']:,.0f}{measured}", *_dollar_cells(reference, spec), "1.00x",
                      reference["name"], *(["-"] if outside else []))
    console.print(table)
    if reference and len(result.top_k):
        first = next(result.top_k.itertuples())
        speedup = _speedup(first, reference)
        spread = _interval(first).strip(" []")
        spread = f"{spread} over the profile's admissible eta_kv refits; " if spread else ""
        console.print(f"top pick vs {reference['name']}: {speedup:.2f}x output tokens/s "
                      f"({spread}source: {result.speedup_source(first)})" + _within_error(speedup, spec))
    for note in result.notes:
        console.print(f"note: {note}")


@app.command("search", cls=Command, epilog=examples(
    "archscale search --fit data/fits/dissertation_1b_mult.json --n 1e9 --tokens 1e11 --layers 16 --head-dim 64 "
    "--match llama-3.2-1b --gpu h200 --batch 64 --top-k 3 --emit out/configs-1b --plot out/pareto.png --out out/search.json",
    EMIT_TINY_CONFIGS,
))
def search_command(
    fit: Path = typer.Option(..., "--fit", help="Fit JSON of a conditional or aspect law (archscale fit, or data/fits/*.json)."),
    n_text: str = typer.Option(..., "--n", metavar=COUNT, help="Non-embedding parameter budget N, e.g. 1e9 or 975M."),
    tokens_text: str = typer.Option(..., "--tokens", metavar=COUNT, help="Training tokens D, e.g. 1e11 or 100B."),
    layers: str = typer.Option(..., "--layers", help="Number of layers, held fixed as in the paper (16), or depths whose "
                               "shapes compete in one ranking (8,12,16,24 or 8-12); a law that cannot see depth "
                               "ranks several only with --extrapolate."),
    head_dim: int = typer.Option(64, "--head-dim", min=2, help="Per-head width d_head, even (the paper: 64 up to 1B, 128 from 3B)."),
    match: Optional[str] = typer.Option(None, "--match", help="Target = predicted loss of this architecture (preset or config.json)."),
    target_loss: Optional[float] = typer.Option(None, "--target-loss", help="Target loss in nats/token (needs a fit with a reference law)."),
    slack: Optional[float] = typer.Option(None, "--slack", help="Target = predicted optimum x (1 + slack), the optimum being the lowest predicted loss of any candidate inside the fit's runs, or of all with --extrapolate (the 'best discrete candidate' line when it is inside; not the law's closed-form optimum); the default, 0.01."),
    reference: Optional[Path] = typer.Option(None, "--reference", help="Chinchilla fit JSON for L_opt(N,D), giving absolute losses."),
    gpu: str = typer.Option("h100-sxm", "--gpu", help=gpu_help("Device to serve on")),
    engine: str = typer.Option("vllm", "--engine", help="Serving engine whose throughput is estimated: picks the profile."),
    profile: Optional[str] = typer.Option(None, "--profile", help="Throughput profile (path or name; `none` for the "
                                          "uncalibrated roofline). Default: the one matching --engine, --gpu and bf16."),
    gpu_file: Optional[Path] = typer.Option(None, "--gpu-file", help="Extra GPUs (JSON or CSV with the GPU table's fields)."),
    tp: int = typer.Option(1, "--tp", min=1, help="Tensor-parallel degree; it must divide the KV heads."),
    batch: int = typer.Option(64, "--batch", min=1, help="Concurrent requests in the serving workload; with --tpot-ms/--ttft-ms, the most a shape may run."),
    input_len: int = typer.Option(4096, "--input-len", min=1, help="Prompt tokens per request."),
    output_len: int = typer.Option(1024, "--output-len", min=1, help="Generated tokens per request."),
    tpot_ms: Optional[float] = TPOT_MS,
    ttft_ms: Optional[float] = TTFT_MS,
    percentile: Optional[str] = PERCENTILE,
    gpu_price: Optional[float] = GPU_PRICE,
    tolerance: Optional[float] = typer.Option(None, "--tolerance", help="Keep shapes within this fraction of N. Default 0.05, or 0.02 when the fit has no reference law (then a smaller N is not penalised, so the budget is held tighter)."),
    r_min: float = typer.Option(0.5, "--r-min", help="Smallest MLP-to-attention ratio (the paper fits 0.5-5)."),
    r_max: float = typer.Option(5.0, "--r-max", help="Largest MLP-to-attention ratio."),
    gqa: str = typer.Option("1-16", "--gqa", help="GQA group sizes to consider, e.g. 4, 1,2,4,8 or 1-16."),
    d_multiple: int = typer.Option(128, "--d-multiple", min=1, help="d_model is a multiple of this (hardware-friendly)."),
    ff_multiple: int = typer.Option(64, "--ff-multiple", min=1, help="d_ff is a multiple of this."),
    vocab: int = typer.Option(128256, "--vocab", min=1, help="Vocabulary size (embedding and LM head)."),
    tie_embeddings: bool = typer.Option(True, "--tie-embeddings/--untie-embeddings", help="Tie input and output embeddings (LLaMA-3.2 1B/3B do)."),
    strict_hf: Optional[bool] = typer.Option(None, "--strict-hf/--no-strict-hf", help="Only shapes with d_model % n_heads == 0, which transformers (and so vLLM) load. Default: on with --emit, so that every emitted config loads; off otherwise."),
    confidence: Optional[float] = typer.Option(None, "--confidence", help="Keep only candidates that meet the target under this share of the fit's bootstrap refits, e.g. 0.9 (fit with --bootstrap)."),
    runs: Optional[Path] = typer.Option(None, "--runs", help="Runs table: a measured loss for a candidate's exact shape at this D replaces the prediction."),
    store: Optional[Path] = typer.Option(None, "--store", help="Bench results store (archscale bench --store): a measured throughput for a candidate, GPU and workload replaces the estimate."),
    extrapolate: bool = typer.Option(False, "--extrapolate", help="Rank candidates outside the shapes the fit's runs had (its coverage: x, r, GQA, and depth for aspect laws) too, each labelled with what is out. Without it they are counted, not ranked."),
    tie: Optional[float] = typer.Option(None, "--tie", help="Throughputs within this fraction of the fastest tie (then lower predicted loss first). Default: the profile's held-out speedup error."),
    top_k: int = typer.Option(3, "--top-k", min=1, help="How many shapes to select for training."),
    measure: Optional[int] = typer.Option(None, "--measure", min=1, help="Measure the top K picks on this machine with --engine (torch, or vllm where it runs), re-rank them on the measurements and say how the order and spread changed; in a dense and MoE search, the top K of each family, and the measurements decide the family."),
    enforce_eager: bool = typer.Option(False, "--enforce-eager", help="With --measure --engine vllm: run vLLM without compiling (starts in seconds on CPU; the measurement then excludes CUDA graphs/compilation)."),
    emit: Optional[Path] = typer.Option(None, "--emit", help="Write a trainable config directory per top-k candidate here."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write the Pareto-frontier and throughput-vs-batch PNG."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the search result as JSON."),
    experts: Optional[str] = typer.Option(None, "--experts", help=f"With a law that predicts dense and MoE runs (moe-joint): the routed experts E tried, e.g. 8,16,32 (default {','.join(map(str, EXPERTS_DEFAULT))})."),
    experts_per_token: Optional[str] = typer.Option(None, "--experts-per-token", help=f"With moe-joint: the experts k each token uses, e.g. 1,2 (default {','.join(map(str, TOP_K_DEFAULT))})."),
    granularity: Optional[str] = typer.Option(None, "--granularity", help=f"With moe-joint: G = 4 d_model / expert width, e.g. 1,2 or 4/3 (default {','.join(map(str, GRANULARITY_DEFAULT))})."),
    as_json: bool = typer.Option(False, "--json", help="Print the result JSON instead of tables."),
) -> None:
    """Find the shapes with the highest estimated throughput whose predicted loss meets a target.

    With a law that predicts dense and MoE runs alike (moe-joint), dense and Mixture-of-Experts shapes at one
    active budget (--n) compete, and the output says which family won and by how much."""
    measured_into = store if measure is not None else None  # --measure appends to --store: an output then
    check_outputs(("--out", out, "json"), ("--plot", plot, "png"), ("--emit", emit, "configs"),
                  ("--store", measured_into, STORE),
                  inputs=(fit, reference, match, gpu_file, runs, None if measured_into else store))
    n, tokens = parse_count(n_text, "--n"), parse_count(tokens_text, "--tokens")
    if tie is not None and not 0 <= tie < 1:
        raise UserError(f"--tie must be a fraction in [0, 1) of the fastest throughput, e.g. 0.05, got {tie}")
    require_even_head_dim(head_dim, "--head-dim")
    check_sweep_ranges(tolerance, r_min, r_max)
    fitted = load_fit(fit)
    expert_flags = {"--experts": experts, "--experts-per-token": experts_per_token, "--granularity": granularity}
    if is_family_law(fitted):
        refused = {"--confidence": confidence, "--reference": reference}
        for flag, value in refused.items():
            if value is not None:
                raise UserError(f"{flag} is not available in a dense and MoE search ({fit} is law "
                                f"{fitted.law.name}); run it without {flag}")
    else:
        for flag, value in expert_flags.items():
            if value is not None:
                raise UserError(f"{flag} needs a law that predicts MoE runs (moe-joint, e.g. "
                                f"data/fits/ludziejewski2025_joint.json); {fit} is law {fitted.law.name}, dense only")
    if reference is not None:
        fitted.reference = load_fit(reference)
        check_reference(fitted.law, fitted.reference)
    device = load_gpu(gpu, gpu_file)
    limits = latency_limits(tpot_ms, ttft_ms, percentile)
    spec = SearchSpec(n=n, tokens=tokens, n_layers=parse_int_list(layers, "--layers"), d_head=head_dim, gpu=device, limits=limits,
                      usd_per_gpu_hour=resolve_price(gpu_price, device),
                      profile=resolve_profile(profile, device, engine),
                      workload=Workload(batch, input_len, output_len), tp=tp, tolerance=tolerance, r_range=(r_min, r_max),
                      gqa_values=parse_int_list(gqa, "--gqa"), vocab_size=vocab, tie_embeddings=tie_embeddings,
                      strict_hf=emit is not None if strict_hf is None else strict_hf,
                      strict_hf_reason=EMIT_STRICT_HF if strict_hf is None else "--strict-hf", d_multiple=d_multiple,
                      ff_multiple=ff_multiple, extrapolate=extrapolate, tie_tolerance=tie)
    if is_family_law(fitted):
        grid = ExpertGrid(parse_int_list(experts, "--experts") or EXPERTS_DEFAULT,
                          parse_int_list(experts_per_token, "--experts-per-token") or TOP_K_DEFAULT,
                          parse_granularity(granularity) or GRANULARITY_DEFAULT)
        if measure is not None and engine == "torch":
            raise UserError("--measure with --engine torch: the bundled torch backend does not measure Mixture-of-Experts "
                            "shapes; measure a dense and MoE search with --engine vllm --strict-hf")
        measuring = _measuring(spec, engine, enforce_eager) if measure is not None else None
        measured_inputs = (load_runs(runs) if runs else None, _bench_table(store, measure))
        _family_search(fitted, spec, grid, target_loss, load_architecture(match) if match else None, slack, top_k,
                       out, plot, emit, as_json, measured_inputs, (measure, *measuring) if measuring else None, store)
        return
    measuring = _measuring(spec, engine, enforce_eager) if measure is not None else None
    matched = load_architecture(match) if match else None
    run_table = load_runs(runs) if runs else None
    bench_table = _bench_table(store, measure)
    result = search(fitted, spec, target_loss, matched, slack, top_k, run_table, bench_table, confidence=confidence)
    document = result_document(result, spec)
    measured = None
    if measuring is not None:
        from archscale.search.measure import measure_picks

        measured = measure_picks(result, measuring[0], measure, store=store, backend=measuring[1])
        document["measured"] = measured.to_json()
    with written_together(("--plot", plot), ("--emit", emit), ("--out", out)):
        if plot:
            from archscale.search.plots import plot_search

            plot_search(result, spec, plot)
        if emit:
            document["emitted"] = [str(p) for p in emit_configs(result, spec, emit)]
        if out:
            write_json(out, document)
    if as_json:
        print_json(document)
        return
    _print(result, spec)
    if measured is not None:
        _print_measured(measured)
    for label, path in (("configs", emit), ("plot", plot), ("result", out)):
        if path:
            console.print(f"wrote {label}: {path}")
    if result.gqa is not None and held_bounds(result.gqa):
        console.print(f"next: GQA is held at {result.gqa.held_at:g} for want of a checked GQA term; settle it by training: "
                      f"archscale search-gqa {out or 'SEARCH.json (this search with --out)'} --proxy-n COUNT "
                      "--proxy-tokens COUNT --seeds 3 --runs RUNS.csv --out DIR")



def _bench_table(store: Path | None, measure: int | None) -> pd.DataFrame | None:
    """The measured rows of ``--store``; a store that does not exist yet is one ``--measure`` will start (nothing
    measured in it so far), else a missing file is refused as any input is."""
    if store is None or (measure is not None and not Path(store).exists()):
        return None
    rows = load_results(store)
    measured = load_results(store, measured_only=True)
    if rows.empty:
        raise UserError(f"--store {store}: the store is empty (no records), so it has nothing to replace an estimate "
                        "with; measure into it with `archscale bench --backend torch|vllm --store`, or leave out --store")
    if measured.empty:
        backends = ", ".join(sorted(set(rows["backend"].dropna().astype(str)))) or "none recorded"
        raise UserError(f"--store {store}: none of its {len(rows)} rows is a successful torch or vLLM measurement "
                        f"(backends: {backends}), so it has nothing to replace an estimate with; measure with "
                        "`archscale bench --backend torch|vllm --store`, or leave out --store")
    return measured


def _measuring(spec: SearchSpec, engine: str, enforce_eager: bool) -> tuple[Any, Any]:
    """``--measure``'s options and backend, checked before the search: a backend that cannot run here is one line,
    up front."""
    from archscale.bench.sweep import make_backend
    from archscale.search.measure import measure_options

    if spec.limits is not None:
        raise UserError("--measure with a latency limit (--tpot-ms/--ttft-ms): it measures every pick at one batch "
                        f"(--batch {spec.workload.batch_size}), while under the limit each runs at its own operating "
                        "batch; measure without the limit, or bench each pick at the operating_batch --out records")
    options = measure_options(spec, engine, enforce_eager=enforce_eager)
    return options, make_backend(options)


def _family_search(fitted: Any, spec: SearchSpec, grid: ExpertGrid, target_loss: float | None, match: Any,
                   slack: float | None, top_k: int, out: Path | None, plot: Path | None, emit: Path | None,
                   as_json: bool, measured_inputs: tuple[Any, Any] = (None, None),
                   measuring: tuple[int, Any, Any] | None = None, store: Path | None = None) -> None:
    """The dense-and-MoE search, with the measured losses and throughputs of ``measured_inputs`` (the runs and bench
    tables); with ``measuring`` (count, options, backend), the first ``count`` picks of each family measured (into
    ``store`` where given) and the family decided on the measurements."""
    runs, bench = measured_inputs
    result = search_families(fitted, spec, grid, target_loss, match, slack, top_k, runs, bench)
    document = family_document(result, spec, fitted, grid)
    measured = None
    if measuring is not None:
        from archscale.search.measure import measure_families

        count, options, backend = measuring
        measured = measure_families(result, options, count, store=store, backend=backend)
        document["measured"] = measured.to_json()
    with written_together(("--plot", plot), ("--emit", emit), ("--out", out)):
        if plot:
            from archscale.search.plots import plot_families

            plot_families(result, spec, plot)
        if emit:
            from archscale.search.emit import emit_rows

            picks = result.picks.to_dict("records")
            document["emitted"] = [str(p) for p in emit_rows(picks, spec, result.target, result.target_source, emit)]
        if out:
            write_json(out, document)
    if as_json:
        print_json(document)
        return
    _print_families(result, spec, fitted)
    if measured is not None:
        _print_measured_families(measured)
    for label, path in (("configs", emit), ("plot", plot), ("result", out)):
        if path:
            console.print(f"wrote {label}: {path}")


def _print_measured_families(measured: Any) -> None:
    table = Table(title=f"the picks of each family measured ({measured.backend})")
    for column in ("family", "estimated rank", "d_model", "heads/kv", "FFN / expert", "E", "k", "estimated out tok/s",
                   "measured out tok/s", "repeats' spread"):
        table.add_column(column, justify="right")
    for row in measured.table.to_dict("records"):
        moe = row["family"] == "MoE"
        spread = "-" if pd.isna(row["relative_spread"]) else f"{100 * row['relative_spread']:.1f}%"
        table.add_row(row["family"], str(row["rank"]), str(row["d_model"]), f"{row['n_heads']}/{row['n_kv_heads']}",
                      str(row["d_ff"]), str(row["n_experts"]) if moe else "-", str(row["experts_per_token"]) if moe else "-",
                      f"{row['estimated_output_tokens_per_s']:,.0f}", f"{row['measured_output_tokens_per_s']:,.0f}", spread)
    console.print(table)
    for line in measured.summary():
        console.print(f"measured: {line}")


def _print_families(result: FamilyResult, spec: SearchSpec, fitted: Any) -> None:
    """The picks of each family, the verdict, and the sources of every number."""
    console.print(f"target loss {result.target:.4f} from {result.target_source}; loss: law {fitted.law.name} "
                  f"({fitted.source})")
    console.print(f"throughput: {spec.throughput_model.describe()}")
    table = Table(title=f"fastest of each family at {format_count(spec.n)} active ({_serving_label(spec)})")
    dollars = spec.usd_per_gpu_hour is not None
    limits = spec.limits
    served = ["batch", f"TPOT {limits.statistic_label} ms", f"TTFT {limits.statistic_label} ms"] if limits is not None else []
    columns = ["family", "rank", "d_model", "heads/kv", "FFN / expert", "E", "k", "N active", "N total", "r", "loss",
               *served, "out tok/s", "memory GB"] + (["$/M out"] if dollars else []) + ["extrapolation"]
    for column in columns:
        table.add_column(column, justify="right")
    for row in result.picks.to_dict("records"):
        moe = row["family"] == "MoE"
        table.add_row(row["family"], str(row["rank"]), str(row["d_model"]), f"{row['n_heads']}/{row['n_kv_heads']}",
                      str(row["d_ff"]), str(row["n_experts"]) if moe else "-", str(row["experts_per_token"]) if moe else "-",
                      format_count(row["N_active"]), format_count(row["N"]), f"{row['r']:.2f}",
                      f"{row['predicted_loss']:.4f}" + (" (measured)" if row.get("loss_source") == "measured" else ""),
                      *_served_cells(row, limits),
                      f"{row['output_tokens_per_s']:,.0f}" + (" (measured)" if row.get("throughput_source") == "measured" else ""),
                      f"{row['memory_gb']:.1f}",
                      *([format_usd(float(row["usd_per_m_output"]))] if dollars else []), row["extrapolation_brief"] or "-")
    console.print(table)
    if result.winner is not None:
        console.print(f"verdict: {result.winner['verdict']}")
    for note in result.notes:
        console.print(f"note: {note}")


@app.command("search-gqa", cls=Command, epilog=examples(
    "archscale search --fit experiments/results/cpu_mini_study/cond.json --n 2e5 --tokens 1.5e6 --layers 4 --head-dim 16 "
    "--vocab 256 --d-multiple 16 --ff-multiple 16 --gqa 1-8 --extrapolate --batch 8 --input-len 64 --output-len 16 "
    "--slack 0.02 --out out/search-tiny.json",
    "archscale search-gqa out/search-tiny.json --proxy-n 2e4 --proxy-tokens 60K --proxy-layers 2 --proxy-head-dim 8 "
    "--runs out/gqa-runs.csv --out out/gqa-search-20k",
))
def search_gqa_command(
    search_json: Path = typer.Argument(..., help="A search result (archscale search --out FILE.json)."),
    pick: int = typer.Option(1, "--pick", min=1, help="Which of its picks (rank) to settle."),
    baseline: Optional[int] = typer.Option(None, "--baseline-gqa", min=1, help="The GQA group the walk starts from and compares to. Default: the group the search held GQA at (when its law may not rank GQA), else the largest group the fit's runs had that the shape offers (the dissertation's runs: 4), else 4."),
    tolerance: float = typer.Option(0.01, "--tolerance", help="A variant whose mean proxy loss exceeds the baseline's by more than this fraction stops the walk."),
    proxy_n: str = typer.Option(..., "--proxy-n", metavar=COUNT, help="Non-embedding parameters of the trained proxies, e.g. 2e5."),
    proxy_tokens: str = typer.Option(..., "--proxy-tokens", metavar=COUNT, help="Training tokens per proxy run, e.g. 1.5M."),
    proxy_layers: int = typer.Option(4, "--proxy-layers", min=1, help="Layers of the proxies."),
    proxy_head_dim: int = typer.Option(16, "--proxy-head-dim", min=2, help="d_head of the proxies (even)."),
    proxy_vocab: int = typer.Option(256, "--proxy-vocab", min=1, help="Vocabulary of the proxies (the embedded corpus is bytes: 256)."),
    seeds: int = typer.Option(1, "--seeds", min=1, help="Runs per variant (seeds 0..K-1); the walk compares their means."),
    data: Optional[Path] = typer.Option(None, "--data", help="Prepared data directory (default: the embedded corpus)."),
    runs: Path = typer.Option(..., "--runs", help="CSV runs table the proxies append to; variants already in it are not retrained."),
    out: Path = typer.Option(..., "--out", help="Folder for the variants' configs, runs, decisions.json and gqa_search.json."),
    executor: str = study.executor_option("inline", "(default inline)"),
    jobs_dir: Optional[Path] = study.JOBS_DIR,
    partition: Optional[str] = study.PARTITION,
    job_gpus: Optional[int] = study.JOB_GPUS,
    job_cpus: Optional[int] = study.JOB_CPUS,
    job_mem: Optional[float] = study.JOB_MEM,
    job_time: Optional[str] = study.JOB_TIME,
    max_parallel: Optional[int] = study.MAX_PARALLEL,
    as_json: bool = typer.Option(False, "--json", help="Print the result JSON instead of lines."),
) -> None:
    """Settle a pick's GQA by training: its variants, fastest-estimated last, each trained at a proxy budget until
    one costs more loss than --tolerance over the baseline; the last one within it is confirmed. Resumable."""
    from archscale.fit.runs import RUNS_TABLE
    from archscale.search.gqa_local import Proxy, local_gqa_search
    from archscale.train.sweep import default_jobs_dir

    check_outputs(("--out", out, "dir"), ("--runs", runs, RUNS_TABLE), inputs=(search_json, data))
    require_even_head_dim(proxy_head_dim, "--proxy-head-dim")
    proxy = Proxy(n=parse_count(proxy_n, "--proxy-n"), tokens=int(parse_count(proxy_tokens, "--proxy-tokens")),
                  n_layers=proxy_layers, d_head=proxy_head_dim, vocab_size=proxy_vocab, seeds=seeds)
    options = study.dispatch_options(executor, jobs_dir, default_jobs_dir(runs), partition, job_gpus, job_cpus, job_mem,
                                     job_time, max_parallel, True).checked()
    echo = (lambda line: None) if as_json else console.print
    result = local_gqa_search(search_json, out, runs, proxy, rank=pick, baseline=baseline, tolerance=tolerance,
                              data=data, dispatch=options, echo=echo)
    if as_json:
        print_json(result.to_json())
        return
    chosen = result.confirmed
    console.print(f"confirmed: GQA {chosen.gqa} ({chosen.full.n_heads}/{chosen.full.n_kv_heads} heads at full scale), "
                  f"proxy loss {chosen.loss:.4f} against the baseline's {result.baseline.loss:.4f}; estimated "
                  f"{chosen.tokens_per_s / result.baseline.tokens_per_s:.2f}x the baseline GQA {result.baseline.gqa}'s throughput")
    for note in result.notes:
        console.print(f"note: {note}")
    if seeds == 1:
        console.print("note: one seed per variant: a loss difference smaller than the seed-to-seed scatter, which one "
                      "seed cannot measure, decides the walk all the same; --seeds 3 compares means and shows the scatter")
    console.print(f"wrote {out / 'gqa_search.json'}, {out / 'decisions.json'} and the confirmed shape's trainable "
                  f"config {out / 'confirmed'} (archscale train {out / 'confirmed'} --runs RUNS.csv)")
