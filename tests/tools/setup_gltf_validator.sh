#!/usr/bin/env bash
# Installs the Khronos glTF validator (npm gltf-validator, pinned) into tests/tools/.node/, an
# ignored folder, for tests/test_gltf.py's validator test (which skips, saying so, without it).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
GLTF_VALIDATOR_VERSION=2.0.0-dev.3.10

mkdir -p "$HERE/.node"
if [ ! -f "$HERE/.node/node_modules/gltf-validator/package.json" ]; then
  npm install --prefix "$HERE/.node" --no-audit --no-fund --loglevel=error \
    "gltf-validator@$GLTF_VALIDATOR_VERSION"
fi
echo "gltf-validator $(node -p "require('$HERE/.node/node_modules/gltf-validator/package.json').version")"
