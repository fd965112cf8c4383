"""Writes notebooks/walkthrough.ipynb from the cells below (outputs are never committed).

Run:  python notebooks/make_walkthrough.py
The notebook is executed headless by tests/test_notebook.py.
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CELLS = [
    ("md", """# archscale walkthrough: from training runs to an architecture worth pretraining

This notebook runs archscale's whole loop through its Python API (no CLI), on data that ships with the package
and on a model small enough to train on a laptop CPU in seconds:

1. fit scaling laws to real training runs and see how well they predict held-out runs;
2. take the dissertation's published architecture law and find the shapes that serve fastest at a loss target;
3. emit trainable configs, estimate and measure their throughput;
4. train one, append its row to the runs table, refit.
"""),
    ("code", """import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

import archscale
from archscale.fit.runs import load_runs
from archscale.fit.fitted import load_fit
from archscale.fit.study import run_study

DATA = Path(archscale.__file__).resolve().parents[1] / "data"
WORK = Path(tempfile.mkdtemp(prefix="archscale-walkthrough-"))
print("archscale", archscale.__version__, "| scratch folder:", WORK)"""),
    ("md", """## 1. Scaling laws from a table of runs

A *runs table* has one row per training run: parameters `N`, tokens `D` (or training FLOPs `C`), final `loss`,
and where known the shape. Epoch AI's 245 points read off the Chinchilla paper ship in `data/`. The replication
drops the five highest-loss points and minimises a Huber loss on log-loss; archscale does the same with a
handful of trust-region starts instead of a 4,500-point grid."""),
    ("code", """chinchilla = load_runs(DATA / "chinchilla_epoch.csv")
huber = run_study(chinchilla, "chinchilla", objective="huber", where="loss < 3.42")
lsq = run_study(chinchilla, "chinchilla", objective="lsq", where="loss < 3.42")
pd.DataFrame({"huber (replication's objective)": huber.fit.params, "least squares (LM)": lsq.fit.params})"""),
    ("md", """Same data, two objectives, visibly different `B` and `beta`: always report which objective produced a
number. Next, the aspect-ratio law of the dissertation's chapter 5 against Chinchilla, both fitted on runs below
1B parameters and scored on four held-out 1B runs of different shapes (the paper's Figure 5.8). Ranking those
four correctly is what matters when choosing a shape."""),
    ("code", """from archscale.fit.plots import predicted_vs_actual

aspect_runs = load_runs(DATA / "aspect_ratio_morph.csv")
selection = "tokens_budget in ['20N', '160N']"
fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
for ax, law in zip(axes, ("chinchilla", "aspect")):
    study = run_study(aspect_runs, law, "lsq", where=selection, holdout="N >= 1e9")
    predicted_vs_actual(ax, study.frame["loss"], study.predicted, study.fit_mask, study.metrics, law)
    held = study.metrics["holdout"]
    print(f"{law:10s} 1B runs: max relative error {100 * held['max_rel_error']:.2f}%, Spearman {held['spearman']:.2f}")
plt.show()"""),
    ("md", """## 2. The conditional law and the shape search

Chapter 6 separates shape from size: at fixed `N` and `D`, loss is a reference loss `L_opt(N, D)` times two
U-shaped factors, one in `x = d_model / sqrt(N)` (how wide), one in `r` = MLP parameters / attention parameters
(how the budget is split). Each factor `c0 + c1 log v + c2 / v` is lowest at `v* = c2 / c1`. The dissertation
published its coefficients; they ship in `data/fits/`."""),
    ("code", """published = load_fit(DATA / "fits" / "dissertation_1b_mult.json")
print(published.params)
print("optimum:", {k: round(v, 4) for k, v in published.optimum().items()}, "(the paper: x* = 0.080, r* = 1.032)")"""),
    ("md", """The optimum is the most *accurate* shape, not the fastest. Wider models and more MLP (higher `r`) read a
smaller KV cache per token and serve faster. The search keeps every shape whose predicted loss is no worse than
LLaMA-3.2-1B's and ranks them by throughput: the dissertation's Eq. 6.4. Throughput here is the serving model with
the shipped vLLM profile for an H200 (fitted on the dissertation's measured LLaMA-3.2 rows; no GPU needed); measured
numbers replace it when a bench store has them."""),
    ("code", """from archscale.shapes.hf_config import load_architecture
from archscale.serving import Workload, load_gpu, resolve_profile
from archscale.search.plots import plot_search
from archscale.search.constrained import SearchSpec, best_at_gqa, search

h200 = load_gpu("h200")
spec = SearchSpec(n=1e9, tokens=1e11, n_layers=16, d_head=64, gpu=h200, workload=Workload(64, 4096, 1024),
                  profile=resolve_profile(None, h200, "vllm"))
result = search(published, spec, match=load_architecture("llama-3.2-1b"))
print("throughput:", result.throughput_model.describe())
panda = best_at_gqa(result, 4)
print(f"best shape at GQA 4: d_model {panda['d_model']}, r {panda['r']:.2f}  (the paper's Panda-1B: 2560, 1.07)")
print(f"target: loss/L_opt <= {result.target.loss:.4f} ({result.target.source}); "
      f"{int(result.candidates['feasible'].sum()):,} of {len(result.candidates):,} shapes qualify")
speedup = result.top_k["output_tokens_per_s"] / result.target.reference["output_tokens_per_s"]
columns = ["rank", "d_model", "n_heads", "n_kv_heads", "d_ff", "r", "gqa", "predicted_loss", "output_tokens_per_s"]
result.top_k[columns].assign(vs_llama=speedup.round(2))"""),
    ("code", """from IPython.display import Image, display

display(Image(filename=str(plot_search(result, spec, WORK / "pareto.png"))))
for note in result.notes:
    print("note:", note)"""),
    ("md", """The frontier (red) is the set of shapes no other shape beats on both loss and speed. The law cannot see
GQA (its runs all had GQA 4), so the search ranks only GQA-4 shapes and counts the rest as outside the fit's runs
(orange); `extrapolate=True` ranks them too, labelled, and `archscale search-gqa` settles GQA by training.

## 3. Tiny configs you can train here: emit, estimate, measure

The same search at a budget a CPU can train (0.2M non-embedding parameters, byte-level vocabulary) emits config
directories: `config.json` (HF Llama-style), `train.json` (the bundled loop's settings) and `candidate.json`."""),
    ("code", """from archscale.search.emit import emit_configs

# the published law was fitted on 80M-297M models at GQA 4: at 0.2M and GQA 1-2 every shape is outside its runs,
# so this search ranks them only because it is told to (each pick is labelled with what is out)
tiny = SearchSpec(n=2e5, tokens=4e6, n_layers=4, d_head=16, gpu=load_gpu("h100-sxm"), workload=Workload(8, 64, 16),
                  vocab_size=256, gqa_values=(1, 2), d_multiple=16, ff_multiple=16, extrapolate=True)
tiny_result = search(published, tiny, slack=0.05, top_k=2)
configs = emit_configs(tiny_result, tiny, WORK / "configs")
print([c.name for c in configs], sorted(p.name for p in configs[0].iterdir()))"""),
    ("code", """from archscale.bench.store import load_results
from archscale.bench.sweep import resolve_targets, run_sweep
from archscale.bench.types import BenchOptions

targets = resolve_targets([str(c) for c in configs])
store = WORK / "bench.sqlite"
for backend in ("torch", "roofline"):
    options = BenchOptions(backend=backend, batch_sizes=(1, 4), input_len=16, output_len=8, repeats=1,
                           gpu="h100-sxm" if backend == "roofline" else None, device="cpu")
    run_sweep(targets, options, store=store)
load_results(store)[["name", "backend", "gpu", "batch_size", "tokens_per_s", "output_tokens_per_s", "profile", "status"]]"""),
    ("md", """The torch backend runs archscale's own model (the one the trainer trains) on this CPU; the roofline row is
what an H100 would do by the serving model (`profile` names the H200's vLLM profile carried over to the H100,
which has none of its own).
`archscale bench calibrate` fits a profile to measured rows of one engine on one device.

## 4. Train one, append its row, refit

Training uses the embedded corpus (Python's own standard library, as bytes) so it runs anywhere without a
download; real studies use a real corpus (`archscale data prepare`). Each finished run appends one row to the
runs table that `fit` reads."""),
    ("code", """from archscale.train.loop import train

runs_csv = WORK / "runs.csv"
outcome = train(configs[0], out_dir=WORK / "run", tokens=40_000, runs=runs_csv, progress=False)
print(f"validation loss {outcome.val_loss:.3f} nats/token after {outcome.tokens:,} tokens, {outcome.tokens_per_s:,.0f} tokens/s")
load_runs(runs_csv)[["N", "D", "loss", "d_model", "n_heads", "d_ff", "r", "x"]]"""),
    ("md", """One run cannot fit a law; a sweep of shapes can (`archscale sweep`, and `experiments/studies/cpu_mini_study.py`
for a 16-run study on this CPU). Here the new row joins a table of earlier runs and the conditional law is refit
on all of them, closing the loop."""),
    ("code", """mini_study = DATA.parent / "experiments" / "results" / "cpu_mini_study" / "runs.csv"
table = pd.concat([pd.read_csv(mini_study), pd.read_csv(runs_csv)], ignore_index=True)
table.to_csv(WORK / "all_runs.csv", index=False)
refit = run_study(load_runs(WORK / "all_runs.csv"), "conditional-mult", "lsq")
print(f"refit on {refit.fit.n_points} runs: optimum", {k: round(v, 3) for k, v in refit.fitted.optimum().items()})
print("fit metrics:", {k: round(v, 4) if isinstance(v, float) else v for k, v in refit.metrics["fit"].items()})"""),
]


def build() -> nbformat.NotebookNode:
    notebook = new_notebook()
    notebook.cells = [new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in CELLS]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return notebook


if __name__ == "__main__":
    path = Path(__file__).with_name("walkthrough.ipynb")
    nbformat.write(build(), path)
    print(f"wrote {path}")
