"""The user-level operations, shared by the CLI, the worker and the Blender add-on.

train: source scene -> trained model file; compress: model -> .hgs; decompress: .hgs -> PLY/SPZ;
render_views: renders of anything we read (a .hgs through its decoded anchor model) for evaluation.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np

from .cameras import Camera
from .container import read_hgs, write_hgs
from .errors import FormatError, InputError
from .fit import FitConfig, Fitted, Progress, fit, render_views_anchor
from .io import detect_format, load_scene, save_scene
from .model_store import load_model, save_model
from .scene import GaussianScene, sanitize

# Baked exports (PLY/SPZ from .hgs): SH degree 1 keeps most of the view dependence for 4x9 floats.
BAKE_SH_DEGREE = 1


def load_source(path) -> tuple[GaussianScene, list[str]]:
    scene = load_scene(path)
    return sanitize(scene)


def train(source, out_model, cfg: FitConfig | None = None, progress: Progress | None = None,
          device=None, *, images=None, mlps=None, downscale: float = 1.0) -> Fitted:
    """Fit a model and save it to `out_model`.

    source: a 3DGS PLY/SPZ (teacher renders + warm start), a Scaffold-GS anchor PLY with its MLP
    checkpoint `mlps` (its own renders are the teacher; no warm start), or None with `images`.
    images: a transforms.json (or its folder): train against those photos instead (downscaled by
    `downscale`), starting from `source` when given, else from random anchors (hemgs.fit_sources).
    """
    from .fit_sources import fit_inputs

    cfg = cfg or FitConfig()
    cfg.validate()
    inputs = fit_inputs(source, images=images, mlps=mlps, downscale=downscale, cfg=cfg)
    fitted = fit(cfg=cfg, progress=progress, device=device, **inputs.fit_kwargs())
    fit_info = {k: v for k, v in fitted.history.items() if k.endswith("seconds") or k in ("anchors", "heldout_psnr")}
    save_model(out_model, fitted.model, fitted.entropy, lam=cfg.lam if cfg.lambda_range[0] <= cfg.lam <= cfg.lambda_range[1]
               else cfg.lambda_range[0],
               extra={**inputs.describe, "fit": fit_info})
    return fitted


# A variable-rate model also serves λ a little beyond the range it was trained on.
LAMBDA_MARGIN = 2.0


def check_lambda(trained: float, asked: float | None, lambda_range: tuple[float, float] | None = None) -> float:
    """The λ to code with. A fixed-rate model (range of one value) codes at the λ it was trained
    for; a variable-rate model at any λ within its trained range, widened by LAMBDA_MARGIN."""
    lo, hi = lambda_range or (trained, trained)
    if asked is None:
        return trained
    if isinstance(asked, bool) or not (isinstance(asked, (int, float)) and math.isfinite(asked) and asked > 0):
        raise InputError(f"λ must be a positive number, got {asked}")
    if lo == hi:
        if abs(asked - trained) > 1e-6 * max(trained, 1e-12):
            raise InputError(f"this model is fixed-rate, trained at λ={trained:g}; "
                             f"λ={asked:g} needs another model (hemgs train --lambda {asked:g})")
        return trained
    if not lo / LAMBDA_MARGIN <= asked <= hi * LAMBDA_MARGIN:
        raise InputError(f"λ={asked:g} is outside what this model serves ({lo / LAMBDA_MARGIN:g} to "
                         f"{hi * LAMBDA_MARGIN:g}; trained on {lo:g} to {hi:g})")
    return float(asked)


def compress_model(model, entropy, out_hgs, *, lam: float, header_extra: dict | None = None) -> dict:
    from .entropy.hemgs import HemgsEntropyModel

    t0 = time.perf_counter()
    if isinstance(entropy, HemgsEntropyModel):
        from .codec.hemgs_codec import encode as encode_hemgs
        from .fit import scene_agnostic_prior

        sa = scene_agnostic_prior() if entropy.cfg.scene_agnostic else None
        header, sections, decoded = encode_hemgs(model, entropy, sa, lam=lam, header_extra=header_extra)
    else:
        from .codec.anchor import encode

        header, sections, decoded = encode(model, entropy, lam=lam, header_extra=header_extra)
    write_hgs(out_hgs, header, sections)
    return {"path": str(out_hgs), "bytes": os.path.getsize(out_hgs), "seconds": time.perf_counter() - t0,
            "sections": {k: len(v) for k, v in sections.items()}, "anchors": header["anchors"],
            "decoded": decoded}


def compress(model_path, out_hgs, *, lam: float | None = None) -> dict:
    model, entropy, meta = load_model(model_path)
    lam = check_lambda(float(meta["lambda"]), lam, tuple(meta.get("lambda_range") or ()) or None)
    extra = {k: meta[k] for k in ("source", "source_bytes") if k in meta}
    report = compress_model(model, entropy, out_hgs, lam=lam, header_extra=extra)
    report["source_bytes"] = meta.get("source_bytes")
    return report


def decode_file(path):
    hgs = read_hgs(path)
    mode, codec = hgs.header.get("mode"), hgs.header.get("codec")
    if mode != "anchor":
        raise FormatError(f"{path}: unknown coding mode {mode!r}"[:200])
    if codec == "hemgs":
        from .codec.hemgs_codec import decode
    elif codec == "hac":
        from .codec.anchor import decode
    else:
        raise FormatError(f"{path}: unknown codec {codec!r}"[:200])
    return decode(hgs.header, hgs.sections)


def decompress(hgs_path, out_path, *, sh_degree: int = BAKE_SH_DEGREE) -> GaussianScene:
    from .anchor.bake import bake

    if os.path.splitext(str(out_path))[1].lower() not in (".ply", ".spz"):
        raise InputError(f"{out_path}: decompress writes .ply or .spz (the extension picks the format)")
    decoded = decode_file(hgs_path)
    scene = bake(decoded.model, mode="sh_fit", sh_degree=sh_degree)
    save_scene(scene, out_path)
    return scene


def render_views(path, views: list[Camera], device=None, progress=None) -> list[np.ndarray]:
    """Renders of any file we read: scenes directly, .hgs through its decoded anchor model
    (view-dependent, as the codec means it to be seen)."""
    from .render import render

    if detect_format(path) == "hgs":
        model = decode_file(path).model
        if device is not None:
            model = model.to(device)
        out = []
        for i, cam in enumerate(views):
            out.extend(render_views_anchor(model, [cam]))
            if progress:
                progress(i + 1, len(views))
        return out
    scene, _ = load_source(path)
    out = []
    for i, cam in enumerate(views):
        out.append(render(scene, cam, device=device or "auto"))
        if progress:
            progress(i + 1, len(views))
    return out
