"""The anchor scene model (Scaffold-GS, with HAC's binary offset masks).

Anchors sit at the centres of occupied voxels: integer coordinates `coords` (N,3) on a grid with
corner `origin` and cube side `voxel_size`. Each anchor carries
- a feature vector (N,F),
- 6 log-space scaling values (N,6): the first 3 scale its offsets, the last 3 bound its Gaussians'
  scales,
- k offsets (N,k,3) in units of exp(scaling[:, :3]),
- k mask logits (N,k), binarised with a straight-through estimator (HAC): a slot whose mask is off
  spawns no Gaussian, so the codec can skip its offsets.
Three small MLPs turn (feature, view direction, view distance) into the k Gaussians' opacity,
covariance (scale + rotation) and colour, as Scaffold-GS.

The "generate" step is the pure function `generate_neural_gaussians(...)` of the anchor attributes,
the MLPs and a camera centre, so the codec can run it on decoded attributes; `AnchorModel` is the
trainable container around those tensors.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import FormatError, SceneError

# Mask logits written for "on" and "off" slots when a model is built from binary masks. HAC
# initialises its mask parameter to 1 (sigmoid 0.73); -10 gives sigmoid 4.5e-5, far below the
# 0.01 threshold, so an "off" slot stays off until training moves it a long way.
MASK_ON_LOGIT = 1.0
MASK_OFF_LOGIT = -10.0


@dataclass
class AnchorConfig:
    """Hyper-parameters of the anchor model (stored in the .hgs header, so plain JSON types)."""

    feat_dim: int = 50  # HAC's anchor feature size
    k: int = 10  # offsets (neural Gaussians) per anchor
    hidden: int | None = None  # MLP hidden width; None means feat_dim (as Scaffold-GS/HAC)
    use_dist: bool = True  # feed the anchor-camera distance to the MLPs (Scaffold-GS does)
    voxel_size: float = 0.0  # set from the voxelization
    mask_threshold: float = 0.01  # HAC: an offset is on when sigmoid(mask logit) > 0.01

    @property
    def hidden_dim(self) -> int:
        return int(self.hidden or self.feat_dim)

    @property
    def mlp_in(self) -> int:
        return self.feat_dim + 3 + (1 if self.use_dist else 0)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AnchorConfig":
        """Build from a header dict; unknown keys are an error so a newer file is not misread."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise FormatError(f"anchor model config has unknown fields {unknown}")
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if int(self.feat_dim) < 1 or int(self.k) < 1 or self.hidden_dim < 1:
            raise SceneError(f"anchor config needs positive sizes, got feat_dim={self.feat_dim} k={self.k}")
        if not (math.isfinite(self.voxel_size) and self.voxel_size > 0):
            raise SceneError(f"anchor config voxel_size must be positive, got {self.voxel_size}")
        if not 0.0 < float(self.mask_threshold) < 1.0:
            raise SceneError(f"anchor config mask_threshold must be in (0,1), got {self.mask_threshold}")


@dataclass
class NeuralGaussians:
    """Plain Gaussians ready for `hemgs.render.rasterize` (colours are RGB, so sh_degree=None).

    `index` is the flat slot of each Gaussian, anchor * k + offset, over all anchors of the model.
    """

    means: Tensor  # (M,3)
    quats: Tensor  # (M,4) w,x,y,z, unit length
    scales: Tensor  # (M,3) activated (standard deviations)
    opacities: Tensor  # (M,) in (0,1)
    colors: Tensor  # (M,3) RGB in [0,1]
    index: Tensor  # (M,) int64

    def __len__(self) -> int:
        return int(self.means.shape[0])


@dataclass
class SlotOutputs:
    """What the MLPs say for every slot of every anchor, before masking and selection."""

    means: Tensor  # (N,k,3)
    opacity: Tensor  # (N,k) tanh output in (-1,1); the slot is drawn only where > 0
    log_scales: Tensor  # (N,k,3) log of the activated scales
    quats: Tensor  # (N,k,4) unit length, w,x,y,z
    colors: Tensor  # (N,k,3) in (0,1)


class AnchorMLPs(nn.Module):
    """Scaffold-GS's three heads, each Linear-ReLU-Linear on (feature, view dir[, distance])."""

    def __init__(self, cfg: AnchorConfig):
        super().__init__()
        h, k = cfg.hidden_dim, int(cfg.k)
        self.opacity = nn.Sequential(nn.Linear(cfg.mlp_in, h), nn.ReLU(), nn.Linear(h, k), nn.Tanh())
        self.cov = nn.Sequential(nn.Linear(cfg.mlp_in, h), nn.ReLU(), nn.Linear(h, 7 * k))
        self.color = nn.Sequential(nn.Linear(cfg.mlp_in, h), nn.ReLU(), nn.Linear(h, 3 * k), nn.Sigmoid())


def binary_mask(mask_logits: Tensor, threshold: float) -> Tensor:
    """0/1 mask with the sigmoid's gradient (straight-through estimator, as HAC)."""
    soft = torch.sigmoid(mask_logits)
    hard = (soft > threshold).to(soft.dtype)
    # soft - soft.detach() is exactly 0, so the value is exactly 0 or 1 (a decoded bool mask gives
    # bit-identical Gaussians) while the gradient is the sigmoid's.
    return hard + (soft - soft.detach())


def anchor_positions(coords: Tensor, origin: Tensor, voxel_size: float) -> Tensor:
    """Voxel centres in world space."""
    return origin + (coords.to(origin.dtype) + 0.5) * voxel_size


def decode_slots(
    anchors: Tensor, features: Tensor, scaling: Tensor, offsets: Tensor, mlps: AnchorMLPs,
    camera_center: Tensor, *, use_dist: bool = True,
) -> SlotOutputs:
    """Run the MLPs for every slot of every anchor given. Pure function of its inputs.

    `camera_center` is (3,) or one centre per anchor (N,3) (the warm start views each anchor from
    its own random camera).
    """
    n, k = offsets.shape[0], offsets.shape[1]
    view = anchors - camera_center
    dist = view.norm(dim=1, keepdim=True)
    view = view / dist.clamp_min(1e-12)
    x = torch.cat([features, view, dist], dim=1) if use_dist else torch.cat([features, view], dim=1)
    opacity = mlps.opacity(x)  # (N,k)
    cov = mlps.cov(x).view(n, k, 7)
    colors = mlps.color(x).view(n, k, 3)
    # Scale = sigmoid(raw) * exp(scaling[3:]): each Gaussian is at most its anchor's bound.
    log_scales = F.logsigmoid(cov[..., :3]) + scaling[:, None, 3:]
    quats = F.normalize(cov[..., 3:], dim=-1)
    means = anchors[:, None, :] + offsets * torch.exp(scaling[:, None, :3])
    return SlotOutputs(means, opacity, log_scales, quats, colors)


def generate_neural_gaussians(
    anchors: Tensor, features: Tensor, scaling: Tensor, offsets: Tensor, mask: Tensor,
    mlps: AnchorMLPs, camera_center: Tensor, *, use_dist: bool = True, visible: Tensor | None = None,
) -> NeuralGaussians:
    """The Gaussians seen from `camera_center`: slots whose mask is on and whose opacity is > 0.

    `mask` is the (N,k) 0/1 mask (a straight-through float keeps gradients flowing to the logits,
    as HAC multiplies it into the opacity). `visible` (N,) bool restricts to some anchors
    (frustum culling). Pure function: the codec calls it on decoded attributes.
    """
    n, k = offsets.shape[0], offsets.shape[1]
    rows = torch.arange(n, device=anchors.device)
    if visible is not None:
        visible = visible.to(device=anchors.device, dtype=torch.bool)
        if visible.shape != (n,):
            raise SceneError(f"visible mask has shape {tuple(visible.shape)}, expected ({n},)")
        rows = rows[visible]
        anchors, features, scaling, offsets, mask = (
            anchors[visible], features[visible], scaling[visible], offsets[visible], mask[visible])
    slots = decode_slots(anchors, features, scaling, offsets, mlps, camera_center, use_dist=use_dist)
    opacity = slots.opacity * mask.to(slots.opacity.dtype)
    keep = (opacity > 0.0).reshape(-1)
    flat_index = (rows[:, None] * k + torch.arange(k, device=anchors.device)).reshape(-1)
    return NeuralGaussians(
        means=slots.means.reshape(-1, 3)[keep],
        quats=slots.quats.reshape(-1, 4)[keep],
        scales=torch.exp(slots.log_scales).reshape(-1, 3)[keep],
        opacities=opacity.reshape(-1)[keep],
        colors=slots.colors.reshape(-1, 3)[keep],
        index=flat_index[keep],
    )


class AnchorModel(nn.Module):
    """Anchors on a voxel grid plus the MLPs that expand them into neural Gaussians."""

    def __init__(self, config: AnchorConfig, coords, origin, *, seed: int | None = 0):
        """Fresh model: zero features and offsets, scaling log(voxel_size), all masks on.

        The MLPs are initialised from `seed` (None: from torch's global generator), so two models
        built with the same seed are identical.
        """
        super().__init__()
        config.validate()
        self.config = config
        coords = torch.as_tensor(coords, dtype=torch.int64).reshape(-1, 3)
        if coords.numel() and (int(coords.min()) < 0 or int(coords.max()) > 65535):
            raise SceneError("anchor coordinates must lie in 0..65535 (16 bits per axis)")
        n, k, f = coords.shape[0], int(config.k), int(config.feat_dim)
        self.register_buffer("coords", coords.clone())
        self.register_buffer("origin", torch.as_tensor(origin, dtype=torch.float32).reshape(3).clone())
        self.features = nn.Parameter(torch.zeros(n, f))
        self.scaling = nn.Parameter(torch.full((n, 6), math.log(config.voxel_size)))
        self.offsets = nn.Parameter(torch.zeros(n, k, 3))
        self.mask_logits = nn.Parameter(torch.full((n, k), MASK_ON_LOGIT))
        if seed is None:
            self.mlps = AnchorMLPs(config)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed))
                self.mlps = AnchorMLPs(config)

    # ---- geometry ----------------------------------------------------------------------------
    @property
    def num_anchors(self) -> int:
        return int(self.coords.shape[0])

    @property
    def voxel_size(self) -> float:
        return float(self.config.voxel_size)

    @property
    def anchors(self) -> Tensor:
        """(N,3) anchor positions: voxel centres."""
        return anchor_positions(self.coords, self.origin, self.voxel_size)

    def binary_mask(self) -> Tensor:
        """(N,k) 0/1 offset mask, differentiable towards the logits (straight-through)."""
        return binary_mask(self.mask_logits, float(self.config.mask_threshold))

    # ---- rendering ---------------------------------------------------------------------------
    def generate(self, camera_center, *, visible: Tensor | None = None) -> NeuralGaussians:
        """Neural Gaussians seen from `camera_center` (3,) world position."""
        cam = torch.as_tensor(camera_center, dtype=self.features.dtype, device=self.features.device)
        if cam.shape != (3,):
            raise SceneError(f"camera centre has shape {tuple(cam.shape)}, expected (3,)")
        return generate_neural_gaussians(
            self.anchors, self.features, self.scaling, self.offsets, self.binary_mask(), self.mlps,
            cam, use_dist=self.config.use_dist, visible=visible,
        )

    def slots(self, camera_center: Tensor, index: Tensor | None = None) -> SlotOutputs:
        """MLP outputs for every slot of the anchors `index` (all when None), before masking."""
        sel = slice(None) if index is None else index
        return decode_slots(
            self.anchors[sel], self.features[sel], self.scaling[sel], self.offsets[sel], self.mlps,
            camera_center, use_dist=self.config.use_dist,
        )

    # ---- codec access ------------------------------------------------------------------------
    def anchor_attributes(self) -> dict[str, Tensor]:
        """Detached copies of the per-anchor attributes the codec stores.

        features (N,F), scaling (N,6), offsets (N,k,3) float32; mask (N,k) bool (slot on).
        """
        with torch.no_grad():
            return {
                "features": self.features.detach().clone(),
                "scaling": self.scaling.detach().clone(),
                "offsets": self.offsets.detach().clone(),
                "mask": self.binary_mask().detach() > 0.5,
            }

    def mlp_state(self) -> dict[str, Tensor]:
        """The MLP weights as plain contiguous tensors (name -> tensor), safetensors-friendly."""
        return {name: t.detach().cpu().contiguous().clone() for name, t in self.mlps.state_dict().items()}

    def load_mlp_state(self, state: dict[str, Tensor]) -> None:
        """Load weights from `mlp_state()` output; wrong names or shapes raise FormatError."""
        own = self.mlps.state_dict()
        missing = sorted(set(own) - set(state))
        extra = sorted(set(state) - set(own))
        if missing or extra:
            raise FormatError(f"anchor MLP weights do not match the model: missing {missing}, unexpected {extra}")
        for name, ref in own.items():
            t = state[name]
            if not isinstance(t, Tensor) or tuple(t.shape) != tuple(ref.shape):
                shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise FormatError(f"anchor MLP weight {name} has shape {shape}, expected {tuple(ref.shape)}")
            if not torch.isfinite(t).all():
                raise FormatError(f"anchor MLP weight {name} holds NaN/Inf")
        with torch.no_grad():
            for name, ref in own.items():
                ref.copy_(state[name].to(dtype=ref.dtype, device=ref.device))

    @classmethod
    def from_attributes(
        cls, config: AnchorConfig, coords, origin, attributes: dict, mlp_state: dict[str, Tensor],
    ) -> "AnchorModel":
        """Rebuild a model from decoded attributes (as `anchor_attributes`) and `mlp_state`.

        The binary mask becomes logits MASK_ON_LOGIT / MASK_OFF_LOGIT, so `generate` gives the
        same Gaussians as the model the attributes came from.
        """
        model = cls(config, coords, origin, seed=0)  # MLP init is overwritten below
        n, k, f = model.num_anchors, int(config.k), int(config.feat_dim)
        expect = {"features": (n, f), "scaling": (n, 6), "offsets": (n, k, 3), "mask": (n, k)}
        for name, shape in expect.items():
            if name not in attributes:
                raise FormatError(f"decoded anchor attributes lack '{name}'")
            got = tuple(torch.as_tensor(attributes[name]).shape)
            if got != shape:
                raise FormatError(f"decoded anchor attribute {name} has shape {got}, expected {shape}")
        with torch.no_grad():
            for name in ("features", "scaling", "offsets"):
                t = torch.as_tensor(attributes[name], dtype=torch.float32)
                if not torch.isfinite(t).all():
                    raise FormatError(f"decoded anchor attribute {name} holds NaN/Inf")
                getattr(model, name).copy_(t)
            on = torch.as_tensor(attributes["mask"]).to(torch.bool)
            model.mask_logits.copy_(torch.where(on, MASK_ON_LOGIT, MASK_OFF_LOGIT))
        model.load_mlp_state(mlp_state)
        return model

    # ---- misc --------------------------------------------------------------------------------
    def view_sphere(self) -> tuple[Tensor, float]:
        """(centre, radius) of the sphere on which warm start and bake place cameras.

        Centre of the anchors' bounding box; radius twice its half-diagonal, so cameras sit
        outside the scene and see it whole (at least one voxel, for a one-anchor scene).
        """
        with torch.no_grad():
            a = self.anchors
            if a.shape[0] == 0:
                return self.origin.clone(), 1.0
            lo, hi = a.min(dim=0).values, a.max(dim=0).values
            half_diag = float((hi - lo).norm()) / 2.0
            return (lo + hi) / 2.0, 2.0 * max(half_diag, self.voxel_size)
