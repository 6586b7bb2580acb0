"""The one job function, whichever engine runs it: code one scene at one λ into its .hgs (written
atomically by the coders), decode it, measure it, and answer its result line. A job never raises
for a bad scene: the line says status "failed" and the error's one line, so one broken scene
leaves the rest of a batch alone.

Every λ of a scene is coded from one fit: direct mode keeps the process's last fit (service), and
anchor mode here keeps the process's last trained model, so an engine that hands one process a
scene's λ in a row fits it once. The bytes are the same either way (tests/test_batch.py). An anchor
job with a `model` path keeps its model there, and reuses one found there that serves its λ.

The CLI's engines and the add-on's batch (the worker's "batch_job") both run `run_job`.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import tempfile
import time
from datetime import datetime, timezone

from ..errors import HemgsError, one_line
from ..protocol import finite

# What a result line keeps of a coding report (service.compress_*_measured).
REPORT_FIELDS = ("bytes", "source_bytes", "ratio", "psnr", "psnr_of_mean_mse", "worst_psnr", "ssim", "views",
                 "gaussians", "anchors", "fitted", "fit_seconds", "encode_seconds", "sections")
# One thread per job: as many jobs as cores run side by side, and the bytes do not depend on
# the thread count. PASSIVE: idle OpenMP threads must not spin on a shared machine.
PROCESS_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HEMGS_THREADS": "1"}


def setup_process() -> None:
    """A job process's set-up (the engines call it before any job): one torch thread."""
    os.environ.update(PROCESS_ENV)  # for libraries that read them later; OpenMP read them at start
    import torch

    torch.set_num_threads(1)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_job(job: dict, progress=None) -> dict:
    """Run `job` (catalogue.make_jobs) and answer its result line; `progress`, when given,
    receives service's events (stage, done=, total=, message=, fraction=) as they come."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    line = {"key": job["key"], "source": job["source"], "mode": job["mode"], "lambda": job["lambda"],
            "output": job["output"], "model": job.get("model"), "options": job["options"], "status": "ok",
            "error": None, "started": _now()}
    warnings: list[str] = []
    forward = progress

    def progress(kind: str, message: str | None = None, **fields) -> None:  # service's events
        if kind == "warning" and message:
            warnings.append(message)
        if forward is not None:
            forward(kind, message=message, **fields)

    try:
        report = (_direct if job["mode"] == "direct" else _anchor)(job, progress)
        line.update({k: finite(report.get(k)) for k in REPORT_FIELDS})  # JSON: inf -> null; absent: null
    except Exception as exc:  # noqa: BLE001 - the job's failure is its line, not the batch's
        known = isinstance(exc, (HemgsError, OSError))
        line.update(status="failed", error=one_line(exc) if known else f"{exc.__class__.__name__}: {one_line(exc)}")
    # cpu_seconds well under seconds: the job waited for a core (other work on the machine).
    line.update(warnings=warnings, seconds=round(time.perf_counter() - t0, 3),
                cpu_seconds=round(time.process_time() - cpu0, 3), finished=_now(),
                host=socket.gethostname(), pid=os.getpid())
    return line


def _spec(opts: dict):
    from ..service import ViewSpec

    return ViewSpec(n=opts["views"], width=opts["view_size"])


def _direct(job: dict, progress) -> dict:
    from ..device import resolve_device
    from ..modes import DIRECT_SWITCH_DEFAULTS
    from ..service import compress_direct_measured

    opts = job["options"]
    return compress_direct_measured(
        job["source"], job["output"], lam=job["lambda"], switches={k: opts[k] for k in DIRECT_SWITCH_DEFAULTS},
        iters=opts["iters"], for_cameras=None, cameras=None, spec=_spec(opts), preview_out=None,
        device=resolve_device(opts["device"]), progress=progress)


# The last model this process trained or found kept (anchor mode): a variable-rate model codes
# every λ of a scene.
_MODEL: dict = {"key": None, "path": None}
_TEMPORARY: list[str] = []  # this process's file for models that are not kept


def _temporary_model() -> str:
    if not _TEMPORARY:
        folder = tempfile.mkdtemp(prefix="hemgs-batch-")
        atexit.register(shutil.rmtree, folder, True)
        _TEMPORARY.append(os.path.join(folder, "model.safetensors"))
    return _TEMPORARY[0]


def _serves(model: str, cfg, lam: float) -> bool:
    """Whether the model file at `model` is of the kind `cfg` asks for and codes at `lam`."""
    from ..service import model_summary

    try:
        info = model_summary(model)
    except (HemgsError, OSError):
        return False  # unreadable: train it again
    lo, hi = info["lambda_serves"]
    return (info["codec"] == cfg.codec and bool((info["switches"] or {}).get("variable_rate")) == cfg.variable
            and lo * (1 - 1e-6) <= lam <= hi * (1 + 1e-6))


def _anchor(job: dict, progress) -> dict:
    from ..device import resolve_device
    from ..service import compress_model_measured, train_model
    from .catalogue import anchor_fit_config

    opts, device = job["options"], resolve_device(job["options"]["device"])
    cfg = anchor_fit_config(opts, job["lambda"])
    kept = job.get("model")
    st = os.stat(job["source"])
    # A variable-rate model serves every λ; a fixed-rate one only its own.
    training = {k: v for k, v in opts.items() if k not in ("views", "view_size")}  # those only measure
    key = (job["source"], st.st_mtime_ns, st.st_size, json.dumps(training, sort_keys=True),
           None if cfg.variable else job["lambda"], str(device), kept)
    if kept and _MODEL["key"] != key and os.path.isfile(kept) and _serves(kept, cfg, job["lambda"]):
        _MODEL.update(key=key, path=kept)  # a model kept by an earlier run
    fitted = _MODEL["key"] != key
    if fitted:
        _MODEL.update(key=None, path=kept or _temporary_model())
        train_model(job["source"], _MODEL["path"], cfg, device, progress)
        _MODEL["key"] = key
    out = compress_model_measured(_MODEL["path"], job["output"], lam=job["lambda"], source=job["source"],
                                  spec=_spec(opts), preview_out=None, device=device, progress=progress)
    out["fitted"] = fitted
    return out
