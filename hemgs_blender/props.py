"""The panel's settings, stored with the scene (Scene.hemgs)."""

from __future__ import annotations

import math

import bpy

# The λ range HEMGS trains one model over (paper defaults, 1e-3..4e-3); the codec will report the
# trained model's own range.
LAMBDA_MIN, LAMBDA_MAX = 1e-3, 4e-3


class HEMGS_SceneProps(bpy.types.PropertyGroup):
    source_path: bpy.props.StringProperty(  # type: ignore[valid-type]
        name="Source", description="3DGS PLY, Scaffold-GS PLY or SPZ file", subtype="FILE_PATH")
    other_path: bpy.props.StringProperty(  # type: ignore[valid-type]
        name="Compare with", description="A second version of the scene (e.g. an SPZ) to measure against "
        "the source", subtype="FILE_PATH")
    views: bpy.props.IntProperty(  # type: ignore[valid-type]
        name="Views", description="Number of views rendered for PSNR/SSIM", default=16, min=1, max=256)
    log_lambda: bpy.props.FloatProperty(  # type: ignore[valid-type]
        name="λ", description="Rate-distortion trade-off, on a log scale over the trained range "
        "(needs the codec, coming)", default=math.log10(2e-3),
        min=math.log10(LAMBDA_MIN), max=math.log10(LAMBDA_MAX))
    # Results of the last measurement (0: none yet).
    result_psnr: bpy.props.FloatProperty(name="PSNR", default=0.0)  # type: ignore[valid-type]
    result_ssim: bpy.props.FloatProperty(name="SSIM", default=0.0)  # type: ignore[valid-type]
    result_bytes: bpy.props.FloatProperty(name="Size", default=0.0)  # type: ignore[valid-type]
    result_source_bytes: bpy.props.FloatProperty(name="Source size", default=0.0)  # type: ignore[valid-type]
    result_identical: bpy.props.BoolProperty(default=False)  # type: ignore[valid-type]


def lambda_value(props) -> float:
    return 10.0 ** props.log_lambda


def register():
    bpy.utils.register_class(HEMGS_SceneProps)
    bpy.types.Scene.hemgs = bpy.props.PointerProperty(type=HEMGS_SceneProps)  # type: ignore[attr-defined]


def unregister():
    del bpy.types.Scene.hemgs  # type: ignore[attr-defined]
    bpy.utils.unregister_class(HEMGS_SceneProps)
