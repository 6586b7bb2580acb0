"""HAC-level entropy model: hash-grid context -> Gaussian (mean, scale) and quantization steps.

For each anchor, the binary hash grid at its position gives a context feature; one MLP turns it
into a mean and scale for every element of the anchor's feature (F), scaling (6) and offsets (3k),
and one step refinement per group: q = q0 * (1 + tanh(r)), with HAC's base steps (features 1,
scaling 1e-3 in log space, offsets 0.2 in units of the anchor's offset scale). This is the
"HAC-mode" baseline that the HEMGS model (hemgs.entropy.hemgs) is measured against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .hashgrid import BinaryHashGrid, GridLookup, HashGridConfig
from .rate import bernoulli_bits, gaussian_bits, quantize

GROUPS = ("features", "scaling", "offsets")
BASE_STEP = {"features": 1.0, "scaling": 1e-3, "offsets": 0.2}


@dataclass
class AnchorAttrs:
    """The coded attributes of N anchors (locations are coded losslessly apart)."""

    features: torch.Tensor  # (N, F)
    scaling: torch.Tensor  # (N, 6), log space
    offsets: torch.Tensor  # (N, k, 3)
    mask: torch.Tensor  # (N, k) in {0,1}

    def flat(self, group: str) -> torch.Tensor:
        v = getattr(self, group)
        return v.reshape(v.shape[0], -1)


@dataclass
class GroupParams:
    mean: torch.Tensor
    scale: torch.Tensor
    step: torch.Tensor  # broadcastable to mean


class HacEntropyModel(nn.Module):
    CODEC = "hac"  # the codec that writes files of this model (codec/registry.py)

    def __init__(self, feat_dim: int, k: int, bbox_min, bbox_max, grid: HashGridConfig | None = None,
                 hidden: int | None = None, seed: int = 0):
        super().__init__()
        self.feat_dim, self.k = feat_dim, k
        self.dims = {"features": feat_dim, "scaling": 6, "offsets": 3 * k}
        self.grid = BinaryHashGrid(grid or HashGridConfig(), seed=seed)
        self.register_buffer("bbox_min", torch.as_tensor(bbox_min, dtype=torch.float32).reshape(3))
        self.register_buffer("bbox_max", torch.as_tensor(bbox_max, dtype=torch.float32).reshape(3))
        hidden = hidden or 2 * feat_dim
        out = 2 * sum(self.dims.values()) + len(GROUPS)
        # HAC's head: one hidden layer of 2F. Its float16 weights are part of every file.
        self.mlp = nn.Sequential(nn.Linear(self.grid.config.out_dim, hidden), nn.ReLU(), nn.Linear(hidden, out))

    def normalise(self, xyz: torch.Tensor) -> torch.Tensor:
        return (xyz - self.bbox_min) / (self.bbox_max - self.bbox_min).clamp_min(1e-9)

    def context(self, xyz: torch.Tensor) -> torch.Tensor:
        return self.grid(self.normalise(xyz))

    def lookup(self, xyz: torch.Tensor) -> GridLookup:
        """The hash grid's interpolation at fixed positions `xyz`, built once: `context_of(lookup)`
        then equals `context(xyz)` (up to summation order) at a fraction of the cost."""
        return self.grid.lookup(self.normalise(xyz))

    def context_of(self, lookup: GridLookup) -> torch.Tensor:
        """Context features of the positions behind `lookup` (differentiable in the tables)."""
        return self.grid.encode(lookup)

    def head(self, ctx: torch.Tensor) -> dict[str, GroupParams]:
        """Distribution parameters of every group from a context feature."""
        return self.split(self.mlp(ctx))

    def split(self, raw: torch.Tensor) -> dict[str, GroupParams]:
        """Parse the MLP's raw output (the codec computes `raw` through the exact path)."""
        out, at = {}, 0
        for group in GROUPS:
            d = self.dims[group]
            mean, scale = raw[:, at:at + d], raw[:, at + d:at + 2 * d]
            at += 2 * d
            out[group] = GroupParams(mean, F.softplus(scale) + 1e-6, None)
        for i, group in enumerate(GROUPS):
            out[group].step = BASE_STEP[group] * (1 + torch.tanh(raw[:, at + i:at + i + 1]))
        return out

    def forward(self, xyz: torch.Tensor | None, attrs: AnchorAttrs, context: torch.Tensor | None = None,
                render_mode: str = "ste") -> tuple[AnchorAttrs, dict[str, torch.Tensor]]:
        """Training pass: quantized attributes for rendering and bits per group.

        `render_mode`: "noise" (uniform noise of one step: the distortion then reaches the steps,
        as in HAC's first rate phase) or "ste" (rounded values, straight-through to the values).
        `context` (rows matching `attrs`, e.g. from `context_of`) replaces `xyz` when given."""
        params = self.head(self.context(xyz) if context is None else context)
        bits, quant = {}, {}
        for group in GROUPS:
            p, x = params[group], attrs.flat(group)
            step = p.step.clamp_min(1e-6 * BASE_STEP[group])
            quant[group] = quantize(x, step, render_mode)
            b = gaussian_bits(quantize(x, step, "noise"), p.mean, p.scale, step)
            if group == "offsets":  # pruned offsets are not coded
                b = b * attrs.mask.repeat_interleave(3, dim=1)
            bits[group] = b.sum()
        p1 = attrs.mask.float().mean().detach().clamp(1e-3, 1 - 1e-3)
        bits["mask"] = bernoulli_bits(p1.expand_as(attrs.mask), attrs.mask.float()).sum()
        n = attrs.features.shape[0]
        hat = AnchorAttrs(quant["features"], quant["scaling"], quant["offsets"].reshape(n, self.k, 3), attrs.mask)
        return hat, bits

    def params_per_anchor(self) -> int:
        return sum(self.dims.values())
