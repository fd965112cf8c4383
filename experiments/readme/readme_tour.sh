#!/usr/bin/env bash
# Regenerates the README tour: runs each command a new user runs, in order, and keeps what it printed.
#
# Run:  bash experiments/readme/readme_tour.sh        (from a clone's root, after `pip install -e .`; the time each step
#       took and the machine's load are written to experiments/results/tour/timings.txt)
#
# The commands are the README's, as a user runs them from the repository root: they write under out/tour/ (configs,
# runs, bench store, figures), which git ignores. Outputs (committed): experiments/results/tour/NN-*.txt (each command
# and its output), pareto.png and cond.png (copied from out/tour/), timings.txt. Then
# `python experiments/readme/check_readme_tour.py` checks the README shows these outputs.
set -euo pipefail
cd "$(dirname "$0")/../.."
. experiments/readme/steps.sh
OUT=experiments/results/tour
WORK=out/tour
rm -rf "$OUT" "$WORK"
mkdir -p "$OUT"
export COLUMNS=160

TIMINGS=$OUT/timings.txt
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores" > "$TIMINGS"
START=$SECONDS

step() {  # step NAME COMMAND...: print the command, run it, keep both, and how long it took
  local name=$1; shift
  local began=$SECONDS
  { echo "\$ $(shown "$@")"; "$@"; } 2>&1 | tee "$OUT/$name.txt"
  echo "$name: $((SECONDS - began)) s" >> "$TIMINGS"
}

step 00-mkdir mkdir -p "$WORK"  # archscale creates at most the one folder an output sits in, and out/ may not exist yet
step 01-fit-aspect archscale fit data/aspect_ratio_morph.csv --law aspect --loss lsq --where "tokens_budget != '40N'" --holdout "N>=1e9" --out "$WORK/aspect.json"
step 02-search-1b archscale search --fit data/fits/dissertation_1b_mult.json --n 1e9 --tokens 1e11 --layers 16 --head-dim 64 \
  --match llama-3.2-1b --gpu h100-sxm --batch 64 --input-len 4096 --output-len 1024 --top-k 3 \
  --emit "$WORK/configs-1b" --plot "$WORK/pareto.png" --out "$WORK/search-1b.json"
step 03-bench-roofline archscale bench "$WORK/configs-1b/cand-01" llama-3.2-1b --backend roofline --gpu h100-sxm \
  --batch-sizes 16,64,128 --input-len 4096 --output-len 1024 --store "$WORK/bench.sqlite"
step 04-search-tiny archscale search --fit experiments/results/cpu_mini_study/cond.json --n 2e5 --tokens 1.5e6 --layers 4 --head-dim 16 \
  --vocab 256 --d-multiple 16 --ff-multiple 16 --gqa 1,2 --batch 8 --input-len 64 --output-len 16 --slack 0.1 --top-k 2 \
  --emit "$WORK/configs-tiny"
step 05-bench-torch archscale bench "$WORK/configs-tiny/cand-01" "$WORK/configs-tiny/cand-02" --backend torch --device cpu \
  --batch-sizes 1,4 --input-len 64 --output-len 16 --repeats 3 --store "$WORK/bench.sqlite"
step 06-copy-runs cp experiments/results/cpu_mini_study/runs.csv "$WORK/runs.csv"  # the mini-study's 16 runs, to append to
step 06-train archscale train "$WORK/configs-tiny/cand-01" --tokens 1.5M --runs "$WORK/runs.csv" --out "$WORK/run-cand-01" --no-progress
step 07-refit archscale fit "$WORK/runs.csv" --law conditional-mult --loss lsq --progressive --out "$WORK/cond.json" --plot "$WORK/cond.png"
echo "total: $((SECONDS - START)) s; load after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$TIMINGS"
cp "$WORK/pareto.png" "$WORK/cond.png" "$OUT/"  # the README's figures
cat "$TIMINGS"
echo "tour outputs in $OUT"
