"""Exact quantization steps: a predicted step q becomes base * 2^(j/16) for an integer j.

The decoder multiplies symbols by q, so q must be bit-identical everywhere. j is snapped through
the exact parameter path's mean grid and boundary guard (t = 16·log2(q/base) plays the role of a
mean in 1/64 units), and the value is built from a constant table and an exact power of two.
"""

from __future__ import annotations

import numpy as np

from .exact_params import MEAN_STEPS, SCALE_TABLE, apply_guard, snap_for_encoder

STEPS_PER_OCTAVE = 16
# 2^(i/16), rounded to 9 significant digits so that no libm difference can change the constants.
_FRAC = np.array([float(f"{2.0 ** (i / STEPS_PER_OCTAVE):.9g}") for i in range(STEPS_PER_OCTAVE)])
MIN_LOG2 = -24  # steps below base·2^-24 are clamped: nothing is worth that precision


def _grid_values(q: np.ndarray, base: float) -> tuple[np.ndarray, np.ndarray]:
    q = np.maximum(np.asarray(q, dtype=np.float64).reshape(-1), base * 2.0**MIN_LOG2)
    t = np.log2(q / base) * STEPS_PER_OCTAVE
    # t / MEAN_STEPS is exact (power of two), so the mean grid's index is round(t).
    return t / MEAN_STEPS, np.full(t.shape, SCALE_TABLE[0])


def snap_steps(q, base: float) -> tuple[np.ndarray, bytes]:
    """Encoder: step indices j and the guard bytes the decoder needs."""
    m, s = _grid_values(q, base)
    params, guard = snap_for_encoder(m, s)
    return params.mean_idx, guard


def steps_from_guard(q, base: float, guard: bytes) -> np.ndarray:
    """Decoder: the encoder's step indices, from the decoder's own predicted steps."""
    m, s = _grid_values(q, base)
    return apply_guard(m, s, guard).mean_idx


def step_values(idx: np.ndarray, base: float) -> np.ndarray:
    """base * 2^(j/16), exactly the same on every machine."""
    idx = np.asarray(idx, dtype=np.int64)
    return base * np.ldexp(_FRAC[idx % STEPS_PER_OCTAVE], idx // STEPS_PER_OCTAVE)
