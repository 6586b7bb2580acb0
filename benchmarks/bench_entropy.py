"""Equal-anchors entropy benchmark (#20): every entropy model codes the SAME symbols.

Per scene: ONE anchor model is trained (hemgs.fit.fit, HAC mode at --lam, the CLI's default budget
or --train-steps) and its quantized attributes frozen: the integer symbols and the steps its file
codes at that λ (hemgs.entropy.refine.fixed_symbols_hac, exactly the codec's values). On those
symbols, the distribution part of each entropy model is trained from scratch on the rate alone:
minibatches from 90% of the anchors, the other 10% held out; every --eval-every steps the held-out
rate is measured, a measurement gaining < 0.02% on the best halves the learning rate, 3 in a row
stop (or --max-steps). The best held-out state is kept. Models:

  hac      HAC's entropy model: hash grid -> one MLP -> mean and scale of every element
  hemgs    full HEMGS: grid + scene-agnostic feature -> stage priors -> heads fused with the AR
           context (ACS); stage B (scaling, offsets) conditioned on the decoded features
  no_sa, no_ar, no_acs   HEMGS without the scene-agnostic prior / the AR context / ACS (5^3 field)
  no_prog  HEMGS whose stage-B prior sees zeros in place of the decoded features (no progressive
           conditioning; the same networks, so nothing else changes)
  iid      no context at all: one Gaussian per channel (its mean and scale trained), the floor
           that tells how much structure the context models find
  trained  (no training here) the HAC entropy model as the fit left it, on the same symbols

The steps are HAC's (one per anchor and part), so HEMGS's variable-rate predictor is not used:
only the probability each model gives each symbol's bin differs. Bits are estimated (−log2 of the
bin's modelled probability, hemgs.entropy.rate) over all anchors, and checked against the
arithmetic coder: each part's symbols coded through codec/streams.py under the model's means and
scales (`real` columns). Networks are counted at float16 and as the file stores them.

Usage:
    OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1 HEMGS_THREADS=1 python benchmarks/bench_entropy.py
    ... --holdout 0         # train on all anchors, stop on their rate (what a file codes)
    ... --scenes playbot_lod3 playbot_lod2 biker --models iid hac hemgs --max-steps 2000
    ... --anchors hemgs     # a variable-rate HEMGS model's symbols instead of a HAC-mode one's
    ... --refine            # item 2: bytes and PSNR before/after the entropy refinement
    ... --report            # tables from the JSON only
Writes docs/benchmarks/entropy.json (results keyed by scene and model) and docs/benchmarks/entropy.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "backend"))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from hemgs.codec import streams  # noqa: E402
from hemgs.codec.anchor import encode as hac_encode  # noqa: E402
from hemgs.coding.bits import encode_bits  # noqa: E402
from hemgs.device import set_threads  # noqa: E402
from hemgs.entropy.context import assign_groups, select_context  # noqa: E402
from hemgs.codec.hemgs_codec import encode as hemgs_encode  # noqa: E402
from hemgs.entropy.hemgs import HemgsEntropyModel  # noqa: E402
from hemgs.entropy.refine import (PARTS, FixedPart, Plateau, channel_stats, fixed_symbols_hac,  # noqa: E402
                                  fixed_symbols_hemgs, init_output_biases, part_bits, stage_b)
from hemgs.fit import FitConfig, fit, new_entropy_model, scene_agnostic_prior  # noqa: E402
from hemgs.io import load_scene  # noqa: E402
from hemgs.model_store import load_model, save_model  # noqa: E402
from hemgs.scene import sanitize  # noqa: E402

OUT = REPO / "docs" / "benchmarks"
CACHE = REPO / "out" / "bench_entropy"
SCENES = {"playbot_lod3": REPO / "data" / "demo" / "playbot_lod3.ply",
          "playbot_lod2": REPO.parent / "shared" / "data" / "playbot_lod2.ply",
          "biker": REPO.parent / "shared" / "data" / "biker.spz"}
HEMGS_VARIANTS = {"hemgs": {}, "no_sa": {"scene_agnostic": False}, "no_ar": {"ar": False},
                  "no_acs": {"acs": False}, "no_prog": {}}
MODELS = ["iid", "hac", *HEMGS_VARIANTS]
# The paper's Table 5 (DeepBlending, MB): HAC and HEMGS per component.
PAPER = {"locations": (0.897, 0.736), "features": (1.366, 1.244), "scaling": (0.716, 0.648),
         "offsets": (0.974, 0.640), "others": (0.362, 0.402), "total": (4.318, 3.670)}
BATCH, LR = 2048, 5e-3


# ---- the anchor model and its symbols ---------------------------------------------------------------
def anchor_model(scene: str, lam: float, steps: int, codec: str = "hac", tag: str = ""):
    """The scene's model (HAC mode at λ, or a variable-rate HEMGS one), trained once (no entropy
    refinement) and kept in out/bench_entropy/ under a name `tag` tells apart."""
    path = CACHE / ((f"{scene}_hac_{lam:g}_{steps}" if codec == "hac" else f"{scene}_hemgs_{steps}") + f"{tag}.safetensors")
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        src = SCENES[scene]
        s, _ = sanitize(load_scene(src))
        t0 = time.perf_counter()
        fitted = fit(s, source_path=src, cfg=FitConfig(codec=codec, lam=lam, steps=steps, refine_steps=0))
        print(f"{scene}: trained the anchor model in {time.perf_counter() - t0:.0f} s", flush=True)
        save_model(path, fitted.model, fitted.entropy, lam=lam)
    model, entropy, _ = load_model(path)
    return model, entropy


def networks_bytes(modules: dict, bits: int | None = None) -> dict:
    """Weights of `modules`: count, float16 bytes, and bytes as the file stores them, quantized at
    `bits` (default: the first depth the encoder tries for entropy networks, codec/weights.py
    ENTROPY_BITS)."""
    import copy

    from hemgs.codec.weights import ENTROPY_BITS, pack_networks, round_networks

    bits = bits or ENTROPY_BITS

    count = sum(t.numel() for m in modules.values() for t in m.state_dict().values() if t.is_floating_point())
    mods = {k: copy.deepcopy(m) for k, m in modules.items()}
    round_networks([mods], (bits,))
    return {"weights": count, "float16": 2 * count, "stored": len(pack_networks([mods], (bits,)))}


# ---- the models under test ------------------------------------------------------------------------
class IidModel(torch.nn.Module):
    """One Gaussian per channel of each part, the same for every anchor."""

    def __init__(self, dims: dict[str, int]):
        super().__init__()
        self.mean = torch.nn.ParameterDict({k: torch.nn.Parameter(torch.zeros(d)) for k, d in dims.items()})
        self.raw = torch.nn.ParameterDict({k: torch.nn.Parameter(torch.zeros(d)) for k, d in dims.items()})

    def params(self, n: int) -> dict:
        return {k: (self.mean[k].expand(n, -1), torch.nn.functional.softplus(self.raw[k]).expand(n, -1) + 1e-6)
                for k in self.mean}


class Subject:
    """One entropy model's distribution part on the fixed symbols: params(rows) -> per part
    (mean, scale); `trainable` its parameters; `networks()` what a file would store."""

    def __init__(self, name: str, model, fixed32: dict[str, FixedPart], sa32, trained=None):
        self.name = name
        n = model.num_anchors
        self.iid = name == "iid"
        if self.iid:
            self.ent = IidModel({k: f.values.shape[1] for k, f in fixed32.items()})
        elif name == "trained":
            self.ent = trained
        elif name == "hac":
            self.ent = new_entropy_model(model, FitConfig(codec="hac"), seed=0)
        else:
            self.ent = new_entropy_model(model, FitConfig(**HEMGS_VARIANTS[name]), seed=0)
        self.hemgs = isinstance(self.ent, HemgsEntropyModel)
        self.fixed = fixed32
        self.lookup = None if self.iid else self.ent.grid.lookup(self.ent.normalise(model.anchors.detach()))
        if self.hemgs:
            cfg = self.ent.cfg
            self.sa = sa32 if cfg.scene_agnostic else None
            self.fb = stage_b(fixed32)
            self.prior_feat = (torch.zeros_like(fixed32["features"].values) if name == "no_prog"
                               else fixed32["features"].values)
            self.ctx = (None, None)
            if cfg.ar:
                coords = model.coords.numpy()
                sel = select_context(coords, assign_groups(coords, cfg.groups), acs=cfg.acs,
                                     n=cfg.n_context if cfg.acs else None)
                self.ctx = (torch.from_numpy(sel.index), torch.from_numpy(sel.offsets).float())
                self.context_mean = float(sel.count[sel.count > 0].mean()) if (sel.count > 0).any() else 0.0
            self.trainable = [p for k, p in self.ent.named_parameters() if not k.startswith("vr.")]
        else:
            self.trainable = list(self.ent.parameters())
        self.n = n

    def params(self, rows: torch.Tensor) -> dict:
        if self.iid:
            return self.ent.params(len(rows))
        grid = self.ent.grid.encode_rows(self.lookup, rows)
        if not self.hemgs:
            p = self.ent.split(self.ent.mlp(grid))
            return {k: (p[k].mean, p[k].scale) for k in PARTS}
        e = self.ent
        hyper = e.hyper(grid, None if self.sa is None else self.sa[rows])
        prior_a = e.stage_prior("a", hyper, None)
        prior_b = e.stage_prior("b", hyper, self.prior_feat[rows])
        ma, sa = e.stage_params("a", prior_a, self.fixed["features"].values, *self.ctx, rows)
        mb, sb = e.stage_params("b", prior_b, self.fb.values, *self.ctx, rows)
        return {"features": (ma, sa), "scaling": (mb[:, :6], sb[:, :6]), "offsets": (mb[:, 6:], sb[:, 6:])}

    def bits(self, rows: torch.Tensor) -> dict:
        """(rows, A) bits per part."""
        p = self.params(rows)
        return {k: part_bits(self.fixed[k], p[k][0], p[k][1], rows) for k in PARTS}

    def init_output_biases(self, rows: torch.Tensor) -> None:
        """Start every model's means and scales at each channel's mean and spread over `rows`
        (a data-aware start, the same for all: training then converges in far fewer steps)."""
        values = {k: f.values[rows] for k, f in self.fixed.items()}
        coded = {k: f.coded[rows] for k, f in self.fixed.items()}
        if not self.iid:
            init_output_biases(self.ent, values, coded)
            return
        with torch.no_grad():
            for k, (m, raw) in channel_stats(values, coded).items():
                self.ent.mean[k][:], self.ent.raw[k][:] = m, raw

    def networks(self) -> dict:
        if self.iid:
            return {**networks_bytes({"iid": self.ent}), "grid_bytes": 0}
        if not self.hemgs:
            nets = {"entropy": self.ent.mlp}
        else:
            nets = {"prior": self.ent.prior, "head": self.ent.head}
        out = networks_bytes(nets)
        if self.hemgs:  # the step predictor a HEMGS file also holds (not trained here: HAC's steps)
            out["vr"] = networks_bytes({"vr": self.ent.vr})
        out["grid_bytes"] = len(encode_bits(self.ent.grid.binary_tables().numpy()))
        return out


def train(subject: Subject, train_rows, held_rows, max_steps: int, eval_every: int, seed: int) -> dict:
    params_per_anchor = sum(subject.fixed[k].coded.shape[1] for k in PARTS)
    subject.init_output_biases(train_rows)
    opt = torch.optim.Adam(subject.trainable, lr=LR)
    gen = torch.Generator().manual_seed(seed)

    def held() -> float:
        with torch.no_grad():
            return float(sum(b.sum() for b in subject.bits(held_rows).values()))

    curve = []
    plateau = Plateau(opt, held(), lambda: {k: v.clone() for k, v in subject.ent.state_dict().items()})
    t0, done = time.perf_counter(), 0
    for step in range(max_steps):
        rows = train_rows[torch.randperm(len(train_rows), generator=gen)[:BATCH]]
        loss = sum(b.sum() for b in subject.bits(rows).values()) / (len(rows) * params_per_anchor)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done = step + 1
        if done % eval_every == 0 or done == max_steps:
            now = held()
            curve.append((done, now / len(held_rows)))
            if plateau.update(now):
                break
    subject.ent.load_state_dict(plateau.best_state)
    return {"steps": done, "seconds": time.perf_counter() - t0, "curve": curve}


def measure(subject: Subject, fixed64: dict[str, FixedPart], train_rows, held_rows) -> dict:
    """Estimated bits per part and channel over all anchors, the arithmetic coder's bytes of the
    same symbols under the same means and scales, and the held-out/train rates per anchor."""
    rows = torch.arange(subject.n)
    with torch.no_grad():
        params = {k: tuple(t.detach() for t in v) for k, v in subject.params(rows).items()}
        bits = {k: part_bits(subject.fixed[k], *params[k], rows).double() for k in PARTS}
    out = {"bits": {k: float(b.sum()) for k, b in bits.items()},
           "channel_bits": {k: b.sum(0).tolist() for k, b in bits.items()},
           "bits_per_anchor_held": float(sum(b[held_rows].sum() for b in bits.values())) / len(held_rows),
           "bits_per_anchor_train": float(sum(b[train_rows].sum() for b in bits.values())) / len(train_rows),
           "real_bytes": {}}
    for k in PARTS:
        fp = fixed64[k]
        c = fp.coded.numpy()
        mean, scale = (t.double().numpy()[c] for t in params[k])
        data, dec = streams.encode_values(fp.values.numpy()[c], mean, scale, fp.steps.numpy()[c], b"")
        assert np.array_equal(dec, fp.values.numpy()[c])  # the coder codes exactly the fixed values
        out["real_bytes"][k] = len(data)
    return out


def run_scene(scene: str, args) -> dict:
    model, trained = anchor_model(scene, args.lam, args.train_steps, args.anchors)
    n = model.num_anchors
    sa64 = scene_agnostic_prior().features(model.coords.numpy())
    sa32 = sa64.float()
    if args.anchors == "hac":
        header, sections, _ = hac_encode(model, trained, lam=args.lam)
        fixed64, _ = fixed_symbols_hac(model, trained)
    else:
        header, sections, _ = hemgs_encode(model, trained, scene_agnostic_prior(), lam=args.lam)
        fixed64, _ = fixed_symbols_hemgs(model, trained, args.lam, sa64)
    fixed32 = {k: f.to32() for k, f in fixed64.items()}
    if args.holdout > 0:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed))
        cut = max(1, int(args.holdout * n))
        held_rows, train_rows = perm[:cut].sort().values, perm[cut:].sort().values
    else:  # train on every anchor the file codes, and stop on their own rate
        held_rows = train_rows = torch.arange(n)
    rec = {"anchors": n, "lambda": args.lam, "train_steps": args.train_steps, "holdout": args.holdout,
           "anchor_codec": args.anchors,
           "file": {k: len(v) for k, v in sections.items()},  # the anchor model's own file
           "coded": {k: int(f.coded.sum()) for k, f in fixed64.items()},
           "step_stats": {k: {"mean": float(f.steps[f.coded].mean()), "distinct": int(torch.unique(f.steps[f.coded]).numel())}
                          for k, f in fixed64.items()},
           "models": {}}
    from hemgs.codec.weights import RENDER_BITS

    anchor_nets = networks_bytes({"anchor": model.mlps}, RENDER_BITS)
    rec["anchor_mlps"] = anchor_nets
    for name in ["trained", *args.models]:
        torch.manual_seed(args.seed)
        subject = Subject(name, model, fixed32, sa32, trained=trained)
        info = {"steps": 0, "seconds": 0.0, "curve": []}
        if name != "trained":
            info = train(subject, train_rows, held_rows, args.max_steps, args.eval_every, args.seed)
        m = measure(subject, fixed64, train_rows, held_rows)
        m.update(info, networks=subject.networks())
        if getattr(subject, "context_mean", None) is not None:
            m["context_mean"] = subject.context_mean
        rec["models"][name] = m
        est = sum(m["bits"].values()) / 8
        real = sum(m["real_bytes"].values())
        print(f"{scene} {name}: {est:,.0f} B estimated, {real:,} B coded ({real / est - 1:+.2%}), held-out "
              f"{m['bits_per_anchor_held']:.1f} bits/anchor, {info['steps']} steps in {info['seconds']:.0f} s", flush=True)
    return rec


# ---- item 2: the entropy refinement, before and after ---------------------------------------------
def run_refine(scene: str, args) -> dict:
    """One HAC-mode model (at --lam) and one variable-rate HEMGS model of the scene, each trained
    once with the current defaults but no refinement (cached as *_refine), coded at --lam before and after
    hemgs.entropy.refine with the FitConfig default budget; bytes, PSNR of the decoded file on the
    fit's held-out views against the source's renders, and the refinement's time."""
    import copy

    from hemgs.entropy.refine import refine_entropy
    from hemgs.fit import entropy_lambdas, render_views_anchor, teacher_views
    from hemgs.metrics import compare_images
    from hemgs.pipeline import compress_model
    from hemgs.render import render

    src = SCENES[scene]
    s, _ = sanitize(load_scene(src))
    cfg = FitConfig(steps=args.train_steps)
    _, test = teacher_views(s, src, cfg)
    refs = [render(s, cam) for cam in test]
    out = {"lambda": args.lam, "train_steps": args.train_steps, "budget": cfg.refine_budget}
    for codec in ("hac", "hemgs"):
        model, entropy = anchor_model(scene, args.lam, args.train_steps, codec, "_refine")
        rec = {}
        for when in ("before", "after"):
            if when == "after":
                sa = (scene_agnostic_prior().features(model.coords.numpy())
                      if isinstance(entropy, HemgsEntropyModel) and entropy.cfg.scene_agnostic else None)
                c = FitConfig(codec=codec, lam=args.lam, steps=args.train_steps)
                entropy = copy.deepcopy(entropy)
                rec["refine"] = refine_entropy(model, entropy, lambdas=entropy_lambdas(entropy, c),
                                               steps=c.refine_budget, sa_feat=sa, seed=c.seed)
            path = CACHE / f"{scene}_{codec}_{when}.hgs"
            r = compress_model(model, entropy, path, lam=args.lam)
            fid = compare_images(refs, render_views_anchor(r["decoded"].model, test))
            rec[when] = {"bytes": r["bytes"], "sections": r["sections"], "psnr": fid["psnr"], "ssim": fid["ssim"],
                         "digest": _digest(r["decoded"].model)}
            print(f"{scene} {codec} {when}: {r['bytes']:,} B, PSNR {fid['psnr']:.3f} dB", flush=True)
        out[codec] = rec
    return out


def _digest(model) -> str:
    import hashlib

    h = hashlib.sha256()
    for _, v in sorted(model.anchor_attributes().items()):
        h.update(v.numpy().tobytes())
    return h.hexdigest()[:16]


def refine_report(refine: dict) -> list[str]:
    lines = ["## Entropy refinement (item 2): before and after", "",
             "Each model trained once (the CLI's default budget, no refinement), coded at λ before and after",
             "`hemgs.entropy.refine` with the FitConfig default budget (2 per render step); PSNR of the decoded",
             "file's renders against the source's on the fit's held-out views.", "",
             "| scene | model | bytes before | after | change | streams before | after | change | PSNR before | after | decoded anchors | refine steps | refine s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for scene, rec in refine.items():
        for codec in ("hac", "hemgs"):
            r = rec.get(codec)
            if not r:
                continue
            b, a, info = r["before"], r["after"], r["refine"]
            sb = sum(b["sections"][k] for k in PARTS)
            sa = sum(a["sections"][k] for k in PARTS)
            lines.append(f"| {scene} (λ {rec['lambda']:g}) | {codec} | {b['bytes']:,} | {a['bytes']:,} | {_pct(a['bytes'], b['bytes'])} | "
                         f"{sb:,} | {sa:,} | {_pct(sa, sb)} | {b['psnr']:.3f} | {a['psnr']:.3f} | "
                         f"{'identical' if a['digest'] == b['digest'] else 'DIFFERENT'} | {info['steps']} of {info['budget']} | {info['seconds']:.1f} |")
    return lines + [""]


# ---- the report ----------------------------------------------------------------------------------
def _pct(a: float, b: float) -> str:
    return f"{a / b - 1:+.1%}" if b else "-"


def channel_groups(k: int, feat_dim: int) -> dict[str, list[tuple[str, list[int]]]]:
    feats = [(f"f{i}–{min(i + 9, feat_dim - 1)}", list(range(i, min(i + 10, feat_dim)))) for i in range(0, feat_dim, 10)]
    scal = [(f"s{i} ({'offset scale' if i < 3 else 'Gaussian scale'} {'xyz'[i % 3]})", [i]) for i in range(6)]
    offs = [(f"offsets {a}", list(range(j, 3 * k, 3))) for j, a in enumerate("xyz")]
    return {"features": feats, "scaling": scal, "offsets": offs}


def file_parts(rec: dict, m: dict, stored: bool) -> dict:
    """A would-be file's bytes per component: the coded streams, networks + grid, and the parts
    every model shares (locations, mask, the anchor MLPs)."""
    nets = m["networks"]
    net = nets["stored" if stored else "float16"] + nets.get("vr", {}).get("stored" if stored else "float16", 0)
    anchor = rec["anchor_mlps"]["stored" if stored else "float16"]
    own = rec.get("file") or rec["hac_file"]
    out = {"locations": own["locations"], **{k: m["real_bytes"][k] for k in PARTS},
           "mask": own["mask"], "networks+grid": net + nets["grid_bytes"] + anchor}
    out["total"] = sum(out.values())
    return out


def report(results: dict) -> str:
    lines = ["# Equal-anchors entropy benchmark", "",
             "Written by `benchmarks/bench_entropy.py`; what it says: `docs/hemgs-results.md`, \"Equal anchors\".",
             "ONE anchor model per scene (HAC mode at λ; \"HEMGS anchors\": a variable-rate HEMGS model coded",
             "at λ); its file's symbols and steps frozen; each entropy model's distribution part trained from",
             "scratch on their rate alone, then measured on all anchors. Plain scene names: trained on 90% of",
             "the anchors and stopped on the other 10% (every model memorises the scene, so this stops at",
             "50-200 steps); \"no hold-out\": trained on all anchors and stopped on their rate, which is what",
             "a file codes. Only the probabilities differ: every model codes the same values with the same",
             "steps. `trained` is the entropy model as the fit left it; the cached anchor models were trained",
             "before `FitConfig.init_entropy` and the refinement existed.", ""]
    for scene, rec in results.get("scenes", {}).items():
        models = {n: rec["models"][n] for n in ["trained", *MODELS] if n in rec["models"]}
        lines += [f"## {scene}", "",
                  f"{rec['anchors']:,} anchors, λ {rec['lambda']:g}, anchor model trained {rec['train_steps']} steps; "
                  f"coded elements: " + ", ".join(f"{k} {v:,}" for k, v in rec["coded"].items()) + ".", "",
                  "Bytes per component (streams: the arithmetic coder's bytes of the fixed symbols under each",
                  "model; networks + grid as the file stores them, the anchor MLPs included; the step predictor",
                  "of a HEMGS file counted too). Estimated: −log2 of each bin's probability, over all anchors.", "",
                  "| model | features | scaling | offsets | streams | estimated | coded/est. | networks+grid | total | held-out bits/anchor | train bits/anchor | steps | s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, m in models.items():
            fp = file_parts(rec, m, stored=True)
            streams_b = sum(m["real_bytes"].values())
            est = sum(m["bits"].values()) / 8
            lines.append(f"| {name} | {m['real_bytes']['features']:,} | {m['real_bytes']['scaling']:,} | "
                         f"{m['real_bytes']['offsets']:,} | {streams_b:,} | {est:,.0f} | {streams_b / est - 1:+.2%} | "
                         f"{fp['networks+grid']:,} | {fp['total']:,} | {m['bits_per_anchor_held']:.1f} | "
                         f"{m['bits_per_anchor_train']:.1f} | {m['steps']} | {m['seconds']:.0f} |")
        own = rec.get("file") or rec["hac_file"]
        lines += ["", f"Shared by every model: locations {own['locations']:,} B, mask {own['mask']:,} B, "
                  f"anchor MLPs {rec['anchor_mlps']['stored']:,} B ({rec['anchor_mlps']['float16']:,} at float16).", ""]
        lines += ["Networks per model (weights; bytes at float16 / as stored) and hash grid:", "",
                  "| model | weights | float16 | stored | + step predictor (HEMGS) | grid |", "|---|---|---|---|---|---|"]
        for name, m in models.items():
            nt = m["networks"]
            vr = nt.get("vr")
            lines.append(f"| {name} | {nt['weights']:,} | {nt['float16']:,} | {nt['stored']:,} | "
                         f"{(str(vr['weights']) + ' weights, ' + format(vr['stored'], ',') + ' B') if vr else '-'} | {nt['grid_bytes']:,} |")
        if "hac" in models and "hemgs" in models:
            hac, hem = models["hac"], models["hemgs"]
            k = len(hac["channel_bits"]["offsets"]) // 3
            groups = channel_groups(k, len(hac["channel_bits"]["features"]))
            others = [n for n in ("no_prog", "no_ar", "no_sa", "no_acs") if n in models]
            lines += ["", "Bits per channel group (estimated, all anchors), HEMGS beside HAC, bits per coded element in",
                      "brackets; the last columns: each ablation against HAC:", "",
                      "| part | channels | HAC | HEMGS | HEMGS/HAC | " + " | ".join(others) + " |",
                      "|---|---|---|---|---|" + "---|" * len(others)]
            for part, gs in groups.items():
                for label, ch in gs:
                    coded = rec["coded"][part] * len(ch) / len(hac["channel_bits"][part])
                    hb = sum(hac["channel_bits"][part][c] for c in ch)
                    mb = sum(hem["channel_bits"][part][c] for c in ch)
                    extra = " | ".join(_pct(sum(models[o]["channel_bits"][part][c] for c in ch), hb) for o in others)
                    lines.append(f"| {part} | {label} | {hb / 8:,.0f} B ({hb / coded:.2f}) | {mb / 8:,.0f} B ({mb / coded:.2f}) | "
                                 f"{_pct(mb, hb)} | {extra} |")
            lines += ["", "HEMGS against HAC per component, ours (equal anchors) beside the paper's Table 5 (DeepBlending):", "",
                      "| component | HAC (B) | HEMGS (B) | ours | paper |", "|---|---|---|---|---|"]
            fh, fm = file_parts(rec, hac, True), file_parts(rec, hem, True)
            for comp in ("locations", "features", "scaling", "offsets"):
                ph, pm = PAPER[comp]
                lines.append(f"| {comp} | {fh[comp]:,} | {fm[comp]:,} | {_pct(fm[comp], fh[comp])} | {pm / ph - 1:+.1%} |")
            oh = fh["mask"] + fh["networks+grid"]
            om = fm["mask"] + fm["networks+grid"]
            lines.append(f"| others (mask, networks, grid) | {oh:,} | {om:,} | {_pct(om, oh)} | {PAPER['others'][1] / PAPER['others'][0] - 1:+.1%} |")
            lines.append(f"| total | {fh['total']:,} | {fm['total']:,} | {_pct(fm['total'], fh['total'])} | "
                         f"{PAPER['total'][1] / PAPER['total'][0] - 1:+.1%} |")
        lines.append("")
    if results.get("refine"):
        lines += refine_report(results["refine"])
    meta = results.get("machine", {})
    if meta:
        lines += [f"Machine: {meta.get('machine')}, {meta.get('cores')} cores, torch {meta.get('torch')}, "
                  f"{meta.get('threads')} thread(s). Arguments: {json.dumps(meta.get('args'))}.", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", nargs="+", default=["playbot_lod3"], choices=list(SCENES))
    ap.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    ap.add_argument("--lam", type=float, default=2e-3, help="λ of the HAC-mode anchor model (default 2e-3)")
    ap.add_argument("--anchors", choices=["hac", "hemgs"], default="hac",
                    help="whose symbols: a HAC-mode model's (default) or a variable-rate HEMGS model's at --lam "
                         "(its per-element steps); recorded apart as '<scene>, HEMGS anchors'")
    ap.add_argument("--train-steps", type=int, default=FitConfig().steps, help="render steps of the anchor model")
    ap.add_argument("--max-steps", type=int, default=4000, help="rate-training steps per entropy model, at most")
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--holdout", type=float, default=0.1,
                    help="share of anchors held out for stopping (0: train on all, stop on their rate; "
                         "recorded apart as '<scene>, no hold-out')")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--refine", action="store_true",
                    help="item 2 instead: bytes and PSNR before/after the entropy refinement (HAC and HEMGS models)")
    ap.add_argument("--report", action="store_true", help="only rewrite the tables from the JSON")
    args = ap.parse_args()
    set_threads(int(os.environ.get("HEMGS_THREADS", "1")))
    path = OUT / "entropy.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    if args.refine:
        results.setdefault("refine", {})
        for scene in args.scenes:
            results["refine"][scene] = run_refine(scene, args)
            path.write_text(json.dumps(results, indent=1))
    elif not args.report:
        results.setdefault("scenes", {})
        for scene in args.scenes:
            rec = run_scene(scene, args)
            key = scene + (", HEMGS anchors" if args.anchors == "hemgs" else "") + (", no hold-out" if args.holdout <= 0 else "")
            old = results["scenes"].get(key, {})
            if old.get("lambda") == rec["lambda"] and old.get("train_steps") == rec["train_steps"]:
                rec["models"] = {**old.get("models", {}), **rec["models"]}  # keep models not re-run
            results["scenes"][key] = rec
            results["machine"] = {"machine": platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
                                  "threads": torch.get_num_threads(), "args": vars(args)}
            path.write_text(json.dumps(results, indent=1))
    text = report(results)
    (OUT / "entropy.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
