"""Rate–distortion of HEMGS against the compressors users would pick instead (run via run.sh).

For each scene: render the source from the evaluation views (hemgs.cameras.evaluation_views: 16 at
256² over the whole sphere, none of them a view any encoder uses), run every peer (methods.py),
render each decoded scene from the same views, and record the mean PSNR of the views, the PSNR of
their mean MSE (what the comparisons use), the worst view and SSIM; add our recorded anchor-free,
HEMGS and HAC points (hemgs_records.py). Writes docs/benchmarks/peers.json (merged by scene), the
section of docs/benchmarks.md, and docs/img/rd_<scene>.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
for var, val in (("OMP_NUM_THREADS", "1"), ("OMP_WAIT_POLICY", "PASSIVE"), ("HEMGS_THREADS", "1"),
                 ("NUMBA_NUM_THREADS", "1")):
    os.environ.setdefault(var, val)
sys.path[:0] = [str(REPO / "backend"), str(HERE / ".pydeps"), str(HERE)]

import torch  # noqa: E402

from hemgs.cameras import evaluation_views  # noqa: E402
from hemgs.io import load_scene, save_scene  # noqa: E402
from hemgs.metrics import compare_images  # noqa: E402
from hemgs.render import render  # noqa: E402
from hemgs.scene import sanitize  # noqa: E402

import hemgs_records  # noqa: E402
import methods  # noqa: E402
import report  # noqa: E402

DEFAULT_SCENES = [str(REPO.parent / "shared" / "data" / "playbot_lod2.ply"),
                  str(REPO.parent / "shared" / "data" / "biker.spz"),
                  str(REPO / "data" / "demo" / "playbot_lod3.ply")]
VIEWS = "16 views at 256² over the whole sphere (hemgs.cameras.evaluation_views)"


def eval_views(scene):
    """The views every method is scored on, and the source's renders from them (bench_direct's too)."""
    views = evaluation_views(scene, n=16, width=256)
    return views, [render(scene, c) for c in views]


def scene_name(path: Path) -> str:
    return path.name.split(".")[0]


def run_scene(path: Path, work: Path, skip: set[str]) -> dict:
    t_scene = time.perf_counter()
    name = scene_name(path)
    work = work / name
    work.mkdir(parents=True, exist_ok=True)
    scene, _ = sanitize(load_scene(path))
    src = work / "source.ply"
    save_scene(scene, src)  # every peer encodes this same float32 PLY of the sanitized scene
    views, refs = eval_views(scene)
    points = []
    for pt in methods.plan(scene):
        if any(s.lower() in pt.method.lower() for s in skip):
            continue
        print(f"[{name}] {pt.method} / {pt.point} ...", flush=True)
        rec = {"method": pt.method, "point": pt.point, "views": VIEWS}
        try:
            e = pt.run(scene, src, work)
            rec.update(method=pt.method, point=e.point, bytes=e.bytes, encode_s=e.encode_s, decode_s=e.decode_s,
                       lossless=e.lossless, note=e.note, status="ok", gaussians_decoded=None)
            if e.lossless:
                rec.update(psnr=math.inf, psnr_of_mean_mse=math.inf, worst_psnr=math.inf, ssim=1.0,
                           gaussians_decoded=len(scene))
            else:
                fid = compare_images(refs, [render(e.decoded, c) for c in views])
                rec.update({k: fid[k] for k in hemgs_records.FIDELITY})
                rec.update(psnr_per_view=fid["psnr_per_view"], gaussians_decoded=len(e.decoded))
            print(f"    {e.bytes:,} B  PSNR of mean MSE {rec['psnr_of_mean_mse']:.2f}  mean {rec['psnr']:.2f}  "
                  f"worst {rec['worst_psnr']:.2f}  SSIM {rec['ssim']:.4f}  "
                  f"enc {e.encode_s:.2f}s dec {e.decode_s:.2f}s", flush=True)
        except Exception as exc:  # a failing peer is reported with its error, never dropped
            msg = f"{type(exc).__name__}: {exc}".splitlines()[0][:240]
            rec.update(status="failed", error=msg)
            print(f"    FAILED {msg}", flush=True)
        points.append(rec)
    for rec in hemgs_records.load_records(name):  # anchor-free: measured on these views by bench_direct
        if rec["method"] in hemgs_records.ANCHOR_METHODS:
            hemgs_records.remeasure(rec, views, refs)
            print(f"[{name}] {rec['method']} {rec['point']} (recorded): "
                  + (f"PSNR of mean MSE {rec[hemgs_records.METRIC]:.2f}" if rec.get("remeasured")
                     else f"not re-measured, {rec.get('remeasure_error')}"), flush=True)
        points.append(rec)
    s = {"source": str(path), "gaussians": len(scene), "sh_degree": scene.sh_degree,
         "source_bytes": path.stat().st_size, "ply_bytes": src.stat().st_size, "views": VIEWS,
         "points": points, "comparisons": report.comparisons(points)}
    s["seconds"] = time.perf_counter() - t_scene
    return s


def refresh_records(out_json: Path, args) -> None:
    """Re-read our recorded points into each scene of the JSON without running the peers again.

    The anchor-free points are replaced by docs/benchmarks/direct.json's (bench_direct measures them
    on these very views, nothing to re-render). Anchor-mode records (HAC, HEMGS) a scene lacks are
    added as recorded — without the evaluation views' figures, so the doc leaves them out — or, with
    --remeasure, rendered from the evaluation views where their .hgs file still exists; an anchor-mode
    point already measured on the evaluation views is kept. The peers' points stay as they are: a
    scene whose peers were measured on other views is left out of the comparisons (report.py) until
    the full benchmark runs again."""
    data = json.loads(out_json.read_text())
    for name, s in data["scenes"].items():
        old = s["points"]
        key = lambda p: (p.get("method"), p.get("point"), p.get("bytes"))  # noqa: E731
        kept = {key(p): p for p in old if p.get("method") in hemgs_records.ANCHOR_METHODS and hemgs_records.measured(p)}
        points = [p for p in old if p.get("method") not in (hemgs_records.DIRECT_METHOD, *hemgs_records.ANCHOR_METHODS)]
        if not any(hemgs_records.measured(p) for p in points if p.get("status") == "ok"):
            print(f"[{name}] the peers' points were measured on other views: left out of the doc until "
                  "run.sh measures them on the evaluation views", flush=True)
        views = refs = None
        for r in hemgs_records.load_records(name):
            if r["method"] in hemgs_records.ANCHOR_METHODS:
                if key(r) in kept:
                    r = kept[key(r)]
                elif not (r.get("path") and Path(r["path"]).is_file()):
                    r["remeasure_error"] = f"file gone: {r['path']}" if r.get("path") else "no file named in the record"
                elif not args.remeasure:
                    r["remeasure_error"] = "not re-measured: --records-only without --remeasure"
                else:
                    if views is None:  # render the source only when a file is there to compare
                        scene, _ = sanitize(load_scene(Path(s["source"])))
                        views, refs = eval_views(scene)
                    print(f"[{name}] {r['method']} {r['point']} (recorded, re-measuring) ...", flush=True)
                    hemgs_records.remeasure(r, views, refs)
            points.append(r)
        s["points"] = points
        s["comparisons"] = report.comparisons(points)
        report.plot_scene(name, s, Path(args.img_dir) / f"rd_{name}.png")
    out_json.write_text(json.dumps(data, indent=1))
    report.write_section(Path(args.doc), data, Path(args.img_dir))


def _version(cmd: list[str]) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        return (p.stdout.strip() or p.stderr.strip()).splitlines()[0]
    except Exception as e:  # a missing tool shows in the versions line, not as a crash
        return f"unavailable ({type(e).__name__})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", nargs="+", default=DEFAULT_SCENES)
    ap.add_argument("--skip", nargs="*", default=[], help="skip methods whose name contains one of these")
    ap.add_argument("--work", default=str(HERE / ".work"))
    ap.add_argument("--json", default=str(REPO / "docs" / "benchmarks" / "peers.json"))
    ap.add_argument("--doc", default=str(REPO / "docs" / "benchmarks.md"))
    ap.add_argument("--img-dir", default=str(REPO / "docs" / "img"))
    ap.add_argument("--report-only", action="store_true", help="rewrite the doc and plots from the JSON")
    ap.add_argument("--remeasure", action="store_true",
                    help="with --records-only: render anchor-mode records a scene lacks, or has only as "
                         "recorded, from the evaluation views (their .hgs files must still exist)")
    ap.add_argument("--records-only", action="store_true",
                    help="re-read the anchor-free points (docs/benchmarks/direct.json), and add anchor-mode "
                         "records a scene lacks, without running the peers again; then rewrite the doc and plots")
    args = ap.parse_args()
    if args.records_only:
        refresh_records(Path(args.json), args)
        return
    if args.report_only:
        data = json.loads(Path(args.json).read_text())
        for name, s in data["scenes"].items():
            report.plot_scene(name, s, Path(args.img_dir) / f"rd_{name}.png")
        report.write_section(Path(args.doc), data, Path(args.img_dir))
        return
    torch.set_num_threads(1)
    t0 = time.perf_counter()

    import gsply
    import gsplat
    import matplotlib

    out_json = Path(args.json)
    data = json.loads(out_json.read_text()) if out_json.exists() else {"scenes": {}}
    data["versions"] = {"splat-transform": _version([str(methods.SPLAT_TRANSFORM), "--version"]).split()[-1].lstrip("v"),
                        "gsply": gsply.__version__, "gsplat": gsplat.__version__, "matplotlib": matplotlib.__version__,
                        "xz": _version(["xz", "--version"]).split()[-1]}
    data["machine"] = {"platform": f"{platform.system()} {platform.machine()}", "cpus": os.cpu_count(),
                       "python": platform.python_version(), "torch": torch.__version__,
                       "node": _version(["node", "--version"]), "threads": torch.get_num_threads()}
    data["date"] = time.strftime("%Y-%m-%d %H:%M")
    for p in args.scenes:
        path = Path(p)
        if not path.is_file():
            print(f"skipping {path}: not found", flush=True)
            continue
        s = run_scene(path, Path(args.work), set(args.skip))
        data["scenes"][scene_name(path)] = s
        report.plot_scene(scene_name(path), s, Path(args.img_dir) / f"rd_{scene_name(path)}.png")
        out_json.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_json.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=1))  # after each scene, so a long run keeps what it did
        tmp.replace(out_json)
        report.write_section(Path(args.doc), data, Path(args.img_dir))
    print(f"done in {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
