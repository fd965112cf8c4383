#!/usr/bin/env bash
# Does the search's GQA agree with what training confirms? The GQA-aware law fitted on the CPU GQA study's 48 runs,
# a search with it at the study's small budget, then the local GQA search (archscale search-gqa) from its pick,
# trained at that budget with 3 seeds per variant as two one-thread local jobs (about 15-30 minutes on 2 cores).
# Writes experiments/results/cpu_gqa_study/agreement.txt: every command, then what it printed. Rerunning skips
# variants already trained (WORK keeps their runs table); WORK defaults to a fresh temporary folder.
set -euo pipefail
cd "$(dirname "$0")/../.."
study=experiments/results/cpu_gqa_study
work=${WORK:-$(mktemp -d)}
mkdir -p "$work"
log="$study/agreement.txt"
: > "$log"
run() {  # the command line, then what it printed
  echo "\$ $*" | sed "s|$work/||g" >> "$log"
  COLUMNS=160 "$@" 2>&1 | sed "s|$work/||g" >> "$log"
}
run archscale fit "$study/runs.csv" --law conditional-mult-gqa --loss lsq --out "$work/gqa-fit.json"
run archscale search --fit "$work/gqa-fit.json" --n 2e5 --tokens 8e5 --layers 4 --head-dim 8 --vocab 256 \
    --d-multiple 16 --ff-multiple 16 --gqa 1-8 --batch 8 --input-len 64 --output-len 16 --slack 0.02 --top-k 3 \
    --out "$work/search.json"
run archscale search-gqa "$work/search.json" --proxy-n 2e5 --proxy-tokens 800K --proxy-layers 4 --proxy-head-dim 8 \
    --seeds 3 --runs "$work/runs.csv" --out "$work/gqa-search" --executor local --max-parallel 2 --job-cpus 1
echo "wrote $log (work in $work)"
