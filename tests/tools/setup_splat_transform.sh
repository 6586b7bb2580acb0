#!/usr/bin/env bash
# Installs PlayCanvas splat-transform (npm @playcanvas/splat-transform, pinned: the version
# benchmarks/peers/setup.sh pins) into tests/tools/.node/splat-transform/, inside the ignored
# tests/tools/.node/. tests/test_sog.py runs this itself when npm is there and reads its SOG
# files back with it; without npm those tests skip, saying so.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
SPLAT_TRANSFORM_VERSION=3.7.0
PREFIX="$HERE/.node/splat-transform"

mkdir -p "$PREFIX"
if [ ! -x "$PREFIX/node_modules/.bin/splat-transform" ]; then
  npm install --prefix "$PREFIX" --no-audit --no-fund --loglevel=error \
    "@playcanvas/splat-transform@$SPLAT_TRANSFORM_VERSION"
fi
echo "splat-transform $(node -p "require('$PREFIX/node_modules/@playcanvas/splat-transform/package.json').version")"
