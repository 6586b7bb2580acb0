"""Add-on preferences: which Python runs the `hemgs` backend worker, checking it, setting it up."""

from __future__ import annotations

import threading
from pathlib import Path

import bpy

from . import backend_setup

_report: list[str] = []  # what "Check backend" / "Set up backend" last said, one line each
_setup_thread: threading.Thread | None = None


def user_dir() -> Path:
    """The extension's user folder (venv, preview caches); never the add-on's own folder."""
    return Path(bpy.utils.extension_path_user(__package__, create=True))


def setup_venv() -> Path:
    return user_dir() / "backend-venv"


def get(context):
    return context.preferences.addons[__package__].preferences


def backend_python(context) -> str:
    """The configured Python, else the one "Set up backend" made, else ''."""
    path = get(context).backend_python
    if path:
        return bpy.path.abspath(path)
    made = backend_setup.venv_python(setup_venv())
    return str(made) if made.exists() else ""


class HEMGS_AddonPreferences(bpy.types.AddonPreferences):
    # Extensions load as bl_ext.<repo>.<id>; __package__ is that full name.
    bl_idname = __package__

    backend_python: bpy.props.StringProperty(  # type: ignore[valid-type]
        name="Backend Python",
        description="Python interpreter that has the hemgs backend installed (torch, gsplat). "
        "Empty: the one that \"Set up backend\" creates",
        subtype="FILE_PATH",
        default="",
    )

    def draw(self, context):
        layout = self.layout
        layout.prop(self, "backend_python")
        row = layout.row()
        row.operator("hemgs.check_backend", icon="CHECKMARK")
        row.operator("hemgs.setup_backend", icon="IMPORT")
        if not bpy.app.online_access:
            layout.label(text="Set up needs online access (Preferences > System > Network)", icon="INFO")
        for line in _report[-8:]:
            layout.label(text=line)


class HEMGS_OT_check_backend(bpy.types.Operator):
    """Start the backend and report its torch, CUDA and gsplat versions"""

    bl_idname = "hemgs.check_backend"
    bl_label = "Check backend"

    def execute(self, context):
        from . import jobs

        def done(result: dict) -> None:
            _report[:] = [describe_versions(result)]

        try:
            jobs.run(context, "versions", {}, on_done=done)
        except Exception as exc:  # noqa: BLE001 - any failure is the report
            from .worker_client import error_text

            _report[:] = [error_text(exc)]
            self.report({"ERROR"}, _report[0])
            return {"CANCELLED"}
        return {"FINISHED"}


def describe_versions(v: dict) -> str:
    cuda = f"CUDA {v['cuda']} ({v.get('cuda_device')})" if v.get("cuda") else "no CUDA (CPU)"
    return (f"hemgs {v.get('hemgs')}, torch {v.get('torch') or 'missing'}, {cuda}, "
            f"gsplat {v.get('gsplat') or 'missing'}")


class HEMGS_OT_setup_backend(bpy.types.Operator):
    """Make a venv in the extension's user folder and install the bundled backend wheel with torch."""

    bl_idname = "hemgs.setup_backend"
    bl_label = "Set up backend"
    # The tooltip: one line (a docstring shows as written, line breaks and all).
    bl_description = "Install the backend (with PyTorch, about 1 GB download) into a Python of the extension's own"

    @classmethod
    def poll(cls, context):
        if not bpy.app.online_access:
            cls.poll_message_set("Blender's online access is off (Preferences > System > Network)")
            return False
        return _setup_thread is None or not _setup_thread.is_alive()

    def execute(self, context):
        global _setup_thread
        wheel = backend_setup.bundled_backend_wheel()
        if wheel is None:
            self.report({"ERROR"}, "this build of the extension has no backend wheel in wheels/")
            return {"CANCELLED"}
        venv = setup_venv()
        _report[:] = [f"Setting up the backend in {venv} ..."]

        def work():
            try:
                backend_setup.run_setup(venv, wheel, _report.append)
                _report.append("Backend ready: press Check backend")
            except Exception as exc:  # noqa: BLE001 - shown in the preferences
                _report.append(f"Set-up failed: {exc}")

        _setup_thread = threading.Thread(target=work, daemon=True)
        _setup_thread.start()
        bpy.app.timers.register(_redraw_while_setting_up, first_interval=0.5)
        return {"FINISHED"}


def _redraw_while_setting_up():
    for window in bpy.context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "PREFERENCES":
                area.tag_redraw()
    return 0.5 if _setup_thread is not None and _setup_thread.is_alive() else None


classes = (HEMGS_AddonPreferences, HEMGS_OT_check_backend, HEMGS_OT_setup_backend)


def register():
    for cls in classes:
        bpy.utils.register_class(cls)


def unregister():
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
