"""The one job function, whichever engine runs it: code one scene at one λ into its .hgs (written
atomically by the coders), decode it, measure it, and answer its result line. A job never raises
for a bad scene: the line says status "failed" and the error's one line, so one broken scene
leaves the rest of a batch alone.

Every λ of a scene is coded from one fit: direct mode keeps the process's last fit (service), and
anchor mode here keeps the process's last trained model, so an engine that hands one process a
scene's λ in a row fits it once. The bytes are the same either way (tests/test_batch.py).
"""

from __future__ import annotations

import atexit
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
                 "gaussians", "anchors", "fitted", "fit_seconds", "encode_seconds")
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


def run_job(job: dict) -> dict:
    """Run `job` (catalogue.make_jobs) and answer its result line."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    line = {"key": job["key"], "source": job["source"], "mode": job["mode"], "lambda": job["lambda"],
            "output": job["output"], "options": job["options"], "status": "ok", "error": None,
            "started": _now()}
    warnings: list[str] = []

    def progress(kind: str, message: str | None = None, **_) -> None:  # service's events
        if kind == "warning" and message:
            warnings.append(message)

    try:
        report = (_direct if job["mode"] == "direct" else _anchor)(job, progress)
        line.update({k: finite(report[k]) for k in REPORT_FIELDS if k in report})  # JSON: inf -> null
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


# The last model this process trained (anchor mode): a variable-rate model codes every λ of a scene.
_MODEL: dict = {"key": None, "path": None}


def _model_folder() -> str:
    folder = tempfile.mkdtemp(prefix="hemgs-batch-")
    atexit.register(shutil.rmtree, folder, True)
    return folder


def _anchor(job: dict, progress) -> dict:
    from ..device import resolve_device
    from ..service import compress_model_measured, train_model
    from .catalogue import anchor_fit_config

    opts, device = job["options"], resolve_device(job["options"]["device"])
    cfg = anchor_fit_config(opts, job["lambda"])
    st = os.stat(job["source"])
    # A variable-rate model serves every λ; a fixed-rate one only its own.
    key = (job["source"], st.st_mtime_ns, st.st_size, opts["preset"], opts.get("steps"), opts.get("warm_steps"),
           None if cfg.variable_rate else job["lambda"], str(device))
    fitted = _MODEL["key"] != key
    if fitted:
        _MODEL.update(key=None, path=_MODEL["path"] or os.path.join(_model_folder(), "model.safetensors"))
        train_model(job["source"], _MODEL["path"], cfg, device, progress)
        _MODEL["key"] = key
    out = compress_model_measured(_MODEL["path"], job["output"], lam=job["lambda"], source=job["source"],
                                  spec=_spec(opts), preview_out=None, device=device, progress=progress)
    out["fitted"] = fitted
    return out
