"""The exact path and the symbol coders work a block of elements at a time (issue #24 item 2:
memory that does not grow with a stream's whole size in temporaries). The block size must never
change a byte or a value: here every blocked function, with tiny blocks, against one block over
everything (the behaviour before blocks)."""

import numpy as np
import pytest

from hemgs.codec import streams
from hemgs.coding import exact_params, gaussian_coder
from hemgs.coding.exact_params import (MEAN_STEPS, SCALE_BOUNDS, apply_guard, apply_guard_blocks, encode_guard,
                                       snap_blocks, snap_for_encoder)
from hemgs.coding.gaussian_coder import (decode_symbols, decode_symbols_from, encode_symbols,
                                         encode_symbols_from)
from hemgs.coding.steps import snap_steps, step_values, steps_from_guard
from hemgs.direct.stages import _run_blocks

WHOLE = 1 << 30  # one block over everything
BLOCKS = (1, 3, 64, WHOLE)


def _params(n, seed=0):
    """Means and scales over several alphabets (scales 0.01..3000), a few escapes, and values on
    or next to the snapping boundaries so that the guard lists elements."""
    rng = np.random.default_rng(seed)
    scales = np.exp(rng.uniform(np.log(0.01), np.log(3000.0), n))
    means = rng.normal(0, 50, n)
    means[::7] = (np.floor(means[::7] * MEAN_STEPS) + 0.5) / MEAN_STEPS  # mean boundaries
    scales[::11] = SCALE_BOUNDS[rng.integers(0, SCALE_BOUNDS.size, scales[::11].size)]  # scale boundaries
    symbols = np.rint(means + scales * rng.standard_normal(n)).astype(np.int64)
    symbols[::13] += rng.choice([-1, 1], symbols[::13].size) * rng.integers(10**4, 10**6, symbols[::13].size)
    return means, scales, symbols


def _sliced(means, scales):
    return lambda i: (means[i], scales[i])


@pytest.mark.parametrize("family", ["gaussian", "laplace"])
def test_symbol_coder_blocks_identical(family):
    means, scales, symbols = _params(500)
    ref = encode_symbols(symbols, means, scales, family=family)
    for block in BLOCKS:
        data = encode_symbols_from(symbols, _sliced(means, scales), family=family, block=block)
        assert data == ref, block
        out = decode_symbols_from(ref, symbols.size, _sliced(means, scales), family=family, block=block)
        assert out.dtype == np.int32 and np.array_equal(out, symbols), block
    assert np.array_equal(decode_symbols(ref, means, scales, family=family), symbols)


def test_symbol_coder_blocks_refuse_alike():
    means, scales, symbols = _params(100)
    bad = means.copy()
    bad[5] = 2.0**31  # a mean out of range in the first block, a NaN in a later one: NaN is named
    bad[90] = np.nan
    for block in BLOCKS:
        with pytest.raises(Exception, match="finite"):
            encode_symbols_from(symbols, _sliced(bad, scales), block=block)
    bad[90] = 0.0
    for block in BLOCKS:
        with pytest.raises(Exception, match="exceeds"):
            decode_symbols_from(b"\0" * 8, symbols.size, _sliced(bad, scales), block=block)


def test_snap_and_guard_blocks_identical():
    means, scales, _ = _params(700, seed=1)
    ref, guard = snap_for_encoder(means, scales)
    assert len(guard) > 4  # the guard lists elements
    assert encode_guard(means, scales) == guard
    for block in BLOCKS:
        snapped, g = snap_blocks(means.size, _sliced(means, scales), block=block)
        assert g == guard, block
        assert np.array_equal(snapped.mean_idx, ref.mean_idx) and np.array_equal(snapped.scale_idx, ref.scale_idx)
        # the decoder's side, with its own values a hair away: the guard decides
        near_m, near_s = means * (1 + 1e-14), scales * (1 - 1e-14)
        dec = apply_guard_blocks(means.size, _sliced(near_m, near_s), guard, block=block)
        assert np.array_equal(dec.mean_idx, ref.mean_idx) and np.array_equal(dec.scale_idx, ref.scale_idx)
        whole = apply_guard(near_m, near_s, guard)
        assert np.array_equal(whole.mean_idx, dec.mean_idx) and np.array_equal(whole.scale_idx, dec.scale_idx)


def test_steps_blocks_identical(monkeypatch):
    rng = np.random.default_rng(2)
    q = np.exp(rng.uniform(-12, 6, 300))
    index, guard = snap_steps(q, 1.0)
    values = step_values(index, 1.0)
    for block in (1, 7):
        monkeypatch.setattr(exact_params, "BLOCK", block)
        i2, g2 = snap_steps(q, 1.0)
        assert g2 == guard and np.array_equal(i2, index)
        assert np.array_equal(steps_from_guard(q * (1 + 1e-14), 1.0, guard), index)
        assert np.array_equal(step_values(index.reshape(30, 10).astype(np.int16), 1.0), values.reshape(30, 10))


def test_steps_with_a_base_per_element_blocks_identical(monkeypatch):
    """The anchor codecs give each element its channel's base: blocks must slice it with the steps
    (a model of more than one block's coded elements, ~100k anchors, crashed here)."""
    rng = np.random.default_rng(3)
    q = np.exp(rng.uniform(-12, 6, 300))
    base = np.exp(rng.uniform(-3, 1, 300))
    index, guard = snap_steps(q, base)
    values = step_values(index, base)
    monkeypatch.setattr(exact_params, "BLOCK", 7)
    i2, g2 = snap_steps(q, base)
    assert g2 == guard and np.array_equal(i2, index) and np.array_equal(step_values(index, base), values)
    assert np.array_equal(steps_from_guard(q * (1 + 1e-14), base, guard), index)
    assert np.array_equal(index, snap_steps(q / base, 1.0)[0])  # each element on its own base's grid


@pytest.mark.parametrize("shifted", [False, True])
@pytest.mark.parametrize("family", ["gaussian", "laplace", "uniform"])
def test_streams_blocks_identical(monkeypatch, family, shifted):
    rng = np.random.default_rng(3)
    n = 333
    q = np.exp(rng.uniform(-4, 1, n))
    mean = rng.normal(0, 2, n)
    scale = np.exp(rng.uniform(-3, 2, n))
    values = mean + scale * rng.standard_normal(n)
    half = 3.0 if family == "uniform" else None

    def run():
        data, dec = streams.encode_values(values, mean, scale, q, b"guard", family, shifted, half)
        _, rest = streams.split(data, "test")
        return data, dec, streams.decode_values(rest, mean, scale, q, "test", family, shifted, half)

    monkeypatch.setattr(exact_params, "BLOCK", WHOLE)
    ref = run()
    assert np.array_equal(ref[1], ref[2])
    for block in (1, 5, 64):
        monkeypatch.setattr(exact_params, "BLOCK", block)
        data, dec, back = run()
        assert data == ref[0] and np.array_equal(dec, ref[1]) and np.array_equal(back, ref[2])


def test_run_blocks_is_one_call():
    import torch

    from hemgs.coding.exact_params import run_deterministic

    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 6)).double()
    x = torch.randn(1000, 4, dtype=torch.float64)
    one = run_deterministic(net, x, chunk=256).numpy()
    blocks = _run_blocks(net, lambda b: x[b], 1000, 256)
    assert blocks.dtype == one.dtype and np.array_equal(blocks, one)
