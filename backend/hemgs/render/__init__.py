"""Rendering 3D Gaussians: gsplat on CUDA, our tile rasterizer (same math) on the CPU.

`rasterize` is the differentiable, tensor-level entry (one camera), shaped like
`gsplat.rasterization`; `render` is the convenience for a `GaussianScene` and a `Camera`.
Conventions: OpenCV/COLMAP cameras (`viewmat` world->camera, x right, y down, z forward),
pixel centres at +0.5, wxyz quaternions, activated scales and opacities.
Submodules: `project` (projection and SH colour, gsplat's math), `tiles` (the CPU rasterizer),
`dense` (the slow reference, for tests).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError
from .dense import composite_dense
from .project import project as _project
from .project import sh_colors
from .tiles import composite_tiles

BACKENDS = ("auto", "tiles", "dense", "gsplat")

__all__ = ["rasterize", "render", "BACKENDS"]


def rasterize(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
              viewmat: Tensor, K: Tensor, width: int, height: int, *, sh_degree: int | None = None,
              background: Tensor | None = None, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Render one camera; returns image (H,W,3) and alpha (H,W,1), differentiable.

    means (N,3); quats (N,4) wxyz, any length; scales (N,3) activated (exp); opacities (N,)
    activated (sigmoid); colors (N,K,3) SH coefficients when `sh_degree` is given (colour = SH
    seen from the camera centre + 0.5, clamped at 0, as gsplat), else (N,3) RGB; viewmat (4,4)
    world->camera; K (3,3); background (3,) or None for black.
    backend: "auto" (gsplat for CUDA tensors, else "tiles"), "tiles", "dense" or "gsplat".
    """
    if backend not in BACKENDS:
        raise InputError(f"unknown render backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    width, height = int(width), int(height)
    if width < 1 or height < 1:
        raise InputError(f"image size {width}x{height} is empty")
    dev, dt = means.device, means.dtype
    viewmat = torch.as_tensor(viewmat, device=dev, dtype=dt)
    K = torch.as_tensor(K, device=dev, dtype=dt)
    if background is not None:
        background = torch.as_tensor(background, device=dev, dtype=dt).reshape(3)
    _check_shapes(means, quats, scales, opacities, colors, viewmat, K, sh_degree)
    if backend == "auto":
        backend = "gsplat" if means.is_cuda else "tiles"
    if backend == "gsplat":
        if means.shape[0] == 0:  # gsplat 1.5.3 dies of a floating point exception on zero Gaussians
            alpha = torch.zeros(height, width, 1, device=dev, dtype=dt)
            img = torch.zeros(height, width, 3, device=dev, dtype=dt)
            return (img if background is None else img + background), alpha
        return _rasterize_gsplat(means, quats, scales, opacities, colors, viewmat, K, width, height,
                                 sh_degree, background)

    p = _project(means, quats, scales, opacities, viewmat, K, width, height)
    if sh_degree is None:
        rgb = colors[p.ids]
    else:
        campos = torch.linalg.inv(viewmat)[:3, 3]  # gsplat: inverse(viewmat), not R^T t
        rgb = sh_colors(sh_degree, means[p.ids] - campos, colors[p.ids])
    if backend == "dense":
        return composite_dense(p.means2d, p.conics, p.opacities, rgb, p.depths, width, height, background)
    return composite_tiles(p.means2d, p.conics, p.opacities, rgb, p.depths, p.radii, width, height, background)


def _check_shapes(means, quats, scales, opacities, colors, viewmat, K, sh_degree) -> None:
    n = means.shape[0] if means.ndim == 2 else -1
    want = {"means": (means, (n, 3)), "quats": (quats, (n, 4)), "scales": (scales, (n, 3)),
            "opacities": (opacities, (n,)), "viewmat": (viewmat, (4, 4)), "K": (K, (3, 3))}
    for name, (t, shape) in want.items():
        if tuple(t.shape) != shape:
            raise InputError(f"rasterize: {name} has shape {tuple(t.shape)}, expected {shape}")
    if sh_degree is None:
        if tuple(colors.shape) != (n, 3):
            raise InputError(f"rasterize: colors has shape {tuple(colors.shape)}, expected ({n}, 3) RGB "
                             "(or pass sh_degree for SH coefficients)")
    else:
        k = (int(sh_degree) + 1) ** 2
        if not 0 <= int(sh_degree) <= 3 or colors.ndim != 3 or colors.shape[0] != n \
                or colors.shape[1] < k or colors.shape[2] != 3:
            raise InputError(f"rasterize: colors has shape {tuple(colors.shape)}, expected ({n}, >={k}, 3) "
                             f"SH coefficients for sh_degree {sh_degree}")


def _rasterize_gsplat(means, quats, scales, opacities, colors, viewmat, K, width, height,
                      sh_degree, background) -> tuple[Tensor, Tensor]:
    if not means.is_cuda:
        raise InputError("render backend 'gsplat' needs CUDA tensors; use backend 'tiles' on the CPU")
    try:
        from gsplat import rasterization
    except ImportError as exc:
        raise InputError(f"render backend 'gsplat' is unavailable: {exc}") from None
    # The background is composited here, as the tile rasterizer does (img + T·bg): gsplat 1.5.3's
    # default packed mode rejects a `backgrounds` tensor of the shape its own docs ask for.
    img, alpha, _ = rasterization(
        means, quats, scales, opacities, colors, viewmat[None], K[None], width, height, sh_degree=sh_degree,
    )
    img, alpha = img[0], alpha[0]
    if background is not None:
        img = img + (1.0 - alpha) * background
    return img, alpha


def render(scene, camera, *, device: str = "auto", background=(0.0, 0.0, 0.0),
           backend: str = "auto") -> np.ndarray:
    """Render a GaussianScene from a Camera: (H,W,3) float32 image in [0,1], no gradients."""
    from ..device import resolve_device

    dev = resolve_device(device)
    with torch.no_grad():
        t = lambda a: torch.as_tensor(np.ascontiguousarray(a), device=dev, dtype=torch.float32)  # noqa: E731
        img, _ = rasterize(
            t(scene.means), t(scene.quats), t(scene.log_scales).exp(), torch.sigmoid(t(scene.opacity_logits)),
            t(scene.sh), t(camera.viewmat), t(camera.K), camera.width, camera.height,
            sh_degree=scene.sh_degree, background=t(np.asarray(background, np.float32)), backend=backend,
        )
    return img.clamp(0.0, 1.0).cpu().numpy().astype(np.float32)
