"""HEMGS benchmark: one variable-rate model's λ sweep, its ablations, and BD-rate against HAC mode.

Runs (each a training on the same scene, views and budget as benchmarks/bench_anchor_codec.py):
  full           HEMGS, variable rate over λ 1e-3..4e-3: a 16-point λ sweep from ONE model
  no_sa, no_ar, no_acs   the same without the scene-agnostic prior / the AR context / ACS (5^3 field)
  fixed_<λ>      fixed-rate HEMGS models, one per λ (the paper's "w/o variable-rate", Fig. 4)
Each file is decoded from disk and its renders compared with the source's on the held-out views.
HAC-mode points come from docs/benchmarks/anchor_codec.json (bench_anchor_codec.py).

Usage:
    HEMGS_THREADS=2 python benchmarks/bench_hemgs.py --scene playbot_lod3 --runs full no_sa no_ar no_acs
    HEMGS_THREADS=2 python benchmarks/bench_hemgs.py --report       # tables from the JSON only
    HEMGS_THREADS=2 python benchmarks/bench_hemgs.py --scene playbot_lod2 --decode-timing
Writes docs/benchmarks/hemgs.json (runs keyed by scene and run name) and docs/benchmarks/hemgs.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "backend"))
sys.path.insert(0, str(REPO / "benchmarks"))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from hemgs.codec.hemgs_codec import decode, encode  # noqa: E402
from hemgs.container import read_hgs, write_hgs  # noqa: E402
from hemgs.device import set_threads  # noqa: E402
from hemgs.entropy.hemgs import LAMBDAS  # noqa: E402
from hemgs.fit import FitConfig, fit, render_views_anchor, scene_agnostic_prior  # noqa: E402
from hemgs.io import load_scene  # noqa: E402
from hemgs.metrics import compare_images  # noqa: E402
from hemgs.render import render  # noqa: E402
from hemgs.scene import sanitize  # noqa: E402

OUT = REPO / "docs" / "benchmarks"
SWEEP = [float(v) for v in np.geomspace(1e-3, 4e-3, 16)]
RUNS = {
    "full": {},
    "no_sa": {"scene_agnostic": False},
    "no_ar": {"ar": False},
    "no_acs": {"acs": False},
}
FIXED = list(LAMBDAS)  # the ablations code at the training λ


def scene_path(name: str) -> Path:
    for cand in (REPO.parent / "shared" / "data" / f"{name}.ply", REPO.parent / "shared" / "data" / f"{name}.spz",
                 REPO / "data" / "demo" / f"{name}.ply"):
        if cand.exists():
            return cand
    raise SystemExit(f"no scene {name}")


def measure(fitted, scene, lam: float, path: Path, refs) -> dict:
    sa = scene_agnostic_prior() if fitted.entropy.cfg.scene_agnostic else None
    t0 = time.perf_counter()
    header, sections, _ = encode(fitted.model, fitted.entropy, sa, lam=lam)
    write_hgs(path, header, sections)
    enc = time.perf_counter() - t0
    t0 = time.perf_counter()
    f = read_hgs(path)
    dec = decode(f.header, f.sections)
    dec_s = time.perf_counter() - t0
    fid = compare_images(refs, render_views_anchor(dec.model, fitted.test_views))
    counts = dec.context_counts
    return {"lambda": lam, "bytes": path.stat().st_size, "sections": {k: len(v) for k, v in sections.items()},
            "psnr": fid["psnr"], "ssim": fid["ssim"], "encode_s": enc, "decode_s": dec_s, "path": str(path),
            "context_mean": float(counts[counts > 0].mean()) if counts is not None and (counts > 0).any() else 0.0,
            "context_max": int(counts.max()) if counts is not None and counts.size else 0}


def run(scene_name: str, run_name: str, args) -> dict:
    path = scene_path(scene_name)
    scene, _ = sanitize(load_scene(path))
    if run_name.startswith("fixed_"):
        lam = float(run_name[6:])
        cfg = FitConfig(lam=lam, variable_rate=False)
        lams = [lam]
    else:
        cfg = FitConfig(lam=1e-3, **RUNS[run_name])
        lams = SWEEP if run_name == "full" else FIXED
    cfg.width, cfg.steps, cfg.views = args.width, args.steps, args.views
    t0 = time.perf_counter()
    fitted = fit(scene, source_path=path, cfg=cfg)
    train_s = time.perf_counter() - t0
    refs = [render(scene, c) for c in fitted.test_views]
    points = []
    for lam in lams:
        points.append(measure(fitted, scene, lam, Path(args.tmp) / f"{scene_name}_{run_name}_{lam:.6g}.hgs", refs))
        print(json.dumps({k: v for k, v in points[-1].items() if k != "sections"}), flush=True)
    return {"scene": scene_name, "run": run_name, "train_s": train_s, "anchors": fitted.model.num_anchors,
            "source_bytes": path.stat().st_size, "points": points, "threads": torch.get_num_threads(),
            "config": {"width": cfg.width, "steps": cfg.steps, "views": cfg.views, "warm_steps": cfg.warm_steps}}


def decode_timing(scene_name: str, args) -> dict:
    """Decode time of a full-size scene (AR included): a briefly trained model is enough, the
    decoder's work depends on the anchor count and the networks, not on training quality."""
    path = scene_path(scene_name)
    scene, _ = sanitize(load_scene(path))
    cfg = FitConfig(lam=2e-3, width=64, steps=5, views=8)
    fitted = fit(scene, source_path=path, cfg=cfg)
    sa = scene_agnostic_prior()
    header, sections, _ = encode(fitted.model, fitted.entropy, sa, lam=2e-3)
    out = Path(args.tmp) / f"{scene_name}_decode_timing.hgs"
    write_hgs(out, header, sections)
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        f = read_hgs(out)
        dec = decode(f.header, f.sections)
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    from hemgs.anchor.bake import bake

    bake(dec.model, mode="sh_fit", sh_degree=1)
    return {"scene": scene_name, "run": "decode_timing", "anchors": int(header["anchors"]), "decode_s": min(times),
            "bake_s": time.perf_counter() - t0, "threads": torch.get_num_threads()}


def bd_rate(ref: list[tuple[float, float]], test: list[tuple[float, float]]) -> float | None:
    """Bjøntegaard delta rate (%) of test against ref, from (bytes, psnr) points."""
    try:
        from peers.bdrate import bd_rate as _bd
    except ImportError:
        return None
    try:
        return float(_bd([r for r, _ in ref], [p for _, p in ref], [r for r, _ in test], [p for _, p in test]))
    except Exception:  # no overlap, too few points: reported as unavailable
        return None


IMG = REPO / "docs" / "img"


def plot(scene: str, runs: dict, hac: list[dict]) -> str | None:
    """docs/img/hemgs_<scene>.png: the paper's Fig. 4 for our scene (one variable-rate model's
    sweep, the fixed-rate models, HAC mode) plus the ablations. Needs matplotlib (the peers
    benchmark's benchmarks/peers/setup.sh installs it into benchmarks/peers/.pydeps); None without."""
    sys.path.insert(0, str(REPO / "benchmarks" / "peers" / ".pydeps"))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.6), dpi=110)
    curves = [("HAC mode (one model per λ)", sorted((h["bytes"], h["psnr"]) for h in hac), "s-", 1.2)]
    if "full" in runs:
        curves.append(("HEMGS, one variable-rate model (16 λ)",
                       sorted((p["bytes"], p["psnr"]) for p in runs["full"]["points"]), "o-", 2.2))
    fixed = sorted((p["bytes"], p["psnr"]) for n, r in runs.items() if n.startswith("fixed_") for p in r["points"])
    if fixed:
        curves.append(("HEMGS, fixed-rate models (one per λ)", fixed, "D--", 1.2))
    for name, label in (("no_sa", "w/o scene-agnostic prior"), ("no_ar", "w/o AR context"), ("no_acs", "w/o ACS (5³)")):
        if name in runs:
            curves.append((label, sorted((p["bytes"], p["psnr"]) for p in runs[name]["points"]), "^:", 1.0))
    for label, pts, style, lw in curves:
        if pts:
            ax.plot([b for b, _ in pts], [q for _, q in pts], style, lw=lw, ms=4, label=label)
    ax.set_xlabel("file size (bytes)")
    ax.set_ylabel("PSNR vs source renders, fit's held-out views (dB)")
    ax.set_title(f"{scene}: HEMGS against HAC mode (300 CPU training steps)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    IMG.mkdir(parents=True, exist_ok=True)
    out = IMG / f"hemgs_{scene}.png"
    fig.savefig(out)
    plt.close(fig)
    return f"../img/{out.name}"


def _payload(p: dict) -> int:
    """A file's bytes without its networks and hash grid: what the entropy models' predictions cost."""
    return p["bytes"] - p["sections"]["networks"] - p["sections"]["grid"]


def _row(name: str, p: dict, ctx: str) -> str:
    """One line of the per-component table, for a HAC-mode record or a HEMGS point."""
    s, size = p["sections"], p["bytes"]
    nets = s["networks"] + s["grid"]
    other = size - nets - s["features"] - s["scaling"] - s["offsets"]
    return (f"| {name} | {p['lambda']:.3g} | {size:,} | {s['features']:,} | {s['scaling']:,} | {s['offsets']:,} "
            f"| {nets:,} | {other:,} | {p['psnr']:.2f} | {p['ssim']:.4f} | {p['encode_s']:.2f} | {p['decode_s']:.2f} "
            f"| {ctx} |")


def report(records: list[dict]) -> None:
    hac = []
    if (OUT / "anchor_codec.json").exists():
        hac = json.loads((OUT / "anchor_codec.json").read_text())
    lines = ["# HEMGS benchmark", "",
             "Written by `benchmarks/bench_hemgs.py`. Every point is a `.hgs` file decoded from disk; PSNR/SSIM",
             "of its renders against the source's on the held-out views of the fit (every 8th of the sampled",
             "views). `full` is ONE variable-rate model swept over 16 λ values; ablations are variable-rate",
             "models without one part, measured at λ 1e-3..4e-3; `fixed_λ` are fixed-rate HEMGS models.",
             "What these figures say, and what holds HEMGS back here: `docs/hemgs-results.md`.", ""]
    for scene in sorted({r["scene"] for r in records if r["run"] != "decode_timing"}):
        runs = {r["run"]: r for r in records if r["scene"] == scene and "points" in r}
        base = sorted(((h["bytes"], h["psnr"]) for h in hac if h["scene"] == scene), key=lambda t: t[0])
        hac_here = sorted((h for h in hac if h["scene"] == scene), key=lambda h: h["lambda"])
        lines += [f"## {scene}", "",
                  "Storage per component; `HAC` rows are HAC-mode models (one training per λ, "
                  "`bench_anchor_codec.py`); `other` is locations, mask and the stream framing.", "",
                  "| run | λ | size (bytes) | features | scaling | offsets | networks+grid | other | PSNR | SSIM | encode s | decode s | context mean/max |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        lines += [_row("HAC", h, "-") for h in hac_here]
        lines += [_row(name, p, f"{p['context_mean']:.1f}/{p['context_max']}") for name, r in runs.items()
                  for p in r["points"]]
        lines += ["", "BD-rate against HAC mode (negative = smaller files at the same PSNR); in brackets the same "
                  "without the networks and hash grid (what the entropy models' predictions alone earn):", ""]
        base_payload = sorted(((_payload(h), h["psnr"]) for h in hac_here), key=lambda t: t[0])
        for name, r in runs.items():
            pts = sorted(((p["bytes"], p["psnr"]) for p in r["points"]), key=lambda t: t[0])
            b = bd_rate(base, pts) if len(base) >= 4 and len(pts) >= 4 else None
            bp = (bd_rate(base_payload, sorted(((_payload(p), p["psnr"]) for p in r["points"]), key=lambda t: t[0]))
                  if b is not None else None)
            if b is None and name.startswith("fixed_"):
                continue  # one point each: taken together below
            lines.append(f"- {name}: " + (f"{b:+.1f}%" if b is not None else "n/a (curves do not overlap or too few points)")
                         + (f" ({bp:+.1f}% without networks and grid)" if bp is not None else ""))
        if "full" in runs:
            full = sorted((p["bytes"], p["psnr"]) for p in runs["full"]["points"])
            for name in ("no_sa", "no_ar", "no_acs"):
                if name in runs:
                    b = bd_rate(sorted((p["bytes"], p["psnr"]) for p in runs[name]["points"]), full)
                    lines.append(f"- full against {name} (negative: the part saves bytes; positive: full is larger): "
                                 + (f"{b:+.1f}%" if b is not None else "n/a (no PSNR overlap)"))
        fixed = sorted(((p["bytes"], p["psnr"]) for n, r in runs.items() if n.startswith("fixed_") for p in r["points"]))
        if len(fixed) >= 4 and len(base) >= 4:
            fixed_payload = sorted((_payload(p), p["psnr"]) for n, r in runs.items() if n.startswith("fixed_")
                                   for p in r["points"])
            b, bp = bd_rate(base, fixed), bd_rate(base_payload, fixed_payload)
            lines.append(f"- the {len(fixed)} fixed-rate HEMGS models as one curve: "
                         + (f"{b:+.1f}%" if b is not None else "n/a (no PSNR overlap)")
                         + (f" ({bp:+.1f}% without networks and grid)" if bp is not None else ""))
        if "full" in runs and len(fixed) >= 4:
            b = bd_rate(fixed, sorted((p["bytes"], p["psnr"]) for p in runs["full"]["points"]))
            lines.append(f"- full (one model) against the {len(fixed)} fixed-rate models: "
                         + (f"{b:+.1f}%" if b is not None else "n/a"))
        img = plot(scene, runs, hac_here)
        if img:
            lines += ["", f"![{scene}: HEMGS against HAC mode]({img})"]
        trains = ", ".join(f"{n} {r['train_s']:.0f} s" for n, r in runs.items())
        lines += ["", f"Training times: {trains}.", ""]
    for r in records:
        if r["run"] == "decode_timing":
            lines.append(f"Decode time, {r['scene']} ({r['anchors']:,} anchors, AR included): {r['decode_s']:.2f} s; "
                         f"bake {r['bake_s']:.2f} s ({r['threads']} threads).")
    lines += ["", f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}."]
    (OUT / "hemgs.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scene", default="playbot_lod3")
    ap.add_argument("--runs", nargs="*", default=[], help="full no_sa no_ar no_acs fixed_0.001 ...")
    ap.add_argument("--decode-timing", action="store_true")
    ap.add_argument("--report", action="store_true", help="only rewrite the doc from the JSON")
    ap.add_argument("--width", type=int, default=FitConfig.width)
    ap.add_argument("--steps", type=int, default=FitConfig.steps)
    ap.add_argument("--views", type=int, default=FitConfig.views)
    ap.add_argument("--tmp", default="/tmp")
    args = ap.parse_args()
    set_threads()
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "hemgs.json"
    records = json.loads(path.read_text()) if path.exists() else []
    todo = [(args.scene, r) for r in args.runs] + ([(args.scene, "decode_timing")] if args.decode_timing else [])
    for scene, name in todo:
        print(f"{scene} {name}", flush=True)
        rec = decode_timing(scene, args) if name == "decode_timing" else run(scene, name, args)
        # re-read: another bench process (another scene) may have written meanwhile
        records = json.loads(path.read_text()) if path.exists() else []
        records = [r for r in records if not (r["scene"] == scene and r["run"] == name)] + [rec]
        path.write_text(json.dumps(records, indent=1))
        report(records)
    report(records)


if __name__ == "__main__":
    main()
