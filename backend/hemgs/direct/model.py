"""The HEMGS entropy model applied to a scene's own Gaussians (anchor-free mode).

The parts are the anchor model's (entropy/hemgs.py), applied per Gaussian instead of per anchor:
- hyperprior per occupied voxel: the binary hash grid (scene-specific, small tables: its bits are
  in the file) + the frozen scene-agnostic point network over the voxel grid -> prior MLP;
  every Gaussian of a voxel shares its voxel's prior;
- progressive stages (attributes.STAGES): each stage's head sees the prior, the Gaussian's own
  decoded values of earlier stages, and an autoregressive context: the decoded values of the
  same stage in neighbouring voxels of earlier coding groups (entropy/context.py's adaptive
  selection on the voxel grid; a voxel is represented by its first Gaussian), pooled by
  `PooledContext` — lighter than anchor mode's ContextNet, which embeds every neighbour with an
  MLP: there are ~10x more Gaussians than anchors and decoding must take seconds (the
  ContextNet version decoded playbot_lod2 in 15 s on one thread);
- variable-rate steps: log q = ½·log(6/ln2 · λ·LAMBDA_UNIT / w) + bias + MLP(prior, earlier
  values, λ). The first term is the step that minimises bits + w·q²/12 / λ for a value of
  render weight w (attributes.step_log_weights); the learned part corrects it per channel and
  per Gaussian, and λ enters the network as the paper's variable-rate predictor does.
Switches as in anchor mode: scene_agnostic, ar, acs, variable_rate.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..entropy.context import RADIUS as CONTEXT_RADIUS
from ..entropy.context import SRF_RADIUS
from ..entropy.hashgrid import BinaryHashGrid, HashGridConfig
from ..modes import DIRECT_SWITCH_DEFAULTS
from .attributes import STAGES, stage_dims, step_log_weights

# λ of this mode: bits + distortion / (λ·LAMBDA_UNIT), distortion in the render weights' units.
# With weights as shares of the image's MSE, λ = 1 lands near SPZ's fidelity on a 10^5-Gaussian scene.
LAMBDA_UNIT = 3e-10
LAMBDAS = (0.25, 0.5, 1.0, 2.0)  # the K training rates (DirectConfig.lambdas)
LAMBDA_REF = 0.5
_LOG_STEP_FIXED = 0.5 * math.log(6.0 / math.log(2.0))
LOG_STEP_RANGE = (math.log(1e-6), math.log(1e3))
# Largest step per stage: render errors grow faster than the weights' quadratic model once a
# log-scale, logit or angle is off by more than this (measured on playbot_lod2: with uncapped
# steps the scale stage's MSE per value grew 30x from λ 0.25 to 1 and the PSNR fell 9 dB).
MAX_STEP = {"opacity": 0.5, "scale": 0.2, "rotation": 0.3}
# With scales by rank (DirectConfig.scale_ranks): the shortest axis may be off by much more before
# it shows (a flat Gaussian stays flat); the longest keeps the stage's cap.
SCALE_RANK_MAX_STEP = (2.0, 0.5, 0.2)
# With rotations as (twist, swing u0, u1) (DirectConfig.rotation "swing_twist"): caps per value.
SWING_TWIST_MAX_STEP = (0.3, 0.3, 0.3)
# Stages coded under Laplacians: heavy-tailed values (docs/direct-mode.md, "Symbol distributions").
LAPLACE_STAGES = ("sh",)
# Stages coded uniformly over the range the decoder knows them to lie in (codec/streams.py, family
# "uniform"): a position residual lies inside its voxel, and nothing predicts where better than
# chance (its normalised residuals are flat: under the Gaussian they cost 0.13-0.25 bits a value
# more; measured on playbot_lod2, λ = 1/16: 312 kB uniform against 322 kB).
UNIFORM_STAGES = ("position",)
ROTATIONS = ("rotvec", "swing_twist")
# Stages coded in two parts, the second conditioned on the first as decoded (DirectConfig.chain):
# the colours, luma first (attributes.COLOR_BASIS row 0: every third value), then the two chroma
# values of each coefficient. A Gaussian's chroma follows its luma (dark colours carry little
# chroma, view-dependent ones have large SH in every channel), which neither the prior nor the
# earlier stages tell. Measured in the fit (its loss over the last 80 of 400 iterations, bits +
# distortion at the 4 training λ): DC -5.9%/-5.2%, SH -2.9%/-3.2% on playbot_lod2/lod3, DC -1.1% on
# biker.
CHAIN_STAGES = ("dc", "sh")


def chain_parts(stage: str, dim: int) -> tuple[list[int], list[int]] | None:
    """The (first, rest) channels of a chained stage: its luma values, then its chroma values."""
    if stage not in CHAIN_STAGES:
        return None
    return [i for i in range(dim) if i % 3 == 0], [i for i in range(dim) if i % 3]
NO_AR_STAGES = ("position",)  # residuals inside a voxel do not follow their neighbours'
# A small grid: its tables are bits of every file, and per-Gaussian attributes need less of it.
DIRECT_GRID = HashGridConfig(levels_3d=8, res_3d=(16, 256), log2_table_3d=11, levels_2d=2, res_2d=(64, 512),
                             log2_table_2d=11, features=2)


def lambda_feature(lam: float) -> float:
    return math.log(float(lam) / LAMBDA_REF)


@dataclass
class DirectConfig:
    sh_degree: int = 0
    prior_dim: int = 12
    hidden: int = 16
    ctx_dim: int = 8
    sa_dim: int = 0
    # defaults: hemgs.modes.DIRECT_SWITCH_DEFAULTS (why the prior and the context are off there)
    scene_agnostic: bool = DIRECT_SWITCH_DEFAULTS["scene_agnostic"]
    ar: bool = DIRECT_SWITCH_DEFAULTS["ar"]
    acs: bool = DIRECT_SWITCH_DEFAULTS["acs"]
    variable_rate: bool = DIRECT_SWITCH_DEFAULTS["variable_rate"]
    groups: str = "parity8"
    # ACS as in anchor mode (25³ field) but at most 8 neighbours: a Gaussian's context is paid
    # per Gaussian, ~10x as many as anchors, and decode must stay within seconds.
    n_context: int = 8
    lambdas: list = field(default_factory=lambda: list(LAMBDAS))
    # stages whose symbols are coded under Laplacians (the rest under Gaussians): see LAPLACE_STAGES
    laplace: list = field(default_factory=lambda: list(LAPLACE_STAGES))
    # stages coded uniformly within their known range (only the position residual has one)
    uniform: list = field(default_factory=lambda: list(UNIFORM_STAGES))
    # quantize every stepped stage on the grid through its predicted mean (codec/streams.py)
    shifted: bool = True
    # scales in ascending order, each rank with its own weight and step cap (attributes.SCALE_RANK_LOG)
    scale_ranks: bool = True
    # a Gaussian's SH may repeat an earlier Gaussian's decoded SH (direct/repeats.py)
    sh_repeats: bool = True
    # how rotations are coded: "swing_twist" (attributes.quat_to_swing_twist: a step per own axis)
    # or "rotvec" (rotation vectors, one step for all three)
    rotation: str = "swing_twist"
    # colour stages coded luma first, then chroma conditioned on it (CHAIN_STAGES)
    chain: bool = True
    grid: dict = field(default_factory=lambda: DIRECT_GRID.to_dict())

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_untrusted(d) -> "DirectConfig":
        """From a file's JSON: known fields, right types, small ranges (ValueError otherwise)."""
        if not isinstance(d, dict):
            raise ValueError("the direct-mode config must be a JSON object")
        known = {f.name for f in fields(DirectConfig)}
        if set(d) != known:  # older files' missing fields: codec/legacy.py
            raise ValueError(f"direct-mode config fields unknown {sorted(set(d) - known)}, "
                             f"missing {sorted(known - set(d))}")
        cfg = DirectConfig(**d)
        for name, lo, hi in (("sh_degree", 0, 3), ("prior_dim", 1, 256), ("hidden", 1, 256), ("ctx_dim", 1, 256),
                             ("sa_dim", 0, 512), ("n_context", 1, 256)):
            v = getattr(cfg, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ValueError(f"direct-mode config {name} must be an integer in [{lo}, {hi}], got {v!r}"[:120])
        for name in ("scene_agnostic", "ar", "acs", "variable_rate", "shifted", "scale_ranks", "sh_repeats", "chain"):
            if not isinstance(getattr(cfg, name), bool):
                raise ValueError(f"direct-mode config {name} must be true or false")
        if not isinstance(cfg.lambdas, list) or not cfg.lambdas or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                for v in cfg.lambdas):
            raise ValueError("direct-mode config lambdas must be a list of positive numbers")
        if not isinstance(cfg.laplace, list) or not all(isinstance(v, str) and v in STAGES for v in cfg.laplace):
            raise ValueError("direct-mode config laplace must be a list of stage names")
        if not isinstance(cfg.uniform, list) or not all(isinstance(v, str) and v in UNIFORM_STAGES for v in cfg.uniform) \
                or set(cfg.uniform) & set(cfg.laplace):
            raise ValueError(f"direct-mode config uniform must list stages among {', '.join(UNIFORM_STAGES)} "
                             "(and not under laplace)")
        if cfg.rotation not in ROTATIONS:
            raise ValueError(f"direct-mode config rotation must be one of {', '.join(ROTATIONS)}")
        if not isinstance(cfg.groups, str):
            raise ValueError("direct-mode config groups must be a scheme name")
        HashGridConfig.check_untrusted(cfg.grid, "direct-mode grid", max_levels=16, max_features=4, max_log2=16)
        return cfg

    @property
    def swing_twist(self) -> bool:
        return self.rotation == "swing_twist"

    @property
    def dims(self) -> dict[str, int]:
        return stage_dims(self.sh_degree)

    def earlier_dim(self, stage: str) -> int:
        dims = self.dims
        return sum(dims[s] for s in STAGES[:STAGES.index(stage)] if s in dims)


def _mlp(i: int, h: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, h), nn.ReLU(), nn.Linear(h, o))


class PooledContext(nn.Module):
    """Context feature from up to n neighbours' values (M, n, A), offsets (M, n, 3), mask (M, n):
    the nearest neighbour's values, the inverse-distance-weighted mean, and the filled share,
    through one linear layer. Row-independent; cost O(n·A) a row."""

    def __init__(self, attr_dim: int, out_dim: int, radius: int, n_max: int):
        super().__init__()
        self.attr_dim, self.radius, self.n_max = attr_dim, radius, n_max
        self.out = nn.Linear(2 * attr_dim + 1, out_dim)

    def forward(self, values: torch.Tensor, offsets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        dtype = self.out.weight.dtype
        m = mask.to(dtype)
        off = offsets.to(dtype) / self.radius
        w = m / (1.0 + torch.sqrt((off * off).sum(dim=2)))  # sqrt is correctly rounded in IEEE
        vals = torch.where(m[..., None] > 0, values.to(dtype), values.new_zeros((), dtype=dtype))
        mean = (vals * w[..., None]).sum(dim=1) / w.sum(dim=1, keepdim=True).clamp_min(1e-12)
        nearest = vals[:, 0] if vals.shape[1] else vals.new_zeros((vals.shape[0], self.attr_dim))
        share = m.sum(dim=1, keepdim=True) / self.n_max
        return self.out(torch.cat([nearest, mean, share], dim=1))


class DirectStage(nn.Module):
    """One stage's step predictor and distribution head.

    Row layouts (all float64 in the codec, see `step_rows` / `head_rows`):
      step rows: [prior (P) | earlier decoded values, raw (E)]
      head rows: [prior (P) | earlier decoded values, raw (E) | packed context (ar.pack_context)]
      rest rows (chained stages): [head row | the first part's decoded values, raw]
    """

    def __init__(self, cfg: DirectConfig, stage: str, log_rho: float):
        super().__init__()
        self.stage, self.cfg, self.log_rho = stage, cfg, float(log_rho)
        self.dim, self.e, self.p = cfg.dims[stage], cfg.earlier_dim(stage), cfg.prior_dim
        self.earlier = [(s, cfg.dims[s]) for s in STAGES[:STAGES.index(stage)] if s in cfg.dims]
        # per-value standardisation of this stage's values and of the earlier stages' (set by the fit)
        self.register_buffer("norm_mean", torch.zeros(self.dim))
        self.register_buffer("norm_std", torch.ones(self.dim))
        self.register_buffer("in_mean", torch.zeros(self.e))
        self.register_buffer("in_std", torch.ones(self.e))
        self.fixed_step = stage == "importance"  # side information, coded with a step of 1
        self.family = "uniform" if stage in cfg.uniform else "laplace" if stage in cfg.laplace else "gaussian"
        # on the grid through the predicted mean; importance stays on integers (0 = skipped)
        self.shifted = cfg.shifted and not self.fixed_step
        self.vr = None
        if not self.fixed_step:
            vr_in = self.p + self.e + (1 if cfg.variable_rate else 0)
            self.vr = _mlp(vr_in, cfg.hidden, self.dim)
            nn.init.zeros_(self.vr[-1].weight)
            nn.init.zeros_(self.vr[-1].bias)
            self.step_bias = nn.Parameter(torch.zeros(self.dim))
        self.use_ctx = cfg.ar and stage not in NO_AR_STAGES
        radius = CONTEXT_RADIUS if cfg.acs else SRF_RADIUS
        self.ctx = PooledContext(self.dim, cfg.ctx_dim, radius, cfg.n_context) if self.use_ctx else None
        # chained: the head gives the first part's distribution, `cond` the rest's from the first as decoded
        parts = chain_parts(stage, self.dim) if cfg.chain else None
        self.first, self.rest = (parts[0], parts[1]) if parts else (slice(None), None)
        n_first = len(parts[0]) if parts else self.dim
        head_in = self.p + self.e + (cfg.ctx_dim if self.use_ctx else 0)
        self.fuse = _mlp(head_in, cfg.hidden, 2 * n_first)
        self.cond = _mlp(head_in + n_first, cfg.hidden, 2 * len(parts[1])) if parts else None
        # columns of [first | rest] in channel order
        self.order = np.argsort(parts[0] + parts[1]).tolist() if parts else None

    # ---- pieces ------------------------------------------------------------------------------------
    def _split_earlier(self, raw: torch.Tensor) -> dict[str, torch.Tensor]:
        out, at = {}, 0
        for s, d in self.earlier:
            out[s] = raw[:, at:at + d]
            at += d
        return out

    def log_steps(self, prior: torch.Tensor, earlier_raw: torch.Tensor, lam: float) -> torch.Tensor:
        n = prior.shape[0]
        if self.fixed_step:
            return prior.new_zeros((n, self.dim))
        logw = step_log_weights(self.stage, self._split_earlier(earlier_raw), n, self.dim, self.log_rho,
                                self.cfg.scale_ranks, self.cfg.swing_twist).to(prior.dtype)
        x = [prior, (earlier_raw - self.in_mean) / self.in_std]
        if self.cfg.variable_rate:
            x.append(torch.full((n, 1), lambda_feature(lam), dtype=prior.dtype))
        fixed = _LOG_STEP_FIXED + 0.5 * math.log(lam * LAMBDA_UNIT) - 0.5 * logw
        log_q = (fixed + self.step_bias + self.vr(torch.cat(x, dim=1))).clamp(*LOG_STEP_RANGE)
        if self.stage == "scale" and self.cfg.scale_ranks:
            caps = torch.tensor([math.log(c) for c in SCALE_RANK_MAX_STEP], dtype=log_q.dtype)
            return torch.minimum(log_q, caps)
        if self.stage == "rotation" and self.cfg.swing_twist:
            caps = torch.tensor([math.log(c) for c in SWING_TWIST_MAX_STEP], dtype=log_q.dtype)
            return torch.minimum(log_q, caps)
        return log_q.clamp_max(math.log(MAX_STEP[self.stage])) if self.stage in MAX_STEP else log_q

    def _head(self, net: nn.Module, x: list[torch.Tensor], cols) -> tuple[torch.Tensor, torch.Tensor]:
        raw = net(torch.cat(x, dim=1))
        k = raw.shape[1] // 2
        nm, ns = self.norm_mean[cols], self.norm_std[cols]
        return nm + ns * raw[:, :k], ns * (F.softplus(raw[:, k:]) + 1e-6)

    def _inputs(self, prior: torch.Tensor, earlier_raw: torch.Tensor, ctx_feat: torch.Tensor | None) -> list:
        x = [prior, (earlier_raw - self.in_mean) / self.in_std]
        return x + [ctx_feat] if ctx_feat is not None else x

    def params(self, prior: torch.Tensor, earlier_raw: torch.Tensor, ctx_feat: torch.Tensor | None):
        """(mean, scale) in the stage's own units: of every channel, or of the first part's when chained."""
        return self._head(self.fuse, self._inputs(prior, earlier_raw, ctx_feat), self.first)

    def params_rest(self, prior: torch.Tensor, earlier_raw: torch.Tensor, ctx_feat: torch.Tensor | None,
                    first_raw: torch.Tensor):
        """Chained: (mean, scale) of the rest's channels given the first part's decoded values."""
        z = (first_raw - self.norm_mean[self.first]) / self.norm_std[self.first]
        return self._head(self.cond, self._inputs(prior, earlier_raw, ctx_feat) + [z], self.rest)

    def assemble(self, first, rest):
        """Channel order from the two parts' columns (torch or numpy)."""
        if isinstance(first, torch.Tensor):
            return torch.cat([first, rest], dim=1)[:, self.order]
        return np.concatenate([first, rest], axis=1)[:, self.order]

    def context(self, values_raw: torch.Tensor, offsets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Context feature from neighbours' decoded values (M, n, dim), raw units."""
        return self.ctx((values_raw - self.norm_mean) / self.norm_std, offsets, mask)

    # ---- row-independent functions for the exact path (coding/exact_params.run_deterministic) -----
    def step_rows(self, lam: float):
        def fn(x: torch.Tensor) -> torch.Tensor:
            return torch.exp(self.log_steps(x[:, :self.p], x[:, self.p:], lam))
        return fn

    def _split_rows(self, x: torch.Tensor):
        prior, earlier = x[:, :self.p], x[:, self.p:self.p + self.e]
        ctx = None
        if self.use_ctx:
            packed = x[:, self.p + self.e:]
            width = self.dim + 4
            k = packed.shape[1] // width
            a = k * self.dim
            vals = packed[:, :a].reshape(-1, k, self.dim)
            ctx = self.context(vals, packed[:, a:a + 3 * k].reshape(-1, k, 3), packed[:, a + 3 * k:])
        return prior, earlier, ctx

    def head_rows(self, x: torch.Tensor) -> torch.Tensor:
        """[mean | scale] of every channel (of the first part's, chained) from head rows."""
        mean, scale = self.params(*self._split_rows(x))
        return torch.cat([mean, scale], dim=1)

    def rest_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Chained: [mean | scale] of the rest from head rows with the first part's decoded values
        appended."""
        k = len(self.first)
        mean, scale = self.params_rest(*self._split_rows(x[:, :-k]), x[:, -k:])
        return torch.cat([mean, scale], dim=1)


class DirectEntropyModel(nn.Module):
    def __init__(self, cfg: DirectConfig, log_rho: float, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        torch.manual_seed(seed)
        self.grid = BinaryHashGrid(HashGridConfig.from_dict(cfg.grid), seed=seed)
        hyper = self.grid.config.out_dim + (cfg.sa_dim if cfg.scene_agnostic else 0)
        self.prior = _mlp(hyper, cfg.prior_dim, cfg.prior_dim)
        self.stages = nn.ModuleDict({s: DirectStage(cfg, s, log_rho) for s in STAGES if s in cfg.dims})

    def hyper(self, grid_feat: torch.Tensor, sa_feat: torch.Tensor | None) -> torch.Tensor:
        if self.cfg.scene_agnostic:
            return torch.cat([grid_feat, sa_feat.to(grid_feat.dtype)], dim=1)
        return grid_feat

    def networks(self) -> dict[str, nn.Module]:
        """What a file stores (quantized, codec/weights.py); the grid's tables go apart as bits."""
        return {"prior": self.prior, "stages": self.stages}


def set_norms(model: DirectEntropyModel, true: dict[str, np.ndarray]) -> None:
    """Standardisation buffers from the scene's values (stored in the file with the networks)."""
    with torch.no_grad():
        for s, st in model.stages.items():
            v = torch.as_tensor(true[s])
            st.norm_mean.copy_(v.mean(0) if v.shape[0] else torch.zeros(st.dim))
            st.norm_std.copy_((v.std(0) if v.shape[0] > 1 else torch.ones(st.dim)).clamp_min(1e-3))
            if st.e:
                e = torch.cat([torch.as_tensor(true[t]) for t, _ in st.earlier], dim=1)
                st.in_mean.copy_(e.mean(0) if e.shape[0] else torch.zeros(st.e))
                st.in_std.copy_((e.std(0) if e.shape[0] > 1 else torch.ones(st.e)).clamp_min(1e-3))
