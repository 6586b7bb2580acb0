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

from . import __version__
from .errors import HemgsError, InputError

PROTOCOL = 1
# Operations the codec will add; until it lands they are answered with a clear error event.
PLANNED_OPS = ("train", "compress", "decompress")


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
    progress("reading", done=0, total=1)
    preview = preview_file(path)
    progress("writing", done=1, total=1)
    save_preview(preview, output)
    for w in preview.meta.get("warnings", []):
        progress("warning", message=f"{path}: {w}")
    return {"output": output, "count": len(preview), "kind": preview.meta.get("kind")}


def _views(scene, args: dict, op: str, source_path: str | None):
    from .cameras import load_cameras, scene_views

    width = _arg(args, "width", int, 256, op)
    height = _arg(args, "height", int, width, op)
    n = _arg(args, "views", int, 16, op)
    if width < 1 or height < 1 or n < 1:
        raise InputError(f"{op}: width, height and views must be at least 1")
    cameras = _arg(args, "cameras", str, None, op) if args.get("cameras") is not None else None
    if cameras:
        return load_cameras(cameras)[:n]
    return scene_views(scene, source_path, n=n, width=width, height=height)


def op_render(args: dict, progress: Callable) -> dict:
    """Render view `view` of `path` to the PNG `output`."""
    from .cli import _save_png
    from .render import render

    path, output = _arg(args, "path", str, op="render"), _arg(args, "output", str, op="render")
    view = _arg(args, "view", int, 0, "render")
    scene = _load(path, progress)
    cams = _views(scene, {**args, "views": max(view + 1, _arg(args, "views", int, 16, "render"))}, "render", path)
    if not 0 <= view < len(cams):
        raise InputError(f"render: view {view} is out of range: this scene has views 0..{len(cams) - 1}")
    progress("rendering", done=0, total=1)
    image = render(scene, cams[view], device=_arg(args, "device", str, "auto", "render"))
    _save_png(image, output)
    progress("rendering", done=1, total=1)
    return {"output": output, "width": cams[view].width, "height": cams[view].height, "view": view}


def op_convert(args: dict, progress: Callable) -> dict:
    """Convert between PLY and SPZ, by the extension of `dst`."""
    from .io import save_scene

    src, dst = _arg(args, "src", str, op="convert"), _arg(args, "dst", str, op="convert")
    spz_version = _arg(args, "spz_version", int, None, "convert") if args.get("spz_version") is not None else None
    progress("reading", done=0, total=2)
    scene = _load(src, progress)
    progress("writing", done=1, total=2)
    save_scene(scene, dst, **({"spz_version": spz_version} if spz_version else {}))
    progress("writing", done=2, total=2)
    return {"output": dst, "gaussians": len(scene), "bytes": os.path.getsize(dst), "source_bytes": os.path.getsize(src)}


def op_eval(args: dict, progress: Callable) -> dict:
    """PSNR/SSIM of `other`'s renders against `source`'s over the same views, one progress event
    per rendered view; with `output`, the report is also written there as JSON (atomically)."""
    from .io.atomic import write_bytes_atomic
    from .metrics import compare_images
    from .render import render

    source, other = _arg(args, "source", str, op="eval"), _arg(args, "other", str, op="eval")
    output = _arg(args, "output", str, None, "eval") if args.get("output") is not None else None
    device = _arg(args, "device", str, "auto", "eval")
    a, b = _load(source, progress), _load(other, progress)
    cams = _views(a, args, "eval", source)
    total = 2 * len(cams)
    refs, tests = [], []
    for i, cam in enumerate(cams):
        progress("rendering", done=2 * i, total=total, message=f"view {i + 1} of {len(cams)}")
        refs.append(render(a, cam, device=device))
        tests.append(render(b, cam, device=device))
    progress("rendering", done=total, total=total)
    res = compare_images(refs, tests)
    res.update(source=source, other=other, source_bytes=os.path.getsize(source),
               other_bytes=os.path.getsize(other), width=cams[0].width, height=cams[0].height)
    res = _finite(res)
    if output:
        write_bytes_atomic(output, json.dumps(res, indent=2).encode("utf-8"))
        res["output"] = output
    return res


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
}


# ---- the loop ------------------------------------------------------------------------------
def handle(request: dict, emit: Emitter) -> None:
    """Run one request, emitting its progress events and exactly one result or error event."""
    rid = request.get("id")
    op = request.get("op")
    last = [0.0]

    def progress(stage: str, done: int | None = None, total: int | None = None, message: str | None = None):
        event: dict[str, Any] = {"id": rid, "event": "progress", "stage": stage}
        if done is not None:
            event.update(done=int(done), total=int(total or 0))
        if message:
            event["message"] = message
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
               "ops": sorted(OPS), "planned": list(PLANNED_OPS)})
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
