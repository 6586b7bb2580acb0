"""The one in-memory form of a 3DGS scene: `GaussianScene`.

Pure numpy (no torch), so readers and the Blender preview can use it. Conventions, the same as
the Inria PLY and gsplat:
- `means` (N,3) world positions;
- `quats` (N,4) rotations as w,x,y,z (not required to be unit length on input; see `sanitize`);
- `log_scales` (N,3) natural-log standard deviations;
- `opacity_logits` (N,) pre-sigmoid opacity;
- `sh` (N,K,3) spherical-harmonic coefficients, K = (degree+1)^2, `sh[:,0]` is the DC term
  (Inria's `f_dc_*`), `sh[:,1:]` the rest, coefficient-major (Inria stores them channel-major).
All arrays are float32 and C-contiguous.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import SceneError

SH_C0 = 0.28209479177387814  # Y_0^0: colour = SH_C0 * f_dc + 0.5
MAX_SH_DEGREE = 3
# Positions beyond this are garbage, not scenery: float32 resolves at best ~1 unit there, and the
# camera framing and projection of such points overflow (a 1e30 coordinate rendered all black).
MAX_ABS_COORD = 1e7
# Saturated values, which other tools write as infinities: a fully opaque Gaussian as opacity
# logit +inf (compressed-PLY and SOG decoders), an invisible one as -inf, a zero scale as log-scale
# -inf. `sanitize` brings them, and anything beyond, to these finite stand-ins, which render the
# same: sigmoid(20) is 1.0 in float32 and sigmoid(-20) ~ 2e-9 is below every rasterizer's 1/255
# alpha cut; a scale of e^-30 of a unit is ~1e-13 of it, nothing beside the renderers' 0.3 px² blur.
SATURATED_LOGIT = 20.0
ZERO_LOG_SCALE = -30.0


def sh_coeffs(degree: int) -> int:
    """Number of SH coefficients per channel for a degree (0..3)."""
    return (degree + 1) ** 2


def sh_degree_for(coeffs: int) -> int:
    """Inverse of `sh_coeffs`; raises SceneError for a count that is no square of 1..4."""
    for d in range(MAX_SH_DEGREE + 1):
        if sh_coeffs(d) == coeffs:
            return d
    raise SceneError(f"{coeffs} SH coefficients per channel is not a degree 0-3 layout (1, 4, 9 or 16)")


@dataclass
class GaussianScene:
    means: np.ndarray
    quats: np.ndarray
    log_scales: np.ndarray
    opacity_logits: np.ndarray
    sh: np.ndarray
    # Free-form provenance (source path, format), never needed to render.
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.means = _f32(self.means, "means")
        self.quats = _f32(self.quats, "quats")
        self.log_scales = _f32(self.log_scales, "log_scales")
        self.opacity_logits = _f32(self.opacity_logits, "opacity_logits")
        self.sh = _f32(self.sh, "sh")
        n = self.means.shape[0] if self.means.ndim == 2 else -1
        expect = {
            "means": (self.means, (n, 3)),
            "quats": (self.quats, (n, 4)),
            "log_scales": (self.log_scales, (n, 3)),
            "opacity_logits": (self.opacity_logits, (n,)),
        }
        for name, (arr, shape) in expect.items():
            if arr.shape != shape:
                raise SceneError(f"scene field {name} has shape {arr.shape}, expected {shape}")
        if self.sh.ndim != 3 or self.sh.shape[0] != n or self.sh.shape[2] != 3:
            raise SceneError(f"scene field sh has shape {self.sh.shape}, expected ({n}, K, 3)")
        sh_degree_for(self.sh.shape[1])

    # ---- basic properties -------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.means.shape[0])

    @property
    def sh_degree(self) -> int:
        return sh_degree_for(self.sh.shape[1])

    @property
    def scales(self) -> np.ndarray:
        return np.exp(self.log_scales)

    @property
    def opacities(self) -> np.ndarray:
        # exp overflows to inf for logits below about -88 (-inf included): 1/inf is the exact 0
        with np.errstate(over="ignore"):
            return 1.0 / (1.0 + np.exp(-self.opacity_logits))

    @property
    def colors_dc(self) -> np.ndarray:
        """Base colour (view-independent part) in [0,1], as every viewer shows it."""
        return np.clip(self.sh[:, 0, :] * SH_C0 + 0.5, 0.0, 1.0)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        if len(self) == 0:
            z = np.zeros(3, np.float32)
            return z, z
        return self.means.min(axis=0), self.means.max(axis=0)

    def subset(self, index) -> "GaussianScene":
        """The Gaussians selected by a boolean mask or an index array."""
        return GaussianScene(
            self.means[index], self.quats[index], self.log_scales[index],
            self.opacity_logits[index], self.sh[index], dict(self.meta),
        )

    def with_sh_degree(self, degree: int) -> "GaussianScene":
        """Truncate (or zero-pad) the SH bands to `degree`."""
        k = sh_coeffs(degree)
        sh = np.zeros((len(self), k, 3), np.float32)
        keep = min(k, self.sh.shape[1])
        sh[:, :keep] = self.sh[:, :keep]
        return GaussianScene(self.means, self.quats, self.log_scales, self.opacity_logits, sh, dict(self.meta))

    def summary(self) -> dict:
        lo, hi = self.bounds()
        return {
            "gaussians": len(self),
            "sh_degree": self.sh_degree,
            "bounds_min": [float(v) for v in lo],
            "bounds_max": [float(v) for v in hi],
            "mean_opacity": float(self.opacities.mean()) if len(self) else 0.0,
        }


def _f32(arr, name: str) -> np.ndarray:
    try:
        out = np.ascontiguousarray(arr, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise SceneError(f"scene field {name} is not numeric: {exc}") from None
    return out


def sanitize(scene: GaussianScene) -> tuple[GaussianScene, list[str]]:
    """Return a renderable scene, with finite values only, and one warning line per repair made.

    Valid saturated values are kept, as finite stand-ins that render the same, with no warning:
    opacity logits beyond ±SATURATED_LOGIT (±inf included: opacity 1 and 0) are set to
    ±SATURATED_LOGIT, log-scales below ZERO_LOG_SCALE (-inf included: size 0) to ZERO_LOG_SCALE.
    Count and order are kept for them.

    Documented repairs (everything else is kept bit for bit):
    - Gaussians with NaN anywhere, or an infinity in a position, rotation, SH coefficient, or a
      log-scale of +inf (no finite size to draw), are dropped;
    - Gaussians with a zero-length quaternion are dropped;
    - Gaussians farther than MAX_ABS_COORD from the origin on any axis are dropped (see there);
    - the remaining quaternions are normalised to unit length.
    """
    warnings: list[str] = []
    n = len(scene)
    finite = (
        np.isfinite(scene.means).all(1) & np.isfinite(scene.quats).all(1)
        & ~(np.isnan(scene.log_scales) | np.isposinf(scene.log_scales)).any(1)
        & ~np.isnan(scene.opacity_logits) & np.isfinite(scene.sh).all((1, 2))
    )
    if not finite.all():
        warnings.append(f"dropped {int((~finite).sum())} of {n} Gaussians with NaN/Inf attributes")
    with np.errstate(invalid="ignore", over="ignore"):
        norms = np.linalg.norm(scene.quats.astype(np.float64), axis=1)
    with np.errstate(invalid="ignore"):
        far = finite & ~(np.abs(scene.means) <= MAX_ABS_COORD).all(1)
    if far.any():
        warnings.append(f"dropped {int(far.sum())} of {n} Gaussians more than {MAX_ABS_COORD:g} units from the origin")
    finite = finite & ~far
    zero_q = finite & ~(norms > 1e-12)
    if zero_q.any():
        warnings.append(f"dropped {int(zero_q.sum())} of {n} Gaussians with a zero quaternion")
    keep = finite & ~zero_q
    out = scene.subset(keep) if not keep.all() else scene
    norms = norms[keep]
    if len(out) and np.abs(norms - 1.0).max() > 1e-3:
        warnings.append("normalised quaternions that were not unit length")
    if len(out):
        out = GaussianScene(
            out.means, (out.quats / norms[:, None]).astype(np.float32),
            np.maximum(out.log_scales, np.float32(ZERO_LOG_SCALE)),
            np.clip(out.opacity_logits, np.float32(-SATURATED_LOGIT), np.float32(SATURATED_LOGIT)),
            out.sh, dict(out.meta),
        )
    return out, warnings
