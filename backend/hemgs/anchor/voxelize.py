"""Anchor placement: snap a 3DGS scene's Gaussians onto a voxel grid, one anchor per occupied voxel.

Pure numpy. Anchor locations are integer voxel coordinates that must fit 16 bits per axis, because
the codec stores them as 16-bit quantized locations (paper §3.2, "Location Compression").
"""

from __future__ import annotations

import numpy as np

from ..errors import SceneError

MAX_COORD = 65535  # 16 bits per axis
# Default Gaussians per anchor for a warm start. Measured on playbot_lod3/lod2 (docs/anchor-model.md):
# at 4 source Gaussians per anchor almost no anchor overflows its k=10 offsets and the attribute fit
# stays close, while 10 per anchor drops a large share of Gaussians that do not fit in the k slots.
DEFAULT_TARGET_RATIO = 4.0


def _means_of(scene_or_means) -> np.ndarray:
    means = getattr(scene_or_means, "means", scene_or_means)
    means = np.asarray(means, dtype=np.float64)
    if means.ndim != 2 or means.shape[1] != 3:
        raise SceneError(f"Gaussian positions have shape {means.shape}, expected (N, 3)")
    if means.shape[0] == 0:
        raise SceneError("cannot place anchors for a scene with no Gaussians")
    if not np.isfinite(means).all():
        raise SceneError("Gaussian positions contain NaN/Inf; sanitize the scene first")
    return means


def min_voxel_size(scene_or_means) -> float:
    """The smallest voxel size whose grid spans the scene within 16-bit coordinates per axis."""
    means = _means_of(scene_or_means)
    extent = float((means.max(axis=0) - means.min(axis=0)).max())
    # floor(extent / v) must stay <= MAX_COORD; a relative margin absorbs float rounding.
    return max(extent / MAX_COORD * (1.0 + 1e-6), 1e-12)


def voxelize(means, voxel_size: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Snap positions onto a grid of cubes of side `voxel_size`.

    Returns `(coords, origin, assignment)`: `coords` (M,3) int64, unique occupied voxels in
    lexicographic (x, y, z) order, each in 0..65535; `origin` (3,) float64, the grid's corner (the
    minimum of the positions); `assignment` (N,) int64, the row of `coords` holding each position.
    The anchor of voxel c sits at its centre, `origin + (c + 0.5) * voxel_size`.
    Raises SceneError when the grid would need more than 16 bits per axis.
    """
    means = _means_of(means)
    voxel_size = float(voxel_size)
    if not np.isfinite(voxel_size) or voxel_size <= 0:
        raise SceneError(f"voxel size must be a positive number, got {voxel_size}")
    origin = means.min(axis=0)
    cells = np.floor((means - origin) / voxel_size).astype(np.int64)
    top = int(cells.max())
    if top > MAX_COORD:
        raise SceneError(
            f"voxel size {voxel_size:.3g} needs {top + 1} cells per axis, more than 16 bits; "
            f"use at least {min_voxel_size(means):.3g}"
        )
    # One integer key per cell (16 bits per axis) makes np.unique fast and keeps x-major order.
    key = (cells[:, 0] << 32) | (cells[:, 1] << 16) | cells[:, 2]
    ukey, assignment = np.unique(key, return_inverse=True)
    coords = np.stack([(ukey >> 32) & 0xFFFF, (ukey >> 16) & 0xFFFF, ukey & 0xFFFF], axis=1)
    return coords.astype(np.int64), origin, assignment.reshape(-1).astype(np.int64)


def anchor_count(means, voxel_size: float) -> int:
    """How many anchors `voxelize` would make at this voxel size."""
    return int(voxelize(means, voxel_size)[0].shape[0])


def choose_voxel_size(scene, target_ratio: float = DEFAULT_TARGET_RATIO, *, iters: int = 40) -> float:
    """A voxel size giving roughly `len(scene) / target_ratio` anchors.

    Bisection on log(voxel size): the anchor count falls (almost) monotonically as voxels grow.
    The result is never below `min_voxel_size` (16-bit coordinates). `scene` is a GaussianScene or
    an (N,3) array of positions.
    """
    means = _means_of(scene)
    if not np.isfinite(target_ratio) or target_ratio < 1.0:
        raise SceneError(f"target Gaussians per anchor must be >= 1, got {target_ratio}")
    n = means.shape[0]
    target = max(1.0, n / float(target_ratio))
    lo = min_voxel_size(means)
    extent = float((means.max(axis=0) - means.min(axis=0)).max())
    if extent == 0.0:  # all Gaussians at one point: one anchor whatever the size
        return 1.0
    hi = max(extent, lo) * 2.0  # one voxel holds everything
    if anchor_count(means, lo) <= target:
        return lo
    # Invariant: count(lo) > target >= count(hi).
    for _ in range(iters):
        mid = float(np.sqrt(lo * hi))
        if anchor_count(means, mid) > target:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1.0 + 1e-4:
            break
    # Of the two brackets, pick the one whose count is closer to the target.
    c_lo, c_hi = anchor_count(means, lo), anchor_count(means, hi)
    return lo if abs(c_lo - target) < abs(c_hi - target) else hi
