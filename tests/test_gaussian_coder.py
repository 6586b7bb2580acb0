"""Quantized-Gaussian (and Laplacian) entropy coding: exact round trips on real attributes, escapes,
bad streams; values on the grid through the mean (codec/streams.py)."""

import numpy as np
import plyfile
import pytest

from conftest import DEMO_PLY
from hemgs.coding.gaussian_coder import MIN_SCALE, decode_symbols, encode_symbols, estimate_bits
from hemgs.errors import FormatError, HemgsError, InputError


def _demo_symbols(step=0.01):
    """Real symbols: the demo scene's SH coefficients quantized with `step`, and a simple model:
    the mean of each Gaussian's other coefficients of the same channel group as the prediction."""
    v = plyfile.PlyData.read(str(DEMO_PLY))["vertex"]
    names = [p.name for p in v.properties if p.name.startswith("f_rest_")]
    f = np.stack([np.asarray(v[n], dtype=np.float64) for n in names], axis=1)
    sym = np.rint(f / step).astype(np.int64)
    pred = (f.sum(axis=1, keepdims=True) - f) / (f.shape[1] - 1) / step  # leave-one-out mean
    resid = f / step - pred
    scale = np.broadcast_to(np.std(resid, axis=0, keepdims=True), f.shape)
    return sym.reshape(-1), pred.reshape(-1), np.ascontiguousarray(scale).reshape(-1)


def test_round_trip_real_attributes_near_estimate():
    sym, mu, sd = _demo_symbols()
    assert sym.size > 500_000
    data = encode_symbols(sym, mu, sd)
    out = decode_symbols(data, mu, sd)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, sym)
    ideal = estimate_bits(sym, mu, sd).sum() / 8
    assert len(data) < 1.005 * ideal + 64, (len(data), ideal)
    assert len(data) < 0.5 * sym.size * 4  # and far below raw int32


def test_per_element_scales_and_tight_distributions():
    rng = np.random.default_rng(3)
    n = 200_000
    mu = rng.normal(0, 50, n)
    sd = np.exp(rng.uniform(np.log(1e-3), np.log(5e3), n))
    sym = np.rint(rng.normal(mu, sd)).astype(np.int64)
    data = encode_symbols(sym, mu, sd)
    np.testing.assert_array_equal(decode_symbols(data, mu, sd), sym)
    ideal = estimate_bits(sym, mu, sd).sum() / 8
    assert len(data) < 1.01 * ideal + 64


def test_escapes_for_outliers_cost_little():
    sym, mu, sd = _demo_symbols()
    base = len(encode_symbols(sym, mu, sd))
    rng = np.random.default_rng(5)
    where = rng.choice(sym.size, 50, replace=False)
    sym = sym.copy()
    sym[where] = rng.choice([2**31 - 1, -(2**31 - 1), 10**6, -(10**5), 5000], 50)
    data = encode_symbols(sym, mu, sd)
    np.testing.assert_array_equal(decode_symbols(data, mu, sd), sym)
    assert len(data) - base < 50 * 12  # boundary symbol (<= 24 bits) + a varint each


def test_zero_and_negative_scales_are_clamped_not_fatal():
    sym = np.array([0, 1, -1, 3, 0])
    mu = np.array([0.0, 0.9, -1.2, 0.0, 0.49])
    sd = np.array([0.0, -1.0, 1e-30, 0.0, 0.0])
    np.testing.assert_array_equal(decode_symbols(encode_symbols(sym, mu, sd), mu, sd), sym)


def test_empty_and_single():
    empty = encode_symbols(np.zeros(0, np.int64), [], [])
    assert decode_symbols(empty, [], []).size == 0
    for s in (0, 7, -2**31 + 1, 2**31 - 1):
        data = encode_symbols([s], [0.25], [2.0])
        assert decode_symbols(data, [0.25], [2.0]).tolist() == [s]


def test_bad_arguments():
    with pytest.raises(InputError):
        encode_symbols([0.5], [0.0], [1.0])
    with pytest.raises(InputError):
        encode_symbols([1, 2], [0.0], [1.0])
    with pytest.raises(InputError):
        encode_symbols([1], [np.nan], [1.0])
    with pytest.raises(InputError):
        encode_symbols([2**40], [0.0], [1.0])
    with pytest.raises(InputError):
        encode_symbols([9], [0.0], [1.0], max_abs=8)


def test_truncated_or_damaged_streams_raise_only_our_errors():
    rng = np.random.default_rng(1)
    n = 5000
    mu = rng.normal(0, 3, n)
    sd = rng.uniform(0.3, 20, n)
    sym = np.rint(rng.normal(mu, sd)).astype(np.int64)
    sym[::997] = 10**7  # so the escape stream is not empty
    data = encode_symbols(sym, mu, sd)
    for cut in np.linspace(0, len(data) - 1, 120).astype(int):
        try:
            decode_symbols(data[:cut], mu, sd)
        except HemgsError:
            pass
    for pos in rng.integers(0, len(data), 200):
        bad = bytearray(data)
        bad[pos] ^= 1 << int(rng.integers(0, 8))
        try:
            decode_symbols(bytes(bad), mu, sd)
        except HemgsError:
            pass
    with pytest.raises(FormatError):
        decode_symbols(b"\xff\xff\xff\xff", mu, sd)


def test_laplace_family_round_trips_near_its_estimate_and_beats_gaussians_on_heavy_tails():
    sym, mu, sd = _demo_symbols()
    data = encode_symbols(sym, mu, sd, family="laplace")
    np.testing.assert_array_equal(decode_symbols(data, mu, sd, family="laplace"), sym)
    ideal = estimate_bits(sym, mu, sd, family="laplace").sum() / 8
    assert len(data) < 1.005 * ideal + 64, (len(data), ideal)
    # SH residuals are heavy-tailed: the Laplacian of the same std codes them in fewer bits
    assert len(data) < len(encode_symbols(sym, mu, sd))
    # a stream decoded under the other family fails, or at least does not give the same symbols
    try:
        assert not np.array_equal(decode_symbols(data, mu, sd, family="gaussian"), sym)
    except HemgsError:
        pass
    # far outliers escape, as under Gaussians
    big = sym.copy()
    big[::1000] += 5_000_000
    np.testing.assert_array_equal(decode_symbols(encode_symbols(big, mu, sd, family="laplace"), mu, sd,
                                                 family="laplace"), big)


def test_training_rates_match_the_coder_estimates():
    import torch

    from hemgs.entropy.rate import gaussian_bits, laplace_bits

    rng = np.random.default_rng(5)
    n = 5000
    q = rng.uniform(0.2, 3.0, n)
    mean = rng.normal(0, 4, n)
    scale = rng.uniform(0.05, 6.0, n)
    sym = np.rint(mean / q + rng.normal(0, 1, n) * scale / q * rng.choice([0.5, 3.0], n))
    t = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    for fam, fn in (("gaussian", gaussian_bits), ("laplace", laplace_bits)):
        est = estimate_bits(sym, mean / q, scale / q, family=fam)
        got = fn(t(sym * q), t(mean), t(scale), t(q)).numpy()
        # the coder floors probabilities at 2^-24 (training at 1e-9) and stds at MIN_SCALE steps
        ok = (est < 20) & (scale / q > MIN_SCALE)
        assert ok.mean() > 0.8
        np.testing.assert_allclose(got[ok], est[ok], rtol=1e-6, atol=1e-5)


def test_unknown_family_is_refused_by_name():
    with pytest.raises(InputError, match="cauchy"):
        encode_symbols(np.zeros(3, np.int64), np.zeros(3), np.ones(3), family="cauchy")
    with pytest.raises(InputError, match="cauchy"):
        estimate_bits(np.zeros(3), np.zeros(3), np.ones(3), family="cauchy")


@pytest.mark.parametrize("family", ["gaussian", "laplace"])
def test_values_on_the_grid_through_the_mean(family):
    """streams.encode_values(shifted=True): values decode to (m + k)·q, m the snapped mean in
    steps; a value within half a step of its mean decodes to the mean and costs ~0 bits."""
    from hemgs.codec import streams

    rng = np.random.default_rng(7)
    n = 20_000
    q = rng.uniform(0.01, 0.2, n)
    mean = rng.normal(0, 1, n)
    scale = rng.uniform(0.001, 0.3, n)
    values = mean + rng.normal(0, 1, n) * scale
    data, dec = streams.encode_values(values, mean, scale, q, b"", family, shifted=True)
    rest = streams.split(data, "test")[1]
    out = streams.decode_values(rest, mean, scale, q, "test", family, shifted=True)
    np.testing.assert_array_equal(out, dec)
    assert np.all(np.abs(dec - values) <= 0.5 * q * (1 + 1e-9) + 1e-12)
    near = np.abs(values - mean) < 0.01 * q
    # (the mean as snapped for exactness: within a small fraction of a step of the model's)
    assert near.sum() > 50 and np.all(np.abs(dec[near] - mean[near]) < 0.02 * q[near])
    # the same values on the grid of multiples of q decode elsewhere; a decoder must know which
    plain = streams.encode_values(values, mean, scale, q, b"", family)[1]
    assert not np.array_equal(plain, dec) and np.all(np.abs(plain - values) <= 0.5 * q * (1 + 1e-9) + 1e-12)
    # predictions within a step cost less on the grid through the mean
    tight = scale < 0.2 * q
    bits_shift = len(streams.encode_values(values[tight], mean[tight], scale[tight], q[tight], b"", family, True)[0])
    bits_plain = len(streams.encode_values(values[tight], mean[tight], scale[tight], q[tight], b"", family)[0])
    assert bits_shift < bits_plain
