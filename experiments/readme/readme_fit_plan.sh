#!/usr/bin/env bash
# Regenerates the README's fit and plan outputs on shipped data: each command and what it printed.
#
# Run:  bash experiments/readme/readme_fit_plan.sh        (about 2 minutes on 2 cores; needs `pip install -e .` first)
#
# Outputs (committed): experiments/results/plan/NN-*.txt, chinchilla_huber.json (the Huber fit of the
# Figure 4 points with 200 bootstrap refits), plan.json and plan.png (the isoFLOP figure).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=experiments/results/plan
rm -rf "$OUT"
mkdir -p "$OUT"
export COLUMNS=160

step() {  # step NAME COMMAND...: print the command, run it, keep both
  local name=$1; shift
  { echo "\$ $*"; "$@"; } 2>&1 | tee "$OUT/$name.txt"
}

step 01-fit-default archscale fit data/chinchilla_epoch.csv --where "loss < 3.42"
step 02-fit-no-options archscale fit data/chinchilla_epoch.csv
step 03-fit-chinchilla archscale fit data/chinchilla_epoch.csv --where "loss < 3.42" --law chinchilla --bootstrap 200 --out "$OUT/chinchilla_huber.json"
step 04-fit-aspect archscale fit data/aspect_ratio_morph.csv --holdout "N >= 1e9"
step 05-plan-isoflops archscale plan data/chinchilla_isoflops_epoch.csv --drop-unbracketed --fit "$OUT/chinchilla_huber.json" \
  --budget 5.76e23,1e24 --out "$OUT/plan.json" --plot "$OUT/plan.png"
step 06-plan-holdout archscale plan data/chinchilla_isoflops_epoch.csv --drop-unbracketed --holdout "C >= 3e21" --bootstrap 0
step 07-plan-wings archscale plan data/chinchilla_isoflops_epoch.csv --min-tokens-per-param 1 --drop-unbracketed --bootstrap 0
step 08-plan-inference archscale plan --fit "$OUT/chinchilla_huber.json" --target-loss 2.0 --inference-tokens 1e11,1e12,1e13,1e14
step 09-plan-inference-gpu archscale plan --fit "$OUT/chinchilla_huber.json" --target-loss 2.0 --inference-tokens 1e11,1e12,1e13,1e14 \
  --cost gpu-hours --gpu h100-sxm --mfu 0.4 --tp 8 --batch 64 --input-len 4096 --output-len 1024
echo "outputs in $OUT"
