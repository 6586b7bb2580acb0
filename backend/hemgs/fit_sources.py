"""Where `fit` starts from, besides a 3DGS scene: a Scaffold-GS model, or photos.

- Scaffold-GS anchor PLY (+ its MLP checkpoint): the file already is an anchor model, so it becomes
  our AnchorModel directly (grid inferred from the anchor positions, features/offsets/scaling as
  saved, MLPs mapped onto ours). Its own renders are the teacher; no warm start.
- Photos with poses (NeRF / instant-ngp transforms.json): the targets are the photos. The model
  starts from a 3DGS scene when one is given (warm start as usual), else from anchors at random
  points in the box of the camera centres (see `random_anchor_model`).

`fit_inputs` turns the command line's choices into the keyword arguments of `hemgs.fit.fit`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .anchor.model import MASK_ON_LOGIT, AnchorConfig, AnchorModel
from .anchor.voxelize import MAX_COORD, choose_voxel_size, voxelize
from .cameras import Camera, load_cameras, split_views
from .errors import FormatError, InputError, SceneError
from .scene import GaussianScene

# ---- Scaffold-GS -------------------------------------------------------------------------------

# Anchor positions may sit this far (in voxels) off the inferred grid: float32 rounding of
# round(x / v) * v stays far below it, while positions not on a grid are off by up to 0.5.
GRID_TOLERANCE = 0.02


def infer_grid(xyz: np.ndarray, path="anchors") -> tuple[np.ndarray, np.ndarray, float]:
    """(coords (N,3) int64, origin (3,), voxel size) of anchors on a regular grid.

    Scaffold-GS puts anchors at integer multiples of its voxel size (voxel corners; grown anchors
    too, on grids 1, 4 and 16 voxels wide). The spacing is the smallest gap between distinct
    coordinate values on any axis (gaps below float32 noise ignored), refined by least squares
    over all anchors; the origin is placed half a voxel below the lowest anchor, so our voxel
    centres `origin + (coords + 0.5) * v` reproduce the positions. Raises InputError when the
    positions are not on one grid or need more than 16 bits per axis.
    """
    xyz = np.asarray(xyz, np.float64)
    if xyz.ndim != 2 or xyz.shape[1] != 3 or len(xyz) == 0:
        raise InputError(f"{path}: no anchor positions to place on a grid")
    if not np.isfinite(xyz).all():
        raise InputError(f"{path}: anchor positions hold NaN/Inf")
    lo = xyz.min(axis=0)
    rel = xyz - lo
    noise = 1e-6 * max(float(np.abs(xyz).max()), 1e-12)  # a few float32 ulps of the largest value
    gaps = []
    for a in range(3):
        u = np.unique(rel[:, a])
        d = np.diff(u)
        gaps.append(d[d > 8 * noise])
    gaps = np.concatenate(gaps)
    if len(gaps) == 0:  # a single anchor, or all in one point: any size works; keep it small
        v = 1.0
    else:
        v0 = float(gaps.min())
        n = np.round(rel / v0)
        v = float((n * rel).sum() / max(float((n * n).sum()), 1e-30))  # least-squares spacing
    coords = np.round(rel / v).astype(np.int64)
    off = np.abs(rel / v - coords).max() if len(gaps) else 0.0
    if off > GRID_TOLERANCE:
        raise InputError(f"{path}: anchor positions are not on a regular grid (up to {off:.2f} voxels "
                         f"off a grid of spacing {v:.4g}); is this a Scaffold-GS anchor PLY?")
    if int(coords.max()) > MAX_COORD:
        raise InputError(f"{path}: the anchor grid (spacing {v:.4g}) needs {int(coords.max()) + 1} cells per "
                         "axis, more than 16 bits")
    return coords, lo - 0.5 * v, v


_HEADS = {"opacity": 1, "cov": 7, "color": 3}  # outputs per offset slot


def _find_head(mlps: dict, head: str):
    for name in (f"{head}_mlp", f"mlp_{head}", head):
        if name in mlps:
            return name, mlps[name]
    return None, None


def scaffold_mlp_state(mlps: dict, feat_dim: int, k: int, path="checkpoint") -> tuple[dict, bool, int]:
    """Map Scaffold-GS MLP state dicts onto our `AnchorMLPs`: (state dict, use_dist, hidden width).

    Scaffold-GS's heads (checkpoint entries opacity_mlp, cov_mlp, color_mlp) are
    Linear-ReLU-Linear[-activation] like ours, so their `0.*`/`2.*` parameters carry over. They
    must all take (feature, view dir) or all (feature, view dir, distance); a feature bank or an
    appearance embedding (extra inputs we do not model) is refused.
    """
    unsupported = [n for n in mlps if "feature_bank" in n or "appearance" in n]
    if unsupported:
        raise FormatError(f"{path}: this model uses {', '.join(sorted(unsupported))}, which our anchor model "
                          "does not have (train Scaffold-GS without the feature bank / appearance embedding)")
    state, ins, hidden = {}, set(), set()
    for head, per_slot in _HEADS.items():
        name, sd = _find_head(mlps, head)
        if sd is None:
            raise FormatError(f"{path}: no {head}_mlp entry; found {', '.join(sorted(mlps)) or 'nothing'}")
        need = ("0.weight", "0.bias", "2.weight", "2.bias")
        if sorted(sd) != sorted(need):
            raise FormatError(f"{path}: {name} has parameters {sorted(sd)}, expected Linear-ReLU-Linear {list(need)}")
        w0, w2 = sd["0.weight"], sd["2.weight"]
        if w0.ndim != 2 or w2.ndim != 2 or w2.shape[1] != w0.shape[0]:
            raise FormatError(f"{path}: {name} layer shapes {tuple(w0.shape)}, {tuple(w2.shape)} do not chain")
        if w2.shape[0] != per_slot * k:
            raise FormatError(f"{path}: {name} gives {w2.shape[0]} outputs, expected {per_slot} x {k} offsets "
                              "(does the checkpoint belong to this PLY?)")
        if w0.shape[1] not in (feat_dim + 3, feat_dim + 4):
            raise FormatError(f"{path}: {name} takes {w0.shape[1]} inputs, expected {feat_dim}+3 (feature, view "
                              f"direction) or {feat_dim}+4 (with distance)")
        ins.add(int(w0.shape[1]))
        hidden.add(int(w0.shape[0]))
        for p in need:
            state[f"{head}.{p}"] = sd[p].detach().to(torch.float32)
    if len(ins) != 1 or len(hidden) != 1:
        raise FormatError(f"{path}: the three MLPs differ in input size {sorted(ins)} or width {sorted(hidden)}; "
                          "our model feeds the view distance to all heads or to none")
    return state, ins.pop() == feat_dim + 4, hidden.pop()


def anchor_model_from_scaffold(anchors, mlps: dict | None = None, path="anchors") -> AnchorModel:
    """An AnchorModel holding a Scaffold-GS model's anchors (and MLPs when given; else fresh ones).

    All offset masks are on: Scaffold-GS has none (HAC's are not in the PLY).
    """
    coords, origin, v = infer_grid(anchors.xyz, path)
    feat_dim, k = anchors.feat_dim, anchors.n_offsets
    use_dist, hidden, state = True, None, None
    if mlps is not None:
        state, use_dist, h = scaffold_mlp_state(mlps, feat_dim, k, path)
        hidden = None if h == feat_dim else h
    cfg = AnchorConfig(feat_dim=feat_dim, k=k, hidden=hidden, use_dist=use_dist, voxel_size=v)
    model = AnchorModel(cfg, coords, origin, seed=0)
    for name in ("features", "offsets", "scaling"):
        if not np.isfinite(getattr(anchors, name)).all():
            raise InputError(f"{path}: anchor {name} hold NaN/Inf")
    with torch.no_grad():
        model.features.copy_(torch.from_numpy(anchors.features))
        model.offsets.copy_(torch.from_numpy(anchors.offsets))
        model.scaling.copy_(torch.from_numpy(anchors.scaling))
        model.mask_logits.fill_(MASK_ON_LOGIT)
    if state is not None:
        model.load_mlp_state(state)
    return model


def load_scaffold_source(path, mlp_path=None, *, require_mlps: bool = True) -> AnchorModel:
    """Read a Scaffold-GS anchor PLY (+ checkpoint) into an AnchorModel.

    Without the MLPs the model cannot be rendered, so it cannot be its own teacher: refused unless
    `require_mlps` is False (photos are the targets then, and the MLPs start fresh).
    """
    from .io.scaffold import read_scaffold

    if mlp_path is None and require_mlps:
        raise InputError(f"{path}: a Scaffold-GS PLY needs its MLPs to be rendered: pass --mlps checkpoints.pth "
                         "(or train against photos with --images)")
    anchors = read_scaffold(path, mlp_path)
    return anchor_model_from_scaffold(anchors, anchors.mlps, path)


def scaffold_mlp_dicts(model: AnchorModel) -> dict:
    """Our MLPs in Scaffold-GS's checkpoint layout ({opacity_mlp: {0.weight: ...}, ...})."""
    out = {f"{h}_mlp": {} for h in _HEADS}
    for name, t in model.mlp_state().items():
        head, param = name.split(".", 1)
        out[f"{head}_mlp"][param] = t
    return out


def scaffold_anchors_of(model: AnchorModel):
    """A model's anchors as ScaffoldAnchors (for writing a Scaffold-GS PLY; masks are dropped)."""
    from .io.scaffold import ScaffoldAnchors

    with torch.no_grad():
        return ScaffoldAnchors(xyz=model.anchors.cpu().numpy(), features=model.features.cpu().numpy(),
                               offsets=model.offsets.cpu().numpy(), scaling=model.scaling.cpu().numpy(),
                               mlps=scaffold_mlp_dicts(model))


# ---- photos ----------------------------------------------------------------------------------

def photo_cameras(images, downscale: float = 1.0) -> list[Camera]:
    """Cameras (each with its photo) of a transforms.json, or of a folder holding one.

    COLMAP reconstructions (sparse/0/cameras.bin, cameras.txt) are recognised and refused:
    not supported yet.
    """
    p = Path(images)
    if p.is_dir():
        if (p / "transforms.json").is_file():
            p = p / "transforms.json"
        elif any((p / sub).exists() for sub in ("sparse", "cameras.txt", "cameras.bin")):
            raise InputError(f"{images}: COLMAP reconstructions are not supported yet; give a transforms.json "
                             "(e.g. made with instant-ngp's colmap2nerf.py)")
        else:
            raise InputError(f"{images}: no transforms.json in this folder")
    elif not p.is_file():
        raise InputError(f"{images}: no such file or folder")
    if p.suffix.lower() != ".json":
        raise InputError(f"{images}: expected a transforms.json or a folder holding one")
    cams = load_cameras(p, downscale)
    missing = [c for c in cams if not c.image_path]
    if missing:
        raise InputError(f"{p}: camera {missing[0].name!r} has no photo (an Inria cameras.json names none); "
                         "use a transforms.json")
    if len(cams) < 2:
        raise InputError(f"{p}: need at least 2 photos to train and hold one out, found {len(cams)}")
    return cams


def load_photo(cam: Camera, background=(0.0, 0.0, 0.0)) -> np.ndarray:
    """The camera's photo as (H,W,3) float32 in [0,1], resized to the camera's size.

    Values stay as stored (sRGB, like the renders they are compared with); an alpha channel is
    composited over `background`, the renderer's background.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(cam.image_path) as im:
            im = im.convert("RGBA")
            if im.size != (cam.width, cam.height):
                im = im.resize((cam.width, cam.height), Image.Resampling.LANCZOS, reducing_gap=3.0)
            rgba = np.asarray(im, np.float32) / 255.0
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise InputError(f"{cam.image_path}: unreadable image ({type(exc).__name__}: {exc})") from None
    alpha = rgba[..., 3:4]
    return np.ascontiguousarray(rgba[..., :3] * alpha + np.asarray(background, np.float32) * (1.0 - alpha))


POINTS_PER_ANCHOR = 8


def random_anchor_model(cams: list[Camera], *, anchors: int = 4000, points: int = 40000, seed: int = 0,
                        config: AnchorConfig | None = None) -> AnchorModel:
    """A fresh anchor model from random points in the box of the camera centres.

    Scaffold-GS starts synthetic scenes (no SfM points) from random points; we keep the points
    that at least half of the cameras see (the photographed object is where the views overlap,
    so this drops the empty corners of the box) and voxelize them to about `anchors` anchors.
    Features and offsets start at zero, as in Scaffold-GS.
    """
    centres = np.stack([c.center for c in cams])
    lo, hi = centres.min(axis=0), centres.max(axis=0)
    if not (hi - lo).max() > 0:
        raise SceneError("the cameras all sit at one point: no box to place anchors in")
    rng = np.random.default_rng(seed)
    need = max(1, len(cams) // 2)
    # Enough kept points that nearly every voxel of the final grid holds several: the voxel size
    # is then set by the points' extent, not by gaps between too few samples.
    kept: list[np.ndarray] = []
    total = 0
    for _ in range(64):
        pts = lo + rng.random((points, 3)) * (hi - lo)
        seen = np.zeros(points, np.int32)
        for c in cams:
            uv, z = c.project(pts)
            seen += (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < c.width) & (uv[:, 1] >= 0) & (uv[:, 1] < c.height)
        kept.append(pts[seen >= need])
        total += len(kept[-1])
        if total >= POINTS_PER_ANCHOR * anchors:
            break
    keep = np.concatenate(kept)
    if len(keep) < 8:
        raise SceneError("fewer than 8 random points are seen by half of the cameras; do the cameras look at "
                         "a common scene?")
    anchors = min(anchors, max(1, len(keep) // POINTS_PER_ANCHOR))
    cfg = AnchorConfig(**(config.to_dict() if config else {}))
    cfg.voxel_size = choose_voxel_size(keep, max(1.0, len(keep) / anchors))
    coords, origin, _ = voxelize(keep, cfg.voxel_size)
    return AnchorModel(cfg, coords, origin, seed=seed)


# ---- everything fit needs ---------------------------------------------------------------------

@dataclass
class FitInputs:
    """Keyword arguments for `hemgs.fit.fit`, plus what the model file records about the source."""

    scene: GaussianScene | None = None
    source_path: str | None = None
    views: tuple | None = None
    targets: tuple | None = None
    init_model: AnchorModel | None = None
    describe: dict = field(default_factory=dict)

    def fit_kwargs(self) -> dict:
        return {"scene": self.scene, "source_path": self.source_path, "views": self.views,
                "targets": self.targets, "init_model": self.init_model}


def fit_inputs(source=None, *, images=None, mlps=None, downscale: float = 1.0, cfg=None,
               random_anchors: int = 4000) -> FitInputs:
    """What to fit from what the user gave.

    source: a 3DGS PLY/SPZ, a Scaffold-GS anchor PLY (with `mlps`), or None (only with `images`).
    images: transforms.json (or its folder): train against these photos at the cameras' size
    divided by `downscale`; every 8th photo is held out for evaluation.
    cfg: the FitConfig (its seed, and its views/width for a Scaffold-GS model's sampled views).
    """
    from .fit import FitConfig

    from .io import detect_format, load_scene
    from .scene import sanitize

    cfg = cfg or FitConfig()
    if source is None and images is None:
        raise InputError("give a source scene, or photos with --images")
    if downscale is None or not (math.isfinite(downscale) and downscale >= 1.0):
        raise InputError(f"--downscale must be a number >= 1, got {downscale}")
    if mlps is not None and (source is None or detect_format(source) != "scaffold_ply"):
        raise InputError(f"{mlps}: --mlps goes with a Scaffold-GS anchor PLY as the source")
    out = FitInputs(source_path=None if source is None else str(source))
    if source is not None:
        out.describe.update(source=os.path.basename(str(source)), source_bytes=os.path.getsize(source))
        if detect_format(source) == "scaffold_ply":
            out.init_model = load_scaffold_source(source, mlps, require_mlps=images is None)
            out.describe["source_format"] = "scaffold_ply"
            if images is None:
                cams = _scaffold_views(source, out.init_model, cfg.views, cfg.width)
                out.views = split_views(cams)
        else:
            out.scene, _ = sanitize(load_scene(source))
    if images is not None:
        cams = photo_cameras(images, downscale)
        train, test = split_views(cams)
        out.views = (train, test)
        out.targets = ([load_photo(c) for c in train], [load_photo(c) for c in test])
        out.describe.update(images=os.path.basename(str(images)), photos=len(cams),
                            image_size=[cams[0].width, cams[0].height])
        if out.scene is None and out.init_model is None:
            out.init_model = random_anchor_model(train, anchors=random_anchors, seed=cfg.seed)
            out.describe["init"] = "random points in the cameras' box"
    return out


def _scaffold_views(source, model: AnchorModel, n: int = 32, width: int = 256) -> list[Camera]:
    """The training cameras of a Scaffold-GS model: its cameras.json (beside the PLY, or at the top
    of Scaffold-GS's output folder, point_cloud/iteration_N/ up), else views sampled around it."""
    from .cameras import sample_views

    here = Path(source).resolve().parent
    for folder in (here, here.parent.parent):
        f = folder / "cameras.json"
        if f.is_file():
            cams = load_cameras(f)
            if len(cams) > n:
                cams = [cams[i] for i in np.linspace(0, len(cams) - 1, n).round().astype(int)]
            return [c.resized(width) for c in cams]

    class _Points:  # sample_views reads only positions and sizes; an anchor spans about a voxel
        means = model.anchors.detach().cpu().numpy()
        log_scales = np.full((len(means), 3), math.log(model.voxel_size))

    return sample_views(_Points, n=n, width=width, height=width)
