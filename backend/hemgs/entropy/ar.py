"""The autoregressive context network (paper §3.3.3) and the context inputs it is trained on.

For each coded anchor, its context anchors (chosen by `hemgs.entropy.context.select_context`)
give their already-decoded attribute vectors a_j (A values: the attribute being coded) and their
integer offsets o_j. A shared MLP embeds each neighbour from [a_j, o_j/R, |o_j|/R]; masked mean
and max pooling make the result independent of how many neighbours there are and of their
order; a small MLP turns [mean, max, count/n] into the context feature (D). An anchor without
any context gets a learned "no context" vector instead.

Every operation works within one row, so the codec can evaluate `forward_flat` in float64 fixed
chunks through `hemgs.coding.exact_params.run_deterministic` and the decoder reproduces the
encoder bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from .context import N_CONTEXT, RADIUS, ContextSelection, select_context


@dataclass
class ContextInputs:
    """Context of every anchor as tensors: values (M, n, A), offsets (M, n, 3) float, mask (M, n)."""

    values: torch.Tensor
    offsets: torch.Tensor
    mask: torch.Tensor
    selection: ContextSelection | None = None


def pack_context(values, offsets, mask) -> torch.Tensor:
    """One flat row per anchor: [values (n*A), offsets (n*3), mask (n)] -> (M, n*(A+4))."""
    values = torch.as_tensor(values)
    m, n = values.shape[0], values.shape[1]
    offsets = torch.as_tensor(offsets).to(values.dtype)
    mask = torch.as_tensor(mask).to(values.dtype)
    if offsets.shape != (m, n, 3) or mask.shape != (m, n):
        raise InputError(f"context shapes disagree: values {tuple(values.shape)}, offsets "
                         f"{tuple(offsets.shape)}, mask {tuple(mask.shape)}")
    return torch.cat([values.reshape(m, -1), offsets.reshape(m, -1), mask], dim=1)


class ContextNet(nn.Module):
    """Context feature (M, out_dim) from up to n neighbours' attributes (attr_dim each)."""

    def __init__(self, attr_dim: int, out_dim: int = 32, hidden: int = 32, radius: int = RADIUS,
                 n_max: int = N_CONTEXT):
        super().__init__()
        if attr_dim < 1 or out_dim < 1 or hidden < 1 or radius < 1 or n_max < 1:
            raise InputError("ContextNet: attr_dim, out_dim, hidden, radius and n_max must be >= 1")
        self.attr_dim, self.out_dim, self.radius, self.n_max = attr_dim, out_dim, radius, n_max
        # The last ReLU keeps embeddings >= 0, so a masked max can fill empty slots with 0.
        self.embed = nn.Sequential(nn.Linear(attr_dim + 4, hidden), nn.ReLU(),
                                   nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(2 * hidden + 1, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))
        self.empty = nn.Parameter(torch.zeros(out_dim))

    def forward(self, values: torch.Tensor, offsets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """values (M, n, A), offsets (M, n, 3) in voxels, mask (M, n) -> (M, out_dim)."""
        if values.dim() != 3 or values.shape[2] != self.attr_dim:
            raise InputError(f"ContextNet: values have shape {tuple(values.shape)}, expected (M, n, {self.attr_dim})")
        dtype = self.empty.dtype
        values = values.to(dtype)
        m = mask.to(dtype)
        off = offsets.to(dtype) / self.radius
        dist = torch.sqrt((off * off).sum(dim=2, keepdim=True))  # sqrt is correctly rounded in IEEE
        values = torch.where(m[..., None] > 0, values, values.new_zeros(()))
        h = self.embed(torch.cat([values, off, dist], dim=2)) * m[..., None]
        count = m.sum(dim=1, keepdim=True)
        mean = h.sum(dim=1) / count.clamp(min=1.0)
        peak = h.amax(dim=1) if h.shape[1] else h.new_zeros(h.shape[0], h.shape[2])
        out = self.head(torch.cat([mean, peak, count / self.n_max], dim=1))
        return torch.where(count > 0, out, self.empty.expand_as(out))

    def forward_flat(self, x: torch.Tensor) -> torch.Tensor:
        """The same on packed rows (`pack_context`): (M, n*(A+4)) -> (M, out_dim). Row-independent."""
        width = self.attr_dim + 4
        if x.dim() != 2 or x.shape[1] % width:
            raise InputError(f"ContextNet.forward_flat: rows of {x.shape[-1]} values are not n*{width}")
        k = x.shape[1] // width
        a = k * self.attr_dim
        return self.forward(x[:, :a].reshape(-1, k, self.attr_dim), x[:, a:a + 3 * k].reshape(-1, k, 3),
                            x[:, a + 3 * k:])


class FlatContextNet(nn.Module):
    """`ContextNet.forward_flat` as a module, for `run_deterministic(FlatContextNet(net), rows)`."""

    def __init__(self, net: ContextNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_flat(x)


def gather_context(selection: ContextSelection, attrs: torch.Tensor, rows=None) -> ContextInputs:
    """Context tensors of `rows` (default: all anchors) from `attrs` (N, A) of all anchors.

    Only rows in the selection's index are read, i.e. anchors of earlier groups; gradients flow
    into `attrs`. Empty slots hold zeros.
    """
    attrs = torch.as_tensor(attrs)
    if attrs.dim() != 2 or attrs.shape[0] != selection.index.shape[0]:
        raise InputError(f"attributes have shape {tuple(attrs.shape)}, expected ({selection.index.shape[0]}, A)")
    index = selection.index if rows is None else selection.index[rows]
    offsets = selection.offsets if rows is None else selection.offsets[rows]
    idx = torch.from_numpy(np.ascontiguousarray(index)).to(attrs.device)
    mask = idx >= 0
    # where, not a product: rows not yet decoded may hold anything (NaN * 0 is NaN).
    values = torch.where(mask[..., None], attrs[idx.clamp(min=0)], attrs.new_zeros(()))
    off = torch.from_numpy(np.ascontiguousarray(offsets)).to(device=attrs.device, dtype=attrs.dtype)
    return ContextInputs(values=values, offsets=off, mask=mask, selection=selection)


def context_for_training(coords, groups, attrs: torch.Tensor, *, selection: ContextSelection | None = None,
                         **select_kwargs) -> ContextInputs:
    """Context inputs for all anchors at once, as the decoder will see them.

    `attrs` (N, A) are the *quantized* attributes of every anchor (with gradients, e.g. through
    a straight-through rounding). Each anchor sees only anchors of earlier groups, selected by
    `select_context(coords, groups, **select_kwargs)` (or a given `selection`, to reuse it across
    steps: it depends only on the coordinates). Training and coding thus use the same contexts.
    """
    sel = selection if selection is not None else select_context(coords, groups, **select_kwargs)
    return gather_context(sel, attrs)
