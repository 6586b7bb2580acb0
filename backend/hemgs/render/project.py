"""Projection of 3D Gaussians to the image plane, and SH colour, with gsplat's math.

Everything here is plain differentiable PyTorch and runs on any device. The projection follows
gsplat 1.5.3's CUDA kernels (`ProjectionEWA3DGSFused.cu`, `Utils.cuh: persp_proj, add_blur`):
EWA splatting with the view-frustum clamp of the Jacobian (1.3x the field of view), a 2D blur of
`eps2d` pixels^2, culling of Gaussians nearer than `near_plane`, and an opacity-aware bounding
radius `ceil(min(3.33, sqrt(2 ln(255 opacity))) * sigma)` per axis. It is written element-wise
(no batched 3x3 matmuls) because that is several times faster on the CPU than gsplat's own
pure-torch `_fully_fused_projection`, against which the tests check it.

Covariance and SH evaluation use gsplat's pure-torch helpers when they import, with small
fallbacks of our own (checked against gsplat in the tests) for other gsplat versions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

ALPHA_THRESHOLD = 1.0 / 255.0  # gsplat Common.h: alphas below this are skipped
MAX_ALPHA = 0.999  # gsplat clamps each Gaussian's alpha to this
TRANSMITTANCE_MIN = 1e-4  # a pixel stops once its transmittance would fall to or below this
EPS2D = 0.3
NEAR_PLANE = 0.01
FAR_PLANE = 1e10
MAX_EXTEND = 3.33

try:  # private helpers: present in gsplat 1.x, but not a public API
    from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci as _gs_covar
    from gsplat.cuda._torch_impl import _spherical_harmonics as _gs_sh
except Exception:  # noqa: BLE001 - any import problem means "use our fallbacks"
    _gs_covar = None
    _gs_sh = None


@dataclass
class Projected:
    """Screen-space Gaussians of one camera; rows only for the visible (`ids`) Gaussians."""

    ids: Tensor  # (M,) int64 indices into the input Gaussians
    means2d: Tensor  # (M,2) pixel coordinates (x right, y down; pixel centres at +0.5)
    conics: Tensor  # (M,3) inverse 2D covariance (a, b, c): sigma = a dx^2/2 + c dy^2/2 + b dx dy
    depths: Tensor  # (M,) camera-space z
    radii: Tensor  # (M,2) int32 bounding half-extent in pixels (x, y)
    opacities: Tensor  # (M,)


# ---- covariance ----------------------------------------------------------------------------
def covariances(quats: Tensor, scales: Tensor) -> Tensor:
    """World-space 3x3 covariances R S S^T R^T from wxyz quaternions (any length) and scales."""
    if _gs_covar is not None:
        return _gs_covar(quats, scales, compute_covar=True, compute_preci=False)[0]
    return covariances_fallback(quats, scales)


def covariances_fallback(quats: Tensor, scales: Tensor) -> Tensor:
    """Our own `covariances` (used when gsplat's helper cannot be imported)."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    R = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(quats.shape[:-1] + (3, 3))
    M = R * scales[..., None, :]
    return M @ M.transpose(-1, -2)


# ---- projection ----------------------------------------------------------------------------
def project(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, viewmat: Tensor,
            K: Tensor, width: int, height: int, *, eps2d: float = EPS2D,
            near_plane: float = NEAR_PLANE, far_plane: float = FAR_PLANE,
            opacity_aware: bool = True) -> Projected:
    """Project Gaussians into one pinhole camera and drop the ones that cannot be seen.

    Culled, as gsplat: behind `near_plane` or beyond `far_plane`, a singular blurred 2D
    covariance, opacity below 1/255 (with `opacity_aware`), or a bounding box off the image.
    """
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    means_c = means @ R.T + t
    x, y, z = means_c.unbind(-1)
    # Cheap cull first, so the covariance work runs only on Gaussians in front of the camera.
    with torch.no_grad():
        keep = (z >= near_plane) & (z <= far_plane)
        if opacity_aware:
            keep &= opacities >= ALPHA_THRESHOLD
        ids = keep.nonzero().squeeze(1)
    x, y, z = x[ids], y[ids], z[ids]
    cov_w = covariances(quats[ids], scales[ids])
    cov = R @ cov_w @ R.T  # camera-space covariance, (M,3,3)

    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    rz = 1.0 / z
    # Clamp the point used for the Jacobian to 1.3x the frustum, as gsplat does, so Gaussians
    # far off-axis do not get huge projected footprints.
    tx = z * torch.clamp(x * rz, min=-(cx / fx + 0.3 * tan_fovx), max=(width - cx) / fx + 0.3 * tan_fovx)
    ty = z * torch.clamp(y * rz, min=-(cy / fy + 0.3 * tan_fovy), max=(height - cy) / fy + 0.3 * tan_fovy)
    # J = [[j00, 0, j02], [0, j11, j12]]; cov2d = J cov J^T written out element-wise.
    j00, j11 = fx * rz, fy * rz
    j02, j12 = -fx * tx * rz * rz, -fy * ty * rz * rz
    c00, c01, c02 = cov[:, 0, 0], cov[:, 0, 1], cov[:, 0, 2]
    c11, c12, c22 = cov[:, 1, 1], cov[:, 1, 2], cov[:, 2, 2]
    s00 = j00 * j00 * c00 + 2 * j00 * j02 * c02 + j02 * j02 * c22 + eps2d
    s11 = j11 * j11 * c11 + 2 * j11 * j12 * c12 + j12 * j12 * c22 + eps2d
    s01 = j00 * j11 * c01 + j00 * j12 * c02 + j02 * j11 * c12 + j02 * j12 * c22
    det = s00 * s11 - s01 * s01
    mx = fx * x * rz + cx
    my = fy * y * rz + cy

    with torch.no_grad():
        op = opacities[ids]
        if opacity_aware:
            # Opacity-aware box (gsplat 1.5): beyond it alpha < 1/255 anyway.
            extend = torch.clamp(torch.sqrt(2.0 * torch.log(op.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD)),
                                 max=MAX_EXTEND)
        else:
            extend = torch.full_like(op, MAX_EXTEND)
        good = det > 0
        rx = torch.ceil(extend * torch.sqrt(s00.clamp_min(0)))
        ry = torch.ceil(extend * torch.sqrt(s11.clamp_min(0)))
        good &= (rx > 0) & (ry > 0)  # gsplat gives a zero-radius Gaussian no tiles
        good &= (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        sel = good.nonzero().squeeze(1)
        radii = torch.stack([rx, ry], -1)[sel].to(torch.int32)
    det = det[sel]
    conics = torch.stack([s11[sel] / det, -s01[sel] / det, s00[sel] / det], -1)
    return Projected(ids=ids[sel], means2d=torch.stack([mx[sel], my[sel]], -1), conics=conics,
                     depths=z[sel], radii=radii, opacities=opacities[ids[sel]])


# ---- spherical harmonics -------------------------------------------------------------------
def sh_colors(sh_degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """RGB from SH coefficients (M,K,3) seen along `dirs` (M,3): SH + 0.5 clamped at 0 (gsplat)."""
    if _gs_sh is not None:
        raw = _gs_sh(sh_degree, dirs, coeffs)
    else:
        raw = sh_eval_fallback(sh_degree, dirs, coeffs)
    return torch.clamp_min(raw + 0.5, 0.0)


# Real SH basis constants used by 3DGS (Inria) and gsplat; bands 0..3.
_C0 = 0.28209479177387814
_C1 = 0.4886025119029199
_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
       0.5462742152960396)
_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
       -0.4570457994644658, 1.445305721320277, -0.5900435899266435)


def sh_eval_fallback(sh_degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """Our own SH evaluation (no +0.5), for when gsplat's helper cannot be imported."""
    d = F.normalize(dirs, dim=-1)
    x, y, z = d[:, 0:1], d[:, 1:2], d[:, 2:3]
    out = _C0 * coeffs[:, 0]
    if sh_degree < 1:
        return out
    out = out - _C1 * y * coeffs[:, 1] + _C1 * z * coeffs[:, 2] - _C1 * x * coeffs[:, 3]
    if sh_degree < 2:
        return out
    xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
    out = (out + _C2[0] * xy * coeffs[:, 4] + _C2[1] * yz * coeffs[:, 5]
           + _C2[2] * (2 * zz - xx - yy) * coeffs[:, 6] + _C2[3] * xz * coeffs[:, 7]
           + _C2[4] * (xx - yy) * coeffs[:, 8])
    if sh_degree < 3:
        return out
    return (out + _C3[0] * y * (3 * xx - yy) * coeffs[:, 9] + _C3[1] * xy * z * coeffs[:, 10]
            + _C3[2] * y * (4 * zz - xx - yy) * coeffs[:, 11]
            + _C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * coeffs[:, 12]
            + _C3[4] * x * (4 * zz - xx - yy) * coeffs[:, 13] + _C3[5] * z * (xx - yy) * coeffs[:, 14]
            + _C3[6] * x * (xx - 3 * yy) * coeffs[:, 15])
