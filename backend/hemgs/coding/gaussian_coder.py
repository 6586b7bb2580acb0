"""Entropy coding of integer symbols under per-element quantized Gaussians (constriction ANS), or
Laplacians (`family="laplace"`, same layout; `scales` is then still the standard deviation).

Symbols are already quantized (round(f/s)); `means`/`scales` are in symbol units and must be
*bit-identical* between encoder and decoder (see exact_params.py for how the codec ensures it).

How the range is kept tight without ever failing on a big value:
- each element is coded relative to c = rint(mean), so the model's mean lies in [-0.5, 0.5];
- elements are grouped by the half-width R of their alphabet [-R, R], the smallest power of two
  >= 8·std + 1 (tail mass beyond 8σ is ~1e-15, so a real Gaussian never escapes), one
  constriction QuantizedGaussian(-R, R) family per group, a group's elements coded in index order
  (in vectorized calls of up to BLOCK elements: one coder, so the same stream as one call; the
  elementwise work is done a block at a time too, `*_from`). A tight alphabet matters: constriction gives every symbol in the alphabet at
  least 2^-24 of probability, so a needlessly wide one taxes every well-predicted symbol;
- escape: a symbol outside [c-R, c+R] is coded as the boundary ±R, and its excess |d|-R goes to
  a side stream of varints (every boundary symbol has an entry, 0 for a true ±R).

Stream layout (little-endian): u32 byte length E of the escape stream, E bytes of varints, then
the ANS words (u32 each). Groups are decoded in increasing R.
"""

from __future__ import annotations

import struct

import constriction
import numpy as np
from scipy.special import ndtr

from ..errors import FormatError, InputError
from . import exact_params
from .bits import ans_decoder, decode_varints, encode_varints

MIN_SCALE = 0.05  # constriction needs std > 0; below 0.05 a centred bin already has p > 1 - 1e-6
TAIL_SIGMAS = 8.0
# A Laplacian's tail beyond kσ holds exp(-k·√2): 16σ leaves ~1e-10, as 8σ does for a Gaussian.
TAIL_SIGMAS_LAPLACE = 16.0
FAMILIES = ("gaussian", "laplace")
MAX_LOG2_RANGE = 18  # R <= 2^18: covers 8σ for σ up to 32768 symbol units
MAX_SYMBOL = 2**31 - 1  # decoded symbols are int32
MAX_MEAN = 2.0**30
_MIN_PROB = 2.0**-24  # constriction's default ANS precision: the least probability of any symbol


# Elements per block of the coders' elementwise work: exact_params.BLOCK, as for the exact path
# (codec/streams.py), so that their temporaries stay a few tens of MB at any size.
BLOCK = exact_params.BLOCK


def _blocks(n: int, block: int | None) -> list[slice]:
    return exact_params._blocks(n, block)  # None: exact_params.BLOCK, read at each call


def _array_params(means, scales, n: int, what: str):
    """`params(index) -> (means, scales)` over arrays given in full (the public functions' form)."""
    means = np.asarray(means).reshape(-1)
    scales = np.asarray(scales).reshape(-1)
    if means.size != n or scales.size != n:
        raise InputError(f"{what}: {n} symbols but {means.size} means and {scales.size} scales")
    return lambda i: (np.asarray(means[i], dtype=np.float64), np.asarray(scales[i], dtype=np.float64))


def _alphabets(params, n: int, family: str, what: str, block: int | None) -> np.ndarray:
    """Each element's log2 alphabet half-width (int8), a block at a time; refuses parameters as
    one pass over all of them would: non-finite ones first, then a mean out of range."""
    lg = np.empty(n, dtype=np.int8)
    too_big = False
    for b in _blocks(n, block):
        m, s = params(b)
        if not (np.isfinite(m).all() and np.isfinite(s).all()):
            raise InputError(f"{what}: means and scales must be finite")
        too_big = too_big or bool(np.abs(m).max() > MAX_MEAN)
        lg[b] = _group_log2(np.maximum(s, MIN_SCALE), family)
    if too_big:
        raise InputError(f"{what}: a mean exceeds {MAX_MEAN:g} symbol units")
    return lg


def _centred(params, index) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean - centre, std clamped to MIN_SCALE, centre = rint(mean)) of elements `index`."""
    m, s = params(index)
    centre = np.rint(m)
    return m - centre, np.maximum(s, MIN_SCALE), centre.astype(np.int64)


def _in_groups(lg: np.ndarray, block: int | None, reverse: bool = False):
    """(g, element indices) in the ANS order: groups by increasing g (decreasing with `reverse`,
    the encoder's stack order), each group's elements in index order in consecutive pieces of at
    most one block (reversed too): coding the pieces one after another is one call's result."""
    present = np.flatnonzero(np.bincount(lg, minlength=MAX_LOG2_RANGE + 1)) if lg.size else []
    blocks = _blocks(lg.size, block)
    for g in (present[::-1] if reverse else present):
        for b in (blocks[::-1] if reverse else blocks):
            idx = np.flatnonzero(lg[b] == g)
            if idx.size:
                yield int(g), idx + b.start


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise InputError(f"unknown symbol distribution {family!r}: expected one of {', '.join(FAMILIES)}")


def _model(family: str, r: int):
    """constriction's model over [-r, r] and how its scale parameter follows from the std."""
    if family == "laplace":
        return constriction.stream.model.QuantizedLaplace(-r, r), lambda sd: sd * _INV_SQRT2
    return constriction.stream.model.QuantizedGaussian(-r, r), lambda sd: sd


_INV_SQRT2 = 0.7071067811865476  # b = σ/√2 (a correctly rounded product: the same on every machine)


def _group_log2(scales: np.ndarray, family: str = "gaussian") -> np.ndarray:
    """log2 of each element's alphabet half-width R (deterministic: only float compares)."""
    need = (TAIL_SIGMAS_LAPLACE if family == "laplace" else TAIL_SIGMAS) * scales + 1.0
    lg = np.ceil(np.log2(need)).astype(np.int64)
    # Guard against a log2 off by one ulp at exact powers of two: fix with exact comparisons.
    lg = np.where(np.ldexp(1.0, lg - 1) >= need, lg - 1, lg)
    lg = np.where(np.ldexp(1.0, lg) < need, lg + 1, lg)
    return np.clip(lg, 1, MAX_LOG2_RANGE)


def encode_symbols(symbols, means, scales, *, max_abs: int = MAX_SYMBOL, family: str = "gaussian") -> bytes:
    """Code integer `symbols` under N(means, scales) quantized to unit bins; see the module doc.

    `max_abs` bounds |symbol| (int32 by default, what `decode_symbols` returns); out-of-range
    values in that bound are escaped, never refused.
    """
    sym = np.asarray(symbols)
    if sym.size and not np.issubdtype(sym.dtype, np.integer):
        raise InputError(f"encode_symbols: symbols must be integers, got {sym.dtype}")
    sym = sym.reshape(-1)
    return encode_symbols_from(sym, _array_params(means, scales, sym.size, "encode_symbols"),
                               max_abs=max_abs, family=family)


def encode_symbols_from(sym: np.ndarray, params, *, max_abs: int = MAX_SYMBOL, family: str = "gaussian",
                        block: int | None = None) -> bytes:
    """`encode_symbols` of integer `sym` (1-D) with the parameters of elements `index` given by
    `params(index) -> (means, scales)` (an index array or a slice), a block of elements at a time:
    the same bytes for every `block`, without the whole arrays' temporaries."""
    n = sym.size
    limit = min(int(max_abs), MAX_SYMBOL)
    for b in _blocks(n, block):
        if np.abs(sym[b].astype(np.int64)).max() > limit:
            raise InputError(f"encode_symbols: a symbol exceeds max_abs={max_abs}")
    lg = _alphabets(params, n, family, "encode_symbols", block)
    _check_family(family)
    coded = np.empty(n, dtype=np.int32)
    excess = []
    for b in _blocks(n, block):
        d = sym[b].astype(np.int64) - _centred(params, b)[2]
        half = np.left_shift(1, lg[b].astype(np.int64))
        c = np.clip(d, -half, half)
        at_edge = np.abs(c) == half
        excess.append(np.abs(d[at_edge]) - half[at_edge])
        coded[b] = c
    escapes = encode_varints(np.concatenate(excess) if excess else np.zeros(0, np.int64))

    coder = constriction.stream.stack.AnsCoder()
    # ANS is a stack: encode the group decoded last first, each group's elements last first.
    for g, idx in _in_groups(lg, block, reverse=True):
        model, param = _model(family, 1 << g)
        mu, sd, _ = _centred(params, idx)
        coder.encode_reverse(coded[idx], model, mu, param(sd))
    words = coder.get_compressed() if n else np.zeros(0, dtype=np.uint32)
    return struct.pack("<I", len(escapes)) + escapes + np.asarray(words, dtype="<u4").tobytes()


def decode_symbols(data: bytes, means, scales, *, max_abs: int = MAX_SYMBOL, family: str = "gaussian") -> np.ndarray:
    """Inverse of `encode_symbols` given the same means/scales: an int32 array."""
    n = np.asarray(means).size
    return decode_symbols_from(data, n, _array_params(means, scales, n, "decode_symbols"),
                               max_abs=max_abs, family=family)


def decode_symbols_from(data: bytes, n: int, params, *, max_abs: int = MAX_SYMBOL, family: str = "gaussian",
                        block: int | None = None) -> np.ndarray:
    """`decode_symbols` of `n` symbols with `params(index) -> (means, scales)` as in
    `encode_symbols_from`, a block at a time (the same symbols for every `block`)."""
    data = bytes(data)
    lg = _alphabets(params, n, family, "decode_symbols", block)
    if len(data) < 4:
        raise FormatError("symbol stream: truncated (no escape length)")
    (esc_len,) = struct.unpack_from("<I", data)
    if esc_len > len(data) - 4:
        raise FormatError(f"symbol stream: escape stream of {esc_len} bytes exceeds the data")
    esc = data[4:4 + esc_len]
    body = data[4 + esc_len:]
    if len(body) % 4:
        raise FormatError("symbol stream: ANS payload is not whole 32-bit words")
    if n == 0:
        if esc_len or body:
            raise FormatError("symbol stream: data present for zero symbols")
        return np.zeros(0, dtype=np.int32)
    _check_family(family)
    coder = ans_decoder(np.frombuffer(body, dtype="<u4"), "symbol stream")
    coded = np.empty(n, dtype=np.int32)
    try:
        for g, idx in _in_groups(lg, block):
            model, param = _model(family, 1 << g)
            mu, sd, _ = _centred(params, idx)
            coded[idx] = coder.decode(model, mu, param(sd))
    except Exception as exc:  # constriction's own error types on a malformed stream
        raise FormatError(f"symbol stream: corrupt ANS data ({exc})") from None
    blocks = _blocks(n, block)
    edges = sum(int((np.abs(coded[b]) == np.left_shift(1, lg[b].astype(np.int32))).sum()) for b in blocks)
    excess, used = decode_varints(esc, edges, "symbol escape stream")
    if used != len(esc):
        raise FormatError("symbol stream: unexpected bytes in the escape stream")
    if excess.size and excess.max() > 2 * MAX_SYMBOL:
        raise FormatError("symbol stream: escaped value out of range")
    out = np.empty(n, dtype=np.int32)
    limit, pos = min(int(max_abs), MAX_SYMBOL), 0
    for b in blocks:
        d = coded[b].astype(np.int64)
        half = np.left_shift(1, lg[b].astype(np.int64))
        at_edge = np.abs(d) == half
        k = int(at_edge.sum())
        d[at_edge] = np.sign(d[at_edge]) * (half[at_edge] + excess[pos:pos + k].astype(np.int64))
        pos += k
        o = d + _centred(params, b)[2]
        if o.size and np.abs(o).max() > limit:
            raise FormatError("symbol stream: a decoded symbol exceeds max_abs (corrupt data or wrong parameters)")
        out[b] = o
    return out


# Elements per block of estimate_bits' work: its temporaries stay a few tens of MB at any size.
BITS_BLOCK = BLOCK


def estimate_bits(symbols, means, scales, family: str = "gaussian") -> np.ndarray:
    """Ideal cost in bits of each symbol: -log2 of its Gaussian (or Laplacian) bin's probability mass.

    Uses the same std clamp as the coder and floors the mass at 2^-24 (constriction's least
    probability), so sum(estimate_bits) is what the coder should approach.
    """
    sym = np.asarray(symbols, dtype=np.float64).reshape(-1)
    means = np.broadcast_to(np.asarray(means, dtype=np.float64).reshape(-1), sym.shape)
    scales = np.broadcast_to(np.asarray(scales, dtype=np.float64).reshape(-1), sym.shape)
    _check_family(family)
    out = np.empty(sym.shape)
    for i in range(0, sym.size, BITS_BLOCK):  # element by element: blocks change no result
        b = slice(i, i + BITS_BLOCK)
        out[b] = _bits(sym[b], means[b], np.maximum(scales[b], MIN_SCALE), family)
    return out


def _bits(sym: np.ndarray, means: np.ndarray, sd: np.ndarray, family: str) -> np.ndarray:
    # Work on the side of the mean where the CDF difference does not cancel.
    z = np.abs(sym - means)
    if family == "laplace":
        b = sd * _INV_SQRT2

        def tail(t):  # upper-tail mass beyond t: ½·exp(-t/b) for t >= 0, 1 - ½·exp(t/b) below
            half = 0.5 * np.exp(-np.abs(t) / b)
            return np.where(t >= 0, half, 1.0 - half)

        p = tail(z - 0.5) - tail(z + 0.5)
    else:
        hi = ndtr(-(z - 0.5) / sd)  # upper-tail masses: accurate far from the mean
        lo = ndtr(-(z + 0.5) / sd)
        p = hi - lo
    return -np.log2(np.maximum(p, _MIN_PROB))
