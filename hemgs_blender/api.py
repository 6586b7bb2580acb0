"""Python API for scripts and batch work (Blender's Python console, `blender -b -P script.py`).

Every call blocks until it is done and returns its result, with or without a UI:

    from bl_ext.user_default.hemgs_blender import api     # the extension's module name
    obj = api.load_preview("/data/scene.ply")               # a preview object in the scene
    api.info("/data/scene.ply")                             # {'gaussians': ..., 'sh_degree': ...}
    api.evaluate("/data/scene.ply", "/data/scene.spz")      # {'psnr': ..., 'ssim': ...}

`load_preview` and `info` read the file in Blender's own Python (the extension ships the numpy-only
readers); `evaluate` renders, so it runs in the backend worker (preferences: Backend Python).
`compress` / `decompress` / `train` come with the codec.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import bpy

from . import preferences
from .worker_client import WorkerClient

_client: WorkerClient | None = None


def _worker() -> WorkerClient:
    """A worker of the API's own, apart from the panel's, so a script never waits on a UI job."""
    global _client
    python = preferences.backend_python(bpy.context)
    if _client is None or _client.python != python:
        if _client is not None:
            _client.close()
        _client = WorkerClient(python)
    return _client


def read_preview(path: str | os.PathLike):
    """The preview arrays (hemgs.preview.SplatPreview) of a 3DGS/Scaffold PLY or SPZ file.

    Read in Blender's Python when the bundled readers import; otherwise the worker bakes them."""
    try:
        from hemgs.preview import preview_file
    except ImportError:
        return _read_preview_via_worker(path)
    return preview_file(path)


def _read_preview_via_worker(path):
    out = preferences.user_dir() / "previews" / f"preview-{os.getpid()}-{time.monotonic_ns()}.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        _worker().run("load_preview", {"path": str(path), "output": str(out)}, outputs=[str(out)])
        from hemgs.preview import load_preview_npz

        return load_preview_npz(out)
    finally:
        out.unlink(missing_ok=True)


def load_preview(path: str | os.PathLike, name: str | None = None, context=None):
    """Import `path` as a splat-preview object in the active collection and return the object.

    Raises the readers' error (hemgs.errors.InputError / FormatError) for a bad file."""
    from .preview_object import build_preview_object

    context = context or bpy.context
    preview = read_preview(path)
    return build_preview_object(context, preview, name or Path(path).stem)


def info(path: str | os.PathLike) -> dict:
    """The file's summary, as `hemgs info --json`: format, bytes, Gaussians, SH degree, bounds."""
    try:
        from hemgs.cli import file_info
    except ImportError:
        return _worker().run("info", {"path": str(path)})
    return file_info(str(path))


def evaluate(source: str | os.PathLike, other: str | os.PathLike, views: int = 16, width: int = 256,
             output: str | os.PathLike | None = None, timeout: float | None = None) -> dict:
    """PSNR/SSIM of `other`'s renders against `source`'s over `views` views (in the worker).

    With `output`, the JSON report is also written there (atomically). Raises WorkerError when the
    backend reports an error, crashes or is missing."""
    args: dict = {"source": str(source), "other": str(other), "views": int(views), "width": int(width)}
    if output is not None:
        args["output"] = str(output)
    return _worker().run("eval", args, outputs=[str(output)] if output else [], timeout=timeout)


def convert(src: str | os.PathLike, dst: str | os.PathLike, spz_version: int | None = None) -> dict:
    """Convert between PLY and SPZ (by the extension of `dst`), in the worker."""
    args: dict = {"src": str(src), "dst": str(dst)}
    if spz_version:
        args["spz_version"] = int(spz_version)
    return _worker().run("convert", args, outputs=[str(dst)])


def backend_versions() -> dict:
    """hemgs, torch, CUDA and gsplat versions of the configured backend."""
    return _worker().run("versions", {})


def shutdown() -> None:
    """Stop the API's worker (it is also stopped when the extension is disabled)."""
    global _client
    if _client is not None:
        _client.close()
        _client = None
