"""The panel's settings, stored with the scene (Scene.hemgs)."""

from __future__ import annotations

import math

import bpy

# The λ a model can be trained at (= hemgs.fit.LAMBDA_RANGE; the backend refuses others). The
# slider is log10(λ): each decade gets the same travel.
LAMBDA_MIN, LAMBDA_MAX = 1e-4, 1e-1
# Training budget presets (the backend's TRAIN_PRESETS; CUSTOM sends the steps below).
# Entropy models Train can make (the backend's codecs): HEMGS is variable-rate by default.
CODECS = [("HEMGS", "HEMGS", "The HEMGS hybrid entropy model (scene-agnostic prior, autoregressive context)"),
          ("HAC", "HAC", "The HAC baseline: hash-grid context only, one λ per model")]
# Coding modes (= hemgs.modes.MODES), the default first (= hemgs.modes.DEFAULT_MODE). Direct needs no
# Train step: Compress fits the source itself.
MODES = [("DIRECT", "Direct (anchor-free)", "Code the source's own Gaussians: no training step, the entropy model "
          "is fitted in seconds to a minute; the better mode at every rate measured so far"),
         ("ANCHOR", "Anchor (HEMGS, trained)", "The paper's method: train an anchor model (minutes), then code it "
          "at any λ it serves. Today larger and lower in PSNR than Direct (docs/anchor-model.md)")]
# Direct mode's λ, in its own units (= hemgs.modes.DIRECT_LAMBDA_RANGE / DIRECT_LAMBDA_DEFAULT). The
# slider is log2(λ).
DIRECT_LAMBDA_MIN, DIRECT_LAMBDA_MAX, DIRECT_LAMBDA_DEFAULT = 0.015625, 16.0, 1.0
# The import option of every preview (File > Import and the sidebar): hemgs.preview.STAND_UP_EULER.
STAND_UP_NAME = "Y-down scene: stand it up"
STAND_UP_DESCRIPTION = ("Rotate the preview object -90° about X so a 3DGS scene (y pointing down) stands up in "
                        "Blender's z-up world; the data keeps its coordinates")
PRESETS = [("QUICK", "Quick", "100 + 150 warm-start steps at 128 px: a first look, minutes on a CPU"),
           ("STANDARD", "Standard", "300 + 400 warm-start steps at 256 px (hemgs train's defaults)"),
           ("CUSTOM", "Custom", "The steps set below")]


class HEMGS_SceneProps(bpy.types.PropertyGroup):
    source_path: bpy.props.StringProperty(  # type: ignore[valid-type]
        name="Source", description="3DGS PLY, Scaffold-GS PLY or SPZ file", subtype="FILE_PATH")
    other_path: bpy.props.StringProperty(  # type: ignore[valid-type]
        name="Compare with", description="A second version of the scene (e.g. an SPZ) to measure against "
        "the source", subtype="FILE_PATH")
    stand_up: bpy.props.BoolProperty(  # type: ignore[valid-type]
        name=STAND_UP_NAME, description=STAND_UP_DESCRIPTION, default=True)
    views: bpy.props.IntProperty(  # type: ignore[valid-type]
        name="Views", description="Number of views rendered for PSNR/SSIM (the sampled views of hemgs eval)",
        default=16, min=1, max=256)
    eval_width: bpy.props.IntProperty(  # type: ignore[valid-type]
        name="Size", description="Width of the PSNR/SSIM renders, in pixels", default=256, min=16, max=4096)

    mode: bpy.props.EnumProperty(  # type: ignore[valid-type]
        name="Mode", description="How the scene is coded", items=MODES, default="DIRECT")
    # ---- direct mode ----
    direct_log_lambda: bpy.props.FloatProperty(  # type: ignore[valid-type]
        name="λ", description="Direct mode's rate-distortion weight, as log2(λ): larger is a smaller file, lower "
        "PSNR", default=math.log2(DIRECT_LAMBDA_DEFAULT), min=math.log2(DIRECT_LAMBDA_MIN),
        max=math.log2(DIRECT_LAMBDA_MAX))
    direct_iters: bpy.props.IntProperty(  # type: ignore[valid-type]
        name="Fit iterations", description="Iterations of the direct-mode fit (0: the backend's default)",
        default=0, min=0, max=100000)

    # ---- training ----
    log_lambda: bpy.props.FloatProperty(  # type: ignore[valid-type]
        name="λ", description="Rate-distortion weight a fixed-rate model is trained for, as log10(λ): larger "
        "is a smaller file", default=math.log10(1e-3), min=math.log10(LAMBDA_MIN), max=math.log10(LAMBDA_MAX))
    train_codec: bpy.props.EnumProperty(  # type: ignore[valid-type]
        name="Codec", items=CODECS, default="HEMGS")
    train_variable_rate: bpy.props.BoolProperty(  # type: ignore[valid-type]
        name="Variable rate", description="One model for every λ of 1e-3..4e-3 (chosen at Compress); off: "
        "one model per λ", default=True)
    train_scene_agnostic: bpy.props.BoolProperty(  # type: ignore[valid-type]
        name="Scene-agnostic prior", description="Use the pre-trained point-network prior", default=True)
    train_ar: bpy.props.BoolProperty(  # type: ignore[valid-type]
        name="Autoregressive context", description="Condition each anchor on already-decoded neighbours",
        default=True)
    train_acs: bpy.props.BoolProperty(  # type: ignore[valid-type]
        name="Adaptive context selection", description="The nearest 20 neighbours in a 25³ field (off: all "
        "in a 5³ field)", default=True)
    # Direct mode's own part switches; defaults = the backend's hemgs.modes.DIRECT_SWITCH_DEFAULTS
    # (the prior and the context cost bytes and decode time there; a test keeps them equal).
    direct_scene_agnostic: bpy.props.BoolProperty(  # type: ignore[valid-type]
        name="Scene-agnostic prior", description="Direct mode: use the pre-trained point-network prior (off by "
        "default: about 1% either way in size, slower decoding)", default=False)
    direct_ar: bpy.props.BoolProperty(  # type: ignore[valid-type]
        name="Autoregressive context", description="Direct mode: condition each Gaussian on decoded neighbours "
        "(off by default: about 1% either way in size, twice the decode time)", default=False)
    direct_for_cameras: bpy.props.BoolProperty(  # type: ignore[valid-type]
        name="Only the scene's cameras", description="Direct mode: code for the cameras.json beside the source "
        "only, instead of every direction around the scene (recorded in the file)", default=False)
    train_preset: bpy.props.EnumProperty(  # type: ignore[valid-type]
        name="Budget", items=PRESETS, default="QUICK")
    train_steps: bpy.props.IntProperty(  # type: ignore[valid-type]
        name="Steps", description="Render-space training steps", default=300, min=0, max=100000)
    train_warm_steps: bpy.props.IntProperty(  # type: ignore[valid-type]
        name="Warm-start steps", default=400, min=0, max=100000)
    train_width: bpy.props.IntProperty(  # type: ignore[valid-type]
        name="Render size", description="Width of the training renders, in pixels", default=256, min=16, max=2048)
    train_views: bpy.props.IntProperty(  # type: ignore[valid-type]
        name="Views", description="Sampled training views (every 8th is held out)", default=32, min=2, max=1024)

    # ---- the loaded (or just trained) model ----
    model_path: bpy.props.StringProperty(  # type: ignore[valid-type]
        name="Model", description="Trained model (.safetensors) that Compress codes", subtype="FILE_PATH")
    model_lambda: bpy.props.FloatProperty(name="Model λ", default=0.0)  # type: ignore[valid-type]
    model_lambda_min: bpy.props.FloatProperty(default=0.0)  # type: ignore[valid-type]
    model_lambda_max: bpy.props.FloatProperty(default=0.0)  # type: ignore[valid-type]
    model_variable_rate: bpy.props.BoolProperty(default=False)  # type: ignore[valid-type]
    model_codec: bpy.props.StringProperty(default="")  # type: ignore[valid-type]
    # The λ the model codes at: its trained range widened as the backend allows (lambda_serves).
    model_serve_min: bpy.props.FloatProperty(default=0.0)  # type: ignore[valid-type]
    model_serve_max: bpy.props.FloatProperty(default=0.0)  # type: ignore[valid-type]
    model_anchors: bpy.props.IntProperty(default=0)  # type: ignore[valid-type]
    # Variable-rate models only: where in the λ range the model serves to code (0 = its lowest λ,
    # 1 = its highest), on a log scale; 0.5 is the middle of its trained range.
    rate_position: bpy.props.FloatProperty(  # type: ignore[valid-type]
        name="λ", description="Where in the model's λ range to code (log scale): larger λ, smaller file",
        default=0.5, min=0.0, max=1.0, subtype="FACTOR")

    # ---- compressing ----
    output_path: bpy.props.StringProperty(  # type: ignore[valid-type]
        name="Output", description=".hgs file to write (empty: beside the source, named by λ)",
        subtype="FILE_PATH")
    side_by_side: bpy.props.BoolProperty(  # type: ignore[valid-type]
        name="Beside the source", description="Place the decoded preview beside the source preview "
        "(off: in its place, with the source preview hidden)", default=True)

    # Results of the last measurement or compression (0: none yet).
    result_psnr: bpy.props.FloatProperty(name="PSNR", default=0.0)  # type: ignore[valid-type]
    result_ssim: bpy.props.FloatProperty(name="SSIM", default=0.0)  # type: ignore[valid-type]
    result_bytes: bpy.props.FloatProperty(name="Size", default=0.0)  # type: ignore[valid-type]
    result_source_bytes: bpy.props.FloatProperty(name="Source size", default=0.0)  # type: ignore[valid-type]
    result_identical: bpy.props.BoolProperty(default=False)  # type: ignore[valid-type]
    result_has_quality: bpy.props.BoolProperty(default=True)  # type: ignore[valid-type]
    result_file: bpy.props.StringProperty(default="")  # type: ignore[valid-type]


def lambda_value(props) -> float:
    """The λ Train uses (the slider)."""
    return 10.0 ** props.log_lambda


def is_direct(props) -> bool:
    return props.mode == "DIRECT"


def direct_lambda(props) -> float:
    """The λ Compress asks for in direct mode (the log2 slider), 3 significant digits, in range."""
    lam = float(f"{2.0 ** props.direct_log_lambda:.2e}")
    return min(max(lam, DIRECT_LAMBDA_MIN), DIRECT_LAMBDA_MAX)


def serve_range(props) -> tuple[float, float]:
    """The λ range the loaded model codes at (the trained range where the backend said nothing wider)."""
    lo = props.model_serve_min if props.model_serve_min > 0 else props.model_lambda_min
    hi = props.model_serve_max if props.model_serve_max > 0 else props.model_lambda_max
    return lo, max(hi, lo)


def compress_lambda(props) -> float | None:
    """The λ Compress asks for: None for a fixed-rate model (it codes at its own λ); for a
    variable-rate one, `rate_position` on a log scale over the range the model serves."""
    lo, hi = serve_range(props)
    if not props.model_variable_rate or not lo > 0:
        return None
    # Rounded to 3 significant digits: the value the panel shows and the file name carries.
    lam = float(f"{lo * (hi / lo) ** props.rate_position:.2e}")
    return min(max(lam, lo), hi)  # rounding must not step outside what the backend accepts


def register():
    bpy.utils.register_class(HEMGS_SceneProps)
    bpy.types.Scene.hemgs = bpy.props.PointerProperty(type=HEMGS_SceneProps)  # type: ignore[attr-defined]


def unregister():
    del bpy.types.Scene.hemgs  # type: ignore[attr-defined]
    bpy.utils.unregister_class(HEMGS_SceneProps)
