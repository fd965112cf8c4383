"""``search --measure K``: measure the top K picks on this machine, re-rank them on the measurements, and say how far
the estimate's order and spread were from what was measured.

The estimate decides which K shapes are worth measuring; the measurements decide among them. Whether the estimate's
*spread* (fastest over slowest of the K) can be trusted is judged on the spot: within :data:`SPREAD_TRUST_POINTS`
of the measured spread it is, beyond it the output says the estimate compresses or stretches differences on this
engine, so its ranking beyond the measured K should be read as an order, not as speedups.

In a dense-and-MoE search the K picks of each family are measured, and the measurements decide the family: the
fastest measured of each, their ratio, and whether that gap is beyond the repeats' own scatter
(:data:`NOISE_SIGMAS`); the estimate's verdict is printed beside it, agreeing or not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from archscale.bench.sweep import run_sweep
from archscale.bench.types import BenchOptions, Target
from archscale.io.errors import UserError
from archscale.search.constrained import SearchResult, SearchSpec
from archscale.search.families import DENSE, MOE, FamilyResult
from archscale.shapes.candidates import architecture_from_row
from archscale.shapes.hf_config import write_hf_config

SPREAD_TRUST_POINTS = 15.0
"""The estimated fastest/slowest ratio of the measured picks may differ from the measured one by this many points."""
MEASURABLE = ("torch", "vllm")
NOISE_SIGMAS = 2.0
"""Two measured throughputs differ when their log ratio exceeds this many standard deviations of the difference,
each row's relative spread over its repeats (``tokens_per_s_std / tokens_per_s``) taken as its own."""


@dataclass
class MeasuredPicks:
    """The K picks with their estimated and measured throughput, both ranks, and the verdict on the spread."""

    table: pd.DataFrame  # rank (estimated), measured_rank, shape columns (n_layers too: picks may differ in depth), estimated and measured output tokens/s
    backend: str
    spearman: float | None
    estimated_spread: float
    measured_spread: float

    @property
    def spread_error_points(self) -> float:
        return 100.0 * abs(self.estimated_spread - self.measured_spread)

    @property
    def spread_uncertainty_points(self) -> float | None:
        """How far (points) the measured fastest/slowest ratio could move within its two rows' repeat scatter
        (:data:`NOISE_SIGMAS` standard deviations); None when a row had a single repeat."""
        ends = self.table.iloc[[int(self.table["measured_output_tokens_per_s"].idxmax()),
                                int(self.table["measured_output_tokens_per_s"].idxmin())]]
        spreads = ends["relative_spread"].to_numpy(float) if "relative_spread" in ends else np.array([np.nan])
        if np.isnan(spreads).any():
            return None
        return 100.0 * self.measured_spread * NOISE_SIGMAS * float(np.sqrt((spreads ** 2).sum()))

    @property
    def too_noisy(self) -> bool:
        """The repeats scatter more than the trust rule's margin: the measurements cannot judge the estimate."""
        uncertainty = self.spread_uncertainty_points
        return uncertainty is not None and uncertainty > SPREAD_TRUST_POINTS

    @property
    def spread_trusted(self) -> bool | None:
        """Whether the estimate's spread held on this engine; None when the repeats scatter too much to tell."""
        return None if self.too_noisy else self.spread_error_points <= SPREAD_TRUST_POINTS

    @property
    def order_changed(self) -> bool:
        return not (self.table["rank"].to_numpy() == self.table["measured_rank"].to_numpy()).all()

    def summary(self) -> list[str]:
        fastest = self.table.sort_values("measured_rank").iloc[0]
        lines = [f"measured with {self.backend}: the fastest of the {len(self.table)} is the estimate's rank "
                 f"{int(fastest['rank'])} (d_model {int(fastest['d_model'])}, heads {int(fastest['n_heads'])}/"
                 f"{int(fastest['n_kv_heads'])}, d_ff {int(fastest['d_ff'])}, {fastest['measured_output_tokens_per_s']:,.0f} "
                 "output tokens/s)" + ("; the measured order differs from the estimate's" if self.order_changed
                                        else "; the measured order is the estimate's")]
        spread = (f"fastest/slowest of the {len(self.table)}: estimated {self.estimated_spread:.2f}x, measured "
                  f"{self.measured_spread:.2f}x ({self.spread_error_points:.1f} points apart)")
        if self.too_noisy:
            worst = float(self.table["relative_spread"].max())
            lines.append(f"{spread}; but the repeats scatter by up to {100 * worst:.0f}% of their mean, so the measured "
                         f"spread could move {self.spread_uncertainty_points:.0f} points, more than the "
                         f"{SPREAD_TRUST_POINTS:g} a verdict needs: neither the measured order nor the spread is "
                         "settled; measure again with more repeats, on a quieter machine")
        elif self.spread_trusted:
            lines.append(f"{spread}: within {SPREAD_TRUST_POINTS:g} points, so the estimate's speedups hold on this engine")
        else:
            lines.append(f"{spread}: more than {SPREAD_TRUST_POINTS:g} points, so the estimate's spread is not trusted on "
                         "this engine: read its ranking as an order, and its speedups as uncalibrated")
        if self.spearman is not None:
            lines.append(f"rank correlation of estimated and measured throughput over the {len(self.table)}: {self.spearman:.2f}")
        return lines

    def to_json(self) -> dict[str, Any]:
        return {"backend": self.backend, "picks": self.table.to_dict("records"), "spearman": self.spearman,
                "estimated_spread": self.estimated_spread, "measured_spread": self.measured_spread,
                "spread_error_points": self.spread_error_points, "spread_trusted": self.spread_trusted,
                "spread_uncertainty_points": self.spread_uncertainty_points,
                "trust_rule": f"estimated and measured fastest/slowest ratios within {SPREAD_TRUST_POINTS:g} points; "
                              f"no verdict (null) when the repeats' scatter ({NOISE_SIGMAS:g} standard deviations) "
                              "could move the measured ratio by more than that"}


def measure_options(spec: SearchSpec, backend: str, repeats: int = 3, threads: int | None = None,
                    vllm_python: Path | None = None, enforce_eager: bool = False) -> BenchOptions:
    """What to measure: the search's workload, one batch size, on this machine (checked before the search runs)."""
    if backend not in MEASURABLE:
        raise UserError(f"--measure needs a backend that measures: --engine torch or vllm, not {backend!r} "
                        "(the roofline estimates, and that is what is being checked)")
    if backend == "vllm" and not spec.strict_hf:
        raise UserError("--measure with --engine vllm: vLLM loads only shapes whose d_model is a multiple of n_heads "
                        "(transformers' rule); add --strict-hf so that every pick can be measured")
    return BenchOptions(backend=backend, batch_sizes=(spec.workload.batch_size,), input_len=spec.workload.input_len,
                        output_len=spec.workload.output_len, repeats=repeats, gpu=spec.gpu.name, tp=spec.tp,
                        threads=threads if backend == "torch" else None, vllm_python=vllm_python,
                        enforce_eager=enforce_eager and backend == "vllm")


def measure_picks(result: SearchResult, options: BenchOptions, count: int, store: Path | None = None,
                  backend: Any = None) -> MeasuredPicks:
    """Measure the first ``count`` picks (``backend``: an already constructed one, so it was checked up front)."""
    if count < 2:
        raise UserError(f"--measure {count}: measuring compares the picks, so it needs at least 2; give --measure 2 or "
                        "more (a dense and MoE search measures K of each family, so 1 is enough there)")
    picks = result.top_k.head(count)
    if len(picks) < 2:
        raise UserError(f"--measure {count}: only {len(picks)} pick to measure; ask for at least 2 (--top-k)")
    table = picks[["rank", "n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff", "gqa", "output_tokens_per_s"]].rename(
        columns={"output_tokens_per_s": "estimated_output_tokens_per_s"}).reset_index(drop=True)
    measured = measure_rows(picks, [f"rank-{int(r)}" for r in picks["rank"]], options, store, backend)
    table["measured_output_tokens_per_s"] = measured["output_tokens_per_s"].to_numpy()
    table["relative_spread"] = measured["relative_spread"].to_numpy()
    table["measured_rank"] = table["measured_output_tokens_per_s"].rank(ascending=False, method="first").astype(int)
    estimated = table["estimated_output_tokens_per_s"].to_numpy(float)
    observed = table["measured_output_tokens_per_s"].to_numpy(float)
    rho = float(spearmanr(estimated, observed).statistic) if len(table) >= 3 else None
    rho = None if rho is not None and not np.isfinite(rho) else rho
    fastest, slowest = int(np.argmax(observed)), int(np.argmin(observed))
    return MeasuredPicks(table.sort_values("measured_rank").reset_index(drop=True), options.backend, rho,
                         estimated[fastest] / estimated[slowest], observed[fastest] / observed[slowest])


def measure_rows(rows: pd.DataFrame, labels: list[str], options: BenchOptions, store: Path | None = None,
                 backend: Any = None) -> pd.DataFrame:
    """Each candidate row built as its architecture (named by ``labels``) and measured in one sweep: its output
    tokens/s and the relative spread of its repeats, in the rows' order. A shape that fails is one line: the search
    result stands without measurements."""
    targets = []
    for row, label in zip(rows.to_dict("records"), labels):
        arch = architecture_from_row({**row, "name": label})
        targets.append(Target(spec=arch.name, arch=arch, hf_config=write_hf_config(arch)))
    records = run_sweep(targets, options, store=store, backend=backend).records
    failed = [r for r in records if r.get("status") == "failed"]
    if failed:
        raise UserError(f"--measure: {failed[0]['name']} could not be measured ({failed[0].get('error')}); the search "
                        "result stands without measurements")
    measured = {r["name"]: r for r in records if r.get("status") in ("ok", "noisy")}
    missing = [label for label in labels if label not in measured]
    if missing:
        raise UserError(f"--measure: {missing[0]} gave no measurement (interrupted?); the search result stands without "
                        "measurements")
    spread = [_relative_spread(measured[label]) for label in labels]
    return pd.DataFrame({"output_tokens_per_s": [float(measured[label]["output_tokens_per_s"]) for label in labels],
                         "relative_spread": spread})


def _relative_spread(record: dict) -> float:
    """The repeats' standard deviation over their mean throughput (NaN with one repeat: no spread to judge by)."""
    mean, std = record.get("tokens_per_s"), record.get("tokens_per_s_std")
    if not mean or std is None or not np.isfinite(std) or int(record.get("repeats") or 1) < 2:
        return float("nan")
    return float(std) / float(mean)


@dataclass
class MeasuredFamilies:
    """The measured picks of each family, the family the measurements favour, and whether the estimate agreed."""

    table: pd.DataFrame  # family, rank (the estimate's, within its family), shape, estimated and measured tokens/s
    backend: str
    estimated_verdict: dict[str, Any] | None

    def best(self, family: str) -> pd.Series:
        rows = self.table[self.table["family"] == family]
        return rows.loc[rows["measured_output_tokens_per_s"].idxmax()]

    @property
    def moe_over_dense(self) -> float:
        return float(self.best(MOE)["measured_output_tokens_per_s"] / self.best(DENSE)["measured_output_tokens_per_s"])

    @property
    def noise_bound(self) -> float | None:
        """How far apart (log ratio) the two fastest must be to differ beyond their repeats' scatter; None when a
        row had a single repeat."""
        spreads = np.array([self.best(DENSE)["relative_spread"], self.best(MOE)["relative_spread"]], float)
        return None if np.isnan(spreads).any() else float(NOISE_SIGMAS * np.sqrt((spreads ** 2).sum()))

    @property
    def winner(self) -> str | None:
        """The faster family as measured, or None where the gap is within the repeats' scatter."""
        bound = self.noise_bound
        ratio = self.moe_over_dense
        if bound is not None and abs(np.log(ratio)) <= bound:
            return None
        return MOE if ratio > 1 else DENSE

    @property
    def estimated_winner(self) -> str | None:
        """The family the estimate's verdict named (None: it called a tie, or had no verdict)."""
        return None if self.estimated_verdict is None else self.estimated_verdict.get("winner")

    @property
    def estimate_agrees(self) -> bool | None:
        """Whether the estimate named the family the measurements favour; None when either calls it a tie."""
        if self.estimated_winner is None or self.winner is None:
            return None
        return self.estimated_winner == self.winner

    def agreement(self) -> str:
        """The estimate's verdict against the measured one, in words."""
        said, winner = self.estimated_winner, self.winner
        if said is None:
            return "the estimate called it a tie too" if winner is None else "the estimate called it a tie"
        if winner is None:
            return "the estimate named a winner the measurements cannot confirm"
        return "the estimate named the same family" if said == winner else "the estimate named the other family"

    def summary(self) -> list[str]:
        ratio, bound, winner = self.moe_over_dense, self.noise_bound, self.winner
        scatter = ("no repeat scatter to judge the gap by (one repeat): a direction" if bound is None else
                   f"gaps up to {100 * (np.exp(bound) - 1):.1f}% are within the repeats' scatter ({NOISE_SIGMAS:g} "
                   "standard deviations)")
        measured = (f"a tie as measured: MoE/dense {ratio:.2f}x, within the scatter" if winner is None
                    else f"{winner} is faster as measured: {max(ratio, 1 / ratio):.2f}x the other family's best")
        estimate = self.estimated_verdict["verdict"] if self.estimated_verdict else "no verdict (one family had no pick)"
        return [f"{measured}; {scatter}", f"estimate: {estimate}; {self.agreement()}"]

    def to_json(self) -> dict[str, Any]:
        return {"backend": self.backend, "picks": self.table.to_dict("records"), "moe_over_dense": self.moe_over_dense,
                "winner": self.winner, "noise_bound_log": self.noise_bound, "estimate_agrees": self.estimate_agrees,
                "rule": f"the fastest measured of each family; apart when their log ratio exceeds {NOISE_SIGMAS:g} "
                        "standard deviations of the difference (each row's repeats' relative spread)"}


def measure_families(result: FamilyResult, options: BenchOptions, count: int, store: Path | None = None,
                     backend: Any = None) -> MeasuredFamilies:
    """Measure the first ``count`` picks of each family (appended to ``store`` where given, so that a later search
    with ``--store`` ranks them as measured) and decide the family on the measurements."""
    picks = result.picks[result.picks["rank"] <= count]
    missing = [family for family in (DENSE, MOE) if not (picks["family"] == family).any()]
    if missing:
        raise UserError(f"--measure: the search has no {missing[0]} pick to measure, so the measurements cannot decide "
                        "between the families; widen the search (--experts, --experts-per-token, --target-loss)")
    columns = ["family", "rank", "n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff", "n_experts", "experts_per_token"]
    table = picks[columns + ["output_tokens_per_s"]].rename(
        columns={"output_tokens_per_s": "estimated_output_tokens_per_s"}).reset_index(drop=True)
    labels = [f"{family.lower()}-rank-{int(rank)}" for family, rank in zip(table["family"], table["rank"])]
    measured = measure_rows(picks, labels, options, store, backend)
    table["measured_output_tokens_per_s"] = measured["output_tokens_per_s"].to_numpy()
    table["relative_spread"] = measured["relative_spread"].to_numpy()
    return MeasuredFamilies(table, options.backend, result.winner)
