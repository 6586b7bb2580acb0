#!/usr/bin/env bash
# Creates the virtual environment with the backend and its test tools.
# CPU machines get torch 2.13.0 (a CPU build where the machine has one on disk). CUDA users:
# install torch for their CUDA first (TORCH_SPEC="" skips our pin), see README.
set -euo pipefail
venv=${1:-.venv}
py=${PY:-python3.11}
command -v "$py" >/dev/null || py=python3
"$py" -m venv "$venv"
pip="$venv/bin/python -m pip"
$pip install -q --upgrade pip
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  spec=${TORCH_SPEC-torch==2.13.0}
  [ -n "$spec" ] && $pip install -q "$spec"
fi
$pip install -q -e "backend[dev]"
"$venv/bin/python" -c "import torch, hemgs; print('hemgs', hemgs.__version__, 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
