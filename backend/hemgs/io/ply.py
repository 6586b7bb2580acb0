"""Inria 3DGS PLY: reader and writer (numpy + plyfile only, no torch).

Reading goes by property NAME, never by position, so any property order, extra properties,
missing normals, binary little/big endian and ASCII, and any numeric property type all load.
`f_rest_*` is stored channel-major (all R coefficients, then G, then B) and is reordered into
`GaussianScene.sh`'s coefficient-major (N, K, 3) layout.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import plyfile

from ..errors import FormatError, InputError
from ..scene import GaussianScene
from .atomic import atomic_write
from .reading import read_bytes

PLY_MAGIC = b"ply\n"
# Headers of real files are a few KiB; this bound only stops us scanning a foreign file forever.
MAX_HEADER_BYTES = 1 << 20

_BASE = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
         "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
_REST_COUNTS = {0: 0, 9: 1, 24: 2, 45: 3}  # f_rest count -> SH degree
_REST_RE = re.compile(r"^f_rest_(\d+)$")

# Byte sizes of the PLY scalar types (the names plyfile accepts).
_TYPE_SIZES = {
    "char": 1, "int8": 1, "uchar": 1, "uint8": 1,
    "short": 2, "int16": 2, "ushort": 2, "uint16": 2,
    "int": 4, "int32": 4, "uint": 4, "uint32": 4,
    "float": 4, "float32": 4, "double": 8, "float64": 8,
}


@dataclass
class PlyElementInfo:
    name: str
    count: int
    properties: list[tuple[str, str, str | None]]  # (name, value type, list-count type or None)


@dataclass
class PlyHeader:
    """What the header of a PLY file declares, read without touching the body."""

    fmt: str  # "ascii" | "binary_little_endian" | "binary_big_endian"
    elements: list[PlyElementInfo]
    header_bytes: int
    file_bytes: int

    def element(self, name: str) -> PlyElementInfo | None:
        return next((e for e in self.elements if e.name == name), None)

    def property_names(self, element: str = "vertex") -> list[str]:
        el = self.element(element)
        return [p[0] for p in el.properties] if el else []


def read_ply_header(path: str | os.PathLike) -> PlyHeader:
    """Parse and sanity-check a PLY header; refuses bodies the file is too short to hold.

    Hand-written (plyfile parses the header too, but only as part of reading the whole body):
    we need the declared counts BEFORE anything is allocated, to refuse a header that claims
    millions of vertices in a tiny file.
    """
    path = Path(path)
    head = read_bytes(path, "a PLY file", MAX_HEADER_BYTES)
    size = path.stat().st_size
    if not head.startswith(PLY_MAGIC):
        if head.startswith(b"ply\r\n"):
            raise FormatError(f"{path}: PLY header uses CRLF line endings, which plyfile cannot read")
        raise FormatError(f"{path}: not a PLY file (does not start with 'ply')")
    end = head.find(b"end_header\n")
    if end < 0:
        raise FormatError(f"{path}: truncated or corrupt PLY header (no 'end_header' line)")
    header_bytes = end + len(b"end_header\n")
    try:
        lines = head[:end].decode("ascii").split("\n")
    except UnicodeDecodeError:
        raise FormatError(f"{path}: PLY header is not ASCII text") from None

    fmt = None
    elements: list[PlyElementInfo] = []
    for raw in lines[1:]:
        words = raw.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        try:
            if words[0] == "format":
                fmt = words[1]
                if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
                    raise FormatError(f"{path}: unknown PLY format '{fmt}'")
            elif words[0] == "element":
                count = int(words[2])
                if count < 0:
                    raise ValueError
                elements.append(PlyElementInfo(words[1], count, []))
            elif words[0] == "property":
                if not elements:
                    raise ValueError
                if words[1] == "list":
                    prop = (words[4], words[3], words[2])
                else:
                    prop = (words[2], words[1], None)
                for t in prop[1:]:
                    if t is not None and t not in _TYPE_SIZES:
                        raise FormatError(f"{path}: unsupported PLY property type '{t}' for '{prop[0]}'")
                elements[-1].properties.append(prop)
        except (IndexError, ValueError):
            raise FormatError(f"{path}: malformed PLY header line '{raw.strip()}'") from None
    if fmt is None:
        raise FormatError(f"{path}: PLY header has no 'format' line")

    header = PlyHeader(fmt, elements, header_bytes, size)
    need = _min_body_bytes(header)
    have = size - header_bytes
    if need > have:
        raise FormatError(
            f"{path}: truncated PLY: the header declares "
            + ", ".join(f"{e.count} {e.name}" for e in elements)
            + f" (at least {need} bytes) but only {have} bytes follow it"
        )
    return header


def _min_body_bytes(header: PlyHeader) -> int:
    """A lower bound of the body size the header implies (exact for binary without lists)."""
    total = 0
    for el in header.elements:
        if header.fmt == "ascii":
            row = 2 * max(len(el.properties), 1)  # each value: at least one digit and a separator
        else:
            row = sum(_TYPE_SIZES[p[2]] if p[2] else _TYPE_SIZES[p[1]] for p in el.properties)
        total += el.count * row
    return total


def is_scaffold_names(names: list[str]) -> bool:
    """True for a Scaffold-GS / HAC anchor PLY (it has anchor features, not Gaussians)."""
    return any(n.startswith("f_anchor_feat_") for n in names)


def sniff_ply(head: bytes, path: Path) -> bool:
    """The registry's content test (io/formats.py): a PLY of any kind; Scaffold-GS's is tested first."""
    return head.startswith(PLY_MAGIC)


def read_ply_vertices(path: str | os.PathLike) -> tuple[PlyHeader, np.ndarray]:
    """Header plus the raw structured array of the 'vertex' element (mapped errors)."""
    path = Path(path)
    header = read_ply_header(path)
    if header.element("vertex") is None:
        raise FormatError(f"{path}: PLY has no 'vertex' element")
    for name, _, count_type in header.element("vertex").properties:
        if count_type is not None:
            raise FormatError(f"{path}: vertex property '{name}' is a list; 3DGS PLYs have only scalars")
    try:
        with open(path, "rb") as fh:
            # Memory-mapped binary reads are ~100x faster than plyfile's per-row path; callers copy
            # the columns out, so the mapping is released as soon as this array is dropped.
            data = plyfile.PlyData.read(fh, mmap="r")
        vertex = data["vertex"].data
    except MemoryError:
        raise FormatError(f"{path}: PLY too large to load into memory") from None
    except Exception as exc:  # plyfile raises many types (PlyParseError, ValueError, EOFError...)
        msg = " ".join(str(exc).split())[:200]
        raise FormatError(f"{path}: corrupt or truncated PLY ({type(exc).__name__}: {msg})") from None
    if len(vertex) != header.element("vertex").count:
        raise FormatError(f"{path}: truncated PLY: read {len(vertex)} of {header.element('vertex').count} vertices")
    return header, vertex


def read_ply(path: str | os.PathLike) -> GaussianScene:
    """Read an Inria-layout 3DGS PLY (by property name) into a `GaussianScene`.

    Accepts SH degree 0-3 (0, 9, 24 or 45 `f_rest_*`), with or without normals, any property
    order and numeric type, binary LE/BE and ASCII. Extra properties are ignored.
    Raises InputError (missing file) or FormatError (anything wrong with its content).
    """
    path = Path(path)
    header, vertex = read_ply_vertices(path)
    names = list(vertex.dtype.names or ())
    missing = [n for n in _BASE if n not in names]
    if missing:
        if is_scaffold_names(names):
            raise FormatError(
                f"{path}: this is a Scaffold-GS anchor PLY (it has f_anchor_feat_*), not a 3DGS PLY; "
                "read it with hemgs.io.scaffold.read_scaffold_ply"
            )
        raise FormatError(f"{path}: not a 3DGS PLY, missing properties: {' '.join(missing)}")

    rest_idx = sorted(int(m.group(1)) for n in names if (m := _REST_RE.match(n)))
    if len(rest_idx) not in _REST_COUNTS or rest_idx != list(range(len(rest_idx))):
        raise FormatError(
            f"{path}: {len(rest_idx)} f_rest_* properties (indices {_index_summary(rest_idx)}); "
            "a 3DGS PLY has 0, 9, 24 or 45, numbered from 0 (SH degree 0-3)"
        )

    n = len(vertex)
    cols = _columns(vertex)
    # SH in the scene's (N, K, 3) order, gathered straight into it: coefficient k of channel c is
    # f_dc_c for k = 0, else f_rest_{c·(K-1) + k-1} (Inria's channel-major rest).
    k_rest = len(rest_idx) // 3
    order = [f"f_dc_{c}" if k == 0 else f"f_rest_{c * k_rest + k - 1}" for k in range(k_rest + 1) for c in range(3)]
    sh = cols(order).reshape(n, k_rest + 1, 3)
    scene = GaussianScene(
        means=cols(["x", "y", "z"]),
        quats=cols(["rot_0", "rot_1", "rot_2", "rot_3"]),
        log_scales=cols(["scale_0", "scale_1", "scale_2"]),
        opacity_logits=cols(["opacity"])[:, 0],
        sh=sh,
        meta={"source_format": "ply", "path": str(path), "ply_format": header.fmt},
    )
    return scene


def _columns(vertex: np.ndarray):
    """cols(names) -> a contiguous (N, len(names)) float32 array of those vertex properties.

    A file of little-endian float32 properties only (the Inria layout) is viewed as one (N, P)
    matrix and gathered in one pass, which a scene of millions of Gaussians needs to load in
    seconds; any other layout is copied a column at a time."""
    names = vertex.dtype.names or ()
    fields = vertex.dtype.fields or {}
    plain = (vertex.dtype.itemsize == 4 * len(names) and vertex.flags.c_contiguous
             and all(fields[k][0] == np.dtype("<f4") and fields[k][1] == 4 * j for j, k in enumerate(names)))
    if plain:
        flat = vertex.view("<f4").reshape(len(vertex), len(names))
        where = {k: j for j, k in enumerate(names)}
        return lambda keys: np.take(np.asarray(flat), [where[k] for k in keys], axis=1)  # (fancy indexing: 20x slower)

    def cols(keys: list[str]) -> np.ndarray:
        out = np.empty((len(vertex), len(keys)), np.float32)
        for j, k in enumerate(keys):
            out[:, j] = vertex[k]
        return out

    return cols


def _index_summary(idx: list[int]) -> str:
    if not idx:
        return "none"
    return f"{idx[0]}..{idx[-1]}" if idx == list(range(idx[0], idx[-1] + 1)) else "not contiguous"


def inria_dtype(sh_degree: int) -> np.dtype:
    """The standard Inria vertex layout for an SH degree (all little-endian float32)."""
    m = 3 * ((sh_degree + 1) ** 2 - 1)
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(m)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    return np.dtype([(k, "<f4") for k in names])


def scene_to_vertices(scene: GaussianScene) -> np.ndarray:
    """The scene as a structured array in the standard Inria layout (normals are zero)."""
    n = len(scene)
    rec = np.zeros(n, inria_dtype(scene.sh_degree))
    for j, k in enumerate("xyz"):
        rec[k] = scene.means[:, j]
    for j in range(3):
        rec[f"f_dc_{j}"] = scene.sh[:, 0, j]
    # Coefficient-major (N, K-1, 3) back to Inria's channel-major f_rest order.
    # An explicit width: reshape(n, -1) cannot infer it when n == 0 (an empty scene).
    rest = scene.sh[:, 1:, :].transpose(0, 2, 1).reshape(n, 3 * (scene.sh.shape[1] - 1))
    for i in range(rest.shape[1]):
        rec[f"f_rest_{i}"] = rest[:, i]
    rec["opacity"] = scene.opacity_logits
    for j in range(3):
        rec[f"scale_{j}"] = scene.log_scales[:, j]
    for j in range(4):
        rec[f"rot_{j}"] = scene.quats[:, j]
    return rec


def write_ply(scene: GaussianScene, path: str | os.PathLike, *, ascii: bool = False) -> None:
    """Write `scene` as a standard Inria 3DGS PLY (binary little-endian, or ASCII on request).

    Property order: x y z nx ny nz f_dc_0..2 f_rest_* opacity scale_0..2 rot_0..3, all float32.
    The file appears atomically (temp file + rename); on any error nothing is left behind.
    """
    element = plyfile.PlyElement.describe(scene_to_vertices(scene), "vertex")
    data = plyfile.PlyData([element], text=ascii, byte_order="<")
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as fh:
            data.write(fh)
            fh.flush()
            os.fsync(fh.fileno())
