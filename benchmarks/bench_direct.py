"""Anchor-free HEMGS benchmark: one fitted model per scene, swept over λ, against SPZ on the same views.

For each scene: fit the direct-mode entropy model once (timed), code it at each λ (timed), decode
each file from disk (timed), and render the decoded scene from 16 views at 256² over the whole
sphere that the encoder never used (hemgs.cameras.evaluation_views) against the source's renders:
the mean PSNR of the views, the PSNR of their mean MSE and the worst view. SPZ (hemgs.io's writer) is measured
on the same views as the reference users know. Runs: `default` (the shipped switches), and with
--ablations: every part on, the scene-agnostic prior on, the AR context on (with and without ACS),
and the variable-rate predictor's network off.

Usage:
    HEMGS_THREADS=2 python benchmarks/bench_direct.py                 # every scene of ../shared/data
    HEMGS_THREADS=2 python benchmarks/bench_direct.py --scenes ../shared/data/playbot_lod3.ply --ablations
    python benchmarks/bench_direct.py --report                        # rewrite the doc from the JSON
Writes docs/benchmarks/direct.json (records keyed by scene and run) and docs/benchmarks/direct.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "backend"))
sys.path.insert(0, str(REPO / "benchmarks"))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from hemgs.cameras import evaluation_views  # noqa: E402
from hemgs.container import read_hgs, write_hgs  # noqa: E402
from hemgs.device import set_threads  # noqa: E402
from hemgs.direct import DirectConfig, DirectFitConfig, decode, encode, fit_direct  # noqa: E402
from hemgs.io import load_scene, save_scene  # noqa: E402
from hemgs.metrics import compare_images  # noqa: E402
from hemgs.render import render  # noqa: E402
from hemgs.scene import sanitize  # noqa: E402
from peers.bdrate import bd_rate  # noqa: E402

OUT = REPO / "docs" / "benchmarks"
DATA = REPO.parent / "shared" / "data"
DEFAULT_SCENES = [DATA / "playbot_lod2.ply", DATA / "biker.spz", DATA / "playbot_lod3.ply"]
SWEEP = [float(v) for v in np.geomspace(1 / 64, 16.0, 11)]  # factors of 2
# "default" = the shipped defaults (hemgs.modes.DIRECT_SWITCH_DEFAULTS: prior and context off);
# the others switch one part on or off from there ("all_parts": every part of HEMGS on).
RUNS = {"default": {}, "all_parts": {"scene_agnostic": True, "ar": True}, "with_sa": {"scene_agnostic": True},
        "with_ar": {"ar": True}, "with_ar_no_acs": {"ar": True, "acs": False}, "no_vr": {"variable_rate": False}}


def _views(scene, path):
    views = evaluation_views(scene, n=16, width=256)
    return views, [render(scene, c) for c in views]


def spz_point(scene, views, refs, tmp: Path) -> dict:
    out = tmp / "ref.spz"
    t0 = time.perf_counter()
    save_scene(scene, out)
    enc = time.perf_counter() - t0
    t0 = time.perf_counter()
    dec, _ = sanitize(load_scene(out))
    fid = compare_images(refs, [render(dec, c) for c in views])
    return {"bytes": out.stat().st_size, "psnr": fid["psnr"], "psnr_of_mean_mse": fid["psnr_of_mean_mse"],
            "worst_psnr": fid["worst_psnr"], "ssim": fid["ssim"], "encode_s": enc,
            "decode_s": time.perf_counter() - t0}


def run(path: Path, run_name: str, lams: list[float], tmp: Path, fcfg: DirectFitConfig) -> dict:
    scene, _ = sanitize(load_scene(path))
    views, refs = _views(scene, path)
    cfg = DirectConfig(**RUNS[run_name])
    t0 = time.perf_counter()
    fitted = fit_direct(scene, cfg, fcfg)
    fit_s = time.perf_counter() - t0
    points = []
    for lam in lams:
        f = tmp / f"{path.stem}_{run_name}_{lam:g}.hgs"
        t0 = time.perf_counter()
        header, sections, _ = encode(fitted, lam=lam)
        write_hgs(f, header, sections)
        enc = time.perf_counter() - t0
        t0 = time.perf_counter()
        h = read_hgs(f)
        dec = decode(h.header, h.sections)
        dec_s = time.perf_counter() - t0
        fid = compare_images(refs, [render(dec.scene, c) for c in views])
        counts = dec.context_counts
        p = {"lambda": lam, "bytes": f.stat().st_size, "sections": {k: len(v) for k, v in sections.items()},
             "psnr": fid["psnr"], "psnr_of_mean_mse": fid["psnr_of_mean_mse"], "worst_psnr": fid["worst_psnr"],
             "ssim": fid["ssim"], "encode_s": enc, "decode_s": dec_s,
             "context_mean": float(counts[counts > 0].mean()) if counts is not None and (counts > 0).any() else 0.0,
             "context_max": int(counts.max()) if counts is not None and counts.size else 0}
        points.append(p)
        print(json.dumps({k: v for k, v in p.items() if k != "sections"}), flush=True)
    rec = {"scene": path.stem, "run": run_name, "gaussians": len(scene), "sh_degree": scene.sh_degree,
           "source_bytes": path.stat().st_size, "fit_s": fit_s, "threads": torch.get_num_threads(),
           "iters": fcfg.iters, "voxel_bits": fitted.prep.frame.bits, "voxels": int(fitted.prep.layout.coords.shape[0]),
           "points": points}
    if run_name == "default":
        rec["spz"] = spz_point(scene, views, refs, tmp)
        print("SPZ", json.dumps(rec["spz"]), flush=True)
    return rec


# The quality compared (issue 22): the PSNR of the views' mean MSE, so a bad view cannot hide.
METRIC = "psnr_of_mean_mse"


def _interp_bytes(points: list[dict], psnr: float) -> float | None:
    """Bytes at `psnr` (METRIC) on the piecewise-linear (log bytes) curve of `points`, if it spans it."""
    pts = sorted((p[METRIC], np.log(p["bytes"])) for p in points)
    ps = [a for a, _ in pts]
    if not pts or psnr < ps[0] or psnr > ps[-1]:
        return None
    return float(np.exp(np.interp(psnr, ps, [b for _, b in pts])))


def _interp_worst(points: list[dict], psnr: float) -> float | None:
    """The worst view's PSNR at `psnr` (METRIC), linear between the points around it, if the curve spans it."""
    pts = sorted((p[METRIC], p["worst_psnr"]) for p in points if "worst_psnr" in p)
    if not pts or psnr < pts[0][0] or psnr > pts[-1][0]:
        return None
    return float(np.interp(psnr, [a for a, _ in pts], [w for _, w in pts]))


def report(records: list[dict]) -> None:
    peers = {}
    pj = OUT / "peers.json"
    if pj.exists():
        peers = json.loads(pj.read_text()).get("scenes", {})
    lines = ["# Anchor-free HEMGS benchmark", "",
             "Written by `benchmarks/bench_direct.py`. One direct-mode model per run, fitted once in attribute",
             "space and coded at each λ; every point is a `.hgs` decoded from disk and rendered from 16 views at",
             "256² over the whole sphere that the encoder never used (`hemgs.cameras.evaluation_views`), against",
             "the source's renders: mean PSNR of the views, PSNR of their mean MSE (compared below) and the worst",
             "view. Times on this machine's CPU.", ""]
    for scene in sorted({r["scene"] for r in records}):
        runs = [r for r in records if r["scene"] == scene]
        full = next((r for r in runs if r["run"] == "default"), None)
        lines += [f"## {scene}", ""]
        if full:
            lines.append(f"{full['gaussians']:,} Gaussians, SH {full['sh_degree']}, source {full['source_bytes']:,} B; "
                         f"{full['voxels']:,} voxels at {full['voxel_bits']} bits; fit {full['fit_s']:.1f} s "
                         f"({full['iters']} iterations, {full['threads']} threads).")
            lines.append("")
        lines += ["| run | λ | bytes | positions | importance | opacity | scale | rotation | residual | dc | sh "
                  "| sh repeats | networks+grid | PSNR (mean) | PSNR of mean MSE | worst view | SSIM | encode s "
                  "| decode s | context mean/max |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        stale = [r for r in runs if not all(METRIC in p for p in r["points"])]  # measured on other views
        for r in runs:
            if r in stale:
                continue
            for p in r["points"]:
                s = p["sections"]
                lines.append(f"| {r['run']} | {p['lambda']:.3g} | {p['bytes']:,} | {s['locations'] + s['counts']:,} "
                             f"| {s['importance']:,} | {s['opacity']:,} | {s['scale']:,} | {s['rotation']:,} | {s['position']:,} "
                             f"| {s['dc']:,} | {s.get('sh', 0):,} | {s.get('sh_repeats', 0):,} "
                             f"| {s['networks'] + s['grid']:,} | {p['psnr']:.2f} "
                             f"| {p.get(METRIC, float('nan')):.2f} | {p.get('worst_psnr', float('nan')):.2f} "
                             f"| {p['ssim']:.4f} | {p['encode_s']:.2f} | {p['decode_s']:.2f} "
                             f"| {p['context_mean']:.1f}/{p['context_max']} |")
        if stale:
            lines += ["", "Recorded before the evaluation views (other views, mean of PSNRs; not comparable, so not in "
                      "this table): " + ", ".join(f"{r['run']} ({len(r['points'])} λ)" for r in stale)
                      + ". `--ablations` measures them again."]
        ablations = [r for r in runs if r["run"] != "default"]
        if full and ablations:
            lines += ["", "BD-rate of each variant against the default, over the variants' λ (positive: the "
                      "variant needs more bytes for the same PSNR):", ""]
            lams = {round(p["lambda"], 9) for r in ablations for p in r["points"]}
            fp = [p for p in full["points"] if round(p["lambda"], 9) in lams]
            for r in ablations:
                if not all(METRIC in p for p in fp + r["points"]):  # a record from before the evaluation views
                    lines.append(f"- {r['run']}: not yet measured on the evaluation views")
                    continue
                b = bd_rate([p["bytes"] for p in fp], [p[METRIC] for p in fp],
                            [p["bytes"] for p in r["points"]], [p[METRIC] for p in r["points"]])
                lines.append(f"- {r['run']}: " + (f"{b:+.1f}%" if b is not None else "n/a") + f" (fit {r['fit_s']:.0f} s)")
        if full:
            lines += ["", "Against the near-lossless formats on the same views (bytes of this mode's curve at the",
                      "peer's PSNR, interpolated in log bytes; the targets: ≤ 50% of SPZ, ≤ 60% of SOG):", ""]
            refs = [("SPZ (hemgs.io)", full.get("spz"))]
            for p in peers.get(scene, {}).get("points", []):
                if p.get("status") == "ok" and not p.get("lossless") and p.get("method", "").startswith(("SOG", "SPZ", "compressed PLY")):
                    refs.append((f"{p['method']} / {p['point']}", p))
            for name, ref in refs:
                if not ref:
                    continue
                if METRIC not in ref or not all(METRIC in p for p in full["points"]):  # other views: no comparison
                    lines.append(f"- {name}: not yet measured on the evaluation views")
                    continue
                b = _interp_bytes(full["points"], ref[METRIC])
                w = _interp_worst(full["points"], ref[METRIC])
                rel = (f"{b:,.0f} B = {100 * b / ref['bytes']:.1f}%, worst view {w:.2f} dB" if b
                       else "outside this curve's PSNR range")
                lines.append(f"- {name}: {ref['bytes']:,} B at {ref[METRIC]:.2f} dB (worst view "
                             f"{ref.get('worst_psnr', float('nan')):.2f} dB) → this mode {rel}")
        lines.append("")
    lines += [f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}."]
    (OUT / "direct.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", nargs="*", default=[str(p) for p in DEFAULT_SCENES])
    ap.add_argument("--ablations", action="store_true")
    ap.add_argument("--lambdas", type=float, nargs="*", default=SWEEP)
    ap.add_argument("--iters", type=int, default=DirectFitConfig.iters)
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args()
    set_threads()
    path = OUT / "direct.json"
    if not args.report:
        with tempfile.TemporaryDirectory() as tmp:
            for sp in args.scenes:
                sp = Path(sp)
                if not sp.is_file():
                    print(f"skipping {sp}: not found", flush=True)
                    continue
                for name in (RUNS if args.ablations else ["default"]):
                    print(f"{sp.stem} {name}", flush=True)
                    rec = run(sp, name, args.lambdas, Path(tmp), DirectFitConfig(iters=args.iters))
                    records = json.loads(path.read_text()) if path.exists() else []
                    records = [r for r in records if not (r["scene"] == rec["scene"] and r["run"] == name)] + [rec]
                    path.write_text(json.dumps(records, indent=1))
                    report(records)
    report(json.loads(path.read_text()) if path.exists() else [])


if __name__ == "__main__":
    main()
