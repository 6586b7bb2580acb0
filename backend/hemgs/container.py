"""The `.hgs` container: magic, version, a JSON header and named, CRC-checked binary sections.

Pure standard library + numpy-free (no torch), so Blender's own Python can read files. The byte
layout is documented in docs/hgs-format.md. The reader trusts nothing: every length is checked
against the bytes actually present before anything is sliced or allocated, and nothing in a file
is ever unpickled or evaluated (the header is plain JSON, the sections are opaque bytes).
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import FormatError, InputError, IntegrityError
from .io.atomic import atomic_write
from .io.reading import read_bytes

MAGIC = b"HEMGS\x00"
FORMAT_MAJOR = 1
FORMAT_MINOR = 0

MAX_HEADER_BYTES = 1 << 20  # the header holds counts and a model config: 1 MiB is generous
MAX_SECTIONS = 256
MAX_NAME_BYTES = 255  # the name length is one byte

_PREFIX = struct.Struct("<6sHHI")  # magic, major, minor, header length
_U32 = struct.Struct("<I")
_SECTION_HEAD = struct.Struct("<QI")  # payload length, CRC32


@dataclass
class HgsFile:
    """A parsed .hgs file: the JSON header, the sections by name (in file order), the version."""

    header: dict
    sections: dict[str, bytes] = field(default_factory=dict)
    version: tuple[int, int] = (FORMAT_MAJOR, FORMAT_MINOR)


def _check_name(name: object) -> bytes:
    if not isinstance(name, str) or not name:
        raise InputError(f"section name {name!r} must be a non-empty string")
    try:
        raw = name.encode("ascii")
    except UnicodeEncodeError:
        raise InputError(f"section name {name!r} must be ASCII") from None
    if len(raw) > MAX_NAME_BYTES or not name.isprintable():
        raise InputError(f"section name {name!r} must be 1-{MAX_NAME_BYTES} printable ASCII characters")
    return raw


def pack_hgs(header: dict, sections: dict[str, bytes]) -> bytes:
    """The bytes of a .hgs file (what `write_hgs` writes)."""
    if not isinstance(header, dict):
        raise InputError(f".hgs header must be a dict, got {type(header).__name__}")
    try:
        # allow_nan=False: NaN/Infinity are not JSON, and other readers would refuse them.
        head = json.dumps(header, ensure_ascii=False, allow_nan=False, sort_keys=True).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise InputError(f".hgs header is not plain JSON data: {exc}") from None
    if len(head) > MAX_HEADER_BYTES:
        raise InputError(f".hgs header is {len(head)} bytes; the limit is {MAX_HEADER_BYTES}")
    if len(sections) > MAX_SECTIONS:
        raise InputError(f"{len(sections)} sections; a .hgs file holds at most {MAX_SECTIONS}")
    parts = [_PREFIX.pack(MAGIC, FORMAT_MAJOR, FORMAT_MINOR, len(head)), head,
             _U32.pack(zlib.crc32(head)), _U32.pack(len(sections))]
    for name, payload in sections.items():
        raw_name = _check_name(name)
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise InputError(f"section {name!r} must be bytes, got {type(payload).__name__}")
        payload = bytes(payload)
        parts += [bytes([len(raw_name)]), raw_name, _SECTION_HEAD.pack(len(payload), zlib.crc32(payload)), payload]
    return b"".join(parts)


def write_hgs(path: str | os.PathLike, header: dict, sections: dict[str, bytes]) -> None:
    """Write a .hgs file atomically: readers see the old file or the complete new one, never a part."""
    data = pack_hgs(header, sections)  # all validation before the file system is touched
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def _foreign_kind(data: bytes) -> str:
    if data.startswith(b"ply"):
        return " (it looks like a PLY file; open it as a scene instead)"
    if data.startswith(b"NGSP") or data.startswith(b"\x1f\x8b"):
        return " (it looks like an SPZ file; open it as a scene instead)"
    return ""


class _Reader:
    """Bounds-checked cursor over the file bytes: every read checks what is actually left."""

    def __init__(self, data: bytes, where: str) -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.where = where

    def take(self, n: int, what: str) -> memoryview:
        left = len(self.data) - self.pos
        if n > left:
            raise FormatError(f"{self.where}: truncated .hgs file ({what} needs {n} bytes, {left} left)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out


def read_hgs(source: str | os.PathLike | bytes | bytearray | memoryview) -> HgsFile:
    """Parse a .hgs file from a path or from its bytes; raise FormatError/IntegrityError if bad."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, where = bytes(source), "<.hgs bytes>"
    else:
        where = str(source)
        data = read_bytes(source, "a .hgs file")
    r = _Reader(data, where)
    if len(data) < len(MAGIC) or not data.startswith(MAGIC):
        raise FormatError(f"{where}: not a .hgs file{_foreign_kind(data)}")
    _, major, minor, head_len = _PREFIX.unpack(r.take(_PREFIX.size, "the file prefix"))
    if major > FORMAT_MAJOR:
        raise FormatError(f"{where}: made by a newer hemgs (format {major}.x); this version reads {FORMAT_MAJOR}.x")
    if major < 1:
        raise FormatError(f"{where}: unknown .hgs format version {major}.{minor}")
    if head_len > MAX_HEADER_BYTES:
        raise FormatError(f"{where}: .hgs header length {head_len} exceeds the {MAX_HEADER_BYTES}-byte limit")
    head = bytes(r.take(head_len, "the header"))
    (head_crc,) = _U32.unpack(r.take(4, "the header CRC"))
    if zlib.crc32(head) != head_crc:
        raise IntegrityError(f"{where}: CRC mismatch in the .hgs header (the file is damaged)")
    try:
        # Plain json.loads: no object hooks, so parsing can only make dicts, lists, str, numbers.
        header = json.loads(head.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FormatError(f"{where}: .hgs header is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise FormatError(f"{where}: .hgs header must be a JSON object, got {type(header).__name__}")
    (count,) = _U32.unpack(r.take(4, "the section count"))
    if count > MAX_SECTIONS:
        raise FormatError(f"{where}: {count} sections exceeds the limit of {MAX_SECTIONS}")
    sections: dict[str, bytes] = {}
    for i in range(count):
        name_len = r.take(1, f"the name length of section {i}")[0]
        raw_name = bytes(r.take(name_len, f"the name of section {i}"))
        try:
            name = raw_name.decode("ascii")
        except UnicodeDecodeError:
            raise FormatError(f"{where}: section {i} has a non-ASCII name") from None
        if not name or not name.isprintable():
            raise FormatError(f"{where}: section {i} has an invalid name {name!r}")
        if name in sections:
            raise FormatError(f"{where}: duplicate section {name!r}")
        length, crc = _SECTION_HEAD.unpack(r.take(_SECTION_HEAD.size, f"the length of section {name!r}"))
        payload = bytes(r.take(length, f"section {name!r}"))  # take() checks length before slicing
        if zlib.crc32(payload) != crc:
            raise IntegrityError(f"{where}: CRC mismatch in section {name!r} (the file is damaged)")
        sections[name] = payload
    if r.pos != len(data):
        raise FormatError(f"{where}: {len(data) - r.pos} unexpected bytes after the last .hgs section")
    return HgsFile(header=header, sections=sections, version=(major, minor))
