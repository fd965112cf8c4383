#!/usr/bin/env bash
# Regenerates the README's fit and plan outputs on shipped data: each command and what it printed.
#
# Run:  bash experiments/readme/readme_fit_plan.sh        (about 2 minutes on 2 cores; needs `pip install -e .` first)
#
# The commands are the README's, as a user runs them from the repository root: they write under out/, which git
# ignores. Outputs (committed): experiments/results/plan/NN-*.txt (each command and its output), and copied from
# out/: chinchilla_huber.json (the Huber fit of the Figure 4 points with 200 bootstrap refits; --help examples
# use it), plan.json and plan.png (the isoFLOP figure). Then `python experiments/readme/check_readme_tour.py` checks
# the README shows these outputs.
set -euo pipefail
cd "$(dirname "$0")/../.."
. experiments/readme/steps.sh
OUT=experiments/results/plan
WORK=out  # archscale creates at most the one folder an output sits in: out/, not out/plan/ in a fresh clone
rm -rf "$OUT"
mkdir -p "$OUT"
rm -f "$WORK/chinchilla_huber.json" "$WORK/plan.json" "$WORK/plan.png"
export COLUMNS=160

step() {  # step NAME COMMAND...: print the command, run it, keep both
  local name=$1; shift
  { echo "\$ $(shown "$@")"; "$@"; } 2>&1 | tee "$OUT/$name.txt"
}

step 01-fit-default archscale fit data/chinchilla_epoch.csv --where "loss < 3.42"
step 02-fit-no-options archscale fit data/chinchilla_epoch.csv
step 03-fit-chinchilla archscale fit data/chinchilla_epoch.csv --where "loss < 3.42" --law chinchilla --min-tokens-per-param 0 \
  --bootstrap 200 --out "$WORK/chinchilla_huber.json"
step 04-fit-aspect archscale fit data/aspect_ratio_morph.csv --holdout "N >= 1e9"
step 05-plan-isoflops archscale plan data/chinchilla_isoflops_epoch.csv --drop-unbracketed --fit "$WORK/chinchilla_huber.json" \
  --budget 5.76e23,1e24 --out "$WORK/plan.json" --plot "$WORK/plan.png"
step 06-plan-holdout archscale plan data/chinchilla_isoflops_epoch.csv --drop-unbracketed --holdout "C >= 3e21" --bootstrap 0
step 07-plan-wings archscale plan data/chinchilla_isoflops_epoch.csv --min-tokens-per-param 1 --drop-unbracketed --bootstrap 0
step 08-plan-inference archscale plan --fit "$WORK/chinchilla_huber.json" --target-loss 2.0 --inference-tokens 1e11,1e12,1e13,1e14
step 09-plan-inference-gpu archscale plan --fit "$WORK/chinchilla_huber.json" --target-loss 2.0 --inference-tokens 1e11,1e12,1e13,1e14 \
  --cost gpu-hours --gpu h100-sxm --mfu 0.4 --tp 8 --batch 64 --input-len 4096 --output-len 1024
step 10-plan-whole-profile archscale plan data/chinchilla_isoflops_epoch.csv --drop-unbracketed --window all --bootstrap 0
step 11-plan-inference-dollars archscale plan --fit "$WORK/chinchilla_huber.json" --target-loss 2.0 \
  --inference-tokens 1e11,1e12,1e13,1e14 --cost dollars --gpu-price 2.5 --tp 8 --tpot-ms 25
cp "$WORK/chinchilla_huber.json" "$WORK/plan.json" "$WORK/plan.png" "$OUT/"
echo "outputs in $OUT"
