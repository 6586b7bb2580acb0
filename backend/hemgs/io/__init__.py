"""3DGS file formats: Inria PLY, Niantic SPZ, Scaffold-GS anchor PLY (numpy only, no torch).

`load_scene` / `detect_format` go by the file's content (its first bytes and, for PLY, its
property names), never by its extension; `save_scene` goes by the extension, since there is no
content yet. Submodules: `ply`, `spz`, `scaffold` (the readers and writers), `atomic` (write
then rename, for every writer).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import FormatError, InputError
from ..scene import GaussianScene
from .atomic import atomic_write, write_bytes_atomic
from .ply import PLY_MAGIC, is_scaffold_names, read_ply, read_ply_header, write_ply
from .scaffold import ScaffoldAnchors, load_scaffold_mlps, read_scaffold, read_scaffold_ply, write_scaffold_ply
from .spz import GZIP_MAGIC, MAGIC_BYTES as SPZ_V4_MAGIC, read_spz, write_spz

HGS_MAGIC = b"HEMGS\x00"

__all__ = [
    "load_scene", "save_scene", "detect_format", "atomic_write", "write_bytes_atomic",
    "read_ply", "write_ply", "read_spz", "write_spz",
    "ScaffoldAnchors", "read_scaffold", "read_scaffold_ply", "write_scaffold_ply", "load_scaffold_mlps", "HGS_MAGIC",
]


def detect_format(path: str | os.PathLike) -> str:
    """'ply', 'scaffold_ply', 'spz', 'hgs' or 'model' (a trained model: safetensors), from the content.

    SPZ v2/v3 files are gzip streams (1f 8b); v4 files start with 'NGSP'. Raises InputError for a
    missing file and FormatError for content of none of these formats.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            after = fh.read(1)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, not a scene file") from None
    if head.startswith(HGS_MAGIC):
        return "hgs"
    if head.startswith(PLY_MAGIC):
        names = read_ply_header(path).property_names("vertex")
        return "scaffold_ply" if is_scaffold_names(names) else "ply"
    if head.startswith(GZIP_MAGIC) or head.startswith(SPZ_V4_MAGIC):
        return "spz"
    if not head:
        raise FormatError(f"{path}: empty file")
    if len(head) == 8 and after == b"{":  # safetensors: u64 header length, then its JSON header
        return "model"
    raise FormatError(f"{path}: unknown format (not PLY, SPZ or .hgs; starts with {head[:6]!r})")


def load_scene(path: str | os.PathLike) -> GaussianScene:
    """Load a 3DGS PLY or SPZ file into a `GaussianScene` (format detected from the content).

    Sets scene.meta['source_format'] ('ply' or 'spz') and scene.meta['path']. A Scaffold-GS
    anchor PLY or a .hgs file is not a plain Gaussian scene: they raise FormatError pointing to
    their own readers.
    """
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "ply":
        scene = read_ply(path)
    elif fmt == "spz":
        scene = read_spz(path)
    elif fmt == "scaffold_ply":
        raise FormatError(
            f"{path}: this is a Scaffold-GS anchor PLY (it has f_anchor_feat_*), not a 3DGS PLY; "
            "read it with hemgs.io.scaffold.read_scaffold_ply"
        )
    else:
        raise FormatError(f"{path}: is a .hgs file; decode it with the HEMGS decoder, not load_scene")
    scene.meta["source_format"] = fmt
    scene.meta["path"] = str(path)
    return scene


def save_scene(scene: GaussianScene, path: str | os.PathLike, **options) -> None:
    """Save `scene` by extension: .ply (Inria binary LE; ascii=True for text) or .spz (v4; version=3,
    or spz_version=3, for gzip). Any other extension raises InputError. Written atomically."""
    path = Path(path)
    ext = path.suffix.lower()
    if "spz_version" in options:  # the CLI's name for it
        options["version"] = options.pop("spz_version")
    if ext == ".ply":
        write_ply(scene, path, **options)
    elif ext == ".spz":
        write_spz(scene, path, **options)
    else:
        raise InputError(f"{path}: cannot save a scene as '{ext or '(no extension)'}'; use .ply or .spz")
