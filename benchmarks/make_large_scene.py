"""Reproducible large 3DGS scenes at SH degree 3, for the scaling benchmark (issue #24 item 1).

Built from the shared CC-BY / MIT scenes in ../shared/data (see its README.md for sources and
licences): playbot_lod2.ply ("PLAYBOT" by Stephane Agullo, https://sa3d.fr, CC-BY-4.0; 125,000
Gaussians, SH degree 2) and biker.spz (PlayCanvas, MIT; 152,746 Gaussians, SH degree 0). The data
was changed as follows, all from one seed (`--seed`, default 0), so the same command writes the same
scene on every machine with the same numpy:

- The output is a set of tiles laid on a square grid in the x–z plane (both sources are y-down
  scenes, so the grid is their ground plane), each tile one whole copy of a source scene; sources
  alternate playbot, biker, playbot, ... The last tile is cut to reach exactly `--gaussians`
  (its first Gaussians in file order).
- Every tile, the first included, is jittered so that no two Gaussians are exact repeats:
  positions by N(0, (0.25·s)²) per axis, s being the Gaussian's own mean scale; orientations by a
  random rotation of angle N(0, 0.05²) rad about a random axis; log-scales by N(0, 0.02²); opacity
  logits by N(0, 0.05²); the DC colour coefficients by N(0, 0.02²); the SH bands the source has
  by N(0, 0.005²).
- **SH degree raised to 3**: the bands a source lacks (playbot: band 3; biker: bands 1–3) are not
  real data: they are filled with small seeded noise, N(0, `--band-noise`²) (default 0.03; the
  playbot's real rest coefficients average 0.13 in absolute value). A codec sees them as genuine
  but low-energy view-dependent colour. Measure rate–distortion on real scenes, not these; they
  exist to measure time and memory at scale.

Usage:
    python benchmarks/make_large_scene.py --gaussians 1000000 --out benchmarks/large/large_1M.ply
Written through hemgs.io.save_scene (atomic). benchmarks/large/ is git-ignored: never commit
generated scenes.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "backend"))

import numpy as np  # noqa: E402

from hemgs.io import load_scene, save_scene  # noqa: E402
from hemgs.scene import GaussianScene  # noqa: E402

DATA = REPO.parent / "shared" / "data"
SOURCES = ("playbot_lod2.ply", "biker.spz")
SH_K = 16  # coefficients per channel at SH degree 3


def _quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of wxyz quaternions, row by row."""
    aw, ax, ay, az = a.T
    bw, bx, by, bz = b.T
    return np.stack([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ], axis=1)


def _small_rotations(rng: np.random.Generator, n: int, angle_std: float) -> np.ndarray:
    axis = rng.standard_normal((n, 3))
    axis /= np.maximum(np.linalg.norm(axis, axis=1, keepdims=True), 1e-12)
    half = 0.5 * rng.normal(0.0, angle_std, n)
    return np.concatenate([np.cos(half)[:, None], np.sin(half)[:, None] * axis], axis=1)


def make_scene(n_total: int, seed: int = 0, band_noise: float = 0.03,
               data: Path = DATA) -> GaussianScene:
    sources = [load_scene(data / name) for name in SOURCES]
    rng = np.random.default_rng(seed)
    # Grid cell: the largest x–z extent of any source, plus a 10% gap.
    cell = 1.1 * max(float(np.ptp(s.means[:, [0, 2]], axis=0).max()) for s in sources)
    counts = []
    left, i = n_total, 0
    while left > 0:
        take = min(left, len(sources[i % len(sources)]))
        counts.append(take)
        left -= take
        i += 1
    side = math.ceil(math.sqrt(len(counts)))

    means = np.empty((n_total, 3), np.float32)
    quats = np.empty((n_total, 4), np.float32)
    log_scales = np.empty((n_total, 3), np.float32)
    opac = np.empty((n_total,), np.float32)
    sh = np.empty((n_total, SH_K, 3), np.float32)
    at = 0
    for t, take in enumerate(counts):
        src = sources[t % len(sources)]
        sl = slice(at, at + take)
        centre = src.means[:take].mean(axis=0) * np.array([1, 0, 1])
        offset = np.array([(t % side) * cell, 0.0, (t // side) * cell]) - centre
        own = np.exp(src.log_scales[:take].astype(np.float64)).mean(axis=1, keepdims=True)
        means[sl] = src.means[:take] + offset + rng.normal(0.0, 1.0, (take, 3)) * 0.25 * own
        q = _quat_mul(src.quats[:take].astype(np.float64), _small_rotations(rng, take, 0.05))
        quats[sl] = q / np.linalg.norm(q, axis=1, keepdims=True)
        log_scales[sl] = src.log_scales[:take] + rng.normal(0.0, 0.02, (take, 3))
        opac[sl] = src.opacity_logits[:take] + rng.normal(0.0, 0.05, take)
        k = src.sh.shape[1]
        sh[sl, 0] = src.sh[:take, 0] + rng.normal(0.0, 0.02, (take, 3))
        if k > 1:
            sh[sl, 1:k] = src.sh[:take, 1:k] + rng.normal(0.0, 0.005, (take, k - 1, 3))
        sh[sl, k:] = rng.normal(0.0, band_noise, (take, SH_K - k, 3))
        at += take
    return GaussianScene(means, quats, log_scales, opac, sh,
                         meta={"generator": "benchmarks/make_large_scene.py", "seed": seed,
                               "tiles": len(counts), "band_noise": band_noise})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gaussians", type=int, required=True, help="Gaussians in the output")
    ap.add_argument("--out", type=Path, required=True, help="output .ply (or .spz), in an ignored folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--band-noise", type=float, default=0.03,
                    help="std of the noise that fills SH bands a source lacks (default 0.03)")
    ap.add_argument("--data", type=Path, default=DATA, help="folder holding the shared scenes")
    args = ap.parse_args(argv)
    if args.gaussians < 1:
        ap.error("--gaussians must be at least 1")
    missing = [n for n in SOURCES if not (args.data / n).is_file()]
    if missing:
        print(f"make_large_scene: {', '.join(missing)} not found in {args.data}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    scene = make_scene(args.gaussians, args.seed, args.band_noise, args.data)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_scene(scene, args.out)
    print(f"{args.out}: {len(scene):,} Gaussians, SH degree {scene.sh_degree}, "
          f"{scene.meta['tiles']} tiles, {args.out.stat().st_size / 2**20:.1f} MiB, "
          f"{time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
