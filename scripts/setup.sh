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

# The Blender extension's headless tests: Blender as a Python module (bpy 5.0.1, ~375 MB, Python 3.11
# only) in a venv of its own, and mypy with the Blender 4.2 API stubs (they need Python >= 3.12 to
# parse) in another. HEMGS_SKIP_BLENDER=1 skips both; tests then skip, except under CI where they fail.
if [ "${HEMGS_SKIP_BLENDER:-0}" != 1 ]; then
  root=$(cd "$(dirname "$0")/.." && pwd)
  bvenv="$root/.venv-blender"
  if ! "$bvenv/bin/python" -c "import bpy" 2>/dev/null; then
    py311=$(command -v python3.11 || true)
    if [ -n "$py311" ]; then
      "$py311" -m venv "$bvenv"
      "$bvenv/bin/python" -m pip install -q "bpy==5.0.1"
    else
      echo "setup: no python3.11, so no bpy wheel: the Blender add-on tests will not run" >&2
    fi
  fi
  tvenv="$root/.venv-typecheck"
  if ! "$tvenv/bin/python" -m mypy --version >/dev/null 2>&1; then
    py312=""
    for c in python3.13 python3.12 "$HOME"/.pyenv/versions/3.1[23]*/bin/python3; do
      if "$c" -c "import sys; assert sys.version_info >= (3, 12)" 2>/dev/null; then py312=$c; break; fi
    done
    if [ -n "$py312" ]; then
      "$py312" -m venv "$tvenv"
      "$tvenv/bin/python" -m pip install -q "mypy==1.18.2" "fake-bpy-module-4-2==20260730" "numpy<2"
    else
      echo "setup: no Python >= 3.12, so no type check of the add-on" >&2
    fi
  fi
fi
