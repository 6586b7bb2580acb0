"""`hemgs demo`: the main job on one scene, shown side by side.

A summary and a render of the source; direct mode (the default path) at its default λ and at its
smallest; anchor mode (train, then compress). Each file is decoded and measured on the same
evaluation views over the whole sphere, then a table and `compare.png` (the pictures side by side).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from .modes import DIRECT_LAMBDA_DEFAULT
from .progress import Reporter
from .service import evaluate, load_scene_checked, save_png
from .text import eval_lines, human_bytes, info_lines, say, sizes_lines

SMALL_LAMBDA = 16.0  # the demo's second direct file: direct mode's smallest, near the anchor file's size
VIEWS = 16


def run(file: str, output: str, device, *, steps: int | None = None, warm_steps: int | None = None) -> list[tuple]:
    """Run the demo on `file` into the folder `output`; rows (mode, λ, path, eval result, seconds)."""
    import numpy as np

    from .cameras import evaluation_views, scene_views
    from .fit import FitConfig
    from .pipeline import compress_direct, compress_model, encode_direct, train
    from .render import render

    scene = load_scene_checked(file)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    source_bytes = os.path.getsize(file)
    say(info_lines({"file": file, "format": "ply", "bytes": source_bytes, **scene.summary()}))
    cam = scene_views(scene, file, n=VIEWS, width=512, height=512)[0]
    t0 = time.perf_counter()
    pictures = {"source": render(scene, cam, device=device)}
    save_png(pictures["source"], str(out / "source.png"))
    print(f"rendered {out / 'source.png'} (512x512) in {time.perf_counter() - t0:.2f} s on {device.type}")
    cams = evaluation_views(scene, n=VIEWS, width=256)
    refs = [render(scene, c, device=device) for c in cams]  # one set of references for every file
    rows: list[tuple] = []

    def measure(mode: str, lam: float, path: Path, seconds: float, decoded) -> None:
        res = evaluate(file, str(path), cams, device, refs=refs)
        say(eval_lines(res, cams[0].width, cams[0].height))
        pictures[path.stem] = decoded.renderer(device)(cam)
        save_png(pictures[path.stem], str(out / f"decoded_{path.stem}.png"))
        rows.append((mode, lam, path, res, seconds))

    print(f"\ndirect mode (the default): fit the scene's own Gaussians, code at λ={DIRECT_LAMBDA_DEFAULT:g}")
    t0 = time.perf_counter()
    with Reporter() as stages:
        report = compress_direct(file, out / "direct.hgs", lam=DIRECT_LAMBDA_DEFAULT, stages=stages)
    measure("direct", DIRECT_LAMBDA_DEFAULT, out / "direct.hgs", time.perf_counter() - t0, report["decoded"])
    t0 = time.perf_counter()
    with Reporter() as stages:
        small = encode_direct(report["fitted"], out / "direct_small.hgs", lam=SMALL_LAMBDA, progress=stages)
    measure("direct", SMALL_LAMBDA, out / "direct_small.hgs", time.perf_counter() - t0, small["decoded"])

    print("\nanchor mode (the paper's method): train an anchor model, then code it")
    cfg = FitConfig(warm_steps=warm_steps)  # hemgs train's defaults: what a user gets
    if steps is not None:
        cfg.steps = steps
    t0 = time.perf_counter()
    with Reporter() as stages:
        fitted = train(file, out / "model.safetensors", cfg, progress=stages, device=device)
    print(f"trained {out / 'model.safetensors'} in {time.perf_counter() - t0:.0f} s "
          f"({fitted.model.num_anchors:,} anchors)")
    with Reporter() as stages:
        report = compress_model(fitted.model, fitted.entropy, out / "anchor.hgs", lam=cfg.lam, progress=stages)
    say(sizes_lines(report, source_bytes))
    measure("anchor", cfg.lam, out / "anchor.hgs", time.perf_counter() - t0, report["decoded"])

    gap = np.ones((pictures["source"].shape[0], 8, 3), dtype=np.float32)
    strip = [pictures["source"], *(pictures[p.stem] for _, _, p, _, _ in rows)]
    save_png(np.concatenate([x for pic in strip for x in (pic, gap)][:-1], axis=1), str(out / "compare.png"))
    print(f"\n{out / 'compare.png'}: left to right the source, " + ", ".join(
        f"{m} λ={lam:g}" for m, lam, _, _, _ in rows))
    say(table_lines(rows, source_bytes))
    return rows


def table_lines(rows: list[tuple], source_bytes: int) -> list[str]:
    w = max(len(str(p)) for _, _, p, _, _ in rows)
    out = [f"\n{'mode':<7} {'λ':>6}  {'file':<{w}} {'size':>10} {'ratio':>7}  PSNR: mean / of mean MSE / worst view"
           "   time"]
    for mode, lam, path, res, seconds in rows:
        out.append(f"{mode:<7} {lam:>6g}  {str(path):<{w}} {human_bytes(res['other_bytes']):>10} "
                   f"{source_bytes / max(res['other_bytes'], 1):>6.1f}x  {res['psnr']:6.2f} / "
                   f"{res['psnr_of_mean_mse']:6.2f} / {res['worst_psnr']:6.2f} dB   {seconds:.0f} s")
    return out
