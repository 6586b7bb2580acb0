"""Bjøntegaard delta rate (BD-rate) between two rate-distortion curves, and size at a given PSNR.

Written by hand: no maintained PyPI package computes it for arbitrary (bytes, PSNR) points. The
method (Bjøntegaard, VCEG-M33, 2001; piecewise-cubic variant VCEG-AI11): fit log-rate as a
function of PSNR for each curve, integrate both over the PSNR interval they share, and turn the
mean log-rate difference into a percentage. Negative = the test curve needs fewer bytes.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.interpolate import PchipInterpolator


def _curve(rates, psnrs) -> tuple[np.ndarray, np.ndarray]:
    """Finite points sorted by PSNR, with log rate; duplicate PSNRs keep the smallest rate."""
    r = np.asarray(rates, np.float64)
    p = np.asarray(psnrs, np.float64)
    if r.shape != p.shape:
        raise ValueError(f"rates and PSNRs differ in length: {r.shape} vs {p.shape}")
    ok = np.isfinite(r) & np.isfinite(p) & (r > 0)
    best: dict[float, float] = {}
    for ri, pi in zip(r[ok], p[ok]):
        best[pi] = min(ri, best.get(pi, math.inf))
    ps = np.array(sorted(best))
    return ps, np.log(np.array([best[x] for x in ps]))


def bd_rate(rates_ref, psnr_ref, rates_test, psnr_test, method: str = "pchip") -> float | None:
    """Mean rate difference (percent) of the test curve against the reference at equal PSNR.

    `method`: "pchip" (monotone piecewise cubic, VCEG-AI11; works from 2 points) or "cubic" (one
    cubic polynomial per curve, VCEG-M33; needs 4 points). Returns None when either curve has too
    few distinct finite points or the curves share no PSNR interval.
    """
    if method not in ("pchip", "cubic"):
        raise ValueError(f"unknown BD-rate method {method!r}: expected 'pchip' or 'cubic'")
    pa, la = _curve(rates_ref, psnr_ref)
    pb, lb = _curve(rates_test, psnr_test)
    need = 4 if method == "cubic" else 2
    if len(pa) < need or len(pb) < need:
        return None
    lo, hi = max(pa[0], pb[0]), min(pa[-1], pb[-1])
    if not hi > lo:
        return None
    if method == "cubic":
        ia, ib = np.polyint(np.polyfit(pa, la, 3)), np.polyint(np.polyfit(pb, lb, 3))
        area_a = np.polyval(ia, hi) - np.polyval(ia, lo)
        area_b = np.polyval(ib, hi) - np.polyval(ib, lo)
    else:
        area_a = PchipInterpolator(pa, la).integrate(lo, hi)
        area_b = PchipInterpolator(pb, lb).integrate(lo, hi)
    return float((math.exp((area_b - area_a) / (hi - lo)) - 1.0) * 100.0)


def size_at_psnr(rates, psnrs, target: float) -> float | None:
    """Rate of a curve at PSNR `target` (piecewise-linear in log rate), or None outside its range."""
    p, lr = _curve(rates, psnrs)
    if len(p) == 0 or not (p[0] <= target <= p[-1]):
        return None
    if len(p) == 1:
        return float(math.exp(lr[0]))
    return float(math.exp(np.interp(target, p, lr)))


def closest_point(rates, psnrs, target: float) -> tuple[float, float] | None:
    """The (rate, PSNR) point of a curve whose PSNR is closest to `target`, or None if it has none."""
    p, lr = _curve(rates, psnrs)
    if len(p) == 0:
        return None
    i = int(np.argmin(np.abs(p - target)))
    return float(math.exp(lr[i])), float(p[i])


def value_at_psnr(psnrs, values, target: float) -> float | None:
    """Another figure of a curve's points (e.g. the worst view) at PSNR `target`, linear in PSNR
    between the points around it, or None outside the curve's range."""
    pts = sorted((p, v) for p, v in zip(psnrs, values)
                 if p is not None and v is not None and math.isfinite(p) and math.isfinite(v))
    if not pts or not (pts[0][0] <= target <= pts[-1][0]):
        return None
    return float(np.interp(target, [p for p, _ in pts], [v for _, v in pts]))
