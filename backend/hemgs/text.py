"""Results as lines for people to read: what `hemgs` prints (the CLI and the demo).

Each function takes the dict a service job returns and gives text; nothing here computes.
"""

from __future__ import annotations

# direct files' header "importance_views": where the encoder judged what shows
IMPORTANCE_VIEWS_SHOWN = {"sphere": "every direction around the scene",
                          "cameras": "the scene's own cameras only (--for-cameras)"}


def human_bytes(n: int | float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def ratio(source_bytes: int, out_bytes: int, digits: int) -> str:
    """How much smaller (or larger: a convert to an unpacked format) the written file is."""
    r = source_bytes / max(out_bytes, 1)
    return f"{r:.{digits}f}x smaller than the source" if r >= 1 else f"{1 / r:.{digits}f}x larger than the source"


def info_lines(info: dict) -> list[str]:
    """`hemgs info`: a file's summary (service.file_info)."""
    out = [f"{info['file']}: {info['format'].upper()}, {human_bytes(info['bytes'])}"]
    if info["format"] == "hgs":
        lam = info.get("lambda")
        out.append(f"  mode:       {info.get('mode')} (codec {info.get('codec')}"
                   + (f", λ={lam:g})" if isinstance(lam, (int, float)) else ")"))
        if isinstance(info.get("source_bytes"), int) and info["source_bytes"] > 0:
            out.append(f"  source:     {info.get('source')}, {human_bytes(info['source_bytes'])} "
                       f"({info['source_bytes'] / max(info['bytes'], 1):.1f}x larger)")
    if isinstance(info.get("gaussians"), int):
        out += [f"  Gaussians:  {info['gaussians']:,}", f"  SH degree:  {info.get('sh_degree')}"]
    if info.get("importance_views") in IMPORTANCE_VIEWS_SHOWN:
        out.append(f"  coded for:  {IMPORTANCE_VIEWS_SHOWN[info['importance_views']]}")
    if "bounds_min" in info:
        lo, hi = info["bounds_min"], info["bounds_max"]
        out.append("  bounds:     (" + ", ".join(f"{v:.3f}" for v in lo) + ") .. ("
                   + ", ".join(f"{v:.3f}" for v in hi) + ")")
        out.append(f"  mean opacity: {info['mean_opacity']:.3f}")
    out += [f"  {key.replace('_', ' ')}: {info[key]}"
            for key in ("voxels", "anchors", "feature_dim", "offsets_per_anchor", "version") if key in info]
    out += [f"  section {name}: {n:,} bytes" for name, n in info.get("sections", {}).items()]
    return out


def eval_lines(res: dict, width: int, height: int) -> list[str]:
    """`hemgs eval`: PSNR three ways, SSIM and sizes (service.evaluate)."""
    return [f"{res['other']} against {res['source']}, {res['views']} views at {width}x{height}:",
            f"  PSNR  {res['psnr']:.2f} dB mean of views, {res['psnr_of_mean_mse']:.2f} dB of the mean MSE, "
            f"{res['worst_psnr']:.2f} dB the worst view",
            f"  SSIM  {res['ssim']:.4f}",
            f"  size  {human_bytes(res['other_bytes'])} vs {human_bytes(res['source_bytes'])} "
            f"({res['source_bytes'] / max(res['other_bytes'], 1):.2f}x)",
            f"  {res['lpips_note']}"]


def sizes_lines(report: dict, source_bytes: int | None, what: str = "") -> list[str]:
    """A written .hgs: its size, its ratio to the source's, `what` it holds, and its sections."""
    total = report["bytes"]
    r = f" ({ratio(source_bytes, total, 1)})" if source_bytes else ""
    what = what or f"{report['anchors']:,} anchors, "
    return ([f"wrote {report['path']}: {human_bytes(total)}{r}, {what}encoded in {report['seconds']:.2f} s"]
            + [f"  {name:<10} {n:>10,} bytes  {100 * n / total:5.1f}%" for name, n in report["sections"].items()])


def heldout_lines(fitted) -> list[str]:
    """A trained anchor model's held-out PSNR, before quantization."""
    psnr = fitted.history.get("heldout_psnr")
    if psnr is None:
        return []
    against = "photos" if fitted.history.get("targets") == "images" else "teacher renders"
    return [f"  held-out PSNR {psnr:.2f} dB over {len(fitted.test_views)} views (against the {against}, "
            "before quantization)"]


def say(lines: list[str]) -> None:
    print("\n".join(lines))
