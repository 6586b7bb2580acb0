"""Pre-training of the scene-agnostic point network (`hemgs pretrain`).

Objective (self-supervised from the 3DGS data itself; docs/scene-agnostic.md says why): from an
anchor's neighbourhood geometry alone, predict statistics of the source Gaussians that fall in its
voxel — how many, their mean log-scale and anisotropy, opacity, where they sit in the voxel
(centroid and covariance, in voxel units: what Scaffold-GS offsets and scalings encode) and their
mean colour. A linear head on the D=32 feature does the prediction and is thrown away, so the
feature itself must carry the information linearly, as the entropy model's fusion MLP will use it.

Data: each scene voxelized at several voxel sizes (given as Gaussians per anchor) and random
rotations (the feature must not learn one scene's up axis). The seed fixes everything.

torch is imported inside the functions, so the CLI can build its parser (`add_arguments`) without it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .anchor.voxelize import choose_voxel_size, voxelize
from .errors import HemgsError, InputError
from .scene import SH_C0, GaussianScene

if TYPE_CHECKING:
    from .entropy.pointnet import PointNetConfig, PointNetSA

TARGETS = ("log_count", "log_scale", "anisotropy", "opacity", "cx", "cy", "cz",
           "cov_xx", "cov_yy", "cov_zz", "cov_xy", "cov_xz", "cov_yz", "red", "green", "blue")
OBJECTIVE = ("predict per-anchor statistics of the source Gaussians in the voxel from the neighbourhood "
             "geometry (linear head, MSE on standardized targets): " + ", ".join(TARGETS))


def read_scene(path) -> GaussianScene:
    """A PLY or SPZ scene by extension."""
    from .io.ply import read_ply
    from .io.spz import read_spz

    path = Path(path)
    if path.suffix.lower() == ".spz":
        return read_spz(path)
    if path.suffix.lower() == ".ply":
        return read_ply(path)
    raise InputError(f"{path}: pre-training reads .ply or .spz scenes")


def anchor_targets(scene: GaussianScene, rotation: np.ndarray, voxel_size: float):
    """Voxelize the rotated scene; return (coords (M,3) int64, targets (M, len(TARGETS)) float64)."""
    means = scene.means.astype(np.float64) @ rotation.T
    coords, origin, a = voxelize(means, voxel_size)
    m = coords.shape[0]
    count = np.bincount(a, minlength=m).astype(np.float64)

    def mean(v):  # per-anchor mean of per-Gaussian values (N,) or (N, C)
        v = v.reshape(v.shape[0], -1)
        return np.stack([np.bincount(a, v[:, j], minlength=m) for j in range(v.shape[1])], 1) / count[:, None]

    # Positions relative to the voxel centre, in voxel units: scale-free, in [-0.5, 0.5].
    rel = (means - origin) / voxel_size - (coords[a] + 0.5)
    c = mean(rel)
    second = mean(np.stack([rel[:, 0] ** 2, rel[:, 1] ** 2, rel[:, 2] ** 2,
                            rel[:, 0] * rel[:, 1], rel[:, 0] * rel[:, 2], rel[:, 1] * rel[:, 2]], 1))
    outer = np.stack([c[:, 0] ** 2, c[:, 1] ** 2, c[:, 2] ** 2, c[:, 0] * c[:, 1], c[:, 0] * c[:, 2], c[:, 1] * c[:, 2]], 1)
    ls = scene.log_scales.astype(np.float64)
    t = np.concatenate([
        np.log(count)[:, None],
        mean(ls.mean(1) - np.log(voxel_size)),  # rotation-invariant: log of the volume, per axis
        mean(ls.max(1) - ls.min(1)),
        mean(1.0 / (1.0 + np.exp(-scene.opacity_logits.astype(np.float64)))),
        c, second - outer,
        mean(SH_C0 * scene.sh[:, 0].astype(np.float64) + 0.5),
    ], axis=1)
    return coords, t


def _rotation(rng: np.random.Generator, identity: bool) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return np.eye(3) if identity else Rotation.random(random_state=rng).as_matrix()


def build_samples(paths, ratios, rotations: int, cfg: PointNetConfig, rng, log=print):
    """Neighbourhood offsets (M, slots, 3) int16 and targets (M, T) of every scene x size x rotation."""
    from .entropy.pointnet import neighbourhood_offsets

    offs, tgts = [], []
    for path in paths:
        scene = read_scene(path)
        for ratio in ratios:
            v = choose_voxel_size(scene, ratio)
            for r in range(rotations):
                coords, t = anchor_targets(scene, _rotation(rng, r == 0), v)
                offs.append(neighbourhood_offsets(coords, cfg).astype(np.int16))  # |offset| <= r2 <= 100
                tgts.append(t)
            log(f"  {Path(path).name}: {ratio:g} Gaussians/anchor, {rotations} rotations, {coords.shape[0]} anchors each")
    return np.concatenate(offs), np.concatenate(tgts)


def train(offsets: np.ndarray, targets: np.ndarray, cfg: PointNetConfig, *, steps: int, batch: int, seed: int,
          lr: float = 3e-3, log=print) -> PointNetSA:
    """Fit the network plus a linear head (discarded) to the standardized targets."""
    import torch

    from .entropy.pointnet import PointNetSA

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = PointNetSA(cfg)
    head = torch.nn.Linear(cfg.out_dim, targets.shape[1])
    mu, sd = targets.mean(0), targets.std(0) + 1e-8
    x_all = torch.from_numpy(offsets)
    y_all = torch.from_numpy(((targets - mu) / sd).astype(np.float32))
    params = list(net.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    n = x_all.shape[0]
    for step in range(1, steps + 1):
        idx = torch.randint(0, n, (batch,), generator=gen)
        loss = torch.nn.functional.mse_loss(head(net(x_all[idx].to(torch.float32))), y_all[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % max(1, steps // 10) == 0 or step == steps:
            log(f"  step {step}/{steps}: loss {loss.item():.4f} (1.0 = predicting the mean)")
    return net.eval()


# ---- the probe: does the frozen feature help predict anchor attributes? -----------------------------
def _r2(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    return 1.0 - ((pred - y) ** 2).sum(0) / (((y - y.mean(0)) ** 2).sum(0) + 1e-12)


def _linear_probe(xtr, ytr, xte, ridge: float = 1e-3):
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-9
    a = np.hstack([(xtr - mu) / sd, np.ones((len(xtr), 1))])
    b = np.hstack([(xte - mu) / sd, np.ones((len(xte), 1))])
    w = np.linalg.solve(a.T @ a + ridge * len(a) * np.eye(a.shape[1]), a.T @ ytr)
    return b @ w


def _mlp_probe(xtr, ytr, xte, seed: int, steps: int = 400, hidden: int = 64):
    import torch

    torch.manual_seed(seed)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-9
    xt = torch.tensor((xtr - mu) / sd, dtype=torch.float32)
    yt = torch.tensor(ytr, dtype=torch.float32)
    mlp = torch.nn.Sequential(torch.nn.Linear(xt.shape[1], hidden), torch.nn.ReLU(),
                              torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, yt.shape[1]))
    opt = torch.optim.Adam(mlp.parameters(), lr=3e-3)
    for _ in range(steps):  # full batch: the probe is small
        loss = torch.nn.functional.mse_loss(mlp(xt), yt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return mlp(torch.tensor((xte - mu) / sd, dtype=torch.float32)).double().numpy()


def probe(path, weights=None, *, ratio: float = 4.0, seed: int = 0, mlp_steps: int = 400) -> dict:
    """R² on held-out anchors (random half) of probes from coordinates / features to the targets.

    Inputs compared: the anchor's voxel coordinates (what a scene-specific model sees), features of
    the same network with random weights, the pre-trained features, and features + coordinates."""
    import torch

    from .entropy.pointnet import PointNetSA, load_scene_agnostic

    scene = read_scene(path)
    coords, t = anchor_targets(scene, np.eye(3), choose_voxel_size(scene, ratio))
    prior = load_scene_agnostic(weights)
    feats = prior.features(coords).numpy()
    torch.manual_seed(seed)
    rand = PointNetSA(prior.config).eval()
    rand_prior = type(prior)(rand, "random", {})
    inputs = {"coords": coords.astype(np.float64), "random_net": rand_prior.features(coords).numpy(),
              "pretrained": feats, "pretrained+coords": np.hstack([feats, coords])}
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(coords))
    tr, te = perm[: len(perm) // 2], perm[len(perm) // 2:]
    mu, sd = t[tr].mean(0), t[tr].std(0) + 1e-9
    y = (t - mu) / sd
    out = {"scene": Path(path).name, "anchors": int(len(coords)), "gaussians_per_anchor": ratio, "targets": list(TARGETS),
           "weights_id": prior.id, "linear": {}, "mlp": {}}
    for name, x in inputs.items():
        for kind, fn in (("linear", lambda a, b, c: _linear_probe(a, b, c)),
                         ("mlp", lambda a, b, c: _mlp_probe(a, b, c, seed, mlp_steps))):
            r2 = _r2(fn(x[tr], y[tr], x[te]), y[te])
            out[kind][name] = {"mean_r2": float(r2.mean()), "per_target": [round(float(v), 4) for v in r2]}
    return out


def _sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _parse_ratios(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--ratios must be numbers separated by commas, got {text!r}") from None
    if not vals or any(not np.isfinite(v) or v < 1 for v in vals):
        raise InputError(f"--ratios must be Gaussians per anchor >= 1, got {text!r}")
    return vals


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `hemgs pretrain` (no --threads: the hemgs CLI's common options bring it)."""
    p.add_argument("--data", action="append", required=True, help="a training scene (.ply/.spz); repeat for more")
    p.add_argument("--holdout", action="append", default=[], help="a held-out scene to probe the feature on")
    p.add_argument("-o", "--output", required=True, help="weights file to write (.safetensors)")
    p.add_argument("--report", default=None, help="also write the run's figures as JSON here")
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ratios", default="2,4,8", help="voxel sizes as Gaussians per anchor (default 2,4,8)")
    p.add_argument("--rotations", type=int, default=3, help="voxelizations per size: identity + random rotations")
    p.add_argument("--probe-steps", type=int, default=400, help="training steps of the MLP probe")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hemgs pretrain",
                                description="Pre-train the scene-agnostic point network on 3DGS scenes (PLY/SPZ).")
    add_arguments(p)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: HEMGS_THREADS or 1)")
    return p


def main(argv: list[str] | None = None) -> int:
    """`hemgs pretrain ...` as a stand-alone entry: parse `argv`, then `run`."""
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Build the data, train, write the weights (atomically), probe held-out scenes; returns 0.

    Raises HemgsError subclasses for bad input (the hemgs CLI prints them as one line)."""
    import torch

    from .entropy.pointnet import PointNetConfig, save_weights

    if args.steps < 1 or args.batch < 1 or args.rotations < 1 or args.probe_steps < 0:
        raise InputError("--steps, --batch and --rotations must be >= 1 (--probe-steps >= 0)")
    env = os.environ.get("HEMGS_THREADS", "1")
    threads = getattr(args, "threads", None)
    threads = threads if threads is not None else (int(env) if env.isdigit() else 1)
    if threads < 1:
        raise InputError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    ratios = _parse_ratios(args.ratios)
    out = Path(args.output)
    if not out.parent.is_dir():
        raise InputError(f"output folder does not exist: {out.parent}")
    for path in [*args.data, *args.holdout]:
        if not Path(path).is_file():
            raise InputError(f"scene not found: {path}")
    cfg = PointNetConfig()
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    print(f"building samples from {len(args.data)} scene(s)")
    offsets, targets = build_samples(args.data, ratios, args.rotations, cfg, rng)
    t_data = time.perf_counter() - t0
    print(f"{len(offsets)} anchors in {t_data:.1f} s; training {args.steps} steps of {args.batch}")
    net = train(offsets, targets, cfg, steps=args.steps, batch=args.batch, seed=args.seed)
    t_total = time.perf_counter() - t0
    info = {"objective": OBJECTIVE, "data": [{"file": Path(d).name, "sha256": _sha256(d)} for d in args.data],
            "ratios": ratios, "rotations": args.rotations, "steps": args.steps, "batch": args.batch, "seed": args.seed}
    wid = save_weights(net, out, info)
    print(f"wrote {out} (id {wid}, {out.stat().st_size} bytes) after {t_total:.1f} s "
          f"(data {t_data:.1f} s, training {t_total - t_data:.1f} s)")
    report = {"weights_id": wid, "sha256": _sha256(out), "seconds": {"data": t_data, "total": t_total},
              "anchors": int(len(offsets)), **info, "probes": []}
    for h in args.holdout:
        res = probe(h, out, seed=args.seed, mlp_steps=args.probe_steps)
        report["probes"].append(res)
        for kind in ("linear", "mlp"):
            line = ", ".join(f"{k} {v['mean_r2']:.3f}" for k, v in res[kind].items())
            print(f"probe on {res['scene']} ({res['anchors']} anchors), {kind}: mean R² {line}")
    if args.report:
        from .io.atomic import write_bytes_atomic

        write_bytes_atomic(args.report, json.dumps(report, indent=1).encode())
    return 0


if __name__ == "__main__":  # python -m hemgs.pretrain: the same one-line errors as the hemgs CLI
    try:
        sys.exit(main())
    except HemgsError as exc:
        print(f"hemgs pretrain: error: {' '.join(str(exc).split())}", file=sys.stderr)
        sys.exit(2)
