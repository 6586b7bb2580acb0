"""Bake an anchor model's view-dependent neural Gaussians into a static 3DGS scene.

Every viewer, the PLY/SPZ writers and the Blender preview take plain Gaussians with SH colours,
while the anchor model's MLPs produce colour, opacity and covariance per view. Two modes:

- "sh_fit" (default): look at every anchor from `directions` evenly spread directions (a
  Fibonacci sphere, cameras at the model's view-sphere radius). Per Gaussian, the colours seen
  are least-squares fitted by SH of `sh_degree` (one pseudo-inverse for the whole scene, since all
  Gaussians share the directions); opacity is the mean over directions of the opacity actually
  drawn (a negative MLP opacity draws nothing, so it counts as 0); log-scales are averaged and
  rotations averaged after aligning each quaternion's sign with the first view's. Gaussians whose
  mask is off or whose mean opacity is below `min_opacity` are dropped.
- "view": the Gaussians `generate(camera_center)` draws, exactly as seen from that one camera;
  the colour goes into the DC term (higher bands zero).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import SceneError
from ..scene import SH_C0, GaussianScene, sh_coeffs
from .model import AnchorModel

_EPS = 1e-6  # opacity clamp before the logit, so 0 and 1 stay finite
_MIN_LOG_SCALE = -30.0  # exp(-30) ~ 1e-13: far below any visible size


def fibonacci_sphere(n: int) -> torch.Tensor:
    """(n,3) unit vectors spread evenly over the sphere (golden-angle spiral), float64."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1.0 - 2.0 * i / n
    r = torch.sqrt((1.0 - z * z).clamp_min(0.0))
    phi = math.pi * (3.0 - math.sqrt(5.0)) * i
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=1)


def _sh_basis(degree: int, dirs: torch.Tensor) -> torch.Tensor:
    """(D,K) real SH basis as gsplat evaluates it (its pure-torch version, so fit and render agree)."""
    from gsplat.cuda._torch_impl import _eval_sh_bases_fast

    return _eval_sh_bases_fast(sh_coeffs(degree), dirs.to(torch.float32)).to(torch.float64)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p.astype(np.float64), _EPS, 1.0 - _EPS)
    return np.log(p / (1.0 - p)).astype(np.float32)


@torch.no_grad()
def bake(
    model: AnchorModel, *, mode: str = "sh_fit", sh_degree: int = 1, camera_center=None,
    directions: int = 64, min_opacity: float = 1.0 / 255.0, chunk: int = 16384,
) -> GaussianScene:
    """A static GaussianScene (finite values, unit quaternions, clamped logits/logs) from `model`.

    See the module docstring for the two modes. `camera_center` is required for "view".
    """
    if not 0 <= int(sh_degree) <= 3:
        raise SceneError(f"bake SH degree must be 0..3, got {sh_degree}")
    if mode == "view":
        if camera_center is None:
            raise SceneError("bake mode 'view' needs a camera_center")
        return _bake_view(model, camera_center, int(sh_degree))
    if mode != "sh_fit":
        raise SceneError(f"unknown bake mode '{mode}' (use 'sh_fit' or 'view')")
    k_sh = sh_coeffs(int(sh_degree))
    if model.num_anchors == 0:
        z = np.zeros((0, 3), np.float32)
        return GaussianScene(z, np.zeros((0, 4)), z, np.zeros(0), np.zeros((0, k_sh, 3)), {"baked": "sh_fit"})
    if directions < k_sh:
        raise SceneError(f"bake needs at least {k_sh} directions for SH degree {sh_degree}, got {directions}")
    return _bake_sh_fit(model, int(sh_degree), int(directions), float(min_opacity), int(chunk))


def _bake_view(model: AnchorModel, camera_center, sh_degree: int) -> GaussianScene:
    g = model.generate(camera_center)
    colors = g.colors.double().cpu().numpy()
    sh = np.zeros((len(g), sh_coeffs(sh_degree), 3), np.float32)
    sh[:, 0] = (colors - 0.5) / SH_C0
    return GaussianScene(
        means=g.means.cpu().numpy(),
        quats=torch.nn.functional.normalize(g.quats, dim=-1).cpu().numpy(),
        log_scales=np.maximum(np.log(np.maximum(g.scales.double().cpu().numpy(), 1e-300)), _MIN_LOG_SCALE),
        opacity_logits=_logit(g.opacities.cpu().numpy()),
        sh=sh,
        meta={"baked": "view", "camera_center": [float(v) for v in np.asarray(camera_center).reshape(3)]},
    )


def _bake_sh_fit(model: AnchorModel, sh_degree: int, n_dirs: int, min_opacity: float, chunk: int) -> GaussianScene:
    dev = model.features.device
    dirs = fibonacci_sphere(n_dirs)
    basis = _sh_basis(sh_degree, dirs)  # (D,K)
    fit = torch.linalg.pinv(basis).to(dev)  # (K,D): least squares for every Gaussian at once
    _, radius = model.view_sphere()
    dirs_f = dirs.to(device=dev, dtype=torch.float32)
    mask = model.binary_mask() > 0.5
    k = int(model.config.k)
    parts = []
    for start in range(0, model.num_anchors, chunk):
        index = torch.arange(start, min(start + chunk, model.num_anchors), device=dev)
        anchors = model.anchors[index]
        n = len(index)
        sh = torch.zeros(n, k, fit.shape[0], 3, dtype=torch.float64, device=dev)
        opacity = torch.zeros(n, k, dtype=torch.float64, device=dev)
        log_scales = torch.zeros(n, k, 3, dtype=torch.float64, device=dev)
        quats = torch.zeros(n, k, 4, dtype=torch.float64, device=dev)
        ref = None
        for d in range(n_dirs):
            # Camera behind the anchor along -d, so the view ray (camera -> Gaussian) is ~ d.
            out = model.slots(anchors - radius * dirs_f[d], index)
            sh += fit[:, d].view(1, 1, -1, 1) * (out.colors.double() - 0.5)[:, :, None, :]
            opacity += out.opacity.double().clamp_min(0.0)
            log_scales += out.log_scales.double()
            q = out.quats.double()
            if ref is None:
                ref = q
                means = out.means  # view-independent
            sign = torch.where((q * ref).sum(-1, keepdim=True) < 0, -1.0, 1.0)
            quats += sign * q
        opacity /= n_dirs
        log_scales /= n_dirs
        keep = mask[index] & (opacity >= min_opacity)
        parts.append((means[keep], quats[keep], log_scales[keep], opacity[keep], sh[keep]))
    cat = lambda i: torch.cat([p[i] for p in parts]).cpu().numpy()  # noqa: E731
    means, quats, log_scales, opacity, sh = (cat(i) for i in range(5))
    norms = np.linalg.norm(quats, axis=1, keepdims=True)
    # A zero mean quaternion (views disagreeing completely) falls back to the identity.
    quats = np.where(norms > 1e-9, quats / np.maximum(norms, 1e-12), np.array([1.0, 0, 0, 0]))
    return GaussianScene(
        means=means, quats=quats, log_scales=np.maximum(log_scales, _MIN_LOG_SCALE),
        opacity_logits=_logit(opacity), sh=sh,
        meta={"baked": "sh_fit", "directions": n_dirs},
    )
