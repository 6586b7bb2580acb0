"""3DGS file formats: Inria PLY, Niantic SPZ, Scaffold-GS anchor PLY (numpy only, no torch).

`load_scene` / `detect_format` go by the file's content (its first bytes and, for PLY, its
property names), never by its extension; `save_scene` goes by the extension, since there is no
content yet. All three read one table, `formats.FORMATS`. Submodules: `formats` (that table),
`ply`, `spz`, `scaffold` (the readers and writers), `atomic` (write then rename, for every writer).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import FormatError
from ..scene import GaussianScene
from . import formats
from .atomic import atomic_write, write_bytes_atomic
from .formats import HGS_MAGIC
from .ply import read_ply, write_ply
from .scaffold import ScaffoldAnchors, load_scaffold_mlps, read_scaffold, read_scaffold_ply, write_scaffold_ply
from .spz import read_spz, write_spz

__all__ = [
    "load_scene", "save_scene", "detect_format", "formats", "atomic_write", "write_bytes_atomic",
    "read_ply", "write_ply", "read_spz", "write_spz",
    "ScaffoldAnchors", "read_scaffold", "read_scaffold_ply", "write_scaffold_ply", "load_scaffold_mlps", "HGS_MAGIC",
]


def detect_format(path: str | os.PathLike) -> str:
    """The name of the file's format, from its content: 'ply', 'scaffold_ply', 'spz', 'hgs',
    'model' (a trained model: safetensors) or a registered one (`formats.FORMATS`).

    SPZ v2/v3 files are gzip streams (1f 8b); v4 files start with 'NGSP'. Raises InputError for a
    missing file and FormatError for content of none of these formats.
    """
    return formats.detect(path).name


def load_scene(path: str | os.PathLike) -> GaussianScene:
    """Load a 3DGS scene file (PLY, SPZ: `formats.readable()`) into a `GaussianScene`, by content.

    Sets scene.meta['source_format'] (the format's name) and scene.meta['path']. A Scaffold-GS
    anchor PLY, a .hgs file or a trained model is not a plain Gaussian scene: they raise
    FormatError pointing to their own readers.
    """
    path = Path(path)
    fmt = formats.detect(path)
    if fmt.read is None:
        raise FormatError(f"{path}: {fmt.not_a_scene or f'a {fmt.name} file is not a scene'}")
    scene = fmt.read(path)
    scene.meta["source_format"] = fmt.name
    scene.meta["path"] = str(path)
    return scene


def save_scene(scene: GaussianScene, path: str | os.PathLike, **options) -> None:
    """Save `scene` by extension (`formats.writable()`): .ply (Inria binary LE; ascii=True for text)
    or .spz (v4; version=3, or spz_version=3, for gzip). Any other extension raises InputError.
    Written atomically."""
    path = Path(path)
    formats.for_saving(path).write(scene, path, **options)
