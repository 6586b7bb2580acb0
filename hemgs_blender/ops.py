"""Operators: File > Import of splat files, loading the panel's source, measuring, and the codec
steps that are shown but disabled until the codec lands."""

from __future__ import annotations

import math
from pathlib import Path

import bpy
from bpy_extras.io_utils import ImportHelper

from . import api, jobs
from .worker_client import error_text

CODEC_COMING = "needs the codec (coming)"


def _import(op, context, path: str):
    try:
        obj = api.load_preview(path, context=context)
    except Exception as exc:  # noqa: BLE001 - a bad file is a message, never a crash
        op.report({"ERROR"}, error_text(exc))
        return {"CANCELLED"}
    op.report({"INFO"}, f"Imported {obj['hemgs_count']:,} splats from {Path(path).name}")
    return {"FINISHED"}


class HEMGS_OT_import_ply(bpy.types.Operator, ImportHelper):  # type: ignore[misc]  # stub-only clash
    """Import a 3DGS or Scaffold-GS PLY as a splat preview (colour, opacity and size per point)"""

    bl_idname = "hemgs.import_ply"
    bl_label = "Import 3DGS / Scaffold PLY"
    bl_options = {"REGISTER", "UNDO"}
    filename_ext = ".ply"
    filter_glob: bpy.props.StringProperty(default="*.ply", options={"HIDDEN"})  # type: ignore[valid-type]

    def execute(self, context):
        return _import(self, context, self.filepath)


class HEMGS_OT_import_spz(bpy.types.Operator, ImportHelper):  # type: ignore[misc]  # stub-only clash
    """Import a Niantic SPZ file as a splat preview"""

    bl_idname = "hemgs.import_spz"
    bl_label = "Import SPZ splats"
    bl_options = {"REGISTER", "UNDO"}
    filename_ext = ".spz"
    filter_glob: bpy.props.StringProperty(default="*.spz", options={"HIDDEN"})  # type: ignore[valid-type]

    def execute(self, context):
        return _import(self, context, self.filepath)


class HEMGS_OT_load_source(bpy.types.Operator):
    """Show the source file as a splat preview"""

    bl_idname = "hemgs.load_source"
    bl_label = "Load preview"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return bool(context.scene.hemgs.source_path)

    def execute(self, context):
        return _import(self, context, bpy.path.abspath(context.scene.hemgs.source_path))


class HEMGS_OT_evaluate(bpy.types.Operator):
    """Render the source and the second file from the same views and measure PSNR/SSIM (in the backend)"""

    bl_idname = "hemgs.evaluate"
    bl_label = "Measure"

    @classmethod
    def poll(cls, context):
        p = context.scene.hemgs
        return bool(p.source_path and p.other_path) and not jobs.state.running

    def execute(self, context):
        props = context.scene.hemgs
        args = {"source": bpy.path.abspath(props.source_path), "other": bpy.path.abspath(props.other_path),
                "views": props.views}
        try:
            jobs.run(context, "eval", args, on_done=lambda res: store_results(props, res))
        except Exception as exc:  # noqa: BLE001 - shown in the panel
            jobs.state.message, jobs.state.is_error = error_text(exc), True
            self.report({"ERROR"}, jobs.state.message)
            return {"CANCELLED"}
        return {"FINISHED"}


def store_results(props, res: dict) -> None:
    """Put an eval result into the panel's fields (PSNR None: the renders were identical)."""
    psnr = res.get("psnr")
    if psnr is None or not math.isfinite(psnr):
        props.result_identical, props.result_psnr = True, 0.0
    else:
        props.result_identical, props.result_psnr = False, float(psnr)
    props.result_ssim = float(res.get("ssim") or 0.0)
    props.result_bytes = float(res.get("other_bytes") or 0)
    props.result_source_bytes = float(res.get("source_bytes") or 0)


class _CodecStep(bpy.types.Operator):
    """Shown disabled until the codec lands: poll() says why"""

    bl_options = {"INTERNAL"}

    @classmethod
    def poll(cls, context):
        cls.poll_message_set(CODEC_COMING)
        return False

    def execute(self, context):
        self.report({"ERROR"}, CODEC_COMING)
        return {"CANCELLED"}


class HEMGS_OT_train(_CodecStep):
    """Fit the HEMGS model to the source scene (needs the codec, coming)"""

    bl_idname = "hemgs.train"
    bl_label = "Train"


class HEMGS_OT_load_model(_CodecStep):
    """Load an already trained HEMGS model (needs the codec, coming)"""

    bl_idname = "hemgs.load_model"
    bl_label = "Load model"


class HEMGS_OT_compress(_CodecStep):
    """Write a .hgs file for the chosen λ and measure it (needs the codec, coming)"""

    bl_idname = "hemgs.compress"
    bl_label = "Compress"


def menu_import(self, context):
    self.layout.operator(HEMGS_OT_import_ply.bl_idname, text="3DGS / Scaffold PLY (.ply)")
    self.layout.operator(HEMGS_OT_import_spz.bl_idname, text="Gaussian Splats SPZ (.spz)")


classes = (HEMGS_OT_import_ply, HEMGS_OT_import_spz, HEMGS_OT_load_source, HEMGS_OT_evaluate,
           HEMGS_OT_train, HEMGS_OT_load_model, HEMGS_OT_compress)


def register():
    for cls in classes:
        bpy.utils.register_class(cls)
    bpy.types.TOPBAR_MT_file_import.append(menu_import)


def unregister():
    bpy.types.TOPBAR_MT_file_import.remove(menu_import)
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
