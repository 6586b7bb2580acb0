#!/usr/bin/env bash
# Installs the peer codecs and plotting at pinned versions into ignored folders beside this script,
# so the package's own dependencies stay untouched: npm's splat-transform into .node/, and gsply,
# imageio (for gsplat's PngCompression) and matplotlib into .pydeps/ (put on sys.path by run.py).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PY="${PYTHON:-$HERE/../../.venv/bin/python}"
SPLAT_TRANSFORM_VERSION=3.7.0

mkdir -p "$HERE/.node"
if [ ! -x "$HERE/.node/node_modules/.bin/splat-transform" ]; then
  npm install --prefix "$HERE/.node" --no-audit --no-fund --loglevel=error \
    "@playcanvas/splat-transform@$SPLAT_TRANSFORM_VERSION"
fi

# --no-deps with the full pinned closure: numpy, pillow and torch come from the project's venv,
# so nothing here can shadow them.
if [ ! -f "$HERE/.pydeps/.complete" ]; then
  "$PY" -m pip install --quiet --disable-pip-version-check --no-deps --target "$HERE/.pydeps" \
    gsply==0.4.6 numba==0.68.1 llvmlite==0.50.0 imageio==2.38.1 \
    matplotlib==3.11.2 contourpy==1.3.3 cycler==0.12.1 fonttools==4.68.0 kiwisolver==1.5.1 \
    pyparsing==3.3.3 python-dateutil==4.0.0 six==1.17.0
  touch "$HERE/.pydeps/.complete"
fi
echo "peers set up: $("$HERE/.node/node_modules/.bin/splat-transform" --version 2>&1 | head -1 || echo splat-transform ?)"
