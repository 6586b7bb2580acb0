"""The HEMGS hybrid entropy model (paper §3.3), built from switchable parts.

Per anchor, after the locations are decoded:
- hyperprior = scene-specific hash-grid feature (hashgrid.py) + scene-agnostic point-network
  feature (pointnet.py, frozen, shipped weights) -> prior MLP;
- progressive coding (paper §3.2): stage A codes the anchor features conditioned on the
  locations; stage B codes scaling + offsets conditioned on the locations and the decoded
  features (its prior MLP also sees the anchor's own decoded feature);
- autoregressive context (ar.py) over already-decoded anchors of the same stage, chosen by
  adaptive context selection (context.py) in interleaved groups, so a group decodes as a batch;
- variable-rate predictor: λ broadcast to the prior's size and concatenated to it, a 2-layer ReLU
  MLP -> a positive quantization step per element, base · (1 + tanh(·)) as HAC bounds its steps;
- the fused prior and context give each element's Gaussian mean and scale.

Switches (HemgsConfig): scene_agnostic, ar, acs, variable_rate. All off = HAC-like.

Training evaluates all anchors' quantized values every step (they feed the renderer and the
contexts) and the rate on a subset of anchors (an unbiased estimate of bits per parameter).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

from ..modes import ANCHOR_TRAINED_LAMBDAS as LAMBDAS  # the paper's K = 4 training rates
from .ar import ContextNet
from .context import RADIUS as CONTEXT_RADIUS
from .context import SRF_RADIUS
from .hac import BASE_STEP, AnchorAttrs
from .hashgrid import BinaryHashGrid, HashGridConfig
from .rate import bernoulli_bits, gaussian_bits, quantize

STAGES = ("a", "b")  # a: features; b: scaling + offsets
LAMBDA_REF = 2e-3


def lambda_feature(lam: float) -> float:
    """The network's view of λ: log-scaled around the trained range's middle."""
    return math.log(float(lam) / LAMBDA_REF)


# The networks' widths (prior, ctx, vr hidden, ctx hidden) for scenes of at most this many anchors:
# their weights are part of the file, and on playbot_lod3 (7,749 anchors) these widths gave -3.9%
# BD-rate against the defaults (docs/hemgs-results.md, "Smaller entropy networks").
SMALL_SCENE_ANCHORS = 12_000
SMALL_WIDTHS = {"prior_dim": 24, "ctx_dim": 16, "vr_hidden": 24, "ctx_hidden": 24}


def widths_for_anchor_count(n: int) -> dict:
    """The entropy networks' widths for a model of `n` anchors (HemgsConfig fields; the header
    stores them, so decoders need no rule)."""
    return dict(SMALL_WIDTHS) if n <= SMALL_SCENE_ANCHORS else {}


@dataclass
class HemgsConfig:
    feat_dim: int = 50
    k: int = 10
    prior_dim: int = 48
    ctx_dim: int = 24
    vr_hidden: int = 32
    ctx_hidden: int = 32  # the context network's width
    sa_dim: int = 0  # the scene-agnostic feature's width (0 when switched off)
    scene_agnostic: bool = True
    ar: bool = True
    acs: bool = True
    variable_rate: bool = True
    groups: str = "parity8"
    n_context: int = 20
    lambdas: list = field(default_factory=lambda: list(LAMBDAS))
    # variable rate: the steps' base scales as (λ / LAMBDA_REF)^rate_exponent, so that λ moves the
    # rate even where the learned steps sit at their bound (0: a fixed base)
    rate_exponent: float = 0.0
    grid: dict = field(default_factory=lambda: HashGridConfig().to_dict())

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "HemgsConfig":
        return HemgsConfig(**d)

    @staticmethod
    def from_untrusted(d) -> "HemgsConfig":
        """From a file's JSON: every field of the right type and in a range that keeps the
        networks small (ValueError otherwise), so nothing huge is allocated for a lying file."""
        if not isinstance(d, dict):
            raise ValueError("the HEMGS config must be a JSON object")
        known = {f.name for f in fields(HemgsConfig)}
        if set(d) != known:  # older files' missing fields: codec/legacy.py
            raise ValueError(f"HEMGS config fields unknown {sorted(set(d) - known)}, missing {sorted(known - set(d))}")
        cfg = HemgsConfig(**d)
        for name, hi in (("feat_dim", 1024), ("k", 64), ("prior_dim", 1024), ("ctx_dim", 1024),
                         ("vr_hidden", 1024), ("ctx_hidden", 1024), ("sa_dim", 1024), ("n_context", 1024)):
            v = getattr(cfg, name)
            if isinstance(v, bool) or not isinstance(v, int) or not (0 if name == "sa_dim" else 1) <= v <= hi:
                raise ValueError(f"HEMGS config {name} must be an integer in [1, {hi}], got {v!r}"[:120])
        for name in ("scene_agnostic", "ar", "acs", "variable_rate"):
            if not isinstance(getattr(cfg, name), bool):
                raise ValueError(f"HEMGS config {name} must be true or false")
        if not isinstance(cfg.lambdas, list) or not cfg.lambdas or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in cfg.lambdas):
            raise ValueError("HEMGS config lambdas must be a list of positive numbers")
        r = cfg.rate_exponent
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not (math.isfinite(r) and 0 <= r <= 4):
            raise ValueError("HEMGS config rate_exponent must be a number in [0, 4]")
        if not isinstance(cfg.groups, str):
            raise ValueError("HEMGS config groups must be a scheme name")
        HashGridConfig.check_untrusted(cfg.grid, "HEMGS grid", max_levels=32, max_features=8, max_log2=22)
        return cfg

    def attr_dim(self, stage: str) -> int:
        return self.feat_dim if stage == "a" else 6 + 3 * self.k

    def base_steps(self, stage: str) -> torch.Tensor:
        if stage == "a":
            return torch.full((self.feat_dim,), BASE_STEP["features"])
        return torch.cat([torch.full((6,), BASE_STEP["scaling"]), torch.full((3 * self.k,), BASE_STEP["offsets"])])


def _mlp(i: int, h: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, h), nn.ReLU(), nn.Linear(h, o))


class StageHead(nn.Module):
    """Distribution parameters of one stage from the prior and the context of each anchor."""

    def __init__(self, cfg: HemgsConfig, stage: str):
        super().__init__()
        a, p = cfg.attr_dim(stage), cfg.prior_dim
        self.attr_dim = a
        self.prior_dim = p
        radius = CONTEXT_RADIUS if cfg.acs else SRF_RADIUS
        self.ctx = (ContextNet(a, out_dim=cfg.ctx_dim, hidden=cfg.ctx_hidden, radius=radius, n_max=cfg.n_context)
                    if cfg.ar else None)
        self.fuse = _mlp(p + (cfg.ctx_dim if cfg.ar else 0), p, 2 * a)

    def forward(self, prior: torch.Tensor, ctx_feat: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        x = prior if ctx_feat is None else torch.cat([prior, ctx_feat], dim=1)
        raw = self.fuse(x)
        return raw[:, :self.attr_dim], F.softplus(raw[:, self.attr_dim:]) + 1e-6

    def forward_flat(self, x: torch.Tensor) -> torch.Tensor:
        """Rows [prior | packed context (ar.pack_context)] -> [mean | scale]: row-independent, for
        the codec's exact path."""
        prior = x[:, :self.prior_dim]
        ctx = self.ctx.forward_flat(x[:, self.prior_dim:]) if self.ctx is not None else None
        mean, scale = self(prior, ctx)
        return torch.cat([mean, scale], dim=1)


class HemgsEntropyModel(nn.Module):
    CODEC = "hemgs"  # the codec that writes files of this model (codec/registry.py)

    def __init__(self, cfg: HemgsConfig, bbox_min, bbox_max, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        torch.manual_seed(seed)
        self.grid = BinaryHashGrid(HashGridConfig.from_dict(cfg.grid), seed=seed)
        self.register_buffer("bbox_min", torch.as_tensor(bbox_min, dtype=torch.float32).reshape(3))
        self.register_buffer("bbox_max", torch.as_tensor(bbox_max, dtype=torch.float32).reshape(3))
        hyper = self.grid.config.out_dim + (cfg.sa_dim if cfg.scene_agnostic else 0)
        p = cfg.prior_dim
        self.prior = nn.ModuleDict({"a": _mlp(hyper, p, p), "b": _mlp(hyper + cfg.feat_dim, p, p)})
        vr_in = 2 * p if cfg.variable_rate else p
        self.vr = nn.ModuleDict({s: _mlp(vr_in, cfg.vr_hidden, cfg.attr_dim(s)) for s in STAGES})
        for s in STAGES:  # steps start at their base
            nn.init.zeros_(self.vr[s][-1].bias)
        self.head = nn.ModuleDict({s: StageHead(cfg, s) for s in STAGES})
        for s in STAGES:
            self.register_buffer(f"base_{s}", cfg.base_steps(s))

    # ---- pieces the codec evaluates through the exact path ------------------------------------
    def normalise(self, xyz: torch.Tensor) -> torch.Tensor:
        return (xyz - self.bbox_min) / (self.bbox_max - self.bbox_min).clamp_min(1e-9)

    def hyper(self, grid_feat: torch.Tensor, sa_feat: torch.Tensor | None) -> torch.Tensor:
        if self.cfg.scene_agnostic:
            return torch.cat([grid_feat, sa_feat.to(grid_feat.dtype)], dim=1)
        return grid_feat

    def rate_scale(self, lam: float) -> float:
        """The factor λ puts on the steps' base (1 for a fixed-rate model or rate_exponent 0)."""
        r = float(self.cfg.rate_exponent)
        return (float(lam) / LAMBDA_REF) ** r if self.cfg.variable_rate and r else 1.0

    def steps(self, stage: str, prior: torch.Tensor, lam: float) -> torch.Tensor:
        x = prior
        if self.cfg.variable_rate:
            x = torch.cat([prior, torch.full_like(prior, lambda_feature(lam))], dim=1)
        base = getattr(self, f"base_{stage}").to(prior.dtype) * self.rate_scale(lam)
        # Bounded as HAC's steps are, (0, 2·base): during training only the rate and the noise
        # quantization reach the steps, and an unbounded step drifts upwards with the rate.
        return base * (1.0 + torch.tanh(self.vr[stage](x))) + 1e-4 * base

    def stage_prior(self, stage: str, hyper: torch.Tensor, features_hat: torch.Tensor | None) -> torch.Tensor:
        x = hyper if stage == "a" else torch.cat([hyper, features_hat.to(hyper.dtype)], dim=1)
        return self.prior[stage](x)

    # ---- training ------------------------------------------------------------------------------
    def forward(self, grid_feat: torch.Tensor, sa_feat: torch.Tensor | None, attrs: AnchorAttrs, lam: float,
                ctx_index: torch.Tensor | None, ctx_offsets: torch.Tensor | None, rate_rows: torch.Tensor,
                render_mode: str = "ste") -> tuple[AnchorAttrs, dict[str, torch.Tensor]]:
        """All anchors' quantized attributes and the bits of `rate_rows`.

        Rendered values use `render_mode`: "noise" (one step of uniform noise, so the distortion
        reaches the steps — with "ste" alone only the rate would, and would grow them without
        bound) or "ste" (the rounded values the decoder will see, straight-through to the values).
        The AR contexts always see the rounded values, as the decoder does.

        `ctx_index` (N, n) holds each anchor's context anchors (-1 empty) and `ctx_offsets` their
        integer offsets, from context.select_context over all anchors."""
        n, k = attrs.features.shape[0], self.cfg.k
        hyper = self.hyper(grid_feat, sa_feat)
        bits = {}
        # stage A: features
        prior_a = self.stage_prior("a", hyper, None)
        q_a = self.steps("a", prior_a, lam)
        f_hat = quantize(attrs.features, q_a, "ste")
        f_render = f_hat if render_mode == "ste" else quantize(attrs.features, q_a, render_mode)
        bits["features"] = self._stage_bits("a", prior_a, f_hat, attrs.features, q_a, ctx_index, ctx_offsets,
                                            rate_rows, None)
        # stage B: scaling + offsets, conditioned on the decoded features
        prior_b = self.stage_prior("b", hyper, f_hat)
        q_b = self.steps("b", prior_b, lam)
        mask3 = attrs.mask.repeat_interleave(3, dim=1)
        vals_b = torch.cat([attrs.scaling, attrs.offsets.reshape(n, 3 * k) * mask3], dim=1)
        b_hat = quantize(vals_b, q_b, "ste")
        b_render = b_hat if render_mode == "ste" else quantize(vals_b, q_b, render_mode)
        coded = torch.cat([torch.ones(n, 6, dtype=mask3.dtype, device=mask3.device), mask3], dim=1)
        bits_b = self._stage_bits("b", prior_b, b_hat, vals_b, q_b, ctx_index, ctx_offsets, rate_rows, coded)
        bits["scaling"], bits["offsets"] = bits_b[:, :6].sum(), bits_b[:, 6:].sum()
        bits["features"] = bits["features"].sum()
        p1 = attrs.mask.float().mean().detach().clamp(1e-3, 1 - 1e-3)
        bits["mask"] = bernoulli_bits(p1.expand(len(rate_rows), k), attrs.mask[rate_rows].float()).sum()
        hat = AnchorAttrs(f_render, b_render[:, :6], b_render[:, 6:].reshape(n, k, 3), attrs.mask)
        return hat, bits

    def stage_params(self, stage: str, prior: torch.Tensor, decoded: torch.Tensor, ctx_index: torch.Tensor | None,
                     ctx_offsets: torch.Tensor | None, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, scale) of one stage for `rows`: its head on their prior (len(rows), P) and, with
        the AR part, on the decoded values of their context anchors (`decoded` (N, A) of all
        anchors, the values the decoder has)."""
        ctx = None
        if self.cfg.ar:
            idx = ctx_index[rows]
            ok = idx >= 0
            neigh = decoded[idx.clamp_min(0)] * ok[..., None]
            ctx = self.head[stage].ctx(neigh, ctx_offsets[rows], ok)
        return self.head[stage](prior, ctx)

    def _stage_bits(self, stage, prior, hat, values, q, ctx_index, ctx_offsets, rows, coded):
        mean, scale = self.stage_params(stage, prior[rows], hat, ctx_index, ctx_offsets, rows)
        b = gaussian_bits(quantize(values[rows], q[rows], "noise"), mean, scale, q[rows])
        return b if coded is None else b * coded[rows]

    def params_per_anchor(self) -> int:
        return self.cfg.feat_dim + 6 + 3 * self.cfg.k
