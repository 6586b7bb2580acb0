"""The codecs a `.hgs` file can name, and the one way to encode and decode through them.

A codec is a header's (mode, codec) pair: ("anchor", "hac") HAC's entropy model on an anchor
model, ("anchor", "hemgs") the HEMGS model on one, ("direct", "hemgs") HEMGS on a scene's own
Gaussians. Each lives in its own module with `encode(...) -> (header, sections, decoded)` and
`decode(header, sections) -> decoded`, every decoded value a `Decoded` (below). Each writes its
current format number; older headers pass through `codec/legacy.py` first. Torch-free to import:
a codec's module loads on first use.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from ..errors import FormatError
from . import legacy


class Decoded(Protocol):
    """What any decoded file gives: its header, its Gaussians and a renderer."""

    header: dict

    def gaussians(self, sh_degree: int | None = None) -> Any:
        """The file as a 3DGS scene (hemgs.scene.GaussianScene)."""

    def renderer(self, device=None) -> Callable:
        """camera -> image (H, W, 3) in [0, 1], as the codec means the file to be seen."""


@dataclass(frozen=True)
class Codec:
    mode: str
    name: str
    module: str  # holds encode and decode
    format: int  # the header format it writes

    def load(self):
        return importlib.import_module(self.module)

    def identity(self) -> dict:
        """The header fields that name this codec and its format: first in every header it writes."""
        return {"mode": self.mode, "codec": self.name, "format": self.format}


CODECS = {(c.mode, c.name): c for c in (
    Codec("anchor", "hac", "hemgs.codec.anchor", 2),
    Codec("anchor", "hemgs", "hemgs.codec.hemgs_codec", 2),
    Codec("direct", "hemgs", "hemgs.direct.codec", 2),
)}


def get(mode: str, name: str) -> Codec:
    try:
        return CODECS[(mode, name)]
    except (KeyError, TypeError):
        raise FormatError(f"unknown codec {name!r} for coding mode {mode!r}"[:200]) from None


def for_entropy(entropy) -> Codec:
    """The anchor-mode codec of a trained entropy model (its class names it: `CODEC`)."""
    return get("anchor", type(entropy).CODEC)


def current_header(header: dict) -> dict:
    """`header` in its codec's current format (legacy readers for older ones)."""
    if not isinstance(header, dict):
        raise FormatError("the file's header is not a JSON object")
    return legacy.upgrade(header, get(header.get("mode"), header.get("codec")).format)


def decode(header: dict, sections: dict[str, bytes], progress=None) -> Decoded:
    """Decode a file's header and sections with the codec its header names; `progress(stage, step,
    total, info)` hears stage "decode" (direct mode per coded stage, anchor mode as one step)."""
    header = current_header(header)
    codec = get(header["mode"], header["codec"])
    return codec.load().decode(header, sections, progress=progress)
