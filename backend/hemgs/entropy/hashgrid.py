"""Binary multi-resolution hash grid over anchor positions (HAC's scene-specific hyperprior).

Pure PyTorch so it trains and decodes on the CPU. Written by hand: no maintained library offers a
CPU hash-grid encoder with binarised tables (tiny-cuda-nn is CUDA-only). The layout follows HAC:
a 3D grid of 12 levels (resolutions 18..514) plus three axis-aligned 2D planes of 4 levels, 2
features per level; table entries are binarised to +-1 with a straight-through estimator so that
they cost one bit each, coded by hemgs.coding.bits.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import nn

# Instant-NGP's spatial-hash primes; the first is 1 so that low levels stay coherent along x.
_PRIMES = (1, 2654435761, 805459861)


@dataclass(frozen=True)
class HashGridConfig:
    levels_3d: int = 12
    res_3d: tuple[int, int] = (18, 514)
    log2_table_3d: int = 13
    levels_2d: int = 4
    res_2d: tuple[int, int] = (130, 2050)
    log2_table_2d: int = 15
    features: int = 2

    @property
    def out_dim(self) -> int:
        return (self.levels_3d + 3 * self.levels_2d) * self.features

    @staticmethod
    def for_anchor_count(n: int) -> "HashGridConfig":
        """Tables sized to the scene: their bits are part of the file, so a small scene gets small
        tables (HAC's fixed 2^13 / 2^15 would dominate a 10k-anchor file)."""
        lg = max(1, round(math.log2(max(n, 2))))
        return HashGridConfig(log2_table_3d=int(min(max(lg - 3, 10), 13)),
                              log2_table_2d=int(min(max(lg - 2, 10), 15)))

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

    @staticmethod
    def check_untrusted(g, label: str, *, max_levels: int, max_features: int, max_log2: int) -> None:
        """Validate a grid config read from a file (ValueError naming `label`): exactly our
        fields, integers in ranges that keep the tables small."""
        if not isinstance(g, dict):
            raise ValueError(f"{label} must be a JSON object")
        if set(g) != set(HashGridConfig().to_dict()):
            raise ValueError(f"{label} must have exactly the fields " + ", ".join(sorted(HashGridConfig().to_dict())))
        for name, lo, hi in (("levels_3d", 1, max_levels), ("levels_2d", 1, max_levels), ("features", 1, max_features),
                             ("log2_table_3d", 4, max_log2), ("log2_table_2d", 4, max_log2)):
            v = g.get(name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ValueError(f"{label} {name} must be an integer in [{lo}, {hi}], got {v!r}"[:120])
        for key in ("res_3d", "res_2d"):
            r = g.get(key)
            if (not isinstance(r, list) or len(r) != 2
                    or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1 << 16 for v in r)):
                raise ValueError(f"{label} {key} must be two integers in [1, 65536]")

    @staticmethod
    def from_dict(d: dict) -> "HashGridConfig":
        return HashGridConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


class GridLookup:
    """Where N fixed positions read the tables, as sparse matrices: row (position, level) holds
    the interpolation weights of the table rows at its cell's corners. It depends on the
    positions only, so for anchors (which never move) it is built once and reused while the
    tables train; a feature is then one sparse-dense product per table (and its transpose for
    the backward), instead of a gather and scatter per corner and level.
    """

    def __init__(self, n: int, index3, weight3, rows3: int, index2, weight2, rows2: int):
        self.n = int(n)
        # the rows and weights as dense (N, levels, corners) arrays, to read a few positions
        # (BinaryHashGrid.encode_rows) without touching the others
        self.corners = (index3, weight3, index2, weight2)
        self._sizes = (rows3, rows2)
        self._csr = None

    def csr(self) -> tuple:
        """(M3, M3ᵀ, M2, M2ᵀ), built on first use: the transposes need a sort of every corner."""
        if self._csr is None:
            i3, w3, i2, w2 = self.corners
            self._csr = (*_csr_pair(i3, w3, self._sizes[0]), *_csr_pair(i2, w2, self._sizes[1]))
        return self._csr

    def __len__(self) -> int:
        return self.n


def _csr_pair(index: torch.Tensor, weight: torch.Tensor, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, L, c) corner rows/weights -> CSR matrix (N*L, cols) and its transpose.

    Built directly (no COO coalescing: a repeated corner row simply appears twice in a row,
    which the product sums); the transpose needs one stable sort by table row."""
    n, c = index.shape[0] * index.shape[1], index.shape[2]
    col, val = index.reshape(-1), weight.reshape(-1)
    crow = torch.arange(0, n * c + 1, c, device=index.device)
    order = torch.argsort(col, stable=True)
    crow_t = torch.zeros(cols + 1, dtype=torch.int64, device=index.device)
    crow_t[1:] = torch.cumsum(torch.bincount(col, minlength=cols), 0)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the ops used here are basic
        warnings.simplefilter("ignore", UserWarning)
        m = torch.sparse_csr_tensor(crow, col, val, (n, cols), check_invariants=False)
        mt = torch.sparse_csr_tensor(crow_t, order // c, val[order], (cols, n), check_invariants=False)
    return m, mt


class _SparseRead(torch.autograd.Function):
    """features = M @ table, gradient M^T @ grad (M is constant: only the table trains)."""

    @staticmethod
    def forward(ctx, m, mt, table):
        ctx.mt = mt
        return m @ table

    @staticmethod
    def backward(ctx, grad):
        return None, None, ctx.mt @ grad.contiguous()


class _GatherRead(torch.autograd.Function):
    """Rows of `table` weighted and summed in runs of c: out[r] = Σ_k w[rc+k]·table[idx[rc+k]].
    The backward is one index_add_: autograd's own for an indexed gather (index_put with
    accumulate) sorts the indices first and took 3x as long on a CPU."""

    @staticmethod
    def forward(ctx, idx, w, table, c):
        ctx.save_for_backward(idx, w)
        ctx.c, ctx.shape = c, table.shape
        return (table.index_select(0, idx) * w[:, None]).view(-1, c, table.shape[1]).sum(1)

    @staticmethod
    def backward(ctx, grad):
        idx, w = ctx.saved_tensors
        rows = grad.repeat_interleave(ctx.c, 0) * w[:, None]
        return None, None, grad.new_zeros(ctx.shape).index_add_(0, idx, rows), None


def _resolutions(levels: int, lo_hi: tuple[int, int]) -> list[int]:
    lo, hi = lo_hi
    if levels == 1:
        return [lo]
    growth = math.exp((math.log(hi) - math.log(lo)) / (levels - 1))
    return [int(math.floor(lo * growth**i)) for i in range(levels)]


class BinaryHashGrid(nn.Module):
    """Maps positions in [0,1]^3 to a (N, out_dim) feature of interpolated +-1 table entries."""

    def __init__(self, config: HashGridConfig = HashGridConfig(), seed: int = 0):
        super().__init__()
        self.config = config
        g = torch.Generator().manual_seed(seed)
        self.res3 = _resolutions(config.levels_3d, config.res_3d)
        self.res2 = _resolutions(config.levels_2d, config.res_2d)
        t3, t2, f = 1 << config.log2_table_3d, 1 << config.log2_table_2d, config.features
        # Small random init: every entry starts as a coin flip of +-1 once binarised.
        self.table3 = nn.Parameter((torch.rand(config.levels_3d, t3, f, generator=g) - 0.5) * 2e-2)
        self.table2 = nn.Parameter((torch.rand(3, config.levels_2d, t2, f, generator=g) - 0.5) * 2e-2)

    # ---- the one-bit-per-entry view used by the codec ----------------------------------------
    def binary_tables(self) -> torch.Tensor:
        """All table entries as a flat bool tensor (True = +1), in a fixed order."""
        return torch.cat([self.table3.detach().reshape(-1), self.table2.detach().reshape(-1)]) >= 0

    def load_binary_tables(self, bits: torch.Tensor) -> None:
        n3 = self.table3.numel()
        if bits.numel() != n3 + self.table2.numel():
            raise ValueError(f"hash grid expects {n3 + self.table2.numel()} bits, got {bits.numel()}")
        vals = bits.to(torch.float32) * 2 - 1
        with torch.no_grad():
            self.table3.copy_(vals[:n3].reshape(self.table3.shape))
            self.table2.copy_(vals[n3:].reshape(self.table2.shape))

    def num_bits(self) -> int:
        return self.table3.numel() + self.table2.numel()

    # ---- encoding ------------------------------------------------------------------------------
    def forward(self, xyz01: torch.Tensor) -> torch.Tensor:
        t3 = _SignSTE.apply(self.table3).to(xyz01.dtype)
        t2 = _SignSTE.apply(self.table2).to(xyz01.dtype)
        feats = [self._level3(xyz01, t3[i], r) for i, r in enumerate(self.res3)]
        for p, (a, b) in enumerate(((0, 1), (0, 2), (1, 2))):
            uv = xyz01[:, (a, b)]
            feats += [self._level2(uv, t2[p, i], r) for i, r in enumerate(self.res2)]
        return torch.cat(feats, dim=1)

    # ---- cached encoding (training) -------------------------------------------------------------
    @torch.no_grad()
    def lookup(self, xyz01: torch.Tensor) -> GridLookup:
        """The GridLookup of positions in [0,1]^3: `encode(lookup(x))` equals `forward(x)` up to
        float summation order (the weights are computed exactly as `_interp` does)."""
        t3, t2 = self.table3.shape[1], self.table2.shape[2]
        i3, w3 = zip(*[self._corners(xyz01, r, 3, t3, lvl * t3) for lvl, r in enumerate(self.res3)])
        i2, w2 = [], []
        for p, (a, b) in enumerate(((0, 1), (0, 2), (1, 2))):
            uv = xyz01[:, (a, b)]
            for lvl, r in enumerate(self.res2):
                i, w = self._corners(uv, r, 2, t2, (p * len(self.res2) + lvl) * t2)
                i2.append(i)
                w2.append(w)
        return GridLookup(xyz01.shape[0], torch.stack(i3, 1), torch.stack(w3, 1), self.table3.shape[0] * t3,
                          torch.stack(i2, 1), torch.stack(w2, 1), self.table2.shape[0] * self.table2.shape[1] * t2)

    def encode(self, lk: GridLookup) -> torch.Tensor:
        """The (N, out_dim) feature of the positions behind `lk`, same layout as `forward`."""
        m3, m3t, m2, m2t = lk.csr()
        f, dt = self.config.features, m3.dtype
        t3 = _SignSTE.apply(self.table3).to(dt).reshape(-1, f)
        t2 = _SignSTE.apply(self.table2).to(dt).reshape(-1, f)
        a = _SparseRead.apply(m3, m3t, t3).reshape(lk.n, -1)
        b = _SparseRead.apply(m2, m2t, t2).reshape(lk.n, -1)
        return torch.cat([a, b], dim=1)

    def encode_rows(self, lk: GridLookup, sel: torch.Tensor) -> torch.Tensor:
        """`encode(lk)[sel]` (up to float summation order), computed for the selected positions
        only, so its cost follows len(sel), not len(lk): the direct fit reads a few thousand
        voxels an iteration out of ~10^5."""
        i3, w3, i2, w2 = lk.corners
        f, n = self.config.features, sel.shape[0]
        t3 = _SignSTE.apply(self.table3).to(w3.dtype).reshape(-1, f)
        t2 = _SignSTE.apply(self.table2).to(w2.dtype).reshape(-1, f)
        a = _GatherRead.apply(i3.index_select(0, sel).reshape(-1), w3.index_select(0, sel).reshape(-1), t3, i3.shape[2])
        b = _GatherRead.apply(i2.index_select(0, sel).reshape(-1), w2.index_select(0, sel).reshape(-1), t2, i2.shape[2])
        return torch.cat([a.reshape(n, -1), b.reshape(n, -1)], dim=1)

    def _corners(self, x: torch.Tensor, res: int, dims: int, size: int, row0: int):
        # Same arithmetic as _interp, so the weights are bit-identical to the uncached path.
        pos = x.clamp(0, 1) * res
        base = torch.floor(pos).clamp(max=res - 1)
        frac = pos - base
        base = base.to(torch.int64)
        idx, wts = [], []
        for c in range(1 << dims):
            offs = torch.tensor([(c >> d) & 1 for d in range(dims)], dtype=torch.int64, device=x.device)
            wts.append(torch.prod(torch.where(offs.bool(), frac, 1 - frac), dim=1))
            idx.append(self._index(base + offs, res, size) + row0)
        return torch.stack(idx, 1), torch.stack(wts, 1)

    @staticmethod
    def _index(corner: torch.Tensor, res: int, size: int) -> torch.Tensor:
        dims = corner.shape[1]
        if (res + 1) ** dims <= size:  # coarse level: the table holds the grid densely, no collisions
            idx = corner[:, 0]
            for d in range(1, dims):
                idx = idx * (res + 1) + corner[:, d]
            return idx
        idx = corner[:, 0] * _PRIMES[0]
        for d in range(1, dims):
            idx = idx ^ (corner[:, d] * _PRIMES[d])
        return idx % size

    def _level3(self, x, table, res):
        return self._interp(x, table, res, 3)

    def _level2(self, x, table, res):
        return self._interp(x, table, res, 2)

    def _interp(self, x: torch.Tensor, table: torch.Tensor, res: int, dims: int) -> torch.Tensor:
        pos = x.clamp(0, 1) * res
        base = torch.floor(pos).clamp(max=res - 1)
        frac = pos - base
        base = base.to(torch.int64)
        out = 0
        for c in range(1 << dims):
            offs = torch.tensor([(c >> d) & 1 for d in range(dims)], dtype=torch.int64, device=x.device)
            w = torch.prod(torch.where(offs.bool(), frac, 1 - frac), dim=1, keepdim=True)
            out = out + w * table[self._index(base + offs, res, table.shape[0])]
        return out
