"""Anchor codec (HAC mode) benchmark: size per component, fidelity, and times, per scene and λ.

For each scene and λ: train a model (hemgs.fit with the CLI's defaults unless overridden), compress
it, decode + bake the file, and measure PSNR/SSIM of the decoded file's renders against the
source's renders on the held-out views (every 8th of the sampled views). HAC mode is fixed-rate,
so every λ is its own training run.

Usage (2 threads, OMP_WAIT_POLICY=PASSIVE as everywhere):
    HEMGS_THREADS=2 python benchmarks/bench_anchor_codec.py --scenes playbot_lod3 playbot_lod2 \\
        --lambdas 1e-3 2e-3 3e-3 4e-3
Writes docs/benchmarks/anchor_codec.md and docs/benchmarks/anchor_codec.json (appending runs
keyed by scene and λ, so scenes can be run separately).
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

import torch  # noqa: E402

from hemgs.anchor.bake import bake  # noqa: E402
from hemgs.codec.anchor import decode, encode  # noqa: E402
from hemgs.container import read_hgs, write_hgs  # noqa: E402
from hemgs.device import set_threads  # noqa: E402
from hemgs.entropy.hemgs import LAMBDAS  # noqa: E402
from hemgs.fit import FitConfig, fit, render_views_anchor  # noqa: E402
from hemgs.io import load_scene  # noqa: E402
from hemgs.metrics import compare_images  # noqa: E402
from hemgs.render import render  # noqa: E402
from hemgs.scene import sanitize  # noqa: E402

DATA = REPO.parent / "shared" / "data"
OUT = REPO / "docs" / "benchmarks"


def scene_path(name: str) -> Path:
    for cand in (DATA / f"{name}.ply", DATA / f"{name}.spz", REPO / "data" / "demo" / f"{name}.ply"):
        if cand.exists():
            return cand
    raise SystemExit(f"no scene {name} in {DATA}")


def run_one(name: str, lam: float, args) -> dict:
    path = scene_path(name)
    scene, _ = sanitize(load_scene(path))
    cfg = FitConfig(lam=lam, width=args.width, steps=args.steps, warm_steps=args.warm_steps, views=args.views,
                    codec="hac")
    stage_t: dict = {}

    def progress(stage, step, total, info):
        if step == total:
            print(f"  {stage} done ({total} steps)", flush=True)

    t0 = time.perf_counter()
    fitted = fit(scene, source_path=path, cfg=cfg, progress=progress)
    train_s = time.perf_counter() - t0
    stage_t.update({k: v for k, v in fitted.history.items() if k.endswith("seconds")})

    t0 = time.perf_counter()
    header, sections, _ = encode(fitted.model, fitted.entropy, lam=lam)
    out = Path(args.tmp) / f"{name}_{lam:g}.hgs"
    write_hgs(out, header, sections)
    encode_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    f = read_hgs(out)
    decoded = decode(f.header, f.sections)
    decode_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    baked = bake(decoded.model, mode="sh_fit", sh_degree=1)
    bake_s = time.perf_counter() - t0

    refs = [render(scene, c) for c in fitted.test_views]
    fid = compare_images(refs, render_views_anchor(decoded.model, fitted.test_views))
    fid_baked = compare_images(refs, [render(baked, c) for c in fitted.test_views])
    size = out.stat().st_size
    return {
        "scene": name, "lambda": lam, "gaussians": len(scene), "anchors": int(header["anchors"]),
        "bytes": size, "source_bytes": path.stat().st_size, "sections": {k: len(v) for k, v in sections.items()},
        "bits_per_anchor_locations": 8 * len(sections["locations"]) / max(1, header["anchors"]),
        "psnr": fid["psnr"], "ssim": fid["ssim"], "psnr_baked": fid_baked["psnr"], "ssim_baked": fid_baked["ssim"],
        "views": fid["views"], "view_size": args.width, "path": str(out),
        "train_s": train_s, "encode_s": encode_s, "decode_s": decode_s, "bake_s": bake_s, **stage_t,
        "config": {"steps": cfg.steps, "warm_steps": cfg.warm_steps, "width": cfg.width, "views": cfg.views},
        "threads": torch.get_num_threads(),
    }


def write_report(runs: list[dict]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "anchor_codec.json").write_text(json.dumps(runs, indent=1))
    lines = [
        "# Anchor codec (HAC mode) benchmark", "",
        "Written by `benchmarks/bench_anchor_codec.py`. PSNR/SSIM: renders of the decoded `.hgs`",
        "(view-dependent anchor model) and of its baked PLY against the source's renders, on the",
        "held-out views (every 8th sampled view). Times in seconds on the CPU; train = teacher renders +",
        "warm start + render-space fine-tune. Sizes in bytes; `net` = networks (quantized, as the file stores them) + hash grid.", "",
        "| scene | λ | anchors | size | ratio | loc b/anchor | features | scaling | offsets | mask | net | PSNR | SSIM | PSNR baked | train | encode | decode | bake |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(runs, key=lambda r: (r["scene"], r["lambda"])):
        s = r["sections"]
        lines.append(
            f"| {r['scene']} | {r['lambda']:g} | {r['anchors']:,} | {r['bytes']:,} | {r['source_bytes'] / r['bytes']:.1f}x "
            f"| {r['bits_per_anchor_locations']:.2f} | {s['features']:,} | {s['scaling']:,} | {s['offsets']:,} | {s['mask']:,} "
            f"| {s['networks'] + s['grid']:,} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['psnr_baked']:.2f} "
            f"| {r['train_s']:.0f} | {r['encode_s']:.2f} | {r['decode_s']:.2f} | {r['bake_s']:.2f} |")
    cfgs = {json.dumps(r["config"], sort_keys=True) for r in runs}
    lines += ["", f"Training configs: {', '.join(sorted(cfgs))}.",
              f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
              f"{runs[-1]['threads'] if runs else '?'} threads."]
    (OUT / "anchor_codec.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", nargs="+", default=["playbot_lod3", "playbot_lod2"])
    ap.add_argument("--lambdas", nargs="+", type=float, default=list(LAMBDAS))
    ap.add_argument("--steps", type=int, default=FitConfig.steps)
    ap.add_argument("--warm-steps", type=int, default=FitConfig.warm_steps)
    ap.add_argument("--width", type=int, default=FitConfig.width)
    ap.add_argument("--views", type=int, default=FitConfig.views)
    ap.add_argument("--tmp", default="/tmp")
    args = ap.parse_args()
    set_threads()
    existing = []
    if (OUT / "anchor_codec.json").exists():
        existing = json.loads((OUT / "anchor_codec.json").read_text())
    for name in args.scenes:
        for lam in args.lambdas:
            print(f"{name} λ={lam:g}", flush=True)
            r = run_one(name, lam, args)
            print(json.dumps({k: v for k, v in r.items() if k != "sections"}), flush=True)
            existing = [e for e in existing if not (e["scene"] == name and e["lambda"] == lam)] + [r]
            write_report(existing)


if __name__ == "__main__":
    main()
