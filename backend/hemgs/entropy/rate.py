"""Quantization and rate estimates shared by every entropy model.

Adaptive quantization (HAC, paper Eq. 3): f_hat = round(f / q) * q with a per-element step q.
During training the rounding is replaced by uniform noise (for the rate) or a straight-through
round (for the values that reach the renderer), as HAC does.
"""

from __future__ import annotations

import math

import torch

# Probability floor per symbol: keeps -log2 finite and matches what an entropy coder can spend.
_P_MIN = 1e-9
_SCALE_MIN = 1e-9


def quantize(x: torch.Tensor, q: torch.Tensor, mode: str) -> torch.Tensor:
    """mode: "noise" (training rate), "ste" (training values), "round" (coding)."""
    if mode == "noise":
        return x + (torch.rand_like(x) - 0.5) * q
    y = torch.round(x / q) * q
    if mode == "ste":
        return x + (y - x).detach()
    if mode == "round":
        return y
    raise ValueError(f"unknown quantization mode {mode!r}")


def gaussian_bits(x_hat: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Bits of each value under N(mean, scale) integrated over its quantization bin of width q."""
    scale = scale.clamp_min(_SCALE_MIN)
    inv = 1.0 / (scale * math.sqrt(2.0))
    upper = torch.erf((x_hat + 0.5 * q - mean) * inv)
    lower = torch.erf((x_hat - 0.5 * q - mean) * inv)
    p = (0.5 * (upper - lower)).abs().clamp_min(_P_MIN)
    return -torch.log2(p)


def laplace_bits(x_hat: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Bits of each value under a Laplacian of standard deviation `scale` (b = scale/√2) over its
    bin of width q; the bin's mass from the tail on the far side of the mean (no cancellation)."""
    b = scale.clamp_min(_SCALE_MIN) / math.sqrt(2.0)
    z = (x_hat - mean).abs()
    near, far = (z - 0.5 * q) / b, (z + 0.5 * q) / b
    # tail mass beyond t·b: ½·exp(-t) for t >= 0; a bin straddling the mean: 1 - ½e^{near} - ½e^{-far}
    inside = 1.0 - 0.5 * torch.exp(near.clamp_max(0.0)) - 0.5 * torch.exp(-far)
    outside = 0.5 * (torch.exp(-near.clamp_min(0.0)) - torch.exp(-far))
    p = torch.where(near < 0, inside, outside).clamp_min(_P_MIN)
    return -torch.log2(p)


def uniform_bits(half_range: float, q: torch.Tensor) -> torch.Tensor:
    """Bits of a value coded uniformly over the ~2h/q + 1 steps of width q that cover [-h, h]
    (codec/streams.py, family "uniform"): log2 of their count, whatever the value."""
    return torch.log2(2.0 * half_range / q + 1.0)


def symbol_bits(family: str):
    """The training rate function of a symbol distribution (coding/gaussian_coder.FAMILIES)."""
    return laplace_bits if family == "laplace" else gaussian_bits


def bernoulli_bits(mask_prob: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Bits of binary values under per-element probabilities of being 1."""
    p = torch.where(mask > 0.5, mask_prob, 1 - mask_prob).clamp_min(_P_MIN)
    return -torch.log2(p)
