#!/usr/bin/env python3
"""Render the splat preview of a 3DGS/SPZ file to a PNG, headless, with the installed extension.

    .venv-blender/bin/python scripts/blender_render_preview.py SCENE.ply OUT.png \
        [--zip dist/hemgs_blender-0.1.0.zip] [--size 320] [--engine CYCLES|BLENDER_WORKBENCH] [--up -y]

Installs the extension zip into a throw-away user folder (BLENDER_USER_RESOURCES, set here before
bpy is imported), imports SCENE with the extension's API, frames it with a camera from the front,
15 degrees above, and renders. Cycles on the CPU works without a GPU or display.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Object rotation that turns the file's up axis into Blender's +Z.
UP_ROTATIONS = {"-y": (-math.pi / 2, 0.0, 0.0), "+y": (math.pi / 2, 0.0, 0.0), "+z": (0.0, 0.0, 0.0)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scene")
    ap.add_argument("output")
    ap.add_argument("--zip", default=str(ROOT / "dist" / "hemgs_blender-0.1.0.zip"))
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--engine", default="CYCLES", choices=["CYCLES", "BLENDER_WORKBENCH", "BLENDER_EEVEE_NEXT"])
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--up", default="-y", choices=sorted(UP_ROTATIONS), help="the file's up axis (3DGS: -y)")
    args = ap.parse_args()
    if not Path(args.zip).is_file():
        sys.exit(f"{args.zip}: no extension zip (run: python build_addon.py)")

    user = tempfile.mkdtemp(prefix="hemgs-blender-user-")
    os.environ["BLENDER_USER_RESOURCES"] = user  # must be set before bpy starts
    import bpy
    from mathutils import Vector

    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.extensions.package_install_files(filepath=args.zip, repo="user_default", enable_on_install=True)
    import importlib

    api = importlib.import_module("bl_ext.user_default.hemgs_blender.api")
    scene = bpy.context.scene
    obj = api.load_preview(args.scene)
    obj.rotation_euler = UP_ROTATIONS[args.up]
    bpy.context.view_layer.update()

    # Frame the object's bounding box from the front (-Y), 15 degrees above.
    corners = [obj.matrix_world @ Vector(c) for c in obj.bound_box]
    center = sum(corners, Vector()) / 8
    radius = max((c - center).length for c in corners)
    cam_data = bpy.data.cameras.new("HEMGS camera")
    cam_data.lens_unit = "FOV"
    cam_data.angle = math.radians(40)
    cam = bpy.data.objects.new("HEMGS camera", cam_data)
    scene.collection.objects.link(cam)
    dist = radius / math.sin(cam_data.angle / 2) * 0.85
    elev = math.radians(15)
    cam.location = center + Vector((0.0, -math.cos(elev), math.sin(elev))) * dist
    cam.rotation_euler = (center - cam.location).to_track_quat("-Z", "Y").to_euler()
    scene.camera = cam

    world = bpy.data.worlds.new("HEMGS world")
    world.color = (0.05, 0.05, 0.06)
    scene.world = world
    scene.render.engine = args.engine
    if args.engine == "CYCLES":
        scene.cycles.device = "CPU"
        scene.cycles.samples = args.samples
        scene.cycles.use_denoising = False
    scene.render.resolution_x = scene.render.resolution_y = args.size
    scene.render.resolution_percentage = 100
    scene.render.image_settings.file_format = "PNG"
    out = Path(args.output).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    # Render to a temporary name, then rename: no half-written PNG under the final name.
    tmp = out.with_name(f".{out.stem}.rendering.png")
    scene.render.filepath = str(tmp)
    bpy.ops.render.render(write_still=True)
    os.replace(tmp, out)
    print(f"wrote {out} ({args.size}x{args.size}, {obj['hemgs_count']:,} splats, {args.engine})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
