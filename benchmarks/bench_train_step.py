"""Per-phase timings of one render-space training step (the body of `hemgs.fit.render_finetune`).

The model is built as `fit()` builds it (voxelize, `warm_start` with a few steps so that the MLPs
give a realistic number of drawn Gaussians, a fresh HAC entropy model), then N steps of the
fine-tune body run with manual timers around each phase:
  cull      visible_anchors
  entropy   HAC entropy model forward (hash grid + MLP + bits); only with the rate term
  generate  generate_neural_gaussians (the anchor MLPs)
  raster    projection + tile compositing, forward
  loss      L1 + SSIM (+ mask and rate terms)
  backward  loss.backward()
  optim     Adam step (with the cosine learning-rate update)
Figures are medians over the timed steps (after one untimed warm-up step per view set).

Usage:
  HEMGS_THREADS=2 OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_train_step.py [--steps 6]
      [--sizes 128 256] [--scenes demo lod2] [--out docs/benchmarks/train_step.md]
HEMGS_THREADS (default 2) sets torch's thread count.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HEMGS_THREADS", "2")
os.environ.setdefault("OMP_NUM_THREADS", os.environ["HEMGS_THREADS"])

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "backend"))

from hemgs.anchor.model import generate_neural_gaussians  # noqa: E402
from hemgs.anchor.render import visible_anchors  # noqa: E402
from hemgs.anchor.warm_start import build_anchor_model, warm_start  # noqa: E402
from hemgs.cameras import sample_views, split_views  # noqa: E402
from hemgs.device import set_threads  # noqa: E402
from hemgs.entropy.hac import AnchorAttrs  # noqa: E402
from hemgs.fit import FitConfig, make_optimizer, new_entropy_model  # noqa: E402
from hemgs.io import load_scene  # noqa: E402
from hemgs.metrics import ssim_loss_term  # noqa: E402
from hemgs.render import rasterize, render  # noqa: E402
from hemgs.render import tiles  # noqa: E402

SCENES = {"demo": REPO / "data" / "demo" / "playbot_lod3.ply",
          "lod2": REPO.parent / "shared" / "data" / "playbot_lod2.ply"}
PHASES = ("cull", "entropy", "generate", "raster", "loss", "backward", "optim")


class Timers:
    def __init__(self):
        self.t = {p: 0.0 for p in PHASES}
        self.last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.t[phase] += now - self.last
        self.last = now


def timed_step(model, entropy, opt, cam, target, cfg, rate: bool, lookup=None) -> tuple[dict, int]:
    """One step of render_finetune's body with a timer per phase; returns (times, Gaussians drawn).

    `lookup` (the hash grid's cached interpolation, as render_finetune builds it) selects the
    current path; None runs the entropy model the old way, from positions."""
    tm = Timers()
    vis = visible_anchors(model, cam)
    tm.lap("cull")
    attrs = AnchorAttrs(model.features[vis], model.scaling[vis], model.offsets[vis], model.binary_mask()[vis])
    bpp = None
    if rate:
        n_vis = int(vis.sum())
        if lookup is None:
            attrs, bits = entropy(model.anchors[vis], attrs)
        else:
            attrs, bits = entropy(None, attrs, context=entropy.context_of(lookup)[vis])
        bpp = sum(bits.values()) / (n_vis * entropy.params_per_anchor())
    tm.lap("entropy")
    # generate and raster are timed apart by splitting render_anchor the same way it runs.
    anchors = model.anchors[vis]
    center = torch.as_tensor(cam.center, dtype=anchors.dtype)
    g = generate_neural_gaussians(anchors, attrs.features, attrs.scaling, attrs.offsets, attrs.mask, model.mlps,
                                  center, use_dist=model.config.use_dist)
    tm.lap("generate")
    vm = torch.as_tensor(cam.viewmat, dtype=anchors.dtype)
    K = torch.as_tensor(cam.K, dtype=anchors.dtype)
    image, _ = rasterize(g.means, g.quats, g.scales, g.opacities, g.colors, vm, K, cam.width, cam.height)
    tm.lap("raster")
    l1 = (image - target).abs().mean()
    loss = 0.8 * l1 + 0.2 * ssim_loss_term(image, target)
    loss = loss + cfg.mask_weight * torch.sigmoid(model.mask_logits[vis]).mean()
    if bpp is not None:
        loss = loss + cfg.lam * bpp
    tm.lap("loss")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    tm.lap("backward")
    for grp in opt.param_groups:
        grp["lr"] = grp["lr"] * 1.0
    opt.step()
    float(loss.detach())
    tm.lap("optim")
    return tm.t, len(g)


def build(scene_path: Path, warm_steps: int, seed: int = 0):
    scene = load_scene(scene_path)
    model = build_anchor_model(scene, target_ratio=FitConfig().target_ratio, seed=seed)
    warm_start(model, scene, steps=warm_steps, seed=seed)
    # The HAC entropy model: the phases below time its forward (the HEMGS model's rate goes
    # through fit._HemgsRate; time a whole fit for it).
    entropy = new_entropy_model(model, FitConfig(codec="hac"), seed)
    return scene, model, entropy


VARIANTS = ("before", "after")  # before: uncached hash grid + autograd compositing; after: current code


def bench(scene_name: str, sizes, steps: int, warm_steps: int, variants, rates=(False, True)) -> list[dict]:
    """Time the variants' steps interleaved (same views, same process) so that load from other
    processes hits them alike; medians per phase."""
    scene, model, entropy = build(SCENES[scene_name], warm_steps)
    lookup = entropy.lookup(model.anchors.detach())
    cfg = FitConfig()
    rows = []
    for size in sizes:
        views, _ = split_views(sample_views(scene, n=8, width=size, height=size))
        targets = [torch.as_tensor(render(scene, c, device="cpu")) for c in views]
        for rate in rates:
            opts = {v: make_optimizer(model, entropy, cfg) for v in variants}
            per = {v: {p: [] for p in PHASES} for v in variants}
            totals = {v: [] for v in variants}
            drawn = []
            for i in range(steps + 1):
                j = i % len(views)
                for v in variants:
                    tiles.HAND_BACKWARD = v == "after"
                    t, n = timed_step(model, entropy, opts[v], views[j], targets[j], cfg, rate,
                                      lookup if v == "after" else None)
                    if i == 0:  # warm-up (allocator, first-call costs)
                        continue
                    for p in PHASES:
                        per[v][p].append(t[p])
                    totals[v].append(sum(t.values()))
                    drawn.append(n)
            tiles.HAND_BACKWARD = True
            for v in variants:
                row = {"variant": v, "scene": scene_name, "anchors": model.num_anchors, "size": size, "rate": rate,
                       "gaussians": int(statistics.median(drawn)), "total": statistics.median(totals[v])}
                row.update({p: statistics.median(x) for p, x in per[v].items()})
                rows.append(row)
                print(fmt_row(row), flush=True)
    return rows


HEADER = ("| variant | scene | anchors | size | rate | drawn | " + " | ".join(PHASES) + " | total (s) |\n"
          "|---|---|---|---|---|---|" + "---|" * len(PHASES) + "---|")


def fmt_row(r: dict) -> str:
    return (f"| {r['variant']} | {r['scene']} | {r['anchors']} | {r['size']} | {'yes' if r['rate'] else 'no'} | {r['gaussians']} | "
            + " | ".join(f"{r[p]:.3f}" for p in PHASES) + f" | {r['total']:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warm-steps", type=int, default=30)
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--scenes", nargs="+", default=["demo", "lod2"], choices=sorted(SCENES))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--out", type=Path, default=None, help="write a markdown table here")
    args = ap.parse_args()
    threads = set_threads()
    print(f"threads={threads} OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    print(HEADER)
    rows = []
    for s in args.scenes:
        if not SCENES[s].is_file():
            print(f"skipping {s}: {SCENES[s]} not found")
            continue
        rows += bench(s, args.sizes, args.steps, args.warm_steps, args.variants)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(f"threads={threads}, median of {args.steps} steps\n\n{HEADER}\n"
                       + "\n".join(fmt_row(r) for r in rows) + "\n")
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
