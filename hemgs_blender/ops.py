"""Operators: File > Import of splat files and .hgs (one importer: several files at once, drag and
drop on the viewport), File > Export .hgs, loading the panel's source, training, loading a model,
compressing and measuring (the last ones run in the backend worker)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import bpy
from bpy_extras.io_utils import ExportHelper, ImportHelper, poll_file_object_drop

from . import api, jobs, props as hprops
from .worker_client import error_text


def _import(op, context, path: str, stand_up: bool):
    try:
        obj = api.load_preview(path, context=context, stand_up=stand_up)
    except Exception as exc:  # noqa: BLE001 - a bad file is a message, never a crash
        op.report({"ERROR"}, error_text(exc))
        return {"CANCELLED"}
    op.report({"INFO"}, f"Imported {obj['hemgs_count']:,} splats from {Path(path).name}")
    return {"FINISHED"}


def _start(op, context, name: str, args: dict, outputs=(), on_done=None):
    """Start a worker job (blocking in background mode); errors become a report (when `op` is
    given) and the panel's message. Outputs that cannot be written are refused before the job starts."""
    try:
        api.check_outputs(*outputs)
        jobs.run(context, name, args, outputs, on_done=on_done)
    except Exception as exc:  # noqa: BLE001 - shown in the panel
        jobs.state.message, jobs.state.is_error = error_text(exc), True
        if op is not None:  # None: a job started after its operator returned (the operator is gone)
            op.report({"ERROR"}, jobs.state.message)
        return {"CANCELLED"}
    finally:
        # The panel's λ ranges and defaults follow the backend's hello (it came when the worker started).
        hprops.remember_hello(jobs.client(context).hello)
    return {"FINISHED"}


def _stand_up_prop():
    """The import option (File > Import's side panel; the sidebar has it as a scene setting)."""
    return bpy.props.BoolProperty(name=hprops.STAND_UP_NAME, description=hprops.STAND_UP_DESCRIPTION, default=True)


def _show_preview_npz(npz: str, path: str, stand_up: bool, beside: str = "", kind: str = "decoded",
                      source_format: str = "hgs") -> object:
    """Build the preview object of `path` (a .hgs file unless `source_format` says otherwise) from
    its worker-baked .npz (then deleted); with `beside` (a source path), place it next to that
    source's preview, or in its place with the source hidden. Runs when the job ends, so it takes
    the context of that moment."""
    from .preview_object import build_preview_object

    context = bpy.context
    obj = build_preview_object(context, api.preview_from_npz(npz, path, kind, source_format), stand_up=stand_up)
    if beside:
        _place_beside(context, obj, beside)
    return obj


def _same_file(a, b) -> bool:
    return bool(a) and bool(b) and os.path.realpath(str(a)) == os.path.realpath(str(b))


def _place_beside(context, obj, source: str) -> None:
    src = next((o for o in reversed(list(context.scene.objects)) if o is not obj
                and _same_file(o.get("hemgs_path"), source) and o.get("hemgs_kind") != "decoded"), None)
    if src is None:
        return
    if context.scene.hemgs.side_by_side:
        xs = [v[0] for v in src.bound_box]
        obj.location = src.location.copy()
        obj.location.x += 1.1 * (max(xs) - min(xs))
        obj.rotation_euler = src.rotation_euler.copy()
    else:
        obj.matrix_world = src.matrix_world.copy()
        try:
            src.hide_set(True)
        except RuntimeError:  # not in the view layer
            src.hide_viewport = True


# The files the importer takes: hemgs.io.formats.preview_extensions(), kept here as a literal since
# registering the operators must not import the backend (tests/test_formats.py keeps them equal).
IMPORT_EXTENSIONS = (".ply", ".spz", ".glb", ".sog", ".hgs")
IMPORT_GLOB = ";".join(f"*{ext}" for ext in IMPORT_EXTENSIONS)
# Of those, what Blender's Python cannot read (hemgs.io.formats.backend_extensions(): .hgs needs the
# decoder, SOG Pillow): the backend worker bakes their previews.
BACKEND_EXTENSIONS = (".sog", ".hgs")


def _import_in_backend(op, context, paths: list[str], stand_up: bool):
    """Bake the previews of files Blender cannot read (.hgs, SOG) in the worker, one job after the
    other (the panel runs one job at a time); each preview appears when its file is done. With a UI
    the later jobs start after `op` has returned, so their errors go to the panel only."""
    path, rest = paths[0], paths[1:]
    npz = str(api.preview_cache_path("import"))

    def done(res: dict) -> None:
        _show_preview_npz(npz, path, stand_up, kind=res.get("kind") or "decoded",
                          source_format=res.get("source_format") or "hgs")
        if rest:
            _import_in_backend(op if bpy.app.background else None, bpy.context, rest, stand_up)

    return _start(op, context, "load_preview", {"path": path, "output": npz, **api.preview_request()}, [npz],
                  on_done=done)


class _SplatImport(ImportHelper):
    """What every import operator shares: one or several files (File > Import's multi-select, a drop
    on the 3D viewport), PLY/SPZ read here, .hgs files decoded in the backend."""

    bl_options = {"REGISTER", "UNDO"}
    filter_glob: bpy.props.StringProperty(default=IMPORT_GLOB, options={"HIDDEN"})  # type: ignore[valid-type]
    # Blender's multi-file convention: the file browser and a drop fill `directory` + `files`.
    files: bpy.props.CollectionProperty(  # type: ignore[valid-type]
        type=bpy.types.OperatorFileListElement, options={"HIDDEN", "SKIP_SAVE"})
    directory: bpy.props.StringProperty(subtype="DIR_PATH", options={"HIDDEN", "SKIP_SAVE"})  # type: ignore[valid-type]
    stand_up: _stand_up_prop()  # type: ignore[valid-type]

    def invoke(self, context, event):
        # A drop sets the path: ask for the options only; otherwise the file browser.
        return self.invoke_popup(context)

    def paths(self) -> list[str]:
        names = [f.name for f in self.files if f.name]
        if names and self.directory:
            return [os.path.join(self.directory, name) for name in names]
        path = self.filepath  # type: ignore[attr-defined]  # ImportHelper's, missing from its stub
        return [path] if path else []

    def execute(self, context):
        paths = self.paths()
        if not paths:
            self.report({"ERROR"}, "no file to import")
            return {"CANCELLED"}
        backend = [p for p in paths if p.lower().endswith(BACKEND_EXTENSIONS)]
        results = [_import(self, context, p, self.stand_up) for p in paths if p not in backend]
        if backend:
            results.append(_import_in_backend(self, context, backend, self.stand_up))
        return {"FINISHED"} if {"FINISHED"} in results else {"CANCELLED"}


class HEMGS_OT_import_splats(bpy.types.Operator, _SplatImport):  # type: ignore[misc]  # stub-only clash
    """Import Gaussian-splat files (3DGS/Scaffold PLY, SPZ, HEMGS .hgs) as splat previews"""

    bl_idname = "hemgs.import_splats"
    bl_label = "Import Gaussian Splats"


# The importers of earlier versions, for scripts that call them: the same operator, one extension.
class HEMGS_OT_import_ply(bpy.types.Operator, _SplatImport):  # type: ignore[misc]  # stub-only clash
    """Import a 3DGS or Scaffold-GS PLY as a splat preview (colour, opacity and size per point)"""

    bl_idname = "hemgs.import_ply"
    bl_label = "Import 3DGS / Scaffold PLY"
    filter_glob: bpy.props.StringProperty(default="*.ply", options={"HIDDEN"})  # type: ignore[valid-type]


class HEMGS_OT_import_spz(bpy.types.Operator, _SplatImport):  # type: ignore[misc]  # stub-only clash
    """Import a Niantic SPZ file as a splat preview"""

    bl_idname = "hemgs.import_spz"
    bl_label = "Import SPZ splats"
    filter_glob: bpy.props.StringProperty(default="*.spz", options={"HIDDEN"})  # type: ignore[valid-type]


class HEMGS_OT_import_hgs(bpy.types.Operator, _SplatImport):  # type: ignore[misc]  # stub-only clash
    """Decode a HEMGS .hgs file in the backend and import its Gaussians as a splat preview"""

    bl_idname = "hemgs.import_hgs"
    bl_label = "Import HEMGS"
    filter_glob: bpy.props.StringProperty(default="*.hgs", options={"HIDDEN"})  # type: ignore[valid-type]


class HEMGS_FH_splats(bpy.types.FileHandler):
    """Drag and drop: a .ply, .spz or .hgs dropped on the 3D viewport (or the outliner) is imported."""

    bl_idname = "HEMGS_FH_splats"
    bl_label = "Gaussian splats"
    bl_import_operator = HEMGS_OT_import_splats.bl_idname
    bl_file_extensions = ";".join(IMPORT_EXTENSIONS)

    @classmethod
    def poll_drop(cls, context):
        return poll_file_object_drop(context)


class HEMGS_OT_load_source(bpy.types.Operator):
    """Show the source file as a splat preview"""

    bl_idname = "hemgs.load_source"
    bl_label = "Load preview"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return bool(context.scene.hemgs.source_path)

    def execute(self, context):
        props = context.scene.hemgs
        return _import(self, context, bpy.path.abspath(props.source_path), props.stand_up)


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
                "views": props.views, "width": props.eval_width}
        return _start(self, context, "eval", args, on_done=lambda res: store_results(props, res))


def store_results(props, res: dict) -> None:
    """Put an eval or compress result into the panel's fields (PSNR None: identical renders)."""
    psnr = res.get("psnr")
    props.result_has_quality = "ssim" in res
    if psnr is None or not math.isfinite(psnr):
        props.result_identical, props.result_psnr = props.result_has_quality, 0.0
    else:
        props.result_identical, props.result_psnr = False, float(psnr)
    props.result_ssim = float(res.get("ssim") or 0.0)
    props.result_bytes = float(res.get("other_bytes") or res.get("bytes") or 0)
    props.result_source_bytes = float(res.get("source_bytes") or 0)
    props.result_file = str(res.get("output") or res.get("other") or "")


def store_model(props, info: dict) -> None:
    """A trained/loaded model's λ (range) into the panel: Compress codes at what it allows."""
    props.model_path = info["model"]
    props.model_lambda = float(info["lambda"])
    props.model_lambda_min = float(info.get("lambda_min", info["lambda"]))
    props.model_lambda_max = float(info.get("lambda_max", info["lambda"]))
    serves = info.get("lambda_serves") or [props.model_lambda_min, props.model_lambda_max]
    props.model_serve_min, props.model_serve_max = float(serves[0]), float(serves[1])
    props.model_variable_rate = bool(info.get("variable_rate", False))
    props.model_codec = str(info.get("codec") or "")
    props.model_anchors = int(info.get("anchors") or 0)
    # Anchor mode's λ: a variable-rate model starts at its own λ unless the one set is in its range.
    if props.model_variable_rate and not (props.is_property_set("log_lambda")
                                          and hprops.model_serves(props, props.anchor_lambda)):
        props.anchor_lambda = props.model_lambda


def train_args(props) -> dict:
    """The panel's Train settings as worker arguments."""
    source = bpy.path.abspath(props.source_path)
    lam = hprops.lambda_value(props)
    codec = props.train_codec.lower()
    variable = codec == "hemgs" and props.train_variable_rate
    args: dict = {"source": source, "model": str(api.default_model_path(source, None if variable else lam)),
                  "lambda": lam, "codec": codec, "variable_rate": variable}
    if codec == "hemgs":
        args.update(scene_agnostic=props.train_scene_agnostic, ar=props.train_ar, acs=props.train_acs)
    if props.train_preset == "CUSTOM":
        args.update(preset="standard", steps=props.train_steps, warm_steps=props.train_warm_steps,
                    width=props.train_width, views=props.train_views)
    else:
        args["preset"] = props.train_preset.lower()
    return args


class HEMGS_OT_train(bpy.types.Operator):
    """Fit a model to the source scene in the backend (variable-rate, or fixed-rate at the λ set)"""

    bl_idname = "hemgs.train"
    bl_label = "Train"

    @classmethod
    def poll(cls, context):
        if not context.scene.hemgs.source_path:
            cls.poll_message_set("Set the source file first")
            return False
        return not jobs.state.running

    def execute(self, context):
        props = context.scene.hemgs
        args = train_args(props)
        return _start(self, context, "train", args, [args["model"]], on_done=lambda res: store_model(props, res))


class HEMGS_OT_load_model(bpy.types.Operator, ImportHelper):  # type: ignore[misc]  # stub-only clash
    """Load a trained HEMGS model (.safetensors): Compress will code it at the λ it allows"""

    bl_idname = "hemgs.load_model"
    bl_label = "Load model"
    filename_ext = ".safetensors"
    filter_glob: bpy.props.StringProperty(default="*.safetensors", options={"HIDDEN"})  # type: ignore[valid-type]

    @classmethod
    def poll(cls, context):
        return not jobs.state.running

    def execute(self, context):
        props = context.scene.hemgs
        return _start(self, context, "model_info", {"path": self.filepath}, on_done=lambda res: store_model(props, res))


def compress_args(props, output: str) -> tuple[dict, str]:
    """Worker arguments for coding to `output` and measuring it against the source: anchor mode
    codes the loaded model; direct mode sends the source itself (the worker fits and codes it)."""
    npz = str(api.preview_cache_path("decoded"))
    shown = {"preview": npz, **api.preview_request()}
    args: dict
    if hprops.is_direct(props):
        args = {"mode": "direct", "source": bpy.path.abspath(props.source_path), "output": output,
                "lambda": hprops.direct_compress_lambda(props), "views": props.views, "width": props.eval_width,
                **shown, "scene_agnostic": props.direct_scene_agnostic, "ar": props.direct_ar,
                "acs": props.direct_acs, "variable_rate": props.direct_variable_rate}
        if props.direct_iters > 0:
            args["iters"] = props.direct_iters
        if props.direct_for_cameras:
            args["for_cameras"] = True
        return args, npz
    args = {"model": bpy.path.abspath(props.model_path), "output": output, "views": props.views,
            "width": props.eval_width, **shown}
    if props.source_path:
        args["source"] = bpy.path.abspath(props.source_path)
    lam = hprops.compress_lambda(props)
    if lam is not None:  # variable-rate models only; a fixed-rate one codes at its own λ
        args["lambda"] = lam
    return args, npz


def _compress(op, context, output: str):
    props = context.scene.hemgs
    args, npz = compress_args(props, output)
    source = args.get("source", "")

    def done(res: dict) -> None:
        store_results(props, res)
        _show_preview_npz(npz, output, props.stand_up, beside=source)

    return _start(op, context, "compress", args, [output, npz], on_done=done)


def _model_ready(cls, context) -> bool:
    """Compress/Export can run: anchor mode needs a trained or loaded model, direct mode a source."""
    p = context.scene.hemgs
    if hprops.is_direct(p):
        if not p.source_path:
            cls.poll_message_set("Set the source file first")
            return False
        return not jobs.state.running
    if not (p.model_path and p.model_lambda > 0):
        cls.poll_message_set("Train or load a model first")
        return False
    return not jobs.state.running


class HEMGS_OT_compress(bpy.types.Operator):
    """Write the .hgs file, measure it against the source and show its decoded preview"""

    bl_idname = "hemgs.compress"
    bl_label = "Compress"

    @classmethod
    def poll(cls, context):
        return _model_ready(cls, context)

    def execute(self, context):
        props = context.scene.hemgs
        output = bpy.path.abspath(props.output_path) if props.output_path else ""
        if not output and hprops.is_direct(props):
            output = str(api.default_hgs_path(bpy.path.abspath(props.source_path), hprops.direct_compress_lambda(props),
                                              mode="direct"))
        elif not output:
            base = props.source_path or props.model_path
            lam = hprops.compress_lambda(props) or props.model_lambda
            output = str(api.default_hgs_path(bpy.path.abspath(base), lam))
        return _compress(self, context, output)


class HEMGS_OT_export_hgs(bpy.types.Operator, ExportHelper):  # type: ignore[misc]  # stub-only clash
    """Compress the panel's source to a HEMGS .hgs file, with the panel's mode and settings"""

    bl_idname = "hemgs.export_hgs"
    bl_label = "Export HEMGS"
    filename_ext = ".hgs"
    filter_glob: bpy.props.StringProperty(default="*.hgs", options={"HIDDEN"})  # type: ignore[valid-type]

    @classmethod
    def poll(cls, context):
        return _model_ready(cls, context)

    def execute(self, context):
        return _compress(self, context, self.filepath)


def menu_import(self, context):
    self.layout.operator(HEMGS_OT_import_splats.bl_idname, text=f"Gaussian Splats ({', '.join(IMPORT_EXTENSIONS)})")


def menu_export(self, context):
    self.layout.operator(HEMGS_OT_export_hgs.bl_idname, text="HEMGS (.hgs)")


classes = (HEMGS_OT_import_splats, HEMGS_OT_import_ply, HEMGS_OT_import_spz, HEMGS_OT_import_hgs, HEMGS_FH_splats,
           HEMGS_OT_load_source, HEMGS_OT_evaluate, HEMGS_OT_train, HEMGS_OT_load_model, HEMGS_OT_compress,
           HEMGS_OT_export_hgs)


def register():
    for cls in classes:
        bpy.utils.register_class(cls)
    bpy.types.TOPBAR_MT_file_import.append(menu_import)
    bpy.types.TOPBAR_MT_file_export.append(menu_export)


def unregister():
    bpy.types.TOPBAR_MT_file_export.remove(menu_export)
    bpy.types.TOPBAR_MT_file_import.remove(menu_import)
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
