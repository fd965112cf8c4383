"""``archscale arch`` (inspect shapes) and ``archscale candidates`` (enumerate shapes for a budget)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pandas as pd
import typer
from rich.table import Table

from archscale.shapes.architecture import PRESET_SOURCES, PRESETS, Architecture, require_even_head_dim
from archscale.shapes.candidates import generate_candidates
from archscale.shapes.moe_candidates import (DENSE_FF_PER_D_MODEL, EXPERTS_DEFAULT, GRANULARITY_DEFAULT, TOP_K_DEFAULT,
                                             generate_moe_candidates)
from archscale.cli import Command, app, console, examples, print_json
from archscale.cli.options import COUNT, check_sweep_ranges, given_on_command_line, gpu_help, parse_granularity, parse_int_list
from archscale.io.units import parse_count
from archscale.serving.devices import load_gpu
from archscale.serving.profiles import resolve_profile
from archscale.serving.estimate import Workload, check_tensor_parallel, require_serving_costed, why_nothing_runs
from archscale.io.errors import UserError
from archscale.io.files import atomic_file
from archscale.io.outputs import check_outputs
from archscale.shapes.hf_config import load_architecture

def human(value: float, unit: str = "") -> str:
    """973_140_480 -> '973.1M' (tables are read by people; --json keeps exact values)."""
    for scale, suffix in ((1e12, "T"), (1e9, "G" if unit else "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.4g}{suffix}{unit}"
    return f"{value:.4g}{unit}"


def architecture_summary(arch: Architecture, context: int, source: str = "") -> dict:
    """Everything ``arch`` reports about one shape, as plain numbers (the --json payload).

    ``N_total`` counts every expert, ``N_active`` what one token uses (equal for a dense shape); FLOPs per token
    are active. ``r_mlp_attn`` and ``d_over_sqrt_N`` describe dense shapes (the laws' coordinates) and are null
    for a Mixture of Experts. With a sliding window, ``kv_bytes_at_context_bf16`` is one sequence's cache at
    ``context`` (the window's layers hold at most the window)."""
    moe = arch.is_moe
    summary = {
        "name": arch.name,
        "source": source,
        **arch.shape_columns(),
        "N_non_embed": arch.n_params_non_embedding,
        "N_embed": arch.n_params_embedding,
        "N_total": arch.n_params_total,
        "N_active_non_embed": arch.n_params_active_non_embedding,
        "N_active": arch.n_params_active,
        "r_mlp_attn": None if moe else arch.r_mlp_attn,
        "gqa": arch.gqa_group,
        "d_over_sqrt_N": None if moe else arch.d_over_sqrt_n,
        "aspect_ratio": arch.aspect_ratio,
        "context": context,
        "flops_per_token": arch.flops_per_token(context),
        "kv_bytes_per_token_bf16": arch.kv_cache_bytes_per_token(2),
    }
    if arch.n_sliding_layers:
        summary["kv_bytes_at_context_bf16"] = arch.kv_cache_bytes(context, 2)
    return summary


def _shape_line(summary: dict) -> str:
    """The shape in one line: the dense block, then experts, latent attention and a window when present."""
    moe = summary.get("n_experts", 0) > 1
    dense_ff = (f", d_ff {summary['d_ff']}" if not moe else
                f", {summary['first_dense_layers']} dense layer(s) first (d_ff {summary['d_ff']})"
                if summary["first_dense_layers"] else "")
    line = (f"{summary['n_layers']} layers, d_model {summary['d_model']}, heads {summary['n_heads']}/"
            f"{summary['n_kv_heads']} kv x {summary['d_head']}{dense_ff}, vocab {summary['vocab']}"
            + (" (tied)" if summary["tie_embeddings"] else ""))
    if moe:
        line += (f"; MoE {summary['n_experts']} experts, top-{summary['experts_per_token']}, "
                 f"expert d_ff {summary['expert_d_ff']}")
        if summary["n_shared_experts"]:
            line += (f", {summary['n_shared_experts']} shared x {summary['shared_expert_d_ff']}"
                     + (" (gated)" if summary["shared_expert_gate"] else ""))
    if summary.get("kv_lora_rank"):
        line += (f"; latent attention: kv rank {summary['kv_lora_rank']} + rope {summary['qk_rope_head_dim']} "
                 f"cached, q rank {summary['q_lora_rank'] or 'full'}, v {summary['v_head_dim']}")
    if summary.get("n_sliding_layers"):
        line += f"; sliding window {summary['sliding_window']} on {summary['n_sliding_layers']} layers"
    return line


def _architecture_table(summary: dict) -> Table:
    table = Table(title=f"{summary['name']}  ({summary['source']})", show_header=False)
    table.add_column("quantity")
    table.add_column("value", justify="right")
    moe = summary.get("n_experts", 0) > 1
    dense_only = "n/a (a dense-shape descriptor)"
    kv = summary["kv_bytes_per_token_bf16"]
    rows = [
        ("shape", _shape_line(summary)),
        ("N non-embedding" + (" (every expert)" if moe else ""),
         f"{human(summary['N_non_embed'])}  ({summary['N_non_embed']:,})"),
        ("N embedding", f"{human(summary['N_embed'])}  ({summary['N_embed']:,})"),
        ("N total", f"{human(summary['N_total'])}  ({summary['N_total']:,})"),
    ]
    if moe:
        rows.append(("N active per token (non-embedding)",
                     f"{human(summary['N_active'])}  ({human(summary['N_active_non_embed'])})"))
    rows += [
        ("r = MLP / attention", dense_only if moe else f"{summary['r_mlp_attn']:.3f}"),
        ("GQA (query heads per KV head)", str(summary["gqa"])),
        ("d_model / sqrt(N)", dense_only if moe else f"{summary['d_over_sqrt_N']:.4f}"),
        ("aspect ratio d_model / n_layers", f"{summary['aspect_ratio']:.1f}"),
        (f"FLOPs / token at context {summary['context']}" + (" (active)" if moe else ""),
         human(summary["flops_per_token"], "FLOP")),
        ("KV cache / token (bf16)" + (" (latent + rope key)" if summary.get("kv_lora_rank") else "")
         + (", full-attention layers" if summary.get("n_sliding_layers") else ""),
         f"{kv:,} B ({kv / 1024:.1f} KiB)"),
    ]
    if "kv_bytes_at_context_bf16" in summary:
        at = summary["kv_bytes_at_context_bf16"]
        rows.append((f"KV cache / sequence at context {summary['context']} (window layers hold "
                     f"<= {summary['sliding_window']} tokens)", f"{at:,} B ({at / 2**20:.1f} MiB)"))
    estimate = summary.get("throughput")
    if estimate and estimate.get("no_request_fits"):  # 0 tok/s and "waves of 0" would read as a measurement
        rows.append((f"estimate on {estimate['gpu']} x{estimate['tp']}: batch {estimate['batch_size']}, "
                     f"{estimate['input_len']} in / {estimate['output_len']} out ({estimate['source']})",
                     f"serves no request: {estimate['no_request_fits']}"))
    elif estimate:
        rows += [
            (f"estimate on {estimate['gpu']} x{estimate['tp']}: batch {estimate['batch_size']}, "
             f"{estimate['input_len']} in / {estimate['output_len']} out ({estimate['source']})",
             f"{estimate['output_tokens_per_s']:,.0f} output tok/s, {estimate['total_tokens_per_s']:,.0f} total tok/s"),
            ("  memory for the whole batch / used / concurrency",
             f"{estimate['memory_gb']:.1f} GB / {estimate['memory_used_gb']:.1f} GB / {estimate['concurrency']}"
             + (f" (the KV cache cannot hold the whole batch: it runs in waves of {estimate['concurrency']})"
                if not estimate["fits"] else f" (waves of {estimate['concurrency']}, the engine's max_num_seqs)"
                if estimate["concurrency"] < estimate["batch_size"] else "")),
            ("  prefill / decode / decode bound",
             f"{estimate['prefill_s']:.2f} s / {estimate['decode_s']:.2f} s / {estimate['bound']}"),
        ]
    for label, value in rows:
        table.add_row(label, value)
    return table


@app.command("arch", cls=Command, epilog=examples(
    "archscale arch llama-3.2-1b surefire-1b --context 4096",
    "archscale arch qwen3-4b --gpu h200 --batch 64",
    "archscale arch llama-3.2-1b --json",
) + "\n\nPresets: " + ", ".join(PRESETS) + ". A config.json path, or a folder holding one, works too.")
def arch_command(
    ctx: typer.Context,
    specs: list[str] = typer.Argument(..., help="Preset names (case-insensitive), config.json files or directories holding one."),
    context: int = typer.Option(4096, "--context", min=0, help="KV length T for FLOPs/token (Appendix C.2: 2N + 2 L T d_q)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of dicts instead of tables."),
    gpu: Optional[str] = typer.Option(None, "--gpu", help=gpu_help("Also estimate serving throughput on this device")),
    gpu_file: Optional[Path] = typer.Option(None, "--gpu-file", help="JSON/CSV of extra GPUs (name, bf16_tflops, hbm_tb_s, memory_gb, interconnect_gb_s)."),
    batch: int = typer.Option(64, "--batch", min=1, help="Estimate: concurrent requests."),
    input_len: int = typer.Option(4096, "--input-len", min=1, help="Estimate: prompt tokens per request."),
    output_len: int = typer.Option(1024, "--output-len", min=1, help="Estimate: generated tokens per request."),
    tp: int = typer.Option(1, "--tp", min=1, help="Estimate: tensor-parallel degree (must split the query and KV heads)."),
    engine: str = typer.Option("vllm", "--engine", help="Estimate: serving engine whose profile to use."),
    profile: Optional[str] = typer.Option(None, "--profile", help="Estimate: throughput profile (path or name; `none` "
                                          "for the uncalibrated roofline). Default: the one matching --engine and --gpu."),
) -> None:
    """Show parameter counts, r, GQA, d/sqrt(N), FLOPs/token and KV bytes/token of architectures."""
    estimate_only = given_on_command_line(ctx, "profile", "batch", "input_len", "output_len", "engine")  # --tp alone checks the heads split
    if estimate_only and not gpu:
        raise UserError(f"{estimate_only[0]} needs --gpu: it sets the serving estimate, which runs on a device "
                        "(add --gpu h200, or leave it out)")
    device = load_gpu(gpu, gpu_file) if gpu else None
    chosen = resolve_profile(profile, device, engine) if device else None
    workload = Workload(batch, input_len, output_len) if device else None
    architectures = [load_architecture(spec) for spec in specs]
    for arch, spec in zip(architectures, specs):
        check_tensor_parallel(arch.n_heads, arch.n_kv_heads, tp, arch.name or spec)
        if chosen:
            require_serving_costed(arch.shape_columns(), f"{arch.name or spec} --gpu")
    summaries = []
    for arch, spec in zip(architectures, specs):
        source = PRESET_SOURCES[arch.name] if PRESETS.get(arch.name) is arch else spec
        summary = architecture_summary(arch, context, source)
        if chosen:
            row = chosen.estimate(pd.DataFrame([arch.shape_columns()]), workload, tp).iloc[0]
            summary["throughput"] = {"gpu": chosen.device.name, "tp": tp, "batch_size": batch, "input_len": input_len,
                                     "output_len": output_len, "source": chosen.label, "profile": chosen.name,
                                     "total_tokens_per_s": float(row["tokens_per_s"]),
                                     **{k: row[k] for k in ("output_tokens_per_s", "prefill_s", "decode_s", "memory_gb",
                                                            "memory_used_gb", "fits", "bound", "concurrency")},
                                     "no_request_fits": None if row["concurrency"] >= 1 else why_nothing_runs(
                                         float(row["memory_used_gb"]), chosen.device, tp, chosen.settings, workload)}
        summaries.append(summary)
    if as_json:
        print_json(summaries)
        return
    for summary in summaries:
        console.print(_architecture_table(summary))


def _write_table(frame: pd.DataFrame, out: Path) -> None:
    """CSV or Parquet by extension (a failure to write is reported by the CLI, naming the file)."""
    suffix = out.suffix.lower()
    with atomic_file(out, "w" if suffix == ".csv" else "wb") as handle:
        if suffix == ".csv":
            frame.to_csv(handle, index=False)
        else:
            frame.to_parquet(handle, index=False)


def candidates_summary(frame: pd.DataFrame) -> dict:
    """Count and per-column ranges of a candidate table (what the command prints); an MoE table adds its active
    count and routing columns, and the E, k and G values present."""
    moe = "N_active" in frame
    columns = ("d_model", "n_heads", "n_kv_heads", "d_ff", "N") + (("N_active",) if moe else ()) + ("r", "x", "gqa")
    ranges = {column: [frame[column].min().item(), frame[column].max().item()] for column in columns}
    summary = {"count": int(len(frame)), "ranges": ranges, "gqa_values": sorted(int(g) for g in frame["gqa"].unique())}
    if moe:
        summary |= {f"{column}_values": sorted(int(v) for v in frame[column].unique())
                    for column in ("n_experts", "experts_per_token", "G")}
    return summary


def _listed(values) -> str:
    """A default grid as --help shows it (``4,8,16``), written from the library's own defaults."""
    return ",".join(map(str, values))


@app.command("candidates", cls=Command, epilog=examples(
    "archscale candidates --n 1e9 --layers 16 --head-dim 64 --gqa 4,8 --out out/cands.csv",
    "archscale candidates --n-active 1e9 --n-total 7e9 --experts 16,32,64 --top-k 1,2,4 --granularity 1,2,4 "
    "--layers 16 --head-dim 128 --out out/moe.csv",
))
def candidates_command(
    n: Optional[str] = typer.Option(None, "--n", metavar=COUNT, help="Non-embedding parameter budget of a dense shape, e.g. 1e9 or 975M."),
    layers: int = typer.Option(..., "--layers", min=1, help="Number of layers (held fixed)."),
    head_dim: int = typer.Option(..., "--head-dim", min=2, help="Per-head width d_head (held fixed; even)."),
    n_active: Optional[str] = typer.Option(None, "--n-active", metavar=COUNT, help="Mixture of Experts: budget for the non-embedding parameters one token uses (k experts), e.g. 1e9."),
    n_total: Optional[str] = typer.Option(None, "--n-total", metavar=COUNT, help="Mixture of Experts: budget for every non-embedding parameter (all experts), e.g. 7e9; with --n-active, rows meet both."),
    experts: Optional[str] = typer.Option(None, "--experts", help=f"Mixture of Experts: routed experts E per layer, e.g. 8,16 (default {_listed(EXPERTS_DEFAULT)})."),
    top_k: Optional[str] = typer.Option(None, "--top-k", help=f"Mixture of Experts: experts k each token uses, k <= E, e.g. 1,2 (default {_listed(TOP_K_DEFAULT)})."),
    granularity: Optional[str] = typer.Option(None, "--granularity", help=f"Mixture of Experts: G = {DENSE_FF_PER_D_MODEL} d_model / expert width (Krajewski et al. 2024), e.g. 1,2,4 or 4/3 (default {_listed(GRANULARITY_DEFAULT)})."),
    tolerance: float = typer.Option(0.05, "--tolerance", help="Keep |N/target - 1| <= tolerance (each budget given)."),
    r_min: float = typer.Option(0.5, "--r-min", help="Smallest MLP/attention ratio (MoE: the k active experts' MLP)."),
    r_max: float = typer.Option(5.0, "--r-max", help="Largest MLP/attention ratio."),
    x_min: float = typer.Option(0.02, "--x-min", help="Smallest d_model/sqrt(N) swept (MoE: N active)."),
    x_max: float = typer.Option(0.2, "--x-max", help="Largest d_model/sqrt(N) swept."),
    d_multiple: int = typer.Option(128, "--d-multiple", min=1, help="d_model is a multiple of this."),
    ff_multiple: Optional[int] = typer.Option(None, "--ff-multiple", min=1, help="d_ff is a multiple of this (dense; default 64)."),
    gqa: str = typer.Option("1-16", "--gqa", help="Allowed GQA group sizes, e.g. 4, 1,2,4,8 or 1-64."),
    tp: int = typer.Option(1, "--tp", min=1, help="Tensor-parallel degree; must divide the KV heads."),
    strict_hf: bool = typer.Option(False, "--strict-hf", help="Require d_model % n_heads == 0 (transformers' Llama check)."),
    vocab: int = typer.Option(128256, "--vocab", min=1, help="Vocabulary size written to the table."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the table here (.csv or .parquet)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Enumerate every (d_model, heads, kv heads, d_ff) spending the budget, and summarise them.

    With --n-active and/or --n-total, Mixture-of-Experts shapes instead: every E, k and G of --experts, --top-k and
    --granularity with each head layout whose counts meet the budgets.
    """
    require_even_head_dim(head_dim, "--head-dim")
    check_sweep_ranges(tolerance, r_min, r_max, x_min, x_max)
    moe_flags = [flag for flag, value in (("--n-active", n_active), ("--n-total", n_total), ("--experts", experts),
                                          ("--top-k", top_k), ("--granularity", granularity)) if value is not None]
    groups = parse_int_list(gqa, "--gqa")
    sweep = dict(tolerance=tolerance, r_range=(r_min, r_max), d_multiple=d_multiple, gqa_values=groups, tp=tp,
                 strict_hf=strict_hf, vocab_size=vocab, x_range=(x_min, x_max))
    if moe_flags:
        run = _moe_sweep(n, n_active, n_total, experts, top_k, granularity, ff_multiple, moe_flags, layers, head_dim)
    else:
        if n is None:
            raise UserError("give the budget: --n COUNT for dense shapes, or --n-active/--n-total COUNT for a "
                            "Mixture of Experts")
        budget = parse_count(n, "--n")
        dense = {} if ff_multiple is None else {"ff_multiple": ff_multiple}  # the library's default otherwise
        run = lambda **options: generate_candidates(budget, layers, head_dim, **dense, **options)  # noqa: E731
    check_outputs(("--out", out, "table"))
    frame = run(**sweep)
    if out is not None:
        _write_table(frame, out)
    summary = candidates_summary(frame) | {"out": str(out) if out else None}
    if as_json:
        print_json(summary)
        return
    _print_candidates_summary(summary)


def _moe_sweep(n, n_active, n_total, experts, top_k, granularity, ff_multiple, moe_flags, layers, head_dim):
    """The MoE enumeration the flags ask for, every flag read before any work (a callable taking the shared sweep).

    ``--n`` and ``--ff-multiple`` are refused, not ignored: the budgets are --n-active/--n-total, and an expert's
    width follows from --granularity."""
    if n is not None:
        raise UserError(f"--n is a dense budget; with {moe_flags[0]} give --n-active (what one token uses) and/or "
                        "--n-total (every expert) instead")
    if ff_multiple is not None:
        raise UserError(f"--ff-multiple sets a dense d_ff; with {moe_flags[0]} the expert width is "
                        f"{DENSE_FF_PER_D_MODEL} d_model / --granularity: drop --ff-multiple")
    active = parse_count(n_active, "--n-active") if n_active is not None else None
    total = parse_count(n_total, "--n-total") if n_total is not None else None
    grids = {name: parse_int_list(text, flag) for name, text, flag in (
        ("experts", experts, "--experts"), ("top_k", top_k, "--top-k")) if text is not None}
    if granularity is not None:
        grids["granularity"] = parse_granularity(granularity)
    return lambda **options: generate_moe_candidates(active, total, n_layers=layers, d_head=head_dim,  # noqa: E731
                                                     **grids, **options)


def _print_candidates_summary(summary: dict) -> None:
    table = Table(title=f"{summary['count']:,} candidates" + (f" -> {summary['out']}" if summary["out"] else ""))
    table.add_column("column")
    table.add_column("min", justify="right")
    table.add_column("max", justify="right")
    moe = "N_active" in summary["ranges"]
    for column, (low, high) in summary["ranges"].items():
        fmt = (lambda v: f"{v:.4g}") if isinstance(low, float) else (lambda v: f"{v:,}")
        label = {"N": "N total (every expert)", "N_active": "N active (k experts)", "d_ff": "d_ff (expert)"}.get(
            column, column) if moe else column
        table.add_row(label, fmt(low), fmt(high))
    console.print(table)
    for key, what in (("gqa_values", "GQA groups"), ("n_experts_values", "Experts E"),
                      ("experts_per_token_values", "Top-k"), ("G_values", "Granularity G")):
        if key in summary:
            values = summary[key]
            shown = ", ".join(map(str, values[:20])) + (f", ... ({len(values)} values)" if len(values) > 20 else "")
            console.print(f"{what} present: {shown}")
    if not summary["out"]:
        console.print("(no --out given: table not written)")
