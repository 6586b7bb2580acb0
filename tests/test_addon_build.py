"""The extension zip: manifest, bundled wheels, and the rule that the add-on never imports torch."""

import ast
import tomllib
import zipfile

import hemgs
from conftest import REPO, load_by_path


def _load_builder():
    return load_by_path("build_addon.py")


def test_zip_has_manifest_addon_and_listed_wheels():
    zpath = _load_builder().build()
    with zipfile.ZipFile(zpath) as zf:
        names = set(zf.namelist())
        manifest = tomllib.loads(zf.read("blender_manifest.toml").decode())
        for name in names:
            if name.endswith(".py"):
                compile(zf.read(name), name, "exec")  # every module of the add-on parses
    assert "__init__.py" in names
    assert manifest["schema_version"] == "1.0.0" and manifest["type"] == "add-on"
    assert manifest["version"] == hemgs.__version__
    assert manifest["blender_version_min"] == "4.2.0"
    wheels = manifest["wheels"]
    assert any("/hemgs-" in w for w in wheels)
    for w in wheels:
        assert w.removeprefix("./") in names, f"{w} listed but not bundled"
    assert zpath.name == f"hemgs_blender-{manifest['version']}.zip"


def test_addon_never_imports_torch():
    for path in (REPO / "hemgs_blender").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not any(n.split(".")[0] in {"torch", "gsplat"} for n in names), f"{path} imports {names}"


def _tool_or_skip(path, what):
    import os

    import pytest

    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{path} is missing: scripts/setup.sh installs {what}")
        pytest.skip(f"{path} not present (run scripts/setup.sh)")


def test_zip_passes_blenders_extension_validator():
    builder = _load_builder()
    tool = builder.find_blender_ext()
    _tool_or_skip(tool or REPO / ".venv-blender", "the bpy wheel")
    builder.validate(builder.build())  # SystemExit with Blender's message when refused


def test_addon_type_checks_against_blender_4_2_stubs(tmp_path):
    import subprocess

    py = REPO / ".venv-typecheck" / "bin" / "python"
    _tool_or_skip(py, "mypy and fake-bpy-module-4-2")
    run = subprocess.run([str(py), "-m", "mypy", "--python-version", "3.12", "--ignore-missing-imports",
                          "--cache-dir", str(tmp_path), "hemgs_blender"], capture_output=True, text=True, cwd=REPO,
                         timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
