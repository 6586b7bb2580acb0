#!/usr/bin/env bash
# The peers rate–distortion benchmark in one command: set up the pinned peers, then run.
# Arguments go to run.py (--scenes, --skip, ...).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PY="${PYTHON:-$HERE/../../.venv/bin/python}"
PYTHON="$PY" bash "$HERE/setup.sh"
exec env OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE HEMGS_THREADS=1 NUMBA_NUM_THREADS=1 "$PY" "$HERE/run.py" "$@"
