"""Small byte-level codes shared by the coders: binary arrays and unsigned varints.

`encode_bits` codes a 0/1 array (the ±1 hash-grid parameters, offset masks) with one stored
probability and constriction's ANS coder: n·H(p) bits plus a few bytes. The varint helpers
(LEB128, vectorized with numpy) serialize index lists and side streams compactly.
"""

from __future__ import annotations

import struct

import constriction
import numpy as np

from ..errors import FormatError, InputError

_P_BITS = 16  # the stored probability of a 1, in units of 2^-16


def _words_to_bytes(words: np.ndarray) -> bytes:
    return np.asarray(words, dtype="<u4").tobytes()


def _bytes_to_words(data: bytes, what: str) -> np.ndarray:
    if len(data) % 4:
        raise FormatError(f"{what}: compressed stream length {len(data)} is not a multiple of 4")
    return np.frombuffer(data, dtype="<u4").astype(np.uint32)


def ans_decoder(words: np.ndarray, what: str):
    """An ANS decoder over untrusted words; constriction's own refusal becomes a FormatError."""
    try:
        return constriction.stream.stack.AnsCoder(np.asarray(words, dtype=np.uint32))
    except Exception as exc:  # constriction raises ValueError (e.g. a stream ending in a zero word)
        raise FormatError(f"{what}: corrupt ANS data ({exc})") from None


def encode_bits(bits) -> bytes:
    """Code a binary array (any shape; values 0/1 or bool) losslessly; decode with `decode_bits`.

    Layout: u16 probability of a 1 (units of 2^-16, clamped to [1, 65535]) then the ANS words.
    """
    arr = np.asarray(bits).reshape(-1)
    if arr.size and not np.isin(arr, (0, 1)).all():
        raise InputError("encode_bits: values must be 0 or 1")
    arr = arr.astype(np.int32)
    n = arr.size
    ones = int(arr.sum())
    q = int(round(ones / n * (1 << _P_BITS))) if n else 0
    q = min(max(q, 1), (1 << _P_BITS) - 1)
    head = struct.pack("<H", q)
    if n == 0 or ones in (0, n):
        # A constant array needs no payload at all; q says which constant.
        return head
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(arr, constriction.stream.model.Bernoulli(q / (1 << _P_BITS), perfect=False))
    return head + _words_to_bytes(coder.get_compressed())


def decode_bits(data: bytes, n: int) -> np.ndarray:
    """Inverse of `encode_bits`: a uint8 array of `n` zeros and ones."""
    n = int(n)
    if n < 0:
        raise InputError(f"decode_bits: negative count {n}")
    if len(data) < 2:
        raise FormatError("bit stream: truncated (no probability)")
    (q,) = struct.unpack_from("<H", data)
    if not 1 <= q < (1 << _P_BITS):
        raise FormatError(f"bit stream: invalid probability {q}")
    payload = data[2:]
    if not payload:
        # The encoder only omits the payload for constant (or empty) arrays.
        return np.full(n, 1 if q > (1 << (_P_BITS - 1)) else 0, dtype=np.uint8)
    # ANS spends at least ~H(p) >= -log2(max(p,1-p)) bits per symbol: cap n by the data size
    # so a corrupt count cannot make us decode (and allocate) without bound.
    p = q / (1 << _P_BITS)
    min_bits = -np.log2(max(p, 1 - p))
    if n * min_bits > 8 * len(payload) + 64:
        raise FormatError(f"bit stream: {n} bits cannot fit in {len(payload)} bytes")
    words = _bytes_to_words(payload, "bit stream")
    coder = ans_decoder(words, "bit stream")
    try:
        out = coder.decode(constriction.stream.model.Bernoulli(p, perfect=False), n)
    except Exception as exc:  # constriction raises its own errors on malformed streams
        raise FormatError(f"bit stream: corrupt ({exc})") from None
    return out.astype(np.uint8)


# ---- unsigned LEB128 varints, vectorized --------------------------------------------------------
def encode_varints(values) -> bytes:
    """Unsigned LEB128 of each value (7 bits a byte, high bit = more follows), concatenated."""
    v = np.asarray(values, dtype=np.int64).reshape(-1)
    if v.size == 0:
        return b""
    if (v < 0).any():
        raise InputError("encode_varints: values must be non-negative")
    v = v.astype(np.uint64)
    nbytes = np.ones(v.size, dtype=np.int64)
    for k in range(1, 10):
        nbytes += (v >> np.uint64(7 * k)) > 0
    total = int(nbytes.sum())
    starts = np.concatenate(([0], np.cumsum(nbytes)[:-1]))
    out = np.zeros(total, dtype=np.uint8)
    for k in range(int(nbytes.max())):
        sel = nbytes > k
        byte = ((v[sel] >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8)
        byte |= np.where(nbytes[sel] > k + 1, 0x80, 0).astype(np.uint8)
        out[starts[sel] + k] = byte
    return out.tobytes()


def decode_varints(data: bytes, count: int, what: str = "varint stream") -> tuple[np.ndarray, int]:
    """Read `count` varints from the start of `data`: (uint64 values, bytes consumed)."""
    count = int(count)
    buf = np.frombuffer(data, dtype=np.uint8)
    if count == 0:
        return np.zeros(0, dtype=np.uint64), 0
    ends = np.flatnonzero(buf < 0x80)
    if ends.size < count:
        raise FormatError(f"{what}: truncated ({count} values expected, {ends.size} found)")
    ends = ends[:count]
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > 9:  # 9 x 7 = 63 bits: anything longer is not one of our values
        raise FormatError(f"{what}: varint longer than 9 bytes")
    vals = np.zeros(count, dtype=np.uint64)
    for k in range(int(lengths.max())):
        sel = lengths > k
        vals[sel] |= (buf[starts[sel] + k].astype(np.uint64) & np.uint64(0x7F)) << np.uint64(7 * k)
    return vals, int(ends[-1]) + 1
