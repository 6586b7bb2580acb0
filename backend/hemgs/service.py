"""The jobs the front ends share: the `hemgs` command (hemgs.cli: parses and prints), the worker
(hemgs.worker: maps JSON onto these calls) and, through the worker, the Blender add-on.

One function a job: read a scene, summarise a file, pick the views, measure one file against
another, code a trained model or a scene (direct mode) and measure and preview what was written.
A front end words its own arguments (flags or JSON keys), so the checks here take the name to blame.

Importing this module imports no torch (every heavy import is inside the function that needs it):
`file_info` serves Blender's own Python too.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .errors import InputError
from .modes import DIRECT_SWITCH_DEFAULTS

Warn = Callable[[str], None]
# The worker's progress shape: progress(stage, done=None, total=None, message=None, fraction=None)
Events = Callable[..., None]

ITERS_MAX = 100000  # direct mode's fitting iterations, at most
# Training budget presets (the worker's `preset`); explicit steps/warm_steps/width/views override them.
TRAIN_PRESETS = {
    "quick": {"steps": 100, "warm_steps": 150, "width": 128, "views": 16},  # minutes on a CPU
    "standard": {"steps": 200, "warm_steps": None, "width": 256, "views": 32},  # = hemgs train's defaults
}


def _warn_stderr(message: str) -> None:
    print(f"hemgs: warning: {message}", file=sys.stderr)


def _event_gate() -> Callable[[int, int], bool]:
    """Whether a progress event is due: at most ~10 a second, but always a stage's last step."""
    last = {"t": 0.0}

    def due(done: int, total: int) -> bool:
        now = time.monotonic()
        if done < total and now - last["t"] < 0.1:
            return False
        last["t"] = now
        return True

    return due


def backend_versions() -> dict:
    """What the add-on's "Check backend" shows: hemgs, Python, torch, CUDA and gsplat versions (torch
    and gsplat None where missing)."""
    out: dict[str, Any] = {"hemgs": __version__, "python": sys.version.split()[0], "executable": sys.executable}
    try:
        import torch

        out["torch"] = torch.__version__
        out["cuda"] = torch.version.cuda if torch.cuda.is_available() else None
        out["cuda_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        out["torch"] = None
        out["cuda"] = None
    try:
        from importlib.metadata import version

        out["gsplat"] = version("gsplat")
    except Exception:  # noqa: BLE001 - any failure means "not installed" here
        out["gsplat"] = None
    return out


# ---- files --------------------------------------------------------------------------------------
def load_scene_checked(path: str, warn: Warn | None = _warn_stderr):
    """A PLY/SPZ read and sanitized; each repair is reported as `warn("PATH: what")`."""
    from .io import load_scene
    from .scene import sanitize

    scene, warnings = sanitize(load_scene(path))
    for w in warnings:
        if warn is not None:
            warn(f"{path}: {w}")
    return scene


def file_info(path: str, warn: Warn | None = _warn_stderr) -> dict:
    """The summary of a PLY, SPZ, Scaffold-GS PLY or .hgs (`hemgs info --json`, the worker's `info`)."""
    from .io import detect_format

    fmt = detect_format(path)
    size = os.path.getsize(path)
    if fmt == "hgs":
        from .container import read_hgs

        hgs = read_hgs(path)
        h = hgs.header
        out = {"file": path, "format": "hgs", "bytes": size, "version": list(hgs.version),
               "mode": h.get("mode"), "codec": h.get("codec"), "lambda": h.get("lambda")}
        # The counts the header states (direct: Gaussians and SH degree; anchor: anchors).
        for key in ("gaussians", "sh_degree", "voxels", "anchors", "importance_views", "source", "source_bytes"):
            if key in h:
                out[key] = h[key]
        out.update(header=h, sections={k: len(v) for k, v in hgs.sections.items()})
        return out
    if fmt == "scaffold_ply":
        from .io.scaffold import read_scaffold

        anchors = read_scaffold(path)
        return {"file": path, "format": "scaffold_ply", "bytes": size, "anchors": len(anchors.xyz),
                "feature_dim": int(anchors.features.shape[1]), "offsets_per_anchor": int(anchors.offsets.shape[1])}
    scene = load_scene_checked(path, warn)
    return {"file": path, "format": fmt, "bytes": size, **scene.summary()}


def check_outputs(*paths: str | None, make_folders: bool = False) -> None:
    """Refuse an output that cannot be written (missing folder, a folder...) before any long work;
    `make_folders`: create each one's folder first (render makes the folders of its PNG)."""
    from .io.atomic import check_output_path

    for path in paths:
        if path is None:
            continue
        if make_folders and str(Path(path).parent):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        check_output_path(path)


def save_png(image, path: str) -> None:
    """An image in [0, 1] as an 8-bit PNG, written atomically (its folder made)."""
    import numpy as np
    from PIL import Image

    from .io.atomic import atomic_write

    out = Path(path)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    pixels = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    with atomic_write(out) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")


# ---- views and measurements -----------------------------------------------------------------------
@dataclass
class ViewSpec:
    """Which views to render: a cameras file, else `n` views of `width` x `height` (None: square)."""

    n: int = 16
    width: int = 256
    height: int | None = None
    cameras: str | None = None

    def views(self, scene, source_path: str | None = None, *, evaluation: bool = False) -> list:
        """The cameras file's views, else the scene's own or sampled views (render), or with
        `evaluation` the whole-sphere views no encoder uses (what an orbiting artist sees)."""
        from .cameras import evaluation_views, load_cameras, scene_views

        height = self.height or self.width
        if self.cameras:
            cams = load_cameras(self.cameras)
            if not cams:
                raise InputError(f"{self.cameras} holds no usable camera")
            return cams
        if evaluation:
            return evaluation_views(scene, n=self.n, width=self.width, height=height)
        return scene_views(scene, source_path, n=self.n, width=self.width, height=height)


def scene_and_draw(path: str, device, warn: Warn | None = _warn_stderr, progress=None):
    """(a scene to frame views on, camera -> image) for any file we read: a scene (sanitized) or a
    .hgs decoded in either mode (`progress`: the decoder's stage callback)."""
    from .io import detect_format

    if detect_format(path) == "hgs":
        from .pipeline import scene_and_renderer

        return scene_and_renderer(path, device, progress=progress)
    from .render import render

    scene = load_scene_checked(path, warn)
    return scene, lambda cam: render(scene, cam, device=device)


def draw_file(path: str, device, warn: Warn | None = _warn_stderr) -> Callable:
    """camera -> image for a scene file (sanitized) or a .hgs (decoded, not baked: any mode)."""
    from .io import detect_format

    if detect_format(path) == "hgs":
        from .device import resolve_device
        from .pipeline import renderer

        return renderer(path, resolve_device(device))
    from .render import render

    scene = load_scene_checked(path, warn)
    return lambda cam: render(scene, cam, device=device)


def compare_to_source(source: str, make_draw: Callable[[], Callable], spec: ViewSpec, device, progress: Events,
                      start: float | None = None) -> dict:
    """hemgs.metrics.compare_images of the renders of `make_draw()` (called once the source is
    read) against the source's over `spec`'s evaluation views, plus their width and height; a
    "rendering" event per view, with `start` also the job's fraction from `start` to 0.9."""
    from .metrics import compare_images
    from .render import render

    scene = load_scene_checked(source, lambda m: progress("warning", message=m))
    draw = make_draw()
    cams = spec.views(scene, source, evaluation=True)[:spec.n]
    refs, tests = [], []
    for i, cam in enumerate(cams):
        fraction = None if start is None else start + (0.9 - start) * i / len(cams)
        progress("rendering", done=2 * i, total=2 * len(cams), message=f"view {i + 1} of {len(cams)}",
                 fraction=fraction)
        refs.append(render(scene, cam, device=device))
        tests.append(draw(cam))
    progress("rendering", done=2 * len(cams), total=2 * len(cams), fraction=None if start is None else 0.9)
    res = compare_images(refs, tests)
    res.update(width=cams[0].width, height=cams[0].height)
    return res


def evaluate(source: str, other: str, cams, device, progress=None, refs: list | None = None) -> dict:
    """PSNR/SSIM of OTHER's renders (a scene, or a .hgs decoded) against SOURCE's, same views.
    `progress(stage, step, total, info)` hears "eval_source" and "eval_other" per view and
    "decode", in that order: the source's renders first (default: a hemgs.progress.Reporter on
    stderr). `refs`: the source's renders of `cams`, when already made (several files measured
    against one source)."""
    from .metrics import compare_images
    from .pipeline import render_views
    from .progress import Reporter

    with Reporter() if progress is None else contextlib.nullcontext(progress) as report:
        if refs is None:
            refs = render_views(source, cams, device, lambda i, n: report("eval_source", i, n, {}), stages=report)
        tests = render_views(other, cams, device, lambda i, n: report("eval_other", i, n, {}), stages=report)
    res = compare_images(refs, tests)
    res.update(source=source, other=other, source_bytes=os.path.getsize(source), other_bytes=os.path.getsize(other))
    return res


def measure(out: dict, source: str | None, draw: Callable, spec: ViewSpec, device, progress: Events,
            start: float) -> None:
    """Into `out` (a coding report with "bytes"), with `source`: its size, the ratio and PSNR/SSIM
    of `draw`'s renders (the decoded file) against the source's over `spec.n` evaluation views
    (0: none); progress events from fraction `start` to 0.9."""
    if source is None:
        return
    out["source"], out["source_bytes"] = source, os.path.getsize(source)
    out["ratio"] = out["source_bytes"] / max(out["bytes"], 1)
    if spec.n <= 0:
        return
    res = compare_to_source(source, lambda: draw, spec, device, progress, start)
    out.update({k: res[k] for k in ("psnr", "psnr_of_mean_mse", "worst_psnr", "ssim", "psnr_per_view",
                                    "ssim_per_view", "views", "width", "height") if k in res})


def preview(out: dict, preview_out: str | None, scene_fn: Callable, progress: Events, gaussians: bool = True) -> None:
    """With `preview_out`: the preview .npz (hemgs.preview) of the decoded scene `scene_fn()` gives,
    with the Gaussians' shape and SH when `gaussians` (hemgs.preview.save_preview)."""
    from .preview import preview_from_scene, save_preview

    if preview_out is None:
        return
    progress("baking", done=0, total=1, message="preview of the decoded scene", fraction=0.9)
    pv = preview_from_scene(scene_fn())
    save_preview(pv, preview_out, gaussians)
    out["preview"], out["preview_count"] = preview_out, len(pv)
    progress("baking", done=1, total=1, fraction=1.0)


# ---- anchor mode ----------------------------------------------------------------------------------
def lambda_fields(lam: float, lo: float, hi: float) -> dict:
    """A model's λ fields: its default λ, trained range, and what `compress` accepts (the range
    widened as pipeline.check_lambda allows; a fixed-rate model: its one λ)."""
    from .pipeline import LAMBDA_MARGIN

    variable = lo < hi
    return {"lambda": lam, "lambda_min": lo, "lambda_max": hi, "variable_rate": variable,
            "lambda_serves": [lo / LAMBDA_MARGIN, hi * LAMBDA_MARGIN] if variable else [lam, lam]}


def model_summary(path: str) -> dict:
    """What the add-on shows about a trained model: its codec and switches, the λ range it was
    trained on (lambda_min/lambda_max), the λ it codes at (`lambda_serves`: that range widened as
    pipeline.check_lambda allows; the one λ of a fixed-rate model), anchors, source, budget."""
    from .errors import FormatError
    from .model_store import load_model

    model, entropy, meta = load_model(path)
    lam = float(meta["lambda"])
    rng = meta.get("lambda_range") or [lam, lam]
    try:
        lo, hi = (float(v) for v in rng)
    except (TypeError, ValueError):
        raise FormatError(f"{path}: model file has an invalid λ range {rng!r}"[:200]) from None
    if not (0 < lo <= hi and math.isfinite(hi)):
        raise FormatError(f"{path}: model file has an invalid λ range {rng!r}"[:200])
    codec = meta.get("codec", "hac")
    switches = ({k: bool(getattr(entropy.cfg, k)) for k in ("scene_agnostic", "ar", "acs", "variable_rate")}
                if codec == "hemgs" else None)
    return {"model": path, "mode": meta.get("mode"), "codec": codec, "switches": switches,
            **lambda_fields(lam, lo, hi), "anchors": model.num_anchors, "source": meta.get("source"),
            "source_bytes": meta.get("source_bytes"), "bytes": os.path.getsize(path), "fit": meta.get("fit")}


def model_lambda(model: str, lam: float | None) -> float:
    """The λ a trained model codes at for a request of `lam` (None: its own), refused before any
    work when the model does not serve it."""
    from .pipeline import check_lambda

    summary = model_summary(model)
    return check_lambda(summary["lambda"], lam, (summary["lambda_min"], summary["lambda_max"]))


def fit_config(preset: str | None = None, **fields):
    """A checked hemgs.fit.FitConfig (λ range within fit.LAMBDA_RANGE, codec name, sizes, steps):
    `fields` over the budget of TRAIN_PRESETS[preset] (None: FitConfig's own defaults)."""
    from .fit import FitConfig

    cfg = FitConfig(**{**TRAIN_PRESETS.get(preset or "", {}), **fields})
    cfg.validate()
    return cfg


# Rough share of a training run's time per stage (CPU, defaults), so the bar moves evenly overall.
_STAGE_COST = {"teacher": 1.0, "importance": 0.5, "warm": 0.15, "render": 3.0, "refine": 0.5}  # per step
WARM_STEPS_GUESS = 1000  # the warm start's own count is known only once the scene is voxelized


def _fit_events(cfg, progress: Events) -> Callable:
    """Turn fit's progress(stage, step, total, info) into events with the whole run's fraction."""
    from .direct.fit import IMPORTANCE_VIEWS
    from .progress import STAGE_NAMES

    n_teacher = cfg.views - (cfg.views + 7) // 8  # every 8th view is held out
    warm = WARM_STEPS_GUESS if cfg.warm_steps is None else cfg.warm_steps
    steps = {"teacher": n_teacher, "importance": IMPORTANCE_VIEWS if cfg.importance else 0, "warm": warm,
             "render": cfg.steps, "refine": cfg.refine_budget}
    work = {stage: n * _STAGE_COST[stage] for stage, n in steps.items()}  # in the fit's order
    total_work = sum(work.values()) or 1.0
    before = dict(zip(work, itertools.accumulate(work.values(), initial=0.0)))
    due = _event_gate()

    def report(stage: str, step: int, total: int, info: dict) -> None:
        if not due(step, total):
            return
        frac = (before.get(stage, 0.0) + work.get(stage, 0.0) * step / max(total, 1)) / total_work
        loss = info.get("loss")
        text = STAGE_NAMES.get(stage, stage) + (f", loss {loss:.4g}" if isinstance(loss, float) else "")
        progress(stage, done=step, total=total, message=text, fraction=min(1.0, frac))

    return report


def train_model(source: str, model: str, cfg, device, progress: Events) -> dict:
    """Fit a model to `source` with the checked FitConfig `cfg` and write it to `model`; answers the
    model's own summary (as model_summary reports it, so both agree) and the training budget."""
    from .pipeline import train

    progress("teacher", done=0, total=1, message="reading the source", fraction=0.0)
    t0 = time.perf_counter()
    fitted = train(source, model, cfg, progress=_fit_events(cfg, progress), device=device)
    out = model_summary(model)
    out.update(source=source, source_bytes=os.path.getsize(source), steps=cfg.steps, warm_steps=cfg.warm_steps,
               width=cfg.width, views=cfg.views, seconds=round(time.perf_counter() - t0, 3),
               stage_seconds={k[:-8]: round(v, 3) for k, v in fitted.history.items() if k.endswith("_seconds")})
    return out


def train_and_compress(src: str | None, output: str, cfg, device, progress, *, images=None, mlps=None,
                       downscale: float = 1.0):
    """Anchor mode from a source: train a model (kept in a temporary folder only) and code it at
    `cfg.lam`. Returns (the Fitted, compress_model's report, the source's size or None)."""
    import tempfile

    from .pipeline import compress_model, train

    with tempfile.TemporaryDirectory() as tmp:
        fitted = train(src, Path(tmp) / "model.safetensors", cfg, progress=progress, device=device,
                       images=images, mlps=mlps, downscale=downscale)
        source_bytes = os.path.getsize(src) if src is not None else None
        extra = ({"source": os.path.basename(src), "source_bytes": source_bytes} if src is not None
                 else {"source": os.path.basename(str(images))})
        report = compress_model(fitted.model, fitted.entropy, output, lam=cfg.lam, header_extra=extra,
                                progress=progress)
    return fitted, report, source_bytes


def compress_model_measured(model: str, output: str, *, lam: float, source: str | None, spec: ViewSpec,
                            preview_out: str | None, device, progress: Events,
                            preview_gaussians: bool = True) -> dict:
    """Code the trained `model` at `lam` (model_lambda's) into `output`, then decode the file as
    written and, with `source`, measure it (`measure`) and bake its preview (`preview`)."""
    from .pipeline import compress, decode_file

    progress("encoding", done=0, total=1, fraction=0.0)
    report = compress(model, output, lam=lam)
    progress("encoding", done=1, total=1, fraction=0.2)
    out: dict[str, Any] = {"output": output, "model": model, "lambda": lam, "bytes": report["bytes"],
                           "sections": report["sections"], "anchors": report["anchors"],
                           "encode_seconds": round(report["seconds"], 3)}
    # The metrics and the preview come from the file as written, decoded again: what a user gets.
    progress("decoding", done=0, total=1, fraction=0.2)
    decoded = decode_file(output)
    progress("decoding", done=1, total=1, fraction=0.25)
    if source is None and report.get("source_bytes"):
        out["source_bytes"] = report["source_bytes"]  # recorded at training time
        out["ratio"] = report["source_bytes"] / max(report["bytes"], 1)
    measure(out, source, decoded.renderer(device), spec, device, progress, start=0.25)
    preview(out, preview_out, decoded.gaussians, progress, preview_gaussians)
    return out


# ---- direct mode ----------------------------------------------------------------------------------
def check_iters(iters: int | None, name: str) -> None:
    """Direct mode's fitting iterations (`name`: the flag or argument to blame)."""
    if iters is not None and not 1 <= iters <= ITERS_MAX:
        raise InputError(f"{name} must be 1..{ITERS_MAX}, got {iters}")


def direct_configs(switches: dict, iters: int | None):
    """(DirectConfig, DirectFitConfig) for the part switches (missing: DIRECT_SWITCH_DEFAULTS) and
    the fitting iterations (None: the fit's default)."""
    from .direct import DirectConfig, DirectFitConfig

    cfg = DirectConfig(**{**DIRECT_SWITCH_DEFAULTS, **switches})
    return cfg, DirectFitConfig() if iters is None else DirectFitConfig(iters=iters)


def own_views(source: str, which: bool | str | None) -> list | None:
    """The views to code for: None (every direction), True (the cameras.json beside `source`) or a
    cameras file (hemgs.cameras.own_cameras)."""
    if which is None or which is False:
        return None
    from .cameras import own_cameras

    return own_cameras(source, which if isinstance(which, str) else None)


# The last direct-mode fit, kept so that coding the same source at another λ (the add-on's slider,
# api.compress over several λ) does not fit again: one fit serves every λ.
_DIRECT_FIT: dict[str, Any] = {"key": None, "fitted": None, "extra": None}


def compress_direct_measured(source: str, output: str, *, lam: float, switches: dict, iters: int | None,
                             for_cameras: bool | str | None, cameras: list | None, spec: ViewSpec,
                             preview_out: str | None, device, progress: Events,
                            preview_gaussians: bool = True) -> dict:
    """Direct mode, checked arguments: fit `source` (for `cameras`, own_views(source, for_cameras))
    or reuse the last fit of the same file and settings (`fitted` false), code it at `lam` into
    `output`, then decode the file as written, measure it (`measure`) and bake its preview."""
    from .direct import fit_direct
    from .pipeline import decode_file, encode_direct

    cfg, fcfg = direct_configs(switches, iters)
    st = os.stat(source)
    key = json.dumps([os.path.realpath(source), st.st_mtime_ns, st.st_size, switches, fcfg.iters, for_cameras])
    fitted_now = _DIRECT_FIT["key"] != key
    t0 = time.perf_counter()
    if fitted_now:
        _DIRECT_FIT.update(key=None, fitted=None, extra=None)  # free the old one before fitting
        progress("reading", done=0, total=1, message="reading the source", fraction=0.0)
        scene = load_scene_checked(source, lambda m: progress("warning", message=m))
        due = _event_gate()

        def fit_progress(done: int, total: int) -> None:
            if due(done, total):
                progress("fitting", done=done, total=total, message="fitting (direct mode)",
                         fraction=0.02 + 0.58 * done / max(total, 1))

        fitted = fit_direct(scene, cfg, fcfg, progress=fit_progress, cameras=cameras)
        extra = {"source": os.path.basename(source), "source_bytes": st.st_size}
        _DIRECT_FIT.update(key=key, fitted=fitted, extra=extra)
    fitted, extra = _DIRECT_FIT["fitted"], _DIRECT_FIT["extra"]
    fit_seconds = time.perf_counter() - t0
    progress("encoding", done=0, total=1, fraction=0.6)
    report = encode_direct(fitted, output, lam=lam, header_extra=extra)
    progress("encoding", done=1, total=1, fraction=0.65)
    out: dict[str, Any] = {"output": output, "mode": "direct", "lambda": lam, "bytes": report["bytes"],
                           "sections": report["sections"], "gaussians": report["gaussians"],
                           "voxels": report["voxels"], "fitted": fitted_now,
                           "fit_seconds": round(fit_seconds, 3), "encode_seconds": round(report["seconds"], 3)}
    # The metrics and the preview come from the file as written, decoded again: what a user gets.
    progress("decoding", done=0, total=1, fraction=0.65)
    decoded = decode_file(output)
    progress("decoding", done=1, total=1, fraction=0.7)
    measure(out, source, decoded.renderer(device), spec, device, progress, start=0.7)
    preview(out, preview_out, decoded.gaussians, progress, preview_gaussians)
    return out
