"""The coding modes of a .hgs file, and the λ each accepts (numpy-free, torch-free: the worker's
handshake and the CLI's parser read these without importing the codecs).

- "anchor": a Scaffold-GS anchor model is fitted to the scene (`hemgs train`, minutes), then coded
  (`hemgs compress MODEL`); λ in the trained model's range (pipeline.check_lambda).
- "direct": anchor-free; the HEMGS entropy model is fitted to the scene's own Gaussians (seconds
  to a minute, no training step) and codes them directly (hemgs.direct). Its λ has its own
  units: the model is trained on hemgs.direct.LAMBDAS = 0.25..2 and serves DIRECT_LAMBDA_RANGE.
"""

from __future__ import annotations

import math

from .errors import InputError

MODES = ("anchor", "direct")
# The mode a 3DGS scene is coded in when none is named: direct mode, until anchor mode wins at some
# rate (issue #21: on playbot_lod2 direct mode gives 38.6 dB at 725 kB, anchor mode 33.7 dB at
# 955 kB; on the demo scene 41.1 dB at 238 kB against 30.6 dB at 417 kB). A trained model, photos or
# a Scaffold-GS checkpoint can only be coded in anchor mode (`mode_for`).
DEFAULT_MODE = "direct"


def mode_for(mode: str | None, *, anchor_input: bool) -> str:
    """The coding mode of a request: `mode` when named (checked), else anchor mode for inputs only
    it codes (`anchor_input`: a trained model, photos, a Scaffold-GS checkpoint), else DEFAULT_MODE."""
    if mode is not None:
        return check_mode(mode)
    return "anchor" if anchor_input else DEFAULT_MODE


# Inputs direct mode refuses, by hemgs.io.detect_format's name: it codes a 3DGS scene's own Gaussians.
NOT_A_SCENE = {"model": "a trained anchor-mode model", "hgs": "a .hgs file",
               "scaffold_ply": "a Scaffold-GS anchor PLY"}


def anchor_only(path) -> bool:
    """Whether only anchor mode codes the file: a trained model or a Scaffold-GS anchor PLY."""
    from .io import detect_format  # numpy: imported when a file is checked, not with this module

    return detect_format(path) in ("model", "scaffold_ply")


def check_direct_source(path, *, asked: str = "direct mode", op: str = "", model_hint: str = "") -> None:
    """Refuse, before any work, a source direct mode does not code (NOT_A_SCENE). `asked`: how the
    front end names direct mode; `op`: a prefix ("compress: "); `model_hint`: added for a model."""
    from .io import detect_format

    fmt = detect_format(path)
    if fmt in NOT_A_SCENE:
        hint = model_hint if fmt == "model" else ""
        raise InputError(f"{op}{path} is {NOT_A_SCENE[fmt]}; {asked} codes a 3DGS PLY or SPZ{hint}")

# λ of direct mode (larger = smaller file, lower PSNR). One fit serves the whole range.
DIRECT_LAMBDA_RANGE = (1 / 64, 16.0)
DIRECT_LAMBDA_DEFAULT = 1.0
DIRECT_TRAINED_LAMBDAS = (0.25, 0.5, 1.0, 2.0)  # = hemgs.direct.LAMBDAS (a test keeps them equal)
# Anchor mode's λ, here (torch-free) for the worker's handshake: a variable-rate model's K = 4
# training λ (hemgs.entropy.hemgs.LAMBDAS is this), and the range and default a fixed-rate model
# is trained at (hemgs.fit.LAMBDA_RANGE and FitConfig.lam are these).
ANCHOR_TRAINED_LAMBDAS = (1e-3, 2e-3, 3e-3, 4e-3)
ANCHOR_FIXED_LAMBDA_RANGE = (1e-4, 1e-1)
ANCHOR_LAMBDA_DEFAULT = 1e-3
# Direct mode's parts, on or off by default. The scene-agnostic prior and the AR context are
# built and selectable, but off: here they do not pay for themselves (BD-rate on playbot_lod3, all
# parts on: +2.9%; docs/direct-mode.md, "Defaults") and double the decode time of
# playbot_lod2 (6.5 s against 3.3 s on 2 cores), past the 5 s a near-lossless format needs.
DIRECT_SWITCH_DEFAULTS = {"scene_agnostic": False, "ar": False, "acs": True, "variable_rate": True}
# Anchor mode, the paper's method: every part on (`hemgs train`, the worker's train, batch).
ANCHOR_SWITCH_DEFAULTS = dict.fromkeys(DIRECT_SWITCH_DEFAULTS, True)


def check_mode(mode) -> str:
    if mode not in MODES:
        raise InputError(f"unknown coding mode {mode!r}; use one of {', '.join(MODES)}"[:200])
    return mode


def check_direct_lambda(lam) -> float:
    """The direct-mode λ to code with: a positive finite number within DIRECT_LAMBDA_RANGE."""
    lo, hi = DIRECT_LAMBDA_RANGE
    if isinstance(lam, bool) or not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam > 0):
        raise InputError(f"λ must be a positive number, got {lam}"[:200])
    if not lo <= lam <= hi:
        raise InputError(f"λ={lam:g} is outside what direct mode serves ({lo:g} to {hi:g}; larger λ, smaller file)")
    return float(lam)
