"""The "HEMGS" tab of the 3D view's sidebar."""

from __future__ import annotations

from pathlib import Path

import bpy

from . import jobs, preferences, props


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return str(n)


class HEMGS_PT_main(bpy.types.Panel):
    bl_label = "HEMGS"
    bl_idname = "HEMGS_PT_main"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "HEMGS"

    def draw(self, context):
        layout = self.layout
        p = context.scene.hemgs
        python = preferences.backend_python(context)
        if python:
            layout.label(text=f"Backend: {python}", icon="CHECKMARK")
        else:
            layout.label(text="Set up the backend in the preferences", icon="INFO")

        col = layout.column(align=True)
        col.prop(p, "source_path")
        col.prop(p, "stand_up")
        col.operator("hemgs.load_source", icon="POINTCLOUD_DATA")
        self.draw_solid_hint(layout, context)
        layout.prop(p, "mode")

        if props.is_direct(p):
            self.draw_direct(layout, p)
        else:
            self.draw_anchor(layout, p)
        self.draw_status(layout, p)

    @staticmethod
    def draw_solid_hint(layout, context):
        """Solid mode shows the splats' colours with its "Attribute" colour type: a button for
        this view, rather than changing the user's shading behind their back."""
        shading = getattr(context.space_data, "shading", None)
        if shading is not None and shading.type == "SOLID" and shading.color_type != "VERTEX":
            row = layout.row(align=True)
            row.label(text="Splat colours in Solid view:")
            row.prop_enum(shading, "color_type", "VERTEX")

    def draw_anchor(self, layout, p):
        """Anchor mode: train (or load) a model, then code it at a λ it serves."""
        box = layout.box()
        box.label(text="Train a model", icon="SETTINGS")
        box.prop(p, "train_codec")
        hemgs = p.train_codec == "HEMGS"
        if hemgs:
            box.prop(p, "train_variable_rate")
            col = box.column(align=True)
            col.prop(p, "train_scene_agnostic")
            col.prop(p, "train_ar")
            sub = col.row()
            sub.enabled = p.train_ar  # context selection matters only with the context
            sub.prop(p, "train_acs")
        if hemgs and p.train_variable_rate:
            box.label(text="λ: 1e-3 to 4e-3, chosen at Compress (one model for all)")
        else:
            box.prop(p, "log_lambda", text=f"λ = {props.lambda_value(p):.2e}  (log10)")
        box.prop(p, "train_preset")
        if p.train_preset == "CUSTOM":
            row = box.row(align=True)
            row.prop(p, "train_steps")
            row.prop(p, "train_warm_steps", text="Warm")
            row = box.row(align=True)
            row.prop(p, "train_width")
            row.prop(p, "train_views")
        row = box.row(align=True)
        row.operator("hemgs.train", icon="PLAY")
        row.operator("hemgs.load_model", icon="FILE_FOLDER")

        box = layout.box()
        box.label(text="Compress", icon="PACKAGE")
        if p.model_path:
            box.label(text=f"Model: {Path(p.model_path).name} ({p.model_anchors:,} anchors)")
            if p.model_variable_rate:
                # Variable-rate model: code anywhere in the range it serves (log-scale slider).
                lam = props.compress_lambda(p) or p.model_lambda
                lo, hi = props.serve_range(p)
                box.prop(p, "rate_position", text=f"λ = {lam:.2e}  ({lo:.1e}..{hi:.1e})")
                box.label(text=f"trained on {p.model_lambda_min:.0e}..{p.model_lambda_max:.0e}; larger λ, smaller file")
            else:
                # Fixed-rate (HAC mode): the model codes at the λ it was trained for, nothing else.
                box.label(text=f"λ = {p.model_lambda:.2e} (fixed-rate model; train again for another λ)")
        else:
            box.label(text="Train or load a model first", icon="INFO")
        box.prop(p, "output_path")
        row = box.row(align=True)
        row.prop(p, "views")
        row.prop(p, "eval_width")
        box.prop(p, "side_by_side")
        box.operator("hemgs.compress", icon="EXPORT")

    def draw_direct(self, layout, p):
        """Direct (anchor-free) mode: no Train step; Compress fits the source itself and codes it."""
        box = layout.box()
        box.label(text="Compress (direct mode)", icon="PACKAGE")
        box.label(text="No training: fitted to the source in seconds to a minute")
        col = box.column(align=True)
        col.prop(p, "train_variable_rate", text="Variable-rate predictor")
        col.prop(p, "direct_scene_agnostic")
        col.prop(p, "direct_ar")
        sub = col.row()
        sub.enabled = p.direct_ar
        sub.prop(p, "train_acs")
        box.prop(p, "direct_iters")
        box.prop(p, "direct_for_cameras")
        lo, hi = props.DIRECT_LAMBDA_MIN, props.DIRECT_LAMBDA_MAX
        box.prop(p, "direct_log_lambda", text=f"λ = {props.direct_lambda(p):.3g}  ({lo:g}..{hi:g}, log2)")
        box.label(text="larger λ, smaller file, lower PSNR")
        box.prop(p, "output_path")
        row = box.row(align=True)
        row.prop(p, "views")
        row.prop(p, "eval_width")
        box.prop(p, "side_by_side")
        box.operator("hemgs.compress", icon="EXPORT")

    def draw_status(self, layout, p):
        box = layout.box()
        box.label(text="Measure against a second file")
        box.prop(p, "other_path")
        box.operator("hemgs.evaluate", icon="IMAGE_RGB")

        st = jobs.state
        if st.running:
            row = layout.row(align=True)
            if hasattr(row, "progress"):  # Blender 4.0+
                row.progress(factor=st.fraction, type="BAR", text=f"{st.op}: {st.stage}")
            else:
                row.label(text=f"{st.op}: {st.stage} {st.fraction:.0%}")
            row.operator("hemgs.cancel", text="", icon="CANCEL")
        elif st.message:
            layout.label(text=st.message, icon="ERROR" if st.is_error else "INFO")

        if p.result_source_bytes:
            box = layout.box()
            box.label(text=f"Results: {Path(p.result_file).name}" if p.result_file else "Results")
            ratio = p.result_source_bytes / max(p.result_bytes, 1.0)
            box.label(text=f"Size: {_human(p.result_bytes)} ({ratio:.2f}x smaller than the source)")
            if p.result_has_quality:
                box.label(text="PSNR: identical renders" if p.result_identical else f"PSNR: {p.result_psnr:.2f} dB")
                box.label(text=f"SSIM: {p.result_ssim:.4f}")


def register():
    bpy.utils.register_class(HEMGS_PT_main)


def unregister():
    bpy.utils.unregister_class(HEMGS_PT_main)
