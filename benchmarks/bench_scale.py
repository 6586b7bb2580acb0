"""Scaling benchmark: wall time and peak RSS of `hemgs compress` / `hemgs decompress` against the
number of Gaussians (issue #24 item 5).

For each size it runs, as subprocesses under `/usr/bin/time -v` with OMP_WAIT_POLICY=PASSIVE and
OMP_NUM_THREADS=2 (the issue's measuring conditions):

    hemgs compress SCENE -o X.hgs --lambda 1 --threads 2      (direct mode: the default for a PLY)
    hemgs decompress X.hgs -o Y.ply --threads 2

and records wall time, peak RSS, the .hgs bytes and bytes per Gaussian. The scenes are SH-3 scenes
from benchmarks/make_large_scene.py (seed 0), generated into the ignored folder benchmarks/large/
when missing; `--reference` adds playbot_lod2.ply itself (125k, SH 2) as a row outside the fits.
It fits the log–log exponent of time and of RSS against the Gaussian count (numpy polyfit), and a
line RSS = base + per-Gaussian × N, and extrapolates both to 6M (marked as an extrapolation).

Before each size it compares the memory the compress step is expected to need (a line through the
sizes measured so far, else the issue's 8.7 kB per Gaussian; plus 15%) with MemAvailable, and
skips a size that would not fit, with a one-line reason, instead of swapping the machine.

Usage:
    .venv/bin/python benchmarks/bench_scale.py                       # 125k, 500k, 1M
    .venv/bin/python benchmarks/bench_scale.py --sizes 3M 6M          # bigger sizes: by flag only
    .venv/bin/python benchmarks/bench_scale.py --report               # rewrite the doc from the JSON
Writes docs/benchmarks/scale.json (records keyed by scene, merged with earlier runs),
docs/benchmarks/scale.md and docs/img/scale.png (matplotlib where installed, else Pillow).
The JSON's "notes" (the doc's Notes section) and "memory_map" (its "Where the memory goes"
section: markdown lines, a profile of the peaks) are written by hand and kept across runs:
review them after a new run; so is "conditions" (what else ran on the machine, default idle).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / "large"          # git-ignored
DOC = REPO / "docs" / "benchmarks" / "scale.md"
JSON = REPO / "docs" / "benchmarks" / "scale.json"
PNG = REPO / "docs" / "img" / "scale.png"
REFERENCE = REPO.parent / "shared" / "data" / "playbot_lod2.ply"
HEMGS = Path(sys.executable).parent / "hemgs"
TIME = Path("/usr/bin/time")
ISSUE_BYTES_PER_GAUSSIAN = 8.7e3
TARGET_N = 6_000_000
TARGETS = {"compress": (15 * 60, 8e9), "decompress": (60, 4e9)}   # seconds, bytes of RSS
SIZES = {"125k": 125_000, "500k": 500_000, "1M": 1_000_000, "3M": 3_000_000, "6M": 6_000_000}
DEFAULT_SIZES = ("125k", "500k", "1M")


def mem_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def run_measured(cmd: list[str], env: dict, timeout: float | None) -> dict:
    """Run `cmd`; wall time (perf_counter), peak RSS (/usr/bin/time -v, else getrusage)."""
    use_time = TIME.is_file() and os.access(TIME, os.X_OK)
    full = [str(TIME), "-v", *cmd] if use_time else cmd
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(full, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "wall_s": time.perf_counter() - t0, "error": f"timed out after {timeout:.0f} s"}
    wall = time.perf_counter() - t0
    rec = {"ok": proc.returncode == 0, "wall_s": wall, "returncode": proc.returncode}
    if use_time:
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
        rec["rss_bytes"] = int(m.group(1)) * 1024 if m else None
        rec["rss_source"] = "/usr/bin/time -v"
    else:
        after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        # ru_maxrss of the children is the largest so far: only a rise is this command's own.
        rec["rss_bytes"] = after * 1024 if after > before else None
        rec["rss_source"] = "getrusage(RUSAGE_CHILDREN)"
    if not rec["ok"]:
        tail = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("\t")]
        rec["error"] = tail[-1] if tail else f"exit {proc.returncode}"
    return rec


def ensure_scene(label: str, n: int) -> Path:
    path = WORK / f"large_{n}.ply"
    if not path.is_file():
        subprocess.run([sys.executable, str(REPO / "benchmarks" / "make_large_scene.py"),
                        "--gaussians", str(n), "--out", str(path)], check=True)
    return path


def needed_bytes(records: dict, n: int) -> tuple[float, str]:
    pts = sorted((r["gaussians"], r["compress"]["rss_bytes"]) for r in records.values()
                 if r.get("in_fit") and r.get("compress", {}).get("rss_bytes"))
    if len(pts) >= 2:
        import numpy as np
        b, a = np.polyfit([p[0] for p in pts], [p[1] for p in pts], 1)
        return 1.15 * (a + b * n), "a line through the measured sizes, +15%"
    if pts:
        return 1.15 * pts[-1][1] / pts[-1][0] * n, "the measured bytes per Gaussian, +15%"
    return 1.15 * ISSUE_BYTES_PER_GAUSSIAN * n, "the issue's 8.7 kB per Gaussian, +15%"


def bench_one(key: str, scene: Path, n: int, args, env: dict, in_fit: bool) -> dict:
    hgs = WORK / f"{key}.hgs"
    ply = WORK / f"{key}.decoded.ply"
    rec: dict = {"scene": str(scene.relative_to(REPO.parent) if scene.is_relative_to(REPO.parent) else scene),
                 "gaussians": n, "in_fit": in_fit}
    print(f"[{key}] compress {n:,} Gaussians ...", flush=True)
    c = run_measured([str(HEMGS), "compress", str(scene), "-o", str(hgs), "--lambda", str(args.lam),
                      "--threads", str(args.threads)], env, args.timeout)
    rec["compress"] = c
    if not c["ok"]:
        print(f"[{key}] compress failed: {c.get('error')}", flush=True)
        return rec
    rec["bytes"] = hgs.stat().st_size
    rec["bytes_per_gaussian"] = rec["bytes"] / n
    print(f"[{key}] compress {c['wall_s']:.1f} s, RSS {c['rss_bytes'] / 1e9:.2f} GB, "
          f"{rec['bytes']:,} B ({rec['bytes_per_gaussian']:.2f} B/Gaussian); decompress ...", flush=True)
    d = run_measured([str(HEMGS), "decompress", str(hgs), "-o", str(ply), "--threads", str(args.threads)],
                     env, args.timeout)
    rec["decompress"] = d
    ply.unlink(missing_ok=True)
    if d["ok"]:
        print(f"[{key}] decompress {d['wall_s']:.1f} s, RSS {d['rss_bytes'] / 1e9:.2f} GB", flush=True)
    else:
        print(f"[{key}] decompress failed: {d.get('error')}", flush=True)
    return rec


# ---- fits and report ------------------------------------------------------------------------
def fits(records: dict) -> dict:
    import numpy as np
    out: dict = {}
    for step in ("compress", "decompress"):
        pts = sorted((r["gaussians"], r[step]["wall_s"], r[step].get("rss_bytes"))
                     for r in records.values()
                     if r.get("in_fit") and r.get(step, {}).get("ok") and r[step].get("rss_bytes"))
        if len(pts) < 2:
            continue
        n = np.array([p[0] for p in pts], float)
        t = np.array([p[1] for p in pts], float)
        m = np.array([p[2] for p in pts], float)
        kt, ct = np.polyfit(np.log(n), np.log(t), 1)
        km, cm = np.polyfit(np.log(n), np.log(m), 1)
        per, base = np.polyfit(n, m, 1)
        tper, tbase = np.polyfit(n, t, 1)
        # The two largest sizes alone: the local slope, where fixed costs weigh least.
        lt = float(np.log(t[-1] / t[-2]) / np.log(n[-1] / n[-2]))
        lm = float(np.log(m[-1] / m[-2]) / np.log(n[-1] / n[-2]))
        out[step] = {
            "time_exponent_largest_two": lt, "rss_exponent_largest_two": lm,
            "sizes": [int(x) for x in n],
            "time_exponent": float(kt), "rss_exponent": float(km),
            "rss_base_bytes": float(base), "rss_bytes_per_gaussian": float(per),
            "time_base_s": float(tbase), "time_s_per_million": float(tper * 1e6),
            "at_6M": {
                "time_s_power": float(np.exp(ct + kt * np.log(TARGET_N))),
                "time_s_linear": float(tbase + tper * TARGET_N),
                "rss_bytes_power": float(np.exp(cm + km * np.log(TARGET_N))),
                "rss_bytes_linear": float(base + per * TARGET_N),
                "time_s_local": float(t[-1] * (TARGET_N / n[-1]) ** lt),
                "rss_bytes_local": float(m[-1] * (TARGET_N / n[-1]) ** lm),
            },
        }
    return out


def fmt_s(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def write_report(data: dict) -> None:
    records = data["records"]
    fit = fits(records)
    data["fits"] = fit
    JSON.write_text(json.dumps(data, indent=1) + "\n")
    order = sorted(records, key=lambda k: (not records[k].get("in_fit"), records[k]["gaussians"]))
    L = ["# Scaling: compress and decompress against the number of Gaussians",
         "",
         "Written by `benchmarks/bench_scale.py` (issue #24 item 5). Machine: "
         f"{data['machine']}; last run {data.get('measured_utc', '?')} UTC, one run per size, {data.get('conditions', 'the machine otherwise idle')}. Each command runs alone, as a subprocess under `/usr/bin/time -v`, with "
         "`OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=2`:",
         "",
         "```sh",
         f"hemgs compress SCENE -o X.hgs --lambda {data['lambda']:g} --threads {data['threads']}   # direct mode, the default for a PLY",
         f"hemgs decompress X.hgs -o Y.ply --threads {data['threads']}",
         "```",
         "",
         "Scenes: SH degree 3, from `benchmarks/make_large_scene.py` (seed 0: tiled, jittered copies of "
         "playbot_lod2 and biker; the SH bands a source lacks are small seeded noise, so these scenes "
         "measure time and memory, not rate–distortion). The row marked *reference* is "
         "`playbot_lod2.ply` itself (SH 2), outside the fits. Reproduce:",
         "",
         "```sh",
         ".venv/bin/python benchmarks/bench_scale.py --reference          # 125k, 500k, 1M (+ playbot_lod2)",
         ".venv/bin/python benchmarks/bench_scale.py --sizes 3M 6M        # by flag only; skipped if memory would not fit",
         "```",
         "",
         "| scene | Gaussians | compress wall | compress peak RSS | decompress wall | decompress peak RSS | .hgs bytes | bytes / Gaussian | RSS / Gaussian (compress) |",
         "|---|---|---|---|---|---|---|---|---|"]
    for k in order:
        r = records[k]
        name = k + (" (reference, SH 2)" if not r.get("in_fit") else "")
        if r.get("skipped"):
            L.append(f"| {name} | {r['gaussians']:,} | skipped: {r['skipped']} | | | | | | |")
            continue
        c, d = r.get("compress", {}), r.get("decompress", {})

        def cell(x: dict) -> tuple[str, str]:
            if not x:
                return "not run", ""
            if not x.get("ok"):
                return f"failed: {x.get('error', '')}", ""
            return fmt_s(x["wall_s"]), f"{x['rss_bytes'] / 1e9:.2f} GB"
        cw, cm = cell(c)
        dw, dm = cell(d)
        b = f"{r['bytes']:,}" if "bytes" in r else ""
        bpg = f"{r['bytes_per_gaussian']:.2f}" if "bytes" in r else ""
        rpg = f"{c['rss_bytes'] / r['gaussians'] / 1e3:.1f} kB" if c.get("ok") else ""
        L.append(f"| {name} | {r['gaussians']:,} | {cw} | {cm} | {dw} | {dm} | {b} | {bpg} | {rpg} |")
    L += ["", "## Fitted exponents", "",
          "Least squares on log(value) against log(Gaussians) over the SH-3 sizes (numpy `polyfit`), and "
          "a straight line value = base + slope × N over the same points; the local exponent is the "
          "slope between the two largest sizes alone, where the fixed costs weigh least.", "",
          "| step | sizes | time exponent (all / two largest) | RSS exponent (all / two largest) | RSS base | RSS per Gaussian (slope) | time per million (slope) |",
          "|---|---|---|---|---|---|---|"]
    for step, f in fit.items():
        L.append(f"| {step} | {', '.join(f'{s:,}' for s in f['sizes'])} | {f['time_exponent']:.2f} / "
                 f"{f['time_exponent_largest_two']:.2f} | {f['rss_exponent']:.2f} / "
                 f"{f['rss_exponent_largest_two']:.2f} | {f['rss_base_bytes'] / 1e9:.2f} GB | "
                 f"{f['rss_bytes_per_gaussian'] / 1e3:.2f} kB | {fmt_s(f['time_s_per_million'])} |")
    if not fit:
        L.append("| (fewer than two sizes measured) | | | | | | |")
    L += ["", "## Extrapolation to 6M Gaussians (not measured)", "",
          "**This is an extrapolation** from the sizes above, by the power law over all sizes, by the straight "
          "line, and by the local power law from the largest size; "
          "nothing was run at 6M. Targets from issue #24 (6M, SH 3, direct mode, λ = 1, 2 cores).", "",
          "| step | time (power law / line / local) | target | peak RSS (power law / line / local) | target | verdict |",
          "|---|---|---|---|---|---|"]
    for step, f in fit.items():
        e = f["at_6M"]
        tt, tm = TARGETS[step]
        ts = [e["time_s_power"], e["time_s_linear"], e["time_s_local"]]
        ms = [e["rss_bytes_power"], e["rss_bytes_linear"], e["rss_bytes_local"]]
        t_hi, t_lo, m_hi, m_lo = max(ts), min(ts), max(ms), min(ms)
        if t_hi <= tt and m_hi <= tm:
            verdict = "would meet both"
        elif t_lo > tt and m_lo > tm:
            verdict = "would miss both"
        else:
            parts = []
            parts.append("time: " + ("met" if t_hi <= tt else "missed" if t_lo > tt else "either way"))
            parts.append("memory: " + ("met" if m_hi <= tm else "missed" if m_lo > tm else "either way"))
            verdict = "; ".join(parts)
        L.append(f"| {step} | {' / '.join(fmt_s(x) for x in ts)} | ≤ {fmt_s(tt)} | "
                 f"{' / '.join(f'{x / 1e9:.1f}' for x in ms)} GB | ≤ {tm / 1e9:.0f} GB | {verdict} |")
    L += ["", "Other targets of the issue: time exponent ≤ 1.05; memory above a fixed base O(chunk), "
          "which a per-Gaussian RSS slope of kilobytes is not."]
    if data.get("plot"):
        L += ["", f"![log–log plot of wall time and peak RSS against Gaussians](../img/{PNG.name})"]
    else:
        L += ["", f"No plot: {data.get('plot_skipped', 'not drawn')}."]
    if data.get("memory_map"):  # hand-written, kept across runs like the notes: review after a run
        L += ["", "## Where the memory goes", ""] + list(data["memory_map"])
    if data.get("notes"):
        L += ["", "## Notes", ""] + [f"- {n}" for n in data["notes"]]
    DOC.write_text("\n".join(L) + "\n")
    print(f"wrote {DOC.relative_to(REPO)} and {JSON.relative_to(REPO)}")


def plot(data: dict) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        try:
            plot_pil(data)
        except ImportError:
            data["plot"] = False
            data["plot_skipped"] = "neither matplotlib nor Pillow is installed in the venv"
            print("no plot: neither matplotlib nor Pillow is installed")
        return
    recs = sorted((r for r in data["records"].values() if r.get("in_fit")), key=lambda r: r["gaussians"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for step, mark in (("compress", "o-"), ("decompress", "s-")):
        pts = [(r["gaussians"], r[step]["wall_s"], r[step]["rss_bytes"]) for r in recs
               if r.get(step, {}).get("ok") and r[step].get("rss_bytes")]
        if not pts:
            continue
        n, t, m = zip(*pts)
        ax1.loglog(n, t, mark, label=step)
        ax2.loglog(n, [x / 1e9 for x in m], mark, label=step)
    for ax, title in ((ax1, "wall time (s)"), (ax2, "peak RSS (GB)")):
        ax.set_xlabel("Gaussians")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    PNG.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PNG, dpi=100)
    data["plot"] = True
    data.pop("plot_skipped", None)
    print(f"wrote {PNG.relative_to(REPO)}")


def plot_pil(data: dict) -> None:
    """The same two log–log panels drawn with Pillow, where matplotlib is absent."""
    import math

    from PIL import Image, ImageDraw
    recs = sorted((r for r in data["records"].values() if r.get("in_fit")), key=lambda r: r["gaussians"])
    W, H, pad = 460, 360, 60
    img = Image.new("RGB", (2 * W, H), "white")
    draw = ImageDraw.Draw(img)
    colours = {"compress": (31, 119, 180), "decompress": (255, 127, 14)}
    series = {}
    for step in colours:
        series[step] = [(r["gaussians"], r[step]["wall_s"], r[step]["rss_bytes"] / 1e9) for r in recs
                        if r.get(step, {}).get("ok") and r[step].get("rss_bytes")]
    ns = [p[0] for s in series.values() for p in s]
    if not ns:
        data["plot"] = False
        data["plot_skipped"] = "nothing measured yet"
        return
    for panel, (idx, title) in enumerate(((1, "wall time (s)"), (2, "peak RSS (GB)"))):
        x0 = panel * W
        vals = [p[idx] for s in series.values() for p in s]
        lx = (math.floor(math.log10(min(ns)) * 2) / 2, math.ceil(math.log10(max(ns)) * 2) / 2)
        ly = (math.floor(math.log10(min(vals))), math.ceil(math.log10(max(vals))))
        if lx[0] == lx[1]:
            lx = (lx[0] - 0.5, lx[1] + 0.5)
        if ly[0] == ly[1]:
            ly = (ly[0] - 1, ly[1] + 1)

        def at(n: float, v: float) -> tuple[float, float]:
            fx = (math.log10(n) - lx[0]) / (lx[1] - lx[0])
            fy = (math.log10(v) - ly[0]) / (ly[1] - ly[0])
            return x0 + pad + fx * (W - 1.5 * pad), H - pad - fy * (H - 1.7 * pad)
        draw.rectangle([x0 + pad, 0.7 * pad, x0 + W - 0.5 * pad, H - pad], outline="black")
        draw.text((x0 + W / 2 - 40, 0.25 * pad), title, fill="black")
        draw.text((x0 + W / 2 - 40, H - 0.4 * pad), "Gaussians (log)", fill="black")
        for e in range(ly[0], ly[1] + 1):
            for m in (1, 2, 5):
                v = m * 10.0 ** e
                if ly[0] <= math.log10(v) <= ly[1]:
                    _, y = at(10 ** lx[0], v)
                    draw.line([x0 + pad, y, x0 + W - 0.5 * pad, y], fill=(225, 225, 225))
                    draw.text((x0 + 5, y - 6), f"{v:g}", fill="black")
        for e in range(math.floor(lx[0]), math.ceil(lx[1]) + 1):
            for m in (1, 2, 5):
                n = m * 10.0 ** e
                if lx[0] <= math.log10(n) <= lx[1]:
                    x, _ = at(n, 10.0 ** ly[0])
                    draw.line([x, 0.7 * pad, x, H - pad], fill=(225, 225, 225))
                    label = f"{n / 1e6:g}M" if n >= 1e6 else f"{n / 1e3:g}k"
                    draw.text((x - 12, H - pad + 5), label, fill="black")
        for j, (step, pts) in enumerate(series.items()):
            xy = [at(p[0], p[idx]) for p in pts]
            if len(xy) > 1:
                draw.line(xy, fill=colours[step], width=2)
            for x, y in xy:
                draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colours[step])
            draw.text((x0 + pad + 10, 0.7 * pad + 8 + 14 * j), step, fill=colours[step])
    PNG.parent.mkdir(parents=True, exist_ok=True)
    img.save(PNG)
    data["plot"] = True
    data.pop("plot_skipped", None)
    print(f"wrote {PNG} (Pillow)")


def load_data() -> dict:
    if JSON.is_file():
        return json.loads(JSON.read_text())
    return {"records": {}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), choices=list(SIZES),
                    help="sizes to run (default 125k 500k 1M; 3M and 6M by flag only)")
    ap.add_argument("--reference", action="store_true", help="also run playbot_lod2.ply itself (SH 2)")
    ap.add_argument("--lambda", dest="lam", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=None, help="seconds per command (default none)")
    ap.add_argument("--report", action="store_true", help="only rewrite the doc and plot from the JSON")
    args = ap.parse_args(argv)

    data = load_data()
    if args.report:
        plot(data)
        write_report(data)
        return 0
    if not HEMGS.is_file():
        print(f"bench_scale: {HEMGS} not found (run scripts/setup.sh)", file=sys.stderr)
        return 2
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS=str(args.threads),
               HEMGS_THREADS=str(args.threads))
    mem = mem_available()
    data.update({
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"{(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')) / 2**30:.0f} GiB RAM, "
                   f"{platform.system()} {platform.release()}",
        "lambda": args.lam, "threads": args.threads,
        "measured_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "rss_source": "/usr/bin/time -v" if TIME.is_file() else "getrusage(RUSAGE_CHILDREN)",
    })
    data.setdefault("records", {})
    WORK.mkdir(parents=True, exist_ok=True)
    jobs = [("playbot_lod2", REFERENCE, 125_000, False)] if args.reference and REFERENCE.is_file() else []
    jobs += [(label, None, SIZES[label], True) for label in args.sizes]
    for key, scene, n, in_fit in jobs:
        need, how = needed_bytes(data["records"], n)
        mem = mem_available()
        disk = shutil.disk_usage(WORK).free
        if mem is not None and need > mem:
            reason = (f"needs about {need / 1e9:.1f} GB ({how}), {mem / 1e9:.1f} GB available")
            print(f"[{key}] skipped: {reason}", flush=True)
            data["records"][key] = {"gaussians": n, "in_fit": in_fit, "skipped": reason}
            continue
        if disk < n * 600:   # the SH-3 PLY (236 B/Gaussian), its decoded copy, the .hgs, slack
            reason = f"needs about {n * 600 / 1e9:.1f} GB of disk in {WORK}, {disk / 1e9:.1f} GB free"
            print(f"[{key}] skipped: {reason}", flush=True)
            data["records"][key] = {"gaussians": n, "in_fit": in_fit, "skipped": reason}
            continue
        if scene is None:
            scene = ensure_scene(key, n)
        data["records"][key] = bench_one(key, scene, n, args, env, in_fit)
        write_report(data)          # after every size: a stopped run keeps what it measured
    plot(data)
    write_report(data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
