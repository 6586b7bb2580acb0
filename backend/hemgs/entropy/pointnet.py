"""The scene-agnostic half of HEMGS's hyperprior: a small PointNet++-style network, pre-trained and frozen.

Paper §3.3.2: a pre-trained point network turns the (already decoded) anchor locations into a
prior feature that generalizes across scenes; its weights ship with the package (hemgs/weights/),
never in a .hgs file, so the file names them by id and a decoder with other weights refuses it.

Bit-reproducibility: the decoder must compute the encoder's features. Everything up to the MLPs
is integer arithmetic on the voxel coordinates:
- each anchor's neighbourhood is chosen by exact integer squared distance, ties broken by the
  neighbour's offset (dx, dy, dz) in lexicographic order. Offsets, not indices, so the result
  depends only on the set of occupied voxels: neither on anchor order nor on a translation;
- the network's input is those integer offsets (voxel units, scale-free), and empty slots are
  (0, 0, 0), which no real neighbour can be (the anchor itself is excluded);
- the network treats rows independently and runs through `run_deterministic` in float64 with a
  fixed chunk, so only the matrix products carry (float64-level) noise.

Architecture (two-scale set abstraction, PointNet++ MSG-like): scale 1 is the k1 nearest
neighbours within r1 voxels; scale 2 the k2 nearest within r2, every `dilation`-th of them (a
dilated neighbourhood: a wider view for the same compute). Per scale a shared MLP on
(offset / r, |offset| / r), masked max-pool, and the fraction of filled slots (density);
both scales concatenated, a small MLP gives the D=32 feature.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..coding.exact_params import run_deterministic
from ..errors import FormatError, InputError

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "scene_agnostic_v1.safetensors"
META_KEY = "hemgs-scene-agnostic"
KIND = "hemgs-scene-agnostic"
VERSION = "v1"
EVAL_CHUNK = 4096  # rows per network call: a format constant of the decoder, like the chunk of the codec
BLOCK_ROWS = 16 * EVAL_CHUNK  # rows per neighbour-search block: bounds memory, a multiple of EVAL_CHUNK
MAX_ABS_COORD = 2**30  # squared offsets and sort keys stay far inside int64


@dataclass(frozen=True)
class PointNetConfig:
    k1: int = 8  # scale 1: nearest neighbours ...
    r1: int = 4  # ... within this many voxels
    k2: int = 24  # scale 2: nearest neighbours ...
    r2: int = 12  # ... within this many voxels,
    dilation: int = 2  # ... every `dilation`-th of them
    width: int = 32  # shared per-neighbour MLP output width (its hidden layer has half)
    hidden: int = 64  # head MLP width
    out_dim: int = 32  # D, the feature size

    @property
    def slots2(self) -> int:
        return self.k2 // self.dilation

    @property
    def slots(self) -> int:
        return self.k1 + self.slots2

    def validate(self) -> "PointNetConfig":
        ok = (1 <= self.k1 <= 64 and 1 <= self.k2 <= 128 and 1 <= self.dilation <= self.k2
              and self.k2 % self.dilation == 0 and 1 <= self.r1 <= self.r2 <= 100
              and 1 <= self.width <= 512 and 1 <= self.hidden <= 1024 and 1 <= self.out_dim <= 512)
        if not ok:
            raise FormatError(f"invalid scene-agnostic network config {asdict(self)}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d) -> "PointNetConfig":
        if not isinstance(d, dict) or set(d) != set(cls.__dataclass_fields__):
            raise FormatError(f"scene-agnostic network config has the wrong fields: {d!r:.200}")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in d.values()):
            raise FormatError("scene-agnostic network config values must be integers")
        return cls(**d).validate()


# ---- neighbourhoods on integer coordinates ---------------------------------------------------------
def _check_coords(coords) -> np.ndarray:
    c = np.asarray(coords)
    if c.ndim != 2 or c.shape[1] != 3:
        raise InputError(f"anchor coordinates have shape {c.shape}, expected (N, 3)")
    if c.dtype.kind not in "iu":
        raise InputError(f"anchor coordinates must be integer voxel coordinates, got dtype {c.dtype}")
    c = c.astype(np.int64)
    if c.size and np.abs(c).max() > MAX_ABS_COORD:
        raise InputError("anchor coordinates exceed +-2^30 voxels")
    return c


def _sort_keys(dx, dy, dz, d2, r: int) -> np.ndarray:
    """One int64 per neighbour ordering by (squared distance, dx, dy, dz); offsets lie in [-r, r]."""
    b = 2 * r + 1
    return ((d2 * b + (dx + r)) * b + (dy + r)) * b + (dz + r)


def _sorted_keys(tree, coords: np.ndarray, rows: np.ndarray, cfg: PointNetConfig, workers: int) -> np.ndarray:
    """(len(rows), k2) sorted neighbour keys within r2 (self excluded), -1 where fewer exist.

    The k-d tree gives the k nearest with ties at the k-th distance cut arbitrarily; a row is only
    accepted when its k2-th key lies strictly inside the returned distance range, otherwise it is
    queried again with twice the k (hand-written: no library selects k-nearest with exact ties)."""
    n = coords.shape[0]
    r2sq = cfg.r2 * cfg.r2
    bound = float(np.sqrt(r2sq + 0.5))  # integer d2 <= r2^2 < bound^2 < r2^2 + 1: exact cut
    axes = [np.ascontiguousarray(coords[:, j]) for j in range(3)]
    big = np.iinfo(np.int64).max
    out = np.full((rows.size, cfg.k2), -1, dtype=np.int64)
    todo = np.arange(rows.size)
    k = cfg.k2 + 1 + 8  # + self + a margin for ties at the cut
    while todo.size:
        k = min(k, n)
        qrows = rows[todo]
        _, idx = tree.query(coords[qrows].astype(np.float64), k=k, distance_upper_bound=bound, workers=workers)
        idx = np.asarray(idx).reshape(todo.size, k)
        missing = idx >= n
        idx = np.where(missing, qrows[:, None], idx)  # a missing slot reads as the anchor itself: offset 0
        dx, dy, dz = (a[idx] - a[qrows][:, None] for a in axes)
        d2 = dx * dx + dy * dy + dz * dz
        keys = _sort_keys(dx, dy, dz, d2, cfg.r2)
        keys[(d2 == 0) | (d2 > r2sq)] = big  # self and missing slots
        keys.sort(axis=1)
        if keys.shape[1] < cfg.k2:  # fewer anchors than k2 in the whole scene: pad with empty slots
            keys = np.concatenate([keys, np.full((keys.shape[0], cfg.k2 - keys.shape[1]), big)], axis=1)
        full = ~missing[:, -1]  # all k slots used: ties at the farthest distance may be cut
        sel = keys[:, : cfg.k2]
        last_d2 = np.where(sel[:, -1] == big, -1, sel[:, -1] // (2 * cfg.r2 + 1) ** 3)
        ok = ~full | (last_d2 < d2.max(axis=1)) | (k >= n)
        out[todo[ok]] = np.where(sel[ok] == big, -1, sel[ok])
        todo = todo[~ok]
        k *= 2
    return out


def neighbourhood_offsets(coords, cfg: PointNetConfig, *, rows=None, tree=None, workers: int = 1) -> np.ndarray:
    """Per-anchor integer offsets of its neighbourhood, (len(rows), k1 + k2/dilation, 3) int64.

    The first k1 slots are scale 1 (the k1 nearest within r1), the rest scale 2 (every
    `dilation`-th of the k2 nearest within r2); order by (squared distance, dx, dy, dz); empty
    slots are (0, 0, 0). `rows` picks the anchors to describe (default all); the neighbours come
    from all of `coords`.
    """
    from scipy.spatial import cKDTree

    c = _check_coords(coords)
    rows = np.arange(c.shape[0]) if rows is None else np.asarray(rows, dtype=np.int64)
    if c.shape[0] == 0 or rows.size == 0:
        return np.zeros((rows.size, cfg.slots, 3), dtype=np.int64)
    if tree is None:
        tree = cKDTree(c.astype(np.float64))
    keys = _sorted_keys(tree, c, rows, cfg, workers)
    # Scale 1: the first k1 of the sorted list that lie within r1 (sorted, so a prefix);
    # scale 2: every `dilation`-th of the k2. Key -1 = empty slot = offset (0, 0, 0).
    b = 2 * cfg.r2 + 1
    k1 = keys[:, : cfg.k1]
    k1 = np.where(k1 // b**3 <= cfg.r1 * cfg.r1, k1, -1)
    sel = np.concatenate([k1, keys[:, :: cfg.dilation]], axis=1)
    valid = sel >= 0
    sel = np.maximum(sel, 0)
    off = np.stack([sel // (b * b) % b - cfg.r2, sel // b % b - cfg.r2, sel % b - cfg.r2], axis=-1)
    return off * valid[..., None]


# ---- the network ------------------------------------------------------------------------------------
class PointNetSA(nn.Module):
    """Two-scale set abstraction: (B, slots, 3) integer offsets (as floats) -> (B, out_dim).

    Rows are independent (no batch statistics), and the input's integer values make every step
    before the first matrix product exact: d2 is a sum of three exact squares, sqrt and division
    are correctly rounded."""

    def __init__(self, cfg: PointNetConfig = PointNetConfig()):
        super().__init__()
        self.cfg = cfg.validate()
        w, h = cfg.width, max(1, cfg.width // 2)  # a narrow first layer: the per-slot MLP is the hot loop
        self.mlp1 = nn.Sequential(nn.Linear(4, h), nn.ReLU(), nn.Linear(h, w), nn.ReLU())
        self.mlp2 = nn.Sequential(nn.Linear(4, h), nn.ReLU(), nn.Linear(h, w), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(2 * w + 2, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, cfg.out_dim))

    @staticmethod
    def _scale(mlp: nn.Module, off: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
        d2 = (off * off).sum(-1, keepdim=True)
        mask = (d2 > 0).to(off.dtype)
        h = mlp(torch.cat([off / r, torch.sqrt(d2) / r], dim=-1)) * mask  # ReLU output >= 0: 0 = empty
        return h.amax(dim=1), mask.mean(dim=1)

    def forward(self, off: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        p1, n1 = self._scale(self.mlp1, off[:, : c.k1], c.r1)
        p2, n2 = self._scale(self.mlp2, off[:, c.k1:], c.r2)
        return self.head(torch.cat([p1, n1, p2, n2], dim=-1))


# ---- shipped weights --------------------------------------------------------------------------------
def weights_id(path) -> str:
    """The id a .hgs header stores: the first 16 hex digits of the weights file's sha256."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def save_weights(net: PointNetSA, path, info: dict | None = None) -> str:
    """Write `net` as safetensors (float32 tensors, JSON metadata; atomically); returns its id."""
    from safetensors.torch import save

    from ..io.atomic import write_bytes_atomic

    tensors = {k: v.detach().to(torch.float32).cpu().contiguous() for k, v in net.state_dict().items()}
    meta = {"kind": KIND, "version": VERSION, "config": net.cfg.to_dict(), **(info or {})}
    # bytes through our writer: safetensors' save_file makes its file 0600
    write_bytes_atomic(path, save(tensors, metadata={META_KEY: json.dumps(meta, sort_keys=True)}))
    return weights_id(path)


class SceneAgnosticPrior:
    """The frozen network, its id, and the deterministic per-anchor feature path."""

    def __init__(self, net: PointNetSA, wid: str, meta: dict):
        self.net = net
        self.id = wid
        self.meta = meta
        # The float64 copy that every feature evaluation uses (made once).
        net64 = PointNetSA(net.cfg)
        net64.load_state_dict(net.state_dict())
        self._net64 = _frozen(net64, torch.float64)

    @property
    def config(self) -> PointNetConfig:
        return self.net.cfg

    @property
    def dim(self) -> int:
        return self.net.cfg.out_dim

    def features(self, coords_int, *, chunk: int = EVAL_CHUNK, workers: int | None = None) -> torch.Tensor:
        """(N, D) float64 features of the anchors at integer voxel coordinates `coords_int` (N, 3).

        Neighbourhoods come from the integer coordinates exactly; the network runs in float64 in
        chunks of `chunk` rows (the codec keeps the default). Memory stays bounded: rows are
        processed in blocks, each a whole number of chunks, so blocking changes nothing."""
        from scipy.spatial import cKDTree

        c = _check_coords(coords_int)
        n = c.shape[0]
        if n == 0:
            return torch.zeros((0, self.dim), dtype=torch.float64)
        if workers is None:  # the kd-tree's threads; the result does not depend on them
            env = os.environ.get("HEMGS_THREADS", "1")
            workers = max(1, int(env)) if env.isdigit() else 1
        tree = cKDTree(c.astype(np.float64))
        block = max(1, BLOCK_ROWS // chunk) * chunk
        outs = []
        for start in range(0, n, block):
            rows = np.arange(start, min(n, start + block))
            off = neighbourhood_offsets(c, self.config, rows=rows, tree=tree, workers=workers)
            outs.append(run_deterministic(self._net64, torch.from_numpy(off.astype(np.float64)), chunk=chunk))
        return torch.cat(outs)


def _frozen(net: nn.Module, dtype) -> nn.Module:
    net = net.to(dtype).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def load_weights(path) -> tuple[PointNetSA, dict]:
    """Read a scene-agnostic weights file (safetensors: nothing is unpickled); FormatError if bad."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(f"scene-agnostic weights not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise FormatError(f"{path} is not a scene-agnostic weights file: {' '.join(str(exc).split())}") from None
    try:
        meta = json.loads(raw) if raw else None
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or meta.get("kind") != KIND:
        raise FormatError(f"{path} is a safetensors file but not HEMGS scene-agnostic weights")
    if meta.get("version") != VERSION:
        raise FormatError(f"{path}: scene-agnostic weights version {meta.get('version')!r}, this hemgs reads {VERSION}")
    net = PointNetSA(PointNetConfig.from_dict(meta.get("config")))
    want = {k: v.shape for k, v in net.state_dict().items()}
    have = {k: v.shape for k, v in tensors.items()}
    if want != have:
        raise FormatError(f"{path}: weights do not match the network config (tensors {sorted(have)})")
    if not all(torch.isfinite(v).all() for v in tensors.values()):
        raise FormatError(f"{path}: weights contain NaN or Inf")
    net.load_state_dict({k: v.to(torch.float32) for k, v in tensors.items()})
    return _frozen(net, torch.float32), meta


def load_scene_agnostic(path=None) -> SceneAgnosticPrior:
    """The frozen scene-agnostic network (eval mode, requires_grad False) with its id.

    Default: the weights shipped in hemgs/weights/ (read once per process and cached)."""
    if path is None:
        return _load_default()
    return _load(Path(path))


def _load(path: Path) -> SceneAgnosticPrior:
    net, meta = load_weights(path)
    return SceneAgnosticPrior(net, weights_id(path), meta)


@lru_cache(maxsize=1)
def _load_default() -> SceneAgnosticPrior:
    return _load(DEFAULT_WEIGHTS)


def shipped_weights_id() -> str:
    """The id of the weights this hemgs ships."""
    return _load_default().id


def prior_for_file(header: dict, sa_dim: int, sa=None) -> SceneAgnosticPrior:
    """The scene-agnostic network a file with that part on needs: its header's weights id must be
    ours, and the network's width the file's (FormatError otherwise). `sa`: one already loaded."""
    check_weights_id(header.get("scene_agnostic"))
    sa = sa or load_scene_agnostic()
    if sa.dim != sa_dim:
        raise FormatError(f"the file expects a {sa_dim}-wide scene-agnostic feature, the shipped network gives {sa.dim}")
    return sa


def check_weights_id(file_id, *, name: str = "this file", ours: str | None = None) -> None:
    """Refuse a .hgs file whose header names other scene-agnostic weights than this hemgs has."""
    ours = shipped_weights_id() if ours is None else ours
    if file_id != ours:
        raise FormatError(f"{name} was made with scene-agnostic weights {file_id}, this hemgs has {ours}")
