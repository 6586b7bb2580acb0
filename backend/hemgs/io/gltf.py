"""glTF 2.0 binary (.glb) with Gaussian splats, `KHR_gaussian_splatting`: writer and reader.

Numpy and the standard library only (no torch). Written from the extension's specification:
https://github.com/KhronosGroup/glTF/blob/main/extensions/2.0/Khronos/KHR_gaussian_splatting/README.md
(with its schema, schema/mesh.primitive.KHR_gaussian_splatting.schema.json), and the glTF 2.0
specification for the GLB container, accessors and buffer views:
https://registry.khronos.org/glTF/specs/2.0/glTF-2.0.html

What the extension says, and what we do with it:
- the splats are one mesh primitive with `mode` 0 (POINTS) and the primitive extension object
  `KHR_gaussian_splatting` with `kernel` "ellipse" and `colorSpace` (both required);
  "KHR_gaussian_splatting" goes in `extensionsUsed` (not `extensionsRequired`: a viewer without
  it may draw the points, which is the fallback the extension intends);
- attributes: `POSITION` (VEC3), `KHR_gaussian_splatting:ROTATION` (VEC4, a unit quaternion in
  glTF order x, y, z, w), `KHR_gaussian_splatting:SCALE` (VEC3, LINEAR scale, never negative),
  `KHR_gaussian_splatting:OPACITY` (SCALAR, opacity in [0, 1], i.e. after the sigmoid),
  `KHR_gaussian_splatting:SH_DEGREE_l_COEF_n` (VEC3 float, RGB) for degree l and n = 0..2l, in
  order m = -l..l: the SH COEFFICIENTS, the DC term included (colour = 0.5 + SH_C0 * DC), the
  real SH basis with the Condon-Shortley phase, which is the Inria/gsplat basis and order; a degree
  is present whole or not at all, and every lower degree with it;
- `COLOR_0` (optional) is the fallback colour for viewers without the extension: the clamped DC
  colour, decoded from sRGB to linear (COLOR_0 is linear in glTF), and the opacity as alpha.
We write float32 for every attribute (the extension also allows normalized integers for rotation,
scale and opacity; the reader takes all of them) and `colorSpace` "srgb_rec709_display" (3DGS
scenes are trained on sRGB photos and shown without conversion).

Coordinates. glTF is y up; the Inria PLY and `GaussianScene` are y down (OpenCV/COLMAP). The
spec leaves the conversion to the exporter ("positions, quaternions and spherical harmonics will
have to be rotated"); we use the rotation splat-transform uses when it writes a PLY as .glb, 180
degrees about z: positions (-x, -y, z), quaternion r*q with r = (w 0, x 0, y 0, z 1), and each SH
coefficient times (-1)^|m|. Exact in float32 (sign changes and swaps), the same both ways, so a
.glb from hemgs and one from splat-transform hold the same values for the same PLY.

Precision. Positions, rotations and SH go through unchanged (float32); the scale and opacity are
stored activated, so log-scales and opacity logits come back through log and logit: equal within
float32 in activated form (exp(log-scale), sigmoid(logit)). Opacity 1 or 0 in a file reads as a
logit of +inf or -inf, and a zero scale as a log-scale of -inf: saturated values, which
`hemgs.scene.sanitize` turns into its finite stand-ins; a negative scale or an opacity outside
[0, 1] (both invalid by the spec) read as NaN, so sanitize drops those Gaussians with a warning.
The primitive's `colorSpace` goes to `meta["gltf_color_space"]`; the values are not converted.

Read: the GLB container (glTF 2.0, one JSON chunk, the BIN chunk as buffer 0), every primitive
with `KHR_gaussian_splatting` (concatenated; SH zero-padded to the highest degree among them),
accessors of any component type the extension allows, byte strides, and node transforms that are
rotations, translations and uniform positive scales (the SH turned with the rotation). Refused with a one-line FormatError: not a GLB, a
truncated or inconsistent container, bad JSON, external or data-URI buffers, sparse accessors, a
required extension other than this one (e.g. an SPZ-compressed primitive), non-uniform or negative
scales on the splats' nodes, and a glTF without splats.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

from ..errors import FormatError, InputError
from ..scene import SH_C0, GaussianScene, sh_coeffs
from .atomic import write_bytes_atomic
from .reading import read_bytes

EXTENSION = "KHR_gaussian_splatting"
PREFIX = EXTENSION + ":"
MAGIC = b"glTF"
VERSION = 2
CHUNK_JSON = 0x4E4F534A
CHUNK_BIN = 0x004E4942
COLOR_SPACE = "srgb_rec709_display"
MAX_SH_DEGREE = 3
MAX_JSON_BYTES = 64 << 20  # a splat file's JSON is a few kB; a larger one is not ours to parse

_HEADER = struct.Struct("<4sII")
_CHUNK = struct.Struct("<II")

# glTF accessor component types: numpy dtype (little-endian) and the normalized divisor.
_FLOAT, _BYTE, _UBYTE, _SHORT, _USHORT, _UINT = 5126, 5120, 5121, 5122, 5123, 5125
_DTYPES = {_BYTE: "<i1", _UBYTE: "<u1", _SHORT: "<i2", _USHORT: "<u2", _UINT: "<u4", _FLOAT: "<f4"}
_NORM = {_BYTE: 127.0, _UBYTE: 255.0, _SHORT: 32767.0, _USHORT: 65535.0}
_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}
_ARRAY_BUFFER = 34962

# (accessor type, allowed (componentType, normalized) pairs) per attribute, from the spec's table.
# POSITION's component types are "inherited from glTF": float, or KHR_mesh_quantization's.
_F = ((_FLOAT, False),)
_ATTRIBUTES = {
    "POSITION": ("VEC3", _F + ((_BYTE, False), (_BYTE, True), (_UBYTE, False), (_UBYTE, True),
                               (_SHORT, False), (_SHORT, True), (_USHORT, False), (_USHORT, True))),
    PREFIX + "ROTATION": ("VEC4", _F + ((_BYTE, True), (_SHORT, True))),
    PREFIX + "SCALE": ("VEC3", _F + ((_UBYTE, False), (_UBYTE, True), (_USHORT, False), (_USHORT, True))),
    PREFIX + "OPACITY": ("SCALAR", _F + ((_UBYTE, True), (_USHORT, True))),
}
_SH_TYPE = ("VEC3", _F)

# The PLY -> glTF rotation (180 degrees about z): position signs, and the SH sign (-1)^|m| of each
# coefficient k = l^2 + l + m in the Inria order (k = 0 is the DC term).
_POS_SIGN = np.array([-1.0, -1.0, 1.0], np.float32)
_SH_SIGN = np.array([(-1.0) ** abs(k - l * l - l) for l in range(MAX_SH_DEGREE + 1)
                     for k in range(l * l, (l + 1) ** 2)], np.float32)


def sh_name(degree: int, coef: int) -> str:
    return f"{PREFIX}SH_DEGREE_{degree}_COEF_{coef}"


# --------------------------------------------------------------------------------------------
# writing


def encode_glb(scene: GaussianScene, *, generator: str | None = None) -> bytes:
    """`scene` as GLB bytes (see the module docstring). Raises InputError for values the file
    cannot hold: NaN anywhere, an infinite position, rotation, SH value or scale, a zero
    quaternion (run `hemgs.scene.sanitize` first). Saturated opacities (logits ±inf) and zero
    scales (log-scale -inf) are valid and written as 1, 0 and 0."""
    n = len(scene)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        q = scene.quats.astype(np.float64)
        norms = np.linalg.norm(q, axis=1)
        scales = np.exp(scene.log_scales.astype(np.float64)).astype(np.float32)
        opacity = (1.0 / (1.0 + np.exp(-scene.opacity_logits.astype(np.float64)))).astype(np.float32)
    bad = {
        "means": ~np.isfinite(scene.means).all(1),
        "quats": ~(np.isfinite(scene.quats).all(1) & (norms > 1e-12)),
        "log_scales": ~np.isfinite(scales).all(1),
        "opacity_logits": np.isnan(scene.opacity_logits),
        "sh": ~np.isfinite(scene.sh).all((1, 2)),
    }
    for field, mask in bad.items():
        if mask.any():
            raise InputError(f"cannot write glTF: scene field {field} has {int(mask.sum())} invalid values "
                             "(NaN, infinite, a zero quaternion or a scale beyond float32; sanitize the scene first)")
    if n == 0:
        raise InputError("cannot write glTF: the scene has no Gaussians (glTF accessors hold at least one element)")
    q = q / norms[:, None]
    w, x, y, z = q.T
    # r * q with r the 180-degree turn about z: (w, x, y, z) -> (-z, -y, x, w); glTF order x, y, z, w.
    rotation = np.stack([-y, x, w, -z], axis=1).astype(np.float32)
    position = scene.means * _POS_SIGN
    sh = scene.sh * _SH_SIGN[: scene.sh.shape[1], None]
    dc = np.clip(scene.sh[:, 0, :].astype(np.float64) * SH_C0 + 0.5, 0.0, 1.0)
    linear = np.where(dc <= 0.04045, dc / 12.92, ((dc + 0.055) / 1.055) ** 2.4)
    color = np.concatenate([linear, opacity[:, None].astype(np.float64)], axis=1)
    color = np.clip(np.rint(color * 255.0), 0, 255).astype(np.uint8)

    columns: list[tuple[str, np.ndarray, int, str, bool]] = [
        ("POSITION", position, _FLOAT, "VEC3", False),
        ("COLOR_0", color, _UBYTE, "VEC4", True),
        (PREFIX + "ROTATION", rotation, _FLOAT, "VEC4", False),
        (PREFIX + "SCALE", scales, _FLOAT, "VEC3", False),
        (PREFIX + "OPACITY", opacity, _FLOAT, "SCALAR", False),
    ]
    for degree in range(scene.sh_degree + 1):
        for coef in range(2 * degree + 1):
            columns.append((sh_name(degree, coef), sh[:, degree * degree + coef], _FLOAT, "VEC3", False))

    blobs, views, accessors, attributes = [], [], [], {}
    offset = 0
    for i, (name, data, ctype, atype, normalized) in enumerate(columns):
        raw = np.ascontiguousarray(data, dtype=_DTYPES[ctype]).tobytes()
        blobs.append(raw + b"\x00" * (-len(raw) % 4))
        views.append({"buffer": 0, "byteOffset": offset, "byteLength": len(raw), "target": _ARRAY_BUFFER})
        accessor = {"bufferView": i, "componentType": ctype, "count": n, "type": atype}
        if normalized:
            accessor["normalized"] = True
        if name == "POSITION":  # glTF requires POSITION's bounds: the exact float32 extremes
            accessor["min"] = [float(v) for v in position.min(axis=0)]
            accessor["max"] = [float(v) for v in position.max(axis=0)]
        accessors.append(accessor)
        attributes[name] = i
        offset += len(blobs[-1])
    binary = b"".join(blobs)

    if generator is None:
        from .. import __version__

        generator = f"hemgs {__version__}"
    gltf = {
        "asset": {"version": "2.0", "generator": generator},
        "extensionsUsed": [EXTENSION],
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": "gaussians"}],
        "meshes": [{"name": "gaussians", "primitives": [{
            "attributes": attributes,
            "mode": 0,
            "extensions": {EXTENSION: {"kernel": "ellipse", "colorSpace": COLOR_SPACE}},
        }]}],
        "buffers": [{"byteLength": len(binary)}],
        "bufferViews": views,
        "accessors": accessors,
    }
    text = json.dumps(gltf, separators=(",", ":"), allow_nan=False).encode("utf-8")
    text += b" " * (-len(text) % 4)
    total = _HEADER.size + _CHUNK.size + len(text) + _CHUNK.size + len(binary)
    return b"".join([_HEADER.pack(MAGIC, VERSION, total), _CHUNK.pack(len(text), CHUNK_JSON), text,
                     _CHUNK.pack(len(binary), CHUNK_BIN), binary])


def write_glb(scene: GaussianScene, path: str | os.PathLike, **options) -> None:
    """Write `scene` as a .glb (see `encode_glb`), atomically (temp file + rename)."""
    write_bytes_atomic(path, encode_glb(scene, **options))


# --------------------------------------------------------------------------------------------
# reading


def sniff_glb(head: bytes, path: Path) -> bool:
    return head.startswith(MAGIC)


def read_glb(path: str | os.PathLike) -> GaussianScene:
    """Read the Gaussian splats of a .glb into a `GaussianScene` in the Inria PLY frame.

    Raises InputError for a missing file and FormatError (one line, naming the file) for anything
    the module docstring lists as refused."""
    path = Path(path)
    data = read_bytes(path, "a glTF file")
    return decode_glb(data, str(path))


def decode_glb(data: bytes, name: str = "<bytes>") -> GaussianScene:
    """`read_glb` on bytes in memory; `name` is the file name the messages give."""
    gltf, binary = _unpack(data, name)
    return _Reader(gltf, binary, name).scene()


def _unpack(data: bytes, name: str) -> tuple[dict, bytes]:
    """The GLB container: (the JSON, the BIN chunk or b"")."""
    if len(data) < _HEADER.size:
        raise FormatError(f"{name}: truncated glTF binary ({len(data)} bytes, the header alone is 12)")
    magic, version, length = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise FormatError(f"{name}: not a glTF binary (starts with {data[:4]!r}, expected b'glTF')")
    if version != VERSION:
        raise FormatError(f"{name}: glTF binary version {version}; only version 2 is read")
    if length > len(data):
        raise FormatError(f"{name}: truncated glTF binary: its header says {length} bytes, the file has {len(data)}")
    if length < len(data):
        raise FormatError(f"{name}: glTF binary has {len(data) - length} unexpected bytes after its declared length")
    chunks: list[tuple[int, bytes]] = []
    at = _HEADER.size
    while at < length:
        if at + _CHUNK.size > length:
            raise FormatError(f"{name}: truncated glTF binary: a chunk header is cut off at byte {at}")
        size, kind = _CHUNK.unpack_from(data, at)
        start = at + _CHUNK.size
        if start + size > length:
            raise FormatError(f"{name}: truncated glTF binary: a {size}-byte chunk at byte {at} runs past the end")
        chunks.append((kind, data[start:start + size]))
        at = start + size + (-size % 4)
    if not chunks or chunks[0][0] != CHUNK_JSON:
        raise FormatError(f"{name}: glTF binary does not start with its JSON chunk")
    if len(chunks[0][1]) > MAX_JSON_BYTES:
        raise FormatError(f"{name}: glTF JSON chunk of {len(chunks[0][1])} bytes is beyond what a splat file needs")
    binary = chunks[1][1] if len(chunks) > 1 and chunks[1][0] == CHUNK_BIN else b""
    try:
        gltf = json.loads(chunks[0][1].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FormatError(f"{name}: corrupt glTF JSON chunk ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not isinstance(gltf, dict):
        raise FormatError(f"{name}: glTF JSON is a {type(gltf).__name__}, not an object")
    asset = gltf.get("asset")
    version = asset.get("version") if isinstance(asset, dict) else None
    if not isinstance(version, str) or not version.startswith("2."):
        raise FormatError(f"{name}: not a glTF 2.0 asset (asset.version is {version!r})")
    return gltf, binary


class _Reader:
    def __init__(self, gltf: dict, binary: bytes, name: str):
        self.gltf, self.binary, self.name = gltf, binary, name

    def fail(self, what: str) -> FormatError:
        return FormatError(f"{self.name}: {what}")

    def _list(self, key: str) -> list:
        value = self.gltf.get(key, [])
        if not isinstance(value, list):
            raise self.fail(f"glTF '{key}' is not a list")
        return value

    def _item(self, key: str, index, what: str) -> dict:
        items = self._list(key)
        if not _is_int(index) or not 0 <= index < len(items) or not isinstance(items[index], dict):
            raise self.fail(f"{what} refers to {key}[{index!r}], which does not exist")
        return items[index]

    def _int(self, obj: dict, key: str, what: str, default: int | None = None) -> int:
        value = obj.get(key, default)
        if not _is_int(value) or value < 0:
            raise self.fail(f"{what}.{key} is {value!r}, not a non-negative integer")
        return value

    # ---- the scene ----------------------------------------------------------------------------
    def scene(self) -> GaussianScene:
        required = self.gltf.get("extensionsRequired", [])
        if not isinstance(required, list):
            raise self.fail("glTF 'extensionsRequired' is not a list")
        other = [str(e) for e in required if e != EXTENSION]
        if other:
            raise self.fail(f"glTF requires extension(s) {', '.join(other)}, which hemgs does not read "
                            "(re-export the splats uncompressed, with KHR_gaussian_splatting only)")
        used = self.gltf.get("extensionsUsed", [])
        found: list[tuple[int, str, dict, object]] = []
        for m, mesh in enumerate(self._list("meshes")):
            if not isinstance(mesh, dict):
                raise self.fail(f"glTF meshes[{m}] is not an object")
            prims = mesh.get("primitives", [])
            if not isinstance(prims, list):
                raise self.fail(f"glTF meshes[{m}].primitives is not a list")
            for p, prim in enumerate(prims):
                if not isinstance(prim, dict):
                    raise self.fail(f"glTF meshes[{m}].primitives[{p}] is not an object")
                ext = prim.get("extensions")
                if isinstance(ext, dict) and EXTENSION in ext:
                    found.append((m, f"meshes[{m}].primitives[{p}]", prim, ext[EXTENSION]))
        transforms = self._mesh_transforms({m for m, *_ in found})
        parts = [self._primitive(prim, ext, where, transform)
                 for m, where, prim, ext in found
                 for transform in transforms.get(m, [_IDENTITY])]
        if not parts:
            if isinstance(used, list) and EXTENSION in used and not self._list("meshes"):
                return _empty_scene()
            raise self.fail(f"glTF file has no Gaussian splats (no mesh primitive with {EXTENSION})")
        degree = max(s.sh_degree for s in parts)
        parts = [s if s.sh_degree == degree else s.with_sh_degree(degree) for s in parts]
        scene = GaussianScene(*(np.concatenate([getattr(s, f) for s in parts]) for f in
                                ("means", "quats", "log_scales", "opacity_logits", "sh")))
        spaces = {s.meta["gltf_color_space"] for s in parts}
        scene.meta["gltf_color_space"] = spaces.pop() if len(spaces) == 1 else sorted(spaces, key=str)
        return scene

    def _mesh_transforms(self, meshes: set[int]) -> dict[int, list["_Similarity"]]:
        """Per mesh index in `meshes`, the world transform of each node instancing it."""
        nodes = self._list("nodes")
        parent: dict[int, int] = {}
        for i, node in enumerate(nodes):
            if not isinstance(node, dict):
                raise self.fail(f"glTF nodes[{i}] is not an object")
            children = node.get("children", [])
            if not isinstance(children, list):
                raise self.fail(f"glTF nodes[{i}].children is not a list")
            for c in children:
                if not _is_int(c) or not 0 <= c < len(nodes) or c in parent:
                    raise self.fail(f"glTF nodes[{i}].children has {c!r}: no node, or a node with two parents")
                parent[c] = i
        out: dict[int, list[_Similarity]] = {}
        for i, node in enumerate(nodes):
            if "mesh" not in node:
                continue
            mesh = node["mesh"]
            self._item("meshes", mesh, f"glTF nodes[{i}].mesh")
            if mesh not in meshes:
                continue
            world, seen, at = _IDENTITY, set(), i
            while True:
                if at in seen:
                    raise self.fail(f"glTF node hierarchy has a cycle through nodes[{at}]")
                seen.add(at)
                world = world.then(self._node_transform(nodes[at], at, mesh))
                if at not in parent:
                    break
                at = parent[at]
            out.setdefault(mesh, []).append(world)
        return out

    def _node_transform(self, node: dict, index: int, mesh: int) -> "_Similarity":
        """A node's local transform: a rotation, a uniform positive scale and a translation;
        anything else (non-uniform or negative scale, shear) is refused, but only for nodes above
        splats."""
        what = f"glTF nodes[{index}]"
        try:
            if "matrix" in node:
                mat = np.asarray(node["matrix"], np.float64)
                if mat.shape != (16,):
                    raise ValueError
                mat = mat.reshape(4, 4).T  # column-major
                t = mat[:3, 3].copy()
                with np.errstate(invalid="ignore", over="ignore"):
                    det = float(np.linalg.det(mat[:3, :3])) if np.isfinite(mat).all() else float("nan")
                    s = float(np.cbrt(det))
                    rot = mat[:3, :3] / s if s > 0 else np.full((3, 3), np.nan)
                ok = (np.array_equal(mat[3], [0, 0, 0, 1]) and s > 0
                      and np.allclose(rot @ rot.T, np.eye(3), rtol=0, atol=1e-5))
            else:
                t = np.asarray(node.get("translation", [0, 0, 0]), np.float64)
                r = np.asarray(node.get("rotation", [0, 0, 0, 1]), np.float64)
                sv = np.asarray(node.get("scale", [1, 1, 1]), np.float64)
                if t.shape != (3,) or r.shape != (4,) or sv.shape != (3,):
                    raise ValueError
                s = float(sv[0])
                with np.errstate(invalid="ignore", over="ignore"):
                    norm = float(np.linalg.norm(r))
                    rot = _matrix(np.array([r[3], r[0], r[1], r[2]]) / norm)
                ok = (sv == s).all() and abs(norm - 1.0) < 1e-3
        except (TypeError, ValueError, OverflowError):
            raise self.fail(f"{what} has a malformed transform") from None
        if not (ok and np.isfinite(s) and s > 0 and np.isfinite(t).all() and np.isfinite(rot).all()):
            raise self.fail(f"{what} (above the splats of meshes[{mesh}]) scales them unevenly or mirrors them; "
                            "hemgs reads splats under rotations, translations and uniform scales only")
        return _Similarity(s, rot, t)

    # ---- one primitive ------------------------------------------------------------------------
    def _primitive(self, prim: dict, ext, where: str, world: "_Similarity") -> GaussianScene:
        if not isinstance(ext, dict):
            raise self.fail(f"{where}.extensions.{EXTENSION} is not an object")
        if prim.get("mode", 4) != 0:
            raise self.fail(f"{where} has mode {prim.get('mode', 4)!r}; splats must be POINTS (0)")
        attrs = prim.get("attributes")
        if not isinstance(attrs, dict):
            raise self.fail(f"{where}.attributes is not an object")
        missing = [a for a in (*_ATTRIBUTES, sh_name(0, 0)) if a not in attrs]
        if missing:
            inner = ext.get("extensions")
            via = (f" (it uses {', '.join(map(str, inner))}, which hemgs does not read)"
                   if isinstance(inner, dict) and inner else "")
            raise self.fail(f"{where} lacks the splat attribute(s) {', '.join(missing)}{via}")
        cols = {a: self._accessor(attrs[a], *_ATTRIBUTES[a], f"{where}.attributes['{a}']") for a in _ATTRIBUTES}
        degree = 0
        while degree < MAX_SH_DEGREE and sh_name(degree + 1, 0) in attrs:
            degree += 1
        present = [a for a in attrs if isinstance(a, str) and a.startswith(PREFIX + "SH_DEGREE_")]
        expect = [sh_name(l, c) for l in range(degree + 1) for c in range(2 * l + 1)]
        if sorted(present) != sorted(expect):
            odd = sorted(set(present) ^ set(expect))
            raise self.fail(f"{where} has a partial SH degree (the spec wants whole degrees, lowest first): {', '.join(odd)}")
        shs = [self._accessor(attrs[a], *_SH_TYPE, f"{where}.attributes['{a}']") for a in expect]
        n = len(cols["POSITION"])
        counts = {a: len(v) for a, v in cols.items()} | {a: len(v) for a, v in zip(expect, shs)}
        if any(c != n for c in counts.values()):
            odd = ", ".join(f"{a} {c}" for a, c in counts.items() if c != n)
            raise self.fail(f"{where}: attribute counts differ (POSITION {n}; {odd})")
        sh = np.stack(shs, axis=1)

        xyzw = cols[PREFIX + "ROTATION"]
        means, scales = cols["POSITION"], cols[PREFIX + "SCALE"]
        if not world.is_identity():  # the node transforms, in glTF's frame, before the frame turn
            means = world.scale * means @ world.rotation.T + world.shift
            scales = scales * world.scale
            if not np.array_equal(world.rotation, np.eye(3)):
                wxyz = _quat_mul(_quaternion(world.rotation), np.stack([xyzw[:, 3], *xyzw[:, :3].T], axis=1))
                xyzw = np.concatenate([wxyz[:, 1:], wxyz[:, :1]], axis=1)
                sh = _rotate_sh(sh, world.rotation)
        # r^-1 * q' (undoing the 180-degree turn about z): glTF (x', y', z', w') -> (w, x, y, z) = (z', y', -x', -w')
        quats = np.stack([xyzw[:, 2], xyzw[:, 1], -xyzw[:, 0], -xyzw[:, 3]], axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_scales = np.log(scales)
            p = cols[PREFIX + "OPACITY"][:, 0]
            logits = np.log(p) - np.log1p(-p)
        logits[(p < 0) | (p > 1)] = np.nan
        means = means * _POS_SIGN
        sh = sh * _SH_SIGN[: sh.shape[1], None]
        scene = GaussianScene(means, quats, log_scales, logits, sh)
        color_space = ext.get("colorSpace")
        scene.meta["gltf_color_space"] = color_space if isinstance(color_space, str) else None
        return scene

    def _accessor(self, index, atype: str, allowed, what: str) -> np.ndarray:
        """An accessor's values as float64 (count, width), normalized integers dequantized."""
        acc = self._item("accessors", index, what)
        where = f"accessors[{index}]"
        if "sparse" in acc:
            raise self.fail(f"{where} is sparse, which hemgs does not read")
        if acc.get("type") != atype:
            raise self.fail(f"{where} ({what}) has type {acc.get('type')!r}, the spec says {atype}")
        ctype, normalized = acc.get("componentType"), acc.get("normalized", False)
        if not any(ctype == c and normalized is norm for c, norm in allowed):
            raise self.fail(f"{where} ({what}) has componentType {ctype!r} normalized={normalized!r}, "
                            "which the spec does not allow there")
        count = self._int(acc, "count", where)
        if "bufferView" not in acc:
            raise self.fail(f"{where} has no bufferView (no data)")
        view = self._item("bufferViews", acc["bufferView"], where)
        vwhere = f"bufferViews[{acc['bufferView']}]"
        buffer = self._int(view, "buffer", vwhere)
        buf = self._item("buffers", buffer, vwhere)
        if buffer != 0 or "uri" in buf:
            raise self.fail(f"{vwhere} reads an external or data-URI buffer; hemgs reads the GLB's own BIN chunk only")
        v_off = self._int(view, "byteOffset", vwhere, 0)
        v_len = self._int(view, "byteLength", vwhere)
        if v_off + v_len > len(self.binary):
            raise self.fail(f"{vwhere} (bytes {v_off}..{v_off + v_len}) lies outside the "
                            f"{len(self.binary)}-byte BIN chunk (truncated or corrupt)")
        dtype = np.dtype(_DTYPES[ctype])
        width = _WIDTH[atype]
        elem = dtype.itemsize * width
        stride = self._int(view, "byteStride", vwhere, elem)
        a_off = self._int(acc, "byteOffset", where, 0)
        if stride < elem or a_off % dtype.itemsize or (v_off + a_off) % dtype.itemsize or stride % dtype.itemsize:
            raise self.fail(f"{where}: byteStride {stride} / byteOffset {a_off} do not fit {elem}-byte elements")
        if count and a_off + stride * (count - 1) + elem > v_len:
            raise self.fail(f"{where}: {count} elements do not fit in {vwhere}'s {v_len} bytes")
        if count == 0:
            return np.zeros((0, width))
        with np.errstate(invalid="ignore"):  # a signalling NaN in the file warns on the cast
            arr = np.ndarray((count, width), dtype, buffer=self.binary, offset=v_off + a_off,
                             strides=(stride, dtype.itemsize)).astype(np.float64)
        if normalized:
            arr = np.maximum(arr / _NORM[ctype], -1.0)
        return arr


class _Similarity:
    """x -> scale * rotation @ x + shift (a glTF node's transform, when it is one of these)."""

    def __init__(self, scale: float, rotation: np.ndarray, shift: np.ndarray):
        self.scale, self.rotation, self.shift = scale, rotation, shift

    def is_identity(self) -> bool:
        return self.scale == 1.0 and np.array_equal(self.rotation, np.eye(3)) and not self.shift.any()

    def then(self, outer: "_Similarity") -> "_Similarity":
        """`outer` after this one."""
        return _Similarity(outer.scale * self.scale, outer.rotation @ self.rotation,
                           outer.scale * outer.rotation @ self.shift + outer.shift)


_IDENTITY = _Similarity(1.0, np.eye(3), np.zeros(3))


def _matrix(wxyz: np.ndarray) -> np.ndarray:
    """The rotation matrix of a unit quaternion (w, x, y, z)."""
    w, x, y, z = wxyz
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def _quaternion(m: np.ndarray) -> np.ndarray:
    """A unit quaternion (w, x, y, z) of a rotation matrix (from its largest diagonal term)."""
    trace = np.trace(m)
    k = int(np.argmax([trace, m[0, 0], m[1, 1], m[2, 2]]))
    if k == 0:
        q = [1 + trace, m[2, 1] - m[1, 2], m[0, 2] - m[2, 0], m[1, 0] - m[0, 1]]
    elif k == 1:
        q = [m[2, 1] - m[1, 2], 1 + m[0, 0] - m[1, 1] - m[2, 2], m[0, 1] + m[1, 0], m[0, 2] + m[2, 0]]
    elif k == 2:
        q = [m[0, 2] - m[2, 0], m[0, 1] + m[1, 0], 1 - m[0, 0] + m[1, 1] - m[2, 2], m[1, 2] + m[2, 1]]
    else:
        q = [m[1, 0] - m[0, 1], m[0, 2] + m[2, 0], m[1, 2] + m[2, 1], 1 - m[0, 0] - m[1, 1] + m[2, 2]]
    q = np.asarray(q)
    return q / np.linalg.norm(q)


def _quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a * b for one quaternion `a` and rows `b`, all (w, x, y, z)."""
    aw, av = a[0], a[1:]
    bw, bv = b[:, 0], b[:, 1:]
    return np.concatenate([(aw * bw - bv @ av)[:, None], aw * bv + bw[:, None] * av + np.cross(av, bv)], axis=1)


def _sh_basis(d: np.ndarray) -> np.ndarray:
    """The real SH basis of degrees 0-3 at unit directions `d` (K, 3), in the spec's order and with
    its constants (Condon-Shortley phase): (K, 16)."""
    x, y, z = d.T
    xx, yy, zz = x * x, y * y, z * z
    return np.stack([
        np.full_like(x, 0.2820947917738781),
        -0.4886025119029199 * y, 0.4886025119029199 * z, -0.4886025119029199 * x,
        1.092548430592079 * x * y, -1.092548430592079 * y * z, 0.31539156525252 * (2 * zz - xx - yy),
        -1.092548430592079 * x * z, 0.5462742152960395 * (xx - yy),
        -0.5900435899266435 * y * (3 * xx - yy), 2.890611442640554 * x * y * z,
        -0.4570457994644657 * y * (4 * zz - xx - yy), 0.3731763325901154 * z * (2 * zz - 3 * xx - 3 * yy),
        -0.4570457994644657 * x * (4 * zz - xx - yy), 1.445305721320277 * z * (xx - yy),
        -0.5900435899266435 * x * (xx - 3 * yy),
    ], axis=1)


def _rotate_sh(sh: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """SH coefficients (N, K, 3) of the colour turned by `rotation`: per degree, the matrix X with
    Y(R^T d) . c = Y(d) . (X c), fitted exactly on enough directions (the degree's functions span
    a space the rotation maps to itself)."""
    dirs = np.random.default_rng(0).normal(size=(64, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    here, there = _sh_basis(dirs), _sh_basis(dirs @ rotation)  # rows: Y(d), Y(R^T d)
    out = sh.copy()
    for l in range(1, int(round(np.sqrt(sh.shape[1]))) ):
        band = slice(l * l, (l + 1) ** 2)
        x = np.linalg.lstsq(here[:, band], there[:, band], rcond=None)[0]  # there = here @ x
        out[:, band] = np.einsum("ij,njc->nic", x, sh[:, band])
    return out


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _empty_scene() -> GaussianScene:
    return GaussianScene(np.zeros((0, 3)), np.zeros((0, 4)), np.zeros((0, 3)), np.zeros(0), np.zeros((0, 1, 3)))
