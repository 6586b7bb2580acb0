"""Fitting anchor-free mode's entropy model to one scene, in attribute space (no rendering).

Loss, averaged over the K training λ (one model serves them all, as in the paper's variable-rate
training): bits + Σ w·(x̂ - x)² / (λ·LAMBDA_UNIT) per Gaussian, x̂ with uniform noise of the
step's width for the rate (HAC's training quantization) and the rounded values, straight
through, for what later stages and contexts see; with the grid through the predicted mean
(DirectConfig.shifted) the distortion is that of the actual rounding. w are the render weights of
the true values (attributes.coding_log_weights). The rate is estimated on a random subset of Gaussians per
iteration; steps and rounded values are computed for all, as contexts need them.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..entropy.rate import quantize, symbol_bits, uniform_bits
from ..errors import InputError
from ..scene import GaussianScene
from .attributes import (at_resolution, coding_log_weights, combine_views, importance_log2, pixel_dilation,
                         scene_vectors, step_log_weights, twist_nearest, view_visibility)
from .geometry import frame_for, layout_for
from .memory import release
from .model import LAMBDA_UNIT, DirectConfig, DirectEntropyModel, set_norms
from .prepare import Prepared, prepare


@dataclass
class DirectFitConfig:
    # More steps on fewer rows: 400 x 4096 instead of 200 x 8192 (about the same work, ~10% more
    # time) at the peers' PSNR: playbot_lod2 at SOG's -0.4%, playbot_lod3 at SPZ's -1.1%, biker
    # +0.1%; 300 x 8192 -0.5% on playbot_lod2, 600 x 4096 or 800 x 2048 no better (docs/direct-mode.md)
    iters: int = 400
    rows: int = 4096  # Gaussians whose rate is estimated per iteration
    lr: float = 1e-2  # 5e-3 before: 4-λ sweeps -0.9% playbot_lod3, -0.5% playbot_lod2, -0.1% biker
    seed: int = 0


@dataclass
class DirectFitted:
    model: DirectEntropyModel
    prep: Prepared
    values: dict[str, np.ndarray]  # true coded values, coding order
    sh_degree: int
    sa_id: str | None = None  # the scene-agnostic weights' id when that part is on
    history: dict = field(default_factory=dict)
    views: str = "sphere"  # where the importance was measured from: "sphere", or "cameras" (the scene's own)
    # log2 importance (as values["importance"]) from the one view that shows each Gaussian most:
    # what the skip decision reads, so that no Gaussian one view needs is left out (None: the mean)
    peak: np.ndarray | None = None
    # the renderer's widening of a Gaussian in RHO² (attributes.pixel_dilation): the rotation's
    # coding weights follow the footprint it draws (0: its own shape)
    dilation: float = 0.0

    def skip_importance(self) -> np.ndarray:
        return self.values["importance"].reshape(-1) if self.peak is None else self.peak


def scene_agnostic_for(cfg: DirectConfig):
    from ..entropy.pointnet import load_scene_agnostic

    sa = load_scene_agnostic()
    cfg.sa_dim = sa.dim
    return sa


IMPORTANCE_VIEWS = 12  # views at 128² for the render weights (not the evaluation's views)
IMPORTANCE_SIZE = 128
IMPORTANCE_POWER = 1.0  # how the views' importances combine (attributes.visibility)


MAX_CAMERA_VIEWS = 32  # of a scene's own cameras, this many evenly spaced (renders cost time)


def importance_views(scene: GaussianScene, cameras: list | None = None) -> list:
    """The views each Gaussian's importance is measured from: by default the whole sphere, since an
    artist orbits freely, at the encoder's phase (no evaluation view is among them); with
    `cameras` (the scene's own, chosen explicitly), those only, at IMPORTANCE_SIZE wide."""
    from ..cameras import ENCODER_PHASE, sphere_views

    if not len(scene):
        return []
    if cameras:
        if len(cameras) > MAX_CAMERA_VIEWS:
            cameras = [cameras[i] for i in np.linspace(0, len(cameras) - 1, MAX_CAMERA_VIEWS).round().astype(int)]
        return [c.resized(IMPORTANCE_SIZE) for c in cameras]
    return sphere_views(scene, n=IMPORTANCE_VIEWS, width=IMPORTANCE_SIZE, height=IMPORTANCE_SIZE, phase=ENCODER_PHASE)


def _stage_values(prep: Prepared, scene: GaussianScene, cfg: DirectConfig, stages=None,
                  cameras: list | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The coded values in coding order, and each Gaussian's peak importance (DirectFitted.peak)."""
    ordered = scene.subset(prep.layout.order)
    residual = (ordered.means.astype(np.float64) - prep.centres) / prep.frame.rho
    views = importance_views(ordered, cameras)
    seen = reporting(views, stages, "importance") if stages and views else views
    pv = view_visibility(ordered, seen)
    release()  # the renders' buffers
    if not cameras:  # the sphere's views stand for the evaluation's width (a scene's own cameras for theirs)
        pv = at_resolution(pv, ordered, views)
    peak = importance_log2(pv.max(1) if pv.shape[1] else np.zeros(len(ordered)))
    values = scene_vectors(ordered, residual, combine_views(pv, IMPORTANCE_POWER),
                           sort_scales=cfg.scale_ranks, swing_twist=cfg.swing_twist)
    return values, peak


def reporting(views: list, stages, stage: str):
    """`views` one by one, reporting `stage` as each is done: the loop that takes the next view
    (attributes.visibility's, one render per view) has finished with the one before."""
    for i, cam in enumerate(views):
        yield cam
        stages(stage, i + 1, len(views), {})


def fit_direct(scene: GaussianScene, cfg: DirectConfig | None = None, fcfg: DirectFitConfig | None = None,
               progress=None, sa=None, stages=None, cameras: list | None = None) -> DirectFitted:
    """Fit the entropy model of `scene` (sanitized). `progress(done, total)` is called per iteration;
    `stages(stage, step, total, info)` (hemgs.progress) hears the "importance" renders and the
    "fit" iterations. `cameras`: code the scene for these views only (its own cameras, an explicit
    choice recorded in the file), instead of the whole sphere."""
    cfg = cfg or DirectConfig()
    fcfg = fcfg or DirectFitConfig()
    cfg.sh_degree = scene.sh_degree
    if cfg.scene_agnostic:
        sa = sa or scene_agnostic_for(cfg)
        cfg.sa_dim = sa.dim
    else:
        cfg.sa_dim = 0
    if len(cfg.lambdas) < 1:
        raise InputError("direct mode needs at least one training λ")
    t0 = time.perf_counter()
    frame = frame_for(scene.means)
    layout, _ = layout_for(scene.means, frame)
    prep = prepare(frame, layout, cfg, sa)
    values, peak = _stage_values(prep, scene, cfg, stages, cameras)
    release()
    model = DirectEntropyModel(cfg, math.log(frame.rho), seed=fcfg.seed)
    set_norms(model, values)
    history = {"prepare_seconds": time.perf_counter() - t0}
    # seen as the evaluation sees the scene (a scene's own cameras: its own shape, as before)
    dilation = 0.0 if cameras else pixel_dilation(scene, frame.rho)
    if prep.n:
        _train(model, prep, values, cfg, fcfg, _both(progress, stages), history, dilation)
        release()  # the training steps' tensors
    history["fit_seconds"] = time.perf_counter() - t0
    return DirectFitted(model, prep, values, scene.sh_degree, sa.id if cfg.scene_agnostic else None, history,
                        views="cameras" if cameras else "sphere", peak=peak, dilation=dilation)


def _coded(x: torch.Tensor, mean: torch.Tensor, q: torch.Tensor, shifted: bool) -> torch.Tensor:
    """The coded values, straight through: on the grid through the mean when the codec puts them there."""
    return mean.detach() + quantize(x - mean.detach(), q, "ste") if shifted else quantize(x, q, "ste")


def _shifted_error(x: torch.Tensor, mean: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """x̂ - x for x̂ = mean + q·round((x - mean)/q), differentiable in q (the rounding offset held)."""
    t = (x - mean) / q
    return q * (torch.round(t) - t).detach()


def _twist_near_mean(x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Rotations (θ, u0, u1) with θ the representative nearest the predicted twist (θ + jπ: the same
    Gaussian, attributes.twist_nearest) and u as the encoder re-expresses it, turned by jπ."""
    theta, j = twist_nearest(x[:, :1], mean[:, :1])
    sign = 1.0 - 2.0 * torch.remainder(j, 2.0)
    return torch.cat([theta, x[:, 1:] * sign], dim=1)


def _passive_threads() -> bool:
    """Whether OpenMP's idle threads sleep (OMP_WAIT_POLICY=PASSIVE, as this project runs on shared
    machines): then every one of a fit step's ~1,000 small operations wakes them, and one thread is
    faster. Measured on playbot_lod2, 2 cores, 400 steps of 4096 rows: 17.5 s on 1 thread, 24.0 s on
    2 with PASSIVE; 17.4 s and 13.6 s with ACTIVE."""
    return os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE"


def _both(progress, stages):
    """One per-iteration callback `(done, total, loss)` for `progress(done, total)` and `stages`."""
    if progress is None and stages is None:
        return None

    def report(done: int, total: int, loss: float) -> None:
        if progress is not None:
            progress(done, total)
        if stages is not None:
            stages("fit", done, total, {"loss": loss})

    return report


def _train(model, prep, values, cfg, fcfg, progress, history, dilation: float = 0.0) -> None:
    threads = torch.get_num_threads()
    if _passive_threads():
        torch.set_num_threads(1)
    try:
        _steps(model, prep, values, cfg, fcfg, progress, history, dilation)
    finally:
        torch.set_num_threads(threads)


def _steps(model, prep, values, cfg, fcfg, progress, history, dilation: float = 0.0) -> None:
    torch.manual_seed(fcfg.seed)
    rng = np.random.default_rng(fcfg.seed)
    n = prep.n
    log_rho = math.log(prep.frame.rho)
    true = {s: torch.as_tensor(v, dtype=torch.float32) for s, v in values.items()}
    true_logw = {s: coding_log_weights(s, true, log_rho, cfg.scale_ranks, cfg.swing_twist, dilation).detach()
                 for s in model.stages}
    voxel_of = torch.as_tensor(prep.layout.voxel_of)
    lookup = model.grid.lookup(prep.xyz01.float())
    sa = prep.sa_feat.float() if prep.sa_feat is not None else None
    # Steps start where the closed form puts them for the true weights, on average per value.
    with torch.no_grad():
        for s, st in model.stages.items():
            if st.fixed_step:
                continue
            earlier = {t: true[t] for t, _ in st.earlier}
            gap = true_logw[s] - step_log_weights(s, earlier, n, st.dim, log_rho, cfg.scale_ranks, cfg.swing_twist).float()
            st.step_bias.copy_(-0.5 * gap.mean(0))
    opt = torch.optim.Adam(model.parameters(), lr=fcfg.lr, foreach=True)
    lams = [float(v) for v in cfg.lambdas]
    losses = []
    for it in range(fcfg.iters):
        lam = lams[it % len(lams)]
        rows_np = np.sort(rng.choice(n, size=min(n, fcfg.rows), replace=False))
        rows = torch.as_tensor(rows_np)
        # the prior of the sampled rows' voxels only (a few thousand of up to ~10^5)
        vox, inv = torch.unique(voxel_of[rows], return_inverse=True)
        prior = model.prior(model.hyper(model.grid.encode_rows(lookup, vox), sa[vox] if sa is not None else None))[inv]
        if any(st.use_ctx for st in model.stages.values()):
            crow, off, ok = prep.context_rows(rows_np)
            crow, off, ok = torch.as_tensor(crow), torch.as_tensor(off, dtype=torch.float32), torch.as_tensor(ok)
        dec: dict[str, torch.Tensor] = {}
        loss = 0.0
        bits_total = 0.0
        # Everything on the sampled rows only, so an iteration costs the same for any scene size.
        # Their context is the neighbours' true values: at this mode's rates the decoded ones differ
        # by a fraction of a step, and computing them would need every Gaussian's steps.
        for s, st in model.stages.items():
            earlier = torch.cat([dec[t] for t, _ in st.earlier], dim=1) if st.earlier else prior.new_zeros((len(rows), 0))
            q = torch.exp(st.log_steps(prior, earlier, lam))
            x = true[s][rows]
            ctx = None
            if st.use_ctx:
                neigh = torch.where(ok[..., None], true[s][crow], x.new_zeros(()))
                ctx = st.context(neigh, off, ok)
            mean, scale = st.params(prior, earlier, ctx)
            if s == "rotation" and cfg.swing_twist:  # as the encoder codes it: the twist (mod π)
                x = _twist_near_mean(x, mean.detach())  # nearest the predicted one
            if st.rest is not None:  # chained: the rest's distribution from the first part as coded
                first = _coded(x[:, st.first], mean, q[:, st.first], st.shifted)
                mean_r, scale_r = st.params_rest(prior, earlier, ctx, first)
                mean, scale = st.assemble(mean, mean_r), st.assemble(scale, scale_r)
            dec[s] = _coded(x, mean, q, st.shifted)
            xn = quantize(x, q, "noise")
            if st.family == "uniform":  # the position residual, anywhere in its voxel
                bits = uniform_bits(prep.frame.residual_half, q).sum(1)
            else:
                bits = symbol_bits(st.family)(xn, mean, scale, q).sum(1)
            loss = loss + bits.mean()
            if not st.fixed_step:
                # distortion: of the actual rounding when shifted (a value predicted within a step
                # decodes to its mean, error (x - mean)², which noise of width q would overstate)
                err = _shifted_error(x, mean.detach(), q) if st.shifted else xn - x
                dist = (torch.exp(true_logw[s][rows]) * err ** 2).sum(1)
                loss = loss + (dist / (lam * LAMBDA_UNIT)).mean()
            bits_total += float(bits.detach().mean())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append((lam, float(loss.detach()), bits_total))
        if progress:
            progress(it + 1, fcfg.iters, losses[-1][1])
    history["losses"] = losses[-len(lams):]
