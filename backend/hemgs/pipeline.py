"""The user-level operations, shared by the CLI, the worker and the Blender add-on.

Anchor mode: train: source scene -> trained model file; compress: model -> .hgs.
Direct (anchor-free) mode: compress_direct: source scene -> fitted entropy model -> .hgs, in one go.
Both: decode_file (by the header's mode), decompress: .hgs -> PLY/SPZ; render_views: renders of
anything we read (an anchor .hgs through its decoded anchor model, a direct .hgs through its
decoded Gaussians) for evaluation. The modes and their λ ranges: hemgs.modes.
"""

from __future__ import annotations

import math
import os
import time
from typing import Callable

import numpy as np

from .cameras import Camera
from .codec import registry
from .container import read_hgs, write_hgs
from .errors import FormatError, InputError
from .fit import FitConfig, Fitted, Progress, fit
from .io import detect_format, formats, load_scene, save_scene
from .model_store import load_model, save_model
from .modes import DIRECT_LAMBDA_DEFAULT, DIRECT_LAMBDA_RANGE, MODES, check_direct_lambda, check_direct_source  # noqa: F401
from .progress import step_stage
from .scene import GaussianScene, sanitize


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
    save_model(out_model, fitted.model, fitted.entropy, lam=recorded_lambda(cfg),
               extra={**inputs.describe, "fit": fit_info})
    return fitted


def recorded_lambda(cfg: FitConfig) -> float:
    """The λ a trained model file records as its own (its default): cfg.lam when the trained range
    holds it, else the range's lowest."""
    lo, hi = cfg.lambda_range
    return cfg.lam if lo <= cfg.lam <= hi else lo


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


def compress_model(model, entropy, out_hgs, *, lam: float, header_extra: dict | None = None,
                   progress: Progress | None = None) -> dict:
    """Code a trained anchor model at `lam` and write `out_hgs`; `progress(stage, step, total, info)`
    hears the encoding as one step of stage "encode"."""
    codec = registry.for_entropy(entropy)
    t0 = time.perf_counter()
    with step_stage(progress, "encode"):
        header, sections, decoded = codec.load().encode(model, entropy, lam=lam, header_extra=header_extra)
    write_hgs(out_hgs, header, sections)
    return {"path": str(out_hgs), "bytes": os.path.getsize(out_hgs), "seconds": time.perf_counter() - t0,
            "sections": {k: len(v) for k, v in sections.items()}, "anchors": header["anchors"],
            "decoded": decoded}


def compress(model_path, out_hgs, *, lam: float | None = None, progress: Progress | None = None) -> dict:
    model, entropy, meta = load_model(model_path)
    lam = check_lambda(float(meta["lambda"]), lam, tuple(meta.get("lambda_range") or ()) or None)
    extra = {k: meta[k] for k in ("source", "source_bytes") if k in meta}
    report = compress_model(model, entropy, out_hgs, lam=lam, header_extra=extra, progress=progress)
    report["source_bytes"] = meta.get("source_bytes")
    return report


def compress_direct(source, out_hgs, *, lam: float = DIRECT_LAMBDA_DEFAULT, cfg=None, fcfg=None,
                    progress=None, header_extra: dict | None = None, stages: Progress | None = None,
                    cameras: list | None = None) -> dict:
    """Anchor-free mode in one go: load and sanitize `source` (a 3DGS PLY/SPZ path, or a sanitized
    GaussianScene), fit the direct entropy model (hemgs.direct.fit_direct; progress(done, total) per
    iteration), code it at `lam` (hemgs.modes.DIRECT_LAMBDA_RANGE) and write `out_hgs` atomically.
    `stages(stage, step, total, info)` hears every stage: the fit's "importance" and "fit", the
    encoder's "balance" and "code" (hemgs.progress). `cameras`: code for these views only (the
    scene's own, hemgs.cameras.own_cameras) instead of the whole sphere.

    Returns compress_model's report keys where they mean something here: path, bytes, seconds
    (encode + write), sections, gaussians, decoded (a hemgs.direct.DecodedDirect: `.scene`),
    source_bytes (None for a scene given in memory); plus mode, lambda, voxels, fit_seconds,
    warnings (sanitize's repairs) and fitted (the DirectFitted, to code other λ without refitting).
    """
    from .direct import DirectConfig, fit_direct

    lam = check_direct_lambda(lam)
    warnings: list[str] = []
    source_bytes = None
    extra: dict = {}
    if isinstance(source, GaussianScene):
        scene = source
    else:
        check_direct_source(source)
        scene, warnings = load_source(source)
        source_bytes = os.path.getsize(source)
        extra = {"source": os.path.basename(str(source)), "source_bytes": source_bytes}
    t0 = time.perf_counter()
    fitted = fit_direct(scene, cfg=cfg or DirectConfig(), fcfg=fcfg, progress=progress, stages=stages, cameras=cameras)
    fit_seconds = time.perf_counter() - t0
    del scene, source  # the fit holds what the coding needs: a scene loaded here is freed (236 B a Gaussian)
    report = encode_direct(fitted, out_hgs, lam=lam, header_extra={**extra, **(header_extra or {})}, progress=stages)
    report.update(source_bytes=source_bytes, fit_seconds=fit_seconds, warnings=warnings, fitted=fitted)
    return report


def encode_direct(fitted, out_hgs, *, lam: float, header_extra: dict | None = None,
                  progress: Progress | None = None) -> dict:
    """Code an already fitted direct model (hemgs.direct.DirectFitted) at `lam` and write `out_hgs`;
    `progress(stage, step, total, info)` hears the stage balance's renders and the coding."""
    from .direct import encode

    lam = check_direct_lambda(lam)
    t0 = time.perf_counter()
    header, sections, decoded = encode(fitted, lam=lam, header_extra=header_extra, progress=progress)
    write_hgs(out_hgs, header, sections)
    return {"path": str(out_hgs), "bytes": os.path.getsize(out_hgs), "seconds": time.perf_counter() - t0,
            "sections": {k: len(v) for k, v in sections.items()}, "mode": "direct", "lambda": lam,
            "gaussians": int(header["gaussians"]), "voxels": int(header["voxels"]), "decoded": decoded,
            "source_bytes": (header_extra or {}).get("source_bytes")}


def decode_file(path, progress: Progress | None = None) -> registry.Decoded:
    """Decode a .hgs file with the codec its header names (hemgs.codec.registry): `.header`,
    `.gaussians()`, `.renderer()`; an anchor file's decoded anchor model is `.model`, a direct
    file's Gaussians `.scene`. `progress(stage, step, total, info)` hears stage "decode" (a direct
    file per coded stage, an anchor file as one step)."""
    hgs = read_hgs(path)
    try:
        header = registry.current_header(hgs.header)  # an unknown codec or format: say which file
    except FormatError as exc:
        raise FormatError(f"{path}: {exc}") from None
    return registry.decode(header, hgs.sections, progress=progress)


def check_decompress(out_path, sh_degree: int | None) -> None:
    """decompress's arguments, before any decoding: the output's format (by extension) and the SH degree."""
    written = formats.writable()  # the registry's writers (hemgs.io.formats)
    if os.path.splitext(str(out_path))[1].lower() not in formats.extensions(written):
        raise InputError(f"{out_path}: decompress writes {formats.extension_list(written)} "
                         "(the extension picks the format)")
    if sh_degree is not None and (isinstance(sh_degree, bool) or not isinstance(sh_degree, int)
                                  or not 0 <= sh_degree <= 3):
        raise InputError(f"SH degree must be 0..3, got {sh_degree}")


def decompress(hgs_path, out_path, *, sh_degree: int | None = None, progress: Progress | None = None) -> GaussianScene:
    """Decode `hgs_path` and save its Gaussians (Decoded.gaussians: an anchor file baked at SH degree
    `sh_degree`, default 1; a direct file as coded, `sh_degree` only truncating) to `out_path`.
    `progress(stage, step, total, info)` hears "decode", "bake" and "write"; the scene's meta holds
    the file's `mode` and `anchors` (None for a direct file)."""
    check_decompress(out_path, sh_degree)
    decoded = decode_file(hgs_path, progress)
    with step_stage(progress, "bake"):
        scene = decoded.gaussians(sh_degree)
    scene.meta.update(mode=decoded.header.get("mode"), anchors=decoded.header.get("anchors"))
    with step_stage(progress, "write"):
        save_scene(scene, out_path)
    return scene


def renderer(path, device=None, progress: Progress | None = None) -> Callable[[Camera], np.ndarray]:
    """A function camera -> image for any file we read: scenes directly, an anchor .hgs through its
    decoded anchor model (view-dependent, as the codec means it to be seen), a direct .hgs through
    its decoded Gaussians (`progress`: decode_file's)."""
    from .render import render

    if detect_format(path) == "hgs":
        return decode_file(path, progress).renderer(device)
    scene, _ = load_source(path)
    return lambda cam: render(scene, cam, device=device or "auto")


def scene_and_renderer(path, device=None,
                       progress: Progress | None = None) -> tuple[GaussianScene, Callable[[Camera], np.ndarray]]:
    """`renderer(path)` with a Gaussian scene standing for the file where views are framed
    (hemgs.cameras.scene_views): the scene itself, a direct .hgs's decoded Gaussians, an anchor
    .hgs's baked model. A .hgs is decoded once (`progress`: decode_file's)."""
    from .render import render

    if detect_format(path) == "hgs":
        decoded = decode_file(path, progress)
        return decoded.gaussians(), decoded.renderer(device)
    scene, _ = load_source(path)
    return scene, lambda cam: render(scene, cam, device=device or "auto")


def render_views(path, views: list[Camera], device=None, progress=None,
                 stages: Progress | None = None) -> list[np.ndarray]:
    """Renders of any file we read (see `renderer`), one per camera of `views`; progress(done, total)
    per view, `stages` the decoding of a .hgs (decode_file's `progress`)."""
    draw = renderer(path, device, stages)
    out = []
    for i, cam in enumerate(views):
        out.append(draw(cam))
        if progress:
            progress(i + 1, len(views))
    return out
