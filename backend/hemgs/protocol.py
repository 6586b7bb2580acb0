"""The worker's JSON-lines protocol (docs/protocol.md): the hello's capability fields, the events'
encoding, and the readers of a request's arguments, each a one-line InputError naming the op.
The operations themselves are in worker.py.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable, TextIO

from .errors import InputError
from .modes import (ANCHOR_FIXED_LAMBDA_RANGE, ANCHOR_LAMBDA_DEFAULT, ANCHOR_TRAINED_LAMBDAS, DEFAULT_MODE,
                    DIRECT_LAMBDA_DEFAULT, DIRECT_LAMBDA_RANGE, DIRECT_SWITCH_DEFAULTS, DIRECT_TRAINED_LAMBDAS,
                    MODES)
from .service import ViewSpec

# Protocol version rules (docs/protocol.md): additions a client may ignore (new optional arguments,
# new result or hello fields, new ops) keep the version; removing or changing the meaning of
# anything a client sends or reads bumps it.
PROTOCOL = 1
# Operations that take `dry_run`: check the arguments and answer without work. In the hello, so a
# client never sends it to an older worker, which would ignore it and do the work.
DRY_RUN_OPS = ("compress", "train")
# What the codec can do, for the add-on's λ controls. `train` makes a variable-rate HEMGS model by
# default (one model, any λ of its trained range widened by `lambda_margin`); "hac" and
# variable_rate false make fixed-rate models (one λ each). Each model reports its own range.
# `fixed_rate`: the λ a fixed-rate model is trained at (`train`'s `lambda`; hemgs.modes, where
# hemgs.fit's LAMBDA_RANGE and FitConfig.lam come from).
# `modes`: the coding modes `compress` takes (`mode` argument); "direct" (anchor-free) needs no
# model, fits the source itself and codes any λ of `direct.lambda_range` (its own units).
CODEC = {"default": "hemgs", "codecs": ["hemgs", "hac"], "variable_rate": True,
         "lambdas": list(ANCHOR_TRAINED_LAMBDAS), "lambda_margin": 2.0,
         "fixed_rate": {"lambda_range": list(ANCHOR_FIXED_LAMBDA_RANGE), "lambda_default": ANCHOR_LAMBDA_DEFAULT},
         "modes": list(MODES), "default_mode": DEFAULT_MODE,
         "direct": {"lambdas": list(DIRECT_TRAINED_LAMBDAS), "lambda_range": list(DIRECT_LAMBDA_RANGE),
                    "lambda_default": DIRECT_LAMBDA_DEFAULT, "switch_defaults": dict(DIRECT_SWITCH_DEFAULTS)}}


class Emitter:
    """Writes events as JSON lines; one lock-free writer, since requests run one at a time."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def send(self, event: dict) -> None:
        self.stream.write(json.dumps(event, allow_nan=False, default=json_default) + "\n")
        self.stream.flush()


def json_default(obj):
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def finite(value):
    """JSON has no inf/nan: identical renders (PSNR inf) travel as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


# ---- argument helpers ----------------------------------------------------------------------
def arg(args: dict, name: str, kind: type, default: Any = ..., op: str = "") -> Any:
    if name not in args:
        if default is ...:
            raise InputError(f"{op}: missing argument '{name}'")
        return default
    value = args[name]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise InputError(f"{op}: argument '{name}' must be {kind.__name__}, got {type(value).__name__}")
    return value


def opt(args: dict, name: str, kind: type, op: str) -> Any:
    """An optional argument: None when absent or null."""
    return arg(args, name, kind, None, op) if args.get(name) is not None else None


def warn(progress: Callable) -> Callable[[str], None]:
    """Repairs of a scene (sanitize) as the protocol's warning events."""
    return lambda message: progress("warning", message=message)


def view_spec(args: dict, op: str, *, none_ok: bool = False) -> ViewSpec:
    """The request's `cameras`, `views` (count; `none_ok`: 0 means no PSNR/SSIM), `width` and
    `height` (default: `width`)."""
    width = arg(args, "width", int, 256, op)
    height = arg(args, "height", int, width, op)
    n = arg(args, "views", int, 16, op)
    if none_ok and n < 0:
        raise InputError(f"{op}: views must be at least 0 (0: no PSNR/SSIM)")
    if (n != 0 or not none_ok) and (width < 1 or height < 1 or n < 1):
        raise InputError(f"{op}: width, height and views must be at least 1")
    return ViewSpec(n=n, width=width, height=height, cameras=opt(args, "cameras", str, op))


def device_arg(args: dict, op: str):
    from .device import resolve_device

    return resolve_device(arg(args, "device", str, "auto", op))


def numbers(args: dict, name: str, op: str) -> list[float]:
    """An optional list-of-numbers argument ([] when absent)."""
    values = opt(args, name, list, op) or []
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise InputError(f"{op}: argument '{name}' must be a list of numbers")
    return [float(v) for v in values]
