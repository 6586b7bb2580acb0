"""Running backend jobs from Blender: a modal operator with a 0.1 s timer in the UI, blocking calls
in background mode (`bpy.app.background`, where no timers or modal operators run).

One job at a time (one worker). The panel reads its state from `state` below, which the modal
operator updates on each timer tick; a crash, an error or a cancel becomes `state.message`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import bpy

from . import preferences
from .worker_client import CANCELLED, DONE, Job, WorkerClient, WorkerError, error_text


@dataclass
class PanelState:
    running: bool = False
    op: str = ""
    stage: str = ""
    fraction: float = 0.0
    message: str = ""
    is_error: bool = False
    last_result: dict = field(default_factory=dict)


state = PanelState()
_client: WorkerClient | None = None
_job: Job | None = None
_on_done: Callable[[dict], None] | None = None


def client(context=None) -> WorkerClient:
    """The worker client for the configured backend Python (restarted when the setting changes)."""
    global _client
    python = preferences.backend_python(context or bpy.context)
    if _client is None or _client.python != python:
        if _client is not None:
            _client.close()
        _client = WorkerClient(python)
    return _client


def run(context, op: str, args: dict, outputs=(), on_done: Callable[[dict], None] | None = None):
    """Start `op`. In background mode: wait, call `on_done` and return the result (raises
    WorkerError). With a UI: return None at once; the modal operator reports progress and calls
    `on_done` on the main thread when the result arrives."""
    global _job, _on_done
    if _job is not None and not _job.finished:
        raise WorkerError("Busy", f"the backend is still running {_job.op}; cancel it first")
    job = client(context).submit(op, args, outputs)
    if bpy.app.background:
        result = job.wait()
        if on_done:
            on_done(result)
        return result
    _job, _on_done = job, on_done
    state.running, state.op, state.stage, state.fraction = True, op, "starting", 0.0
    state.message, state.is_error = "", False
    bpy.ops.hemgs.job_watch("INVOKE_DEFAULT")  # type: ignore[attr-defined]  # registered at run time
    return None


def cancel() -> None:
    if _job is not None and not _job.finished:
        _job.cancel()


def shutdown() -> None:
    global _client
    if _client is not None:
        _client.close()
        _client = None


def _tick() -> bool:
    """Apply new events; True when the job has ended (and its outcome is in `state`)."""
    job = _job
    if job is None:
        return True
    job.poll()
    state.stage = job.stage + (f" ({job.message})" if job.message else "")
    state.fraction = job.fraction
    if not job.finished:
        return False
    state.running = False
    if job.state == DONE and job.result is not None:
        state.fraction, state.last_result = 1.0, job.result
        state.message, state.is_error = f"{job.op} finished", False
        if _on_done is not None:
            try:
                _on_done(job.result)
            except Exception as exc:  # noqa: BLE001 - a failure here is shown, Blender goes on
                state.message, state.is_error = f"{job.op}: {error_text(exc)}", True
    else:
        err = job.error or WorkerError("Error", "unknown")
        state.message, state.is_error = error_text(err), job.state != CANCELLED
    return True


def _redraw(context) -> None:
    for window in context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


class HEMGS_OT_job_watch(bpy.types.Operator):
    """Follow the running backend job (progress, result, errors)"""

    bl_idname = "hemgs.job_watch"
    bl_label = "HEMGS: follow backend job"
    bl_options = {"INTERNAL"}

    _timer = None

    def invoke(self, context, event):
        self._timer = context.window_manager.event_timer_add(0.1, window=context.window)
        context.window_manager.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        ended = _tick()
        _redraw(context)
        if ended:
            context.window_manager.event_timer_remove(self._timer)
            return {"FINISHED"}
        return {"PASS_THROUGH"}


class HEMGS_OT_cancel(bpy.types.Operator):
    """Stop the running backend job (ends the backend process; no output is left behind)"""

    bl_idname = "hemgs.cancel"
    bl_label = "Cancel"

    def execute(self, context):
        cancel()
        return {"FINISHED"}


classes = (HEMGS_OT_job_watch, HEMGS_OT_cancel)


def register():
    for cls in classes:
        bpy.utils.register_class(cls)


def unregister():
    shutdown()
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
