"""Tables, comparisons and RD plots from the benchmark's points (docs/benchmarks.md section, PNGs)."""

from __future__ import annotations

import math
from pathlib import Path

from bdrate import bd_rate, closest_point, size_at_psnr

BEGIN, END = "<!-- peers:begin (written by benchmarks/peers/run.py) -->", "<!-- peers:end -->"
HEMGS_METHODS = ("HEMGS anchor-free (--mode direct)", "HEMGS (variable rate)", "HAC mode (hemgs --codec hac)")


def _curve(points: list[dict]) -> tuple[list[float], list[float]]:
    ok = [p for p in points if p["status"] == "ok" and p.get("psnr") is not None and math.isfinite(p["psnr"])]
    return [p["bytes"] for p in ok], [p["psnr"] for p in ok]


def by_method(points: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for p in points:
        out.setdefault(p["method"], []).append(p)
    return out


def comparisons(points: list[dict]) -> list[dict]:
    """HEMGS/HAC against each lossy peer: BD-rate where both curves have 2+ points and overlap in
    PSNR; otherwise, per peer point, HEMGS's size at that PSNR or HEMGS's closest point."""
    groups = by_method(points)
    out = []
    for ours in HEMGS_METHODS:
        ob, op = _curve(groups.get(ours, []))
        if not ob:
            continue
        for peer, pts in groups.items():
            if peer in HEMGS_METHODS:
                continue
            pb, pp = _curve(pts)
            if not pb:
                continue
            bd = bd_rate(pb, pp, ob, op)
            if bd is not None:
                lo, hi = max(min(pp), min(op)), min(max(pp), max(op))
                out.append({"ours": ours, "peer": peer, "kind": "bd_rate", "bd_rate_pct": bd,
                            "psnr_range": [lo, hi]})
                continue
            for b, p in zip(pb, pp):
                at = size_at_psnr(ob, op, p)
                if at is not None:
                    out.append({"ours": ours, "peer": peer, "kind": "size_at_psnr", "psnr": p,
                                "peer_bytes": b, "ours_bytes": at})
                else:
                    cb, cp = closest_point(ob, op, p)
                    out.append({"ours": ours, "peer": peer, "kind": "closest", "peer_psnr": p, "peer_bytes": b,
                                "ours_psnr": cp, "ours_bytes": cb})
    return out


def _fmt_cmp(c: dict, points: list[dict]) -> str:
    point_of = {(p["method"], p["bytes"]): p["point"] for p in points if p["status"] == "ok"}
    if c["kind"] == "bd_rate":
        lo, hi = c["psnr_range"]
        return (f"| {c['ours']} | {c['peer']} | BD-rate **{c['bd_rate_pct']:+.1f}%** over PSNR {lo:.2f}–{hi:.2f} dB "
                f"(negative: HEMGS needs fewer bytes) |")
    if c["kind"] == "size_at_psnr":
        pt = point_of.get((c["peer"], c["peer_bytes"]), "")
        return (f"| {c['ours']} | {c['peer']} ({pt}) | at the peer's {c['psnr']:.2f} dB: ours "
                f"{c['ours_bytes']:,.0f} B vs {c['peer_bytes']:,} B (**{c['ours_bytes'] / c['peer_bytes']:.2f}×** "
                f"the peer's size; interpolated on our curve) |")
    pt = point_of.get((c["peer"], c["peer_bytes"]), "")
    return (f"| {c['ours']} | {c['peer']} ({pt}) | no overlap: peer {c['peer_bytes']:,} B at {c['peer_psnr']:.2f} dB; "
            f"our closest {c['ours_bytes']:,.0f} B at {c['ours_psnr']:.2f} dB |")


def _num(v, fmt: str) -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and math.isinf(v):
        return "∞ (lossless)"
    return format(v, fmt)


def scene_section(name: str, s: dict, img_rel: str) -> list[str]:
    lines = [f"### {name}", "",
             f"Source `{s['source']}`: {s['gaussians']:,} Gaussians, SH degree {s['sh_degree']}, "
             f"{s['source_bytes']:,} bytes as given; {s['ply_bytes']:,} bytes as float32 3DGS PLY (the ratio's "
             f"numerator). Reference: the source's own renders on {s['views']}. Benchmark time for this scene: "
             f"{s['seconds']:.0f} s.", "",
             "| method | point | size (B) | ratio | PSNR (dB) | SSIM | encode (s) | decode (s) | views / notes |",
             "|---|---|---|---|---|---|---|---|---|"]
    for p in s["points"]:
        if p["status"] != "ok":
            lines.append(f"| {p['method']} | {p['point']} | **failed** | | | | | | {p['error']} |")
            continue
        notes = p.get("note", "")
        if p["method"] in HEMGS_METHODS:
            notes = (f"{p['views']}" + ("" if p.get("remeasured") else " (recorded, not re-measured)")
                     + (f"; recorded on fit's views: {p['psnr_recorded']:.2f} dB" if p.get("remeasured") else ""))
        lines.append(
            f"| {p['method']} | {p['point']} | {p['bytes']:,} | {s['ply_bytes'] / p['bytes']:.1f}× | "
            f"{_num(p['psnr'], '.2f')} | {_num(p['ssim'], '.4f')} | {_num(p.get('encode_s'), '.2f')} | "
            f"{_num(p.get('decode_s'), '.2f')} | {notes} |")
    lines += ["", f"![rate–distortion, {name}]({img_rel})", ""]
    if s["comparisons"]:
        lines += ["| ours | peer | comparison |", "|---|---|---|"]
        lines += [_fmt_cmp(c, s["points"]) for c in s["comparisons"]]
    else:
        lines.append("No HEMGS, HAC-mode or anchor-free records for this scene yet, so no comparison.")
    return lines + [""]


def write_section(doc: Path, data: dict, img_dir: Path) -> None:
    """Replace (or append) this benchmark's section of `doc`, keeping the rest of the file."""
    m = data["machine"]
    lines = [BEGIN, "## Rate–distortion against the compressors users would pick instead", "",
             "One command (installs the peers at pinned versions into ignored folders, then runs):", "",
             "    bash benchmarks/peers/run.sh            # default scenes; or: run.sh --scenes a.ply b.spz", "",
             "For each scene the source is rendered from 16 views at 256² (`hemgs.cameras.scene_views`: the "
             "scene's cameras.json if one sits beside it, else the deterministic sampled views), every method's "
             "decoded scene is rendered from the same views (`hemgs.render.render`), and PSNR/SSIM are the "
             "mean over views against the source's renders (`hemgs.metrics.compare_images`). Size is the "
             "compressed file (for gsplat's PNG, the whole folder). Times are wall seconds on one thread; "
             "splat-transform's include node's start-up, and its decode writes a PLY that we then read.", "",
             "Methods: `xz -9e` of the float32 PLY (the lossless floor); SPZ v4 from our writer "
             "(`hemgs.io.save_scene`), from PyPI `gsply` and from npm `@playcanvas/splat-transform` "
             f"{data['versions'].get('splat-transform', '?')}; PlayCanvas SOG (`-g cpu`) and compressed PLY; "
             "gsplat's `PngCompression`, which on the CPU runs only unsorted (its sorting needs PLAS, not on "
             "PyPI; the sorted attempt is listed as failed) and with SH degree 0 (its SH k-means imports "
             "torchpq and cupy, CUDA only), and which crops the scene to a square count of Gaussians. "
             "Each format's cheap rate knob is dropping the SH bands (`SH 0` "
             "points). HEMGS and HAC-mode points are not trained here: they are read from "
             "`docs/benchmarks/hemgs.json` and `docs/benchmarks/anchor_codec.json`, whose PSNR/SSIM were "
             "measured on the fit's held-out sampled views (every 8th of the fit's views); where the `.hgs` "
             "file named in a record still exists it is re-measured on this benchmark's 16 views "
             "(`hemgs.pipeline.render_views`, the anchor model rendered view-dependently), and the table "
             "says which. Anchor-free (`--mode direct`) points come from `docs/benchmarks/direct.json` "
             "(`benchmarks/bench_direct.py`: one fit per scene coded at 11 λ, each file decoded from disk "
             "and rendered from these very 16 views). BD-rate (`benchmarks/peers/bdrate.py`, piecewise-cubic Bjøntegaard) is given "
             "where a peer has a curve of 2+ points overlapping ours in PSNR; otherwise, for each peer point, "
             "our size at its PSNR (interpolated in log size) or our closest point.", "",
             "Caveat: the playbot sources are themselves decoded from PlayCanvas SOG and biker from SPZ, so "
             "re-encoding them in those formats loses less than it would on raw training output.", "",
             "Raw figures: `docs/benchmarks/peers.json`.", ""]
    for name, s in data["scenes"].items():
        lines += scene_section(name, s, f"img/rd_{name}.png")
    lines += [f"Machine: {m['platform']}, {m['cpus']} CPUs, Python {m['python']}, torch {m['torch']}, "
              f"node {m['node']}; run {data['date']}; versions: "
              + ", ".join(f"{k} {v}" for k, v in sorted(data["versions"].items())) + ".", END]
    text = doc.read_text() if doc.exists() else "# Benchmarks\n\n"
    block = "\n".join(lines) + "\n"
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block.rstrip("\n") + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    tmp = doc.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(doc)


def plot_scene(name: str, s: dict, out: Path) -> None:
    """PSNR against size (log axis) per method; lossless xz and the raw PLY as vertical lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.2), dpi=110)
    markers = iter("osD^v<>Pp*hX")
    for method, pts in by_method(s["points"]).items():
        ok = sorted((p for p in pts if p["status"] == "ok"), key=lambda p: p["bytes"])
        if not ok:
            continue
        if ok[0].get("lossless"):
            ax.axvline(ok[0]["bytes"], ls=":", c="0.3", label=f"{method}: lossless")
            continue
        ours = method in HEMGS_METHODS
        on_fit_views = [p for p in ok if not p.get("remeasured") and "held-out" in str(p.get("views", ""))]
        label = method + (" (fit's held-out views)" if ours and on_fit_views else "")
        ax.plot([p["bytes"] for p in ok], [p["psnr"] for p in ok], marker="o" if ours else next(markers),
                lw=2.2 if ours else 1, ms=5 if ours else 7, label=label, zorder=3 if ours else 2)
        if not ours:
            for p in ok:
                ax.annotate(p["point"], (p["bytes"], p["psnr"]), fontsize=6, xytext=(3, 3),
                            textcoords="offset points", alpha=0.7)
    ax.axvline(s["ply_bytes"], ls="--", c="0.6", label="float32 PLY (uncompressed)")
    ax.set_xscale("log")
    ax.set_xlabel("compressed size (bytes, log scale)")
    ax.set_ylabel("PSNR vs source renders (dB)")
    ax.set_title(f"{name}: {s['gaussians']:,} Gaussians, SH {s['sh_degree']} — 16 views at 256²")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out)
