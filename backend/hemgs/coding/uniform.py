"""Integers uniform over per-element ranges: symbol j of element i lies in [0, sizes[i]).

For values whose range the decoder knows and inside which nothing predicts them better than
chance: anchor-free mode's position residuals (within their voxel) and its SH repeat indices
(within the palette). Each costs log2(size) bits, exactly.

constriction's Uniform model takes 2 <= size <= 2^24 and panics (an uncatchable Rust assertion)
outside that, so: an element of size 1 carries no information and is not coded; a size above
2^24 is coded as two digits, j // 2^24 and j % 2^24 (sizes up to 2^48). Order in the stream:
the elements of size 2..2^24 in their order, then the high digits, then the low digits. With no
size above 2^24 this is one constriction call, byte for byte what anchor-free files before this
module held for their repeat indices.
"""

from __future__ import annotations

import constriction
import numpy as np

from ..errors import FormatError, InputError
from .bits import _bytes_to_words, _words_to_bytes, ans_decoder

DIGIT = 1 << 24  # constriction's largest uniform range at its default 24-bit precision
MAX_SIZE = DIGIT * DIGIT


def _layout(sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(the coded elements of one digit, those of two digits, the digit sizes in stream order)."""
    one = np.flatnonzero((sizes >= 2) & (sizes <= DIGIT))
    two = np.flatnonzero(sizes > DIGIT)
    high = -(-sizes[two] // DIGIT)  # ceil: >= 2 for sizes above one digit
    return one, two, np.concatenate([sizes[one], high, np.full(two.size, DIGIT, dtype=np.int64)])


def _check_sizes(sizes, what: str, error) -> np.ndarray:
    sizes = np.asarray(sizes, dtype=np.int64).reshape(-1)
    if sizes.size and (sizes.min() < 1 or sizes.max() > MAX_SIZE):
        raise error(f"{what}: a uniform range of size {int(sizes.min() if sizes.min() < 1 else sizes.max())} "
                    f"(must be 1..2^48)")
    return sizes


def encode_uniform(symbols, sizes, what: str = "uniform symbols") -> bytes:
    """ANS words (little-endian u32) coding each symbols[i] uniformly in [0, sizes[i])."""
    sizes = _check_sizes(sizes, what, InputError)
    sym = np.asarray(symbols, dtype=np.int64).reshape(-1)
    if sym.size != sizes.size:
        raise InputError(f"{what}: {sym.size} symbols but {sizes.size} sizes")
    if sym.size and ((sym < 0).any() or (sym >= sizes).any()):
        raise InputError(f"{what}: a symbol lies outside its range")
    one, two, digit_sizes = _layout(sizes)
    digits = np.concatenate([sym[one], sym[two] // DIGIT, sym[two] % DIGIT])
    if digits.size == 0:
        return b""
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(digits.astype(np.int32), constriction.stream.model.Uniform(), digit_sizes.astype(np.int32))
    return _words_to_bytes(coder.get_compressed())


def decode_uniform(data: bytes, sizes, what: str = "uniform symbols") -> np.ndarray:
    """Inverse of `encode_uniform` given the same sizes: an int64 array. Refuses (FormatError) data
    that cannot hold that many symbols and digits that fall outside their element's range."""
    sizes = _check_sizes(sizes, what, FormatError)
    one, two, digit_sizes = _layout(sizes)
    out = np.zeros(sizes.size, dtype=np.int64)
    if digit_sizes.size == 0:
        if data:
            raise FormatError(f"{what}: {len(data)} bytes where no symbol is coded")
        return out
    # Each digit costs log2(its size) bits: a lying count cannot make us decode without bound.
    if np.log2(digit_sizes.astype(np.float64)).sum() > 8 * len(data) + 64:
        raise FormatError(f"{what}: {sizes.size} symbols cannot fit in {len(data)} bytes")
    coder = ans_decoder(_bytes_to_words(data, what), what)
    try:
        digits = np.asarray(coder.decode(constriction.stream.model.Uniform(), digit_sizes.astype(np.int32)),
                            dtype=np.int64)
    except Exception as exc:  # constriction's own errors on malformed streams
        raise FormatError(f"{what}: corrupt ANS data ({exc})") from None
    out[one] = digits[:one.size]
    out[two] = digits[one.size:one.size + two.size] * DIGIT + digits[one.size + two.size:]
    if (out >= sizes).any():
        raise FormatError(f"{what}: a decoded symbol lies outside its range (corrupt data)")
    return out
