"""``search --measure K``: measure the top K picks on this machine, re-rank them on the measurements, and say how far
the estimate's order and spread were from what was measured.

The estimate decides which K shapes are worth measuring; the measurements decide among them. Whether the estimate's
*spread* (fastest over slowest of the K) can be trusted is judged on the spot: within :data:`SPREAD_TRUST_POINTS`
of the measured spread it is, beyond it the output says the estimate compresses or stretches differences on this
engine, so its ranking beyond the measured K should be read as an order, not as speedups.
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
from archscale.shapes.candidates import architecture_from_row
from archscale.shapes.hf_config import write_hf_config

SPREAD_TRUST_POINTS = 15.0
"""The estimated fastest/slowest ratio of the measured picks may differ from the measured one by this many points."""
MEASURABLE = ("torch", "vllm")


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
    def spread_trusted(self) -> bool:
        return self.spread_error_points <= SPREAD_TRUST_POINTS

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
        if self.spread_trusted:
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
                "trust_rule": f"estimated and measured fastest/slowest ratios within {SPREAD_TRUST_POINTS:g} points"}


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
    picks = result.top_k.head(count)
    if len(picks) < 2:
        raise UserError(f"--measure {count}: only {len(picks)} pick to measure; ask for at least 2 (--top-k)")
    targets = []
    for row in picks.to_dict("records"):
        arch = architecture_from_row({**row, "name": f"rank-{int(row['rank'])}"})
        targets.append(Target(spec=arch.name, arch=arch, hf_config=write_hf_config(arch)))
    records = run_sweep(targets, options, store=store, backend=backend).records
    measured = {r["name"]: r for r in records if r.get("status") in ("ok", "noisy")}
    failed = [r for r in records if r.get("status") == "failed"]
    if failed:
        raise UserError(f"--measure: {failed[0]['name']} could not be measured ({failed[0].get('error')}); the search "
                        "result stands without measurements")
    table = picks[["rank", "n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff", "gqa", "output_tokens_per_s"]].rename(
        columns={"output_tokens_per_s": "estimated_output_tokens_per_s"}).reset_index(drop=True)
    table["measured_output_tokens_per_s"] = [float(measured[f"rank-{int(r)}"]["output_tokens_per_s"]) for r in table["rank"]]
    table["measured_rank"] = table["measured_output_tokens_per_s"].rank(ascending=False, method="first").astype(int)
    estimated = table["estimated_output_tokens_per_s"].to_numpy(float)
    observed = table["measured_output_tokens_per_s"].to_numpy(float)
    rho = float(spearmanr(estimated, observed).statistic) if len(table) >= 3 else None
    rho = None if rho is not None and not np.isfinite(rho) else rho
    fastest, slowest = int(np.argmax(observed)), int(np.argmin(observed))
    return MeasuredPicks(table.sort_values("measured_rank").reset_index(drop=True), options.backend, rho,
                         estimated[fastest] / estimated[slowest], observed[fastest] / observed[slowest])
