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
import os
import signal
import sys
import time
import traceback
from typing import Any, Callable, TextIO

from . import __version__, service
from .errors import HemgsError, InputError, one_line
from .modes import (ANCHOR_LAMBDA_DEFAULT, ANCHOR_SWITCH_DEFAULTS, DIRECT_LAMBDA_DEFAULT, DIRECT_SWITCH_DEFAULTS,
                    check_direct_lambda, check_direct_source, mode_for)
from .protocol import CODEC, DRY_RUN_OPS, PROTOCOL, Emitter, arg, device_arg, finite, numbers, opt, view_spec, warn
from .service import TRAIN_PRESETS


class Cancelled(BaseException):
    """Raised on SIGTERM, so that cleanup (temporary files) runs before the process exits."""


# ---- operations ----------------------------------------------------------------------------
# Each takes (args, progress) and returns a JSON-able dict. progress(stage, done=, total=, message=)
def op_versions(args: dict, progress: Callable) -> dict:
    """What the "Check backend" button shows (service.backend_versions)."""
    return service.backend_versions()


def op_info(args: dict, progress: Callable) -> dict:
    """Summary of a PLY/SPZ/.hgs file (the same fields as `hemgs info --json`)."""
    return service.file_info(arg(args, "path", str, op="info"))


def op_load_preview(args: dict, progress: Callable) -> dict:
    """Bake the preview arrays of `path` into the `.npz` at `output` (see hemgs.preview)."""
    from .preview import preview_file, save_preview

    path, output = arg(args, "path", str, op="load_preview"), arg(args, "output", str, op="load_preview")
    gaussians = arg(args, "preview_gaussians", bool, True, "load_preview")
    service.check_outputs(output)
    progress("reading", done=0, total=1)
    preview = preview_file(path)
    progress("writing", done=1, total=1)
    save_preview(preview, output, gaussians)
    for w in preview.meta.get("warnings", []):
        progress("warning", message=f"{path}: {w}")
    return {"output": output, "count": len(preview), "kind": preview.meta.get("kind"),
            "source_format": preview.meta.get("source_format")}


def op_render(args: dict, progress: Callable) -> dict:
    """Render view `view` of `path` (a scene, or a .hgs decoded: views framed on its Gaussians) to
    the PNG `output`."""
    path, output = arg(args, "path", str, op="render"), arg(args, "output", str, op="render")
    view = arg(args, "view", int, 0, "render")
    service.check_outputs(output)
    spec = view_spec({**args, "views": max(view + 1, arg(args, "views", int, 16, "render"))}, "render")
    scene, draw = service.scene_and_draw(path, device_arg(args, "render"), warn(progress))
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

    src, dst = arg(args, "src", str, op="convert"), arg(args, "dst", str, op="convert")
    spz_version = opt(args, "spz_version", int, "convert")
    service.check_outputs(dst)
    progress("reading", done=0, total=2)
    scene = service.load_scene_checked(src, warn(progress))
    progress("writing", done=1, total=2)
    save_scene(scene, dst, **({"spz_version": spz_version} if spz_version else {}))
    progress("writing", done=2, total=2)
    return {"output": dst, "gaussians": len(scene), "bytes": os.path.getsize(dst), "source_bytes": os.path.getsize(src)}


def op_eval(args: dict, progress: Callable) -> dict:
    """PSNR/SSIM of `other`'s renders against `source`'s over the same views, one progress event
    per rendered view; with `output`, the report is also written there as JSON (atomically)."""
    from .io.atomic import write_bytes_atomic

    source, other = arg(args, "source", str, op="eval"), arg(args, "other", str, op="eval")
    output = opt(args, "output", str, "eval")
    device = arg(args, "device", str, "auto", "eval")
    service.check_outputs(output)
    spec = view_spec(args, "eval")
    res = service.compare_to_source(source, lambda: service.draw_file(other, device, warn(progress)), spec,
                                    device, progress)
    res.update(source=source, other=other, source_bytes=os.path.getsize(source), other_bytes=os.path.getsize(other))
    res = finite(res)
    if output:
        write_bytes_atomic(output, json.dumps(res, indent=2).encode("utf-8"))
        res["output"] = output
    return res


# ---- the codec ---------------------------------------------------------------------------------
def _fit_config(args: dict):
    preset = arg(args, "preset", str, "standard", "train")
    if preset not in TRAIN_PRESETS:
        raise InputError(f"train: unknown preset {preset!r}; use one of {', '.join(TRAIN_PRESETS)}")
    values = {}
    for name in ("steps", "warm_steps", "width", "views"):
        if args.get(name) is not None:
            values[name] = arg(args, name, int, op="train")
    lam = arg(args, "lambda", float, ANCHOR_LAMBDA_DEFAULT, "train")
    codec = arg(args, "codec", str, "hemgs", "train")
    switches = {name: arg(args, name, bool, on, "train") for name, on in ANCHOR_SWITCH_DEFAULTS.items()}
    if args.get("lambdas") is not None:
        values["lambdas"] = tuple(sorted(numbers(args, "lambdas", "train")))
    return service.fit_config(preset, lam=lam, codec=codec, **switches, **values)


def op_train(args: dict, progress: Callable) -> dict:
    """Fit a model to `source` and write it to `model` (.safetensors, atomically, at the end): by
    default a variable-rate HEMGS model over `lambdas`; `codec` "hac" or `variable_rate` false: a
    fixed-rate model at `lambda`. `serve`: λ values the model must code, refused before any work
    otherwise; `dry_run`: only check, and answer the λ fields of the model it would make."""
    from .pipeline import check_lambda, recorded_lambda

    source, model = arg(args, "source", str, op="train"), arg(args, "model", str, op="train")
    cfg = _fit_config(args)
    lo, hi = cfg.lambda_range
    default = recorded_lambda(cfg)
    for lam in numbers(args, "serve", "train"):
        check_lambda(default, lam, (lo, hi))
    if arg(args, "dry_run", bool, False, "train"):
        if not os.path.isfile(source):
            raise InputError(f"train: {source}: no such file")
        return {"dry_run": True, "model": model, "codec": cfg.codec, **service.lambda_fields(default, lo, hi)}
    service.check_outputs(model)
    return service.train_model(source, model, cfg, device_arg(args, "train"), progress)


def op_model_info(args: dict, progress: Callable) -> dict:
    """Summary of a trained model file (service.model_summary)."""
    return service.model_summary(arg(args, "path", str, op="model_info"))


def op_compress(args: dict, progress: Callable) -> dict:
    """Anchor mode (`mode` "anchor", the default when a `model` is given): code `model` into the .hgs
    `output` at `lambda` (a variable-rate model: any λ it serves; default and fixed-rate: the model's
    own λ). Direct mode (`mode` "direct", the default otherwise): fit the anchor-free model to
    `source` and code it (op_compress_direct).
    Then decode the written file, measure it against `source` (PSNR/SSIM over the views `hemgs
    eval` uses) and bake its preview (`preview`)."""
    mode = mode_for(opt(args, "mode", str, "compress"), anchor_input="model" in args)
    if mode == "direct":
        return op_compress_direct(args, progress)
    model, output = arg(args, "model", str, op="compress"), arg(args, "output", str, op="compress")
    source = opt(args, "source", str, "compress")
    preview_out = opt(args, "preview", str, "compress")
    preview_gaussians = arg(args, "preview_gaussians", bool, True, "compress")
    lam = opt(args, "lambda", float, "compress")
    device = device_arg(args, "compress")
    spec = view_spec(args, "compress", none_ok=True)
    dry_run = arg(args, "dry_run", bool, False, "compress")
    if not dry_run:
        service.check_outputs(output, preview_out)
    lam = service.model_lambda(model, lam)  # a λ the model does not serve: refused before any work
    if dry_run:
        return {"dry_run": True, "output": output, "model": model, "lambda": lam}
    return finite(service.compress_model_measured(model, output, lam=lam, source=source, spec=spec,
                                                   preview_out=preview_out, device=device, progress=progress,
                                                   preview_gaussians=preview_gaussians))


def op_compress_direct(args: dict, progress: Callable) -> dict:
    """Direct (anchor-free) mode: fit hemgs.direct's entropy model to `source` (a 3DGS PLY/SPZ;
    `iters` fitting iterations, `scene_agnostic`/`ar`/`acs`/`variable_rate` switches), code it at
    `lambda` (DIRECT_LAMBDA_RANGE, default DIRECT_LAMBDA_DEFAULT) into `output`, then measure
    and preview the file as written (decoded again). A fit of the same source file and settings
    is reused from the previous request (`fitted`: false)."""
    op = "compress"
    if args.get("model") is not None:
        raise InputError("compress: mode 'direct' fits the source itself; it takes no 'model' (that is anchor mode)")
    source, output = arg(args, "source", str, op=op), arg(args, "output", str, op=op)
    lam = check_direct_lambda(arg(args, "lambda", float, DIRECT_LAMBDA_DEFAULT, op)
                              if args.get("lambda") is not None else DIRECT_LAMBDA_DEFAULT)
    switches = {name: arg(args, name, bool, DIRECT_SWITCH_DEFAULTS[name], op) for name in DIRECT_SWITCH_DEFAULTS}
    iters = opt(args, "iters", int, op)
    service.check_iters(iters, "compress: iters")
    preview_out = opt(args, "preview", str, op)
    preview_gaussians = arg(args, "preview_gaussians", bool, True, op)
    spec = view_spec(args, op, none_ok=True)
    device = device_arg(args, op)
    check_direct_source(source, asked="mode 'direct'", op="compress: ")
    # true: the cameras.json beside the source; a path: that file; code for those views only
    for_cameras = args.get("for_cameras")
    if for_cameras is not None and not isinstance(for_cameras, (bool, str)):
        raise InputError("compress: for_cameras must be true, false or a cameras file")
    cameras = service.own_views(source, for_cameras or None)
    if arg(args, "dry_run", bool, False, op):
        return {"dry_run": True, "output": output, "mode": "direct", "lambda": lam}
    service.check_outputs(output, preview_out)
    return finite(service.compress_direct_measured(
        source, output, lam=lam, switches=switches, iters=iters, for_cameras=for_cameras, cameras=cameras,
        spec=spec, preview_out=preview_out, device=device, progress=progress,
        preview_gaussians=preview_gaussians))


def op_decompress(args: dict, progress: Callable) -> dict:
    """Decode the .hgs `path` and write its Gaussians to `output` (pipeline.decompress: an anchor
    file baked at `sh_degree`, default 1; a direct file as decoded)."""
    from .pipeline import check_decompress, decompress
    from .progress import STAGE_NAMES

    path, output = arg(args, "path", str, op="decompress"), arg(args, "output", str, op="decompress")
    sh_degree = opt(args, "sh_degree", int, "decompress")
    check_decompress(output, sh_degree)  # say so before decoding, not after
    service.check_outputs(output)
    scene = decompress(path, output, sh_degree=sh_degree, progress=lambda stage, step, total, info: progress(
        STAGE_NAMES.get(stage, stage), done=step, total=total))
    return {"output": output, "mode": scene.meta["mode"], "gaussians": len(scene), "sh_degree": scene.sh_degree,
            "bytes": os.path.getsize(output), "hgs_bytes": os.path.getsize(path), "anchors": scene.meta["anchors"]}


# ---- the add-on's batch (api.compress): the jobs of hemgs batch, run one by one --------------------
def op_batch_plan(args: dict, progress: Callable) -> dict:
    """The jobs of `sources` (files or folders) at `lambdas` (None: the mode's default) in `mode`
    (None: by the source) with `options` (batch.catalogue's) into `output_dir` (None: beside each
    source), every check done before anything is made (batch.catalogue.plan)."""
    from .batch.catalogue import plan

    op = "batch"
    sources = args.get("sources")
    if not isinstance(sources, list) or not sources or not all(isinstance(x, str) for x in sources):
        raise InputError("batch: sources must be a non-empty list of paths")
    options = args.get("options") or {}
    if not isinstance(options, dict):
        raise InputError("batch: options must be an object")
    return {"jobs": plan(sources, numbers(args, "lambdas", op) or None, opt(args, "mode", str, op),
                        opt(args, "output_dir", str, op), options)}


def op_batch_job(args: dict, progress: Callable) -> dict:
    """Run one job of op_batch_plan (batch.job.run_job, as `hemgs batch` does): its result line,
    status "failed" with the error's line when the scene fails."""
    from .batch.job import run_job

    job = args.get("job")
    if not isinstance(job, dict) or not {"key", "source", "mode", "lambda", "output", "options"} <= set(job):
        raise InputError("batch_job: job must be one of batch_plan's jobs")
    return finite(run_job(job, progress))


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
    "batch_plan": op_batch_plan,
    "batch_job": op_batch_job,
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
