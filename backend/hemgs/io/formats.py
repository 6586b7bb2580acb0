"""The file-format registry: one table of the files hemgs recognises (numpy only, no torch).

`FORMATS` drives `hemgs.io.detect_format` (each entry's content test, in table order),
`load_scene` (its reader), `save_scene` (its writer, by extension), the CLI's help texts and
messages (`labels`, `extension_list`), and the Blender add-on's importer (`preview_extensions`,
which the add-on keeps as a literal and a test keeps equal). A new format is its reader/writer
module plus one line in `FORMATS`; tests/test_formats.py adds one for a test's duration.

Kinds: "scene" (3DGS Gaussians, what `load_scene` returns), "anchors" (a Scaffold-GS anchor
PLY), "hgs" (a coded file) and "model" (a trained model). Only "scene" formats have readers
here; the others are recognised so that every front end can say what a file is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from ..errors import FormatError, InputError
from ..scene import GaussianScene
from .gltf import read_glb, sniff_glb, write_glb
from .reading import read_bytes
from .ply import read_ply, sniff_ply, write_ply
from .scaffold import sniff_scaffold_ply
from .sog import read_sog, sniff_sog, write_sog
from .spz import read_spz, sniff_spz, write_spz

# The first bytes of a .hgs file (hemgs.container.MAGIC; kept here so that detecting a file never
# imports the container module).
HGS_MAGIC = b"HEMGS\x00"
# Enough for every content test: the longest magic, and safetensors' 8-byte length plus its '{'.
HEAD_BYTES = 9

Sniff = Callable[[bytes, Path], bool]


@dataclass(frozen=True)
class FileFormat:
    name: str  # what detect_format answers
    extensions: tuple[str, ...]  # lower case with the dot; the first one is the one help texts name
    sniff: Sniff  # (the file's first HEAD_BYTES bytes, its path) -> is it this format?
    kind: str = "scene"  # "scene" | "anchors" | "hgs" | "model"
    label: str | None = None  # its name in help texts and messages; None: a variant not listed there
    read: Callable[[Path], GaussianScene] | None = None  # load_scene's reader (kind "scene")
    write: Callable[..., None] | None = None  # save_scene's writer: (scene, path, **options)
    not_a_scene: str = ""  # load_scene's message for a format it does not read ("<path>: " before it)
    preview: bool = True  # the Blender importer takes it (preview_extensions)
    # Blender's own Python cannot read it (.hgs: the decoder is torch; SOG: its images need Pillow),
    # so the add-on has the backend worker bake its preview (backend_extensions).
    backend: bool = False


def _sniff_hgs(head: bytes, path: Path) -> bool:
    return head.startswith(HGS_MAGIC)


def _sniff_model(head: bytes, path: Path) -> bool:
    # safetensors: a u64 header length, then its JSON header.
    return len(head) == HEAD_BYTES and head[8:9] == b"{"


# Detection tries these in order: the Scaffold-GS PLY before the plain PLY (same magic; its
# property names tell them apart), the trained model last (its test is the weakest).
FORMATS: list[FileFormat] = [
    FileFormat("scaffold_ply", (".ply",), sniff_scaffold_ply, kind="anchors",
               not_a_scene="this is a Scaffold-GS anchor PLY (it has f_anchor_feat_*), not a 3DGS PLY; "
                           "read it with hemgs.io.scaffold.read_scaffold_ply"),
    FileFormat("ply", (".ply",), sniff_ply, label="PLY", read=read_ply, write=write_ply),
    FileFormat("spz", (".spz",), sniff_spz, label="SPZ", read=read_spz, write=write_spz),
    FileFormat("glb", (".glb",), sniff_glb, label="glTF", read=read_glb, write=write_glb),
    FileFormat("sog", (".sog",), sniff_sog, label="SOG", read=read_sog, write=write_sog, backend=True),
    FileFormat("hgs", (".hgs",), _sniff_hgs, kind="hgs", label=".hgs", backend=True,
               not_a_scene="is a .hgs file; decode it with the HEMGS decoder, not load_scene"),
    FileFormat("model", (".safetensors",), _sniff_model, kind="model",
               not_a_scene="is a trained model (safetensors), not a scene; code it with `hemgs compress`"),
]


def get(name: str) -> FileFormat:
    fmt = next((f for f in FORMATS if f.name == name), None)
    if fmt is None:
        raise KeyError(name)
    return fmt


def register(fmt: FileFormat, *, before: str | None = None) -> None:
    """Add `fmt` to the table (at the end, or before the format named `before`): for plug-ins and
    tests; a format of the project's own is a line in `FORMATS` instead."""
    if any(f.name == fmt.name for f in FORMATS):
        raise ValueError(f"a file format named {fmt.name!r} is registered already")
    at = len(FORMATS) if before is None else FORMATS.index(get(before))
    FORMATS.insert(at, fmt)


def unregister(name: str) -> None:
    FORMATS.remove(get(name))


def readable() -> list[FileFormat]:
    """The formats `load_scene` reads."""
    return [f for f in FORMATS if f.read is not None]


def writable() -> list[FileFormat]:
    """The formats `save_scene` writes."""
    return [f for f in FORMATS if f.write is not None]


def listed() -> list[FileFormat]:
    """The formats help texts name (variants such as the Scaffold-GS PLY are left out)."""
    return [f for f in FORMATS if f.label is not None]


def labels(formats: Iterable[FileFormat], conj: str = "or") -> str:
    """'PLY, SPZ or .hgs': the labels of `formats` for a sentence (variants without one skipped)."""
    return _sentence([f.label for f in formats if f.label], conj)


def extensions(formats: Iterable[FileFormat]) -> list[str]:
    """The extensions of `formats`, each once, in table order."""
    return list(dict.fromkeys(e for f in formats for e in f.extensions))


def extension_list(formats: Iterable[FileFormat], conj: str = "or") -> str:
    """'.ply or .spz': the first extension of each format, for a sentence."""
    return _sentence(list(dict.fromkeys(f.extensions[0] for f in formats)), conj)


def preview_extensions() -> list[str]:
    """What a viewer opens as a splat preview: every kind but a trained model, less the formats marked
    `preview=False` (the Blender add-on's importer; it keeps these as a literal, which
    tests/test_formats.py keeps equal)."""
    return extensions(f for f in FORMATS if f.kind != "model" and f.preview)


def backend_extensions() -> list[str]:
    """The previews the Blender add-on has the backend worker bake (`FileFormat.backend`; a literal
    in the add-on too)."""
    return extensions(f for f in FORMATS if f.backend and f.preview)


def _sentence(words: list[str], conj: str) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} {conj} {words[-1]}"


def detect(path: str | os.PathLike) -> FileFormat:
    """The format of the file at `path`, from its content (never its name).

    Raises InputError for a missing file or a folder, FormatError for an empty file or content of
    no registered format (and the PLY reader's FormatError for a truncated or foreign PLY header)."""
    path = Path(path)
    head = read_bytes(path, "a scene file", HEAD_BYTES)
    if not head:
        raise FormatError(f"{path}: empty file")
    for fmt in FORMATS:
        if fmt.sniff(head, path):
            return fmt
    raise FormatError(f"{path}: unknown format (not {labels(listed())}; starts with {head[:6]!r})")


def for_saving(path: str | os.PathLike) -> FileFormat:
    """The format `save_scene` writes to `path`, by its extension (there is no content yet)."""
    path = Path(path)
    ext = path.suffix.lower()
    fmt = next((f for f in writable() if ext in f.extensions), None)
    if fmt is None:
        raise InputError(f"{path}: cannot save a scene as '{ext or '(no extension)'}'; "
                         f"use {extension_list(writable())}")
    return fmt
