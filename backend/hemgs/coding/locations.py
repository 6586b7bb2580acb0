"""Lossless coding of anchor locations: unique integer voxel coordinates, 16 bits per axis.

An occupancy octree, written here by hand (no library codes octrees with constriction): level by
level from the root, each node's 8 child-occupancy bits are coded as binary decisions with
constriction's ANS coder. Each decision's probability comes from adaptive counts in a context:
- the child's position j (0..7) and how many of the node's children before j are occupied;
- how many of the node's 3 face-neighbours adjacent to that child's octant are occupied, and
  how many of its 6 face-neighbours are (both known: a whole level is decoded before the next).
The last child of a node with no occupied child yet must be occupied and is not coded.

Adaptation is backward and vectorized: each level's nodes are split into a few contiguous
batches of growing size; all nodes of a batch are coded with the counts gathered before it, in
one call per child position, and the counts (integers, so every machine computes the same
probabilities) are updated after it. Counts are halved at each new level to follow the change
of statistics with depth. No model is stored in the stream.

Stream layout: u8 version (1), u8 depth D (bit length of the largest coordinate), u32 anchor
count N, then the ANS words (u32, little-endian). Decode order is Morton (Z-order) of the coords.
"""

from __future__ import annotations

import struct

import constriction
import numpy as np

from ..errors import FormatError, InputError
from .bits import ans_decoder

_VERSION = 1
_HEAD = struct.Struct("<BBI")
MAX_BITS = 16
MAX_ANCHORS = 1 << 26
_BATCH_EDGES = (0.0, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)  # within a level, by node rank
_P_FLOOR = 2.0**-10  # probabilities clamped to [floor, 1-floor]: bounds the cost of a surprise
# ...and with it the least cost of a coded decision, which caps what a stream of a given size
# can honestly hold: N <= 8 * bytes / (least bits per decision) (see decode_locations).
_MIN_BITS_PER_DECISION = -np.log2(1.0 - _P_FLOOR)
_N_CTX = 8 * 9 * 4 * 7


def _spread(v: np.ndarray) -> np.ndarray:
    """Insert two zero bits between the bits of each (<= 21-bit) value."""
    v = v.astype(np.uint64) & np.uint64(0x1FFFFF)
    v = (v | (v << np.uint64(32))) & np.uint64(0x1F00000000FFFF)
    v = (v | (v << np.uint64(16))) & np.uint64(0x1F0000FF0000FF)
    v = (v | (v << np.uint64(8))) & np.uint64(0x100F00F00F00F00F)
    v = (v | (v << np.uint64(4))) & np.uint64(0x10C30C30C30C30C3)
    v = (v | (v << np.uint64(2))) & np.uint64(0x1249249249249249)
    return v


def _compact(v: np.ndarray) -> np.ndarray:
    v = v & np.uint64(0x1249249249249249)
    v = (v ^ (v >> np.uint64(2))) & np.uint64(0x10C30C30C30C30C3)
    v = (v ^ (v >> np.uint64(4))) & np.uint64(0x100F00F00F00F00F)
    v = (v ^ (v >> np.uint64(8))) & np.uint64(0x1F0000FF0000FF)
    v = (v ^ (v >> np.uint64(16))) & np.uint64(0x1F00000000FFFF)
    v = (v ^ (v >> np.uint64(32))) & np.uint64(0x1FFFFF)
    return v


def morton(coords: np.ndarray) -> np.ndarray:
    """Morton code (x bit above y above z at each level) of (N,3) non-negative integer coords."""
    c = np.asarray(coords)
    return (_spread(c[:, 0]) << np.uint64(2)) | (_spread(c[:, 1]) << np.uint64(1)) | _spread(c[:, 2])


def unmorton(codes: np.ndarray) -> np.ndarray:
    """Inverse of `morton`: (N,3) int64 coords."""
    codes = np.asarray(codes, dtype=np.uint64)
    return np.stack([_compact(codes >> np.uint64(2)), _compact(codes >> np.uint64(1)), _compact(codes)], axis=1
                    ).astype(np.int64)


def _face_neighbours(keys: np.ndarray, level: int) -> np.ndarray:
    """(M,6) bool: which face-neighbours (-x,+x,-y,+y,-z,+z) of each node are occupied.

    Neighbour codes come from Morton arithmetic (add/subtract 1 within one axis's bits, carrying
    through the other axes' bits), which avoids de-interleaving the codes.
    """
    out = np.zeros((keys.size, 6), dtype=bool)
    if level == 0:
        return out
    ones = _spread(np.array([(1 << level) - 1], dtype=np.uint64))[0]
    for axis in range(3):
        a = ones << np.uint64(2 - axis)  # x is the highest bit of each triple
        na = ~a
        own = keys & a
        rest = keys & na
        for k, (nk, valid) in enumerate((
            ((((own - np.uint64(1)) & a) | rest), own != 0),
            ((((keys | na) + np.uint64(1)) & a) | rest, own != a),
        )):
            pos = np.minimum(np.searchsorted(keys, nk), keys.size - 1)
            out[:, 2 * axis + k] = valid & (keys[pos] == nk)
    return out


def _walk(depth: int, leaf_codes: np.ndarray | None, code_pass, max_nodes: int) -> np.ndarray:
    """Visit the octree's binary decisions in decode order; shared by encoder and decoder.

    `code_pass(p1, bits_or_None)` codes (encoder: `bits` given) or decodes (decoder) one batch of
    decisions with probabilities `p1` of a 1 and returns the bits. Returns the leaf Morton codes.
    """
    c0 = np.zeros(_N_CTX, dtype=np.int64)
    c1 = np.zeros(_N_CTX, dtype=np.int64)
    keys = np.zeros(1, dtype=np.uint64)
    for level in range(depth):
        c0 >>= 1
        c1 >>= 1
        m = keys.size
        nb = _face_neighbours(keys, level)
        total6 = nb.sum(axis=1)
        if leaf_codes is not None:
            shift = np.uint64(3 * (depth - level - 1))
            child = leaf_codes >> shift
            # Leaves are sorted, so their prefixes are grouped by node in node order.
            parent_pos = np.searchsorted(keys, child >> np.uint64(3))
            true_occ = np.zeros(m, dtype=np.int64)
            np.bitwise_or.at(true_occ, parent_pos, np.left_shift(1, (child & np.uint64(7)).astype(np.int64)))
        occ = np.zeros(m, dtype=np.int64)
        edges = sorted({int(round(f * m)) for f in _BATCH_EDGES})
        for a, b in zip(edges[:-1], edges[1:]):
            prev = np.zeros(b - a, dtype=np.int64)
            for j in range(8):
                adj = nb[a:b, 0 + (j >> 2 & 1)].astype(np.int64) + nb[a:b, 2 + (j >> 1 & 1)] + nb[a:b, 4 + (j & 1)]
                ctx = ((j * 9 + prev) * 4 + adj) * 7 + total6[a:b]
                coded = ~((j == 7) & (prev == 0))  # an occupied node has at least one child
                cc = ctx[coded]
                tot = c0[cc] + c1[cc]
                p1 = np.clip((2 * c1[cc] + 1) / (2 * tot + 2), _P_FLOOR, 1 - _P_FLOOR)
                truth = None if leaf_codes is None else (true_occ[a:b][coded] >> j) & 1
                got = np.asarray(code_pass(p1, truth), dtype=np.int64)
                bits = np.ones(b - a, dtype=np.int64)
                bits[coded] = got
                c1 += np.bincount(cc[got == 1], minlength=_N_CTX)
                c0 += np.bincount(cc[got == 0], minlength=_N_CTX)
                prev += bits
                occ[a:b] |= bits << j
        rows, cols = np.nonzero((occ[:, None] >> np.arange(8)) & 1)
        if rows.size > max_nodes:
            raise FormatError(f"location stream: level {level + 1} has {rows.size} nodes for {max_nodes} anchors")
        keys = (keys[rows] << np.uint64(3)) | cols.astype(np.uint64)
    return keys


def encode_locations(coords) -> tuple[bytes, np.ndarray]:
    """Code unique (N,3) voxel coordinates in [0, 65535] losslessly.

    Returns (data, order): `coords[order]` is the order `decode_locations` returns them in
    (Morton order), the order in which the attribute streams must be coded.
    """
    c = np.asarray(coords)
    if c.ndim != 2 or c.shape[1] != 3:
        raise InputError(f"encode_locations: coords must be (N,3), got shape {c.shape}")
    if c.size and not np.issubdtype(c.dtype, np.integer):
        raise InputError(f"encode_locations: coords must be integers, got {c.dtype}")
    c = c.astype(np.int64)
    n = c.shape[0]
    if n > MAX_ANCHORS:
        raise InputError(f"encode_locations: {n} anchors exceeds the limit of {MAX_ANCHORS}")
    if n and (c.min() < 0 or c.max() >= 1 << MAX_BITS):
        raise InputError(f"encode_locations: coordinates must lie in [0, {(1 << MAX_BITS) - 1}]")
    codes = morton(c)
    order = np.argsort(codes, kind="stable")
    codes = codes[order]
    if n > 1 and (np.diff(codes) == 0).any():
        raise InputError(f"encode_locations: {int((np.diff(codes) == 0).sum())} duplicate coordinates")
    depth = int(c.max()).bit_length() if n else 0
    passes: list[tuple[np.ndarray, np.ndarray]] = []

    def record(p1, bits):
        passes.append((p1, bits.astype(np.int32)))
        return bits

    if n:
        _walk(depth, codes, record, n)
    coder = constriction.stream.stack.AnsCoder()
    family = constriction.stream.model.Bernoulli(perfect=False)
    for p1, bits in reversed(passes):  # ANS is a stack: the first decoded pass goes in last
        if bits.size:
            coder.encode_reverse(bits, family, p1)
    words = coder.get_compressed() if passes else np.zeros(0, dtype=np.uint32)
    data = _HEAD.pack(_VERSION, depth, n) + np.asarray(words, dtype="<u4").tobytes()
    return data, order


def decode_locations(data: bytes, max_anchors: int | None = None) -> np.ndarray:
    """Inverse of `encode_locations`: (N,3) uint16 coordinates in Morton order.

    `max_anchors` (the count the caller expects) refuses a stream claiming more before decoding.
    """
    data = bytes(data)
    if len(data) < _HEAD.size:
        raise FormatError("location stream: truncated header")
    version, depth, n = _HEAD.unpack_from(data)
    if version != _VERSION:
        raise FormatError(f"location stream: unknown version {version}")
    if depth > MAX_BITS:
        raise FormatError(f"location stream: depth {depth} exceeds {MAX_BITS} bits")
    body = data[_HEAD.size:]
    if len(body) % 4:
        raise FormatError("location stream: ANS payload is not whole 32-bit words")
    if n == 0:
        if depth or body:
            raise FormatError("location stream: data present for zero anchors")
        return np.zeros((0, 3), dtype=np.uint16)
    # Each anchor costs at least one coded decision at the last level (unless depth is 0), so
    # the count is bounded by the data size: time and memory stay bounded on corrupt data.
    cap = 1 if depth == 0 else int(8 * len(body) / _MIN_BITS_PER_DECISION) + 8
    if n > min(cap, MAX_ANCHORS):
        raise FormatError(f"location stream: {n} anchors cannot fit in {len(data)} bytes")
    if max_anchors is not None and n > max_anchors:
        raise FormatError(f"location stream: holds {n} anchors, the header says {max_anchors}")
    coder = ans_decoder(np.frombuffer(body, dtype="<u4"), "location stream")
    family = constriction.stream.model.Bernoulli(perfect=False)

    def decode(p1, _):
        if p1.size == 0:
            return np.zeros(0, dtype=np.int64)
        try:
            return coder.decode(family, p1)
        except Exception as exc:  # constriction's own error on a malformed stream
            raise FormatError(f"location stream: corrupt ANS data ({exc})") from None

    keys = _walk(depth, None, decode, n)
    if keys.size != n:
        raise FormatError(f"location stream: decoded {keys.size} anchors, the header says {n}")
    return unmorton(keys).astype(np.uint16)
