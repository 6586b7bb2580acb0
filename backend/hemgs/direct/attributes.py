"""A scene's own Gaussians as the coded attribute vectors of anchor-free mode, and back.

Stages, in coding order (each conditioned on the ones before it, DESIGN "progressive coding"):

    importance 1 log2 of how much the Gaussian shows in renders (`visibility`), +30; coded with a
                 fixed step of 1 (an octave) as side information: every later stage's step uses it
    opacity   1  pre-sigmoid logit
    scale     3  natural-log standard deviations (ascending with DirectConfig.scale_ranks)
    rotation  3  twist about the Gaussian's own z axis, then the swing of that axis in
                 coordinates that follow its x and y (`quat_to_swing_twist`; files before that:
                 the rotation vector θ·axis with w >= 0); scale and rotation are first rewritten
                 in the canonical orientation (`canonical_orientation`)
    position  3  the offset from the centre of the Gaussian's voxel, in units of RHO (the scene
                 span / 1000: about a pixel of a whole-scene view)
    dc        3  SH DC term, in an orthonormal luma/chroma basis (COLOR_BASIS)
    sh      3·(K-1)  higher SH bands, each coefficient in the same basis (absent at degree 0)

The colour basis decorrelates R, G and B (view dependence is mostly grey, so the chroma rows are
near zero and cost few bits); being orthonormal it leaves squared colour errors unchanged.

`render_log_weights` says how much a unit of error in each coded value moves the renders (the
distortion weights of the fit, and through `step_log_weights` the decoder-side steps). All scale
with the Gaussian's measured importance V: the sum over the pixels of sampled views of its
squared blend weight (approximated by α·Σ blend weight, from one backward pass of our renderer),
as a share of the image; a footprint formula from opacity and size was tried first and does not
predict it (log correlation 0.0 on playbot_lod2: occlusion decides). Then: with the scales in
ascending order a log-scale error counts by its axis' rank (SCALE_RANK_LOG); rotation matters as
far as the Gaussian is anisotropic; a position error counts relative to the Gaussian's size;
each SH coefficient, DC included, adds the same mean squared colour over view directions (the
basis is orthonormal: C0² = 1/4π each); geometry errors move colour by a contrast constant.
The same formulas, in torch float64 elementwise ops, give the steps on both sides of the codec.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from ..coding import exact_math
from ..scene import SH_C0, GaussianScene, sh_coeffs
from .memory import release

STAGES = ("importance", "opacity", "scale", "rotation", "position", "dc", "sh")
IMPORTANCE_OFFSET = 30.0  # coded value = log2(V) + 30, clamped to [0, IMPORTANCE_MAX]
IMPORTANCE_MAX = 40.0
# Mean squared colour change per unit of error in a geometry value (opacity logit, log-scale,
# rotation angle, position in sizes), and for SH bands relative to C0². Calibrated on
# playbot_lod3 so that every stage adds the same render MSE per coded value at a given λ (the
# rate-distortion optimum when weights are right): see docs/direct-mode.md.
GEOM_WEIGHT = {"opacity": 0.25, "scale": 0.075, "rotation": 0.22, "position": 0.3, "rotation_axes": 0.64}
SH_WEIGHT = 0.67
# With scales in ascending order (DirectConfig.scale_ranks), log of each rank's weight relative to
# the stage's: a log-scale error on the shortest axis of a flat Gaussian barely shows, on the
# longest it shows most. Measured on playbot_lod3 (Gauss-Newton diagonal of the renders, median
# over Gaussians of each rank's log weight minus the mean over the Gaussian's three): −4.8, +0.4,
# +4.4 at 128², −4.5, +0.7, +3.75 at 256², −3.9, +1.0, +3.0 at 512²: geometry, not pixel size.
SCALE_RANK_LOG = (-4.5, 0.7, 3.75)
# rows: luma, red-green, blue-yellow; orthonormal, so its inverse is its transpose
COLOR_BASIS = np.array([[1.0, 1.0, 1.0], [1.0, -1.0, 0.0], [1.0, 1.0, -2.0]]) / np.sqrt([[3.0], [2.0], [6.0]])
RHO_PER_SPAN = 1e-3  # position unit: a thousandth of the scene's largest extent
_LOG_W_CLAMP = 16.0
# Fixed-point iterations of `view_weights` (0: every sampled view counts the same). It converges
# in about three (playbot_lod3: view weights 0.53..3.15).
VIEW_BALANCE_ITERS = 3


def stage_dims(sh_degree: int) -> dict[str, int]:
    k = sh_coeffs(sh_degree)
    dims = {"importance": 1, "opacity": 1, "scale": 3, "rotation": 3, "position": 3, "dc": 3, "sh": 3 * (k - 1)}
    return {s: d for s, d in dims.items() if d > 0}


def quat_to_rotvec(quats: np.ndarray) -> np.ndarray:
    """(N,4) w,x,y,z (unit or not, either sign) -> (N,3) rotation vectors with angle in [0, π]."""
    q = np.asarray(quats, dtype=np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-30)
    q = np.where(q[:, :1] < 0, -q, q)  # q and -q are the same rotation: keep w >= 0
    v = q[:, 1:]
    s = np.linalg.norm(v, axis=1)
    angle = 2.0 * np.arctan2(s, q[:, 0])
    # angle / sin(angle/2) -> 2 as the angle -> 0
    factor = np.where(s > 1e-12, angle / np.maximum(s, 1e-300), 2.0 / np.maximum(q[:, 0], 1e-300))
    return v * factor[:, None]


def rotvec_to_quat(rv: np.ndarray) -> np.ndarray:
    """Inverse of `quat_to_rotvec`: (N,3) -> unit quaternions (N,4) w,x,y,z."""
    rv = np.asarray(rv, dtype=np.float64)
    angle = exact_math.norm3(rv)  # decoder side: exact_math, the same bits on every machine
    sin_h, cos_h = exact_math.sincos(0.5 * angle)
    # sin(half)/angle -> 1/2 as the angle -> 0
    k = np.where(angle > 1e-12, sin_h / np.maximum(angle, 1e-300), 0.5)
    return np.concatenate([cos_h[:, None], rv * k[:, None]], axis=1)


def _rotz(theta: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(N,2) vectors rotated by angles theta (N,) in their plane."""
    s, c = exact_math.sincos(theta)
    return np.stack([c * v[:, 0] - s * v[:, 1], s * v[:, 0] + c * v[:, 1]], axis=1)


def quat_to_swing_twist(quats: np.ndarray) -> np.ndarray:
    """(N,4) w,x,y,z -> (N,3) (θ, u0, u1): the rotation as R = S·Rz(θ), a twist θ about the local
    z axis followed by a swing S that tilts z onto R·z (rotation vector (s_x, s_y, 0), angle ≤ π/2),
    with u = Rz(-θ)·s the swing in coordinates that follow the Gaussian's own x and y axes.

    Why: a rotation error about each of a Gaussian's own axes moves its renders by how much the
    other two axes differ ((σ_i² - σ_j²)/σ_max², `render_log_weights`), and with the scales in
    ascending order that is smallest about z by far (measured on playbot_lod3: a 0.05 rad error
    about z, x, y gives 0.08 : 0.8 : 1 of the render MSE). A twist error is exactly an error about
    z, and the swing's u errors are (to first order) errors about x and y, so each of the three
    gets its own step. R, R·Rx(π), R·Rz(π) describe the same Gaussian: of them the one with
    (R·z)_z ≥ 0 and θ in (-π/2, π/2] is taken."""
    from scipy.spatial.transform import Rotation

    q = np.asarray(quats, dtype=np.float64).reshape(-1, 4)
    if q.shape[0] == 0:
        return np.zeros((0, 3))
    rot = Rotation.from_quat(q[:, [1, 2, 3, 0]]).as_matrix()  # normalises
    flip = rot[:, 2, 2] < 0  # R·Rx(π): y and z change sign
    rot[flip, :, 1:] *= -1.0
    n = rot[:, :, 2]  # where the local z axis points, n_z >= 0
    rho = np.hypot(n[:, 0], n[:, 1])
    beta = np.arctan2(rho, n[:, 2])  # swing angle in [0, π/2]
    k = np.where(rho > 1e-12, beta / np.maximum(rho, 1e-300), 1.0)  # β/ρ -> 1 as ρ -> 0
    swing = np.stack([-n[:, 1] * k, n[:, 0] * k], axis=1)  # (e_z × n)/ρ · β
    sw = Rotation.from_rotvec(np.concatenate([swing, np.zeros((len(q), 1))], axis=1)).as_matrix()
    t = np.einsum("nji,njk->nik", sw, rot)  # Sᵀ·R: a rotation about z
    theta = np.arctan2(t[:, 1, 0], t[:, 0, 0])
    theta = np.where(theta > 0.5 * np.pi, theta - np.pi, np.where(theta <= -0.5 * np.pi, theta + np.pi, theta))
    return np.concatenate([theta[:, None], _rotz(-theta, swing)], axis=1)


def swing_twist_to_quat(v: np.ndarray) -> np.ndarray:
    """Inverse of `quat_to_swing_twist`: (N,3) -> unit quaternions (N,4) w,x,y,z. Decoder side:
    built from exact_math, so every machine gets the same bits."""
    v = np.asarray(v, dtype=np.float64).reshape(-1, 3)
    if v.shape[0] == 0:
        return np.zeros((0, 4))
    swing = _rotz(v[:, 0], v[:, 1:])
    beta = np.sqrt(swing[:, 0] * swing[:, 0] + swing[:, 1] * swing[:, 1])
    sin_b, a = exact_math.sincos(0.5 * beta)
    k = np.where(beta > 1e-12, sin_b / np.maximum(beta, 1e-300), 0.5)  # sin(β/2)/β -> 1/2
    bx, by = swing[:, 0] * k, swing[:, 1] * k  # swing quaternion (a, bx, by, 0)
    d, c = exact_math.sincos(0.5 * v[:, 0])  # twist quaternion (c, 0, 0, d)
    # Hamilton product swing ⊗ twist: R = S·Rz(θ)
    wxyz = np.stack([a * c, bx * c + by * d, by * c - bx * d, a * d], axis=1)
    return np.where(wxyz[:, :1] < 0, -wxyz, wxyz)


def twist_nearest(theta, ref):
    """Of the twists θ + jπ (all the same Gaussian: a turn by π about its own z axis swaps the signs
    of its x and y), the one nearest `ref`, and j. Works on numpy arrays and torch tensors.

    Why: the encoder codes the representative nearest the predicted mean, so the twist lives on a
    circle of period π and a model centred anywhere on it sees its values close by. Measured on
    playbot_lod2: the twists in (-π/2, π/2] crowd at both ends, five times as dense at ±π/2 as at 0
    (the two ends are the same twist), which a Gaussian centred at 0 cannot follow."""
    j = ((theta - ref) / np.pi).round()
    return theta - j * np.pi, j


def swing_target(true: np.ndarray, theta_hat: np.ndarray) -> np.ndarray:
    """The (θ, u) to code once θ is decoded as `theta_hat`: u expressed against θ̂ keeps the swing
    (and so the tilt of the z axis) the source's, whatever the twist's rounding error, and θ is the
    representative of the source's twist nearest θ̂ (`twist_nearest`; u does not depend on which)."""
    true = np.asarray(true, dtype=np.float64)
    theta = twist_nearest(true[:, 0], theta_hat)[0]
    return np.concatenate([theta[:, None], _rotz(true[:, 0] - theta_hat, true[:, 1:])], axis=1)


def _cube_group() -> tuple[np.ndarray, np.ndarray]:
    """The 24 rotations that map the coordinate axes onto themselves (signed permutation matrices
    of determinant +1), and for each the local axis that becomes axis j (G[perm[j], j] = ±1)."""
    mats, perms = [], []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            g = np.zeros((3, 3))
            g[list(perm), [0, 1, 2]] = signs
            if np.linalg.det(g) > 0:
                mats.append(g)
                perms.append(perm)
    return np.array(mats), np.array(perms)


CUBE_GROUP, CUBE_PERMS = _cube_group()


def canonical_orientation(quats: np.ndarray, log_scales: np.ndarray,
                          sort_scales: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The same covariances R·S²·Rᵀ, in a canonical form.

    A Gaussian's covariance does not change when its local axes are permuted (with its scales)
    or have their signs flipped: 24 (rotation, scale order) pairs describe it. A source file holds
    an arbitrary one, and coding that choice costs bits (up to log2 24 ≈ 4.6 a Gaussian).
    `sort_scales`: scales in ascending order, and of the 4 rotations that keep that order the one
    of smallest angle (≤ 120°); else the rotation nearest the identity of all 24 (≤ 62.8°, scales
    in any order). Always w ≥ 0. Measured (4-λ sweeps, BD-rate, against the source's own
    orientation): nearest −6.8% on playbot_lod2, −5.3% playbot_lod3, −1.8% biker; sorted −5.9%,
    −3.8%, −2.8%, and with weights by rank (SCALE_RANK_LOG) sorted beats nearest (docs/direct-mode.md)."""
    from scipy.spatial.transform import Rotation

    q = np.asarray(quats, dtype=np.float64).reshape(-1, 4)
    s = np.asarray(log_scales, dtype=np.float64).reshape(-1, 3)
    if q.shape[0] == 0:
        return q, s
    rot = Rotation.from_quat(q[:, [1, 2, 3, 0]]).as_matrix()  # scipy is scalar-last; normalises
    # trace(R·G) = 1 + 2·cos(angle of R·G): the largest trace is the smallest angle
    traces = np.einsum("nij,gji->ng", rot, CUBE_GROUP)
    if sort_scales:  # only the elements that put the scales in ascending order (ties: any of them)
        traces = np.where((np.diff(s[:, CUBE_PERMS], axis=2) >= 0).all(axis=2), traces, -np.inf)
    best = np.argmax(traces, axis=1)
    xyzw = Rotation.from_matrix(rot @ CUBE_GROUP[best]).as_quat()
    wxyz = xyzw[:, [3, 0, 1, 2]]
    return np.where(wxyz[:, :1] < 0, -wxyz, wxyz), np.take_along_axis(s, CUBE_PERMS[best], axis=1)


def scene_vectors(scene: GaussianScene, position_residual: np.ndarray, importance: np.ndarray,
                  sort_scales: bool = True, swing_twist: bool = False) -> dict[str, np.ndarray]:
    """The coded value of every stage, (N, dim) float64, in the scene's row order.
    `position_residual` (N,3) is each Gaussian's offset from its voxel centre in RHO units;
    `importance` (N,) its V (see `visibility`); `sort_scales` as in `canonical_orientation`;
    `swing_twist`: rotations as `quat_to_swing_twist`, else as rotation vectors."""
    n = len(scene)
    quats, log_scales = canonical_orientation(scene.quats, scene.log_scales, sort_scales)
    out = {
        "importance": importance_log2(importance).reshape(n, 1),
        "opacity": scene.opacity_logits.astype(np.float64).reshape(n, 1),
        "scale": log_scales,
        "rotation": quat_to_swing_twist(quats) if swing_twist else quat_to_rotvec(quats),
        "position": np.asarray(position_residual, dtype=np.float64).reshape(n, 3),
        "dc": scene.sh[:, 0, :].astype(np.float64) @ COLOR_BASIS.T,
        "sh": (scene.sh[:, 1:, :].astype(np.float64) @ COLOR_BASIS.T).reshape(n, 3 * (scene.sh.shape[1] - 1)),
    }
    return {s: out[s] for s in stage_dims(scene.sh_degree)}


def scene_from_vectors(vec: dict[str, np.ndarray], centres: np.ndarray, rho: float, sh_degree: int,
                       swing_twist: bool = False) -> GaussianScene:
    """The decoded scene from decoded stage values and each Gaussian's voxel centre."""
    n = centres.shape[0]
    k = sh_coeffs(sh_degree)
    sh = np.zeros((n, k, 3), np.float64)
    sh[:, 0, :] = exact_math.rows_times(vec["dc"], COLOR_BASIS)
    if k > 1:
        sh[:, 1:, :] = exact_math.rows_times(vec["sh"].reshape(n, k - 1, 3), COLOR_BASIS)
    return GaussianScene(
        means=centres + vec["position"] * rho,
        quats=swing_twist_to_quat(vec["rotation"]) if swing_twist else rotvec_to_quat(vec["rotation"]),
        log_scales=vec["scale"],
        opacity_logits=vec["opacity"].reshape(n),
        sh=sh,
    )


# ---- render weights ------------------------------------------------------------------------------
def view_visibility(scene: GaussianScene, views) -> np.ndarray:
    """(N, views) each Gaussian's V per view: α · (sum over pixels of its blend weight α·T), as a
    share of the image. One backward pass per view (d image / d colour)."""
    from ..render import rasterize

    n = len(scene)
    if n == 0:
        return np.zeros((0, 0))
    means = torch.as_tensor(scene.means)
    quats = torch.as_tensor(scene.quats)
    scales = torch.as_tensor(scene.scales)
    alpha = torch.as_tensor(scene.opacities)
    colors = torch.zeros((n, 3), requires_grad=True)
    per_view = []
    for cam in views:
        img, _ = rasterize(means, quats, scales, alpha, colors, torch.as_tensor(cam.viewmat, dtype=torch.float32),
                           torch.as_tensor(cam.K, dtype=torch.float32), cam.width, cam.height)
        (g,) = torch.autograd.grad(img[..., 0].sum(), colors)
        per_view.append(g[:, 0].double().numpy() / (cam.width * cam.height))
        del img, g
        release()  # the render's buffers, before the next view's
    if not per_view:
        return np.zeros((n, 0))
    return np.stack(per_view, 1) * scene.opacities.astype(np.float64)[:, None]


# The image width V stands for: the evaluation's (hemgs.cameras.evaluation_views), and the one the
# weights' constants were calibrated at. The importance renders run at half of it for speed.
WEIGHT_RESOLUTION = 256


def at_resolution(pv: np.ndarray, scene: GaussianScene, views, width: int = WEIGHT_RESOLUTION) -> np.ndarray:
    """`pv` (N, views), measured on `views`, as the same views `width` pixels wide would give it.

    The renderer widens every projected Gaussian by EPS2D px² (render/project.py), so one smaller
    than a pixel covers about EPS2D px² at any resolution: at half the width that is 4x the share
    of the image. Most of these scenes' Gaussians are that small at 256² (median geometric-mean
    axis 0.18-0.30 px), so V measured at 128² overweighted them against the large ones. Each
    view's V is scaled by the ratio of the footprints' shares, the two longer axes standing for
    the projected ellipse, then the scene by one factor that keeps its total. Measured on
    playbot_lod3 (4 λ, 1/16..1/2): as much as rendering the importance at 256² (−1.3% BD-rate),
    without its 4x renders (docs/direct-mode.md, "At the evaluation's resolution")."""
    from ..render.project import EPS2D

    ls = np.sort(scene.log_scales.astype(np.float64), axis=1)
    mid, longest = np.exp(ls[:, 1]), np.exp(ls[:, 2])
    means = scene.means.astype(np.float64)
    out = np.array(pv, dtype=np.float64)
    for j, cam in enumerate(views):
        k = (width / cam.width) ** 2  # area of a pixel there, in pixels here
        depth = np.maximum(means @ np.asarray(cam.viewmat, np.float64)[2, :3] + float(cam.viewmat[2, 3]), 1e-9)
        f = float(cam.K[0, 0]) / depth  # pixels here per unit of length
        a, b = (mid * f) ** 2, (longest * f) ** 2
        there = np.sqrt((k * a + EPS2D) * (k * b + EPS2D))
        here = np.sqrt((a + EPS2D) * (b + EPS2D))
        out[:, j] *= there / (k * here)
    # one factor for the whole scene keeps the sum of V as measured, and so what a λ means (the
    # correction moves weight from the small Gaussians to the large ones; alone it took the files
    # at a given λ an octave of λ lower in quality)
    total = out.sum()
    return out * (pv.sum() / total) if total > 0 else out


def combine_views(pv: np.ndarray, power: float = 1.0) -> np.ndarray:
    """Each Gaussian's V over the views of `pv` (N, views), with the weights of `view_weights`, as
    a power mean of order `power` (1: the weighted mean; larger: towards the view where the
    Gaussian shows most)."""
    if pv.shape[1] == 0:
        return np.zeros(pv.shape[0])
    omega = view_weights(pv)
    if power == 1.0:
        return pv @ omega / pv.shape[1]
    return (np.maximum(pv, 0.0) ** power @ omega / pv.shape[1]) ** (1.0 / power)


def visibility(scene: GaussianScene, views, power: float = 1.0) -> np.ndarray:
    """Each Gaussian's V (`view_visibility`) combined over `views` (`combine_views`)."""
    return combine_views(view_visibility(scene, views), power)


def importance_log2(v: np.ndarray) -> np.ndarray:
    """V as the importance stage codes it: log2(V) + IMPORTANCE_OFFSET, within [0, IMPORTANCE_MAX]."""
    imp = np.log2(np.maximum(np.asarray(v, dtype=np.float64), 2.0**-IMPORTANCE_OFFSET)) + IMPORTANCE_OFFSET
    return np.clip(imp, 0.0, IMPORTANCE_MAX)


def view_weights(per_view: np.ndarray, iters: int | None = None) -> np.ndarray:
    """Weights (mean 1) of the sampled views in the importance, from each Gaussian's per-view V
    (N, views).

    Quality is judged per view (the mean of the views' PSNRs, as 3DGS results are reported), so
    a view whose error is small gains as much from a given error reduction as one with a large
    error gains from a proportionally larger one: d PSNR_v ∝ d MSE_v / MSE_v, and each view
    should count inversely to its expected MSE. With steps set by the weights, every coded value
    adds about the same weighted error, so Gaussian i adds to view v in proportion to
    V_iv / V_i: a view's expected MSE is its load Σ_i V_iv / V_i, and V_i depends on the view
    weights in turn — hence a fixed point. Views from above, which see little of a scene, get
    the highest weights. Measured (4-point sweeps): playbot_lod3 −1.1%, playbot_lod2 −1.6% BD-rate.
    """
    iters = VIEW_BALANCE_ITERS if iters is None else iters
    omega = np.ones(per_view.shape[1])
    for _ in range(iters):
        v = per_view @ omega / omega.sum()
        load = (per_view / np.maximum(v, 1e-300)[:, None]).sum(0)
        omega = 1.0 / np.maximum(load, 1e-300)
        omega = omega / omega.mean()
    return omega


def render_log_weights(stage: str, vals: dict[str, torch.Tensor], log_rho: float,
                       scale_ranks: bool = False, swing_twist: bool = False) -> torch.Tensor:
    """log of the distortion weight of each coded value of `stage`, (N, dim), from the importance,
    opacity and scale stages' values (true ones when fitting, decoded ones when coding).
    `scale_ranks`: the scales are in ascending order, each rank weighted by SCALE_RANK_LOG."""
    log_v = (vals["importance"] - IMPORTANCE_OFFSET) * float(np.log(2.0))
    n = log_v.shape[0]
    if stage == "importance":
        w = torch.full_like(log_v, -_LOG_W_CLAMP)  # side information: no distortion of its own
    elif stage == "opacity":
        # dα/dlogit = α(1-α): the blend weights change by (1-α) per unit of logit
        w = log_v - 2.0 * torch.nn.functional.softplus(vals["opacity"]) + np.log(GEOM_WEIGHT["opacity"])
    elif stage == "scale":
        w = (log_v + np.log(GEOM_WEIGHT["scale"])).expand(n, 3)
        if scale_ranks:
            w = w + torch.as_tensor(SCALE_RANK_LOG, dtype=w.dtype)
    elif stage == "rotation" and swing_twist:
        # (θ, u0, u1) err about the Gaussian's own z, x, y axes: each by how much the other two
        # axes' variances differ, relative to the largest (measured: quat_to_swing_twist)
        r = torch.exp(2.0 * (vals["scale"] - vals["scale"].max(dim=1, keepdim=True).values))
        d = torch.stack([r[:, 0] - r[:, 1], r[:, 1] - r[:, 2], r[:, 0] - r[:, 2]], dim=1).abs()
        w = log_v + 2.0 * torch.log(d.clamp_min(1e-3)) + np.log(GEOM_WEIGHT["rotation_axes"])
    elif stage == "rotation":
        s = vals["scale"].sort(dim=1).values
        aniso = (1.0 - torch.exp(s[:, :1] - s[:, 2:])).clamp_min(1e-3)
        w = (log_v + 2.0 * torch.log(aniso) + np.log(GEOM_WEIGHT["rotation"])).expand(n, 3)
    elif stage == "position":
        log_size = vals["scale"].mean(dim=1, keepdim=True) - log_rho  # geometric-mean axis in RHO
        w = (log_v - 2.0 * log_size + np.log(GEOM_WEIGHT["position"])).expand(n, 3)
    elif stage == "dc":
        w = (log_v + 2.0 * np.log(SH_C0)).expand(n, 3)
    elif stage == "sh":
        w = (log_v + 2.0 * np.log(SH_C0) + np.log(SH_WEIGHT)).expand(n, vals[stage].shape[1])
    else:
        raise ValueError(f"unknown stage {stage!r}")
    return w.clamp(-_LOG_W_CLAMP * 3, _LOG_W_CLAMP)


# The encoder's correction of the log-scales' render weights by rank (log, shortest first): the
# fit's distortion, the encoder's rounding and the stage balance use render_log_weights + this
# (`coding_log_weights`); the decoder's steps keep SCALE_RANK_LOG, and the scale stage's per-channel
# step bias, which the fit learns and the file carries, absorbs the difference. Measured by decoding
# one rank at a time (3 views at 256², render MSE over the modelled error, at the files' own steps):
# the longest axis shows 2.8-8.8x less per modelled unit than the shortest (playbot_lod2 at λ 1/16:
# 0.0091, 0.0064, 0.0032; playbot_lod3 at λ 2: 0.040, 0.012, 0.0046; biker at λ 1/16: 0.050,
# 0.022, 0.013): the Gauss-Newton offsets overstate the spread at these errors. Refitted, at the
# peers' PSNR: playbot_lod3 -0.4%, playbot_lod2 -0.1% (±0.4 the same), biker -1.0%. (The twist
# showed 2.6-3.6x more than the swing, but weighting it 2.7x more cost +1.8% on playbot_lod3.)
SCALE_RANK_CODING = (0.75, 0.0, -0.75)


def coding_log_weights(stage: str, vals: dict[str, torch.Tensor], log_rho: float,
                       scale_ranks: bool = False, swing_twist: bool = False, dilation: float = 0.0) -> torch.Tensor:
    """The weights the encoder codes with: `render_log_weights`, the scales by rank corrected by
    SCALE_RANK_CODING, and with `dilation` (`pixel_dilation`) the twist and swing by the
    anisotropy of the footprint the renderer draws (`_drawn_anisotropy`)."""
    w = render_log_weights(stage, vals, log_rho, scale_ranks, swing_twist)
    if stage == "scale" and scale_ranks:
        w = w + torch.as_tensor(SCALE_RANK_CODING, dtype=w.dtype)
    if stage == "rotation" and swing_twist and dilation > 0.0:
        w = w + _drawn_anisotropy(vals["scale"] - log_rho, dilation)
    return w


def _drawn_anisotropy(log_scale: torch.Tensor, dilation: float) -> torch.Tensor:
    """log of how much less a rotation error about each own axis shows once the renderer widens
    the Gaussian by `dilation` (RHO², `pixel_dilation`): the other two axes' variances differ
    by the same amount, relative to σ_max² + dilation instead of σ_max² (render_log_weights).
    A Gaussian much thinner than a pixel turns without showing it. Encoder only, as
    SCALE_RANK_CODING: the steps' network learns it. Measured on playbot_lod3 (4 λ, 1/16..1/2,
    refitted): −0.6% BD-rate alone, −2.4% with `at_resolution`."""
    var = torch.exp(2.0 * log_scale)
    top = var.max(dim=1, keepdim=True).values

    def log_diffs(r):
        d = torch.stack([r[:, 0] - r[:, 1], r[:, 1] - r[:, 2], r[:, 0] - r[:, 2]], dim=1).abs()
        return 2.0 * torch.log(d.clamp_min(1e-3))

    return log_diffs(var / (top + dilation)) - log_diffs(var / top)


def pixel_dilation(scene: GaussianScene, rho: float) -> float:
    """The renderer's widening of every projected Gaussian (EPS2D px²) in RHO² at the scene's
    centre, seen as the evaluation sees it: WEIGHT_RESOLUTION wide, from the sphere's distance."""
    from ..cameras import DEFAULT_FOV_DEG, SPHERE_DISTANCE, robust_bounds
    from ..render.project import EPS2D

    if not len(scene) or rho <= 0:
        return 0.0
    lo, hi = robust_bounds(scene.means)
    distance = SPHERE_DISTANCE * max(float(np.linalg.norm(hi - lo)) / 2, 1e-6)
    pixel = distance * 2.0 * np.tan(np.radians(DEFAULT_FOV_DEG) / 2) / WEIGHT_RESOLUTION
    return float(EPS2D * (pixel / rho) ** 2)


def step_log_weights(stage: str, decoded: dict[str, torch.Tensor], n: int, dim: int, log_rho: float,
                     scale_ranks: bool = False, swing_twist: bool = False) -> torch.Tensor:
    """The weights the decoder knows before decoding `stage`: the render weights where their
    inputs are decoded already. Importance has none (its step is fixed); opacity knows its
    importance only; scale the importance and, with `scale_ranks`, the rank of each channel
    (the step network sees the opacity)."""
    if stage == "importance":
        return torch.zeros((n, dim), dtype=torch.float64)
    log_v = (decoded["importance"] - IMPORTANCE_OFFSET) * float(np.log(2.0))
    if stage == "scale" and scale_ranks:
        return log_v.expand(n, dim) + torch.as_tensor(SCALE_RANK_LOG, dtype=log_v.dtype)
    if stage in ("opacity", "scale"):
        return log_v.expand(n, dim)
    vals = dict(decoded)
    if stage not in vals:
        vals[stage] = torch.zeros((n, dim), dtype=log_v.dtype)
    return render_log_weights(stage, vals, log_rho, swing_twist=swing_twist)
