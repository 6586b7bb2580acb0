"""Elementary functions that give the same bits on every machine, for the decoder's float outputs.

numpy's log1p, expm1, sin and cos are not correctly rounded, and their SIMD paths differ by an ulp
between CPUs: measured on a direct file of playbot_lod3 decoded on an AVX2 and an AVX-512 machine,
6,057 of 93,000 decoded coordinates differed by an ulp, and 14 snapped to the neighbouring point of
SOG's grid. IEEE basic operations (+, -, *, /, sqrt) are correctly rounded everywhere, and numpy
applies them one ufunc at a time (no fused multiply-add), so the functions here are built from those
alone, in a fixed order: argument reduction, then a polynomial. They are accurate to a few ulps,
which the decoder does not need; what it needs is that the encoder and every decoder agree. Written
by hand because no library we use promises bit-identical results across CPUs.
"""

from __future__ import annotations

import numpy as np

# ln 2 split so that k * LN2_HI is exact for |k| < 2^20 (the classic Cody-Waite constants).
LN2_HI = 6.93147180369123816490e-01
LN2_LO = 1.90821492927058770002e-10
INV_LN2 = 1.44269504088896338700e00
SQRT_HALF = 0.70710678118654752440
PI_HALF_HI = 1.57079632673412561417e00  # π/2 split the same way, for sin/cos reduction
PI_HALF_LO = 6.07710050650619224932e-11
INV_PI_HALF = 0.63661977236758134308

_ATANH_TERMS = 12  # ln m = 2·atanh(s), |s| ≤ 0.172: s^25/25 < 1e-20
_EXP_TERMS = 16  # e^r - 1 for |r| ≤ 0.347: r^16/16! < 1e-20
_TRIG_TERMS = 12  # sin/cos for |r| ≤ π/4: (π/4)^24/24! < 1e-25


def log1p(x) -> np.ndarray:
    """ln(1 + x) for x > -1, float64."""
    x = np.asarray(x, dtype=np.float64)
    u = 1.0 + x
    m, e = np.frexp(u)  # u = m·2^e, m in [0.5, 1)
    low = m < SQRT_HALF
    m = np.where(low, m * 2.0, m)  # m in [√½, √2): the series converges fast
    e = (e - low).astype(np.float64)
    s = (m - 1.0) / (m + 1.0)
    z = s * s
    p = np.full_like(z, 1.0 / (2 * _ATANH_TERMS - 1))
    for k in range(_ATANH_TERMS - 2, -1, -1):
        p = p * z + 1.0 / (2 * k + 1)
    # 1 + x rounded: (x - (u - 1)) / u puts back what the rounding lost (exact near 0)
    corr = np.where(u != 1.0, (x - (u - 1.0)) / u, x)
    return e * LN2_HI + (e * LN2_LO + (2.0 * s * p + corr))


def expm1(x) -> np.ndarray:
    """e^x - 1, float64 (|x| up to ~700)."""
    x = np.asarray(x, dtype=np.float64)
    k = np.round(x * INV_LN2)
    r = (x - k * LN2_HI) - k * LN2_LO  # |r| ≤ ln2/2
    p = np.ones_like(r)
    for n in range(_EXP_TERMS, 1, -1):
        p = 1.0 + p * r / n
    em = r * p  # e^r - 1 = r (1 + r/2 (1 + r/3 (...)))
    ki = k.astype(np.int64)
    # e^x - 1 = 2^k (e^r - 1) + (2^k - 1); 2^k - 1 is exact for the k that occur
    return np.ldexp(em, ki) + (np.ldexp(1.0, ki) - 1.0)


def sincos(x) -> tuple[np.ndarray, np.ndarray]:
    """(sin x, cos x), float64, for |x| up to ~1e6."""
    x = np.asarray(x, dtype=np.float64)
    k = np.round(x * INV_PI_HALF)
    r = (x - k * PI_HALF_HI) - k * PI_HALF_LO  # |r| ≤ π/4
    z = r * r
    ps = np.full_like(z, 1.0)
    pc = np.full_like(z, 1.0)
    for n in range(_TRIG_TERMS, 0, -1):
        ps = 1.0 - ps * z / ((2 * n) * (2 * n + 1))
        pc = 1.0 - pc * z / ((2 * n - 1) * (2 * n))
    s, c = r * ps, pc
    q = k.astype(np.int64) & 3  # which quarter turn: rotate (s, c) by q·π/2
    sin = np.choose(q, [s, c, -s, -c])
    cos = np.choose(q, [c, -s, -c, s])
    return sin, cos


def norm3(v) -> np.ndarray:
    """Euclidean norm of rows (N,3) in a fixed order (np.linalg.norm may use BLAS)."""
    v = np.asarray(v, dtype=np.float64)
    return np.sqrt((v[..., 0] * v[..., 0] + v[..., 1] * v[..., 1]) + v[..., 2] * v[..., 2])


def rows_times(a, b) -> np.ndarray:
    """a (N,K) @ b (K,M) summed in a fixed order (BLAS may fuse or reorder the products)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    out = a[..., 0:1] * b[0]
    for j in range(1, b.shape[0]):
        out = out + a[..., j:j + 1] * b[j]
    return out
