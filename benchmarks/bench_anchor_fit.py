"""Anchor mode's fidelity (issue #21): how well an anchor model reproduces a 3DGS scene.

Two measurements, both scored on the 16 whole-sphere evaluation views at 256² that no encoder uses
(hemgs.cameras.evaluation_views), PSNR against the source's renders: the mean of the views, the
PSNR of their mean MSE and the worst view.

- `--warm-only`: the warm start alone (attribute space, no render step, no quantization). Beside
  the model's own render, the same slots drawn with each slot's source colour (SH along the view),
  which separates the geometry's error from the colour's.
- default: what a user runs, `hemgs train` then `hemgs compress` (FitConfig's defaults unless
  `--set` overrides them), timed, the trained model unquantized and each file decoded.

Usage (2 threads, OMP_WAIT_POLICY=PASSIVE as everywhere):
    HEMGS_THREADS=2 python benchmarks/bench_anchor_fit.py --scenes playbot_lod3 --lambdas 1e-3
    HEMGS_THREADS=2 python benchmarks/bench_anchor_fit.py --scenes playbot_lod3 --warm-only \\
        --set '{"hidden": 128, "warm_steps": 2000}'
Appends records to docs/benchmarks/anchor_fit.json and prints them; docs/anchor-model.md quotes them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "backend"))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from hemgs.cameras import evaluation_views  # noqa: E402
from hemgs.device import set_threads  # noqa: E402
from hemgs.fit import FitConfig, render_views_anchor, scene_importance  # noqa: E402
from hemgs.io import load_scene  # noqa: E402
from hemgs.metrics import compare_images  # noqa: E402
from hemgs.render import rasterize, render  # noqa: E402
from hemgs.scene import sanitize  # noqa: E402
from machine import cpu_name  # noqa: E402

DATA = REPO.parent / "shared" / "data"
OUT = REPO / "docs" / "benchmarks" / "anchor_fit.json"


def scene_path(name: str) -> Path:
    for cand in (DATA / f"{name}.ply", DATA / f"{name}.spz", REPO / "data" / "demo" / f"{name}.ply"):
        if cand.exists():
            return cand
    raise SystemExit(f"no scene {name} in {DATA} or data/demo")


def scores(refs, imgs) -> dict:
    res = compare_images(refs, imgs)
    return {k: round(float(res[k]), 3) for k in ("psnr", "psnr_of_mean_mse", "worst_psnr")}


def warm_only(scene, cams, refs, cfg: FitConfig) -> dict:
    """The warm start alone, drawn as the model draws it and with the source's colours."""
    from hemgs.anchor.model import AnchorConfig
    from hemgs.anchor.warm_start import _sh_colors, assign_slots, build_anchor_model, warm_start

    model = build_anchor_model(scene, AnchorConfig(hidden=cfg.hidden), target_ratio=cfg.target_ratio, seed=cfg.seed)
    imp = scene_importance(scene, lambda *a: None, cfg.width) if cfg.importance else None
    t0 = time.perf_counter()
    ws = warm_start(model, scene, steps=cfg.warm_steps, seed=cfg.seed, importance=imp)
    seconds = time.perf_counter() - t0
    slots = assign_slots(model, scene, imp)  # the slots the warm start fitted
    own, source_colours = [], []
    with torch.no_grad():
        for cam in cams:
            centre = torch.as_tensor(cam.center, dtype=torch.float32)
            out, valid = model.slots(centre), slots.valid
            args = (out.means[valid], out.quats[valid], out.log_scales[valid].exp(), out.opacity[valid].clamp_min(0))
            view = (torch.as_tensor(cam.viewmat, dtype=torch.float32), torch.as_tensor(cam.K, dtype=torch.float32),
                    cam.width, cam.height)
            for colours, into in ((out.colors[valid], own),
                                  (_sh_colors(slots.sh[valid], slots.means[valid] - centre), source_colours)):
                img, _ = rasterize(*args, colours, *view)
                into.append(img.clamp(0, 1).numpy())
    return {"anchors": model.num_anchors, "unplaced": ws.unplaced, "warm_seconds": round(seconds, 1),
            "warm_steps": len(ws.losses["total"]), "model": scores(refs, own),
            "source_colours": scores(refs, source_colours)}


def train_and_compress(path: Path, cams, refs, cfg: FitConfig, lambdas: list[float], tmp: Path) -> dict:
    from hemgs.pipeline import compress_model, decode_file, train

    t0 = time.perf_counter()
    fitted = train(str(path), tmp / "model.safetensors", cfg)
    seconds = time.perf_counter() - t0
    rec = {"anchors": fitted.model.num_anchors, "train_seconds": round(seconds, 1),
           "stage_seconds": {k: round(fitted.history[k], 1) for k in
                             ("teacher_seconds", "warm_seconds", "render_seconds", "refine_seconds")
                             if k in fitted.history},
           "unquantized": scores(refs, render_views_anchor(fitted.model, cams)), "files": []}
    for lam in lambdas:
        out = tmp / f"lam{lam:g}.hgs"
        rep = compress_model(fitted.model, fitted.entropy, out, lam=lam)
        decoded = decode_file(str(out))
        draw = decoded.renderer(torch.device("cpu"))
        rec["files"].append({"lambda": lam, "bytes": rep["bytes"], "compress_seconds": round(rep["seconds"], 1),
                             "sections": rep["sections"], **scores(refs, [draw(c) for c in cams])})
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", nargs="+", default=["playbot_lod3"])
    ap.add_argument("--lambdas", nargs="+", type=float, default=[FitConfig.lam])
    ap.add_argument("--set", default="{}", help="FitConfig fields over the defaults, as JSON")
    ap.add_argument("--warm-only", action="store_true", help="measure the warm start alone")
    ap.add_argument("--label", default="", help="a name for this run in the records")
    args = ap.parse_args()
    threads = int(os.environ.get("HEMGS_THREADS", "2"))
    set_threads(threads)
    overrides = json.loads(args.set)
    records = json.loads(OUT.read_text()) if OUT.exists() else []
    for name in args.scenes:
        path = scene_path(name)
        scene, _ = sanitize(load_scene(str(path)))
        cams = evaluation_views(scene, n=16, width=256)
        refs = [render(scene, c) for c in cams]
        cfg = FitConfig(**overrides)
        rec = {"scene": name, "label": args.label, "kind": "warm_only" if args.warm_only else "train_compress",
               "set": overrides, "config": {k: v for k, v in asdict(cfg).items() if k != "lambdas"},
               "threads": threads, "machine": cpu_name(),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        if args.warm_only:
            rec.update(warm_only(scene, cams, refs, cfg))
        else:
            with tempfile.TemporaryDirectory() as tmp:
                rec.update(train_and_compress(path, cams, refs, cfg, args.lambdas, Path(tmp)))
        print(json.dumps(rec), flush=True)
        records.append(rec)
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps(records, indent=1) + "\n")


if __name__ == "__main__":
    main()
