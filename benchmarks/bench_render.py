"""Render timings of the CPU tile rasterizer (and gsplat where CUDA exists).

Two targets from the project plan, on the CPU with HEMGS_THREADS threads (default 2):
  1. inference: playbot_lod2.ply (125k Gaussians) at 256x256, forward only, <= 2 s per view;
  2. training: 10k Gaussians of it at 128x128, forward + backward, <= 0.5 s per step.
Also reports intersections per view and peak memory growth (ru_maxrss) for 1M Gaussians at
512x512 when --large is given (the scene repeated with jitter; it checks bounded memory).

Usage: HEMGS_THREADS=2 python benchmarks/bench_render.py [--views 4] [--large]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "backend"))

from hemgs.cameras import sample_views  # noqa: E402
from hemgs.device import set_threads  # noqa: E402
from hemgs.io import load_scene  # noqa: E402
from hemgs.render import rasterize  # noqa: E402
from hemgs.render.project import project  # noqa: E402
from hemgs.render.tiles import tile_intersections  # noqa: E402

DATA = REPO.parent / "shared" / "data"


def tensors(scene, grad=False):
    t = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    out = [t(scene.means), t(scene.quats), t(scene.log_scales).exp(), torch.sigmoid(t(scene.opacity_logits)),
           t(scene.sh)]
    return [x.requires_grad_(grad) for x in out]


def cam_args(cam):
    return torch.tensor(cam.viewmat, dtype=torch.float32), torch.tensor(cam.K, dtype=torch.float32)


def bench_inference(scene, views, size, backend="tiles"):
    cams = sample_views(scene, n=views, width=size, height=size)
    args = tensors(scene)
    times, isects = [], []
    with torch.no_grad():
        for cam in cams:
            V, K = cam_args(cam)
            p = project(*args[:4], V, K, size, size)
            isects.append(int(tile_intersections(p.means2d, p.radii, p.depths, size, size)[0].numel()))
            t0 = time.perf_counter()
            rasterize(*args, V, K, size, size, sh_degree=scene.sh_degree, backend=backend)
            times.append(time.perf_counter() - t0)
    return times, isects


def bench_training(scene, steps, size):
    cams = sample_views(scene, n=steps, width=size, height=size, seed=1)
    args = tensors(scene, grad=True)
    times = []
    for cam in cams:
        V, K = cam_args(cam)
        t0 = time.perf_counter()
        img, alpha = rasterize(*args, V, K, size, size, sh_degree=scene.sh_degree)
        (img.mean() + alpha.mean()).backward()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--large", action="store_true", help="also 1M Gaussians at 512x512 (slow)")
    opts = ap.parse_args()
    os.environ.setdefault("HEMGS_THREADS", "2")
    threads = set_threads()
    scene = load_scene(DATA / "playbot_lod2.ply")
    lines: list[str] = []

    def say(text: str) -> None:  # printed, and kept for docs/benchmarks/render.md
        print(text, flush=True)
        lines.append(f"- {text}")

    say(f"torch {torch.__version__}, {threads} thread(s), {platform.machine()}, {os.cpu_count()} cores, "
        f"load average before the run {os.getloadavg()[0]:.2f}")

    times, isects = bench_inference(scene, opts.views, 256)
    say(f"inference 125k @256^2: median {np.median(times):.3f} s/view (min {min(times):.3f}, max {max(times):.3f}),"
          f" {int(np.mean(isects))} intersections/view  [target <= 2 s]")

    sub = scene.subset(np.random.default_rng(0).choice(len(scene), 10_000, replace=False))
    times = bench_training(sub, opts.views + 1, 128)[1:]  # the first step warms up
    say(f"training 10k @128^2 fwd+bwd: median {np.median(times):.3f} s/step [target <= 0.5 s]")

    if opts.large:
        rng = np.random.default_rng(0)
        reps = 8
        big = type(scene)(
            np.concatenate([scene.means + rng.normal(0, 0.01, scene.means.shape) for _ in range(reps)]),
            np.tile(scene.quats, (reps, 1)), np.tile(scene.log_scales, (reps, 1)),
            np.tile(scene.opacity_logits, reps), np.tile(scene.sh, (reps, 1, 1)))
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        times, isects = bench_inference(big, 1, 512)
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        say(f"inference {len(big)} @512^2: {times[0]:.2f} s, {isects[0]} intersections, "
              f"peak RSS grew {(rss1 - rss0) / 1024:.0f} MiB")

    if torch.cuda.is_available():
        t = [x.cuda() for x in tensors(scene)]
        cam = sample_views(scene, n=1, width=256, height=256)[0]
        V, K = (x.cuda() for x in cam_args(cam))
        rasterize(*t, V, K, 256, 256, sh_degree=scene.sh_degree, backend="gsplat")
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(10):
            rasterize(*t, V, K, 256, 256, sh_degree=scene.sh_degree, backend="gsplat")
        torch.cuda.synchronize()
        say(f"gsplat CUDA 125k @256^2: {(time.perf_counter() - t0) / 10 * 1000:.2f} ms/view")

    out = REPO / "docs" / "benchmarks" / "render.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# Render benchmark\n\nWritten by `benchmarks/bench_render.py` "
                   f"(`--views {opts.views}{' --large' if opts.large else ''}`), playbot_lod2.ply, "
                   "CPU tile rasterizer unless noted.\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
