"""Reference compositor: every visible Gaussian against every pixel, globally depth-sorted.

The same per-pixel rule as gsplat and `tiles.py`, written as directly as possible (one
[Gaussians, pixels] tensor, transmittance as a product of the kept (1 - alpha) terms), so it
can check the tile rasterizer. Memory is O(M * H * W): for small scenes and tests only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError
from .project import ALPHA_THRESHOLD, MAX_ALPHA, TRANSMITTANCE_MIN

MAX_ELEMENTS = 1 << 27  # refuse work that would need gigabytes


def composite_dense(means2d: Tensor, conics: Tensor, opacities: Tensor, colors: Tensor,
                    depths: Tensor, width: int, height: int,
                    background: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Composite projected Gaussians (M rows) into an image (H,W,D) and alpha (H,W,1)."""
    dev, dt = means2d.device, means2d.dtype
    M = means2d.shape[0]
    if M * width * height > MAX_ELEMENTS:
        raise InputError(f"dense reference asked for {M} Gaussians x {width}x{height} pixels; too large")
    order = torch.argsort(depths.detach(), stable=True)
    m, q, o, col = means2d[order], conics[order], opacities[order], colors[order]
    ys, xs = torch.meshgrid(torch.arange(height, device=dev, dtype=dt) + 0.5,
                            torch.arange(width, device=dev, dtype=dt) + 0.5, indexing="ij")
    dx = xs.reshape(1, -1) - m[:, 0:1]  # (M, HW)
    dy = ys.reshape(1, -1) - m[:, 1:2]
    sigma = 0.5 * (q[:, 0:1] * dx * dx + q[:, 2:3] * dy * dy) + q[:, 1:2] * dx * dy
    alpha = torch.clamp_max(o[:, None] * torch.exp(-sigma), MAX_ALPHA)
    alpha = torch.where((alpha >= ALPHA_THRESHOLD) & (sigma >= 0), alpha, torch.zeros_like(alpha))
    T_incl = torch.cumprod(1.0 - alpha, dim=0)
    keep = T_incl > TRANSMITTANCE_MIN
    a_kept = torch.where(keep, alpha, torch.zeros_like(alpha))
    T_after = torch.cumprod(1.0 - a_kept, dim=0)
    T_before = torch.cat([torch.ones_like(T_after[:1]), T_after[:-1]], 0)
    weights = a_kept * T_before
    img = (weights.T @ col).reshape(height, width, -1)
    T_final = (T_after[-1] if M else torch.ones(width * height, device=dev, dtype=dt)).reshape(height, width, 1)
    if background is not None:
        img = img + T_final * background
    return img, 1.0 - T_final
