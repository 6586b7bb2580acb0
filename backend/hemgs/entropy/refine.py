"""Entropy refinement: the rate of frozen symbols, and training the entropy model on it alone.

After the render fine-tune (hemgs.fit) the anchor attributes and their quantization are frozen:
each coded element is a fixed integer symbol times a fixed step, exactly as the encoder will code
it. What is left to learn is the probability the entropy model gives each symbol's bin; the
fine-tune trained it on noise-quantized values that moved every step, together with the renders.

The steps come from networks that also feed the distributions (HEMGS: grid -> prior -> the
variable-rate predictor `vr` and the stage heads; HAC: one MLP whose last layer outputs mean,
scale and step), and the encoder recomputes the steps from those networks. So only what does not
feed a step is trained, and the coded values stay exactly those of the unrefined model:
- HEMGS: the stage heads (context networks and fusion MLPs); grid, priors and `vr` stay as they are;
- HAC: the rows of the MLP's last layer that output means and scales; the hidden layer, the
  grid and the step rows stay as they are.
The trained networks are seen as the file stores them (quantized rows, float16 vectors, with a
straight-through gradient): the file's networks are coarser than float32, and a refinement in
float32 lost about half its gain to that rounding (measured on playbot_lod3).

`fixed_symbols_hac` / `fixed_symbols_hemgs` compute the coded values as the encoder does (networks
rounded as the file stores them, float64, steps snapped to base·2^(j/16)); `refine_entropy` trains on their
exact rate (−log2 of each bin's modelled probability; no noise, nothing moves) until it stops
improving. benchmarks/bench_entropy.py reuses the pieces to train other entropy models on the
same symbols.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..codec.weights import ENTROPY_BITS, _row_steps, _top, round_networks
from ..coding.steps import snap_steps, step_values
from .hac import BASE_STEP, GROUPS, HacEntropyModel
from .hemgs import HemgsEntropyModel
from .rate import gaussian_bits

PARTS = ("features", "scaling", "offsets")


@dataclass
class FixedPart:
    """One coded attribute of every anchor: decoded values (symbol · step), steps, coded elements.
    (N, A) float64 each; values 0 and steps 1 where an element is not coded (a pruned offset)."""

    values: torch.Tensor
    steps: torch.Tensor
    coded: torch.Tensor

    def to32(self, device=None) -> "FixedPart":
        return FixedPart(self.values.to(device, torch.float32), self.steps.to(device, torch.float32),
                         self.coded.to(device))


def anchor_positions64(model) -> torch.Tensor:
    """Anchor centres in float64, as the codec computes them from integers and the header."""
    return model.origin.cpu().double() + (model.coords.cpu().double() + 0.5) * float(model.config.voxel_size)


def anchor_values(model) -> dict[str, torch.Tensor]:
    """(N, A) float64 values of each coded part and the (N, 3k) coded mask of the offsets."""
    a = {k: v.cpu() for k, v in model.anchor_attributes().items()}
    n = a["features"].shape[0]
    mask3 = a["mask"].repeat_interleave(3, dim=1)
    return {"features": a["features"].double(), "scaling": a["scaling"].double(),
            "offsets": a["offsets"].reshape(n, -1).double() * mask3, "mask3": mask3}


def snap(values: torch.Tensor, q: torch.Tensor, base: torch.Tensor, coded: torch.Tensor) -> FixedPart:
    """The encoder's quantization of `values` (N, A) with raw steps `q`: the steps snapped to
    base·2^(j/16) (coding/steps.py), the values rounded to multiples of them."""
    c = coded.numpy()
    qn = q.detach().double().numpy()
    b = np.broadcast_to(base.double().numpy(), qn.shape)
    steps = np.ones(qn.shape)
    if c.any():
        idx, _ = snap_steps(qn[c], b[c])
        steps[c] = step_values(idx, b[c])
    steps_t = torch.from_numpy(steps)
    vals = torch.where(coded, torch.round(values / steps_t) * steps_t, torch.zeros((), dtype=torch.float64))
    return FixedPart(vals, steps_t, coded.clone())


def stored_bits() -> int:
    """The bit depth of the entropy networks in an anchor-mode file: the first depth the encoder
    tries (codec/weights.py ENTROPY_BITS; its search goes on to deeper ones only while the file
    shrinks, and a refinement trained at this depth keeps it there)."""
    return ENTROPY_BITS


def round_as_stored(modules: dict[str, torch.nn.Module]) -> None:
    """Round entropy networks in place to what an anchor-mode file holds, as its encoder does
    before it computes any step."""
    round_networks([modules], (stored_bits(),))


class _AsStored(torch.nn.Module):
    """A parametrization: the tensor as the file stores it (a matrix's rows as integers times a
    float16 step, else float16; codec/weights.py quantize_weights), with a straight-through
    gradient, so the refinement trains the heads the decoder will have."""

    def __init__(self, bits: int):
        super().__init__()
        self.bits = bits

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if w.ndim != 2:
                q = w.to(torch.float16).to(w.dtype)
            else:  # codec/weights.py quantize_weights, on one tensor
                step, top = _row_steps(w, self.bits), _top(self.bits)
                q = torch.round(w / step).clamp(-top, top) * step
        return w + (q - w).detach()


def _as_stored(modules: list[torch.nn.Module], on: bool) -> None:
    """Switch the `_AsStored` view of every floating parameter of `modules` on, or off (leaving
    the trained values as they are, unrounded: the encoder rounds them)."""
    from torch.nn.utils import parametrize

    bits = stored_bits()
    for module in modules:
        for sub in list(module.modules()):
            for name, t in list(sub.named_parameters(recurse=False)):
                if on and t.is_floating_point():
                    parametrize.register_parametrization(sub, name, _AsStored(bits))
            if not on and parametrize.is_parametrized(sub):
                for name in list(sub.parametrizations.keys()):
                    parametrize.remove_parametrizations(sub, name, leave_parametrized=False)


def _rounded64(entropy, names) -> torch.nn.Module:
    e = copy.deepcopy(entropy).cpu()
    round_as_stored({name: getattr(e, name) for name in names})
    return e.double().eval()


@torch.no_grad()
def fixed_symbols_hac(model, entropy: HacEntropyModel) -> tuple[dict[str, FixedPart], torch.Tensor]:
    """What a HAC-mode file of this model codes, and the frozen hidden layer of the entropy MLP
    at every anchor (N, hidden), float64. Steps: one per anchor and part, as codec/anchor.py."""
    e = _rounded64(entropy, ["mlp"])
    ctx = e.grid(e.normalise(anchor_positions64(model)))
    hidden = e.mlp[1](e.mlp[0](ctx))
    params = e.split(e.mlp[2](hidden))
    vals = anchor_values(model)
    fixed = {}
    for part in PARTS:
        v = vals[part]
        coded = vals["mask3"] if part == "offsets" else torch.ones_like(v, dtype=torch.bool)
        q = params[part].step.expand_as(v)
        fixed[part] = snap(v, q, torch.tensor(BASE_STEP[part], dtype=torch.float64), coded)
    return fixed, hidden


@torch.no_grad()
def fixed_symbols_hemgs(model, entropy: HemgsEntropyModel, lam: float, sa_feat: torch.Tensor | None,
                        hyper: torch.Tensor | None = None) -> tuple[dict[str, FixedPart], dict[str, torch.Tensor]]:
    """What a HEMGS file of this model codes at `lam`, and the frozen stage priors (N, P) float64
    that the stage heads read. `sa_feat`: the scene-agnostic features (when that part is on);
    `hyper`: the hyperprior feature, when already computed (it does not depend on λ)."""
    e = _rounded64(entropy, ["prior", "vr", "head"])
    if hyper is None:
        hyper = e.hyper(e.grid(e.normalise(anchor_positions64(model))), sa_feat)
    vals = anchor_values(model)
    n = vals["features"].shape[0]
    prior_a = e.stage_prior("a", hyper, None)
    fa = snap(vals["features"], e.steps("a", prior_a, lam), e.base_a, torch.ones_like(vals["features"], dtype=torch.bool))
    prior_b = e.stage_prior("b", hyper, fa.values)
    coded_b = torch.cat([torch.ones(n, 6, dtype=torch.bool), vals["mask3"]], dim=1)
    fb = snap(torch.cat([vals["scaling"], vals["offsets"]], dim=1), e.steps("b", prior_b, lam), e.base_b, coded_b)
    fixed = {"features": fa, "scaling": FixedPart(fb.values[:, :6], fb.steps[:, :6], fb.coded[:, :6]),
             "offsets": FixedPart(fb.values[:, 6:], fb.steps[:, 6:], fb.coded[:, 6:])}
    return fixed, {"a": prior_a, "b": prior_b, "hyper": hyper}


def part_bits(fp: FixedPart, mean: torch.Tensor, scale: torch.Tensor, rows=None) -> torch.Tensor:
    """(rows, A) bits of the fixed symbols of `rows` under N(mean, scale); 0 where not coded."""
    if rows is not None:
        fp = FixedPart(fp.values[rows], fp.steps[rows], fp.coded[rows])
    b = gaussian_bits(fp.values.to(mean.dtype), mean, scale, fp.steps.to(mean.dtype))
    return b * fp.coded.to(b.dtype)


def stage_b(fixed: dict[str, FixedPart]) -> FixedPart:
    """Scaling and offsets as the one vector HEMGS's stage B codes."""
    s, o = fixed["scaling"], fixed["offsets"]
    return FixedPart(torch.cat([s.values, o.values], 1), torch.cat([s.steps, o.steps], 1), torch.cat([s.coded, o.coded], 1))


def hemgs_bits(entropy: HemgsEntropyModel, priors: dict, fa: FixedPart, fb: FixedPart, ctx, rows) -> dict:
    """Bits per part of `rows` (sums) under the HEMGS heads; `fa`, `fb` float32 FixedParts of the
    two stages, `priors` {"a", "b"} float32, `ctx` (index, offsets) or (None, None)."""
    ma, sa = entropy.stage_params("a", priors["a"][rows], fa.values, *ctx, rows)
    mb, sb = entropy.stage_params("b", priors["b"][rows], fb.values, *ctx, rows)
    bb = part_bits(fb, mb, sb, rows)
    return {"features": part_bits(fa, ma, sa, rows).sum(), "scaling": bb[:, :6].sum(), "offsets": bb[:, 6:].sum()}


def hac_bits(entropy: HacEntropyModel, raw: torch.Tensor, fixed: dict[str, FixedPart], rows) -> dict:
    """Bits per part of `rows` (sums) from the HAC MLP's raw output for those rows."""
    params = entropy.split(raw)
    return {p: part_bits(fixed[p], params[p].mean, params[p].scale, rows).sum() for p in PARTS}


@torch.no_grad()
def channel_stats(values: dict[str, torch.Tensor], coded: dict[str, torch.Tensor]) -> dict:
    """Per part, each channel's mean and softplus⁻¹ of its spread over the `coded` elements of
    `values` (N, A): the raw outputs that code it under its own Gaussian."""
    stats = {}
    for k in PARTS:
        c = coded[k].to(values[k].dtype)
        n = c.sum(0).clamp_min(1)
        m = (values[k] * c).sum(0) / n
        sd = (((values[k] - m) ** 2 * c).sum(0) / n).sqrt().clamp_min(1e-4)
        stats[k] = (m, torch.log(torch.expm1(sd)))  # the heads' scale is softplus(raw)
    return stats


@torch.no_grad()
def init_output_biases(entropy, values: dict[str, torch.Tensor], coded: dict[str, torch.Tensor]) -> None:
    """Start the entropy model's means and scales at each channel's mean and spread of `values`
    (channel_stats): the output layer's biases, so that before any training every element is coded
    under its channel's own Gaussian, not N(0, 0.69) (scalings sit near -3 in log space)."""
    stats = channel_stats(values, coded)
    if isinstance(entropy, HemgsEntropyModel):
        for stage, parts in (("a", ["features"]), ("b", ["scaling", "offsets"])):
            bias = entropy.head[stage].fuse[2].bias
            m = torch.cat([stats[k][0] for k in parts]).to(bias)
            bias[:m.numel()], bias[m.numel():] = m, torch.cat([stats[k][1] for k in parts]).to(bias)
        return
    bias, at = entropy.mlp[2].bias, 0  # HAC: per part [mean | scale], then the steps
    for k in PARTS:
        m, raw = stats[k]
        bias[at:at + m.numel()], bias[at + m.numel():at + 2 * m.numel()] = m.to(bias), raw.to(bias)
        at += 2 * m.numel()


def init_from_anchors(model, entropy) -> None:
    """`init_output_biases` from the anchor model's current attributes (offsets where their slot
    is on): what hemgs.fit does when the rate joins the fine-tune."""
    v = anchor_values(model)
    ones = torch.ones_like(v["features"], dtype=torch.bool)
    init_output_biases(entropy, {k: v[k] for k in PARTS},
                       {"features": ones, "scaling": torch.ones_like(v["scaling"], dtype=torch.bool), "offsets": v["mask3"]})


# ---- the refinement --------------------------------------------------------------------------------
EVAL_EVERY = 25  # steps between two measurements of the whole rate
REL_TOL = 2e-4  # a measurement that gains less than this on the best halves the learning rate ...
PATIENCE = 3  # ... and this many in a row end the refinement
BATCH = 2048  # anchors per step


class Plateau:
    """The stopping rule of a rate-only training: a measurement that gains less than REL_TOL on
    the best so far halves the learning rate, PATIENCE of them in a row stop it; the state of the
    best measurement is kept (`state()` takes a copy)."""

    def __init__(self, opt: torch.optim.Optimizer, first: float, state):
        self.opt, self.best, self.state, self.stale = opt, first, state, 0
        self.best_state = state()

    def update(self, now: float) -> bool:
        """Take a measurement; True when the training should stop."""
        if now < self.best * (1.0 - REL_TOL):
            self.stale = 0
        else:
            self.stale += 1
            for g in self.opt.param_groups:
                g["lr"] *= 0.5
        if now < self.best:
            self.best, self.best_state = now, self.state()
        return self.stale >= PATIENCE


class _Problem:
    """The frozen inputs and the trained parameters of one refinement."""

    def __init__(self, model, entropy, lambdas, sa_feat):
        self.entropy = entropy
        self.hemgs = isinstance(entropy, HemgsEntropyModel)
        dev = entropy.bbox_min.device  # the frozen symbols are computed on the CPU, as the codec does
        self.n = model.num_anchors
        if self.hemgs:
            self.cases = []
            hyper = None
            for lam in lambdas:
                fixed, priors = fixed_symbols_hemgs(model, entropy, lam, sa_feat, hyper)
                hyper = priors["hyper"]
                self.cases.append((fixed["features"].to32(dev), stage_b(fixed).to32(dev),
                                   {s: priors[s].to(dev, torch.float32) for s in ("a", "b")}))
            self.ctx = (None, None)
            if entropy.cfg.ar:
                from .context import assign_groups, select_context

                coords = model.coords.cpu().numpy()
                sel = select_context(coords, assign_groups(coords, entropy.cfg.groups), acs=entropy.cfg.acs,
                                     n=entropy.cfg.n_context if entropy.cfg.acs else None)
                self.ctx = (torch.from_numpy(sel.index).to(dev), torch.from_numpy(sel.offsets).to(dev, torch.float32))
            self.trained = [entropy.head]
            _as_stored(self.trained, True)
            self.params = list(entropy.head.parameters())
            self.frozen = {}
        else:
            fixed, hidden = fixed_symbols_hac(model, entropy)
            self.fixed = {p: f.to32(dev) for p, f in fixed.items()}
            self.hidden = hidden.to(dev, torch.float32)
            last = entropy.mlp[2]
            self.trained = [last]
            _as_stored(self.trained, True)
            self.params = list(last.parameters())  # weight, bias (their unrounded originals)
            k = len(GROUPS)  # the step rows, which must not move
            self.frozen = {p: p.detach()[-k:].clone() for p in self.params}
        self.coded = sum(int(f.coded.sum()) for f in (self.cases[0][:2] if self.hemgs else self.fixed.values()))

    def bits(self, rows: torch.Tensor, case: int | None = None) -> dict:
        """Bits per part over `rows`: one λ's (`case`) or the mean over the λ values."""
        if not self.hemgs:
            return hac_bits(self.entropy, self.entropy.mlp[2](self.hidden[rows]), self.fixed, rows)
        cases = range(len(self.cases)) if case is None else [case]
        out: dict = {}
        for i in cases:
            fa, fb, priors = self.cases[i]
            for k, v in hemgs_bits(self.entropy, priors, fa, fb, self.ctx, rows).items():
                out[k] = out.get(k, 0.0) + v / len(cases)
        return out

    def restore_frozen(self) -> None:
        with torch.no_grad():
            for p, rows in self.frozen.items():
                p[-rows.shape[0]:] = rows


def refine_entropy(model, entropy, *, lambdas, steps: int, lr: float = 3e-3, sa_feat: torch.Tensor | None = None,
                   seed: int = 0, progress=None) -> dict:
    """Train the parts of `entropy` that do not feed a quantization step on the exact rate of the
    symbols `model` codes (the mean over `lambdas` for a variable-rate model), for at most `steps`
    steps, measuring the whole rate every EVAL_EVERY steps and stopping by `Plateau`'s rule; the
    best state is kept. Returns bits before/after (all anchors), steps done, budget, seconds (also
    set as `entropy.refinement`, which the model file records). `progress(stage, step, total,
    info)` hears stage "refine"."""
    t0 = time.perf_counter()
    report = progress or (lambda *a: None)
    was_training = entropy.training
    entropy.train()
    prob = _Problem(model, entropy, list(lambdas), None if sa_feat is None else sa_feat.cpu())
    all_rows = torch.arange(prob.n, device=entropy.bbox_min.device)

    def measure() -> float:
        with torch.no_grad():
            return float(sum(prob.bits(all_rows).values()))

    before = measure()
    opt = torch.optim.Adam(prob.params, lr=lr)
    plateau = Plateau(opt, before, lambda: [p.detach().clone() for p in prob.params])
    gen = torch.Generator().manual_seed(seed)
    done = 0
    for step in range(steps):
        rows = all_rows[torch.randperm(prob.n, generator=gen)[:BATCH]] if prob.n > BATCH else all_rows
        case = step % len(prob.cases) if prob.hemgs else None
        loss = sum(prob.bits(rows, case).values()) / (len(rows) * entropy.params_per_anchor())
        if step < EVAL_EVERY:  # a warm-up: Adam's first steps at full rate jolt a trained network
            for g in opt.param_groups:
                g["lr"] = lr * (step + 1) / EVAL_EVERY
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        prob.restore_frozen()
        done = step + 1
        if done % EVAL_EVERY == 0 or done == steps:
            now = measure()
            stop = plateau.update(now)
            report("refine", done, steps, {"bits_per_param": now / max(prob.coded, 1)})
            if stop:
                break
    best = plateau.best
    if 0 < done < steps:  # stopped early: the stage is complete at `done` steps (progress bars reach their end)
        report("refine", done, done, {"bits_per_param": best / max(prob.coded, 1)})
    with torch.no_grad():
        for p, b in zip(prob.params, plateau.best_state):
            p.copy_(b)
    _as_stored(prob.trained, False)
    entropy.train(was_training)
    info = {"steps": done, "budget": int(steps), "bits_before": before, "bits_after": best,
            "gain": 1.0 - best / before if before > 0 else 0.0, "seconds": time.perf_counter() - t0}
    entropy.refinement = info
    return info
