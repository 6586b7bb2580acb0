"""The backend worker that the Blender extension drives: `python -m hemgs.worker`.

JSON lines on stdin/stdout (docs/protocol.md is the reference). On start the worker writes one
`hello` event (protocol version, hemgs version, the operations it serves); then, for each request
line `{"id": ..., "op": ..., "args": {...}}`, zero or more `progress` events and exactly one
`result` or `error` event carrying the same id. Requests run one at a time, in order. Closing
stdin (or the `shutdown` op) ends the worker.

Cancelling is the client's job: it ends the worker's whole process group (SIGTERM, then SIGKILL).
SIGTERM is turned into an exception here, so `atomic_write` removes its temporary file and no
half-written output is ever left under an output's final name.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import sys
import time
import traceback
from typing import Any, Callable, TextIO

from . import __version__
from .errors import HemgsError, InputError
from .modes import (DEFAULT_MODE, DIRECT_LAMBDA_DEFAULT, DIRECT_LAMBDA_RANGE, DIRECT_SWITCH_DEFAULTS, DIRECT_TRAINED_LAMBDAS,
                    MODES)

# Protocol version rules (docs/protocol.md): additions a client may ignore (new optional arguments,
# new result or hello fields, new ops) keep the version; removing or changing the meaning of
# anything a client sends or reads bumps it.
PROTOCOL = 1
# Operations of the protocol this backend does not serve yet (answered with a NotAvailable error).
PLANNED_OPS: tuple[str, ...] = ()
# Operations that take `dry_run`: check the arguments and answer without work. In the hello, so a
# client never sends it to an older worker, which would ignore it and do the work.
DRY_RUN_OPS = ("compress", "train")
# What the codec can do, for the add-on's λ controls. `train` makes a variable-rate HEMGS model by
# default (one model, any λ of its trained range widened by `lambda_margin`); "hac" and
# variable_rate false make fixed-rate models (one λ each). Each model reports its own range.
# `modes`: the coding modes `compress` takes (`mode` argument); "direct" (anchor-free) needs no
# model, fits the source itself and codes any λ of `direct.lambda_range` (its own units).
CODEC = {"default": "hemgs", "codecs": ["hemgs", "hac"], "variable_rate": True,
         "lambdas": [1e-3, 2e-3, 3e-3, 4e-3], "lambda_margin": 2.0,
         "modes": list(MODES), "default_mode": DEFAULT_MODE,
         "direct": {"lambdas": list(DIRECT_TRAINED_LAMBDAS), "lambda_range": list(DIRECT_LAMBDA_RANGE),
                    "lambda_default": DIRECT_LAMBDA_DEFAULT, "switch_defaults": dict(DIRECT_SWITCH_DEFAULTS)}}


class NotAvailable(HemgsError):
    """The operation is part of the protocol but not of this version of the backend."""


class Cancelled(BaseException):
    """Raised on SIGTERM, so that cleanup (temporary files) runs before the process exits."""


class Emitter:
    """Writes events as JSON lines; one lock-free writer, since requests run one at a time."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def send(self, event: dict) -> None:
        self.stream.write(json.dumps(event, allow_nan=False, default=_json_default) + "\n")
        self.stream.flush()


def _json_default(obj):
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _finite(value):
    """JSON has no inf/nan: identical renders (PSNR inf) travel as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


# ---- argument helpers ----------------------------------------------------------------------
def _arg(args: dict, name: str, kind: type, default: Any = ..., op: str = "") -> Any:
    if name not in args:
        if default is ...:
            raise InputError(f"{op}: missing argument '{name}'")
        return default
    value = args[name]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise InputError(f"{op}: argument '{name}' must be {kind.__name__}, got {type(value).__name__}")
    return value


def _opt(args: dict, name: str, kind: type, op: str) -> Any:
    """An optional argument: None when absent or null."""
    return _arg(args, name, kind, None, op) if args.get(name) is not None else None


def _check_outputs(*paths: str | None) -> None:
    """Refuse an output that cannot be written (missing folder, a folder...) before any work."""
    from .io.atomic import check_output_path

    for path in paths:
        if path is not None:
            check_output_path(path)


def _load(path: str, progress: Callable) -> Any:
    from .io import load_scene
    from .scene import sanitize

    scene, warnings = sanitize(load_scene(path))
    for w in warnings:
        progress("warning", message=f"{path}: {w}")
    return scene


# ---- operations ----------------------------------------------------------------------------
# Each takes (args, progress) and returns a JSON-able dict. progress(stage, done=, total=, message=)
def op_versions(args: dict, progress: Callable) -> dict:
    """What the "Check backend" button shows: hemgs, Python, torch, CUDA and gsplat versions."""
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


def op_info(args: dict, progress: Callable) -> dict:
    """Summary of a PLY/SPZ/.hgs file (the same fields as `hemgs info --json`)."""
    from .cli import file_info

    return file_info(_arg(args, "path", str, op="info"))


def op_load_preview(args: dict, progress: Callable) -> dict:
    """Bake the preview arrays of `path` into the `.npz` at `output` (see hemgs.preview)."""
    from .preview import preview_file, save_preview

    path, output = _arg(args, "path", str, op="load_preview"), _arg(args, "output", str, op="load_preview")
    _check_outputs(output)
    progress("reading", done=0, total=1)
    preview = preview_file(path)
    progress("writing", done=1, total=1)
    save_preview(preview, output)
    for w in preview.meta.get("warnings", []):
        progress("warning", message=f"{path}: {w}")
    return {"output": output, "count": len(preview), "kind": preview.meta.get("kind"),
            "source_format": preview.meta.get("source_format")}


def _views(scene, args: dict, op: str, source_path: str | None, *, evaluation: bool = False):
    """The request's `cameras`, else the scene's own or sampled views (render), or with
    `evaluation` the whole-sphere views no encoder uses (eval, the PSNR of compress)."""
    from .cameras import evaluation_views, load_cameras, scene_views

    width = _arg(args, "width", int, 256, op)
    height = _arg(args, "height", int, width, op)
    n = _arg(args, "views", int, 16, op)
    if width < 1 or height < 1 or n < 1:
        raise InputError(f"{op}: width, height and views must be at least 1")
    cameras = _opt(args, "cameras", str, op)
    if cameras:
        return load_cameras(cameras)[:n]
    if evaluation:
        return evaluation_views(scene, n=n, width=width, height=height)
    return scene_views(scene, source_path, n=n, width=width, height=height)


def op_render(args: dict, progress: Callable) -> dict:
    """Render view `view` of `path` to the PNG `output`."""
    from .cli import _save_png
    from .io import detect_format
    from .render import render

    path, output = _arg(args, "path", str, op="render"), _arg(args, "output", str, op="render")
    view = _arg(args, "view", int, 0, "render")
    _check_outputs(output)
    device = _device(args, "render")
    if detect_format(path) == "hgs":  # decoded (any mode); views framed on its decoded Gaussians
        from .pipeline import scene_and_renderer

        scene, draw = scene_and_renderer(path, device)
    else:
        scene = _load(path, progress)
        draw = lambda cam: render(scene, cam, device=device)  # noqa: E731
    cams = _views(scene, {**args, "views": max(view + 1, _arg(args, "views", int, 16, "render"))}, "render", path)
    if not 0 <= view < len(cams):
        raise InputError(f"render: view {view} is out of range: this scene has views 0..{len(cams) - 1}")
    progress("rendering", done=0, total=1)
    image = draw(cams[view])
    _save_png(image, output)
    progress("rendering", done=1, total=1)
    return {"output": output, "width": cams[view].width, "height": cams[view].height, "view": view}


def op_convert(args: dict, progress: Callable) -> dict:
    """Convert between PLY and SPZ, by the extension of `dst`."""
    from .io import save_scene

    src, dst = _arg(args, "src", str, op="convert"), _arg(args, "dst", str, op="convert")
    spz_version = _opt(args, "spz_version", int, "convert")
    _check_outputs(dst)
    progress("reading", done=0, total=2)
    scene = _load(src, progress)
    progress("writing", done=1, total=2)
    save_scene(scene, dst, **({"spz_version": spz_version} if spz_version else {}))
    progress("writing", done=2, total=2)
    return {"output": dst, "gaussians": len(scene), "bytes": os.path.getsize(dst), "source_bytes": os.path.getsize(src)}


def _renderer(path: str, device, progress: Callable) -> Callable:
    """camera -> image for a scene file (sanitized, repairs reported) or a .hgs (decoded, any mode)."""
    from .io import detect_format

    if detect_format(path) == "hgs":
        from .device import resolve_device
        from .pipeline import renderer

        return renderer(path, resolve_device(device))
    from .render import render

    scene = _load(path, progress)
    return lambda cam: render(scene, cam, device=device)


def op_eval(args: dict, progress: Callable) -> dict:
    """PSNR/SSIM of `other`'s renders against `source`'s over the same views, one progress event
    per rendered view; with `output`, the report is also written there as JSON (atomically)."""
    from .io.atomic import write_bytes_atomic
    from .metrics import compare_images
    from .render import render

    source, other = _arg(args, "source", str, op="eval"), _arg(args, "other", str, op="eval")
    output = _opt(args, "output", str, "eval")
    device = _arg(args, "device", str, "auto", "eval")
    _check_outputs(output)
    a = _load(source, progress)
    draw_other = _renderer(other, device, progress)
    cams = _views(a, args, "eval", source, evaluation=True)
    total = 2 * len(cams)
    refs, tests = [], []
    for i, cam in enumerate(cams):
        progress("rendering", done=2 * i, total=total, message=f"view {i + 1} of {len(cams)}")
        refs.append(render(a, cam, device=device))
        tests.append(draw_other(cam))
    progress("rendering", done=total, total=total)
    res = compare_images(refs, tests)
    res.update(source=source, other=other, source_bytes=os.path.getsize(source),
               other_bytes=os.path.getsize(other), width=cams[0].width, height=cams[0].height)
    res = _finite(res)
    if output:
        write_bytes_atomic(output, json.dumps(res, indent=2).encode("utf-8"))
        res["output"] = output
    return res


# ---- the codec ---------------------------------------------------------------------------------
# Training budget presets; explicit steps/warm_steps/width/views override them.
TRAIN_PRESETS = {
    "quick": {"steps": 100, "warm_steps": 150, "width": 128, "views": 16},  # minutes on a CPU
    "standard": {"steps": 300, "warm_steps": 400, "width": 256, "views": 32},  # = hemgs train's defaults
}
# Rough share of a training run's time per stage (CPU, defaults), so the bar moves evenly overall.
_STAGE_COST = {"teacher": 1.0, "warm": 0.15, "render": 3.0, "refine": 0.5}  # per step, for the overall fraction


def _device(args: dict, op: str):
    from .device import resolve_device

    return resolve_device(_arg(args, "device", str, "auto", op))


def _fit_config(args: dict):
    from .fit import FitConfig

    preset = _arg(args, "preset", str, "standard", "train")
    if preset not in TRAIN_PRESETS:
        raise InputError(f"train: unknown preset {preset!r}; use one of {', '.join(TRAIN_PRESETS)}")
    values = dict(TRAIN_PRESETS[preset])
    for name in ("steps", "warm_steps", "width", "views"):
        if args.get(name) is not None:
            values[name] = _arg(args, name, int, op="train")
    lam = _arg(args, "lambda", float, 1e-3, "train")
    codec = _arg(args, "codec", str, "hemgs", "train")
    switches = {name: _arg(args, name, bool, True, "train") for name in ("scene_agnostic", "ar", "acs", "variable_rate")}
    if args.get("lambdas") is not None:
        values["lambdas"] = tuple(sorted(_numbers(args, "lambdas", "train")))
    cfg = FitConfig(lam=lam, codec=codec, **switches, **values)
    cfg.validate()  # λ (range) within fit.LAMBDA_RANGE, codec name, sizes, steps
    return cfg


def _numbers(args: dict, name: str, op: str) -> list[float]:
    """An optional list-of-numbers argument ([] when absent)."""
    values = _opt(args, name, list, op) or []
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise InputError(f"{op}: argument '{name}' must be a list of numbers")
    return [float(v) for v in values]


def _stage_reporter(cfg, progress: Callable) -> Callable:
    """Turn fit's progress(stage, step, total, info) into protocol events with an overall fraction."""
    from .progress import STAGE_NAMES

    n_teacher = cfg.views - (cfg.views + 7) // 8  # every 8th view is held out
    steps = {"teacher": n_teacher, "warm": cfg.warm_steps, "render": cfg.steps, "refine": cfg.refine_budget}
    work = {stage: n * _STAGE_COST[stage] for stage, n in steps.items()}  # in the fit's order
    total_work = sum(work.values()) or 1.0
    before = dict(zip(work, itertools.accumulate(work.values(), initial=0.0)))
    last = {"t": 0.0}

    def report(stage: str, step: int, total: int, info: dict) -> None:
        now = time.monotonic()
        # At most ~10 events a second, but always the last step of a stage.
        if step < total and now - last["t"] < 0.1:
            return
        last["t"] = now
        frac = (before.get(stage, 0.0) + work.get(stage, 0.0) * step / max(total, 1)) / total_work
        loss = info.get("loss")
        text = STAGE_NAMES.get(stage, stage) + (f", loss {loss:.4g}" if isinstance(loss, float) else "")
        progress(stage, done=step, total=total, message=text, fraction=min(1.0, frac))

    return report


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
    return {"model": path, "mode": meta.get("mode"), "codec": codec, "switches": switches, **_lambdas(lam, lo, hi),
            "anchors": model.num_anchors, "source": meta.get("source"), "source_bytes": meta.get("source_bytes"),
            "bytes": os.path.getsize(path), "fit": meta.get("fit")}


def _lambdas(lam: float, lo: float, hi: float) -> dict:
    """A model's λ fields: its default λ, trained range, and what `compress` accepts (the range
    widened as pipeline.check_lambda allows; a fixed-rate model: its one λ)."""
    from .pipeline import LAMBDA_MARGIN

    variable = lo < hi
    return {"lambda": lam, "lambda_min": lo, "lambda_max": hi, "variable_rate": variable,
            "lambda_serves": [lo / LAMBDA_MARGIN, hi * LAMBDA_MARGIN] if variable else [lam, lam]}


def op_train(args: dict, progress: Callable) -> dict:
    """Fit a model to `source` and write it to `model` (.safetensors, atomically, at the end): by
    default a variable-rate HEMGS model over `lambdas`; `codec` "hac" or `variable_rate` false: a
    fixed-rate model at `lambda`. `serve`: λ values the model must code, refused before any work
    otherwise; `dry_run`: only check, and answer the λ fields of the model it would make."""
    from .pipeline import check_lambda, train

    source, model = _arg(args, "source", str, op="train"), _arg(args, "model", str, op="train")
    cfg = _fit_config(args)
    lo, hi = cfg.lambda_range
    default = cfg.lam if lo <= cfg.lam <= hi else lo  # the λ pipeline.train records
    for lam in _numbers(args, "serve", "train"):
        check_lambda(default, lam, (lo, hi))
    if _arg(args, "dry_run", bool, False, "train"):
        if not os.path.isfile(source):
            raise InputError(f"train: {source}: no such file")
        return {"dry_run": True, "model": model, "codec": cfg.codec, **_lambdas(default, lo, hi)}
    _check_outputs(model)
    device = _device(args, "train")
    progress("teacher", done=0, total=1, message="reading the source", fraction=0.0)
    t0 = time.perf_counter()
    fitted = train(source, model, cfg, progress=_stage_reporter(cfg, progress), device=device)
    h = fitted.history
    # The model's own summary (as model_info reports it), so both answers agree by construction.
    out = model_summary(model)
    out.update(source=source, source_bytes=os.path.getsize(source), steps=cfg.steps, warm_steps=cfg.warm_steps,
               width=cfg.width, views=cfg.views, seconds=round(time.perf_counter() - t0, 3),
               stage_seconds={k[:-8]: round(v, 3) for k, v in h.items() if k.endswith("_seconds")})
    return out


def op_model_info(args: dict, progress: Callable) -> dict:
    """Summary of a trained model file (see model_summary)."""
    return model_summary(_arg(args, "path", str, op="model_info"))


def op_compress(args: dict, progress: Callable) -> dict:
    """Anchor mode (`mode` "anchor", the default when a `model` is given): code `model` into the .hgs
    `output` at `lambda` (a variable-rate model: any λ it serves; default and fixed-rate: the model's
    own λ). Direct mode (`mode` "direct", the default otherwise): fit the anchor-free model to
    `source` and code it (op_compress_direct).
    Then decode the written file, measure it against `source` (PSNR/SSIM over the views `hemgs
    eval` uses) and bake its preview (`preview`)."""
    from .modes import mode_for

    mode = mode_for(_opt(args, "mode", str, "compress"), anchor_input="model" in args)
    if mode == "direct":
        return op_compress_direct(args, progress)
    from .anchor.bake import bake
    from .fit import render_views_anchor
    from .pipeline import check_lambda, compress, decode_file

    model, output = _arg(args, "model", str, op="compress"), _arg(args, "output", str, op="compress")
    source = _opt(args, "source", str, "compress")
    preview_out = _opt(args, "preview", str, "compress")
    lam = _opt(args, "lambda", float, "compress")
    device = _device(args, "compress")
    n_views = _views_arg(args, "compress")
    dry_run = _arg(args, "dry_run", bool, False, "compress")
    if not dry_run:
        _check_outputs(output, preview_out)
    summary = model_summary(model)
    # Refuse a λ the model does not serve before any work.
    lam = check_lambda(summary["lambda"], lam, (summary["lambda_min"], summary["lambda_max"]))
    if dry_run:
        return {"dry_run": True, "output": output, "model": model, "lambda": lam}
    progress("encoding", done=0, total=1, fraction=0.0)
    report = compress(model, output, lam=lam)
    progress("encoding", done=1, total=1, fraction=0.2)
    out: dict[str, Any] = {"output": output, "model": model, "lambda": lam, "bytes": report["bytes"],
                           "sections": report["sections"], "anchors": report["anchors"],
                           "encode_seconds": round(report["seconds"], 3)}
    # The metrics and the preview come from the file as written, decoded again: what a user gets.
    progress("decoding", done=0, total=1, fraction=0.2)
    decoded = decode_file(output).model.to(device)
    progress("decoding", done=1, total=1, fraction=0.25)
    if source is None and report.get("source_bytes"):
        out["source_bytes"] = report["source_bytes"]  # recorded at training time
        out["ratio"] = report["source_bytes"] / max(report["bytes"], 1)
    _measure(out, args, source, lambda cam: render_views_anchor(decoded, [cam])[0], n_views, device, progress,
             start=0.25)
    _preview(out, preview_out, lambda: bake(decoded.cpu(), mode="sh_fit", sh_degree=1), progress)
    return _finite(out)


def _views_arg(args: dict, op: str) -> int:
    n_views = _arg(args, "views", int, 16, op)
    if n_views < 0:
        raise InputError(f"{op}: views must be at least 0 (0: no PSNR/SSIM)")
    return n_views


def _measure(out: dict, args: dict, source: str | None, draw: Callable, n_views: int, device, progress: Callable,
             start: float) -> None:
    """With `source`: its size, the ratio and PSNR/SSIM of `draw`'s renders (the decoded file)
    against the source's, over `n_views` of `hemgs eval`'s views; progress from `start` to 0.9."""
    from .metrics import compare_images
    from .render import render

    if source is None:
        return
    out["source"], out["source_bytes"] = source, os.path.getsize(source)
    out["ratio"] = out["source_bytes"] / max(out["bytes"], 1)
    if n_views <= 0:
        return
    scene = _load(source, progress)
    cams = _views(scene, args, "compress", source, evaluation=True)
    total = 2 * len(cams)
    refs, tests = [], []
    for i, cam in enumerate(cams):
        progress("rendering", done=2 * i, total=total, message=f"view {i + 1} of {len(cams)}",
                 fraction=start + (0.9 - start) * i / len(cams))
        refs.append(render(scene, cam, device=device))
        tests.append(draw(cam))
    progress("rendering", done=total, total=total, fraction=0.9)
    res = compare_images(refs, tests)
    out.update({k: res[k] for k in ("psnr", "psnr_of_mean_mse", "worst_psnr", "ssim", "psnr_per_view",
                                    "ssim_per_view", "views") if k in res})
    out.update(width=cams[0].width, height=cams[0].height)


def _preview(out: dict, preview_out: str | None, scene_fn: Callable, progress: Callable) -> None:
    """With `preview_out`: the preview .npz of the decoded scene `scene_fn()` gives."""
    from .preview import preview_from_scene, save_preview

    if preview_out is None:
        return
    progress("baking", done=0, total=1, message="preview of the decoded scene", fraction=0.9)
    preview = preview_from_scene(scene_fn())
    save_preview(preview, preview_out)
    out["preview"], out["preview_count"] = preview_out, len(preview)
    progress("baking", done=1, total=1, fraction=1.0)


# The last direct-mode fit, kept so that coding the same source at another λ (the add-on's slider,
# api.compress over several λ) does not fit again: one fit serves every λ.
_DIRECT_FIT: dict[str, Any] = {"key": None, "fitted": None, "extra": None}
DIRECT_SWITCHES = tuple(DIRECT_SWITCH_DEFAULTS)


def op_compress_direct(args: dict, progress: Callable) -> dict:
    """Direct (anchor-free) mode: fit hemgs.direct's entropy model to `source` (a 3DGS PLY/SPZ;
    `iters` fitting iterations, `scene_agnostic`/`ar`/`acs`/`variable_rate` switches), code it at
    `lambda` (DIRECT_LAMBDA_RANGE, default DIRECT_LAMBDA_DEFAULT) into `output`, then measure
    and preview the file as written (decoded again). A fit of the same source file and settings
    is reused from the previous request (`fitted`: false)."""
    from .cameras import own_cameras
    from .direct import DirectConfig, DirectFitConfig, fit_direct
    from .io import detect_format
    from .modes import check_direct_lambda
    from .pipeline import decode_file, encode_direct

    op = "compress"
    if args.get("model") is not None:
        raise InputError("compress: mode 'direct' fits the source itself; it takes no 'model' (that is anchor mode)")
    source, output = _arg(args, "source", str, op=op), _arg(args, "output", str, op=op)
    lam = check_direct_lambda(_arg(args, "lambda", float, DIRECT_LAMBDA_DEFAULT, op)
                              if args.get("lambda") is not None else DIRECT_LAMBDA_DEFAULT)
    switches = {name: _arg(args, name, bool, DIRECT_SWITCH_DEFAULTS[name], op) for name in DIRECT_SWITCHES}
    iters = _opt(args, "iters", int, op)
    if iters is not None and not 1 <= iters <= 100000:
        raise InputError(f"compress: iters must be 1..100000, got {iters}")
    preview_out = _opt(args, "preview", str, op)
    n_views = _views_arg(args, op)
    device = _device(args, op)
    fmt = detect_format(source)
    if fmt not in ("ply", "spz"):
        what = {"model": "a trained anchor-mode model", "hgs": "a .hgs file",
                "scaffold_ply": "a Scaffold-GS anchor PLY"}.get(fmt, fmt)
        raise InputError(f"compress: {source} is {what}; mode 'direct' codes a 3DGS PLY or SPZ")
    # true: the cameras.json beside the source; a path: that file; code for those views only
    for_cameras = args.get("for_cameras")
    if for_cameras is not None and not isinstance(for_cameras, (bool, str)):
        raise InputError("compress: for_cameras must be true, false or a cameras file")
    cameras = own_cameras(source, for_cameras if isinstance(for_cameras, str) else None) if for_cameras else None
    if _arg(args, "dry_run", bool, False, op):
        return {"dry_run": True, "output": output, "mode": "direct", "lambda": lam}
    _check_outputs(output, preview_out)
    st = os.stat(source)
    fcfg = DirectFitConfig() if iters is None else DirectFitConfig(iters=iters)
    key = json.dumps([os.path.realpath(source), st.st_mtime_ns, st.st_size, switches, fcfg.iters, for_cameras])
    fitted_now = _DIRECT_FIT["key"] != key
    t0 = time.perf_counter()
    if fitted_now:
        _DIRECT_FIT.update(key=None, fitted=None, extra=None)  # free the old one before fitting
        progress("reading", done=0, total=1, message="reading the source", fraction=0.0)
        scene = _load(source, progress)
        last = {"t": 0.0}

        def fit_progress(done: int, total: int) -> None:
            now = time.monotonic()
            if done < total and now - last["t"] < 0.1:  # at most ~10 a second, always the last
                return
            last["t"] = now
            progress("fitting", done=done, total=total, message="fitting (direct mode)",
                     fraction=0.02 + 0.58 * done / max(total, 1))

        fitted = fit_direct(scene, DirectConfig(**switches), fcfg, progress=fit_progress, cameras=cameras)
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
    scene = decode_file(output).scene
    progress("decoding", done=1, total=1, fraction=0.7)
    from .render import render

    _measure(out, args, source, lambda cam: render(scene, cam, device=device), n_views, device, progress, start=0.7)
    _preview(out, preview_out, lambda: scene, progress)
    return _finite(out)


def op_decompress(args: dict, progress: Callable) -> dict:
    """Decode the .hgs `path` and write its baked Gaussians to `output` (.ply or .spz)."""
    from pathlib import Path

    from .io import save_scene
    from .pipeline import decode_file, decoded_scene

    path, output = _arg(args, "path", str, op="decompress"), _arg(args, "output", str, op="decompress")
    sh_degree = _opt(args, "sh_degree", int, "decompress")
    if Path(output).suffix.lower() not in (".ply", ".spz"):  # say so before decoding, not after
        raise InputError(f"decompress: {output}: the output must be a .ply or .spz file")
    if sh_degree is not None and not 0 <= sh_degree <= 3:
        raise InputError(f"decompress: sh_degree must be 0..3, got {sh_degree}")
    _check_outputs(output)
    progress("decoding", done=0, total=3)
    decoded = decode_file(path)
    progress("baking", done=1, total=3)
    scene = decoded_scene(decoded, sh_degree)  # anchor: baked (default SH 1); direct: as decoded
    progress("writing", done=2, total=3)
    save_scene(scene, output)
    progress("writing", done=3, total=3)
    return {"output": output, "mode": decoded.header.get("mode"), "gaussians": len(scene),
            "sh_degree": scene.sh_degree, "bytes": os.path.getsize(output),
            "hgs_bytes": os.path.getsize(path), "anchors": decoded.header.get("anchors")}


def _planned(op: str) -> Callable:
    def run(args: dict, progress: Callable) -> dict:
        raise NotAvailable(f"{op} is not available in this version of the hemgs backend ({__version__}): "
                           "it needs the HEMGS codec, which is still being built")
    return run


OPS: dict[str, Callable[[dict, Callable], dict]] = {
    "versions": op_versions,
    "info": op_info,
    "load_preview": op_load_preview,
    "render": op_render,
    "convert": op_convert,
    "eval": op_eval,
    "train": op_train,
    "compress": op_compress,
    "decompress": op_decompress,
    "model_info": op_model_info,
}


# ---- the loop ------------------------------------------------------------------------------
def handle(request: dict, emit: Emitter) -> None:
    """Run one request, emitting its progress events and exactly one result or error event."""
    rid = request.get("id")
    op = request.get("op")
    last = [0.0]

    def progress(stage: str, done: int | None = None, total: int | None = None, message: str | None = None,
                 fraction: float | None = None):
        event: dict[str, Any] = {"id": rid, "event": "progress", "stage": stage}
        if done is not None:
            event.update(done=int(done), total=int(total or 0))
        if message:
            event["message"] = message
        if fraction is not None:  # the whole job's progress, for ops with several stages
            event["fraction"] = round(float(fraction), 4)
        emit.send(event)
        last[0] = time.monotonic()

    try:
        if not isinstance(op, str):
            raise InputError("request has no 'op' string")
        args = request.get("args", {})
        if not isinstance(args, dict):
            raise InputError(f"{op}: 'args' must be a JSON object")
        fn = OPS.get(op) or (_planned(op) if op in PLANNED_OPS else None)
        if fn is None:
            raise InputError(f"unknown operation {op!r}; this worker serves: {', '.join(sorted(OPS))}")
        t0 = time.perf_counter()
        result = fn(args, progress)
        emit.send({"id": rid, "event": "result", "op": op, "result": result,
                   "seconds": round(time.perf_counter() - t0, 3)})
    except Cancelled:
        raise
    except NotAvailable as exc:
        emit.send(_error(rid, "NotAvailable", exc))
    except (HemgsError, OSError) as exc:
        emit.send(_error(rid, type(exc).__name__, exc))
    except Exception as exc:  # a bug of ours: report it as one line, with the traceback on stderr
        traceback.print_exc(file=sys.stderr)
        emit.send(_error(rid, "InternalError", exc, internal=True))


def _error(rid, kind: str, exc: BaseException, internal: bool = False) -> dict:
    from .cli import _one_line

    message = _one_line(exc)
    if internal:
        message = f"internal error: {type(exc).__name__}: {message} (see the worker log)"
    return {"id": rid, "event": "error", "type": kind, "message": message}


def _on_sigterm(signum, frame):
    raise Cancelled()


def serve(stdin: TextIO, stdout: TextIO) -> int:
    """Read requests from `stdin` until EOF or `shutdown`; events go to `stdout`."""
    emit = Emitter(stdout)
    emit.send({"event": "hello", "protocol": PROTOCOL, "hemgs": __version__, "pid": os.getpid(),
               "ops": sorted(OPS), "planned": list(PLANNED_OPS), "dry_run": list(DRY_RUN_OPS), "codec": CODEC,
               "train_presets": TRAIN_PRESETS})
    for line in stdin:
        line = line.strip()
        if not line:
            continue
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            emit.send({"id": None, "event": "error", "type": "ProtocolError",
                       "message": f"bad request line ({' '.join(str(exc).split())}): {line[:80]}"})
            continue
        if request.get("op") == "shutdown":
            emit.send({"id": request.get("id"), "event": "result", "op": "shutdown", "result": {}})
            break
        handle(request, emit)
    return 0


def main() -> int:
    # The protocol owns stdout: anything a library prints goes to stderr instead.
    protocol_out = sys.stdout
    sys.stdout = sys.stderr
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        from .device import set_threads

        set_threads()
    except ImportError:  # torch missing: the numpy-only operations still work
        pass
    try:
        return serve(sys.stdin, protocol_out)
    except (Cancelled, KeyboardInterrupt):
        return 143
    except BrokenPipeError:  # the client went away
        return 0


if __name__ == "__main__":
    sys.exit(main())
