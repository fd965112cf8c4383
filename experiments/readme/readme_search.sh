#!/usr/bin/env bash
# The README's "Picks you can defend" outputs: the 1B and 3B searches with default options (H200 profile), the
# 1B search with --extrapolate, a search over four depths with the aspect law, and the 1B search under a TPOT limit. Each file in
# experiments/results/search/ starts with the command as the README shows it; python
# experiments/readme/check_readme_tour.py checks the README's lines against them.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=experiments/results/search
mkdir -p "$out"
run() {  # run NAME COMMAND...: the command line, then what it printed
  local name=$1; shift
  { echo "\$ $*"; COLUMNS=160 "$@"; } > "$out/$name.txt"
}
one_b="--fit data/fits/dissertation_1b_mult.json --n 1e9 --tokens 1e11 --layers 16 --head-dim 64 --match llama-3.2-1b --gpu h200 --batch 64 --input-len 4096 --output-len 1024 --top-k 3"
# shellcheck disable=SC2086
run 1b-h200 archscale search $one_b
# shellcheck disable=SC2086
run 1b-h200-extrapolate archscale search $one_b --extrapolate
run 3b-h200 archscale search --fit data/fits/dissertation_3b_from_1b_mult.json --n 2.82e9 --tokens 2.82e11 --layers 28 \
    --head-dim 128 --match llama-3.2-3b --gpu h200 --batch 64 --input-len 4096 --output-len 1024 --top-k 3
# depth as a search dimension: the aspect law (it sees depth) fitted on the shipped aspect-ratio runs, then one search
# over four depths at 300M, inside those runs
run aspect-fit archscale fit data/aspect_ratio_morph.csv --law aspect --loss lsq --out out/aspect.json
run depths-h200 archscale search --fit out/aspect.json --n 3e8 --tokens 6e9 --layers 8,12,16,24 --head-dim 64 --gqa 4 \
    --gpu h200 --top-k 5 --tie 0
# the same search with the default tie rule: the depths within the profile's error of the fastest are one tie
run depths-h200-ties archscale search --fit out/aspect.json --n 3e8 --tokens 6e9 --layers 8,12,16,24 --head-dim 64 \
    --gqa 4 --gpu h200 --top-k 5
# serving at a latency limit: the 1B law with up to 256 requests, each shape at the most that keep TPOT p99 <= 15 ms
run 1b-h200-tpot archscale search --fit data/fits/dissertation_1b_mult.json --n 1e9 --tokens 1e11 --layers 16 --head-dim 64 \
    --match llama-3.2-1b --gpu h200 --batch 256 --input-len 4096 --output-len 1024 --top-k 3 --tpot-ms 15 \
    --plot out/1b-h200-tpot.png
cp out/1b-h200-tpot.png "$out/1b-h200-tpot.png"  # kept with the transcript, so the figure can be opened from the repo
# dense against Mixture of Experts at 1B active: the published joint law, in its own vocabulary (GPT-2, untied)
run 1b-active-h200-moe archscale search --fit data/fits/ludziejewski2025_joint.json --n 1e9 --tokens 2e10 --layers 16 \
    --head-dim 64 --vocab 50257 --untie-embeddings --gpu h200 --batch 64 --input-len 4096 --output-len 1024 \
    --experts 2,4,8,16,32 --experts-per-token 1,2 --granularity 4/3,2 --target-loss 2.555 --top-k 3 \
    --plot out/1b-active-h200-moe.png
cp out/1b-active-h200-moe.png "$out/1b-active-h200-moe.png"
echo "wrote $out/1b-active-h200-moe.txt and .png, $out/1b-h200-tpot.txt and .png, $out/1b-h200.txt, $out/1b-h200-extrapolate.txt, $out/3b-h200.txt, $out/aspect-fit.txt, $out/depths-h200.txt, $out/depths-h200-ties.txt"
