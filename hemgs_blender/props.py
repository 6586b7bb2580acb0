"""The panel's settings, stored with the scene (Scene.hemgs)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import bpy

# Ranges and defaults: the backend's hello (docs/protocol.md, `codec`) is their source. A property's
# range and default are fixed when it registers, before any worker runs, so they are literals here
# (tests/test_direct_pipeline.py keeps them equal to the hello's); at run time the panel's labels and
# the λ it sends follow the hello of the worker in use (remember_hello, direct_range, fixed_range,
# variable_range).
# Anchor mode: a fixed-rate model is trained at one λ of LAMBDA_MIN..LAMBDA_MAX (hello
# codec.fixed_rate); a variable-rate model is trained on ANCHOR_LAMBDAS together and codes any λ of
# their range widened LAMBDA_MARGIN times each way (codec.lambdas, codec.lambda_margin).
LAMBDA_MIN, LAMBDA_MAX, LAMBDA_DEFAULT = 1e-4, 1e-1, 1e-3
ANCHOR_LAMBDAS, LAMBDA_MARGIN = (1e-3, 2e-3, 3e-3, 4e-3), 2.0
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
# Direct mode's λ, in its own units (hello codec.direct: lambda_range, lambda_default).
DIRECT_LAMBDA_MIN, DIRECT_LAMBDA_MAX, DIRECT_LAMBDA_DEFAULT = 0.015625, 16.0, 1.0
# The import option of every preview (File > Import and the sidebar): hemgs.preview.STAND_UP_EULER.
STAND_UP_NAME = "Y-down scene: stand it up"
STAND_UP_DESCRIPTION = ("Rotate the preview object -90° about X so a 3DGS scene (y pointing down) stands up in "
                        "Blender's z-up world; the data keeps its coordinates")
PRESETS = [("QUICK", "Quick", "100 + 150 warm-start steps at 128 px: a first look, minutes on a CPU"),
           ("STANDARD", "Standard", "200 steps after the warm start at 256 px (hemgs train's defaults)"),
           ("CUSTOM", "Custom", "The steps set below")]


# The hello's `codec` of the worker the panel's jobs run in (ops.py records it when a job starts):
# the ranges and defaults the backend states. None until a worker has started.
_hello_codec: dict | None = None


def remember_hello(hello: dict | None) -> None:
    global _hello_codec
    codec = (hello or {}).get("codec")
    if isinstance(codec, dict):
        _hello_codec = codec


def _codec(*keys, fallback):
    """A field of the hello's `codec`, or `fallback` (no worker yet, or an older one without it)."""
    value = _hello_codec
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return fallback if value is None else value


def direct_range() -> tuple[float, float]:
    lo, hi = _codec("direct", "lambda_range", fallback=(DIRECT_LAMBDA_MIN, DIRECT_LAMBDA_MAX))
    return float(lo), float(hi)


def fixed_range() -> tuple[float, float]:
    """The λ a fixed-rate model can be trained at."""
    lo, hi = _codec("fixed_rate", "lambda_range", fallback=(LAMBDA_MIN, LAMBDA_MAX))
    return float(lo), float(hi)


def variable_range() -> tuple[float, float, float]:
    """A variable-rate model's trained λ (lowest, highest) and how far beyond them it codes."""
    lambdas = _codec("lambdas", fallback=ANCHOR_LAMBDAS)
    return float(min(lambdas)), float(max(lambdas)), float(_codec("lambda_margin", fallback=LAMBDA_MARGIN))


def _rounded(lam: float, lo: float, hi: float) -> float:
    """λ within lo..hi, to 3 significant digits where that stays within (the number the panel
    shows, sends and names files by; more digits at an end like 1/64). The tolerance absorbs the
    single precision Blender stores floats in."""
    lam = min(max(lam, lo), hi)
    for digits in range(2, 9):
        r = float(f"{lam:.{digits}e}")
        if lo * (1 - 1e-6) <= r <= hi * (1 + 1e-6):
            return r
    return lam


# The λ properties. Blender's Python properties have no logarithmic slider (a log scale is C-only),
# and a slider over log(λ) shows log(λ) as its number. An artist reads and types λ, so the panel's
# λ is a property whose number is λ; it is stored as log(λ) (`direct_log_lambda`, `log_lambda`:
# the names earlier versions stored, so scripts and saved files keep their value). Before the
# user sets it, it reads the backend's default.
_LAMBDA_DEFAULTS = {"direct": DIRECT_LAMBDA_DEFAULT, "fixed_rate": LAMBDA_DEFAULT}  # before any hello


def _lambda_accessors(stored: str, log, base: float, lo: float, hi: float, default_key: str):
    """get/set of a λ property kept as log(λ) in the property `stored` (`log` to `base`), clamped to
    [lo, hi]; unset, it reads the hello's `<default_key>.lambda_default`."""

    def get(self) -> float:
        if not self.is_property_set(stored):
            return float(_codec(default_key, "lambda_default", fallback=_LAMBDA_DEFAULTS[default_key]))
        return _rounded(base ** getattr(self, stored), lo, hi)

    def set(self, value: float) -> None:
        setattr(self, stored, log(min(max(value, lo), hi)))

    return SimpleNamespace(get=get, set=set)


_DIRECT_LAMBDA = _lambda_accessors("direct_log_lambda", math.log2, 2.0, DIRECT_LAMBDA_MIN, DIRECT_LAMBDA_MAX, "direct")
_ANCHOR_LAMBDA = _lambda_accessors("log_lambda", math.log10, 10.0, LAMBDA_MIN, LAMBDA_MAX, "fixed_rate")


def _get_rate_position(self) -> float:
    lo, hi = serve_range(self)
    if not 0 < lo < hi:
        return 0.5
    return min(max(math.log(self.anchor_lambda / lo) / math.log(hi / lo), 0.0), 1.0)


def _set_rate_position(self, value: float) -> None:
    lo, hi = serve_range(self)
    if 0 < lo < hi:  # without a variable-rate model there is no range to place λ in
        self.anchor_lambda = lo * (hi / lo) ** value


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
    direct_lambda: bpy.props.FloatProperty(  # type: ignore[valid-type]
        name="λ", description="Direct mode's rate-distortion weight: larger λ, smaller file, lower PSNR",
        default=DIRECT_LAMBDA_DEFAULT, min=DIRECT_LAMBDA_MIN, max=DIRECT_LAMBDA_MAX, precision=3, step=5,
        get=_DIRECT_LAMBDA.get, set=_DIRECT_LAMBDA.set)
    direct_log_lambda: bpy.props.FloatProperty(  # type: ignore[valid-type]
        name="log2(λ)", description="Where direct_lambda is stored, as log2(λ)", default=math.log2(DIRECT_LAMBDA_DEFAULT),
        min=math.log2(DIRECT_LAMBDA_MIN), max=math.log2(DIRECT_LAMBDA_MAX))
    direct_iters: bpy.props.IntProperty(  # type: ignore[valid-type]
        name="Fit iterations", description="Iterations of the direct-mode fit (0: the backend's default)",
        default=0, min=0, max=100000)

    # ---- anchor mode: one λ, that fixed-rate Train trains at and Compress codes a variable-rate
    # model at (within what the model serves) ----
    anchor_lambda: bpy.props.FloatProperty(  # type: ignore[valid-type]
        name="λ", description="Anchor mode's rate-distortion weight: larger λ, smaller file",
        default=LAMBDA_DEFAULT, min=LAMBDA_MIN, max=LAMBDA_MAX, precision=6, step=1,
        get=_ANCHOR_LAMBDA.get, set=_ANCHOR_LAMBDA.set)
    log_lambda: bpy.props.FloatProperty(  # type: ignore[valid-type]
        name="log10(λ)", description="Where anchor_lambda is stored, as log10(λ)", default=math.log10(LAMBDA_DEFAULT),
        min=math.log10(LAMBDA_MIN), max=math.log10(LAMBDA_MAX))
    train_codec: bpy.props.EnumProperty(  # type: ignore[valid-type]
        name="Codec", items=CODECS, default="HEMGS")
    train_variable_rate: bpy.props.BoolProperty(  # type: ignore[valid-type]
        name="Variable rate", description="One model for every λ of its trained range (chosen at Compress); "
        "off: one model per λ", default=True)
    train_scene_agnostic: bpy.props.BoolProperty(  # type: ignore[valid-type]
        name="Scene-agnostic prior", description="Use the pre-trained point-network prior", default=True)
    train_ar: bpy.props.BoolProperty(  # type: ignore[valid-type]
        name="Autoregressive context", description="Condition each anchor on already-decoded neighbours",
        default=True)
    train_acs: bpy.props.BoolProperty(  # type: ignore[valid-type]
        name="Adaptive context selection", description="The nearest 20 neighbours in a 25³ field (off: all "
        "in a 5³ field)", default=True)
    # Direct mode's own part switches, apart from Train's (train_*): defaults = the backend's
    # hemgs.modes.DIRECT_SWITCH_DEFAULTS (the prior and the context cost bytes and decode time
    # there; a test keeps them equal).
    direct_variable_rate: bpy.props.BoolProperty(  # type: ignore[valid-type]
        name="Variable-rate predictor", description="Direct mode: the step predictor also sees λ (off: the steps "
        "follow λ by a fixed rule)", default=True)
    direct_scene_agnostic: bpy.props.BoolProperty(  # type: ignore[valid-type]
        name="Scene-agnostic prior", description="Direct mode: use the pre-trained point-network prior (off by "
        "default: +0.5% in size on the scene measured, slower decoding)", default=False)
    direct_ar: bpy.props.BoolProperty(  # type: ignore[valid-type]
        name="Autoregressive context", description="Direct mode: condition each Gaussian on decoded neighbours "
        "(off by default: +2.7% in size on the scene measured, twice the decode time)", default=False)
    direct_acs: bpy.props.BoolProperty(  # type: ignore[valid-type]
        name="Adaptive context selection", description="Direct mode: the context's nearest "
        "decoded neighbours in a wide field (off: all in a 5³ field)", default=True)
    direct_for_cameras: bpy.props.BoolProperty(  # type: ignore[valid-type]
        name="Only the scene's cameras", description="Direct mode: code for the cameras.json beside the source "
        "only, instead of every direction around the scene (recorded in the file)", default=False)
    train_preset: bpy.props.EnumProperty(  # type: ignore[valid-type]
        name="Budget", items=PRESETS, default="QUICK")
    train_steps: bpy.props.IntProperty(  # type: ignore[valid-type]
        name="Steps", description="Render-space training steps", default=200, min=0, max=100000)
    train_warm_steps: bpy.props.IntProperty(  # type: ignore[valid-type]
        name="Warm-start steps", default=1000, min=0, max=100000)
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
    # Earlier versions' λ of a variable-rate model, as its place in the range the model serves (0:
    # lowest λ, 1: highest, log scale); kept for scripts, a view of anchor_lambda.
    rate_position: bpy.props.FloatProperty(  # type: ignore[valid-type]
        name="λ position", description="Where anchor_lambda lies in the loaded model's λ range (log scale)",
        default=0.5, min=0.0, max=1.0, subtype="FACTOR", get=_get_rate_position,
        set=_set_rate_position)

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
    """The λ a fixed-rate Train trains at (the property reads single precision: rounded again)."""
    return _rounded(props.anchor_lambda, *fixed_range())


def is_direct(props) -> bool:
    return props.mode == "DIRECT"


def direct_compress_lambda(props) -> float:
    """The λ Compress asks for in direct mode, within what the backend serves."""
    return _rounded(props.direct_lambda, *direct_range())


def serve_range(props) -> tuple[float, float]:
    """The λ range the loaded model codes at (the trained range where the backend said nothing wider)."""
    lo = props.model_serve_min if props.model_serve_min > 0 else props.model_lambda_min
    hi = props.model_serve_max if props.model_serve_max > 0 else props.model_lambda_max
    return lo, max(hi, lo)


def model_serves(props, lam: float) -> bool:
    """Whether the loaded model codes at `lam` (its range is stored in single precision)."""
    lo, hi = serve_range(props)
    return lo * (1 - 1e-6) <= lam <= hi * (1 + 1e-6)


def compress_lambda(props) -> float | None:
    """The λ Compress asks for: None for a fixed-rate model (it codes at its own λ); for a
    variable-rate one, anchor mode's λ, within the range the model serves."""
    lo, hi = serve_range(props)
    if not props.model_variable_rate or not lo > 0:
        return None
    return _rounded(props.anchor_lambda, lo, hi)  # the panel says so when λ lies outside


def register():
    bpy.utils.register_class(HEMGS_SceneProps)
    bpy.types.Scene.hemgs = bpy.props.PointerProperty(type=HEMGS_SceneProps)  # type: ignore[attr-defined]


def unregister():
    del bpy.types.Scene.hemgs  # type: ignore[attr-defined]
    bpy.utils.unregister_class(HEMGS_SceneProps)
