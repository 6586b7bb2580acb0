"""Bit-exact distribution parameters: the decoder must see the encoder's means/scales exactly.

The measured problem: raw float32 network outputs decoded with another batch size or GEMM kernel
put ~92% of 1M symbols in the wrong place, because an ANS decoder fed a model that differs in
the last bit decodes garbage from then on. Four layers fix it:

1. `run_deterministic` evaluates the network in float64, in fixed-size chunks (the last one
   zero-padded), so batch size cannot change which kernel runs on which rows, and kernel or
   thread-count differences shrink to ~1e-15 relative.
2. `snap_params` rounds means to multiples of 1/64 symbol unit and scales to one of 128 fixed
   log-spaced levels (`SCALE_TABLE`), so ~1e-15 noise almost never changes the coded value.
3. The boundary guard covers "almost never": the encoder lists the elements whose pre-snap value
   lies within GUARD_REL of a rounding boundary, with the parity of the index it chose; the
   decoder takes, for those, the neighbour with that parity, and its own rounding elsewhere.
4. CRC32 of the snapped indices per chunk of elements: a decoder whose parameters still differ
   (wrong network, wrong weights, noise far above float64's) fails loudly, naming the chunk.

Why these grids: the cost of coding with a snapped scale σ' = σ·e^δ instead of σ is the KL
divergence δ + e^(-2δ)/2 - 1/2 ≈ δ² nats. 128 levels from 0.05 to 1e4 (the useful range: below
0.05 a centred symbol already costs < 1e-6 bits; 1e4 is ~16 bits a symbol) are e^0.0961 apart,
so |δ| <= 0.048: at most 0.0033 and on average 0.0011 bits a symbol, and an index fits a byte.
A mean off by at most 1/128 symbol costs (1/128)²/(2σ²ln2) bits: 1e-4 bits at σ = 0.5.
"""

from __future__ import annotations

import copy
import zlib
from dataclasses import dataclass

import numpy as np

from ..errors import FormatError, InputError, IntegrityError
from .bits import decode_varints, encode_varints

MEAN_STEPS = 64  # means snap to multiples of 1/64 symbol unit (a power of two: exact scaling)
SCALE_MIN, SCALE_MAX, SCALE_LEVELS = 0.05, 1e4, 128
# The tables are format constants: rounded to few decimal digits so that an ulp of difference in
# pow() between machines cannot change them, and checked against their CRC32 on import.
SCALE_TABLE = np.array(
    [float(f"{SCALE_MIN * (SCALE_MAX / SCALE_MIN) ** (j / (SCALE_LEVELS - 1)):.6g}") for j in range(SCALE_LEVELS)]
)
# Rounding boundaries between adjacent levels: their geometric midpoints.
SCALE_BOUNDS = np.array([float(f"{np.sqrt(a * b):.8g}") for a, b in zip(SCALE_TABLE[:-1], SCALE_TABLE[1:])])
GUARD_REL = 1e-9  # float64 cross-machine noise is ~1e-15 relative: a million times margin
CRC_CHUNK = 65536  # elements per checksum: 4 bytes per 64k elements


def _tables_crc() -> int:
    return zlib.crc32(SCALE_TABLE.astype("<f8").tobytes() + SCALE_BOUNDS.astype("<f8").tobytes())


_EXPECTED_TABLE_CRC = 0x58DC3F8D  # CRC32 of both tables as little-endian float64


@dataclass
class SnappedParams:
    """Snapped distribution parameters as integer indices (the exact, comparable form)."""

    mean_idx: np.ndarray  # int64: mean = mean_idx / MEAN_STEPS
    scale_idx: np.ndarray  # uint8: scale = SCALE_TABLE[scale_idx]

    @property
    def means(self) -> np.ndarray:
        return self.mean_idx.astype(np.float64) / MEAN_STEPS

    @property
    def scales(self) -> np.ndarray:
        return SCALE_TABLE[self.scale_idx]

    def __len__(self) -> int:
        return int(self.mean_idx.size)


# ---- 1. deterministic network evaluation --------------------------------------------------------
def run_deterministic(module_or_fn, x, chunk: int = 4096):
    """Evaluate a row-wise torch network on `x` (N, ...) in float64 and fixed-size chunks.

    Every row goes through the network inside a batch of exactly `chunk` rows (the last chunk is
    zero-padded), so the batch size a caller happens to use cannot change the result. An
    `nn.Module` is evaluated as a float64 copy in eval mode; a plain function gets float64 input.
    The network must treat rows independently (no batch statistics).
    """
    import torch  # here, not at module level: the snapping half works without torch

    if chunk < 1:
        raise InputError(f"run_deterministic: chunk must be >= 1, got {chunk}")
    fn = module_or_fn
    if isinstance(fn, torch.nn.Module):
        tensors = list(fn.parameters()) + list(fn.buffers())
        if fn.training or any(t.is_floating_point() and t.dtype != torch.float64 for t in tensors):
            fn = copy.deepcopy(fn).to(torch.float64).eval()
    x = torch.as_tensor(x).to(torch.float64)
    n = x.shape[0]
    outs = []
    with torch.no_grad():
        for start in range(0, max(n, 1), chunk):
            part = x[start:start + chunk]
            rows = part.shape[0]
            if rows < chunk:
                part = torch.cat([part, part.new_zeros((chunk - rows,) + tuple(part.shape[1:]))])
            outs.append(fn(part)[:rows].to(torch.float64))
    return torch.cat(outs)


# ---- 2. snapping ---------------------------------------------------------------------------------
def _as_params(means, scales) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(means, dtype=np.float64).reshape(-1)
    s = np.asarray(scales, dtype=np.float64).reshape(-1)
    if m.size != s.size:
        raise InputError(f"{m.size} means but {s.size} scales")
    if not (np.isfinite(m).all() and np.isfinite(s).all()):
        raise InputError("distribution parameters must be finite (the network produced NaN or Inf)")
    if m.size and np.abs(m).max() > 2.0**30:
        raise InputError("a predicted mean exceeds 2^30 symbol units")
    return m, s


def _snap_raw(m: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = m * MEAN_STEPS  # exact: multiplication by a power of two
    mean_idx = np.floor(t + 0.5).astype(np.int64)  # round half up
    scale_idx = np.searchsorted(SCALE_BOUNDS, s, side="right").astype(np.uint8)  # comparisons only
    return mean_idx, scale_idx


def snap_params(means, scales) -> SnappedParams:
    """Round means to the 1/64 grid and scales to `SCALE_TABLE` (values outside are clamped)."""
    m, s = _as_params(means, scales)
    return SnappedParams(*_snap_raw(m, s))


# ---- 3. the boundary guard -----------------------------------------------------------------------
def _near_mean_boundary(m: np.ndarray, eps: float) -> np.ndarray:
    t = m * MEAN_STEPS
    frac = t - np.floor(t)
    return np.abs(frac - 0.5) <= eps * np.maximum(np.abs(t), 1.0)


def _nearest_scale_bound(s: np.ndarray) -> np.ndarray:
    """Index k of the boundary SCALE_BOUNDS[k] nearest to s (in log terms)."""
    k = np.clip(np.searchsorted(SCALE_BOUNDS, s), 1, SCALE_BOUNDS.size - 1)
    lower_closer = np.abs(np.log(s / SCALE_BOUNDS[k - 1])) <= np.abs(np.log(s / SCALE_BOUNDS[k]))
    return np.where(lower_closer, k - 1, k)


def _near_scale_boundary(s: np.ndarray, eps: float) -> np.ndarray:
    pos = np.maximum(s, SCALE_BOUNDS[0] * 0.5)  # non-positive scales are far from every bound
    b = SCALE_BOUNDS[_nearest_scale_bound(pos)]
    return np.abs(s - b) <= eps * b


def encode_guard(means, scales, *, eps: float = GUARD_REL) -> bytes:
    """Encoder side: the near-boundary elements and the parity of the index the encoder chose.

    Layout: varint count of listed means, varint count of listed scales, their element indices
    as varint deltas (ascending), then one parity bit per listed element (np.packbits order).
    """
    m, s = _as_params(means, scales)
    mean_idx, scale_idx = _snap_raw(m, s)
    im = np.flatnonzero(_near_mean_boundary(m, eps))
    iscale = np.flatnonzero(_near_scale_boundary(s, eps))
    parity = np.concatenate([mean_idx[im] & 1, scale_idx[iscale].astype(np.int64) & 1]).astype(np.uint8)
    return b"".join([
        encode_varints([im.size, iscale.size]),
        encode_varints(np.diff(im, prepend=0)),
        encode_varints(np.diff(iscale, prepend=0)),
        np.packbits(parity).tobytes(),
    ])


def _read_index_list(data: bytes, pos: int, count: int, n: int, what: str) -> tuple[np.ndarray, int]:
    deltas, used = decode_varints(data[pos:], count, what)
    idx = np.cumsum(deltas.astype(np.int64)) if count else np.zeros(0, dtype=np.int64)
    if count and ((deltas[1:] == 0).any() or idx[-1] >= n or deltas.max() >= n):
        raise FormatError(f"{what}: element indices out of order or out of range")
    return idx, pos + used


def apply_guard(means, scales, guard: bytes) -> SnappedParams:
    """Decoder side: snap its own means/scales, taking the encoder's side at listed boundaries."""
    m, s = _as_params(means, scales)
    n = m.size
    mean_idx, scale_idx = _snap_raw(m, s)
    guard = bytes(guard)
    counts, pos = decode_varints(guard, 2, "parameter guard")
    n_m, n_s = int(counts[0]), int(counts[1])
    # Each listed element takes at least one byte, which bounds the counts by the data size.
    if n_m + n_s > min(n, len(guard)):
        raise FormatError(f"parameter guard: lists {n_m + n_s} elements for {n} parameters")
    im, pos = _read_index_list(guard, pos, n_m, n, "parameter guard (means)")
    iscale, pos = _read_index_list(guard, pos, n_s, n, "parameter guard (scales)")
    nbytes = (n_m + n_s + 7) // 8
    if len(guard) - pos != nbytes:
        raise FormatError("parameter guard: wrong length of the parity bits")
    parity = np.unpackbits(np.frombuffer(guard[pos:], dtype=np.uint8))[: n_m + n_s].astype(np.int64)
    # Means: the two neighbours of a value near k + 1/2 are k and k + 1; pick the encoder's parity.
    k = np.floor(m[im] * MEAN_STEPS).astype(np.int64)
    mean_idx[im] = np.where((k & 1) == parity[:n_m], k, k + 1)
    # Scales: the two neighbours of the nearest boundary k are levels k and k + 1.
    kb = _nearest_scale_bound(np.maximum(s[iscale], SCALE_BOUNDS[0] * 0.5)).astype(np.int64)
    scale_idx[iscale] = np.where((kb & 1) == parity[n_m:], kb, kb + 1).astype(np.uint8)
    return SnappedParams(mean_idx, scale_idx)


def snap_for_encoder(means, scales, *, eps: float = GUARD_REL) -> tuple[SnappedParams, bytes]:
    """The encoder's snapped parameters and the guard bytes to store beside the stream."""
    return snap_params(means, scales), encode_guard(means, scales, eps=eps)


# ---- 4. checksums --------------------------------------------------------------------------------
def _chunk_crcs(p: SnappedParams, chunk: int) -> np.ndarray:
    mi = p.mean_idx.astype("<i8")
    si = p.scale_idx.astype(np.uint8)
    n = mi.size
    return np.array(
        [zlib.crc32(si[a:a + chunk].tobytes(), zlib.crc32(mi[a:a + chunk].tobytes())) for a in range(0, n, chunk)],
        dtype="<u4",
    )


def param_checksums(params: SnappedParams, chunk: int = CRC_CHUNK) -> bytes:
    """CRC32 of the snapped indices of each chunk of `chunk` elements (u32 each, little-endian)."""
    return _chunk_crcs(params, chunk).tobytes()


def check_param_checksums(params: SnappedParams, checksums: bytes, name: str, chunk: int = CRC_CHUNK) -> None:
    """Raise IntegrityError naming the first chunk whose parameters differ from the encoder's."""
    n_chunks = -(-len(params) // chunk)
    if len(checksums) != 4 * n_chunks:
        raise FormatError(f"{name}: {len(checksums)} bytes of parameter checksums for {n_chunks} chunks")
    expect = np.frombuffer(checksums, dtype="<u4")
    bad = np.flatnonzero(_chunk_crcs(params, chunk) != expect)
    if bad.size:
        i = int(bad[0])
        raise IntegrityError(
            f"distribution parameters differ from the encoder's in chunk {i} of {name}: elements "
            f"{i * chunk}-{min((i + 1) * chunk, len(params)) - 1} ({bad.size} of {n_chunks} chunks differ; "
            "wrong network weights or a non-deterministic decoder)"
        )


def _check_tables() -> None:
    ok = (np.all(np.diff(SCALE_TABLE) > 0) and np.all(SCALE_BOUNDS > SCALE_TABLE[:-1])
          and np.all(SCALE_BOUNDS < SCALE_TABLE[1:]) and _tables_crc() == _EXPECTED_TABLE_CRC)
    if not ok:  # a different table would silently break every existing file
        raise RuntimeError("hemgs scale table differs from the format constant (crc %08x)" % _tables_crc())


_check_tables()
