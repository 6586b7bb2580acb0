"""Lossless anchor-location coding (occupancy octree) and the binary-array coder."""

import time

import numpy as np
import plyfile
import pytest

from conftest import DEMO_PLY, shared_file
from hemgs.coding.bits import decode_bits, decode_varints, encode_bits, encode_varints
from hemgs.coding.locations import decode_locations, encode_locations, morton, unmorton
from hemgs.errors import FormatError, HemgsError, InputError


def voxel_coords(path, frac):
    """Unique voxel coordinates of a real scene's Gaussian centres, voxel = frac x scene extent."""
    v = plyfile.PlyData.read(str(path))["vertex"]
    xyz = np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float64)
    lo = xyz.min(0)
    size = frac * (xyz.max(0) - lo).max()
    return np.unique(np.floor((xyz - lo) / size).astype(np.int64), axis=0).astype(np.uint16)


@pytest.mark.parametrize("frac", [0.002, 0.01])
def test_round_trip_demo_scene(frac):
    coords = voxel_coords(DEMO_PLY, frac)
    rng = np.random.default_rng(0)
    coords = coords[rng.permutation(len(coords))]  # the input order must not matter
    data, order = encode_locations(coords)
    out = decode_locations(data)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, coords[order])
    assert sorted(order.tolist()) == list(range(len(coords)))
    depth = int(coords.max()).bit_length()
    assert len(data) * 8 / len(coords) < 0.4 * 3 * depth  # far below raw bits at this depth


@pytest.mark.data
def test_real_scene_rate_and_speed():
    coords = voxel_coords(shared_file("playbot_lod2.ply"), 0.005)
    assert len(coords) > 70_000
    t0 = time.perf_counter()
    data, order = encode_locations(coords)
    t1 = time.perf_counter()
    out = decode_locations(data)
    t2 = time.perf_counter()
    np.testing.assert_array_equal(out, coords[order])
    bpa = len(data) * 8 / len(coords)
    assert bpa < 6, bpa  # vs 48 raw bits (24 at this depth)
    assert t1 - t0 < 3 and t2 - t1 < 3


def test_full_16_bit_range_and_tiny_inputs():
    for pts in ([[0, 0, 0]], [[65535, 65535, 65535]], [[0, 0, 0], [65535, 0, 65535]], [[5, 9, 1]]):
        c = np.array(pts, dtype=np.uint16)
        data, order = encode_locations(c)
        np.testing.assert_array_equal(decode_locations(data), c[order])
    data, order = encode_locations(np.zeros((0, 3), np.uint16))
    assert decode_locations(data).shape == (0, 3) and order.size == 0
    rng = np.random.default_rng(9)
    c = np.unique(rng.integers(0, 65536, (3000, 3)), axis=0)  # sparse and random: the worst case
    data, order = encode_locations(c)
    np.testing.assert_array_equal(decode_locations(data), c[order])
    assert len(data) * 8 / len(c) < 48


def test_morton_inverse():
    c = np.random.default_rng(1).integers(0, 65536, (1000, 3))
    np.testing.assert_array_equal(unmorton(morton(c)), c)


@pytest.mark.parametrize("bad", [
    np.array([[1, 2, 3], [1, 2, 3]]),
    np.array([[0, 0, 65536]]),
    np.array([[0, -1, 0]]),
    np.array([[0.5, 0, 0]]),
    np.zeros((4, 2), dtype=np.int64),
])
def test_bad_input_refused(bad):
    with pytest.raises(InputError):
        encode_locations(bad)


def test_damaged_streams_fail_cleanly_and_fast():
    coords = voxel_coords(DEMO_PLY, 0.005)
    data, _ = encode_locations(coords)
    rng = np.random.default_rng(3)
    t0 = time.perf_counter()
    for cut in np.linspace(0, len(data) - 1, 30).astype(int):
        with pytest.raises(FormatError):
            decode_locations(data[:cut])  # too few words, or fewer anchors than the header says
    for _ in range(25):
        bad = bytearray(data)
        pos = int(rng.integers(0, len(data)))
        bad[pos] ^= 1 << int(rng.integers(0, 8))
        try:
            out = decode_locations(bytes(bad))
            assert out.shape == (len(coords), 3)
        except HemgsError:
            pass
    assert time.perf_counter() - t0 < 30
    # A header claiming a billion anchors in a few bytes is refused before any work.
    lie = bytes([1, 16]) + (10**9).to_bytes(4, "little") + b"\x00" * 8
    with pytest.raises(FormatError, match="cannot fit"):
        decode_locations(lie)
    with pytest.raises(FormatError, match="version"):
        decode_locations(bytes([9]) + data[1:])


# ---- bits.py -----------------------------------------------------------------------------------
def test_bits_round_trip_and_rate():
    rng = np.random.default_rng(0)
    for p in (0.5, 0.1, 0.003):
        b = (rng.random(100_000) < p).astype(np.uint8)
        data = encode_bits(b)
        np.testing.assert_array_equal(decode_bits(data, b.size), b)
        q = b.mean()
        h = -(q * np.log2(q) + (1 - q) * np.log2(1 - q)) * b.size / 8
        assert len(data) < 1.01 * h + 16
    signs = np.sign(rng.normal(size=(64, 8))) > 0  # a ±1 hash grid as booleans
    np.testing.assert_array_equal(decode_bits(encode_bits(signs), signs.size).reshape(signs.shape), signs)
    for const in (np.zeros(1000, np.uint8), np.ones(1000, np.uint8), np.zeros(0, np.uint8), np.ones(1, np.uint8)):
        data = encode_bits(const)
        assert len(data) == 2
        np.testing.assert_array_equal(decode_bits(data, const.size), const)


def test_bits_bad_input():
    with pytest.raises(InputError):
        encode_bits([0, 2])
    data = encode_bits((np.random.default_rng(1).random(5000) < 0.3).astype(np.uint8))
    with pytest.raises(FormatError):
        decode_bits(data[:1], 5000)
    with pytest.raises(FormatError, match="cannot fit"):
        decode_bits(data, 10**9)
    for cut in range(2, len(data), max(1, len(data) // 50)):
        try:
            decode_bits(data[:cut], 5000)
        except HemgsError:
            pass


def test_varints():
    v = np.array([0, 1, 127, 128, 300, 2**32, 2**62], dtype=np.int64)
    data = encode_varints(v)
    out, used = decode_varints(data + b"\x05", v.size)
    assert out.tolist() == v.tolist() and used == len(data)
    with pytest.raises(FormatError):
        decode_varints(data[:-1], v.size)


def test_face_neighbours_match_brute_force():
    from hemgs.coding.locations import _face_neighbours

    rng = np.random.default_rng(0)
    dirs = [(-1, 0, 0), (1, 0, 0), (0, -1, 0), (0, 1, 0), (0, 0, -1), (0, 0, 1)]
    for level in (1, 3, 6):
        keys = np.unique(morton(rng.integers(0, 1 << level, (400, 3))))
        c = unmorton(keys)
        occupied = set(map(tuple, c.tolist()))
        expect = np.array([[tuple(np.add(p, d).tolist()) in occupied for d in dirs] for p in c])
        np.testing.assert_array_equal(_face_neighbours(keys, level), expect)
