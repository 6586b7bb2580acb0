"""The `hemgs` command line's arguments: every command, option and help text, and nothing else.

`cli.py` runs what this parser reads. The file formats the help texts name come from the format
registry (hemgs.io.formats), the modes' λ ranges from hemgs.modes.
"""

from __future__ import annotations

import argparse

from . import __version__
from .modes import (ANCHOR_LAMBDA_DEFAULT, ANCHOR_TRAINED_LAMBDAS, DEFAULT_MODE, DIRECT_LAMBDA_DEFAULT,
                    DIRECT_LAMBDA_RANGE, MODES)

DEFAULT_VIEWS = 16  # the sampled view set of render and eval, when a scene brings no cameras


def build_parser() -> argparse.ArgumentParser:
    from .io import formats

    p = argparse.ArgumentParser(prog="hemgs", description="Compress and inspect 3D Gaussian Splatting scenes.")
    p.add_argument("--version", action="version", version=f"hemgs {__version__}")
    p.set_defaults(debug=False, command=None)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    common.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where to render/compute (default: cuda when present)")
    common.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: HEMGS_THREADS or torch's)")
    sub = p.add_subparsers(title="commands")
    scenes = "/".join(f.label for f in formats.readable() if f.label)  # "PLY/SPZ/glTF"
    written = formats.writable()

    def command(name: str, help: str, *parents) -> argparse.ArgumentParser:
        s = sub.add_parser(name, parents=[common, *parents], help=help)
        s.set_defaults(command=name)
        return s

    s = command("info", f"summarise a {formats.labels(formats.listed())} file")
    s.add_argument("file")
    s.add_argument("--json", action="store_true", help="machine-readable output")

    view_args = argparse.ArgumentParser(add_help=False)
    view_args.add_argument("--width", type=int, default=256)
    view_args.add_argument("--height", type=int, default=None, help="default: same as --width")
    view_args.add_argument("--cameras", default=None, help="cameras.json or transforms.json to render from")

    s = command("render", "render one view of a scene to a PNG", view_args)
    s.add_argument("file")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--view", type=int, default=0, help="index of the view (default 0)")

    s = command("convert", f"convert between {formats.labels(written, 'and')} (by extension)")
    s.add_argument("src")
    s.add_argument("dst")
    s.add_argument("--spz-version", type=int, default=None, choices=[2, 3, 4])

    s = command("eval", "PSNR/SSIM of OTHER's renders against SOURCE's, from views over the whole sphere that no "
                        "encoder uses (or --cameras)", view_args)
    s.add_argument("source")
    s.add_argument("other")
    s.add_argument("--views", type=int, default=DEFAULT_VIEWS, help=f"evaluation views (default {DEFAULT_VIEWS})")
    s.add_argument("--json", action="store_true")

    fit_args = _fit_arguments()
    s = command("train", "fit a model to a 3DGS scene (train once, export many)", fit_args)
    s.add_argument("src", nargs="?", default=None,
                   help=f"3DGS {scenes}, or Scaffold-GS anchor PLY (with --mlps); optional with --images")
    s.add_argument("-o", "--output", required=True, help="model file (.safetensors)")

    s = command("compress", "write a .hgs from a 3DGS scene (direct mode: no training) or a trained model "
                            "(anchor mode; --mode anchor trains one from the scene first)", fit_args)
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

    s = command("decompress", f"decode a .hgs to a 3DGS {formats.labels(written)} (baked)")
    s.add_argument("file")
    s.add_argument("-o", "--output", required=True, help=f"output {formats.extension_list(written)}")
    s.add_argument("--sh-degree", type=int, default=None, choices=[0, 1, 2, 3],
                   help="anchor files: SH degree of the baked colours (default 1); direct files keep their own "
                        "degree, and a lower one given here truncates it")

    from . import pretrain  # torch-free import: the parser stays cheap

    pretrain.add_arguments(command("pretrain", "pre-train the scene-agnostic point network (maintainers)"))

    from .batch.command import add_parser as add_batch  # torch-free, as the rest of the parser

    add_batch(sub).set_defaults(command="batch")

    s = command("demo", "the main job on a scene (the bundled demo by default)")
    s.add_argument("file")
    s.add_argument("-o", "--output", default="out/demo", help="output folder")
    s.add_argument("--steps", type=int, default=None, help="anchor mode's render-space training steps "
                   "(default: hemgs train's)")
    s.add_argument("--warm-steps", type=int, default=None, help="anchor mode's warm-start steps (default: "
                   "hemgs train's)")
    return p


def _fit_arguments() -> argparse.ArgumentParser:
    """The options of train and compress: λ, anchor-mode training, the entropy model's parts."""
    fit = argparse.ArgumentParser(add_help=False)
    fit.add_argument("--lambda", dest="lam", type=float, default=None,
                     help="rate-distortion weight λ, larger = smaller file, in each mode's own units: direct "
                          f"mode {DIRECT_LAMBDA_RANGE[0]:g} to {DIRECT_LAMBDA_RANGE[1]:g} (default "
                          f"{DIRECT_LAMBDA_DEFAULT:g}); anchor mode (train, --mode anchor) the model's range, "
                          f"trained on {ANCHOR_TRAINED_LAMBDAS[0]:g} to {ANCHOR_TRAINED_LAMBDAS[-1]:g} "
                          f"(default {ANCHOR_LAMBDA_DEFAULT:g})")
    fit.add_argument("--steps", type=int, default=None, help="render-space training steps (default 200)")
    fit.add_argument("--warm-steps", type=int, default=None,
                     help="attribute-space warm-start steps (default: about 500 visits per anchor)")
    fit.add_argument("--train-width", dest="width", type=int, default=None, help="training render size (default 256)")
    fit.add_argument("--train-views", dest="views", type=int, default=None,
                     help="sampled training views (default 32, every 8th held out)")
    fit.add_argument("--views", dest="views", type=int, default=None, help=argparse.SUPPRESS)  # its old name
    fit.add_argument("--codec", choices=["hemgs", "hac"], default="hemgs",
                     help="entropy model: HEMGS (default) or the HAC baseline")
    # The parts of the entropy model; unset: the mode's default (anchor mode: all on; direct mode:
    # hemgs.modes.DIRECT_SWITCH_DEFAULTS, where the prior and the AR context are off).
    on = argparse.BooleanOptionalAction
    fit.add_argument("--scene-agnostic", action=on, default=None,
                     help="the pre-trained point-network prior (default: on in anchor mode; off in direct mode, "
                          "+0.5%% in size alone, +2.9%% with the AR context, and slower decoding there, docs/direct-mode.md)")
    fit.add_argument("--ar", action=on, default=None,
                     help="the autoregressive context (default: on in anchor mode, off in direct mode)")
    fit.add_argument("--acs", action=on, default=None,
                     help="adaptive context selection (default on; off: a fixed 5x5x5 context field)")
    fit.add_argument("--fixed-rate", action="store_true",
                     help="one λ per model (no variable-rate predictor); with --no-scene-agnostic --no-ar "
                          "--no-acs = HAC mode")
    fit.add_argument("--images", default=None, metavar="TRANSFORMS",
                     help="train against photos: a NeRF/instant-ngp transforms.json or its folder (every 8th "
                          "photo held out); SRC, when given, is the starting point")
    fit.add_argument("--downscale", type=float, default=1.0,
                     help="with --images: divide the photos' size by this (e.g. 4 or 8 on a CPU)")
    fit.add_argument("--mlps", default=None, metavar="CHECKPOINT",
                     help="the MLP checkpoint (checkpoints.pth) of a Scaffold-GS anchor PLY given as SRC")
    return fit
