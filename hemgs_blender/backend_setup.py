"""Creating the backend's own Python (no bpy here): a venv under the extension's user folder with
the bundled `hemgs` wheel and its torch extras installed into it, never into Blender's Python.

It downloads torch and friends, so the add-on only calls it on the user's click and only when
Blender allows online access.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

ADDON_DIR = Path(__file__).resolve().parent


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def bundled_backend_wheel() -> Path | None:
    """The `hemgs` wheel that build_addon.py put in the extension's wheels/ folder."""
    found = sorted((ADDON_DIR / "wheels").glob("hemgs-*.whl"))
    return found[-1] if found else None


def setup_commands(venv: Path, wheel: Path, base_python: str | None = None) -> list[list[str]]:
    """The commands, in order: make the venv, then install the backend with its torch extras."""
    py = str(venv_python(venv))
    return [
        [base_python or sys.executable, "-m", "venv", str(venv)],
        [py, "-m", "pip", "install", "--upgrade", "pip"],
        [py, "-m", "pip", "install", f"{wheel}[full]"],
    ]


def run_setup(venv: Path, wheel: Path, log: Callable[[str], None], base_python: str | None = None) -> Path:
    """Run `setup_commands`, passing each output line to `log`; returns the venv's Python.
    Raises RuntimeError naming the step that failed."""
    for cmd in setup_commands(venv, wheel, base_python):
        log("$ " + " ".join(cmd[1:4]) + " ...")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip():
                log(line.rstrip()[:200])
        if proc.wait() != 0:
            raise RuntimeError(f"backend set-up failed at: {' '.join(cmd[1:4])} (exit code {proc.returncode})")
    return venv_python(venv)
