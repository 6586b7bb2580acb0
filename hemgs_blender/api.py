"""Python API for scripts and batch work (Blender's Python console, `blender -b -P script.py`).

Every call blocks until it is done and returns its result, with or without a UI:

    from bl_ext.user_default.hemgs_blender import api     # the extension's module name
    obj = api.load_preview("/data/scene.ply")               # a preview object in the scene
    api.info("/data/scene.ply")                             # {'gaussians': ..., 'sh_degree': ...}
    api.evaluate("/data/scene.ply", "/data/scene.spz")      # {'psnr': ..., 'ssim': ...}

    model = api.train("/data/scene.ply", preset="quick")["model"]           # variable-rate HEMGS
    api.compress_model(model, "/tmp/scene.hgs", source="/data/scene.ply", lam=2e-3)  # size, ratio, PSNR, SSIM
    api.compress(["/data/a.ply", "/data/b.ply"], lambdas=[1e-3, 4e-3], output_dir="/tmp/out", mode="anchor")
    api.compress_direct("/data/scene.ply", "/tmp/scene.direct.hgs", lam=1.0)  # anchor-free: no training
    api.compress(["/data/a.ply"], lambdas=[0.5, 2.0], mode="direct", output_dir="/tmp/out")
    api.decompress("/tmp/scene.hgs", "/tmp/scene_decoded.ply")

`load_preview` and `info` read the file in Blender's own Python (the extension ships the numpy-only
readers); a .hgs preview, `evaluate`, `train`, `compress` and `decompress` need torch, so they run
in the backend worker (preferences: Backend Python).

`train` makes a variable-rate HEMGS model by default: one model codes any λ of its trained range
(1e-3..4e-3, widened by the backend's margin), so `compress` trains one model per file and codes
every λ from it. A fixed-rate model (`codec="hac"` or `variable_rate=False`) codes only the λ it
was trained at; `compress` then trains one per (file, λ). `compress` runs `hemgs batch`'s jobs
(docs/batch.md) one by one in the worker.

Direct (anchor-free) mode (`mode="direct"`, `compress_direct`) has no model file: the worker fits
the entropy model to the source's own Gaussians (seconds to a minute) and codes them; λ is in its
own units, 1/64 to 16 (default 1; larger: smaller file). The worker keeps its last fit, so coding
the same source at several λ fits once.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Iterable

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
    """The preview arrays (hemgs.preview.SplatPreview) of a 3DGS/Scaffold PLY, SPZ, glTF, SOG or
    .hgs file.

    Read in Blender's Python when the bundled readers import; otherwise, and for the formats it
    cannot read (.hgs: the decoder is torch; SOG: its images need Pillow), the worker bakes them."""
    try:
        from hemgs.io import detect_format
        from hemgs.io.formats import get
        from hemgs.preview import preview_file
    except ImportError:
        return _read_preview_via_worker(path)
    fmt = detect_format(path)
    if get(fmt).backend:
        return _read_preview_via_worker(path)
    return preview_file(path)


def preview_cache_path(tag: str = "preview") -> Path:
    """A fresh .npz name in the extension's user folder, for previews the worker bakes."""
    out = preferences.user_dir() / "previews" / f"{tag}-{os.getpid()}-{time.monotonic_ns()}.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def preview_request() -> dict:
    """What a worker-baked preview holds: the Gaussians' shape and SH only where native splats draw
    them (Blender 5.3+); a point-cloud preview needs the positions, colours and sizes alone."""
    from .preview_object import has_gaussian_splat_type

    return {"preview_gaussians": has_gaussian_splat_type()}


def _read_preview_via_worker(path):
    out = preview_cache_path()
    res = _worker().run("load_preview", {"path": str(path), "output": str(out), **preview_request()},
                        outputs=[str(out)])
    return preview_from_npz(out, path, res.get("kind") or "decoded", res.get("source_format") or "hgs")


def preview_from_npz(npz: str | os.PathLike, path: str | os.PathLike, kind: str = "decoded",
                     source_format: str = "hgs"):
    """The preview the worker baked into `npz` (deleted after reading) for the file `path`, with
    that file's description (what the preview object records and is named by)."""
    from hemgs.preview import load_preview_npz

    try:
        preview = load_preview_npz(npz)
    finally:
        Path(npz).unlink(missing_ok=True)
    preview.meta = {"path": str(path), "kind": kind, "source_format": source_format}
    return preview


def load_preview(path: str | os.PathLike, name: str | None = None, context=None, stand_up: bool = True):
    """Import `path` as a splat-preview object in the active collection and return the object,
    named "<stem>" ("<stem> (decoded)" for a .hgs file) unless `name` is given. `stand_up`
    (default): rotate the object -90° about X, so the y-down 3DGS scene stands up in Blender.

    Raises the readers' error (hemgs.errors.InputError / FormatError) for a bad file."""
    from .preview_object import build_preview_object

    context = context or bpy.context
    preview = read_preview(path)
    preview.meta["path"] = str(path)
    return build_preview_object(context, preview, name, stand_up=stand_up)


def check_outputs(*paths: str | os.PathLike) -> None:
    """Refuse, before any work, outputs that cannot be written (a missing folder, a folder...):
    WorkerError "InputError" with hemgs.io.atomic.check_output_path's one line. Checked here where
    Blender's Python has the bundled readers; the worker checks each request's outputs anyway."""
    from .worker_client import WorkerError

    try:
        from hemgs.errors import InputError
        from hemgs.io.atomic import check_output_path
    except ImportError:
        return
    for path in paths:
        try:
            check_output_path(path)
        except InputError as exc:
            raise WorkerError("InputError", str(exc)) from None


def info(path: str | os.PathLike) -> dict:
    """The file's summary, as `hemgs info --json`: format, bytes, Gaussians, SH degree, bounds."""
    try:
        from hemgs.service import file_info
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


# ---- the codec ---------------------------------------------------------------------------------
def _writable_folder(folder: Path, explicit: bool = False, make: bool = True) -> Path:
    """`folder` (made if `explicit`: the caller named it) when we may write there, else the
    extension's user folder (e.g. a source among read-only data). `make` False: only name it (a
    batch makes its folders once everything is checked)."""
    if explicit:
        if make:
            folder.mkdir(parents=True, exist_ok=True)
        return folder
    if folder.is_dir() and os.access(folder, os.W_OK):
        return folder
    out = preferences.user_dir() / "models"
    if make:
        out.mkdir(parents=True, exist_ok=True)
    return out


def lambda_tag(lam: float) -> str:
    """λ in file names, 3 significant digits: 1e-3 -> 'lam1e-03', 2.5e-3 -> 'lam2.5e-03'."""
    mantissa, exponent = f"{lam:.2e}".split("e")
    return f"lam{mantissa.rstrip('0').rstrip('.')}e{exponent}"


def default_model_path(source: str | os.PathLike, lam: float | None,
                       folder: str | os.PathLike | None = None, make: bool = True) -> Path:
    """Where a model trained on `source` goes: `<stem>.<lamtag>.safetensors` for a fixed-rate model
    at λ, `<stem>.hemgs.safetensors` for a variable-rate one (`lam` None), beside the source (or in
    `folder`; in the user folder when the source's folder is read-only)."""
    src = Path(source)
    tag = "hemgs" if lam is None else lambda_tag(lam)
    return _writable_folder(Path(folder or src.parent), bool(folder), make) / f"{src.stem}.{tag}.safetensors"


def default_hgs_path(source: str | os.PathLike, lam: float, folder: str | os.PathLike | None = None,
                     mode: str = "anchor", make: bool = True) -> Path:
    """`<stem>.<lamtag>.hgs` (direct mode: `<stem>.direct.<lamtag>.hgs`, its λ being in other units)."""
    src = Path(source)
    tag = lambda_tag(lam) if mode == "anchor" else f"{mode}.{lambda_tag(lam)}"
    return _writable_folder(Path(folder or src.parent), bool(folder), make) / f"{src.stem}.{tag}.hgs"


def train(source: str | os.PathLike, model: str | os.PathLike | None = None, lam: float = 1e-3,
          preset: str = "quick", steps: int | None = None, warm_steps: int | None = None,
          width: int | None = None, views: int | None = None, device: str = "auto",
          codec: str = "hemgs", variable_rate: bool = True, scene_agnostic: bool = True, ar: bool = True,
          acs: bool = True, lambdas: Iterable[float] | None = None, serve: Iterable[float] | None = None,
          dry_run: bool = False, timeout: float | None = None) -> dict:
    """Fit a model to `source` and write it to `model` (default: `default_model_path`).

    Default: a variable-rate HEMGS model, trained on `lambdas` (default the backend's 1e-3..4e-3),
    that codes any λ of that range. `codec="hac"` or `variable_rate=False`: a fixed-rate model at
    `lam`. `scene_agnostic`, `ar`, `acs` switch HEMGS's parts. `preset` "quick" or "standard" sets
    the training budget; steps/warm_steps/width/views override it. `serve`: λ values the model
    must code (refused before training otherwise). `dry_run`: only check all that in the backend
    and return the λ fields of the model it would make. Returns the worker's result (model, codec,
    lambda_min/lambda_max, lambda_serves, anchors, seconds, ...); raises WorkerError on a bad
    input or a crash."""
    variable = codec == "hemgs" and variable_rate
    model = str(model or default_model_path(source, None if variable else lam))
    args: dict = {"source": str(source), "model": model, "lambda": float(lam), "preset": preset, "device": device,
                  "codec": codec, "variable_rate": bool(variable_rate), "scene_agnostic": bool(scene_agnostic),
                  "ar": bool(ar), "acs": bool(acs)}
    if lambdas is not None:
        args["lambdas"] = [float(v) for v in lambdas]
    if serve is not None:
        args["serve"] = [float(v) for v in serve]
    for name, value in (("steps", steps), ("warm_steps", warm_steps), ("width", width), ("views", views)):
        if value is not None:
            args[name] = int(value)
    if dry_run:
        return _worker().run("train", {**args, "dry_run": True}, timeout=timeout)
    return _worker().run("train", args, outputs=[model], timeout=timeout)


def model_info(path: str | os.PathLike) -> dict:
    """A trained model's codec, λ range (lambda_min/lambda_max: trained; lambda_serves: codable),
    anchors and source."""
    return _worker().run("model_info", {"path": str(path)})


def compress_model(model: str | os.PathLike, output: str | os.PathLike, source: str | os.PathLike | None = None,
                   views: int = 16, width: int = 256, preview: str | os.PathLike | None = None,
                   lam: float | None = None, device: str = "auto", timeout: float | None = None) -> dict:
    """Code the trained `model` into the .hgs `output` at `lam` (any λ a variable-rate model serves;
    None: the model's own λ, the only one a fixed-rate model codes). With `source`: ratio, and PSNR/SSIM of the decoded file against the source
    over `views` views at `width` (0 views: none). With `preview`, the decoded scene's preview .npz."""
    args: dict = {"model": str(model), "output": str(output), "views": int(views), "width": int(width),
                  "device": device}
    outputs = [str(output)]
    if source is not None:
        args["source"] = str(source)
    if preview is not None:
        args["preview"] = str(preview)
        outputs.append(str(preview))
    if lam is not None:
        args["lambda"] = float(lam)
    return _worker().run("compress", args, outputs=outputs, timeout=timeout)


def compress_direct(source: str | os.PathLike, output: str | os.PathLike, lam: float = 1.0, views: int = 16,
                    width: int = 256, preview: str | os.PathLike | None = None, iters: int | None = None,
                    scene_agnostic: bool = False, ar: bool = False, acs: bool = True, variable_rate: bool = True,
                    device: str = "auto", dry_run: bool = False, timeout: float | None = None) -> dict:
    """Direct (anchor-free) mode: fit the entropy model to `source` (a 3DGS PLY/SPZ; `iters`
    iterations, default the backend's) and code its Gaussians at `lam` (1/64..16) into `output`.
    The part switches default to the backend's direct-mode defaults (prior and context off).
    Measured against the source over `views` views at `width` (0 views: sizes only); with
    `preview`, the decoded scene's preview .npz. `dry_run`: only check the arguments in the backend.
    Returns the worker's result (output, bytes, ratio, psnr, ssim, gaussians, fitted, fit_seconds,
    ...); raises WorkerError on bad input."""
    args: dict = {"mode": "direct", "source": str(source), "output": str(output), "lambda": float(lam),
                  "views": int(views), "width": int(width), "device": device, "scene_agnostic": bool(scene_agnostic),
                  "ar": bool(ar), "acs": bool(acs), "variable_rate": bool(variable_rate)}
    outputs = [str(output)]
    if preview is not None:
        args["preview"] = str(preview)
        outputs.append(str(preview))
    if iters is not None:
        args["iters"] = int(iters)
    if dry_run:
        return _worker().run("compress", {**args, "dry_run": True}, timeout=timeout)
    return _worker().run("compress", args, outputs=outputs, timeout=timeout)


def compress(sources: str | os.PathLike | Iterable[str | os.PathLike],
             lambdas: float | Iterable[float] | None = None, output_dir: str | os.PathLike | None = None,
             mode: str = "direct", eval_views: int = 16, eval_width: int = 256, reuse_models: bool = True,
             on_result: Callable[[dict], None] | None = None, report: Callable[[str], None] | None = print,
             **options) -> list[dict]:
    """Batch: every scene of `sources` (files, or folders of .ply/.spz) at every λ of `lambdas` (default:
    the mode's) -> `<stem>.<mode>.lam<λ>.hgs` in `output_dir` (default: beside each source), each
    measured against its source over `eval_views` views at `eval_width` pixels (0 views: sizes only).
    The jobs are `hemgs batch`'s, run one after another in the API's worker by the same job
    function (hemgs.batch.job.run_job).

    `mode="direct"` (default; the better mode at every rate measured so far, docs/anchor-model.md):
    each file is fitted once (the worker keeps its fit) and coded at every λ (direct units). Options:
    iters, scene_agnostic, ar, acs, variable_rate, device.

    `mode="anchor"`: one variable-rate model per file (or, with codec="hac" or variable_rate=False,
    one fixed-rate model per (file, λ)) is trained and codes its λ. Options: preset (default "quick"),
    steps, warm_steps, width, train_views, codec, scene_agnostic, ar, acs, variable_rate, device. With
    `reuse_models` the models are kept beside the .hgs files (`<stem>.anchor[.lam<λ>].model.safetensors`)
    and a later call reuses one that serves its λ; without, they are temporary.

    Returns one dict per job (hemgs batch's result line): source, lambda, mode, output, status ("ok"
    or "failed" with `error`, the scene's one-line message; the other scenes still run), bytes,
    source_bytes, ratio, psnr, psnr_of_mean_mse, worst_psnr, ssim, sections, fitted (this job fitted
    or trained), model (a kept model), seconds. `on_result` is called with each as it is done, and
    `report` (default print; None: silent) gets one line per job and the stages of a slow one.

    Everything is checked first, in the backend: a bad λ or option, a missing source or an output
    that cannot be written raises WorkerError before anything is trained, written or made
    (`output_dir` included)."""
    if mode not in ("anchor", "direct"):
        raise ValueError(f"unknown mode {mode!r}: use 'anchor' or 'direct'")
    srcs = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    lams = None if lambdas is None else [float(lambdas)] if isinstance(lambdas, (int, float)) else [
        float(x) for x in lambdas]
    if {"views", "view_size"} & set(options):
        raise TypeError("compress: the measured views are eval_views and eval_width; anchor mode's training "
                        "views are train_views")
    options = {**options, "views": int(eval_views), "view_size": int(eval_width)}
    if mode == "anchor":
        options["keep_models"] = bool(reuse_models)
    plan = _worker().run("batch_plan", {"sources": [str(x) for x in srcs], "lambdas": lams, "mode": mode,
                                        "output_dir": None if output_dir is None else str(output_dir),
                                        "options": options})
    jobs, rows = plan["jobs"], []
    for i, job in enumerate(jobs, 1):
        row = _run_job(job, f"[{i}/{len(jobs)}] {job['key']}", report)
        rows.append(row)
        if on_result is not None:
            on_result(row)
    return rows


def _run_job(job: dict, name: str, report: Callable[[str], None] | None) -> dict:
    """One batch job in the worker, blocking; `report` gets its stages (at most every 5 s) and its result."""
    running = _worker().submit("batch_job", {"job": job}, outputs=[job["output"]])
    said = 0.0
    while not running.finished:
        running.poll()
        if report is not None and time.monotonic() - said > 5 and running.stage != "starting":
            report(f"{name}: {running.message or running.stage} {100 * running.fraction:.0f}%")
            said = time.monotonic()
        time.sleep(0.1)
    row = running.wait()
    if report is not None:
        psnr = "" if row.get("psnr") is None else f", {row['psnr_of_mean_mse']:.2f} dB"
        report(f"{name}: " + (f"failed: {row['error']}" if row["status"] != "ok"
                              else f"{row['bytes']:,} B, {row['ratio']:.1f}x{psnr}, {row['seconds']:.0f} s"))
    return row


def decompress(path: str | os.PathLike, output: str | os.PathLike, sh_degree: int | None = None,
               timeout: float | None = None) -> dict:
    """Decode the .hgs `path` to a 3DGS `output` (.ply or .spz). An anchor file's colours are baked
    to SH `sh_degree` (default 1); a direct file keeps its decoded Gaussians (a lower `sh_degree`
    truncates their SH)."""
    args: dict = {"path": str(path), "output": str(output)}
    if sh_degree is not None:
        args["sh_degree"] = int(sh_degree)
    return _worker().run("decompress", args, outputs=[str(output)], timeout=timeout)


def backend_versions() -> dict:
    """hemgs, torch, CUDA and gsplat versions of the configured backend."""
    return _worker().run("versions", {})


def shutdown() -> None:
    """Stop the API's worker (it is also stopped when the extension is disabled)."""
    global _client
    if _client is not None:
        _client.close()
        _client = None
