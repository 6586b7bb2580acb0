#!/usr/bin/env python3
"""Build the installable Blender extension: dist/hemgs_blender-<version>.zip.

The zip holds hemgs_blender/'s files at its root, blender_manifest.toml (with `wheels` filled in),
and wheels/: the backend's own wheel (built from backend/) and the pure-Python wheels its
numpy-only readers need inside Blender's Python. Run with the project's Python:
    python build_addon.py [--offline]
--offline uses the wheels already in wheels/ instead of asking PyPI for the third-party ones.
--validate then runs Blender's own extension validator on the zip (`blender_ext.py validate` and
`build`, from the bpy wheel in .venv-blender, or the file named by HEMGS_BLENDER_EXT).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
ADDON = ROOT / "hemgs_blender"
WHEELS = ROOT / "wheels"
MANIFEST = ROOT / "blender_manifest.toml"
# Pure-Python wheels that the backend's preview readers need in Blender's Python (numpy ships with Blender).
THIRD_PARTY = ["plyfile==1.1.3"]


def build_backend_wheel() -> Path:
    for old in WHEELS.glob("hemgs-*.whl"):
        old.unlink()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(WHEELS), str(ROOT / "backend")], check=True)
    (wheel,) = WHEELS.glob("hemgs-*.whl")
    return wheel


def fetch_third_party(offline: bool) -> list[Path]:
    found = []
    for spec in THIRD_PARTY:
        name = spec.split("==")[0]
        have = sorted(WHEELS.glob(f"{name}-*-py3-none-any.whl"))
        if not have and not offline:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                            "-d", str(WHEELS), spec], check=True)
            have = sorted(WHEELS.glob(f"{name}-*-py3-none-any.whl"))
        if not have:
            raise SystemExit(f"build_addon: no wheel for {spec} in {WHEELS} (run without --offline)")
        found.append(have[-1])
    return found


def manifest_with_wheels(wheels: list[Path]) -> str:
    text = MANIFEST.read_text()
    listed = ", ".join(f'"./wheels/{w.name}"' for w in wheels)
    text, n = re.subn(r"^wheels = \[.*?\]$", f"wheels = [{listed}]", text, flags=re.M | re.S)
    if n != 1:
        raise SystemExit("build_addon: blender_manifest.toml needs one `wheels = [...]` line")
    return text


def build(offline: bool = False) -> Path:
    WHEELS.mkdir(exist_ok=True)
    wheels = [build_backend_wheel(), *fetch_third_party(offline)]
    manifest_text = manifest_with_wheels(wheels)
    manifest = tomllib.loads(manifest_text)
    out = ROOT / "dist" / f"{manifest['id']}-{manifest['version']}.zip"
    out.parent.mkdir(exist_ok=True)
    tmp = out.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("blender_manifest.toml", manifest_text)
        for path in sorted(ADDON.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                zf.write(path, path.relative_to(ADDON).as_posix())
        for wheel in wheels:
            zf.write(wheel, f"wheels/{wheel.name}")
    tmp.replace(out)
    return out


def find_blender_ext() -> Path | None:
    """Blender's extension command-line tool; it runs under plain Python."""
    if os.environ.get("HEMGS_BLENDER_EXT"):
        return Path(os.environ["HEMGS_BLENDER_EXT"])
    found = sorted(ROOT.glob(".venv-blender/lib/python3*/site-packages/bpy/*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    return found[-1] if found else None


def validate(zpath: Path) -> None:
    """Run Blender's `validate` on the zip and `build` on its unpacked files; SystemExit with
    the validator's output when either refuses it."""
    tool = find_blender_ext()
    if tool is None:
        raise SystemExit("build_addon: blender_ext.py not found (run scripts/setup.sh, or set HEMGS_BLENDER_EXT)")
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "src", Path(tmp) / "out"
        with zipfile.ZipFile(zpath) as zf:
            zf.extractall(src)
        out.mkdir()
        for cmd in (["validate", str(zpath)], ["build", "--source-dir", str(src), "--output-dir", str(out)]):
            run = subprocess.run([sys.executable, str(tool), *cmd], capture_output=True, text=True)
            if run.returncode != 0:
                raise SystemExit(f"build_addon: Blender's {cmd[0]} refused {zpath.name}: "
                                 f"{(run.stdout + run.stderr).strip()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--offline", action="store_true", help="use only the wheels already in wheels/")
    ap.add_argument("--validate", action="store_true", help="check the zip with Blender's extension validator")
    args = ap.parse_args()
    zpath = build(offline=args.offline)
    if args.validate:
        validate(zpath)
    print(zpath)


if __name__ == "__main__":
    main()
