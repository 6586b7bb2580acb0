"""The `hemgs` command line.

Every failure that the user can fix (missing, truncated or foreign files, bad arguments) is one line
on stderr and exit code 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from . import __version__
from .errors import HemgsError, InputError, one_line
from .modes import (ANCHOR_LAMBDA_DEFAULT, ANCHOR_TRAINED_LAMBDAS, DEFAULT_MODE, DIRECT_LAMBDA_DEFAULT,
                    DIRECT_LAMBDA_RANGE, MODES, anchor_only, check_direct_source, mode_for)
from .progress import Reporter
from .service import (ViewSpec, check_iters, check_outputs, direct_configs, evaluate, file_info, fit_config,
                      load_scene_checked, own_views, save_png, scene_and_draw, train_and_compress)

EXIT_USAGE = 2
DEFAULT_VIEWS = 16  # the sampled view set of render and eval, when a scene brings no cameras


def main(argv: list[str] | None = None) -> int:
    # A shell starts background jobs with SIGINT ignored, and children inherit that: without this,
    # `kill -INT` (or a job manager's Ctrl-C) would never reach a long training.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = _build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    if hasattr(args, "lam"):
        args.lam_given = args.lam is not None
        if args.lam is None:
            args.lam = 1e-3
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("hemgs: interrupted", file=sys.stderr)
        return 130
    except (HemgsError, OSError) as exc:
        if args.debug:
            raise
        print(f"hemgs: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # a bug of ours: say so, in one line, and keep the traceback for --debug
        if args.debug:
            raise
        print(f"hemgs: internal error: {exc.__class__.__name__}: {one_line(exc)} (rerun with --debug and "
              "report it)", file=sys.stderr)
        return 1


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hemgs", description="Compress and inspect 3D Gaussian Splatting scenes.")
    p.add_argument("--version", action="version", version=f"hemgs {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    common.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where to render/compute (default: cuda when present)")
    common.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: HEMGS_THREADS or torch's)")
    p.set_defaults(debug=False)
    sub = p.add_subparsers(title="commands")
    # The file formats these texts name come from the format registry (hemgs.io.formats).
    from .io import formats

    scenes = "/".join(f.label for f in formats.readable() if f.label)  # "PLY/SPZ"
    written = formats.writable()

    s = sub.add_parser("info", parents=[common], help=f"summarise a {formats.labels(formats.listed())} file")
    s.add_argument("file")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_info)

    view_args = argparse.ArgumentParser(add_help=False)
    view_args.add_argument("--width", type=int, default=256)
    view_args.add_argument("--height", type=int, default=None, help="default: same as --width")
    view_args.add_argument("--cameras", default=None, help="cameras.json or transforms.json to render from")

    s = sub.add_parser("render", parents=[common, view_args], help="render one view of a scene to a PNG")
    s.add_argument("file")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--view", type=int, default=0, help="index of the view (default 0)")
    s.set_defaults(func=cmd_render)

    s = sub.add_parser("convert", parents=[common],
                       help=f"convert between {formats.labels(written, 'and')} (by extension)")
    s.add_argument("src")
    s.add_argument("dst")
    s.add_argument("--spz-version", type=int, default=None, choices=[2, 3, 4])
    s.set_defaults(func=cmd_convert)

    s = sub.add_parser("eval", parents=[common, view_args],
                       help="PSNR/SSIM of OTHER's renders against SOURCE's, from views over the whole sphere "
                            "that no encoder uses (or --cameras)")
    s.add_argument("source")
    s.add_argument("other")
    s.add_argument("--views", type=int, default=DEFAULT_VIEWS)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_eval)

    fit_args = argparse.ArgumentParser(add_help=False)
    fit_args.add_argument("--lambda", dest="lam", type=float, default=None,
                          help="rate-distortion weight λ, larger = smaller file, in each mode's own units: direct "
                               f"mode {DIRECT_LAMBDA_RANGE[0]:g} to {DIRECT_LAMBDA_RANGE[1]:g} (default "
                               f"{DIRECT_LAMBDA_DEFAULT:g}); anchor mode (train, --mode anchor) the model's range, "
                               f"trained on {ANCHOR_TRAINED_LAMBDAS[0]:g} to {ANCHOR_TRAINED_LAMBDAS[-1]:g} "
                               f"(default {ANCHOR_LAMBDA_DEFAULT:g})")
    fit_args.add_argument("--steps", type=int, default=None, help="render-space training steps (default 300)")
    fit_args.add_argument("--warm-steps", type=int, default=None,
                          help="attribute-space warm-start steps (default: about 250 visits per anchor)")
    fit_args.add_argument("--train-width", dest="width", type=int, default=None,
                          help="training render size (default 256)")
    fit_args.add_argument("--views", type=int, default=None,
                          help="sampled training views (default 32, every 8th held out)")
    fit_args.add_argument("--codec", choices=["hemgs", "hac"], default="hemgs",
                          help="entropy model: HEMGS (default) or the HAC baseline")
    fit_args.add_argument("--no-scene-agnostic", action="store_true", help="HEMGS without the pre-trained point-network prior")
    fit_args.add_argument("--no-ar", action="store_true", help="HEMGS without the autoregressive context")
    fit_args.add_argument("--no-acs", action="store_true",
                          help="HEMGS with a fixed 5x5x5 context field instead of adaptive context selection")
    fit_args.add_argument("--fixed-rate", action="store_true",
                          help="one λ per model (no variable-rate predictor); all four switches = HAC mode")
    fit_args.add_argument("--scene-agnostic", action="store_true",
                          help="--mode direct: switch the scene-agnostic prior on (off there by default: ~1%% either "
                               "way in size and slower decoding on the scenes measured, docs/direct-mode.md)")
    fit_args.add_argument("--ar", action="store_true",
                          help="--mode direct: switch the autoregressive context on (off there by default, as above)")
    fit_args.add_argument("--images", default=None, metavar="TRANSFORMS",
                          help="train against photos: a NeRF/instant-ngp transforms.json or its folder (every 8th "
                               "photo held out); SRC, when given, is the starting point")
    fit_args.add_argument("--downscale", type=float, default=1.0,
                          help="with --images: divide the photos' size by this (e.g. 4 or 8 on a CPU)")
    fit_args.add_argument("--mlps", default=None, metavar="CHECKPOINT",
                          help="the MLP checkpoint (checkpoints.pth) of a Scaffold-GS anchor PLY given as SRC")

    s = sub.add_parser("train", parents=[common, fit_args], help="fit a model to a 3DGS scene (train once, export many)")
    s.add_argument("src", nargs="?", default=None,
                   help=f"3DGS {scenes}, or Scaffold-GS anchor PLY (with --mlps); optional with --images")
    s.add_argument("-o", "--output", required=True, help="model file (.safetensors)")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("compress", parents=[common, fit_args],
                       help="write a .hgs from a 3DGS scene (direct mode: no training) or a trained model "
                            "(anchor mode; --mode anchor trains one from the scene first)")
    s.add_argument("src", nargs="?", default=None,
                   help=f"a 3DGS {scenes} (direct mode, the default), or a trained model, or with --mode anchor "
                        "a source to train first (as for train; optional with --images)")
    s.add_argument("-o", "--output", required=True, help="output .hgs")
    s.add_argument("--mode", choices=list(MODES), default=None,
                   help=f"{DEFAULT_MODE} (the default for a 3DGS {scenes}): anchor-free, the entropy model is fitted "
                        "to the scene's own Gaussians in seconds to a minute, λ "
                        f"{DIRECT_LAMBDA_RANGE[0]:g} to {DIRECT_LAMBDA_RANGE[1]:g} (default {DIRECT_LAMBDA_DEFAULT:g}); "
                        "anchor (the default for a trained model, --images or --mlps): HEMGS on a trained anchor "
                        "model, λ 1e-3 to 4e-3")
    s.add_argument("--iters", type=int, default=None,
                   help="--mode direct: fitting iterations (default: hemgs.direct.DirectFitConfig's)")
    s.add_argument("--for-cameras", nargs="?", const="", default=None, metavar="CAMERAS",
                   help="--mode direct: code the scene for its own cameras only (the cameras.json beside SRC, "
                        "or this cameras.json/transforms.json) instead of every direction around it; "
                        "recorded in the file")
    s.set_defaults(func=cmd_compress)

    s = sub.add_parser("decompress", parents=[common],
                       help=f"decode a .hgs to a 3DGS {formats.labels(written)} (baked)")
    s.add_argument("file")
    s.add_argument("-o", "--output", required=True, help=f"output {formats.extension_list(written)}")
    s.add_argument("--sh-degree", type=int, default=None, choices=[0, 1, 2, 3],
                   help="anchor files: SH degree of the baked colours (default 1); direct files keep their own "
                        "degree, and a lower one given here truncates it")
    s.set_defaults(func=cmd_decompress)

    from . import pretrain  # torch-free import: the parser stays cheap

    s = sub.add_parser("pretrain", parents=[common], help="pre-train the scene-agnostic point network (maintainers)")
    pretrain.add_arguments(s)
    s.set_defaults(func=pretrain.run)

    s = sub.add_parser("demo", parents=[common], help="the main job on a scene (the bundled demo by default)")
    s.add_argument("file")
    s.add_argument("-o", "--output", default="out/demo", help="output folder")
    s.add_argument("--steps", type=int, default=150, help="render-space training steps")
    s.add_argument("--warm-steps", type=int, default=200, help="warm-start steps")
    s.set_defaults(func=cmd_demo)
    return p


# ---- helpers ----------------------------------------------------------------------------------
def _setup_torch(args):
    from .device import resolve_device, set_threads

    set_threads(args.threads)
    return resolve_device(args.device)


def _views(scene, args, n: int, source_path: str | None = None, *, evaluation: bool = False):
    """--cameras, else the scene's own or sampled views (hemgs.service.ViewSpec)."""
    return ViewSpec(n=n, width=args.width, height=args.height, cameras=args.cameras).views(
        scene, source_path, evaluation=evaluation)


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


# ---- commands ---------------------------------------------------------------------------------
def cmd_info(args) -> int:
    info = file_info(args.file)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_info(info)
    return 0


# direct files' header "importance_views": where the encoder judged what shows
IMPORTANCE_VIEWS_SHOWN = {"sphere": "every direction around the scene",
                          "cameras": "the scene's own cameras only (--for-cameras)"}


def _print_info(info: dict) -> None:
    print(f"{info['file']}: {info['format'].upper()}, {_human_bytes(info['bytes'])}")
    if info["format"] == "hgs":
        lam = info.get("lambda")
        print(f"  mode:       {info.get('mode')} (codec {info.get('codec')}"
              + (f", λ={lam:g})" if isinstance(lam, (int, float)) else ")"))
        if isinstance(info.get("source_bytes"), int) and info["source_bytes"] > 0:
            print(f"  source:     {info.get('source')}, {_human_bytes(info['source_bytes'])} "
                  f"({info['source_bytes'] / max(info['bytes'], 1):.1f}x larger)")
    if isinstance(info.get("gaussians"), int):
        print(f"  Gaussians:  {info['gaussians']:,}")
        print(f"  SH degree:  {info.get('sh_degree')}")
    if info.get("importance_views") in IMPORTANCE_VIEWS_SHOWN:
        print(f"  coded for:  {IMPORTANCE_VIEWS_SHOWN[info['importance_views']]}")
    if "bounds_min" in info:
        lo, hi = info["bounds_min"], info["bounds_max"]
        print("  bounds:     (" + ", ".join(f"{v:.3f}" for v in lo) + ") .. (" + ", ".join(f"{v:.3f}" for v in hi) + ")")
        print(f"  mean opacity: {info['mean_opacity']:.3f}")
    for key in ("voxels", "anchors", "feature_dim", "offsets_per_anchor", "version"):
        if key in info:
            print(f"  {key.replace('_', ' ')}: {info[key]}")
    if "sections" in info:
        for name, n in info["sections"].items():
            print(f"  section {name}: {n:,} bytes")


def cmd_render(args) -> int:
    check_outputs(args.output, make_folders=True)
    device = _setup_torch(args)
    with Reporter() as report:  # a .hgs: decoded (a direct file's Gaussians, an anchor file's model)
        scene, draw = scene_and_draw(args.file, device, progress=report)
    cams = _views(scene, args, n=DEFAULT_VIEWS, source_path=args.file)
    if not 0 <= args.view < len(cams):
        raise InputError(f"--view {args.view} is out of range: this scene has views 0..{len(cams) - 1}")
    t0 = time.perf_counter()
    image = draw(cams[args.view])
    dt = time.perf_counter() - t0
    save_png(image, args.output)
    print(f"wrote {args.output} ({cams[args.view].width}x{cams[args.view].height}, view {args.view}, "
          f"{len(scene):,} Gaussians, {dt:.2f} s on {device.type})")
    return 0


def cmd_convert(args) -> int:
    from .io import save_scene

    check_outputs(args.dst)
    scene = load_scene_checked(args.src)
    kwargs = {"spz_version": args.spz_version} if args.spz_version else {}
    save_scene(scene, args.dst, **kwargs)
    a, b = os.path.getsize(args.src), os.path.getsize(args.dst)
    print(f"wrote {args.dst}: {len(scene):,} Gaussians, {_human_bytes(b)} ({_ratio(a, b, 2)})")
    return 0


def _print_eval(res: dict, cams) -> None:
    print(f"{res['other']} against {res['source']}, {res['views']} views at {cams[0].width}x{cams[0].height}:")
    print(f"  PSNR  {res['psnr']:.2f} dB mean of views, {res['psnr_of_mean_mse']:.2f} dB of the mean MSE, "
          f"{res['worst_psnr']:.2f} dB the worst view")
    print(f"  SSIM  {res['ssim']:.4f}")
    print(f"  size  {_human_bytes(res['other_bytes'])} vs {_human_bytes(res['source_bytes'])} "
          f"({res['source_bytes'] / max(res['other_bytes'], 1):.2f}x)")
    print(f"  {res['lpips_note']}")


def cmd_eval(args) -> int:
    device = _setup_torch(args)
    source = load_scene_checked(args.source)
    cams = _views(source, args, n=args.views, source_path=args.source, evaluation=True)
    res = evaluate(args.source, args.other, cams, device)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        _print_eval(res, cams)
    return 0


def _fit_config(args):
    given = {k: v for k, v in (("width", args.width), ("steps", args.steps), ("views", args.views)) if v is not None}
    return fit_config(lam=args.lam, warm_steps=args.warm_steps, codec=args.codec,
                      scene_agnostic=not args.no_scene_agnostic, ar=not args.no_ar, acs=not args.no_acs,
                      variable_rate=not args.fixed_rate, **given)


def _refuse_direct_switches(args) -> None:
    if args.ar or args.scene_agnostic:
        raise InputError("--ar and --scene-agnostic switch parts on in --mode direct; anchor-mode HEMGS has them on "
                         "already (--no-ar, --no-scene-agnostic switch them off)")


def cmd_train(args) -> int:
    from .pipeline import train

    check_outputs(args.output)
    _refuse_direct_switches(args)
    device = _setup_torch(args)
    cfg = _fit_config(args)
    t0 = time.perf_counter()
    with Reporter() as report:
        fitted = train(args.src, args.output, cfg, progress=report, device=device, **_source_args(args))
    lo, hi = cfg.lambda_range
    rate = f"λ={lo:g}" if lo == hi else f"λ {lo:g} to {hi:g} (variable rate)"
    print(f"wrote {args.output}: {fitted.model.num_anchors:,} anchors, {cfg.codec.upper()} model, {rate}, "
          f"trained in {time.perf_counter() - t0:.0f} s on {device.type}")
    _print_heldout(fitted)
    return 0


def _source_args(args) -> dict:
    """The source options of train/compress (photos, Scaffold-GS MLPs), checked."""
    if args.src is None and args.images is None:
        raise InputError("give a source file, or photos with --images")
    if args.images is None and args.downscale != 1.0:
        raise InputError("--downscale applies to --images only")
    return {"images": args.images, "mlps": args.mlps, "downscale": args.downscale}


def _print_heldout(fitted) -> None:
    psnr = fitted.history.get("heldout_psnr")
    if psnr is not None:
        against = "photos" if fitted.history.get("targets") == "images" else "teacher renders"
        print(f"  held-out PSNR {psnr:.2f} dB over {len(fitted.test_views)} views (against the {against}, "
              "before quantization)")


def _ratio(source_bytes: int, out_bytes: int, digits: int) -> str:
    """How much smaller (or larger: a convert to an unpacked format) the written file is."""
    r = source_bytes / max(out_bytes, 1)
    return f"{r:.{digits}f}x smaller than the source" if r >= 1 else f"{1 / r:.{digits}f}x larger than the source"


def _print_sizes(report: dict, source_bytes: int | None, what: str = "") -> None:
    """The written file: its size, its ratio to the source's, `what` it holds, and its sections."""
    total = report["bytes"]
    ratio = f" ({_ratio(source_bytes, total, 1)})" if source_bytes else ""
    what = what or f"{report['anchors']:,} anchors, "
    print(f"wrote {report['path']}: {_human_bytes(total)}{ratio}, {what}encoded in {report['seconds']:.2f} s")
    for name, n in report["sections"].items():
        print(f"  {name:<10} {n:>10,} bytes  {100 * n / total:5.1f}%")


def _check_direct_args(args) -> None:
    """What --mode direct refuses: anchor-mode training inputs and options."""
    if args.images is not None or args.mlps is not None:
        raise InputError("--mode direct codes a 3DGS PLY/SPZ's own Gaussians: --images and --mlps apply to "
                         "anchor mode (--mode anchor)")
    if args.src is None:
        raise InputError("--mode direct needs a source file (a 3DGS PLY or SPZ)")
    if args.codec != "hemgs":
        raise InputError(f"--codec {args.codec} applies to anchor mode; direct mode is HEMGS only")
    if args.downscale != 1.0:
        raise InputError("--downscale applies to --images only")
    training = [flag for flag, v in (("--steps", args.steps), ("--warm-steps", args.warm_steps),
                                     ("--train-width", args.width), ("--views", args.views)) if v is not None]
    if training:
        raise InputError(f"{', '.join(training)} train an anchor model: add --mode anchor (direct mode has no "
                         "training step; --iters sets its fit)")
    check_iters(args.iters, "--iters")
    check_direct_source(args.src, asked="--mode direct", model_hint=" (or use --mode anchor)")


def cmd_compress_direct(args) -> int:
    from .modes import check_direct_lambda
    from .pipeline import compress_direct

    lam = check_direct_lambda(args.lam if args.lam_given else DIRECT_LAMBDA_DEFAULT)  # before any work
    _check_direct_args(args)
    _setup_torch(args)
    from .modes import DIRECT_SWITCH_DEFAULTS as on

    if (args.ar and args.no_ar) or (args.scene_agnostic and args.no_scene_agnostic):
        raise InputError("--ar/--no-ar and --scene-agnostic/--no-scene-agnostic contradict each other")
    cfg, fcfg = direct_configs({
        "scene_agnostic": (on["scene_agnostic"] or args.scene_agnostic) and not args.no_scene_agnostic,
        "ar": (on["ar"] or args.ar) and not args.no_ar, "acs": on["acs"] and not args.no_acs,
        "variable_rate": on["variable_rate"] and not args.fixed_rate}, args.iters)
    # --for-cameras alone ("") means the cameras.json beside the source
    cameras = own_views(args.src, None if args.for_cameras is None else args.for_cameras or True)
    with Reporter() as stages:
        report = compress_direct(args.src, args.output, lam=lam, cfg=cfg, fcfg=fcfg, stages=stages, cameras=cameras)
    for w in report["warnings"]:
        print(f"hemgs: warning: {args.src}: {w}", file=sys.stderr)
    _print_sizes(report, report["source_bytes"], f"direct mode at λ={lam:g}, {report['gaussians']:,} Gaussians, "
                                                 f"fitted in {report['fit_seconds']:.1f} s, ")
    return 0


def cmd_compress(args) -> int:
    from .io import detect_format
    from .pipeline import compress

    check_outputs(args.output)
    anchor_input = args.images is not None or args.mlps is not None or (
        args.src is not None and anchor_only(args.src))
    args.mode = mode_for(args.mode, anchor_input=anchor_input)
    if args.mode == "direct":
        return cmd_compress_direct(args)
    if args.iters is not None:
        raise InputError("--iters applies to --mode direct (anchor mode trains with --steps and --warm-steps)")
    if args.for_cameras is not None:
        raise InputError("--for-cameras applies to --mode direct (anchor mode trains on the scene's cameras.json "
                         "when there is one)")
    _refuse_direct_switches(args)
    device = _setup_torch(args)
    if args.src is None or detect_format(args.src) != "model":
        cfg = _fit_config(args)
        sources = _source_args(args)
        with Reporter() as stages:
            fitted, report, source_bytes = train_and_compress(args.src, args.output, cfg, device, stages, **sources)
        _print_heldout(fitted)
    else:
        if args.images is not None or args.mlps is not None:
            raise InputError(f"{args.src} is a trained model already: --images and --mlps apply to training")
        with Reporter() as stages:
            report = compress(args.src, args.output, lam=args.lam if args.lam_given else None, progress=stages)
        source_bytes = report.get("source_bytes")
    _print_sizes(report, source_bytes)
    return 0


def cmd_decompress(args) -> int:
    from .pipeline import decompress

    check_outputs(args.output)
    _setup_torch(args)
    with Reporter() as report:
        scene = decompress(args.file, args.output, sh_degree=args.sh_degree, progress=report)
    how = "decoded" if scene.meta.get("mode") == "direct" else "baked"
    print(f"wrote {args.output}: {len(scene):,} Gaussians ({how}, SH degree {scene.sh_degree})")
    return 0


DEMO_SMALL_LAMBDA = 16.0  # the demo's second direct file: direct mode's smallest, near the anchor file's size


def cmd_demo(args) -> int:
    """The main job on a scene: summary and a render; then direct mode (the default path) at its
    default λ and at its smallest, and anchor mode (train, compress), each decoded and measured on
    the evaluation views, with a table of both modes and the pictures side by side."""
    import numpy as np

    from .cameras import evaluation_views, scene_views
    from .fit import FitConfig, render_views_anchor
    from .pipeline import compress_direct, compress_model, encode_direct, train
    from .render import render

    device = _setup_torch(args)
    scene = load_scene_checked(args.file)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    source_bytes = os.path.getsize(args.file)
    _print_info({"file": args.file, "format": "ply", "bytes": source_bytes, **scene.summary()})
    cam = scene_views(scene, args.file, n=DEFAULT_VIEWS, width=512, height=512)[0]
    t0 = time.perf_counter()
    pictures = {"source": render(scene, cam, device=device)}
    save_png(pictures["source"], str(out / "source.png"))
    print(f"rendered {out / 'source.png'} (512x512) in {time.perf_counter() - t0:.2f} s on {device.type}")
    cams = evaluation_views(scene, n=DEFAULT_VIEWS, width=256)
    refs = [render(scene, c, device=device) for c in cams]  # one set of references for every file
    rows = []

    def measure(mode: str, lam: float, path: Path, seconds: float, picture) -> None:
        res = evaluate(args.file, str(path), cams, device, refs=refs)
        _print_eval(res, cams)
        name = f"decoded_{path.stem}"
        save_png(picture, str(out / f"{name}.png"))
        pictures[path.stem] = picture
        rows.append((mode, lam, path, res, seconds))

    print(f"\ndirect mode (the default): fit the scene's own Gaussians, code at λ={DIRECT_LAMBDA_DEFAULT:g}")
    t0 = time.perf_counter()
    with Reporter() as stages:
        report = compress_direct(args.file, out / "direct.hgs", lam=DIRECT_LAMBDA_DEFAULT, stages=stages)
    measure("direct", DIRECT_LAMBDA_DEFAULT, out / "direct.hgs", time.perf_counter() - t0,
            render(report["decoded"].scene, cam, device=device))
    t0 = time.perf_counter()
    with Reporter() as stages:
        small = encode_direct(report["fitted"], out / "direct_small.hgs", lam=DEMO_SMALL_LAMBDA, progress=stages)
    measure("direct", DEMO_SMALL_LAMBDA, out / "direct_small.hgs", time.perf_counter() - t0,
            render(small["decoded"].scene, cam, device=device))

    print("\nanchor mode (the paper's method): train an anchor model, then code it")
    cfg = FitConfig(lam=1e-3, width=128, warm_steps=args.warm_steps, steps=args.steps)
    t0 = time.perf_counter()
    with Reporter() as stages:
        fitted = train(args.file, out / "model.safetensors", cfg, progress=stages, device=device)
    print(f"trained {out / 'model.safetensors'} in {time.perf_counter() - t0:.0f} s "
          f"({fitted.model.num_anchors:,} anchors)")
    with Reporter() as stages:
        report = compress_model(fitted.model, fitted.entropy, out / "anchor.hgs", lam=cfg.lam, progress=stages)
    _print_sizes(report, source_bytes)
    measure("anchor", cfg.lam, out / "anchor.hgs", time.perf_counter() - t0,
            render_views_anchor(report["decoded"].model, [cam])[0])

    gap = np.ones((pictures["source"].shape[0], 8, 3), dtype=np.float32)
    strip = [pictures["source"], *(pictures[p.stem] for _, _, p, _, _ in rows)]
    save_png(np.concatenate([x for pic in strip for x in (pic, gap)][:-1], axis=1), str(out / "compare.png"))
    print(f"\n{out / 'compare.png'}: left to right the source, " + ", ".join(
        f"{m} λ={lam:g}" for m, lam, _, _, _ in rows))
    w = max(len(str(p)) for _, _, p, _, _ in rows)
    print(f"\n{'mode':<7} {'λ':>6}  {'file':<{w}} {'size':>10} {'ratio':>7}  PSNR: mean / of mean MSE / worst view"
          f"   time")
    for mode, lam, path, res, seconds in rows:
        print(f"{mode:<7} {lam:>6g}  {str(path):<{w}} {_human_bytes(res['other_bytes']):>10} "
              f"{source_bytes / max(res['other_bytes'], 1):>6.1f}x  {res['psnr']:6.2f} / {res['psnr_of_mean_mse']:6.2f} / "
              f"{res['worst_psnr']:6.2f} dB   {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
