"""The dissertation's Table 6.2 choices, re-derived with archscale search from its published fits.

Run:  python experiments/reproduce/table62_search.py

1B: the published fit on 80M-297M variants (data/fits/dissertation_1b_mult.json), N = 1e9, D = 100B, 16 layers,
d_head 64. Panda-1B is the law's optimum (closed form, then the best discrete shape at the paper's GQA 4);
Surefire-1B is a Pareto-optimal shape whose predicted loss matches LLaMA-3.2-1B's (Eq. 6.4 with --match).
3B: the published refit on 1B variants (data/fits/dissertation_3b_from_1b_mult.json), N = 2.82e9, 28 layers,
d_head 128 (the paper's Panda-3B-o: x* = 0.074, r* = 1.229).
Throughput is the serving model with the shipped vLLM profile for the H200 (fitted on Table 6.3's LLaMA rows) at
batch 64, 4096 in / 1024 out, the device on which the paper measured Surefire-1B at 1.17x LLaMA-3.2-1B at this batch.
Losses are relative to L_opt
(the published fits carry no reference law), which is enough to compare shapes of one budget.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from archscale.serving.devices import load_gpu
from archscale.serving.profiles import resolve_profile
from archscale.serving.estimate import Workload
from archscale.search.constrained import SearchSpec, best_at_gqa, predict_loss, search, shape_row
from archscale.fit.fitted import load_fit
from archscale.shapes.hf_config import load_architecture

ROOT = Path(__file__).resolve().parents[2]
GPU, WORKLOAD = load_gpu("h200"), Workload(64, 4096, 1024)
PROFILE = resolve_profile(None, GPU, "vllm")


def describe(label: str, row: dict, reference_speed: float) -> str:
    return (f"  {label:34s} d_model {int(row['d_model']):5d}  heads {int(row['n_heads']):3d}/{int(row['n_kv_heads']):<3d} "
            f"d_ff {int(row['d_ff']):5d}  N {row['N'] / 1e6:6.0f}M  x {row['x']:.3f}  r {row['r']:5.2f}  GQA {int(row['gqa']):2d}  "
            f"loss/L_opt {row['predicted_loss']:.4f}  est. tokens/s {row['tokens_per_s']:8,.0f} ({row['tokens_per_s'] / reference_speed:.2f}x)")


def paper_model(name: str, fit, spec: SearchSpec) -> dict:
    frame = pd.DataFrame([shape_row(load_architecture(name))])
    loss = predict_loss(fit, frame, spec.tokens)
    speed = spec.estimate(frame).iloc[0]["tokens_per_s"]
    return {**frame.iloc[0].to_dict(), "predicted_loss": float(loss[0]), "tokens_per_s": float(speed)}


def study(title: str, fit_file: str, spec: SearchSpec, match: str, papers: list[str], expected: dict) -> bool:
    fit = load_fit(ROOT / "data" / "fits" / fit_file)
    result = search(fit, spec, match=load_architecture(match))
    reference = result.target.reference
    optimum = result.continuous_optimum
    print(f"\n== {title} ==")
    print(f"  throughput: {result.throughput_model.describe()}")
    print(f"  continuous optimum: x* = {optimum['x']:.4f} (paper {expected['x']}), r* = {optimum['r']:.3f} (paper {expected['r']}), "
          f"d_model = {optimum['d_model']:.0f}")
    print(f"  {len(result.candidates):,} candidates, {int(result.candidates['feasible'].sum()):,} meet the target "
          f"loss/L_opt <= {result.target.loss:.4f} ({result.target.source})")
    speed = reference["tokens_per_s"]
    print(describe(f"reference {match}", reference, speed))
    gqa = expected["gqa"]
    best = best_at_gqa(result, gqa)
    print(describe(f"best discrete at GQA {gqa} (Panda)", best, speed))
    for row in result.top_k.to_dict("records"):
        print(describe(f"search top-{row['rank']} (GQA variants {row['gqa_variants']})", row, speed))
    for name in papers:
        print(describe(f"paper: {name}", paper_model(name, fit, spec), speed))
    checks = {
        f"x* within 2% of {expected['x']}": abs(optimum["x"] / expected["x"] - 1) <= 0.02,
        f"r* within 2% of {expected['r']}": abs(optimum["r"] / expected["r"] - 1) <= 0.02,
        f"best GQA-{gqa} shape has d_model {expected['d_model']}": best["d_model"] == expected["d_model"],
        "top candidate meets the target": result.top_k.iloc[0]["predicted_loss"] <= result.target.loss,
        "top candidate faster than the reference": result.top_k.iloc[0]["tokens_per_s"] > speed,
    }
    if "r_range" in expected:
        low, high = expected["r_range"]
        checks[f"best GQA-{gqa} shape has r in [{low}, {high}]"] = low <= best["r"] <= high
    for label, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {label}")
    return all(checks.values())


def main() -> None:
    one_b = SearchSpec(n=1e9, tokens=1e11, n_layers=16, d_head=64, gpu=GPU, workload=WORKLOAD, profile=PROFILE)
    three_b = SearchSpec(n=2.82e9, tokens=1e11, n_layers=28, d_head=128, gpu=GPU, workload=WORKLOAD, profile=PROFILE)
    ok = study("1B: published fit on 80M-297M variants", "dissertation_1b_mult.json", one_b, "llama-3.2-1b",
               ["panda-1b", "surefire-1b"], {"x": 0.080, "r": 1.032, "gqa": 4, "d_model": 2560, "r_range": (0.9, 1.2)})
    ok &= study("3B: published refit on 1B variants", "dissertation_3b_from_1b_mult.json", three_b, "llama-3.2-3b",
                ["panda-3b", "surefire-3b"], {"x": 0.074, "r": 1.229, "gqa": 3, "d_model": 3968})
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
