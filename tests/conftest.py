"""Shared test set-up: thread counts, and the real data in ../shared/data (skipped when absent)."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
THREADS = int(os.environ.get("HEMGS_THREADS", "2"))

try:
    import torch

    torch.set_num_threads(THREADS)
except ImportError:  # the pure-numpy parts are tested without torch too
    pass

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
DEMO_PLY = REPO / "data" / "demo" / "playbot_lod3.ply"


def load_by_path(relpath: str):
    """A module of the repository loaded from its file alone (the add-on's modules import without
    Blender this way, without the package's __init__, which needs bpy)."""
    import importlib.util

    path = REPO / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def shared_file(name: str) -> Path:
    """A file of ../shared/data, or skip the test where that folder is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


@pytest.fixture
def demo_ply() -> Path:
    return DEMO_PLY


# Whole modules that drive Blender (the bpy wheel) or type-check the add-on against its stubs.
BLENDER_MODULES = {"test_blender_addon.py", "test_addon_build.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in BLENDER_MODULES:
            item.add_marker(pytest.mark.blender)
