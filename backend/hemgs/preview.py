"""Preview baking: a scene file -> the arrays a point-cloud preview shows (numpy only, no torch).

The Blender extension turns these arrays into a point-cloud object; the worker writes them to an
`.npz` for files Blender's own Python cannot read. One `SplatPreview` per file:
- `positions` (N,3) float32, the same coordinates as the file (3DGS scenes are y-down: see
  `STAND_UP_EULER`);
- `colors` (N,3) float32 in [0,1]: the view-independent (DC) colour as splat viewers show it
  (display values, i.e. sRGB-encoded; `colors_linear` converts them for Blender's linear colour);
- `opacities` (N,) float32 in [0,1];
- `sizes` (N,) float32: a display radius in scene units (see `splat_sizes`);
- for a 3DGS scene also its own Gaussians' shape and colour, as `hemgs.scene.GaussianScene` holds
  them: `log_scales` (N,3), `quats` (N,4, w x y z), `sh` (N,K,3, DC first). Blender 5.3's native
  splats draw those (hemgs_blender/native_splats.py); the point-cloud preview does not need them.
"""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import FormatError, InputError
from .scene import GaussianScene

# A Gaussian covers most of its visible footprint within two standard deviations.
SIZE_SIGMAS = 2.0
# Huge, faint floaters would hide the scene behind opaque spheres: radii are capped at this
# fraction of the robust (1st-99th percentile) bounding-box diagonal.
MAX_SIZE_FRACTION = 0.02
# Scaffold anchors carry no colour of their own (the MLPs make it): a neutral grey.
ANCHOR_GREY = 0.6
PREVIEW_KEYS = ("positions", "colors", "opacities", "sizes")
GAUSSIAN_KEYS = ("log_scales", "quats", "sh")  # optional: a 3DGS scene's own (Anchors have none)
# 3DGS scenes (COLMAP/OpenCV cameras) have y pointing down. A z-up viewer (Blender) stands them
# up by rotating the object -90° about X, (x, y, z) -> (x, z, -y): the scene's up (-y) becomes +z.
# XYZ Euler angles in radians.
STAND_UP_EULER = (-math.pi / 2, 0.0, 0.0)
# exp() of this is ~5.5e34, within float32: larger log-scales (a lone +inf) size as the cap does.
MAX_LOG_SCALE = 80.0


@dataclass
class SplatPreview:
    positions: np.ndarray
    colors: np.ndarray
    opacities: np.ndarray
    sizes: np.ndarray
    meta: dict = field(default_factory=dict)  # source path, format, kind ("gaussians"/"anchors")
    log_scales: np.ndarray | None = None
    quats: np.ndarray | None = None
    sh: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.positions)
        k = self.sh.shape[1] if isinstance(self.sh, np.ndarray) and self.sh.ndim == 3 else -1
        shapes = {"positions": (n, 3), "colors": (n, 3), "opacities": (n,), "sizes": (n,),
                  "log_scales": (n, 3), "quats": (n, 4), "sh": (n, k, 3)}
        for name, shape in shapes.items():
            if getattr(self, name) is None:
                continue
            arr = np.ascontiguousarray(getattr(self, name), dtype=np.float32)
            if arr.shape != shape or (name == "sh" and k not in (1, 4, 9, 16)):
                raise FormatError(f"preview field {name} has shape {arr.shape}, expected {shape}")
            setattr(self, name, arr)

    def __len__(self) -> int:
        return int(self.positions.shape[0])

    def colors_linear(self) -> np.ndarray:
        """`colors` decoded from sRGB to linear, for Blender's FLOAT_COLOR attributes."""
        return srgb_to_linear(self.colors)

    def rgba_linear(self) -> np.ndarray:
        """(N,4) float32: linear colour with the opacity as alpha."""
        return np.ascontiguousarray(np.concatenate([self.colors_linear(), self.opacities[:, None]], axis=1))


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """The sRGB transfer function, inverted (IEC 61966-2-1), float32 in and out."""
    c = np.asarray(c, np.float32)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)


def _size_cap(positions: np.ndarray) -> float:
    if len(positions) == 0:
        return np.inf
    lo, hi = np.percentile(positions, [1.0, 99.0], axis=0)
    diag = float(np.linalg.norm(hi - lo))
    return MAX_SIZE_FRACTION * diag if diag > 0 else np.inf


def splat_sizes(log_scales: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Display radius per Gaussian: 2x the middle of its three standard deviations, capped.

    The middle axis (not the mean or the largest) keeps a flat disc (one tiny axis) at its visible
    size without letting a long needle swell into a big ball.
    """
    # Bounded below float32's exp overflow: -inf is size 0, and huge ones are capped anyway.
    log_scales = np.minimum(np.asarray(log_scales, np.float32), np.float32(MAX_LOG_SCALE))
    sigma_mid = np.median(np.exp(log_scales), axis=1)
    return np.minimum(SIZE_SIGMAS * sigma_mid, _size_cap(positions)).astype(np.float32)


def preview_from_scene(scene: GaussianScene) -> SplatPreview:
    """Preview arrays of a 3DGS scene (colour from the DC term, opacity, size from the scales)."""
    meta = {"kind": "gaussians", **{k: scene.meta[k] for k in ("path", "source_format") if k in scene.meta}}
    return SplatPreview(scene.means, scene.colors_dc, scene.opacities,
                        splat_sizes(scene.log_scales, scene.means), meta,
                        log_scales=scene.log_scales, quats=scene.quats, sh=scene.sh)


def preview_from_anchors(anchors) -> SplatPreview:
    """Preview of a Scaffold-GS anchor set: the anchors themselves, grey, fully opaque.

    The size is the middle of the anchor's three offset scales (exp of `scaling[:, :3]`): the
    reach of its neural Gaussians. Their colours need the MLPs (torch), so none are guessed here.
    """
    n = len(anchors)
    return SplatPreview(anchors.xyz, np.full((n, 3), ANCHOR_GREY, np.float32), np.ones(n, np.float32),
                        splat_sizes(anchors.scaling[:, :3], anchors.xyz),
                        {"kind": "anchors", **{k: v for k, v in anchors.meta.items() if k == "path"}})


def preview_hgs(path: str | os.PathLike) -> SplatPreview:
    """Decode a .hgs file to the Gaussians `hemgs decompress` writes (an anchor file: its model
    baked to SH degree 1; a direct file: its decoded Gaussians); the preview shows those. Needs
    torch (the backend)."""
    from .pipeline import decode_file
    from .render.project import ALPHA_THRESHOLD

    decoded = decode_file(path)
    scene = decoded.gaussians()
    # No 3DGS renderer draws α below gsplat's threshold (1/255); a direct file's skipped Gaussians
    # are such (α ≈ 6e-6) and would otherwise show as solid dots in Blender's solid view.
    out = preview_from_scene(scene.subset(np.flatnonzero(scene.opacities >= ALPHA_THRESHOLD)))
    out.meta.update(kind="decoded", path=str(path), source_format="hgs", mode=decoded.header.get("mode"))
    return out


def preview_file(path: str | os.PathLike) -> SplatPreview:
    """Read a 3DGS PLY, Scaffold-GS anchor PLY, SPZ or .hgs file and bake its preview.

    Bad files raise the readers' InputError/FormatError. A .hgs file is decoded and baked
    (`preview_hgs`), which needs torch: without it (Blender's own Python) it is refused with a
    message saying so, and the add-on asks the backend worker instead.
    """
    from .io import detect_format, load_scene
    from .scene import sanitize

    path = Path(path)
    fmt = detect_format(path)
    if fmt == "scaffold_ply":
        from .io.scaffold import read_scaffold_ply

        anchors = read_scaffold_ply(path)
        anchors.meta.setdefault("path", str(path))
        out = preview_from_anchors(anchors)
        out.meta["source_format"] = fmt
        return out
    if fmt == "hgs":
        try:
            import torch  # noqa: F401 - only to know whether the decoder can run here
        except ImportError:
            raise FormatError(f"{path}: is a .hgs file; previewing it needs the HEMGS decoder (torch), "
                              "which runs in the backend") from None
        return preview_hgs(path)
    scene, warnings = sanitize(load_scene(path))
    out = preview_from_scene(scene)
    out.meta["warnings"] = warnings
    return out


def save_preview(preview: SplatPreview, path: str | os.PathLike, gaussians: bool = True) -> None:
    """Write the preview arrays to an uncompressed `.npz` (atomically); `gaussians`: with the
    Gaussians' own shape and SH (GAUSSIAN_KEYS), which only native splats draw. Without them a
    6M SH-3 scene's file is 0.2 GB instead of 1.5 GB, to write and for Blender to read."""
    from .io.atomic import atomic_write

    keys = PREVIEW_KEYS + (GAUSSIAN_KEYS if gaussians else ())
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as fh:  # a file object: np.savez would append ".npz" to a bare name
            np.savez(fh, **{k: getattr(preview, k) for k in keys if getattr(preview, k) is not None})


def load_preview_npz(path: str | os.PathLike) -> SplatPreview:
    """Read a preview written by `save_preview`; never unpickles (allow_pickle=False)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in PREVIEW_KEYS if k not in data.files]
            if missing:
                raise FormatError(f"{path}: not a HEMGS preview file (missing {', '.join(missing)})")
            arrays = {k: data[k] for k in PREVIEW_KEYS + GAUSSIAN_KEYS if k in data.files}
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise FormatError(f"{path}: not a readable preview file ({' '.join(str(exc).split())})") from None
    return SplatPreview(**arrays, meta={"path": str(path)})
