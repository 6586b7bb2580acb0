"""The `hemgs` command line: runs what `cli_args.py` parses through the jobs of `service.py`, and
prints their results (`text.py`).

Every failure that the user can fix (missing, truncated or foreign files, bad arguments) is one line
on stderr and exit code 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

from .cli_args import DEFAULT_VIEWS, build_parser
from .errors import HemgsError, InputError, one_line
from .modes import (ANCHOR_SWITCH_DEFAULTS, DIRECT_LAMBDA_DEFAULT, DIRECT_SWITCH_DEFAULTS, anchor_only,
                    check_direct_source, mode_for)
from .progress import Reporter
from .service import (ViewSpec, check_iters, check_outputs, direct_configs, evaluate, file_info, fit_config,
                      load_scene_checked, own_views, save_png, scene_and_draw, train_and_compress)
from .text import eval_lines, heldout_lines, human_bytes, info_lines, ratio, say, sizes_lines

EXIT_USAGE = 2


def main(argv: list[str] | None = None) -> int:
    # A shell starts background jobs with SIGINT ignored, and children inherit that: without this,
    # `kill -INT` (or a job manager's Ctrl-C) would never reach a long training.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    if hasattr(args, "lam"):
        args.lam_given = args.lam is not None
        if args.lam is None:
            args.lam = 1e-3
    try:
        return int(COMMANDS[args.command](args) or 0)
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


# ---- helpers ----------------------------------------------------------------------------------
def _setup_torch(args):
    from .device import resolve_device, set_threads

    set_threads(args.threads)
    return resolve_device(args.device)


def _views(scene, args, n: int, source_path: str | None = None, *, evaluation: bool = False):
    """--cameras, else the scene's own or sampled views (hemgs.service.ViewSpec)."""
    return ViewSpec(n=n, width=args.width, height=args.height, cameras=args.cameras).views(
        scene, source_path, evaluation=evaluation)


def _switches(args, defaults: dict) -> dict:
    """The entropy model's parts: each --[no-]switch as given, else the mode's default."""
    given = {"scene_agnostic": args.scene_agnostic, "ar": args.ar, "acs": args.acs,
             "variable_rate": False if args.fixed_rate else None}
    return {name: defaults[name] if v is None else v for name, v in given.items()}


# ---- commands ---------------------------------------------------------------------------------
def cmd_info(args) -> int:
    info = file_info(args.file)
    say([json.dumps(info, indent=2)] if args.json else info_lines(info))
    return 0


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
    if args.spz_version and not args.dst.lower().endswith(".spz"):
        raise InputError(f"--spz-version applies to a .spz output, not {args.dst}")
    scene = load_scene_checked(args.src)
    kwargs = {"spz_version": args.spz_version} if args.spz_version else {}
    save_scene(scene, args.dst, **kwargs)
    a, b = os.path.getsize(args.src), os.path.getsize(args.dst)
    print(f"wrote {args.dst}: {len(scene):,} Gaussians, {human_bytes(b)} ({ratio(a, b, 2)})")
    return 0


def cmd_eval(args) -> int:
    device = _setup_torch(args)
    source = load_scene_checked(args.source)
    cams = _views(source, args, n=args.views, source_path=args.source, evaluation=True)
    res = evaluate(args.source, args.other, cams, device)
    say([json.dumps(res, indent=2)] if args.json else eval_lines(res, cams[0].width, cams[0].height))
    return 0


def _fit_config(args):
    given = {k: v for k, v in (("width", args.width), ("steps", args.steps), ("views", args.views)) if v is not None}
    return fit_config(lam=args.lam, warm_steps=args.warm_steps, codec=args.codec,
                      **_switches(args, ANCHOR_SWITCH_DEFAULTS), **given)


def cmd_train(args) -> int:
    from .pipeline import train

    check_outputs(args.output)
    device = _setup_torch(args)
    cfg = _fit_config(args)
    t0 = time.perf_counter()
    with Reporter() as report:
        fitted = train(args.src, args.output, cfg, progress=report, device=device, **_source_args(args))
    lo, hi = cfg.lambda_range
    rate = f"λ={lo:g}" if lo == hi else f"λ {lo:g} to {hi:g} (variable rate)"
    print(f"wrote {args.output}: {fitted.model.num_anchors:,} anchors, {cfg.codec.upper()} model, {rate}, "
          f"trained in {time.perf_counter() - t0:.0f} s on {device.type}")
    say(heldout_lines(fitted))
    return 0


def _source_args(args) -> dict:
    """The source options of train/compress (photos, Scaffold-GS MLPs), checked."""
    if args.src is None and args.images is None:
        raise InputError("give a source file, or photos with --images")
    if args.images is None and args.downscale != 1.0:
        raise InputError("--downscale applies to --images only")
    return {"images": args.images, "mlps": args.mlps, "downscale": args.downscale}


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
                                     ("--train-width", args.width), ("--train-views", args.views)) if v is not None]
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
    cfg, fcfg = direct_configs(_switches(args, DIRECT_SWITCH_DEFAULTS), args.iters)
    # --for-cameras alone ("") means the cameras.json beside the source
    cameras = own_views(args.src, None if args.for_cameras is None else args.for_cameras or True)
    with Reporter() as stages:
        report = compress_direct(args.src, args.output, lam=lam, cfg=cfg, fcfg=fcfg, stages=stages, cameras=cameras)
    for w in report["warnings"]:
        print(f"hemgs: warning: {args.src}: {w}", file=sys.stderr)
    say(sizes_lines(report, report["source_bytes"], f"direct mode at λ={lam:g}, {report['gaussians']:,} Gaussians, "
                                                    f"fitted in {report['fit_seconds']:.1f} s, "))
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
    device = _setup_torch(args)
    if args.src is None or detect_format(args.src) != "model":
        cfg = _fit_config(args)
        sources = _source_args(args)
        with Reporter() as stages:
            fitted, report, source_bytes = train_and_compress(args.src, args.output, cfg, device, stages, **sources)
        say(heldout_lines(fitted))
    else:
        if args.images is not None or args.mlps is not None:
            raise InputError(f"{args.src} is a trained model already: --images and --mlps apply to training")
        with Reporter() as stages:
            report = compress(args.src, args.output, lam=args.lam if args.lam_given else None, progress=stages)
        source_bytes = report.get("source_bytes")
    say(sizes_lines(report, source_bytes))
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


def cmd_pretrain(args) -> int:
    from . import pretrain

    return pretrain.run(args)


def cmd_batch(args) -> int:
    from .batch.command import run

    return run(args)


def cmd_demo(args) -> int:
    from . import demo

    demo.run(args.file, args.output, _setup_torch(args), steps=args.steps, warm_steps=args.warm_steps)
    return 0


COMMANDS = {"info": cmd_info, "render": cmd_render, "convert": cmd_convert, "eval": cmd_eval, "train": cmd_train,
            "compress": cmd_compress, "decompress": cmd_decompress, "pretrain": cmd_pretrain, "batch": cmd_batch,
            "demo": cmd_demo}


if __name__ == "__main__":
    sys.exit(main())
