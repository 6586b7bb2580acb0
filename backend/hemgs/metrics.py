"""Image fidelity metrics: PSNR, SSIM (pytorch-msssim), and LPIPS's honest absence.

Images are float arrays or tensors in [0,1], shape (H,W,3). SSIM uses pytorch-msssim's standard
11x11 Gaussian window (sigma 1.5), the setting of the 3DGS papers.
"""

from __future__ import annotations

import math

import numpy as np

# LPIPS needs network weights that are downloaded on first use; this project never fetches at
# run time, so the metric is reported as unavailable rather than approximated.
LPIPS_UNAVAILABLE = "LPIPS unavailable: its network weights are not shipped for offline use"


def mse(a, b) -> float:
    """Mean squared error of two images of the same shape, in float64."""
    a64 = np.asarray(_np(a), dtype=np.float64)
    b64 = np.asarray(_np(b), dtype=np.float64)
    if a64.shape != b64.shape:
        raise ValueError(f"images differ in shape: {a64.shape} vs {b64.shape}")
    return float(np.mean((a64 - b64) ** 2))


def _psnr_of(m: float, data_range: float = 1.0) -> float:
    return math.inf if m == 0.0 else 10.0 * math.log10(data_range**2 / m)


def psnr(a, b, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB; inf for identical images."""
    return _psnr_of(mse(a, b), data_range)


def ssim(a, b, data_range: float = 1.0) -> float:
    """Structural similarity (Wang et al. 2004) of two (H,W,3) images."""
    import torch
    from pytorch_msssim import ssim as _ssim

    ta = torch.as_tensor(_np(a), dtype=torch.float32).permute(2, 0, 1)[None]
    tb = torch.as_tensor(_np(b), dtype=torch.float32).permute(2, 0, 1)[None]
    if ta.shape != tb.shape:
        raise ValueError(f"images differ in shape: {tuple(ta.shape)} vs {tuple(tb.shape)}")
    return float(_ssim(ta, tb, data_range=data_range, size_average=True))


def ssim_loss_term(pred, target):
    """1 - SSIM on (H,W,3) tensors, differentiable: the D-SSIM term of the 3DGS training loss."""
    from pytorch_msssim import ssim as _ssim

    return 1.0 - _ssim(pred.permute(2, 0, 1)[None], target.permute(2, 0, 1)[None], data_range=1.0)


def _np(x):
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return x


def compare_images(refs, others) -> dict:
    """Mean PSNR/SSIM over paired image lists, the PSNR of the mean MSE, the worst view's PSNR,
    and the per-view values (images in [0, 1])."""
    if len(refs) != len(others) or not refs:
        raise ValueError("need the same, non-zero number of reference and test images")
    errors = [mse(r, o) for r, o in zip(refs, others)]
    p = [_psnr_of(m) for m in errors]
    s = [ssim(r, o) for r, o in zip(refs, others)]
    finite = [v for v in p if math.isfinite(v)]
    # Mean PSNR over views as the 3DGS papers report it; identical views (inf) are listed, not averaged.
    # The PSNR of the mean MSE and the worst view: a view that fails cannot hide in the mean.
    return {
        "psnr": float(np.mean(finite)) if finite else math.inf,
        "psnr_of_mean_mse": _psnr_of(float(np.mean(errors))),
        "worst_psnr": float(min(p)),
        "ssim": float(np.mean(s)),
        "psnr_per_view": p,
        "ssim_per_view": s,
        "views": len(p),
        "lpips": None,
        "lpips_note": LPIPS_UNAVAILABLE,
    }
