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

    def means_of(self, index) -> np.ndarray:
        """`means[index]` without the whole array."""
        return self.mean_idx[index].astype(np.float64) / MEAN_STEPS

    def scales_of(self, index) -> np.ndarray:
        return SCALE_TABLE[self.scale_idx[index]]

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
# Elements per block of the blocked functions below (`*_blocks`): what one block's temporaries
# hold, whatever the size of the whole. A multiple of CRC_CHUNK.
BLOCK = 1 << 20


def _blocks(n: int, block: int | None = None) -> list[slice]:
    block = block or BLOCK  # (None: the module's, read at each call)
    return [slice(i, min(i + block, n)) for i in range(0, n, block)]


def _checked(n: int, params, block: int | None):
    """(slice, means, scales) per block from `params(slice)`, refused as one pass over the whole
    would be: a non-finite value anywhere first, then a mean out of range (after the last block)."""
    too_big = False
    for b in _blocks(n, block):
        m, s = params(b)
        if not (np.isfinite(m).all() and np.isfinite(s).all()):
            raise InputError("distribution parameters must be finite (the network produced NaN or Inf)")
        too_big = too_big or bool(m.size and np.abs(m).max() > 2.0**30)
        yield b, m, s
    if too_big:
        raise InputError("a predicted mean exceeds 2^30 symbol units")


def _array_params(means, scales):
    m = np.asarray(means).reshape(-1)
    s = np.asarray(scales).reshape(-1)
    if m.size != s.size:
        raise InputError(f"{m.size} means but {s.size} scales")
    return m.size, lambda b: (np.asarray(m[b], dtype=np.float64), np.asarray(s[b], dtype=np.float64))


def _snap_raw(m: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = m * MEAN_STEPS  # exact: multiplication by a power of two
    mean_idx = np.floor(t + 0.5).astype(np.int64)  # round half up
    scale_idx = np.searchsorted(SCALE_BOUNDS, s, side="right").astype(np.uint8)  # comparisons only
    return mean_idx, scale_idx


def snap_params(means, scales) -> SnappedParams:
    """Round means to the 1/64 grid and scales to `SCALE_TABLE` (values outside are clamped)."""
    return snap_blocks(*_array_params(means, scales), guard=False)[0]


def snap_blocks(n: int, params, *, eps: float = GUARD_REL, guard: bool = True,
                block: int | None = None) -> tuple[SnappedParams, bytes]:
    """`snap_for_encoder` of `n` parameters given a block at a time by `params(slice) -> (means,
    scales)` (float64, symbol units): the same indices and guard bytes for every `block`, with
    only one block's temporaries. `guard` False: the indices only (guard b"")."""
    mean_idx, scale_idx = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.uint8)
    im, iscale, pm, ps = [], [], [], []
    for b, m, s in _checked(n, params, block):
        mean_idx[b], scale_idx[b] = _snap_raw(m, s)
        if guard:
            i = np.flatnonzero(_near_mean_boundary(m, eps))
            j = np.flatnonzero(_near_scale_boundary(s, eps))
            im.append(i + b.start)
            iscale.append(j + b.start)
            pm.append(mean_idx[b][i] & 1)
            ps.append(scale_idx[b][j].astype(np.int64) & 1)
    snapped = SnappedParams(mean_idx, scale_idx)
    if not guard:
        return snapped, b""
    cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0, np.int64)  # noqa: E731
    return snapped, _guard_bytes(cat(im), cat(iscale), np.concatenate([cat(pm), cat(ps)]).astype(np.uint8))


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
    return snap_blocks(*_array_params(means, scales), eps=eps)[1]


def _guard_bytes(im: np.ndarray, iscale: np.ndarray, parity: np.ndarray) -> bytes:
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
    return apply_guard_blocks(*_array_params(means, scales), guard)


def _read_guard(guard: bytes, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The guard's listed mean and scale elements (ascending) and their parities."""
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
    return im, iscale, parity


def apply_guard_blocks(n: int, params, guard: bytes, *, block: int | None = None) -> SnappedParams:
    """`apply_guard` of `n` parameters given a block at a time by `params(slice)` (as
    `snap_blocks`): the same indices for every `block`. Refuses as `apply_guard` does: the
    parameters' errors before the guard's."""
    try:
        im, iscale, parity = _read_guard(guard, n)
        error = None
    except FormatError as exc:  # raised once the parameters are checked, as before
        error = exc
    if error is not None:
        for _ in _checked(n, params, block):
            pass
        raise error
    n_m = im.size
    mean_idx, scale_idx = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.uint8)
    for b, m, s in _checked(n, params, block):
        mi, si = _snap_raw(m, s)
        # Means: the two neighbours of a value near k + 1/2 are k and k + 1; pick the encoder's parity.
        lo, hi = np.searchsorted(im, [b.start, b.stop])
        i = im[lo:hi] - b.start
        k = np.floor(m[i] * MEAN_STEPS).astype(np.int64)
        mi[i] = np.where((k & 1) == parity[lo:hi], k, k + 1)
        # Scales: the two neighbours of the nearest boundary k are levels k and k + 1.
        lo, hi = np.searchsorted(iscale, [b.start, b.stop])
        j = iscale[lo:hi] - b.start
        kb = _nearest_scale_bound(np.maximum(s[j], SCALE_BOUNDS[0] * 0.5)).astype(np.int64)
        si[j] = np.where((kb & 1) == parity[n_m + lo:n_m + hi], kb, kb + 1).astype(np.uint8)
        mean_idx[b], scale_idx[b] = mi, si
    return SnappedParams(mean_idx, scale_idx)


def snap_for_encoder(means, scales, *, eps: float = GUARD_REL) -> tuple[SnappedParams, bytes]:
    """The encoder's snapped parameters and the guard bytes to store beside the stream."""
    return snap_params(means, scales), encode_guard(means, scales, eps=eps)


# ---- 4. checksums --------------------------------------------------------------------------------
def _chunk_crcs(p: SnappedParams, chunk: int) -> np.ndarray:
    mi = np.asarray(p.mean_idx, dtype="<i8")  # (no copies of the whole arrays)
    si = np.asarray(p.scale_idx, dtype=np.uint8)
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
