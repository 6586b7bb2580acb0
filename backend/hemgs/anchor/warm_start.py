"""Warm start: fit an anchor model to a 3DGS scene in attribute space, cheaply, on the CPU.

Rendering-based training from scratch is slow without a GPU. A trained 3DGS scene already tells us
every Gaussian's position, opacity, scale, rotation and view-dependent colour, so we
1. put each source Gaussian into its anchor's voxel and give it one of the anchor's k slots
   (the most visible members first when there are more than k); the slot's offset is set so the
   generated position equals the source position exactly, and its mask is on;
2. fit features + MLPs so that each slot's generated opacity, scale, rotation and colour (seen from
   random cameras on a sphere around the scene) match its source Gaussian's.
The render-space fine-tune (L1 + SSIM against the teacher's renders, plus rate) runs afterwards.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import SceneError
from ..scene import GaussianScene
from .model import MASK_OFF_LOGIT, MASK_ON_LOGIT, AnchorConfig, AnchorModel
from .voxelize import DEFAULT_TARGET_RATIO, choose_voxel_size, voxelize

DEFAULT_EPOCHS, MIN_STEPS, MAX_STEPS = 500, 300, 3000
LOSS_NAMES = ("opacity", "scale", "rotation", "color")
TINY_LOG_SCALE = math.log(1000.0)  # targets' log-scales floor: log(voxel size) minus this
# Colour is weighted up: it is what a render shows most, and the hardest to fit (it is view-
# dependent). On the demo scene, weight 4 cut the colour MSE by a fifth (0.0206 -> 0.0164) for a
# small rise of the others; weight 10 bought little more colour for larger scale/rotation errors.
DEFAULT_WEIGHTS = {"opacity": 1.0, "scale": 1.0, "rotation": 1.0, "color": 4.0}


@dataclass
class SlotTargets:
    """Source attributes per slot (N,k,...), and which slots hold a source Gaussian."""

    valid: torch.Tensor  # (N,k) bool
    source: torch.Tensor  # (N,k) int64 index into the scene, -1 where empty
    means: torch.Tensor  # (N,k,3)
    opacity: torch.Tensor  # (N,k) sigmoid(opacity logit)
    log_scales: torch.Tensor  # (N,k,3)
    quats: torch.Tensor  # (N,k,4) unit, w,x,y,z
    sh: torch.Tensor  # (N,k,K,3)
    unplaced: int  # source Gaussians left out (anchor full, or outside every anchor's voxel)
    weight: torch.Tensor | None = None  # (N,k) each slot's loss weight, mean 1 over valid slots


@dataclass
class WarmStartResult:
    losses: dict[str, list[float]] = field(default_factory=dict)  # "total" + LOSS_NAMES, per step
    unplaced: int = 0
    seconds: float = 0.0


def build_anchor_model(
    scene: GaussianScene, config: AnchorConfig | None = None, *, voxel_size: float | None = None,
    target_ratio: float = DEFAULT_TARGET_RATIO, seed: int = 0,
) -> AnchorModel:
    """A fresh AnchorModel with one anchor per occupied voxel of `scene`.

    The voxel size is `voxel_size`, else `config.voxel_size` when set, else `choose_voxel_size`.
    """
    cfg = AnchorConfig(**(config.to_dict() if config else {}))
    if voxel_size is None:
        voxel_size = cfg.voxel_size if cfg.voxel_size > 0 else choose_voxel_size(scene, target_ratio)
    cfg.voxel_size = float(voxel_size)
    coords, origin, _ = voxelize(scene.means, cfg.voxel_size)
    return AnchorModel(cfg, coords, origin, seed=seed)


def assign_slots(model: AnchorModel, scene: GaussianScene, importance: np.ndarray | None = None,
                 weight_power: float = 0.5) -> SlotTargets:
    """Give each source Gaussian a slot of the anchor whose voxel holds it.

    Members are ranked by `importance` (N,) when given (each Gaussian's measured share of the
    images), else by opacity x largest scale (a proxy for it); the first k get slots 0..k-1 and the
    rest are left out (counted in `unplaced`). With `importance`, each slot's loss weight is
    importance^weight_power, scaled to mean 1 over the valid slots.
    """
    n, k = model.num_anchors, int(model.config.k)
    if n == 0:
        raise SceneError("the anchor model has no anchors to assign Gaussians to")
    if not all(np.isfinite(a).all() for a in (scene.means, scene.quats, scene.log_scales,
                                              scene.opacity_logits, scene.sh)):
        raise SceneError("the teacher scene holds NaN/Inf attributes; run hemgs.scene.sanitize first")
    means = scene.means.astype(np.float64)
    origin = model.origin.detach().cpu().numpy().astype(np.float64)
    cells = np.floor((means - origin) / model.voxel_size).astype(np.int64)
    coords = model.coords.cpu().numpy()
    # Look cells up in the model's coordinates via the same packed 16-bit key as voxelize.
    key_of = lambda c: (c[:, 0] << 32) | (c[:, 1] << 16) | c[:, 2]  # noqa: E731
    inside = ((cells >= 0) & (cells <= 65535)).all(axis=1)
    akey = key_of(coords)
    order = np.argsort(akey, kind="stable")
    skey = akey[order]
    gkey = key_of(np.where(inside[:, None], cells, 0))
    pos = np.minimum(np.searchsorted(skey, gkey), n - 1)
    found = inside & (skey[pos] == gkey)
    anchor = np.where(found, order[pos], -1)

    rank_by = scene.opacities * scene.scales.max(axis=1) if importance is None else np.asarray(importance, np.float64)
    idx = np.nonzero(found)[0]
    # Sort members by anchor, then by importance (descending), to number them within the anchor.
    srt = idx[np.lexsort((-rank_by[idx], anchor[idx]))]
    a_sorted = anchor[srt]
    first = np.searchsorted(a_sorted, a_sorted, side="left")
    rank = np.arange(len(srt)) - first
    placed = rank < k
    src = np.full((n, k), -1, np.int64)
    src[a_sorted[placed], rank[placed]] = srt[placed]
    unplaced = int(len(scene) - placed.sum())

    valid = src >= 0
    take = np.where(valid, src, 0)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a[take]))  # noqa: E731
    quats = scene.quats / np.maximum(np.linalg.norm(scene.quats, axis=1, keepdims=True), 1e-12)
    # Zero-size Gaussians (sanitize's ZERO_LOG_SCALE) would dominate the squared log-scale loss;
    # a thousandth of a voxel renders the same (sub-pixel, under the 0.3 px blur) from any view.
    log_scales = np.maximum(scene.log_scales, np.float32(math.log(model.voxel_size) - TINY_LOG_SCALE))
    weight = None
    if importance is not None:
        w = np.where(valid, np.maximum(rank_by[take], 0.0), 0.0) ** weight_power
        mean = w[valid].mean() if valid.any() else 0.0
        w = w / mean if mean > 0 else valid.astype(np.float64)  # mean 1 over the valid slots
        weight = torch.from_numpy(np.where(valid, w, 0.0).astype(np.float32))
    return SlotTargets(
        valid=torch.from_numpy(valid), source=torch.from_numpy(src),
        means=t(scene.means), opacity=t(scene.opacities.astype(np.float32)),
        log_scales=t(log_scales), quats=t(quats.astype(np.float32)), sh=t(scene.sh),
        unplaced=unplaced, weight=weight,
    )


@torch.no_grad()
def init_from_targets(model: AnchorModel, targets: SlotTargets) -> None:
    """Set offsets, scaling and masks from the slot assignment (features and MLPs untouched).

    scaling[:, :3] = log(voxel size), so offsets of members are within +-0.5 (their voxel);
    scaling[:, 3:] = log(2 x the largest member scale), so sigmoid() of the cov MLP reaches every
    member's scale from mid-range (anchors with no member keep log(voxel size)).
    """
    v = model.voxel_size
    anchors = model.anchors
    log_v = math.log(v)
    model.scaling[:, :3] = log_v
    big = torch.where(targets.valid[..., None], targets.log_scales, float("-inf"))
    top = big.amax(dim=(1, 2))
    model.scaling[:, 3:] = torch.where(torch.isfinite(top), top + math.log(2.0), log_v)[:, None]
    rel = (targets.means - anchors[:, None, :]) / v
    model.offsets.copy_(torch.where(targets.valid[..., None], rel, 0.0))
    model.mask_logits.copy_(torch.where(targets.valid, MASK_ON_LOGIT, MASK_OFF_LOGIT))


def _on(targets: SlotTargets, dev: torch.device) -> SlotTargets:
    if dev.type == "cpu":
        return targets
    return SlotTargets(**{k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in vars(targets).items()})


def _sh_colors(sh: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Source colour seen along `dirs` (camera -> Gaussian), as gsplat: SH + 0.5, clamped to [0,1]."""
    from gsplat.cuda._torch_impl import _spherical_harmonics  # pure torch, runs on the CPU

    degree = int(round(math.sqrt(sh.shape[-2]))) - 1
    return (_spherical_harmonics(degree, dirs, sh) + 0.5).clamp(0.0, 1.0)


def _random_on_sphere(n: int, gen: torch.Generator) -> torch.Tensor:
    v = torch.randn(n, 3, generator=gen)
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)


def slot_losses(model: AnchorModel, targets: SlotTargets, index: torch.Tensor, cams: torch.Tensor) -> dict:
    """Per-attribute attribute-space losses for the anchors `index`, each seen from `cams[i]`."""
    out = model.slots(cams, index)
    valid = targets.valid[index]
    if not valid.any():
        z = model.features.sum() * 0.0
        return {name: z for name in LOSS_NAMES}
    t_means = targets.means[index][valid]
    colors_t = _sh_colors(targets.sh[index][valid], t_means - cams[:, None, :].expand(-1, valid.shape[1], -1)[valid])
    dot = (out.quats[valid] * targets.quats[index][valid]).sum(-1)
    w = None if targets.weight is None else targets.weight[index][valid]

    def mean(err: torch.Tensor) -> torch.Tensor:  # per slot (M,) or (M,c), weighted over the slots
        err = err.reshape(err.shape[0], -1).mean(dim=1)
        return err.mean() if w is None else (err * w).sum() / w.sum().clamp_min(1e-12)

    return {
        "opacity": mean((out.opacity[valid] - targets.opacity[index][valid]) ** 2),
        "scale": mean((out.log_scales[valid] - targets.log_scales[index][valid]) ** 2),
        "rotation": mean(1.0 - dot * dot),  # q and -q are the same rotation
        "color": mean((out.colors[valid] - colors_t) ** 2),
    }


def default_steps(anchors: int, batch: int) -> int:
    """Enough steps for each anchor to be seen DEFAULT_EPOCHS times, within [MIN_STEPS, MAX_STEPS].

    On the demo scene (7.7k anchors, batch 4096) this is 946 steps; playbot_lod2 (31k anchors)
    gets the cap. The cap keeps a 1M-Gaussian scene to minutes on one core; the render-space
    fine-tune goes on from there anyway. (With 128-wide MLPs the warm start alone scored 31.1 dB
    after 473 steps and 33.2 dB after 2,000 on the demo scene; docs/anchor-model.md.)
    """
    return int(min(MAX_STEPS, max(MIN_STEPS, math.ceil(DEFAULT_EPOCHS * anchors / max(batch, 1)))))


def warm_start(
    model: AnchorModel, scene: GaussianScene, *, steps: int | None = None, batch_anchors: int = 4096,
    lr_features: float = 0.05, lr_mlp: float = 0.02, seed: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
    weights: dict[str, float] | None = None, importance: np.ndarray | None = None,
    weight_power: float = 0.5,
) -> WarmStartResult:
    """Initialise `model` from `scene` (offsets, masks, scaling) and fit features + MLPs.

    Adam on mini-batches of anchors (epochs of a seeded permutation), each anchor seen from its
    own random camera on `model.view_sphere()`; the learning rate decays by cosine to 10%.
    `steps=None` picks `default_steps` for the scene's size.
    Deterministic for a given seed and thread count. `progress(step, steps, loss)` is called
    after every step. Returns the per-step losses ("total" and one per attribute).
    """
    if len(scene) == 0 or model.num_anchors == 0:
        raise SceneError("warm start needs a scene and a model with at least one Gaussian/anchor")
    if (steps is not None and steps < 0) or batch_anchors < 1:
        raise SceneError(f"warm start needs steps >= 0 and batch_anchors >= 1, got {steps}, {batch_anchors}")
    t0 = time.perf_counter()
    dev = model.features.device
    targets = _on(assign_slots(model, scene, importance, weight_power), dev)
    init_from_targets(model, targets)
    w = dict(DEFAULT_WEIGHTS)
    w.update(weights or {})

    gen = torch.Generator().manual_seed(int(seed))
    center, radius = model.view_sphere()
    center = center.cpu()  # cameras are drawn on the CPU generator, then moved
    opt = torch.optim.Adam([
        {"params": [model.features], "lr": lr_features},
        {"params": list(model.mlps.parameters()), "lr": lr_mlp},
    ])
    base = [g["lr"] for g in opt.param_groups]
    # Only anchors that hold a source Gaussian carry a signal.
    pool = torch.nonzero(targets.valid.any(dim=1).cpu()).reshape(-1)
    batch = min(int(batch_anchors), len(pool))
    if steps is None:
        steps = default_steps(len(pool), batch)
    losses: dict[str, list[float]] = {name: [] for name in ("total",) + LOSS_NAMES}
    perm, cursor = pool[torch.randperm(len(pool), generator=gen)], 0
    for step in range(steps):
        if cursor + batch > len(perm):
            perm, cursor = pool[torch.randperm(len(pool), generator=gen)], 0
        index = perm[cursor:cursor + batch].to(dev)
        cursor += batch
        cams = (center + radius * _random_on_sphere(len(index), gen)).to(dev)
        parts = slot_losses(model, targets, index, cams)
        total = sum(w[name] * parts[name] for name in LOSS_NAMES)
        opt.zero_grad(set_to_none=True)
        total.backward()
        decay = 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * step / max(steps, 1)))
        for g, lr in zip(opt.param_groups, base):
            g["lr"] = lr * decay
        opt.step()
        total_f = float(total.detach())
        losses["total"].append(total_f)
        for name in LOSS_NAMES:
            losses[name].append(float(parts[name].detach()))
        if progress is not None:
            progress(step + 1, steps, total_f)
    return WarmStartResult(losses=losses, unplaced=targets.unplaced, seconds=time.perf_counter() - t0)


@torch.no_grad()
def evaluate_fit(model: AnchorModel, scene: GaussianScene, *, views: int = 4, seed: int = 1) -> dict[str, float]:
    """Attribute losses over all anchors, averaged over `views` random camera centres."""
    dev = model.features.device
    targets = _on(assign_slots(model, scene), dev)
    gen = torch.Generator().manual_seed(int(seed))
    center, radius = model.view_sphere()
    center = center.cpu()  # cameras are drawn on the CPU generator, then moved
    index = torch.arange(model.num_anchors, device=dev)
    acc = {name: 0.0 for name in LOSS_NAMES}
    for _ in range(views):
        cams = (center + radius * _random_on_sphere(1, gen)).to(dev).expand(model.num_anchors, 3)
        parts = slot_losses(model, targets, index, cams)
        for name in LOSS_NAMES:
            acc[name] += float(parts[name]) / views
    return acc
