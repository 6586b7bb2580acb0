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
        from .preview_object import SOLID_GROUP

        shading = getattr(context.space_data, "shading", None)
        if shading is None or shading.type != "SOLID" or shading.color_type == "VERTEX":
            return
        # Only point-cloud previews draw their colours through Solid mode's attribute colours;
        # Blender's own splats (5.3+) draw themselves.
        if any(o.modifiers.get(SOLID_GROUP) for o in getattr(context, "visible_objects", ())):
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
            lo, hi, margin = props.variable_range()
            box.label(text=f"Trained on λ {lo:g} to {hi:g}; codes {lo / margin:g} to {hi * margin:g}, chosen at Compress")
        elif p.model_path and p.model_variable_rate:
            # Anchor mode has one λ: with a variable-rate model loaded it is set under Compress.
            box.label(text=f"Trains at λ = {p.anchor_lambda:g} (set under Compress)")
        else:
            self.draw_lambda(box, p, "anchor_lambda", props.fixed_range(), "fixed-rate models train at")
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
                # Variable-rate model: code at any λ of the range it serves.
                self.draw_lambda(box, p, "anchor_lambda", props.serve_range(p), "this model codes at")
                if not props.model_serves(p, p.anchor_lambda):
                    lam = props.compress_lambda(p) or p.model_lambda
                    box.label(text=f"Compress codes at {lam:g}, the nearest λ this model serves", icon="ERROR")
                box.label(text=f"trained on {p.model_lambda_min:g} to {p.model_lambda_max:g}")
            else:
                # Fixed-rate (HAC mode): the model codes at the λ it was trained for, nothing else.
                box.label(text=f"λ = {p.model_lambda:g} (fixed-rate model; train again for another λ)")
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
        col.prop(p, "direct_variable_rate")
        col.prop(p, "direct_scene_agnostic")
        col.prop(p, "direct_ar")
        sub = col.row()
        sub.enabled = p.direct_ar
        sub.prop(p, "direct_acs")
        box.prop(p, "direct_iters")
        box.prop(p, "direct_for_cameras")
        self.draw_lambda(box, p, "direct_lambda", props.direct_range(), "direct mode codes at")
        box.prop(p, "output_path")
        row = box.row(align=True)
        row.prop(p, "views")
        row.prop(p, "eval_width")
        box.prop(p, "side_by_side")
        box.operator("hemgs.compress", icon="EXPORT")

    @staticmethod
    def draw_lambda(layout, p, name: str, span: tuple[float, float], what: str):
        """The mode's one λ control: its number is λ (type it, or drag), under it the range that
        applies now and which way λ goes."""
        col = layout.column(align=True)
        col.prop(p, name)
        col.label(text=f"{what} {span[0]:g} to {span[1]:g}; larger λ, smaller file")

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
