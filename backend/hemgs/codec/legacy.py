"""Readers of the headers each codec wrote before its current format, kept in one place.

Every header names its codec's format (`"format"`); files made before the numbers (2026-12-07) have none, which
is format 1. Format 1 headers left out the fields added later, a missing field meaning the
behaviour before it. `upgrade` writes those meanings in, so each codec's reader knows one layout,
requires every field, and old files (tests/golden) decode as they always did. A new format adds
its step here: the old format's defaults, written once, never read from today's dataclasses.
"""

from __future__ import annotations

from ..errors import FormatError

# Format 1's missing fields and what they meant.
_V1_HEADER = {"networks": "float16"}  # every codec: float16 safetensors networks
_V1_DIRECT_HEADER = {"skips": False, "position_lattice": None, "position_log_lattice": None}
# every stage under Gaussians on multiples of its step, scales unordered, rotations as rotation
# vectors, colour in one piece, no SH repeats
_V1_DIRECT_CONFIG = {"laplace": [], "uniform": [], "shifted": False, "scale_ranks": False,
                     "sh_repeats": False, "rotation": "rotvec", "chain": False}
_V1_HEMGS_CONFIG = {"rate_exponent": 0.0}  # a fixed step base
_V1_ANCHOR_CONFIG = {"use_dist": True}


def _v1_to_v2(header: dict) -> dict:
    h = {**_V1_HEADER, **header, "format": 2}

    def fill(key: str, defaults: dict) -> None:
        if isinstance(h.get(key), dict):  # a malformed value is left for the reader to refuse
            h[key] = {**defaults, **h[key]}

    if h.get("mode") == "direct":
        h = {**_V1_DIRECT_HEADER, **h}
        fill("direct", _V1_DIRECT_CONFIG)
    else:
        fill("anchor_config", _V1_ANCHOR_CONFIG)
        if h.get("codec") == "hemgs":
            fill("hemgs", _V1_HEMGS_CONFIG)
    return h


# format -> the step to the next one, the same for every codec so far
_STEPS = {1: _v1_to_v2}


def upgrade(header: dict, current: int) -> dict:
    """`header` in its codec's `current` format; FormatError for a format this version does not
    know (a newer file, or a malformed number)."""
    version = header.get("format", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise FormatError(f"the file's header has a malformed format number {str(version)[:20]!r}")
    if version > current:
        raise FormatError(f"the file is in format {version} of its codec, newer than this hemgs reads "
                          f"({current}); update hemgs")
    while version < current:
        header = _STEPS[version](header)
        version = header["format"]
    return header
