"""What every codec's sections share: the rows per network call, the checks a decoder runs on a
file's header and section list, and the part layout (a step guard, then one stream per coding
group) that anchor-mode HEMGS and direct mode both write.

A part section:

    u32 len | step guard (the part's snapped steps)
    u32 G   | then G times: u32 len | stream (codec/streams.py, its step-guard slot empty)
"""

from __future__ import annotations

import struct
from contextlib import contextmanager
from typing import Iterable, Iterator

from ..errors import FormatError, HemgsError
from . import streams

# Rows per network evaluation. Not a format constant: the guard absorbs the tiny differences
# another chunking gives (tested), so a decoder may pick what suits its memory.
CHUNK = 4096


def require_sections(sections: dict[str, bytes], names: Iterable[str]) -> None:
    for name in names:
        if name not in sections:
            raise FormatError(f"the file lacks its '{name}' section")


@contextmanager
def header_fields() -> Iterator[None]:
    """Reading an untrusted header: a missing key, a wrong type or a bad value is a one-line
    FormatError, whatever the reader tripped on."""
    try:
        yield
    except (KeyError, TypeError, ValueError, HemgsError) as exc:
        raise FormatError(f"the file's header is incomplete or malformed: {' '.join(str(exc).split())}"[:300]) from None


def check_identity(header: dict, mode: str, codec: str, what: str) -> None:
    if header.get("mode") != mode or header.get("codec") != codec:
        raise FormatError(f"not {what} (mode {header.get('mode')!r}, codec {header.get('codec')!r})"[:200])


def write_part(step_guard: bytes, group_streams: list[bytes]) -> bytes:
    """One part's section (the layout above)."""
    out = [struct.pack("<I", len(step_guard)), step_guard, struct.pack("<I", len(group_streams))]
    for s in group_streams:
        out += [struct.pack("<I", len(s)), s]
    return b"".join(out)


def read_part(data: bytes, name: str, n_groups: int) -> tuple[bytes, list]:
    """(step guard, each group's stream) of a section `write_part` wrote, which must hold
    `n_groups` groups; errors name the section."""
    def take(pos, n, what):
        if pos + n > len(data):
            raise FormatError(f"section {name}: truncated in its {what}")
        return bytes(data[pos:pos + n]), pos + n

    raw, pos = take(0, 4, "step guard length")
    guard, pos = take(pos, struct.unpack("<I", raw)[0], "step guard")
    raw, pos = take(pos, 4, "group count")
    g = struct.unpack("<I", raw)[0]
    if g != n_groups:
        raise FormatError(f"section {name}: {g} groups, the header's scheme has {n_groups}")
    rests = []
    for i in range(g):
        raw, pos = take(pos, 4, f"group {i} length")
        body, pos = take(pos, struct.unpack("<I", raw)[0], f"group {i}")
        step, rest = streams.split(body, f"{name} (group {i})")
        if step:
            raise FormatError(f"section {name}: group {i} carries a step guard of its own")
        rests.append(rest)
    if pos != len(data):
        raise FormatError(f"section {name}: {len(data) - pos} bytes after its last group")
    return guard, rests
