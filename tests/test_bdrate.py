"""BD-rate (benchmarks/peers/bdrate.py) on textbook cases whose answer is known in closed form."""

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "peers"))
from bdrate import bd_rate, closest_point, size_at_psnr  # noqa: E402

PSNR = [30.0, 33.0, 36.0, 40.0]


@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_half_the_bytes_everywhere_is_minus_fifty_percent(method):
    ref = [1000.0, 2000.0, 4500.0, 11000.0]
    assert bd_rate(ref, PSNR, [r / 2 for r in ref], PSNR, method=method) == pytest.approx(-50.0, abs=1e-9)
    assert bd_rate([r / 2 for r in ref], PSNR, ref, PSNR, method=method) == pytest.approx(100.0, abs=1e-9)


@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_linear_log_rate_gap_matches_the_integral(method):
    # ln r_ref = 0.1 p; ln r_test = 0.1 p - 0.01 (p - 30). Over the shared PSNR range [30, 40]
    # the mean log difference is -0.01 * 5 = -0.05, so BD-rate = exp(-0.05) - 1 = -4.877%.
    # The test curve is sampled at other PSNRs than the reference, as real curves are.
    test_psnr = [28.0, 31.0, 35.0, 38.0, 42.0]
    ref = [math.exp(0.1 * p) for p in PSNR]
    test = [math.exp(0.1 * p - 0.01 * (p - 30)) for p in test_psnr]
    expect = (math.exp(-0.05) - 1) * 100
    assert bd_rate(ref, PSNR, test, test_psnr, method=method) == pytest.approx(expect, rel=1e-6)


def test_no_overlap_or_too_few_points_gives_none():
    assert bd_rate([1, 2], [20, 25], [1, 2], [30, 35]) is None
    assert bd_rate([1], [30], [1, 2], [29, 31]) is None
    assert bd_rate([1, 2, 3], [30, 31, 32], [1, 2, 3], [30, 31, 32], method="cubic") is None
    # an infinite PSNR (lossless) is not a point of a rate-distortion curve
    assert bd_rate([1, 2, 9], [30, 32, math.inf], [1, 2], [30, 32]) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError):
        bd_rate([1, 2], [30, 31], [1, 2], [30, 31], method="spline")


def test_size_at_psnr_and_closest_point():
    rates, psnrs = [100.0, 400.0], [30.0, 34.0]
    assert size_at_psnr(rates, psnrs, 32.0) == pytest.approx(200.0)  # geometric midpoint
    assert size_at_psnr(rates, psnrs, 35.0) is None
    assert closest_point(rates, psnrs, 35.0) == (pytest.approx(400.0), 34.0)
    assert closest_point([], [], 35.0) is None
