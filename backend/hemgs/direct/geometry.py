"""Where each Gaussian sits, as anchor-free mode codes it: an occupied voxel plus a residual.

Positions are split in two: the occupied voxels of a cube grid of 2^b cells a side go through the
lossless location coder (coding/locations.py), with each voxel's Gaussian count; the offset of a
Gaussian from its voxel's centre is an attribute like the others (attributes.py, stage
"position"), quantized with a step that follows its size and opacity. b is the finest level at
which voxels still hold at most VOXEL_FILL Gaussians on average: below that the octree and a
uniform residual cost the same ~3 bits a level, and the residual can be coarse where it is cheap.

Gaussians are coded voxel by voxel in the location coder's (Morton) order, in their source order
within a voxel; every voxel also gets a coding group and a context (entropy/context.py), and is
represented in other Gaussians' contexts by its first Gaussian.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..coding import exact_math
from ..coding.bits import decode_bits, encode_bits
from ..coding.locations import MAX_BITS, morton
from ..errors import FormatError
from .attributes import RHO_PER_SPAN

VOXEL_FILL = 1.5
MIN_BITS = 2
# Sources whose positions are all multiples of 2^-k (SPZ stores fixed point: biker's are multiples
# of 2^-12) keep that lattice: decoded positions are snapped to it and the position steps never go
# below it (a finer step would code digits the source does not have). Finer lattices than 2^-20
# are not looked for: no step of this mode gets that fine.
MAX_LATTICE_BITS = 20
# Sources decoded from SOG hold positions on its grid: per axis, y = sign(x)·ln(1 + |x|) takes
# 2^16 evenly spaced values between the axis' least and largest y (playbot's files: every
# coordinate within 0.003 of a grid point, float32 noise). Such a grid is kept like the fixed-point
# one: decoded positions snapped to it, position steps not finer than its spacing.
LOG_LATTICE_STEPS = 65535
_LOG_LATTICE_TOL = 0.02  # of a grid step: what float32 rounding of the source's positions leaves


@dataclass
class Frame:
    """The grid: origin (3,) float64, cube side `span`, 2^bits voxels a side. From header floats
    and integers only, so encoder and decoder compute identical centres."""

    origin: np.ndarray
    span: float
    bits: int
    lattice: int | None = None  # positions are multiples of 2^-lattice (see MAX_LATTICE_BITS)
    log_lattice: np.ndarray | None = None  # (3, 2) per axis the y range of SOG's grid (LOG_LATTICE_STEPS)

    @property
    def voxel(self) -> float:
        return float(np.ldexp(self.span, -self.bits))  # exact: a power-of-two division

    @property
    def rho(self) -> float:
        return self.span * RHO_PER_SPAN

    @property
    def residual_half(self) -> float:
        """The largest |offset| of a Gaussian from its voxel's centre, per axis, in RHO units (the
        position stage's range; IEEE basic operations on header numbers, the same on both sides)."""
        return 0.5 * (self.voxel / self.rho)

    def centres(self, coords: np.ndarray) -> np.ndarray:
        return self.origin + (coords.astype(np.float64) + 0.5) * self.voxel

    def to_header(self) -> dict:
        return {"origin": [float(v) for v in self.origin], "span": float(self.span), "voxel_bits": int(self.bits),
                "position_lattice": None if self.lattice is None else int(self.lattice),
                "position_log_lattice": None if self.log_lattice is None else
                [[float(v) for v in row] for row in self.log_lattice]}

    def snap(self, means: np.ndarray) -> np.ndarray:
        """Positions on the source's lattice (the fixed-point one exactly: scaling by a power of
        two, then rounding)."""
        if self.lattice is not None:
            return np.ldexp(np.round(np.ldexp(means, self.lattice)), -self.lattice)
        if self.log_lattice is not None:
            lo, hi = self.log_lattice[:, 0], self.log_lattice[:, 1]
            # exact_math, not numpy's log1p/expm1: an ulp of difference between machines moved
            # points that lie near a rounding boundary to the neighbouring grid point
            y = np.sign(means) * exact_math.log1p(np.abs(means))
            k = np.clip(np.round((y - lo) / (hi - lo) * LOG_LATTICE_STEPS), 0, LOG_LATTICE_STEPS)
            y = lo + k * ((hi - lo) / LOG_LATTICE_STEPS)
            return np.sign(y) * exact_math.expm1(np.abs(y))
        return means

    def spacing(self, centres: np.ndarray) -> np.ndarray | float | None:
        """The source lattice's least spacing per axis within each Gaussian's voxel ((N,3), or
        one number for the fixed-point lattice), or None."""
        if self.lattice is not None:
            return float(np.ldexp(1.0, -self.lattice))
        if self.log_lattice is not None:
            dy = (self.log_lattice[:, 1] - self.log_lattice[:, 0]) / LOG_LATTICE_STEPS
            return dy * (1.0 + np.maximum(np.abs(centres) - 0.5 * self.voxel, 0.0))  # dx/dy = 1 + |x|
        return None


def position_lattice(means: np.ndarray) -> int | None:
    """The smallest k ≤ MAX_LATTICE_BITS for which every coordinate is a multiple of 2^-k, if any."""
    m = np.asarray(means, dtype=np.float64)
    if m.size == 0 or not np.isfinite(m).all():
        return None
    for k in range(MAX_LATTICE_BITS + 1):
        s = np.ldexp(m, k)
        if np.array_equal(s, np.round(s)):
            return k
    return None


def log_lattice(means: np.ndarray) -> np.ndarray | None:
    """The (3, 2) y ranges of SOG's grid (LOG_LATTICE_STEPS) if every coordinate lies on it."""
    m = np.asarray(means, dtype=np.float64)
    if m.shape[0] < 2 or not np.isfinite(m).all():
        return None
    y = np.sign(m) * exact_math.log1p(np.abs(m))  # the function the decoder snaps with
    lo, hi = y.min(axis=0), y.max(axis=0)
    if not (hi > lo).all():
        return None
    k = (y - lo) / (hi - lo) * LOG_LATTICE_STEPS
    if np.abs(k - np.round(k)).max() > _LOG_LATTICE_TOL:
        return None
    return np.stack([lo, hi], axis=1)


def frame_for(means: np.ndarray) -> Frame:
    """The bounding cube of `means` and the voxel level (see the module doc)."""
    m = np.asarray(means, dtype=np.float64)
    if m.shape[0] == 0:
        return Frame(np.zeros(3), 1.0, MIN_BITS)
    lo, hi = m.min(axis=0), m.max(axis=0)
    span = float(max((hi - lo).max(), 1e-6)) * (1.0 + 1e-9)  # every point strictly inside the cube
    n = m.shape[0]
    bits = MAX_BITS  # duplicates everywhere: no level separates them
    for b in range(MIN_BITS, MAX_BITS + 1):
        if n / np.unique(morton(_cells(m, lo, span, b))).size <= VOXEL_FILL:
            bits = b
            break
    lattice = position_lattice(m)
    return Frame(lo, span, bits, lattice, log_lattice(m) if lattice is None else None)


def _cells(m: np.ndarray, origin: np.ndarray, span: float, bits: int) -> np.ndarray:
    side = 1 << bits
    return np.clip(np.floor((m - origin) / span * side), 0, side - 1).astype(np.int64)


@dataclass
class Layout:
    """Gaussians in coding order, grouped by voxel."""

    order: np.ndarray  # (N,) source row of each coded Gaussian
    coords: np.ndarray  # (M, 3) voxel coordinates in coding (Morton) order
    counts: np.ndarray  # (M,) Gaussians per voxel
    voxel_of: np.ndarray  # (N,) voxel row of each coded Gaussian
    first: np.ndarray  # (M,) coded row of each voxel's first Gaussian


def layout_from_counts(coords: np.ndarray, counts: np.ndarray, order: np.ndarray | None = None) -> Layout:
    counts = np.asarray(counts, dtype=np.int64)
    voxel_of = np.repeat(np.arange(coords.shape[0]), counts)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64) if counts.size else counts
    if order is None:
        order = np.arange(voxel_of.size)
    return Layout(order, coords, counts, voxel_of, first)


def layout_for(means: np.ndarray, frame: Frame) -> tuple[Layout, np.ndarray]:
    """The coding layout and the unique voxel coordinates in source order of first appearance
    (what encode_locations is given; its order maps them to coding order)."""
    cells = _cells(np.asarray(means, dtype=np.float64), frame.origin, frame.span, frame.bits)
    codes = morton(cells)
    uniq, inverse, counts = np.unique(codes, return_inverse=True, return_counts=True)
    # np.unique sorts by Morton code, which is the location coder's decode order.
    order = np.argsort(inverse, kind="stable")
    coords = cells[order][np.concatenate([[0], np.cumsum(counts)[:-1]])] if len(uniq) else np.zeros((0, 3), np.int64)
    return layout_from_counts(coords, counts, order), coords


def encode_counts(counts: np.ndarray) -> bytes:
    """Gaussians per voxel as one decision per Gaussian: 1 = another follows in this voxel."""
    counts = np.asarray(counts, dtype=np.int64)
    bits = np.ones(int(counts.sum()), dtype=np.uint8)
    ends = np.cumsum(counts) - 1
    bits[ends] = 0
    return encode_bits(bits)


def decode_counts(data: bytes, n_gaussians: int, n_voxels: int) -> np.ndarray:
    bits = decode_bits(data, n_gaussians).astype(np.int64)
    ends = np.flatnonzero(bits == 0)
    if ends.size != n_voxels or (n_gaussians and bits[-1] != 0):
        raise FormatError(f"voxel counts: {ends.size} voxels end in the stream, the header says {n_voxels}")
    return np.diff(np.concatenate([[-1], ends])).astype(np.int64)
