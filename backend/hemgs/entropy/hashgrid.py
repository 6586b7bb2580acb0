"""Binary multi-resolution hash grid over anchor positions (HAC's scene-specific hyperprior).

Pure PyTorch so it trains and decodes on the CPU. Written by hand: no maintained library offers a
CPU hash-grid encoder with binarised tables (tiny-cuda-nn is CUDA-only). The layout follows HAC:
a 3D grid of 12 levels (resolutions 18..514) plus three axis-aligned 2D planes of 4 levels, 2
features per level; table entries are binarised to +-1 with a straight-through estimator so that
they cost one bit each, coded by hemgs.coding.bits.
"""

from __future__ import annotations

import math
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
