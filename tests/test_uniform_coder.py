"""Integers uniform over per-element ranges (coding/uniform.py) and the "uniform" stream family
(codec/streams.py): exact round trips at every size constriction cannot take directly, the cost
log2(size), bad input and bad streams refused by name."""

import constriction
import numpy as np
import pytest

from conftest import DEMO_PLY
from hemgs.codec import streams
from hemgs.coding.bits import _words_to_bytes
from hemgs.coding.uniform import DIGIT, decode_uniform, encode_uniform
from hemgs.errors import FormatError, InputError
from hemgs.io import load_scene


def test_round_trip_at_every_kind_of_size_and_cost_log2_size():
    rng = np.random.default_rng(0)
    sizes = np.concatenate([np.ones(50, np.int64), rng.integers(2, 1000, 5000), [2, DIGIT, DIGIT + 1, 3 * DIGIT + 7,
                                                                                  1 << 40, 1 << 48]])
    sym = (rng.random(sizes.size) * sizes).astype(np.int64)
    sym[-4:] = sizes[-4:] - 1  # the largest symbol of the two-digit sizes
    data = encode_uniform(sym, sizes)
    np.testing.assert_array_equal(decode_uniform(data, sizes), sym)
    ideal = np.log2(sizes.astype(np.float64)).sum() / 8
    assert ideal <= len(data) <= ideal + 16


def test_sizes_constriction_takes_give_its_own_bytes():
    """Anchor-free files before this module coded their repeat indices with one constriction call:
    those bytes must not change."""
    rng = np.random.default_rng(1)
    sizes = np.full(3000, 65529, np.int64)
    sym = rng.integers(0, 65529, sizes.size)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(sym.astype(np.int32), constriction.stream.model.Uniform(), sizes.astype(np.int32))
    assert encode_uniform(sym, sizes) == _words_to_bytes(coder.get_compressed())


def test_nothing_to_code_gives_no_bytes():
    assert encode_uniform(np.zeros(5), np.ones(5)) == b""
    np.testing.assert_array_equal(decode_uniform(b"", np.ones(5)), np.zeros(5))
    with pytest.raises(FormatError, match="where no symbol"):
        decode_uniform(b"\0\0\0\1", np.ones(5))


def test_bad_symbols_sizes_and_streams_are_refused():
    with pytest.raises(InputError, match="outside its range"):
        encode_uniform([5], [5])
    with pytest.raises(InputError, match="outside its range"):
        encode_uniform([-1], [5])
    with pytest.raises(InputError, match="size"):
        encode_uniform([0], [0])
    with pytest.raises(FormatError, match="size"):
        decode_uniform(b"", [1 << 49])
    sizes = np.full(1000, 1000, np.int64)
    data = encode_uniform(np.arange(1000) % 1000, sizes)
    with pytest.raises(FormatError, match="cannot fit"):
        decode_uniform(data[:100], sizes)
    with pytest.raises(FormatError, match="multiple of 4"):
        decode_uniform(data[:-1], sizes)
    # a high digit that lands past the element's range
    big = np.array([DIGIT + 1], np.int64)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(np.array([1, 5], np.int32), constriction.stream.model.Uniform(), np.array([2, DIGIT], np.int32))
    with pytest.raises(FormatError, match="outside its range"):
        decode_uniform(_words_to_bytes(coder.get_compressed()), big)


def _positions():
    """Real values with a known bound: the demo scene's x coordinates around their mean, within ±h."""
    x = load_scene(DEMO_PLY).means[:, 0].astype(np.float64)
    x = x - x.mean()
    return x, float(np.abs(x).max())


@pytest.mark.parametrize("shifted", [False, True])
def test_uniform_stream_round_trip_within_its_range(shifted):
    x, h = _positions()
    rng = np.random.default_rng(2)
    q = np.exp(rng.uniform(np.log(h / 300), np.log(h / 3), x.size))
    mean = rng.normal(0.0, h / 10, x.size)
    scale = np.full(x.size, h)
    data, dec = streams.encode_values(x, mean, scale, q, b"", "uniform", shifted, h)
    _, rest = streams.split(data, "x")
    out = streams.decode_values(rest, mean, scale, q, "x", "uniform", shifted, h)
    np.testing.assert_array_equal(out, dec)
    assert (np.abs(dec - x) <= 0.5 * q * (1 + 1e-9)).all()  # nearest step, never clipped inward by more
    assert (np.abs(dec) <= h + 0.5 * q * (1 + 1e-9)).all()
    # the cost: log2 of the steps in range, about log2(2h/q + 1) each
    ideal = np.log2(2 * h / q + 1).sum() / 8
    stream_bytes = len(rest[3])
    assert 0.97 * ideal < stream_bytes < 1.03 * ideal + 16


def test_uniform_stream_clips_values_beyond_its_range_and_refuses_a_bad_range():
    x = np.array([-3.0, 0.0, 3.0])
    q = np.full(3, 0.5)
    data, dec = streams.encode_values(x, np.zeros(3), q, q, b"", "uniform", True, 1.0)
    np.testing.assert_array_equal(dec, [-1.0, 0.0, 1.0])
    with pytest.raises(InputError, match="half range"):
        streams.encode_values(x, np.zeros(3), np.ones(3), q, b"", "uniform", True, float("nan"))
    with pytest.raises(InputError, match="symbol range"):
        streams.encode_values(x, np.zeros(3), np.ones(3), np.full(3, 1e-12), b"", "uniform", True, 1e3)
    _, rest = streams.split(data, "x")
    tiny = np.full(3, 1e-12)  # the same parameters in steps, but steps a lying file could make
    with pytest.raises(FormatError, match="symbol range"):
        streams.decode_values(rest, np.zeros(3), tiny, tiny, "x", "uniform", True, 1e3)
