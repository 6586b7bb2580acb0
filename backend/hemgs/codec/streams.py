"""One coded attribute stream: values -> symbols under snapped Gaussians, and back, exactly.

Shared by every codec. A stream's bytes are

    u32 len | step guard      -- the encoder's snapped quantization steps (coding/steps.py)
    u32 len | parameter guard -- the encoder's snapped means/scales (coding/exact_params.py)
    u32 len | parameter CRCs  -- per chunk: a decoder whose parameters differ fails loudly
    u32     | CRC32 of the symbols, so any other cross-machine mismatch fails loudly too
    rest    | the symbol stream (coding/gaussian_coder.py; family "uniform": coding/uniform.py)

Means, scales and steps are in the attribute's own units; the stream codes round(value / q), or
with `shifted` round(value / q - m), m the snapped mean in steps: values then decode to (m + k)·q,
the grid that passes through the predicted mean (a value predicted within a step costs ~0 bits and
decodes to its mean, not to the nearest multiple of q). m is bit-identical on both sides, and
(m + k)·q is two correctly rounded operations, so the decoded values are too.

Family "uniform" is for values the decoder knows to lie in [-h, h] (`half_range` h, e.g. a
position inside its voxel) and that nothing predicts better than chance there: each symbol is
coded uniformly over the symbols whose values fall in that range, log2 of their count in bits
(the mean still places the grid; the scale is unused). The range's ends are computed with
IEEE basic operations on snapped values, so both sides agree exactly.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from ..coding import exact_params
from ..coding.exact_params import apply_guard_blocks, check_param_checksums, param_checksums, snap_blocks
from ..coding.gaussian_coder import FAMILIES as SYMBOL_FAMILIES
from ..coding.gaussian_coder import decode_symbols_from, encode_symbols_from
from ..coding.uniform import decode_uniform, encode_uniform
from ..errors import FormatError, InputError, IntegrityError

_PARTS = ("step guard", "parameter guard", "parameter checksums")
_MAX_SYMBOL = 2**31 - 1
FAMILIES = SYMBOL_FAMILIES + ("uniform",)


def uniform_range(half_range, q: np.ndarray, offset, name: str, error=FormatError) -> tuple[np.ndarray, np.ndarray]:
    """The symbols k whose values (offset + k)·q round from inside [-h, h]: [lo, hi] per element."""
    h = np.asarray(half_range, dtype=np.float64)
    if not (np.isfinite(h).all() and (h >= 0).all()):
        raise InputError(f"{name}: a uniform stream's half range must be finite and non-negative")
    lo = np.floor(-h / q - offset + 0.5)
    hi = np.maximum(np.floor(h / q - offset + 0.5), lo)
    if lo.size and (np.abs(lo).max() > _MAX_SYMBOL or np.abs(hi).max() > _MAX_SYMBOL):
        raise error(f"{name}: its values' range exceeds the symbol range (steps or means out of range)")
    return lo.astype(np.int64), hi.astype(np.int64)


def pack(parts: list[bytes], symbols_crc: int, stream: bytes) -> bytes:
    out = [struct.pack("<I", len(p)) + p for p in parts]
    return b"".join(out) + struct.pack("<I", symbols_crc) + stream


def unpack(data: bytes, name: str) -> tuple[list[bytes], int, bytes]:
    parts, pos = [], 0
    for what in _PARTS:
        if pos + 4 > len(data):
            raise FormatError(f"section {name}: truncated before its {what}")
        (n,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if pos + n > len(data):
            raise FormatError(f"section {name}: its {what} runs past the section end")
        parts.append(bytes(data[pos:pos + n]))
        pos += n
    if pos + 4 > len(data):
        raise FormatError(f"section {name}: truncated before its symbol checksum")
    (crc,) = struct.unpack_from("<I", data, pos)
    return parts, crc, bytes(data[pos + 4:])


def empty() -> bytes:
    return pack([b"", b"", b""], zlib.crc32(b""), b"")


def _blocks(n: int) -> list[slice]:
    return exact_params._blocks(n)  # exact_params.BLOCK elements each


def _flat(*arrays) -> list[np.ndarray]:
    return [np.asarray(a).reshape(-1) for a in arrays]


def _over_q(mean: np.ndarray, scale: np.ndarray, q: np.ndarray):
    """`params(slice)` of the exact path: (mean / q, scale / q) of the slice's elements."""
    return lambda b: (np.asarray(mean[b] / q[b], dtype=np.float64), np.asarray(scale[b] / q[b], dtype=np.float64))


def _model_params(snapped, shifted: bool):
    """`params(index)` of the symbol coder: the snapped means (0 when shifted: the grid is through
    them) and scales of elements `index`."""
    if shifted:
        return lambda i: (np.zeros(snapped.scale_idx[i].size), snapped.scales_of(i))
    return lambda i: (snapped.means_of(i), snapped.scales_of(i))


def _symbols_crc(symbols: np.ndarray) -> int:
    crc = zlib.crc32(b"")
    for b in _blocks(symbols.size):
        crc = zlib.crc32(symbols[b].astype("<i4").tobytes(), crc)
    return crc


def _values(symbols: np.ndarray, snapped, shifted: bool, q: np.ndarray) -> np.ndarray:
    """(symbol + offset)·q, the values as they decode, a block at a time."""
    out = np.empty(symbols.size)
    for b in _blocks(symbols.size):
        offset = snapped.means_of(b) if shifted else 0.0
        out[b] = (symbols[b].astype(np.float64) + offset) * q[b]
    return out


def encode_values(values: np.ndarray, mean: np.ndarray, scale: np.ndarray, q: np.ndarray,
                  step_guard: bytes, family: str = "gaussian", shifted: bool = False,
                  half_range=None) -> tuple[bytes, np.ndarray]:
    """Code `values` with per-element steps `q` (already snapped); returns (bytes, decoded values).
    `family`: the symbols' distribution (FAMILIES); `shifted`: quantize on the grid through the
    mean; `half_range`: the values' bound for family "uniform", which clips to it (module doc).
    The decoder's must match. Works a block of elements at a time (elementwise but for the
    coder's order, which the coder keeps): no temporaries of the whole arrays' size."""
    values, mean, scale, q = _flat(values, mean, scale, q)
    n = mean.size
    snapped, guard = snap_blocks(n, _over_q(mean, scale, q))
    symbols = np.empty(values.size, dtype=np.int32)
    for b in _blocks(values.size):
        offset = snapped.means_of(b) if shifted else 0.0
        symbols[b] = np.clip(np.rint(values[b] / q[b] - offset), -_MAX_SYMBOL, _MAX_SYMBOL)
    if family == "uniform":
        offset = snapped.means if shifted else 0.0
        lo, hi = uniform_range(half_range, q, offset, "uniform stream", InputError)
        clipped = np.clip(symbols, lo, hi)
        stream = encode_uniform(clipped - lo, hi - lo + 1, "uniform stream")
        symbols = clipped.astype(np.int32)
    else:
        stream = encode_symbols_from(symbols, _model_params(snapped, shifted), family=family)
    data = pack([step_guard, guard, param_checksums(snapped)], _symbols_crc(symbols), stream)
    return data, _values(symbols, snapped, shifted, q)


def split(data: bytes, name: str) -> tuple[bytes, tuple]:
    """The step guard of a stream, and the rest for `decode_values` (steps come first)."""
    (step_guard, guard, crcs), sym_crc, stream = unpack(data, name)
    return step_guard, (guard, crcs, sym_crc, stream)


def decode_values(rest: tuple, mean: np.ndarray, scale: np.ndarray, q: np.ndarray, name: str,
                  family: str = "gaussian", shifted: bool = False, half_range=None) -> np.ndarray:
    """The values of one stream (`split`'s rest), a block of elements at a time (as encode_values)."""
    guard, crcs, sym_crc, stream = rest
    mean, scale, q = _flat(mean, scale, q)
    snapped = apply_guard_blocks(mean.size, _over_q(mean, scale, q), guard)
    check_param_checksums(snapped, crcs, name)
    if family == "uniform":
        offset = snapped.means if shifted else 0.0
        lo, hi = uniform_range(half_range, q, offset, name)
        symbols = (decode_uniform(stream, hi - lo + 1, name) + lo).astype(np.int32)
    else:
        symbols = decode_symbols_from(stream, mean.size, _model_params(snapped, shifted), family=family)
    if _symbols_crc(symbols) != sym_crc:
        raise IntegrityError(f"decoded {name} differ from what the encoder coded (entropy-coder mismatch)")
    return _values(symbols, snapped, shifted, q)
