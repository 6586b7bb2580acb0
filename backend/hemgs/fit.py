"""Fit an anchor model and its entropy model to a 3DGS scene (the teacher).

Stages, each reported through `progress(stage, step, total, info)`:
1. "teacher"  render the source from the training views (cameras.json beside the PLY, else
              sampled views; every 8th view is held out for evaluation, and rendered here too);
2. "warm"     voxelize and fit the anchor model to the source Gaussians in attribute space
              (hemgs.anchor.warm_start) — what makes a CPU run practical;
3. "render"   fine-tune in render space: L1 + SSIM against the teacher's renders (Scaffold-GS's
              0.8/0.2 mix), plus λ·bits per parameter once the rate joins (HAC trains the first
              part of its schedule without the rate, then with straight-through quantization);
4. "refine"   entropy refinement (hemgs.entropy.refine): anchor attributes and quantization
              frozen, the parts of the entropy model that feed no quantization step train on the
              exact rate of the symbols the file will code, until it stops improving
              (`FitConfig.refine_budget` steps at most; 0 skips it). The coded values do not
              change.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch

from .anchor.memory import check_training_memory
from .anchor.model import AnchorConfig, AnchorModel
from .anchor.render import render_anchor, visible_anchors
from .anchor.warm_start import build_anchor_model, warm_start
from .cameras import ENCODER_PHASE, Camera, has_cameras_beside, scene_views, sphere_views, split_views
from .entropy.hac import AnchorAttrs, HacEntropyModel
from .entropy.hashgrid import HashGridConfig
from .entropy.hemgs import LAMBDAS, HemgsConfig, HemgsEntropyModel, widths_for_anchor_count
from .entropy.refine import init_from_anchors, refine_entropy
from .errors import InputError, SceneError
from .metrics import ssim_loss_term
from .modes import ANCHOR_FIXED_LAMBDA_RANGE, ANCHOR_LAMBDA_DEFAULT
from .render import render
from .scene import GaussianScene

Progress = Callable[[str, int, int, dict], None]
LAMBDA_RANGE = ANCHOR_FIXED_LAMBDA_RANGE
REFINE_PER_STEP = 2  # the entropy refinement's default budget, per render-space step


@dataclass
class FitConfig:
    lam: float = ANCHOR_LAMBDA_DEFAULT  # rate weight (HAC mode: one λ per model)
    width: int = 256  # training render size (square unless height is set)
    height: int | None = None
    views: int = 32  # sampled views when the scene has no cameras; every 8th is held out
    warm_steps: int | None = None  # None: the warm start's own rule (~500 visits per anchor)
    steps: int = 200  # render-space steps (the warm start does most of the fitting)
    rate_start: float = 0.3  # fraction of the render steps trained before the rate joins
    target_ratio: float = 4.0  # source Gaussians per anchor (voxel size choice)
    hidden: int | None = 128  # the rendering MLPs' hidden width (None: the feature width, as Scaffold-GS)
    importance: bool = True  # weight the warm start by each Gaussian's measured share of the images
    lr_features: float = 5e-3
    lr_offsets: float = 5e-3
    lr_scaling: float = 5e-3
    lr_mask: float = 1e-2
    lr_mlp: float = 2e-3
    lr_entropy: float = 5e-3
    mask_weight: float = 5e-4  # HAC's push towards pruning offsets
    seed: int = 0
    # The entropy model: "hemgs" (paper §3.3; its parts are the switches below) or "hac" (the
    # baseline: hash grid only, fixed rate).
    codec: str = "hemgs"
    scene_agnostic: bool = True
    ar: bool = True
    acs: bool = True
    variable_rate: bool = True
    lambdas: tuple = LAMBDAS  # variable rate: the K rates trained together
    rate_anchors: int = 4096  # anchors whose bits are estimated per step (unbiased subsample)
    # entropy refinement after the fine-tune (hemgs.entropy.refine): at most this many steps, fewer
    # once the rate stops improving; None: REFINE_PER_STEP per render step; 0: none
    refine_steps: int | None = None
    # when the rate joins: start the entropy model's means and scales at each channel's mean and
    # spread (hemgs.entropy.refine.init_from_anchors) instead of N(0, 0.69)
    init_entropy: bool = True
    # HEMGS variable rate: how λ scales the steps' base (HemgsConfig.rate_exponent). At 0 the learned
    # steps sit at their bound and λ moved playbot_lod3's file by 1.07x over the λ a model serves;
    # at 1.5, 2.2x, PSNR falling monotonically, on about the same curve (docs/anchor-model.md)
    rate_exponent: float = 1.5

    def validate(self) -> None:
        lo, hi = LAMBDA_RANGE
        if not (math.isfinite(self.lam) and lo <= self.lam <= hi):
            raise InputError(f"λ must be a number in [{lo:g}, {hi:g}], got {self.lam}")
        if self.width < 16 or (self.height is not None and self.height < 16):
            raise InputError("training renders need at least 16x16 pixels")
        if (self.steps < 0 or self.refine_budget < 0 or (self.warm_steps is not None and self.warm_steps < 0)
                or self.views < 2):
            raise InputError("steps must be >= 0 and views >= 2")
        if self.codec not in ("hemgs", "hac"):
            raise InputError(f"unknown codec {self.codec!r}: expected hemgs or hac")
        if self.variable:
            bad = [v for v in self.lambdas if not (math.isfinite(v) and lo <= v <= hi)]
            if bad or len(self.lambdas) < 2:
                raise InputError(f"a variable-rate model trains on >= 2 λ values in [{lo:g}, {hi:g}], got {list(self.lambdas)}")

    @property
    def refine_budget(self) -> int:
        """The entropy refinement's step budget: `refine_steps`, or in proportion to the fine-tune
        (a quick training gets a quick refinement; 300 steps give 600, which the refinement of
        playbot_lod3 ends well within)."""
        return REFINE_PER_STEP * self.steps if self.refine_steps is None else int(self.refine_steps)

    @property
    def variable(self) -> bool:
        """Whether the model is variable-rate (HAC's is always fixed-rate)."""
        return self.codec == "hemgs" and self.variable_rate

    @property
    def lambda_range(self) -> tuple[float, float]:
        """The λ values a model trained with this config serves."""
        if self.variable:
            return min(self.lambdas), max(self.lambdas)
        return self.lam, self.lam


@dataclass
class Fitted:
    model: AnchorModel
    entropy: HacEntropyModel
    config: FitConfig
    train_views: list[Camera]
    test_views: list[Camera]
    history: dict = field(default_factory=dict)


def teacher_views(scene: GaussianScene, source_path, cfg: FitConfig) -> tuple[list[Camera], list[Camera]]:
    height = cfg.height or cfg.width
    if has_cameras_beside(source_path):
        cams = scene_views(scene, source_path, n=cfg.views, width=cfg.width, height=height)
    else:  # the whole sphere, as the evaluation (an artist orbits freely), at the encoder's phase
        cams = sphere_views(scene, n=cfg.views, width=cfg.width, height=height, phase=ENCODER_PHASE)
    train, test = split_views(cams)
    if not train or not test:
        raise SceneError(f"need at least 2 views to train and evaluate, got {len(cams)}")
    return train, test


def new_entropy_model(model: AnchorModel, cfg: FitConfig | None = None, seed: int = 0):
    """The entropy model `cfg` asks for, sized to the model's anchors."""
    cfg = cfg or FitConfig(codec="hac")
    a = model.anchors.detach()
    lo, hi = a.min(0).values - model.voxel_size, a.max(0).values + model.voxel_size
    grid = HashGridConfig.for_anchor_count(model.num_anchors)
    if cfg.codec == "hac":
        return HacEntropyModel(model.config.feat_dim, model.config.k, lo, hi, grid, seed=seed)
    sa_dim = scene_agnostic_prior().dim if cfg.scene_agnostic else 0
    hc = HemgsConfig(feat_dim=model.config.feat_dim, k=model.config.k, sa_dim=sa_dim,
                     scene_agnostic=cfg.scene_agnostic, ar=cfg.ar, acs=cfg.acs, variable_rate=cfg.variable_rate,
                     lambdas=sorted(cfg.lambdas) if cfg.variable_rate else [cfg.lam], grid=grid.to_dict(),
                     rate_exponent=float(cfg.rate_exponent), **widths_for_anchor_count(model.num_anchors))
    return HemgsEntropyModel(hc, lo, hi, seed=seed)


def entropy_lambdas(entropy, cfg: FitConfig) -> list[float]:
    """The λ values whose symbols the refinement trains on: a variable-rate model's K, else λ."""
    if isinstance(entropy, HemgsEntropyModel):
        return list(entropy.cfg.lambdas)
    return [cfg.lam]


def scene_agnostic_prior():
    from .entropy.pointnet import load_scene_agnostic

    return load_scene_agnostic()


def fit(scene: GaussianScene | None, *, source_path=None, cfg: FitConfig | None = None,
        progress: Progress | None = None, device: torch.device | None = None,
        views: tuple[list[Camera], list[Camera]] | None = None,
        targets: tuple[list, list] | None = None, init_model: AnchorModel | None = None) -> Fitted:
    """Fit an anchor model and its entropy model; see the module docstring for the stages.

    The optional arguments (hemgs.fit_sources fills them) change where the pieces come from:
    - `views` (train, held-out) cameras instead of the scene's cameras.json or sampled views;
    - `targets` (train images, held-out images), (H,W,3) floats in [0,1] matching `views`: train
      against these (photos) instead of the teacher's renders;
    - `init_model` an AnchorModel to start from (a Scaffold-GS file, random anchors): no warm
      start. With no `scene` and no `targets`, the teacher is `init_model` itself.
    """
    cfg = cfg or FitConfig()
    cfg.validate()
    if scene is None and init_model is None:
        raise SceneError("nothing to fit: give a scene or an initial anchor model")
    if scene is not None and len(scene) == 0:
        raise SceneError("the scene has no Gaussians to fit")
    if init_model is not None and init_model.num_anchors == 0:
        raise SceneError("the initial anchor model has no anchors")
    if targets is not None and views is None:
        raise InputError("explicit targets need their views")
    report = progress or (lambda *a: None)
    device = device or torch.device("cpu")
    if scene is not None and device.type == "cpu":  # (on a GPU the peak is the GPU's, not measured)
        check_training_memory(len(scene))  # before minutes of teacher renders
    torch.manual_seed(cfg.seed)
    history: dict = {"config": asdict(cfg)}

    # 1. targets: the photos, or teacher renders (of the scene, else of the initial model)
    if views is not None:
        train, test = list(views[0]), list(views[1])
        if not train:
            raise SceneError("no training views")
    else:
        train, test = teacher_views(scene, source_path, cfg)
    t0 = time.perf_counter()
    if targets is not None:
        train_targets = [torch.as_tensor(np.asarray(t, np.float32)).to(device) for t in targets[0]]
        test_targets = [torch.as_tensor(np.asarray(t, np.float32)).to(device) for t in targets[1]]
        if len(train_targets) != len(train) or len(test_targets) != len(test):
            raise InputError("explicit targets must pair one image with each view")
    else:
        teacher = init_model.to(device) if scene is None else None

        def shoot(cam):
            if teacher is not None:
                return torch.as_tensor(render_views_anchor(teacher, [cam])[0]).to(device)
            return torch.as_tensor(render(scene, cam, device=device)).to(device)

        train_targets, test_targets = [], []
        for i, cam in enumerate(train + test):  # (the held-out views' renders counted too)
            (train_targets if i < len(train) else test_targets).append(shoot(cam))
            report("teacher", i + 1, len(train) + len(test), {})
    history["teacher_seconds"] = time.perf_counter() - t0
    history["targets"] = "images" if targets is not None else ("scene" if scene is not None else "initial model")

    # 2. warm start in attribute space (skipped when a model to start from is given)
    t0 = time.perf_counter()
    if init_model is not None:
        model = init_model.to(device)
        history["warm_final_loss"] = None
    else:
        model = build_anchor_model(scene, AnchorConfig(hidden=cfg.hidden), target_ratio=cfg.target_ratio,
                                   seed=cfg.seed).to(device)
        imp = scene_importance(scene, report, cfg.width) if cfg.importance else None
        ws = warm_start(model, scene, steps=cfg.warm_steps, seed=cfg.seed, importance=imp,
                        progress=lambda s, n, loss: report("warm", s, n, {"loss": loss}))
        history["warm_final_loss"] = ws.losses["total"][-1] if ws.losses["total"] else None
    history["warm_seconds"] = time.perf_counter() - t0
    history["anchors"] = model.num_anchors

    # 3. render-space fine-tune
    history["feature_rescale"] = rescale_features(model, FEATURE_STD)
    entropy = new_entropy_model(model, cfg, cfg.seed).to(device)
    sa = None
    if isinstance(entropy, HemgsEntropyModel) and cfg.scene_agnostic:  # float64, as the codec computes it
        sa = scene_agnostic_prior().features(model.coords.cpu().numpy())
    t0 = time.perf_counter()
    history["render"] = render_finetune(model, entropy, train, train_targets, cfg, report, sa)
    history["render_seconds"] = time.perf_counter() - t0
    # 4. entropy refinement on the frozen symbols
    if cfg.refine_budget > 0:
        history["refine"] = refine_entropy(model, entropy, lambdas=entropy_lambdas(entropy, cfg),
                                           steps=cfg.refine_budget, sa_feat=sa, seed=cfg.seed, progress=report)
        history["refine_seconds"] = history["refine"]["seconds"]
    if test:
        history["heldout_psnr"] = heldout_psnr(model, test, test_targets)
    return Fitted(model, entropy, cfg, train, test, history)


def scene_importance(scene: GaussianScene, report: Progress, width: int | None = None) -> np.ndarray:
    """Each Gaussian's share of the images over the whole sphere, as direct mode measures it; the
    renders no wider than `width` (a quick training's), and scaled to the evaluation's resolution."""
    from .direct.attributes import at_resolution, combine_views, view_visibility
    from .direct.fit import IMPORTANCE_SIZE, importance_views, reporting

    views = importance_views(scene)
    if width is not None and width < IMPORTANCE_SIZE:
        views = [c.resized(width) for c in views]
    return combine_views(at_resolution(view_visibility(scene, reporting(views, report, "importance")), scene, views))


def heldout_psnr(model: AnchorModel, views: list[Camera], targets: list) -> float:
    """Mean PSNR (dB) of the model's renders against `targets` over `views` (not quantized)."""
    from .metrics import psnr

    renders = render_views_anchor(model, views)
    return float(np.mean([psnr(np.asarray(t.detach().cpu() if torch.is_tensor(t) else t), r)
                          for t, r in zip(targets, renders)]))


# HAC quantizes features with a base step of 1, so its features spread over several units. The
# warm start leaves them far smaller (most would round to 0): rescale them, and the MLPs' input
# weights inversely, which changes no output but makes the quantization step meaningful.
FEATURE_STD = 3.0


def rescale_features(model: AnchorModel, target_std: float) -> float:
    with torch.no_grad():
        std = float(model.features.std()) if model.features.numel() > 1 else 0.0
        if not std > 0:
            return 1.0
        c = target_std / std
        model.features.mul_(c)
        f = model.config.feat_dim
        for head in (model.mlps.opacity, model.mlps.cov, model.mlps.color):
            head[0].weight[:, :f].div_(c)
    return c


class _HemgsRate:
    """Per-step rate of a HEMGS model: everything that depends only on the anchors is built once
    (hash-grid lookup, scene-agnostic features, context selection)."""

    def __init__(self, model: AnchorModel, entropy: HemgsEntropyModel, cfg: FitConfig, sa: torch.Tensor | None = None):
        self.entropy, self.cfg = entropy, cfg
        hc = entropy.cfg
        self.lookup = entropy.grid.lookup(entropy.normalise(model.anchors.detach()))
        coords = model.coords.cpu().numpy()
        dev = model.features.device
        if hc.scene_agnostic and sa is None:
            sa = scene_agnostic_prior().features(coords)
        self.sa = sa.to(dev, torch.float32) if hc.scene_agnostic else None
        self.index = self.offsets = None
        if hc.ar:
            from .entropy.context import assign_groups, select_context

            sel = select_context(coords, assign_groups(coords, hc.groups), acs=hc.acs,
                                 n=hc.n_context if hc.acs else None)
            self.index = torch.from_numpy(sel.index).to(dev)
            self.offsets = torch.from_numpy(sel.offsets).to(dev, torch.float32)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.rng = random.Random(cfg.seed + 1)

    def __call__(self, model: AnchorModel, vis: torch.Tensor, render_mode: str):
        """(quantized attributes of the visible anchors, λ of this step, bits per parameter)."""
        n = model.num_anchors
        lam = self.rng.choice(self.cfg.lambdas) if self.entropy.cfg.variable_rate else self.cfg.lam
        rows = torch.randperm(n, generator=self.gen)[: self.cfg.rate_anchors].to(vis.device)
        attrs = AnchorAttrs(model.features, model.scaling, model.offsets, model.binary_mask())
        hat, bits = self.entropy(self.entropy.grid.encode(self.lookup), self.sa, attrs, lam, self.index,
                                 self.offsets, rows, render_mode=render_mode)
        bpp = sum(bits.values()) / (len(rows) * self.entropy.params_per_anchor())
        visible = AnchorAttrs(hat.features[vis], hat.scaling[vis], hat.offsets[vis], hat.mask[vis])
        return visible, lam, bpp


def make_optimizer(model: AnchorModel, entropy, cfg: FitConfig) -> torch.optim.Adam:
    """Adam with one learning rate per kind of parameter (the render-space fine-tune's)."""
    return torch.optim.Adam([
        {"params": [model.features], "lr": cfg.lr_features},
        {"params": [model.offsets], "lr": cfg.lr_offsets},
        {"params": [model.scaling], "lr": cfg.lr_scaling},
        {"params": [model.mask_logits], "lr": cfg.lr_mask},
        {"params": list(model.mlps.parameters()), "lr": cfg.lr_mlp},
        {"params": list(entropy.parameters()), "lr": cfg.lr_entropy},
    ])


def render_finetune(model: AnchorModel, entropy, views: list[Camera], targets: list[torch.Tensor],
                    cfg: FitConfig, report: Progress, sa: torch.Tensor | None = None) -> dict:
    """`sa`: the scene-agnostic features of the anchors, when already computed."""
    opt = make_optimizer(model, entropy, cfg)
    base = [g["lr"] for g in opt.param_groups]
    rng = random.Random(cfg.seed)
    order: list[int] = []
    rate_from = int(cfg.rate_start * cfg.steps)
    ste_from = rate_from + int(0.7 * (cfg.steps - rate_from))
    log = {"loss": [], "l1": [], "bits_per_param": []}
    # Anchors never move: the hash grid's interpolation at them is built once (only the tables
    # train), and each step's context is then two sparse products instead of 144 gathers.
    hemgs = isinstance(entropy, HemgsEntropyModel)
    lookup = hemgs_rate = None
    if rate_from < cfg.steps:
        if hemgs:
            hemgs_rate = _HemgsRate(model, entropy, cfg, sa)
        else:
            lookup = entropy.lookup(model.anchors.detach())
    for step in range(cfg.steps):
        if not order:
            order = list(range(len(views)))
            rng.shuffle(order)
        i = order.pop()
        cam, target = views[i], targets[i]
        if step == rate_from and cfg.init_entropy:
            init_from_anchors(model, entropy)
        vis = visible_anchors(model, cam)
        if not bool(vis.any()):
            report("render", step + 1, cfg.steps, {})  # (a skipped step is still one done)
            continue
        attrs = AnchorAttrs(model.features[vis], model.scaling[vis], model.offsets[vis], model.binary_mask()[vis])
        bpp, lam = None, cfg.lam
        # HAC's schedule: noise quantization first (the distortion shapes the steps), rounded
        # values for the last part (the renderer sees what the decoder will).
        render_mode = "noise" if step < ste_from else "ste"
        if step >= rate_from and hemgs:
            attrs, lam, bpp = hemgs_rate(model, vis, render_mode)
        elif step >= rate_from:
            attrs, bits = entropy(None, attrs, context=entropy.context_of(lookup)[vis], render_mode=render_mode)
            bpp = sum(bits.values()) / (int(vis.sum()) * entropy.params_per_anchor())
        image, _ = render_anchor(model, cam, attrs=attrs, visible=vis)
        l1 = (image - target).abs().mean()
        loss = 0.8 * l1 + 0.2 * ssim_loss_term(image, target)
        loss = loss + cfg.mask_weight * torch.sigmoid(model.mask_logits[vis]).mean()
        if bpp is not None:  # variable rate: one of the K λ per step, i.e. the paper's mean over k in expectation
            loss = loss + lam * bpp
        opt.zero_grad(set_to_none=True)
        loss.backward()
        decay = 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * step / max(cfg.steps, 1)))
        for g, lr in zip(opt.param_groups, base):
            g["lr"] = lr * decay
        opt.step()
        log["loss"].append(float(loss.detach()))
        log["l1"].append(float(l1.detach()))
        bpp_f = float(bpp.detach()) if bpp is not None else None
        log["bits_per_param"].append(bpp_f)
        report("render", step + 1, cfg.steps, {"loss": log["loss"][-1], "l1": log["l1"][-1], "bits_per_param": bpp_f})
    return log


def render_views_anchor(model: AnchorModel, views: list[Camera]) -> list[np.ndarray]:
    out = []
    with torch.no_grad():
        for cam in views:
            img, _ = render_anchor(model, cam)
            out.append(img.clamp(0, 1).cpu().numpy())
    return out
