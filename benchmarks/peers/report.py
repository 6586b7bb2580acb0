"""Tables, comparisons and RD plots from the benchmark's points (docs/benchmarks.md section, PNGs).

Every figure compared is the PSNR of the views' mean MSE (`METRIC`) on the evaluation views; a
point without it (measured on other views, or only as recorded) is left out of the tables, plots
and comparisons, and listed as left out.
"""

from __future__ import annotations

import math
from pathlib import Path

from bdrate import bd_rate, closest_point, size_at_psnr, value_at_psnr
from hemgs_records import DIRECT_METHOD, METRIC, measured

BEGIN, END = "<!-- peers:begin (written by benchmarks/peers/run.py) -->", "<!-- peers:end -->"
HEMGS_METHODS = (DIRECT_METHOD, "HEMGS (variable rate)", "HAC mode (hemgs --codec hac)")


def _ok(points: list[dict]) -> list[dict]:
    """The points of this protocol: run, and measured on the evaluation views."""
    return [p for p in points if p["status"] == "ok" and measured(p)]


def _curve(points: list[dict], key: str = METRIC) -> tuple[list[float], list[float]]:
    ok = [p for p in _ok(points) if p.get(key) is not None and math.isfinite(p[key])]
    return [p["bytes"] for p in ok], [p[key] for p in ok]


def by_method(points: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for p in points:
        out.setdefault(p["method"], []).append(p)
    return out


def _at_point(ours: list[dict], peer_point: dict) -> dict | None:
    """Our bytes and worst view at one peer point's PSNR (interpolated on our curve), or None
    where our curve does not reach it."""
    ob, op = _curve(ours)
    at = size_at_psnr(ob, op, peer_point[METRIC])
    if at is None:
        return None
    pairs = [(p[METRIC], p.get("worst_psnr")) for p in _ok(ours)]
    return {"point": peer_point["point"], "psnr": peer_point[METRIC], "peer_bytes": peer_point["bytes"],
            "ours_bytes": at, "peer_worst": peer_point.get("worst_psnr"),
            "ours_worst": value_at_psnr([a for a, _ in pairs], [w for _, w in pairs], peer_point[METRIC])}


def comparisons(points: list[dict]) -> list[dict]:
    """Ours against each lossy peer, on the PSNR of the mean MSE: BD-rate where both curves have 2+
    points and overlap in PSNR (with our bytes and worst view at each peer point we reach);
    otherwise, per peer point, our size at that PSNR or our closest point."""
    groups = by_method(points)
    out = []
    for ours in HEMGS_METHODS:
        mine = _ok(groups.get(ours, []))
        ob, op = _curve(mine)
        if not ob:
            continue
        for peer, pts in groups.items():
            if peer in HEMGS_METHODS:
                continue
            theirs = [p for p in _ok(pts) if math.isfinite(p[METRIC])]
            pb, pp = _curve(theirs)
            if not pb:
                continue
            at = [a for a in (_at_point(mine, p) for p in theirs) if a is not None]
            bd = bd_rate(pb, pp, ob, op)
            if bd is not None:
                lo, hi = max(min(pp), min(op)), min(max(pp), max(op))
                out.append({"ours": ours, "peer": peer, "kind": "bd_rate", "metric": METRIC, "bd_rate_pct": bd,
                            "psnr_range": [lo, hi], "at_points": at})
                continue
            for p in theirs:
                a = next((x for x in at if x["point"] == p["point"]), None)
                if a is not None:
                    out.append({"ours": ours, "peer": peer, "kind": "size_at_psnr", "metric": METRIC, **a})
                else:
                    cb, cp = closest_point(ob, op, p[METRIC])
                    out.append({"ours": ours, "peer": peer, "kind": "closest", "metric": METRIC, "point": p["point"],
                                "peer_psnr": p[METRIC], "peer_bytes": p["bytes"], "ours_psnr": cp, "ours_bytes": cb})
    return out


def _fmt_at(a: dict) -> str:
    worst = ""
    if a.get("ours_worst") is not None and a.get("peer_worst") is not None:
        worst = f"; worst view {a['ours_worst']:.2f} dB vs {a['peer_worst']:.2f} dB"
    return (f"at {a['point']} ({a['psnr']:.2f} dB): ours {a['ours_bytes']:,.0f} B vs {a['peer_bytes']:,} B "
            f"(**{a['ours_bytes'] / a['peer_bytes']:.2f}×**{worst})")


def _fmt_cmp(c: dict) -> str:
    if c["kind"] == "bd_rate":
        lo, hi = c["psnr_range"]
        at = "".join(f"; {_fmt_at(a)}" for a in c.get("at_points", []))
        return (f"| {c['ours']} | {c['peer']} | BD-rate **{c['bd_rate_pct']:+.1f}%** over {lo:.2f}–{hi:.2f} dB "
                f"(negative: ours needs fewer bytes){at} |")
    if c["kind"] == "size_at_psnr":
        return f"| {c['ours']} | {c['peer']} ({c['point']}) | {_fmt_at(c)}; interpolated on our curve |"
    return (f"| {c['ours']} | {c['peer']} ({c['point']}) | no overlap: peer {c['peer_bytes']:,} B at "
            f"{c['peer_psnr']:.2f} dB; our closest {c['ours_bytes']:,.0f} B at {c['ours_psnr']:.2f} dB |")


def _num(v, fmt: str) -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and math.isinf(v):
        return "∞ (lossless)"
    return format(v, fmt)


def _left_out(points: list[dict]) -> list[str]:
    """One line per method whose points are not measured on the evaluation views, and why."""
    out = []
    for method, pts in by_method([p for p in points if p["status"] == "ok" and not measured(p)]).items():
        why = sorted({p.get("remeasure_error", "measured on other views") for p in pts})
        why_s = why[0] if len(why) == 1 else f"{why[0]} (and {len(why) - 1} more reasons)"
        if why_s.startswith("file gone"):
            why_s = f"their .hgs files are gone (e.g. {why[0][len('file gone: '):]})"
        src = sorted({p.get("record_from") for p in pts if p.get("record_from")})
        out.append(f"- {method}: {len(pts)} point(s){' recorded in ' + ', '.join(src) if src else ''}, not "
                   f"measured on the evaluation views ({why_s}); left out rather than mixed with these figures.")
    return out


def scene_section(name: str, s: dict, img_rel: str) -> list[str]:
    lines = [f"### {name}", "",
             f"Source `{s['source']}`: {s['gaussians']:,} Gaussians, SH degree {s['sh_degree']}, "
             f"{s['source_bytes']:,} bytes as given; {s['ply_bytes']:,} bytes as float32 3DGS PLY (the ratio's "
             f"numerator). Reference: the source's own renders on {s['views']}. Benchmark time for this scene: "
             f"{s['seconds']:.0f} s.", ""]
    rows = [p for p in s["points"] if p["status"] != "ok" or measured(p)]
    if rows:
        lines += ["| method | point | size (B) | ratio | PSNR of mean MSE (dB) | PSNR, mean of views (dB) "
                  "| worst view (dB) | SSIM | encode (s) | decode (s) | notes |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in rows:
        if p["status"] != "ok":
            lines.append(f"| {p['method']} | {p['point']} | **failed** | | | | | | | | {p['error']} |")
            continue
        notes = p.get("note", "")
        if p["method"] in HEMGS_METHODS:
            notes = p["views"] + (f"; recorded on the fit's views: {p['psnr_recorded']:.2f} dB"
                                  if p.get("remeasured") and p.get("psnr_recorded") is not None else "")
        lines.append(
            f"| {p['method']} | {p['point']} | {p['bytes']:,} | {s['ply_bytes'] / p['bytes']:.1f}× | "
            f"{_num(p[METRIC], '.2f')} | {_num(p['psnr'], '.2f')} | {_num(p.get('worst_psnr'), '.2f')} | "
            f"{_num(p['ssim'], '.4f')} | {_num(p.get('encode_s'), '.2f')} | {_num(p.get('decode_s'), '.2f')} | {notes} |")
    left = _left_out(s["points"])
    if left:
        lines += ["", "Not in this table:", "", *left]
    lines += ["", f"![rate–distortion, {name}]({img_rel})", ""]
    s["comparisons"] = comparisons(s["points"])  # from the points, never a stored list of another protocol
    if s["comparisons"]:
        lines += ["| ours | peer | on the PSNR of mean MSE |", "|---|---|---|"]
        lines += [_fmt_cmp(c) for c in s["comparisons"]]
    else:
        lines.append("No anchor-free, HEMGS or HAC-mode points measured on the evaluation views for this scene "
                     "yet, so no comparison.")
    return lines + [""]


def write_section(doc: Path, data: dict, img_dir: Path) -> None:
    """Replace (or append) this benchmark's section of `doc`, keeping the rest of the file."""
    m = data["machine"]
    lines = [BEGIN, "## Rate–distortion against the compressors users would pick instead", "",
             "One command (installs the peers at pinned versions into ignored folders, then runs):", "",
             "    bash benchmarks/peers/run.sh            # default scenes; or: run.sh --scenes a.ply b.spz", "",
             "**Views.** Every method is scored on the evaluation views (`hemgs.cameras.evaluation_views`): "
             "16 views at 256² on a Fibonacci sphere around the scene, pole to pole, at twice its robust "
             "half-diagonal with a 50° field of view, at a phase that no encoder uses (anchor-free mode "
             "measures its importance and balance on other views). The source is rendered from them, every "
             "method's decoded scene likewise (`hemgs.render.render`), and `hemgs.metrics.compare_images` "
             "gives per method: the **PSNR of the mean MSE** over the views (what the comparisons, BD-rates "
             "and plots use, so a view that fails cannot hide in an average of dBs), the PSNR as the mean of "
             "the views' PSNRs (as 3DGS papers report it), the **worst view**'s PSNR, and SSIM (mean of "
             "views). Size is the compressed file (for gsplat's PNG, the whole folder). Times are wall "
             "seconds on one thread; splat-transform's include node's start-up, and its decode writes a PLY "
             "that we then read.", "",
             "Methods: `xz -9e` of the float32 PLY (the lossless floor); SPZ v4 from our writer "
             "(`hemgs.io.save_scene`), from PyPI `gsply` and from npm `@playcanvas/splat-transform` "
             f"{data['versions'].get('splat-transform', '?')}; PlayCanvas SOG (`-g cpu`) and compressed PLY; "
             "gsplat's `PngCompression`, which on the CPU runs only unsorted (its sorting needs PLAS, not on "
             "PyPI; the sorted attempt is listed as failed) and with SH degree 0 (its SH k-means imports "
             "torchpq and cupy, CUDA only), and which crops the scene to a square count of Gaussians. "
             "Each format's cheap rate knob is dropping the SH bands (`SH 0` points). Anchor-free "
             "(`--mode direct`) points come from `docs/benchmarks/direct.json` (`benchmarks/bench_direct.py`: "
             "one fit per scene coded at each λ, each file decoded from disk and rendered from these very "
             "views). HEMGS and HAC-mode points are not trained here: they are read from "
             "`docs/benchmarks/hemgs.json` and `docs/benchmarks/anchor_codec.json` and rendered from the "
             "evaluation views where the `.hgs` file a record names still exists "
             "(`hemgs.pipeline.render_views`, the anchor model rendered view-dependently); records whose "
             "files are gone carry only figures from their fit's own views, and are listed as left out. "
             "BD-rate (`benchmarks/peers/bdrate.py`, piecewise-cubic Bjøntegaard, on the PSNR of the mean "
             "MSE) is given where a peer has a curve of 2+ points overlapping ours, with our bytes and worst "
             "view at each of the peer's points that our curve reaches (interpolated: bytes in log, worst "
             "view linearly); otherwise, for each peer point, our size at its PSNR or our closest point.", "",
             "Caveat: the playbot sources are themselves decoded from PlayCanvas SOG and biker from SPZ, so "
             "re-encoding them in those formats loses less than it would on raw training output.", "",
             "Raw figures (per-view PSNRs of the peers too): `docs/benchmarks/peers.json`.", ""]
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
    """Two panels against size (log axis) per method: the PSNR of the mean MSE, and the worst view;
    lossless xz and the raw PLY as vertical lines. Only points measured on the evaluation views."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2), dpi=100, sharex=True)
    markers = iter("osD^v<>Pp*hX")
    for method, pts in by_method(s["points"]).items():
        ok = sorted(_ok(pts), key=lambda p: p["bytes"])
        if not ok:
            continue
        if ok[0].get("lossless"):
            for ax in axes:
                ax.axvline(ok[0]["bytes"], ls=":", c="0.3", label=f"{method}: lossless" if ax is axes[0] else None)
            continue
        ours = method in HEMGS_METHODS
        style = dict(marker="o" if ours else next(markers), lw=2.2 if ours else 1, ms=5 if ours else 7,
                     zorder=3 if ours else 2)
        line, = axes[0].plot([p["bytes"] for p in ok], [p[METRIC] for p in ok], label=method, **style)
        axes[1].plot([p["bytes"] for p in ok], [p.get("worst_psnr", math.nan) for p in ok], c=line.get_color(), **style)
        if not ours:
            for ax, key in zip(axes, (METRIC, "worst_psnr")):
                for p in ok:
                    ax.annotate(p["point"], (p["bytes"], p[key]), fontsize=6, xytext=(3, 3),
                                textcoords="offset points", alpha=0.7)
    for ax, ylabel in zip(axes, ("PSNR of the views' mean MSE (dB)", "worst view's PSNR (dB)")):
        ax.axvline(s["ply_bytes"], ls="--", c="0.6", label="float32 PLY (uncompressed)" if ax is axes[0] else None)
        ax.set_xscale("log")
        ax.set_xlabel("compressed size (bytes, log scale)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"{name}: {s['gaussians']:,} Gaussians, SH {s['sh_degree']} — 16 evaluation views at 256², "
                 "whole sphere", fontsize=10)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out)
