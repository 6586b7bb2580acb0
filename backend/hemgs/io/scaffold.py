"""Scaffold-GS / HAC anchor PLY: reader and writer, plus safe loading of their MLP weights.

The PLY part is numpy + plyfile only. `load_scaffold_mlps` imports torch lazily, and loads
state dicts with `weights_only=True` only: nothing in a file is ever executed.

Layout (as Scaffold-GS's `save_ply` writes it): x y z, nx ny nz (zeros), f_offset_0..3k-1,
f_anchor_feat_0..F-1, opacity, scale_0..5, rot_0..3. The offsets of an anchor are a (k, 3) array
saved transposed, i.e. channel-major: all k x-offsets, then the y's, then the z's.
"""

from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import plyfile

from ..errors import FormatError, InputError
from .atomic import atomic_write
from .ply import PLY_MAGIC, is_scaffold_names, read_ply_header, read_ply_vertices

_BASE = ["x", "y", "z", "opacity"]


@dataclass
class ScaffoldAnchors:
    """Anchors of a Scaffold-GS / HAC model (N anchors, k offsets each, F feature dims).

    - `xyz` (N,3) anchor positions;
    - `features` (N,F) anchor features (Scaffold-GS: 32, HAC: 50);
    - `offsets` (N,k,3) offsets of the k neural Gaussians, in units of `exp(scaling[:, :3])`;
    - `scaling` (N,6) log-space: 3 offset scales, then 3 Gaussian base scales;
    - `opacity` (N,) and `rotation` (N,4) as saved (Scaffold-GS does not train them);
    - `mlps`: optional {name: state dict of tensors} (e.g. opacity_mlp, cov_mlp, color_mlp).
    """

    xyz: np.ndarray
    features: np.ndarray
    offsets: np.ndarray
    scaling: np.ndarray
    opacity: np.ndarray | None = None
    rotation: np.ndarray | None = None
    mlps: dict | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.xyz = np.ascontiguousarray(self.xyz, np.float32)
        n = len(self.xyz)
        self.features = np.ascontiguousarray(self.features, np.float32)
        self.offsets = np.ascontiguousarray(self.offsets, np.float32)
        self.scaling = np.ascontiguousarray(self.scaling, np.float32)
        self.opacity = np.zeros(n, np.float32) if self.opacity is None else np.ascontiguousarray(self.opacity, np.float32).reshape(-1)
        if self.rotation is None:
            self.rotation = np.tile(np.array([1, 0, 0, 0], np.float32), (n, 1))
        self.rotation = np.ascontiguousarray(self.rotation, np.float32)
        checks = {
            "xyz": (self.xyz.ndim == 2 and self.xyz.shape[1] == 3),
            "features": (self.features.ndim == 2 and self.features.shape[0] == n),
            "offsets": (self.offsets.ndim == 3 and self.offsets.shape[0] == n and self.offsets.shape[2] == 3),
            "scaling": (self.scaling.shape == (n, 6)),
            "opacity": (self.opacity.shape == (n,)),
            "rotation": (self.rotation.shape == (n, 4)),
        }
        for name, ok in checks.items():
            if not ok:
                raise InputError(f"ScaffoldAnchors field {name} has shape {getattr(self, name).shape} (N={n})")

    def __len__(self) -> int:
        return int(self.xyz.shape[0])

    @property
    def n_offsets(self) -> int:
        return int(self.offsets.shape[1])

    @property
    def feat_dim(self) -> int:
        return int(self.features.shape[1])


def _numbered(names: list[str], prefix: str, path: Path) -> list[str]:
    """`prefix0..prefixM-1` in numeric order; refuses gaps (a damaged or foreign file)."""
    pat = re.compile(rf"^{re.escape(prefix)}(\d+)$")
    idx = sorted(int(m.group(1)) for n in names if (m := pat.match(n)))
    if idx != list(range(len(idx))):
        raise FormatError(f"{path}: {prefix}* properties are not numbered 0..{len(idx) - 1}")
    return [f"{prefix}{i}" for i in idx]


def sniff_scaffold_ply(head: bytes, path: Path) -> bool:
    """The registry's content test (io/formats.py): a PLY whose vertices are anchors (by property
    name, so the header is read; a truncated or foreign header raises the PLY reader's error)."""
    return head.startswith(PLY_MAGIC) and is_scaffold_names(read_ply_header(path).property_names("vertex"))


def read_scaffold_ply(path: str | os.PathLike, mlp_path: str | os.PathLike | None = None) -> ScaffoldAnchors:
    """Read a Scaffold-GS / HAC anchor PLY (by property name); optionally its MLP checkpoint.

    Raises InputError/FormatError naming the file for anything missing or malformed.
    """
    path = Path(path)
    header, v = read_ply_vertices(path)
    names = list(v.dtype.names or ())
    feat = _numbered(names, "f_anchor_feat_", path)
    offs = _numbered(names, "f_offset_", path)
    scale = _numbered(names, "scale_", path)
    rot = _numbered(names, "rot_", path)
    missing = [n for n in _BASE if n not in names]
    if not feat:
        missing.append("f_anchor_feat_*")
    if not offs:
        missing.append("f_offset_*")
    if missing:
        if not feat and "f_dc_0" in names:
            raise FormatError(f"{path}: this is a 3DGS PLY, not a Scaffold-GS anchor PLY; read it with hemgs.io.ply.read_ply")
        raise FormatError(f"{path}: not a Scaffold-GS anchor PLY, missing properties: {' '.join(missing)}")
    if len(offs) % 3:
        raise FormatError(f"{path}: {len(offs)} f_offset_* properties is not a multiple of 3")
    if len(scale) != 6:
        raise FormatError(f"{path}: Scaffold-GS anchors need 6 scale_* properties, found {len(scale)}")
    if len(rot) not in (0, 4):
        raise FormatError(f"{path}: Scaffold-GS anchors need 4 rot_* properties, found {len(rot)}")

    def cols(keys: list[str]) -> np.ndarray:
        out = np.empty((len(v), len(keys)), np.float32)
        for j, k in enumerate(keys):
            out[:, j] = v[k]
        return out

    n, k = len(v), len(offs) // 3
    anchors = ScaffoldAnchors(
        xyz=cols(["x", "y", "z"]),
        features=cols(feat),
        offsets=cols(offs).reshape(n, 3, k).transpose(0, 2, 1),
        scaling=cols(scale),
        opacity=cols(["opacity"])[:, 0],
        rotation=cols(rot) if rot else None,
        meta={"source_format": "scaffold_ply", "path": str(path), "ply_format": header.fmt},
    )
    if mlp_path is not None:
        anchors.mlps = load_scaffold_mlps(mlp_path)
        anchors.meta["mlp_path"] = str(mlp_path)
    return anchors


read_scaffold = read_scaffold_ply  # short alias


def write_scaffold_ply(anchors: ScaffoldAnchors, path: str | os.PathLike, *, ascii: bool = False) -> None:
    """Write anchors in Scaffold-GS's PLY layout (binary little-endian float32, or ASCII).

    The file appears atomically (temp file + rename); on any error nothing is left behind.
    """
    n, k, f = len(anchors), anchors.n_offsets, anchors.feat_dim
    names = ["x", "y", "z", "nx", "ny", "nz"] + [f"f_offset_{i}" for i in range(3 * k)]
    names += [f"f_anchor_feat_{i}" for i in range(f)] + ["opacity"]
    names += [f"scale_{i}" for i in range(6)] + [f"rot_{i}" for i in range(4)]
    cols = np.concatenate([
        anchors.xyz, np.zeros((n, 3), np.float32),
        anchors.offsets.transpose(0, 2, 1).reshape(n, 3 * k),  # channel-major, as Scaffold-GS
        anchors.features, anchors.opacity[:, None], anchors.scaling, anchors.rotation,
    ], axis=1)
    rec = np.empty(n, np.dtype([(c, "<f4") for c in names]))
    for j, c in enumerate(names):
        rec[c] = cols[:, j]
    data = plyfile.PlyData([plyfile.PlyElement.describe(rec, "vertex")], text=ascii, byte_order="<")
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as fh:
            data.write(fh)
            fh.flush()
            os.fsync(fh.fileno())


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zips with code/ and constants.pkl; plain torch.save zips have neither."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.split("/", 1)[-1].startswith(("code/", "constants.pkl")) for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def load_scaffold_mlps(path: str | os.PathLike) -> dict:
    """Load Scaffold-GS / HAC MLP weights saved as a state-dict checkpoint (`checkpoints.pth`).

    Returns {name: {param: tensor}} (e.g. opacity_mlp, cov_mlp, color_mlp, mlp_feature_bank; HAC
    adds more). Uses `torch.load(weights_only=True)` only, which unpickles plain tensors and
    containers and nothing else. TorchScript `.pt` files (Scaffold-GS's older default) contain code
    and are refused. Imports torch lazily, so the rest of this module works without it.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not an MLP checkpoint")
    if _is_torchscript(path):
        raise FormatError(
            f"{path}: is a TorchScript module, which we do not load because loading it runs code; "
            "if you trust it, re-save its weights with: python -c \"import torch; "
            f"torch.save({{'{path.stem}': torch.jit.load('{path.name}').state_dict()}}, 'checkpoints.pth')\""
        )
    import pickle

    import torch  # lazily: the PLY half of this module must work without torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile,
            AttributeError, TypeError, KeyError, IndexError) as exc:
        msg = " ".join(str(exc).split())[:160]
        raise FormatError(f"{path}: not a loadable state-dict checkpoint ({type(exc).__name__}: {msg})") from None
    if not isinstance(obj, dict) or not obj:
        raise FormatError(f"{path}: checkpoint holds {type(obj).__name__}, expected a dict of state dicts")
    if all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {path.stem: dict(obj)}  # a single module's state dict
    out = {}
    for name, sd in obj.items():
        if not isinstance(sd, dict) or not all(isinstance(t, torch.Tensor) for t in sd.values()):
            raise FormatError(f"{path}: entry '{name}' is not a state dict of tensors")
        out[str(name)] = dict(sd)
    return out
