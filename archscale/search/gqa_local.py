"""The dissertation's local GQA search, settled by training (its Algorithm 5), as one resumable command.

A law fitted on runs at one GQA cannot say what a larger group costs in loss, and one fitted on a few GQA
values is noisy at small scale. So this trains: take a pick from ``archscale search --out``, list the GQA
variants of its shape (same d_model, d_ff and attention width n_heads + n_kv_heads, so the same N and r),
order them by estimated throughput at the pick's own scale, and train each at a proxy budget the user sets,
starting from the baseline group. Walking towards faster variants, the first one whose measured loss exceeds
the baseline's by more than ``tolerance`` stops the walk; the fastest variant before it is confirmed and
becomes the pick, with its measured loss.

Each variant is trained through :func:`archscale.train.sweep.sweep` (inline, local jobs or Slurm), appending
to the runs table. Rerunning the same command skips variants already in the runs table (and a killed run
resumes from its checkpoint), so ``kill -9`` loses at most the step in flight. Every decision is written to
``decisions.json`` as it is taken.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from archscale.fit.runs import load_runs
from archscale.io.errors import UserError
from archscale.io.files import read_json, write_json
from archscale.jobs.dispatch import DispatchOptions
from archscale.serving.devices import load_gpu
from archscale.serving.estimate import Workload
from archscale.serving.profiles import resolve_profile
from archscale.shapes.architecture import Architecture
from archscale.shapes.candidates import generate_candidates
from archscale.shapes.hf_config import write_hf_config
from archscale.train.config import CONFIG_FILE, TrainConfig, recipe_hash, write_config_dir
from archscale.train.data import data_fingerprint, default_data_dir, read_meta
from archscale.train.loop import resolve_run
from archscale.train.sweep import sweep

DECISIONS_FILE = "decisions.json"
CONFIRMED_DIR = "confirmed"  # the confirmed shape at full scale, ready for archscale train


@dataclass(frozen=True)
class Proxy:
    """The budget the variants are trained at: a size this machine can train, and its tokens."""

    n: float
    tokens: int
    n_layers: int
    d_head: int
    vocab_size: int = 256
    seeds: int = 1
    d_multiple: int = 16
    ff_multiple: int = 16


@dataclass
class Variant:
    """One GQA group of the pick's shape: at full scale (estimated) and at the proxy (trained)."""

    gqa: int
    full: Architecture
    tokens_per_s: float  # estimated at the pick's scale, device and workload
    proxy: Architecture
    config_dirs: list[Path] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    @property
    def loss(self) -> float:
        return float(np.mean(self.losses)) if self.losses else math.nan


@dataclass
class LocalSearchResult:
    baseline: Variant
    variants: list[Variant]  # baseline first, then faster ones in the order tried
    confirmed: Variant
    decisions: list[dict[str, Any]]
    tolerance: float
    stopped_by: Variant | None  # the variant whose loss ended the walk, None when every faster one passed
    notes: list[str] = field(default_factory=list)  # what weakens the verdict (proxies that barely learned, no gain)

    def to_json(self) -> dict[str, Any]:
        pick = self.confirmed
        return {
            "confirmed": {"gqa": pick.gqa, **pick.full.shape_columns(), "estimated_tokens_per_s": pick.tokens_per_s,
                          "proxy": pick.proxy.shape_columns(), "proxy_loss": pick.loss, "proxy_losses": pick.losses},
            "baseline": {"gqa": self.baseline.gqa, "proxy_loss": self.baseline.loss, "proxy_losses": self.baseline.losses,
                         "estimated_tokens_per_s": self.baseline.tokens_per_s},
            "speedup_vs_baseline": pick.tokens_per_s / self.baseline.tokens_per_s,
            "tolerance": self.tolerance,
            "rule": "variants trained in order of estimated throughput from the baseline up; the first whose mean "
                    "proxy loss exceeds the baseline's by more than the tolerance stops the walk; the last one "
                    "within it is confirmed",
            "decisions": self.decisions,
            "notes": self.notes,
        }


BARELY_LEARNED = 0.9
"""A proxy whose loss is above this share of ln(vocab), the loss of predicting every token alike, has barely
learned: its loss differences reflect its initialisation more than its GQA."""
NO_GAIN = 0.01
"""A confirmed variant estimated less than 1% faster than the baseline buys no throughput for its unchecked GQA."""


def verdict_notes(result: "LocalSearchResult", vocab_size: int) -> list[str]:
    """What weakens the walk's verdict, in words: proxies that barely learned, or a confirmed GQA that is estimated
    to serve no faster than the baseline."""
    notes = []
    uniform = math.log(vocab_size)
    if result.baseline.loss > BARELY_LEARNED * uniform:
        notes.append(f"the proxies barely learned: the baseline's proxy loss {result.baseline.loss:.4f} is close to "
                     f"ln({vocab_size}) = {uniform:.4f}, the loss of predicting every token alike, so their differences "
                     "say little about GQA; give more --proxy-tokens")
    gain = result.confirmed.tokens_per_s / result.baseline.tokens_per_s
    if result.confirmed is not result.baseline and gain < 1 + NO_GAIN:
        notes.append(f"GQA {result.confirmed.gqa} is estimated {gain:.3f}x the baseline's throughput: at this workload "
                     f"it saves nothing, and the baseline GQA {result.baseline.gqa}, the group the law's runs had, "
                     "serves as fast")
    return notes


def read_pick(search_json: Path, rank: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``rank``-th pick of a search result JSON, and the document (for its budget, device and workload)."""
    document = read_json(search_json)
    if not isinstance(document, Mapping) or "top_k" not in document or "budget" not in document:
        raise UserError(f"{search_json}: not a search result (archscale search --out FILE.json writes one)")
    picks = document["top_k"]
    if not 1 <= rank <= len(picks):
        raise UserError(f"--pick {rank}: {search_json} has {len(picks)} pick{'s' if len(picks) != 1 else ''}")
    return picks[rank - 1], document


def default_baseline(groups: Sequence[int], document: Mapping[str, Any]) -> int:
    """Where the walk starts: the group the search held GQA at (its pick's own, when the law may not trade on GQA);
    else the largest group the fit's runs had that the shape offers, the fastest the law vouches for.

    Without either in the search result, the dissertation's GQA 4 when the shape has it, else its smallest group.
    """
    held = (document.get("gqa") or {}).get("held_at")
    if held is not None and round(float(held)) in groups:
        return int(round(float(held)))
    seen = ((document.get("coverage") or {}).get("of_fit") or {}).get("gqa")
    if seen:
        inside = [g for g in groups if g <= seen[1] * 1.02]
        if inside:
            return max(inside)
    return 4 if 4 in groups else min(groups)


def search_profile(document: Mapping[str, Any], device: Any) -> Any:
    """The profile the search estimated with, by the name its result records (``none`` for the uncalibrated roofline)."""
    estimates = document.get("throughput_estimates", {})
    name = str(estimates.get("profile", "")) if estimates.get("calibrated") else "none"
    return resolve_profile(name, device, str(estimates.get("engine", "vllm")))


def pick_depth(pick: Mapping[str, Any], budget: Mapping[str, Any]) -> int:
    """The pick's own depth; a search JSON written before depth could vary has it only in its budget block."""
    if pick.get("n_layers") is not None:
        return int(pick["n_layers"])
    depth = budget.get("n_layers")
    if isinstance(depth, (list, tuple)):
        if len(depth) != 1:
            raise UserError(f"the search searched depths {depth} but its pick records none; rerun the search with "
                            "this version of archscale search --out")
        depth = depth[0]
    return int(depth)


def full_scale_variants(pick: Mapping[str, Any], document: Mapping[str, Any],
                        baseline: int | None) -> list[tuple[int, Architecture, float]]:
    """Every GQA group of the pick's shape (n_heads + n_kv_heads fixed), with its estimated throughput, fastest last.

    Only the baseline and the groups estimated faster than it are returned: a slower variant cannot improve the pick.
    """
    budget, hardware, workload = document["budget"], document["hardware"], document["workload"]
    width = int(pick["n_heads"]) + int(pick["n_kv_heads"])
    depth = pick_depth(pick, budget)
    tp = int(hardware.get("tp", 1))
    shapes = []
    for n_kv in range(1, width):
        n_heads = width - n_kv
        if n_heads % n_kv or n_kv % tp:
            continue
        shapes.append(Architecture(depth, int(pick["d_model"]), n_heads, n_kv, int(budget["d_head"]),
                                   int(pick["d_ff"]), int(budget.get("vocab_size", 128256)),
                                   bool(budget.get("tie_embeddings", True))))
    groups = {arch.gqa_group: arch for arch in shapes}
    if baseline is None:
        baseline = default_baseline(sorted(groups), document)
    if baseline not in groups:
        raise UserError(f"--baseline-gqa {baseline}: the pick's shape ({pick['n_heads']}/{pick['n_kv_heads']} heads) has "
                        f"no such variant; its groups are {', '.join(map(str, sorted(groups)))}")
    device = load_gpu(str(hardware["gpu"]))
    profile = search_profile(document, device)
    frame = pd.DataFrame([{**arch.shape_columns(), "N": arch.n_params_non_embedding} for arch in groups.values()])
    speed = profile.estimate(frame, Workload(int(workload["batch_size"]), int(workload["input_len"]),
                                             int(workload["output_len"])), tp)["tokens_per_s"].to_numpy(float)
    ranked = sorted(zip(groups, groups.values(), speed), key=lambda item: item[2])
    base_speed = dict((g, s) for g, _, s in ranked)[baseline]
    return [item for item in ranked if item[0] == baseline or item[2] > base_speed]


def proxy_variants(pick: Mapping[str, Any], groups: Sequence[int], proxy: Proxy) -> dict[int, Architecture]:
    """At the proxy budget, one shape family (d_model, d_ff, attention width) nearest the pick's x and r that
    has as many of ``groups`` as any family does, the baseline first among them; its variant per group."""
    table = generate_candidates(proxy.n, proxy.n_layers, proxy.d_head, tolerance=0.1, r_range=(0.2, 12.0),
                                gqa_values=sorted(set(groups)), vocab_size=proxy.vocab_size,
                                d_multiple=proxy.d_multiple, ff_multiple=proxy.ff_multiple)
    if table.empty:
        raise UserError(f"--proxy-n {proxy.n:.3g}: no shape with {proxy.n_layers} layers and d_head {proxy.d_head} "
                        "fits that budget; change --proxy-n, --proxy-layers or --proxy-head-dim")
    table = table.assign(width=table["n_heads"] + table["n_kv_heads"])
    family = ["d_model", "d_ff", "width"]
    distance = (np.abs(np.log(table["x"] / float(pick["x"]))) + np.abs(np.log(table["r"] / float(pick["r"]))))
    table = table.assign(distance=distance)
    per_family = table.groupby(family).agg(count=("gqa", "nunique"), distance=("distance", "min"),
                                           has_base=("gqa", lambda g: int(groups[0] in set(g))))
    best = per_family.sort_values(["has_base", "count", "distance"], ascending=[False, False, True]).index[0]
    rows = table[(table[family] == pd.Series(best, index=family)).all(axis=1)]
    if groups[0] not in set(rows["gqa"]):
        raise UserError(f"at --proxy-n {proxy.n:.3g} no shape has the baseline GQA {groups[0]}; change the proxy budget "
                        "or --proxy-head-dim so that the attention width allows it")
    return {int(row.gqa): Architecture(proxy.n_layers, int(row.d_model), int(row.n_heads), int(row.n_kv_heads),
                                       proxy.d_head, int(row.d_ff), proxy.vocab_size, True)
            for row in rows.drop_duplicates("gqa").itertuples()}


def plan_variants(pick: Mapping[str, Any], document: Mapping[str, Any], proxy: Proxy, baseline: int | None) -> list[Variant]:
    """The variants to try, baseline first, each with a shape at full scale and at the proxy."""
    full = full_scale_variants(pick, document, baseline)
    at_proxy = proxy_variants(pick, [g for g, _, _ in full], proxy)
    return [Variant(g, arch, float(speed), at_proxy[g]) for g, arch, speed in full if g in at_proxy]


def write_variant_configs(variants: Sequence[Variant], out: Path, proxy: Proxy) -> None:
    """``out/configs/NN-gqaG/NN-gqaG-sK``: one config folder per variant and seed (a folder per variant for the sweep).

    A folder an earlier run of this command wrote is reused when it holds the same recipe (a resumed walk), and
    refused, before anything is written or trained, when it holds another (other proxy flags, another pick): its
    runs would otherwise be read as this walk's."""
    planned = []
    for index, variant in enumerate(variants):
        folder = out / "configs" / f"{index:02d}-gqa{variant.gqa}"
        for seed in range(proxy.seeds):
            arch = dataclasses.replace(variant.proxy, name=f"{folder.name}-s{seed}")
            train = TrainConfig.for_model_size(arch.n_params_non_embedding, tokens=proxy.tokens)
            train.seed = seed
            target = folder / f"{folder.name}-s{seed}"  # unique run-directory names across variants
            written = (target / CONFIG_FILE).exists()
            if written and resolve_run(target).recipe_hash != recipe_hash(write_hf_config(arch), train):
                raise UserError(f"--out {out}: {target} holds a proxy config from an earlier search-gqa with other "
                                "flags (another proxy size, tokens, depth or pick), whose runs would be read as this "
                                "walk's; give a new --out (or rerun with the earlier flags to resume it)")
            planned.append((variant, target, None if written else (arch, train)))
    for variant in variants:
        variant.config_dirs = [target for owner, target, _ in planned if owner is variant]
    for _, target, new in planned:
        if new is not None:
            write_config_dir(target, *new)


def _losses(runs: Path, config_dirs: Sequence[Path], data_hash: str) -> list[float] | None:
    """The runs table's loss of each config trained on this data, or None when any is missing (not trained yet).
    A row that names no data (written before rows did) counts as this data's."""
    if not runs.exists():
        return None
    frame = load_runs(runs)
    column = "recipe_hash" if "recipe_hash" in frame.columns else "config_hash"
    if column not in frame.columns:
        return None
    if "data_hash" in frame.columns:
        frame = frame[frame["data_hash"].isna() | (frame["data_hash"].astype(str) == data_hash)]
    by_hash = frame.groupby(frame[column].astype(str))["loss"].last()
    hashes = [resolve_run(d).recipe_hash for d in config_dirs]
    if not all(h in by_hash.index for h in hashes):
        return None
    return [float(by_hash[h]) for h in hashes]


def train_variant(variant: Variant, runs: Path, out: Path, data: Path | None, dispatch: DispatchOptions | None,
                  echo: Callable[[str], None]) -> None:
    """Train the variant's seeds not yet in the runs table (a rerun skips them), then read their losses."""
    data_hash = data_fingerprint(read_meta(data if data is not None else default_data_dir()))
    losses = _losses(runs, variant.config_dirs, data_hash)
    if losses is None:
        sweep(variant.config_dirs[0].parent, data, runs, out_root=out / "runs", echo=echo, progress=False,
              dispatch=dispatch)
        losses = _losses(runs, variant.config_dirs, data_hash)
    else:
        echo(f"GQA {variant.gqa}: already in {runs}, not retrained")
    if losses is None:
        raise UserError(f"GQA {variant.gqa}: training did not record every seed in {runs}; see the lines above, fix "
                        "the cause and run the same command again (finished variants are kept)")
    variant.losses = losses


def local_gqa_search(search_json: Path, out: Path, runs: Path, proxy: Proxy, *, rank: int = 1, baseline: int | None = None,
                     tolerance: float = 0.01, data: Path | None = None, dispatch: DispatchOptions | None = None,
                     echo: Callable[[str], None] = print) -> LocalSearchResult:
    """Walk the pick's GQA variants from the baseline towards faster ones, training each, until one costs more loss
    than ``tolerance`` (relative to the baseline's); see the module docstring."""
    if not 0 <= tolerance < 1:
        raise UserError(f"--tolerance must be a fraction in [0, 1), e.g. 0.01, got {tolerance}")
    pick, document = read_pick(search_json, rank)
    variants = plan_variants(pick, document, proxy, baseline)
    out.mkdir(parents=True, exist_ok=True)
    write_variant_configs(variants, out, proxy)
    order = ", ".join(f"GQA {v.gqa} ({v.tokens_per_s / variants[0].tokens_per_s:.2f}x)" for v in variants)
    echo(f"variants in order of estimated throughput at full scale: {order}")
    base = variants[0]
    decisions: list[dict[str, Any]] = []
    confirmed, stopped_by = base, None

    def record(entry: dict[str, Any]) -> None:
        decisions.append(entry)
        write_json(out / DECISIONS_FILE, {"tolerance": tolerance, "baseline_gqa": base.gqa, "decisions": decisions})
        echo(entry["decision"])

    for index, variant in enumerate(variants):
        train_variant(variant, runs, out, data, dispatch, echo)
        if index == 0:
            record({"gqa": variant.gqa, "proxy_loss": variant.loss, "losses": variant.losses,
                    "decision": f"baseline GQA {variant.gqa}: proxy loss {variant.loss:.4f}"
                                + (f" (seeds {', '.join(f'{v:.4f}' for v in variant.losses)})" if len(variant.losses) > 1 else "")})
            continue
        excess = variant.loss / base.loss - 1
        passed = excess <= tolerance
        verdict = "kept" if passed else "stops the walk"
        record({"gqa": variant.gqa, "proxy_loss": variant.loss, "losses": variant.losses, "excess_over_baseline": excess,
                "passed": passed,
                "decision": f"GQA {variant.gqa}: proxy loss {variant.loss:.4f}, {100 * excess:+.2f}% vs baseline "
                            f"(tolerance {100 * tolerance:.2f}%): {verdict}; estimated "
                            f"{variant.tokens_per_s / base.tokens_per_s:.2f}x the baseline's throughput"})
        if not passed:
            stopped_by = variant
            break
        confirmed = variant
    result = LocalSearchResult(base, variants[: variants.index(stopped_by) + 1] if stopped_by else variants, confirmed,
                               decisions, tolerance, stopped_by)
    result.notes = verdict_notes(result, proxy.vocab_size)
    write_json(out / "gqa_search.json", result.to_json())
    write_confirmed_config(result, document, out / CONFIRMED_DIR)
    return result


def write_confirmed_config(result: LocalSearchResult, document: Mapping[str, Any], folder: Path) -> Path:
    """The confirmed variant at full scale as a trainable config folder (what ``search --emit`` writes for a pick):
    ``config.json``, ``train.json`` at the search's token budget, and ``candidate.json`` with the walk's verdict."""
    arch = dataclasses.replace(result.confirmed.full, name=f"gqa{result.confirmed.gqa}-confirmed")
    tokens = int(float(document["budget"]["tokens"]))
    write_config_dir(folder, arch, TrainConfig.for_model_size(arch.n_params_non_embedding, tokens=tokens))
    write_json(folder / "candidate.json", {**arch.shape_columns(), "gqa": result.confirmed.gqa,
                                           "settled_by": "training (archscale search-gqa)",
                                           "baseline_gqa": result.baseline.gqa, "tolerance": result.tolerance,
                                           "proxy_loss": result.confirmed.loss, "baseline_proxy_loss": result.baseline.loss,
                                           "estimated_tokens_per_s": result.confirmed.tokens_per_s})
    return folder
