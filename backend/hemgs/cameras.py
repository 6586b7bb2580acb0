"""Pinhole cameras: the `Camera` type, readers for cameras.json / transforms.json, view sampling.

Convention (the same as gsplat and COLMAP/OpenCV): `viewmat` maps world to camera coordinates,
camera x right, y down, z forward (looking along +z); `K` holds pixel focal lengths and centre.

Readers:
- Inria 3DGS `cameras.json`: a list of {id, img_name, width, height, position (camera centre),
  rotation (camera-to-world 3x3), fx, fy}; the principal point is the image centre.
- NeRF / instant-ngp `transforms.json`: per frame a camera-to-world `transform_matrix` in the
  OpenGL convention (x right, y up, z back), converted here to OpenCV world->camera. Intrinsics
  from fl_x/fl_y/cx/cy/w/h or camera_angle_x/y, per frame overriding the file's global values.
  Lens distortion (k1, k2, p1, p2) is ignored: we model pinhole cameras only.

Up axis of sampled views: 3DGS scenes reconstructed by COLMAP/Inria are usually y-down, so
"-y" (world -y points up) is the default; pass `up` for other scenes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .errors import InputError

UP_AXES = {"+x": (1, 0, 0), "-x": (-1, 0, 0), "+y": (0, 1, 0), "-y": (0, -1, 0),
           "+z": (0, 0, 1), "-z": (0, 0, -1)}
DEFAULT_UP = "-y"
DEFAULT_FOV_DEG = 50.0
_IMAGE_EXTS = ("", ".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG")
# OpenGL camera axes (x right, y up, z back) -> OpenCV (x right, y down, z forward).
_GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


@dataclass
class Camera:
    viewmat: np.ndarray  # (4,4) float64, world -> camera
    K: np.ndarray  # (3,3) float64 intrinsics in pixels
    width: int
    height: int
    name: str = ""
    image_path: str | None = None  # the photo taken from this camera, when there is one

    def __post_init__(self) -> None:
        self.viewmat = np.asarray(self.viewmat, dtype=np.float64).reshape(4, 4)
        self.K = np.asarray(self.K, dtype=np.float64).reshape(3, 3)
        self.width, self.height = int(self.width), int(self.height)

    @property
    def center(self) -> np.ndarray:
        """Camera position in world coordinates."""
        R, t = self.viewmat[:3, :3], self.viewmat[:3, 3]
        return -R.T @ t

    def resized(self, width: int, height: int | None = None) -> "Camera":
        """The same camera with an image of `width` x `height` pixels (height keeps the aspect)."""
        if height is None:
            height = max(1, round(self.height * width / self.width))
        sx, sy = width / self.width, height / self.height
        K = self.K.copy()
        K[0] *= sx
        K[1] *= sy
        return replace(self, K=K, width=int(width), height=int(height))

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates (N,2) and depths (N,) of world points (N,3)."""
        pc = np.asarray(points, np.float64) @ self.viewmat[:3, :3].T + self.viewmat[:3, 3]
        uv = pc @ self.K.T
        return uv[:, :2] / uv[:, 2:3], pc[:, 2]


def intrinsics(fov_deg: float, width: int, height: int) -> np.ndarray:
    """K for a horizontal field of view `fov_deg` and square pixels, centred principal point."""
    f = 0.5 * width / math.tan(math.radians(fov_deg) / 2)
    return np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]], np.float64)


def look_at(eye, target, up) -> np.ndarray:
    """World->camera 4x4 (OpenCV axes) for a camera at `eye` looking at `target`, `up` on top."""
    eye, target, up = (np.asarray(v, np.float64) for v in (eye, target, up))
    fwd = target - eye
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, up)
    if np.linalg.norm(right) < 1e-9:
        raise InputError("look_at: the view direction is parallel to the up vector")
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    R = np.stack([right, down, fwd])  # rows: camera axes in world coordinates
    view = np.eye(4)
    view[:3, :3] = R
    view[:3, 3] = -R @ eye
    return view


# ---- readers -------------------------------------------------------------------------------
def load_cameras(path, downscale: float = 1.0) -> list[Camera]:
    """Read an Inria `cameras.json` or a NeRF/instant-ngp `transforms.json` into Cameras.

    `downscale` > 1 divides image sizes (rounded) and scales K to match. Malformed files raise
    InputError naming the file and the problem.
    """
    path = Path(path)
    if not downscale or not math.isfinite(downscale) or downscale <= 0:
        raise InputError(f"{path}: downscale factor {downscale!r} must be a positive number")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: camera file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a JSON camera file ({exc})") from None
    if isinstance(data, list):
        cams = _read_inria(path, data)
    elif isinstance(data, dict) and "frames" in data:
        cams = _read_transforms(path, data)
    else:
        raise InputError(f"{path}: neither an Inria cameras.json (a list) nor a transforms.json (with 'frames')")
    if not cams:
        raise InputError(f"{path}: holds no usable cameras")
    if downscale != 1.0:
        cams = [c.resized(max(1, round(c.width / downscale)), max(1, round(c.height / downscale))) for c in cams]
    return cams


def save_cameras(cameras: list[Camera], path) -> None:
    """Write cameras as an Inria `cameras.json` (atomically). Inria assumes a centred principal
    point, so a camera whose K is off-centre is refused rather than silently changed."""
    entries = []
    for i, c in enumerate(cameras):
        if abs(c.K[0, 2] - c.width / 2) > 1e-6 * c.width or abs(c.K[1, 2] - c.height / 2) > 1e-6 * c.height:
            raise InputError(f"{path}: camera {i} has an off-centre principal point, which cameras.json cannot hold")
        c2w = c.viewmat[:3, :3].T
        entries.append({"id": i, "img_name": c.name or f"{i:05d}", "width": c.width, "height": c.height,
                        "position": c.center.tolist(), "rotation": c2w.tolist(),
                        "fx": float(c.K[0, 0]), "fy": float(c.K[1, 1])})
    from .io.atomic import write_bytes_atomic  # stdlib-only module; imported late to keep cameras light

    write_bytes_atomic(path, json.dumps(entries, indent=1).encode("utf-8"))


def _num(path: Path, where: str, value, shape=None) -> np.ndarray:
    """A finite float array of `shape` from JSON, or InputError naming the field."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{path}: {where} is not numeric") from None
    if shape is not None and arr.shape != shape:
        raise InputError(f"{path}: {where} has shape {arr.shape}, expected {shape}")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{path}: {where} is not finite")
    return arr


def _size(path: Path, where: str, value) -> int:
    v = float(_num(path, where, value, ()))
    if v < 1 or v != round(v):
        raise InputError(f"{path}: {where} = {value!r} is not a positive whole number of pixels")
    return int(v)


def _read_inria(path: Path, entries: list) -> list[Camera]:
    cams = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise InputError(f"{path}: camera {i} is not a JSON object")
        missing = [k for k in ("width", "height", "position", "rotation", "fx", "fy") if k not in e]
        if missing:
            raise InputError(f"{path}: camera {i} lacks {', '.join(missing)}")
        w, h = _size(path, f"camera {i} width", e["width"]), _size(path, f"camera {i} height", e["height"])
        pos = _num(path, f"camera {i} position", e["position"], (3,))
        rot = _num(path, f"camera {i} rotation", e["rotation"], (3, 3))  # camera-to-world
        fx, fy = float(_num(path, f"camera {i} fx", e["fx"], ())), float(_num(path, f"camera {i} fy", e["fy"], ()))
        if fx <= 0 or fy <= 0:
            raise InputError(f"{path}: camera {i} focal lengths must be positive")
        view = np.eye(4)
        view[:3, :3] = rot.T
        view[:3, 3] = -rot.T @ pos
        K = np.array([[fx, 0, w / 2], [0, fy, h / 2], [0, 0, 1]])
        cams.append(Camera(view, K, w, h, name=str(e.get("img_name", e.get("id", i)))))
    return cams


def _read_transforms(path: Path, data: dict) -> list[Camera]:
    frames = data["frames"]
    if not isinstance(frames, list):
        raise InputError(f"{path}: 'frames' is not a list")
    cams = []
    for i, fr in enumerate(frames):
        if not isinstance(fr, dict) or "transform_matrix" not in fr or "file_path" not in fr:
            raise InputError(f"{path}: frame {i} lacks transform_matrix or file_path")
        image = _find_image(path.parent, str(fr["file_path"]))
        if image is None:  # instant-ngp lists frames whose photos were dropped
            continue
        c2w = _num(path, f"frame {i} transform_matrix", fr["transform_matrix"], (4, 4)) @ _GL_TO_CV
        try:
            view = np.linalg.inv(c2w)
        except np.linalg.LinAlgError:
            raise InputError(f"{path}: frame {i} transform_matrix is singular") from None
        K, w, h = _transforms_intrinsics(path, i, {**data, **fr}, image)
        cams.append(Camera(view, K, w, h, name=Path(fr["file_path"]).stem, image_path=str(image)))
    return cams


def _find_image(folder: Path, file_path: str) -> Path | None:
    # NeRF-synthetic paths omit the extension ("./train/r_0").
    for ext in _IMAGE_EXTS:
        p = folder / (file_path + ext)
        if p.is_file():
            return p
    return None


def _transforms_intrinsics(path: Path, i: int, d: dict, image: Path) -> tuple[np.ndarray, int, int]:
    """K, width, height of one frame; `d` is the file's globals overridden by the frame's keys."""
    if "w" in d and "h" in d:
        w, h = _size(path, f"frame {i} w", d["w"]), _size(path, f"frame {i} h", d["h"])
    else:  # NeRF-synthetic files give no size: read it from the image header
        try:
            from PIL import Image

            with Image.open(image) as im:
                w, h = im.size
        except Exception as exc:  # noqa: BLE001 - any unreadable image is a bad input
            raise InputError(f"{path}: frame {i} has no w/h and its image {image} is unreadable ({exc})") from None

    def focal(key_f: str, key_angle: str, size: int) -> float | None:
        if key_f in d:
            return float(_num(path, f"frame {i} {key_f}", d[key_f], ()))
        if key_angle in d:
            angle = float(_num(path, f"frame {i} {key_angle}", d[key_angle], ()))
            return 0.5 * size / math.tan(angle / 2)
        return None

    fx = focal("fl_x", "camera_angle_x", w)
    fy = focal("fl_y", "camera_angle_y", h)
    if fx is None and fy is None:
        raise InputError(f"{path}: frame {i} has no focal length (fl_x or camera_angle_x)")
    fx = fy if fx is None else fx
    fy = fx if fy is None else fy
    if not (fx > 0 and fy > 0):
        raise InputError(f"{path}: frame {i} focal lengths must be positive")
    cx = float(_num(path, f"frame {i} cx", d["cx"], ())) if "cx" in d else w / 2
    cy = float(_num(path, f"frame {i} cy", d["cy"], ())) if "cy" in d else h / 2
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]]), w, h


# ---- sampled views -------------------------------------------------------------------------
def robust_bounds(points: np.ndarray, pct: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-axis [pct, 100-pct] percentiles of the points, so stray floaters do not count."""
    if len(points) == 0:
        return -np.ones(3), np.ones(3)
    lo, hi = np.percentile(np.asarray(points, np.float64), [pct, 100 - pct], axis=0)
    return lo, hi


def sample_views(scene, n: int = 16, width: int = 256, height: int = 256, seed: int = 0,
                 fov_deg: float = DEFAULT_FOV_DEG, up: str = DEFAULT_UP) -> list[Camera]:
    """`n` deterministic cameras around the scene, looking at its centre.

    View 0 looks at the "front" (see `_front_side`; from -z for y-up or y-down scenes), 30
    degrees round towards -x and about 15 degrees above; all views lie on a Fibonacci spiral over elevations -20..65 degrees
    (evenly spread, and none looks along the up axis). Each view's distance puts 99% of the
    Gaussian centres into the central 90% of the frame. `seed` > 0 rotates the set by a random
    azimuth.
    """
    if up not in UP_AXES:
        raise InputError(f"unknown up axis {up!r}: expected one of {', '.join(UP_AXES)}")
    if n < 1 or width < 1 or height < 1:
        raise InputError(f"sample_views needs n, width and height >= 1 (got {n}, {width}, {height})")
    if not 1.0 <= fov_deg <= 170.0:
        raise InputError(f"field of view {fov_deg} degrees is outside 1..170")
    up_v = np.asarray(UP_AXES[up], np.float64)
    lo, hi = robust_bounds(scene.means)
    center = (lo + hi) / 2
    pts = np.asarray(scene.means, np.float64)
    if len(pts) > 20000:  # a fixed subsample: enough for percentiles, deterministic
        pts = pts[np.random.default_rng(0).choice(len(pts), 20000, replace=False)]
    if len(pts) == 0:
        pts = np.array([lo, hi])
    pts = pts - center
    K = intrinsics(fov_deg, width, height)
    # The object should fill most of the frame: nearly all points inside the central 90%.
    tan_x, tan_y = 0.9 * 0.5 * width / K[0, 0], 0.9 * 0.5 * height / K[1, 1]

    # Floor for the distance: the Gaussians' own 3-sigma size must fit too, so a scene with no
    # extent (one Gaussian, or all at one point) is still seen whole instead of from inside.
    size_floor = 0.0
    if len(scene.means):
        sigma = float(np.percentile(np.exp(np.asarray(scene.log_scales, np.float64)).max(axis=1), 99))
        size_floor = 3.0 * sigma / min(tan_x, tan_y) if math.isfinite(sigma) else 0.0

    front, side = _front_side(up)
    # View 0 is a three-quarter front view (30 degrees round from the front axis, towards -side),
    # the usual "hero" angle, which shows both a figure's face and its depth.
    az0 = np.random.default_rng(seed).uniform(0, 2 * math.pi) if seed else -math.radians(30.0)
    # A Fibonacci spiral over the elevation band (heights evenly spaced, azimuth stepping by the
    # golden angle), entered at the turn nearest 15 degrees so that view 0 is the front one.
    h_lo, h_hi = math.sin(math.radians(-20.0)), math.sin(math.radians(65.0))
    heights = h_lo + (np.arange(n) + 0.5) / n * (h_hi - h_lo)
    j0 = int(np.argmin(np.abs(heights - math.sin(math.radians(15.0)))))
    golden_angle = math.pi * (3 - math.sqrt(5))
    cams = []
    for i in range(n):
        j = (i + j0) % n
        h = float(heights[j])
        az = az0 + (j - j0) * golden_angle
        r_h = math.sqrt(1 - h * h)
        d = r_h * (math.cos(az) * front + math.sin(az) * side) + h * up_v  # unit, centre -> eye
        view = look_at(center + d, center, up_v)
        # The distance along d at which a point at camera coordinates (x, y, z) (camera at unit
        # distance) fits the frame is max(|x|/tan_x, |y|/tan_y) - z; take the 99th percentile
        # over the points, so floaters cannot push the camera away.
        pc = pts @ view[:3, :3].T
        need = np.maximum(np.abs(pc[:, 0]) / tan_x, np.abs(pc[:, 1]) / tan_y) - pc[:, 2]
        dist = max(float(np.percentile(need, 99)), size_floor, 1e-3 * max(float(np.linalg.norm(hi - lo)), 1e-6))
        eye = center + dist * d
        cams.append(Camera(look_at(eye, center, up_v), K.copy(), width, height, name=f"view_{i:03d}"))
    return cams


# Phases of `sphere_views`: the evaluation's set and the encoder's share no view.
EVAL_PHASE = 0.5
ENCODER_PHASE = 0.0
# The evaluation's protocol (DESIGN "Measuring"): cameras at twice the robust half-diagonal.
SPHERE_DISTANCE = 2.0


def sphere_views(scene, n: int = 16, width: int = 256, height: int = 256, *, phase: float = EVAL_PHASE,
                 fov_deg: float = DEFAULT_FOV_DEG, up: str = DEFAULT_UP) -> list[Camera]:
    """`n` cameras spread over the whole sphere of directions around the scene, looking at its
    robust centre from SPHERE_DISTANCE times its robust half-diagonal (an artist orbits freely:
    from below as from above).

    A Fibonacci sphere: heights along the up axis evenly spaced from pole to pole, the azimuth
    stepping by the golden angle. `phase` in [0, 1) shifts the heights by that part of a step and
    turns the azimuths, so sets of other phases (EVAL_PHASE, ENCODER_PHASE) share no view.
    """
    if up not in UP_AXES:
        raise InputError(f"unknown up axis {up!r}: expected one of {', '.join(UP_AXES)}")
    if n < 1 or width < 1 or height < 1:
        raise InputError(f"sphere_views needs n, width and height >= 1 (got {n}, {width}, {height})")
    if not 0.0 <= phase < 1.0:
        raise InputError(f"sphere_views: phase {phase} is outside [0, 1)")
    up_v = np.asarray(UP_AXES[up], np.float64)
    lo, hi = robust_bounds(scene.means)
    center = (lo + hi) / 2
    dist = SPHERE_DISTANCE * max(float(np.linalg.norm(hi - lo)) / 2, 1e-6)
    front, side = _front_side(up)
    golden_angle = math.pi * (3 - math.sqrt(5))
    K = intrinsics(fov_deg, width, height)
    cams = []
    for i in range(n):
        h = 1.0 - 2.0 * (i + 0.5 + phase) / n  # in (-1, 1]: phase shifts the whole ladder
        h = max(h, -1.0)
        az = (i + phase) * golden_angle + 2 * math.pi * phase
        r_h = math.sqrt(max(0.0, 1.0 - h * h))
        d = r_h * (math.cos(az) * front + math.sin(az) * side) + h * up_v  # unit, centre -> eye
        # at a pole the up axis is the view direction: take the front as the image's up there
        cam_up = up_v if abs(h) < 0.999 else front
        cams.append(Camera(look_at(center + dist * d, center, cam_up), K.copy(), width, height,
                           name=f"sphere_{i:03d}"))
    return cams


def evaluation_views(scene, n: int = 16, width: int = 256, height: int | None = None) -> list[Camera]:
    """The views quality is measured from (`hemgs eval`, the panel's PSNR, the benchmarks): the
    whole sphere, at EVAL_PHASE, so no encoder's views are among them."""
    return sphere_views(scene, n=n, width=width, height=height or width, phase=EVAL_PHASE)


def _front_side(up: str) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors from the centre towards the "front" camera, and to its side, for an up axis.

    y-up/y-down scenes (COLMAP, Inria): the first capture camera usually looks along +z, so the
    front is seen from -z. z-up scenes (Blender): Blender's front view, from -y. x-up: from -z.
    """
    up_v = np.asarray(UP_AXES[up], np.float64)
    front = {0: np.array([0.0, 0, -1]), 1: np.array([0.0, 0, -1]), 2: np.array([0.0, -1, 0])}[
        int(np.argmax(np.abs(up_v)))]
    return front, np.cross(up_v, front)


def split_views(cameras: list[Camera], every: int = 8) -> tuple[list[Camera], list[Camera]]:
    """(train, heldout): every `every`-th camera, starting with the first, is held out (Inria)."""
    if every < 2:
        raise InputError(f"split_views: every={every} must be at least 2")
    train = [c for i, c in enumerate(cameras) if i % every != 0]
    heldout = [c for i, c in enumerate(cameras) if i % every == 0]
    return train, heldout


def _cameras_beside(source_path) -> Path | None:
    """The Inria cameras.json that sits next to a scene file (None without a path)."""
    return Path(source_path).with_name("cameras.json") if source_path else None


def has_cameras_beside(source_path) -> bool:
    """Whether a cameras.json sits next to the scene file (what `scene_views` would use)."""
    cams_file = _cameras_beside(source_path)
    return cams_file is not None and cams_file.is_file()


def own_cameras(source_path, cameras_file=None) -> list[Camera]:
    """A scene's own cameras: `cameras_file` (cameras.json or transforms.json), else the
    cameras.json beside `source_path`. InputError when there are none: coding a scene for its own
    cameras is an explicit choice, never a silent fallback."""
    path = Path(cameras_file) if cameras_file else _cameras_beside(source_path)
    if path is None or not path.is_file():
        where = f"{cameras_file} is not a file" if cameras_file else f"no cameras.json beside {source_path}"
        raise InputError(f"coding for the scene's own cameras needs them: {where} (give a cameras.json or "
                         "transforms.json)")
    cams = load_cameras(path)
    if not cams:
        raise InputError(f"{path} holds no usable camera")
    return cams


def scene_views(scene, source_path, n: int = 16, width: int = 256, height: int = 256,
                up: str = DEFAULT_UP) -> list[Camera]:
    """The scene's own cameras when a cameras.json sits next to `source_path`, else sampled views.

    Own cameras are resized to `width` (height keeps their aspect); when there are more than
    `n`, `n` of them are taken evenly spaced.
    """
    if has_cameras_beside(source_path):
        cams = load_cameras(_cameras_beside(source_path))
        if len(cams) > n:
            cams = [cams[i] for i in np.linspace(0, len(cams) - 1, n).round().astype(int)]
        return [c.resized(width) for c in cams]
    return sample_views(scene, n=n, width=width, height=height, up=up)
