"""Exact quantization steps: a predicted step q becomes base * 2^(j/16) for an integer j.

The decoder multiplies symbols by q, so q must be bit-identical everywhere. j is snapped through
the exact parameter path's mean grid and boundary guard (t = 16·log2(q/base) plays the role of a
mean in 1/64 units), and the value is built from a constant table and an exact power of two.
"""

from __future__ import annotations

import numpy as np

from . import exact_params
from .exact_params import MEAN_STEPS, SCALE_TABLE, apply_guard_blocks, snap_blocks

STEPS_PER_OCTAVE = 16
# 2^(i/16), rounded to 9 significant digits so that no libm difference can change the constants.
_FRAC = np.array([float(f"{2.0 ** (i / STEPS_PER_OCTAVE):.9g}") for i in range(STEPS_PER_OCTAVE)])
MIN_LOG2 = -24  # steps below base·2^-24 are clamped: nothing is worth that precision


def _grid_values(q: np.ndarray, base: float) -> tuple[np.ndarray, np.ndarray]:
    q = np.maximum(np.asarray(q, dtype=np.float64).reshape(-1), base * 2.0**MIN_LOG2)
    t = np.log2(q / base) * STEPS_PER_OCTAVE
    # t / MEAN_STEPS is exact (power of two), so the mean grid's index is round(t).
    return t / MEAN_STEPS, np.full(t.shape, SCALE_TABLE[0])


def _grid_params(q, base):
    """(n, params(slice)): `_grid_values` of `q` a block at a time (elementwise: the same values).
    `base` is one number or one per element of `q` (the anchor codecs' per-channel bases)."""
    q = np.asarray(q).reshape(-1)
    base = np.asarray(base, dtype=np.float64)
    if base.ndim == 0:
        return q.size, lambda b: _grid_values(q[b], float(base))
    base = np.broadcast_to(base, q.shape).reshape(-1)
    return q.size, lambda b: _grid_values(q[b], base[b])


def snap_steps(q, base) -> tuple[np.ndarray, bytes]:
    """Encoder: step indices j and the guard bytes the decoder needs."""
    n, grid = _grid_params(q, base)
    params, guard = snap_blocks(n, grid)
    return params.mean_idx, guard


def steps_from_guard(q, base, guard: bytes) -> np.ndarray:
    """Decoder: the encoder's step indices, from the decoder's own predicted steps."""
    n, grid = _grid_params(q, base)
    return apply_guard_blocks(n, grid, guard).mean_idx


def step_values(idx: np.ndarray, base) -> np.ndarray:
    """base * 2^(j/16), exactly the same on every machine (a block at a time: elementwise);
    `base` is one number or one per element of `idx`."""
    idx = np.asarray(idx)
    out = np.empty(idx.shape)
    flat, res = idx.reshape(-1), out.reshape(-1)
    base = np.asarray(base, dtype=np.float64)
    bases = np.broadcast_to(base, idx.shape).reshape(-1) if base.ndim else None
    for b in exact_params._blocks(flat.size):
        j = flat[b].astype(np.int64)
        res[b] = (base if bases is None else bases[b]) * np.ldexp(_FRAC[j % STEPS_PER_OCTAVE], j // STEPS_PER_OCTAVE)
    return out
