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

import json
import math
import os
import signal
import sys
import time
import traceback
from typing import Any, Callable, TextIO

from . import __version__, service
from .errors import HemgsError, InputError, one_line
from .modes import (ANCHOR_FIXED_LAMBDA_RANGE, ANCHOR_LAMBDA_DEFAULT, ANCHOR_TRAINED_LAMBDAS, DEFAULT_MODE, DIRECT_LAMBDA_DEFAULT, DIRECT_LAMBDA_RANGE,
                    DIRECT_SWITCH_DEFAULTS, DIRECT_TRAINED_LAMBDAS, MODES, check_direct_lambda, check_direct_source,
                    mode_for)
from .service import TRAIN_PRESETS, ViewSpec

# Protocol version rules (docs/protocol.md): additions a client may ignore (new optional arguments,
# new result or hello fields, new ops) keep the version; removing or changing the meaning of
# anything a client sends or reads bumps it.
PROTOCOL = 1
# Operations that take `dry_run`: check the arguments and answer without work. In the hello, so a
# client never sends it to an older worker, which would ignore it and do the work.
DRY_RUN_OPS = ("compress", "train")
# What the codec can do, for the add-on's λ controls. `train` makes a variable-rate HEMGS model by
# default (one model, any λ of its trained range widened by `lambda_margin`); "hac" and
# variable_rate false make fixed-rate models (one λ each). Each model reports its own range.
# `fixed_rate`: the λ a fixed-rate model is trained at (`train`'s `lambda`; hemgs.modes, where
# hemgs.fit's LAMBDA_RANGE and FitConfig.lam come from).
# `modes`: the coding modes `compress` takes (`mode` argument); "direct" (anchor-free) needs no
# model, fits the source itself and codes any λ of `direct.lambda_range` (its own units).
CODEC = {"default": "hemgs", "codecs": ["hemgs", "hac"], "variable_rate": True,
         "lambdas": list(ANCHOR_TRAINED_LAMBDAS), "lambda_margin": 2.0,
         "fixed_rate": {"lambda_range": list(ANCHOR_FIXED_LAMBDA_RANGE), "lambda_default": ANCHOR_LAMBDA_DEFAULT},
         "modes": list(MODES), "default_mode": DEFAULT_MODE,
         "direct": {"lambdas": list(DIRECT_TRAINED_LAMBDAS), "lambda_range": list(DIRECT_LAMBDA_RANGE),
                    "lambda_default": DIRECT_LAMBDA_DEFAULT, "switch_defaults": dict(DIRECT_SWITCH_DEFAULTS)}}


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


def _warn(progress: Callable) -> Callable[[str], None]:
    """Repairs of a scene (sanitize) as the protocol's warning events."""
    return lambda message: progress("warning", message=message)


def _view_spec(args: dict, op: str, *, none_ok: bool = False) -> ViewSpec:
    """The request's `cameras`, `views` (count; `none_ok`: 0 means no PSNR/SSIM), `width` and
    `height` (default: `width`)."""
    width = _arg(args, "width", int, 256, op)
    height = _arg(args, "height", int, width, op)
    n = _arg(args, "views", int, 16, op)
    if none_ok and n < 0:
        raise InputError(f"{op}: views must be at least 0 (0: no PSNR/SSIM)")
    if (n != 0 or not none_ok) and (width < 1 or height < 1 or n < 1):
        raise InputError(f"{op}: width, height and views must be at least 1")
    return ViewSpec(n=n, width=width, height=height, cameras=_opt(args, "cameras", str, op))


# ---- operations ----------------------------------------------------------------------------
# Each takes (args, progress) and returns a JSON-able dict. progress(stage, done=, total=, message=)
def op_versions(args: dict, progress: Callable) -> dict:
    """What the "Check backend" button shows (service.backend_versions)."""
    return service.backend_versions()


def op_info(args: dict, progress: Callable) -> dict:
    """Summary of a PLY/SPZ/.hgs file (the same fields as `hemgs info --json`)."""
    return service.file_info(_arg(args, "path", str, op="info"))


def op_load_preview(args: dict, progress: Callable) -> dict:
    """Bake the preview arrays of `path` into the `.npz` at `output` (see hemgs.preview)."""
    from .preview import preview_file, save_preview

    path, output = _arg(args, "path", str, op="load_preview"), _arg(args, "output", str, op="load_preview")
    service.check_outputs(output)
    progress("reading", done=0, total=1)
    preview = preview_file(path)
    progress("writing", done=1, total=1)
    save_preview(preview, output)
    for w in preview.meta.get("warnings", []):
        progress("warning", message=f"{path}: {w}")
    return {"output": output, "count": len(preview), "kind": preview.meta.get("kind"),
            "source_format": preview.meta.get("source_format")}


def op_render(args: dict, progress: Callable) -> dict:
    """Render view `view` of `path` (a scene, or a .hgs decoded: views framed on its Gaussians) to
    the PNG `output`."""
    path, output = _arg(args, "path", str, op="render"), _arg(args, "output", str, op="render")
    view = _arg(args, "view", int, 0, "render")
    service.check_outputs(output)
    spec = _view_spec({**args, "views": max(view + 1, _arg(args, "views", int, 16, "render"))}, "render")
    scene, draw = service.scene_and_draw(path, _device(args, "render"), _warn(progress))
    cams = spec.views(scene, path)[:spec.n]
    if not 0 <= view < len(cams):
        raise InputError(f"render: view {view} is out of range: this scene has views 0..{len(cams) - 1}")
    progress("rendering", done=0, total=1)
    service.save_png(draw(cams[view]), output)
    progress("rendering", done=1, total=1)
    return {"output": output, "width": cams[view].width, "height": cams[view].height, "view": view}


def op_convert(args: dict, progress: Callable) -> dict:
    """Convert between PLY and SPZ, by the extension of `dst`."""
    from .io import save_scene

    src, dst = _arg(args, "src", str, op="convert"), _arg(args, "dst", str, op="convert")
    spz_version = _opt(args, "spz_version", int, "convert")
    service.check_outputs(dst)
    progress("reading", done=0, total=2)
    scene = service.load_scene_checked(src, _warn(progress))
    progress("writing", done=1, total=2)
    save_scene(scene, dst, **({"spz_version": spz_version} if spz_version else {}))
    progress("writing", done=2, total=2)
    return {"output": dst, "gaussians": len(scene), "bytes": os.path.getsize(dst), "source_bytes": os.path.getsize(src)}


def op_eval(args: dict, progress: Callable) -> dict:
    """PSNR/SSIM of `other`'s renders against `source`'s over the same views, one progress event
    per rendered view; with `output`, the report is also written there as JSON (atomically)."""
    from .io.atomic import write_bytes_atomic

    source, other = _arg(args, "source", str, op="eval"), _arg(args, "other", str, op="eval")
    output = _opt(args, "output", str, "eval")
    device = _arg(args, "device", str, "auto", "eval")
    service.check_outputs(output)
    spec = _view_spec(args, "eval")
    res = service.compare_to_source(source, lambda: service.draw_file(other, device, _warn(progress)), spec,
                                    device, progress)
    res.update(source=source, other=other, source_bytes=os.path.getsize(source), other_bytes=os.path.getsize(other))
    res = _finite(res)
    if output:
        write_bytes_atomic(output, json.dumps(res, indent=2).encode("utf-8"))
        res["output"] = output
    return res


# ---- the codec ---------------------------------------------------------------------------------
def _device(args: dict, op: str):
    from .device import resolve_device

    return resolve_device(_arg(args, "device", str, "auto", op))


def _fit_config(args: dict):
    preset = _arg(args, "preset", str, "standard", "train")
    if preset not in TRAIN_PRESETS:
        raise InputError(f"train: unknown preset {preset!r}; use one of {', '.join(TRAIN_PRESETS)}")
    values = {}
    for name in ("steps", "warm_steps", "width", "views"):
        if args.get(name) is not None:
            values[name] = _arg(args, name, int, op="train")
    lam = _arg(args, "lambda", float, ANCHOR_LAMBDA_DEFAULT, "train")
    codec = _arg(args, "codec", str, "hemgs", "train")
    switches = {name: _arg(args, name, bool, True, "train") for name in ("scene_agnostic", "ar", "acs", "variable_rate")}
    if args.get("lambdas") is not None:
        values["lambdas"] = tuple(sorted(_numbers(args, "lambdas", "train")))
    return service.fit_config(preset, lam=lam, codec=codec, **switches, **values)


def _numbers(args: dict, name: str, op: str) -> list[float]:
    """An optional list-of-numbers argument ([] when absent)."""
    values = _opt(args, name, list, op) or []
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise InputError(f"{op}: argument '{name}' must be a list of numbers")
    return [float(v) for v in values]


def op_train(args: dict, progress: Callable) -> dict:
    """Fit a model to `source` and write it to `model` (.safetensors, atomically, at the end): by
    default a variable-rate HEMGS model over `lambdas`; `codec` "hac" or `variable_rate` false: a
    fixed-rate model at `lambda`. `serve`: λ values the model must code, refused before any work
    otherwise; `dry_run`: only check, and answer the λ fields of the model it would make."""
    from .pipeline import check_lambda, recorded_lambda

    source, model = _arg(args, "source", str, op="train"), _arg(args, "model", str, op="train")
    cfg = _fit_config(args)
    lo, hi = cfg.lambda_range
    default = recorded_lambda(cfg)
    for lam in _numbers(args, "serve", "train"):
        check_lambda(default, lam, (lo, hi))
    if _arg(args, "dry_run", bool, False, "train"):
        if not os.path.isfile(source):
            raise InputError(f"train: {source}: no such file")
        return {"dry_run": True, "model": model, "codec": cfg.codec, **service.lambda_fields(default, lo, hi)}
    service.check_outputs(model)
    return service.train_model(source, model, cfg, _device(args, "train"), progress)


def op_model_info(args: dict, progress: Callable) -> dict:
    """Summary of a trained model file (service.model_summary)."""
    return service.model_summary(_arg(args, "path", str, op="model_info"))


def op_compress(args: dict, progress: Callable) -> dict:
    """Anchor mode (`mode` "anchor", the default when a `model` is given): code `model` into the .hgs
    `output` at `lambda` (a variable-rate model: any λ it serves; default and fixed-rate: the model's
    own λ). Direct mode (`mode` "direct", the default otherwise): fit the anchor-free model to
    `source` and code it (op_compress_direct).
    Then decode the written file, measure it against `source` (PSNR/SSIM over the views `hemgs
    eval` uses) and bake its preview (`preview`)."""
    mode = mode_for(_opt(args, "mode", str, "compress"), anchor_input="model" in args)
    if mode == "direct":
        return op_compress_direct(args, progress)
    model, output = _arg(args, "model", str, op="compress"), _arg(args, "output", str, op="compress")
    source = _opt(args, "source", str, "compress")
    preview_out = _opt(args, "preview", str, "compress")
    lam = _opt(args, "lambda", float, "compress")
    device = _device(args, "compress")
    spec = _view_spec(args, "compress", none_ok=True)
    dry_run = _arg(args, "dry_run", bool, False, "compress")
    if not dry_run:
        service.check_outputs(output, preview_out)
    lam = service.model_lambda(model, lam)  # a λ the model does not serve: refused before any work
    if dry_run:
        return {"dry_run": True, "output": output, "model": model, "lambda": lam}
    return _finite(service.compress_model_measured(model, output, lam=lam, source=source, spec=spec,
                                                   preview_out=preview_out, device=device, progress=progress))


def op_compress_direct(args: dict, progress: Callable) -> dict:
    """Direct (anchor-free) mode: fit hemgs.direct's entropy model to `source` (a 3DGS PLY/SPZ;
    `iters` fitting iterations, `scene_agnostic`/`ar`/`acs`/`variable_rate` switches), code it at
    `lambda` (DIRECT_LAMBDA_RANGE, default DIRECT_LAMBDA_DEFAULT) into `output`, then measure
    and preview the file as written (decoded again). A fit of the same source file and settings
    is reused from the previous request (`fitted`: false)."""
    op = "compress"
    if args.get("model") is not None:
        raise InputError("compress: mode 'direct' fits the source itself; it takes no 'model' (that is anchor mode)")
    source, output = _arg(args, "source", str, op=op), _arg(args, "output", str, op=op)
    lam = check_direct_lambda(_arg(args, "lambda", float, DIRECT_LAMBDA_DEFAULT, op)
                              if args.get("lambda") is not None else DIRECT_LAMBDA_DEFAULT)
    switches = {name: _arg(args, name, bool, DIRECT_SWITCH_DEFAULTS[name], op) for name in DIRECT_SWITCH_DEFAULTS}
    iters = _opt(args, "iters", int, op)
    service.check_iters(iters, "compress: iters")
    preview_out = _opt(args, "preview", str, op)
    spec = _view_spec(args, op, none_ok=True)
    device = _device(args, op)
    check_direct_source(source, asked="mode 'direct'", op="compress: ")
    # true: the cameras.json beside the source; a path: that file; code for those views only
    for_cameras = args.get("for_cameras")
    if for_cameras is not None and not isinstance(for_cameras, (bool, str)):
        raise InputError("compress: for_cameras must be true, false or a cameras file")
    cameras = service.own_views(source, for_cameras or None)
    if _arg(args, "dry_run", bool, False, op):
        return {"dry_run": True, "output": output, "mode": "direct", "lambda": lam}
    service.check_outputs(output, preview_out)
    return _finite(service.compress_direct_measured(
        source, output, lam=lam, switches=switches, iters=iters, for_cameras=for_cameras, cameras=cameras,
        spec=spec, preview_out=preview_out, device=device, progress=progress))


def op_decompress(args: dict, progress: Callable) -> dict:
    """Decode the .hgs `path` and write its baked Gaussians to `output` (.ply or .spz)."""
    from pathlib import Path

    from .io import formats, save_scene
    from .pipeline import decode_file

    path, output = _arg(args, "path", str, op="decompress"), _arg(args, "output", str, op="decompress")
    sh_degree = _opt(args, "sh_degree", int, "decompress")
    written = formats.writable()
    if Path(output).suffix.lower() not in formats.extensions(written):  # say so before decoding, not after
        raise InputError(f"decompress: {output}: the output must be a {formats.extension_list(written)} file")
    if sh_degree is not None and not 0 <= sh_degree <= 3:
        raise InputError(f"decompress: sh_degree must be 0..3, got {sh_degree}")
    service.check_outputs(output)
    progress("decoding", done=0, total=3)
    decoded = decode_file(path)
    progress("baking", done=1, total=3)
    scene = decoded.gaussians(sh_degree)  # anchor: baked (default SH 1); direct: as decoded
    progress("writing", done=2, total=3)
    save_scene(scene, output)
    progress("writing", done=3, total=3)
    return {"output": output, "mode": decoded.header.get("mode"), "gaussians": len(scene),
            "sh_degree": scene.sh_degree, "bytes": os.path.getsize(output),
            "hgs_bytes": os.path.getsize(path), "anchors": decoded.header.get("anchors")}


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
        fn = OPS.get(op)
        if fn is None:
            raise InputError(f"unknown operation {op!r}; this worker serves: {', '.join(sorted(OPS))}")
        t0 = time.perf_counter()
        result = fn(args, progress)
        emit.send({"id": rid, "event": "result", "op": op, "result": result,
                   "seconds": round(time.perf_counter() - t0, 3)})
    except Cancelled:
        raise
    except (HemgsError, OSError) as exc:
        emit.send(_error(rid, type(exc).__name__, exc))
    except Exception as exc:  # a bug of ours: report it as one line, with the traceback on stderr
        traceback.print_exc(file=sys.stderr)
        emit.send(_error(rid, "InternalError", exc, internal=True))


def _error(rid, kind: str, exc: BaseException, internal: bool = False) -> dict:
    message = one_line(exc)
    if internal:
        message = f"internal error: {type(exc).__name__}: {message} (see the worker log)"
    return {"id": rid, "event": "error", "type": kind, "message": message}


def _on_sigterm(signum, frame):
    raise Cancelled()


def serve(stdin: TextIO, stdout: TextIO) -> int:
    """Read requests from `stdin` until EOF or `shutdown`; events go to `stdout`."""
    emit = Emitter(stdout)
    emit.send({"event": "hello", "protocol": PROTOCOL, "hemgs": __version__, "pid": os.getpid(),
               "ops": sorted(OPS), "planned": [], "dry_run": list(DRY_RUN_OPS), "codec": CODEC,
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
