"""No code in a file is ever executed: nothing in the shipped code unpickles or evaluates.

1. An AST scan of backend/ and hemgs_blender/ for the ways Python runs data as code: pickle and its
   relatives (marshal, shelve, dill, joblib...), torch.load without weights_only=True, torch.jit.load,
   numpy.load with allow_pickle other than False, eval/exec/compile. The scanner is first shown to
   catch each pattern on a synthetic source, so a clean scan means something.
2. A real malicious pickle (it would create a marker folder when unpickled), disguised as a model
   file, a torch checkpoint and a .hgs networks section, is refused with our error and runs nothing.
"""

import ast
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO
from hemgs.errors import FormatError, HemgsError

SCANNED = [REPO / "backend", REPO / "hemgs_blender"]
SKIP_DIRS = {"__pycache__", "build", "dist", ".venv", "site-packages"}  # build outputs, not our source
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve", "copyreg"}
PICKLE_ERRORS = {"UnpicklingError", "PicklingError", "PickleError"}
CODE_BUILTINS = {"eval", "exec", "compile", "__import__"}


def _dotted(node: ast.AST) -> str:
    """'torch.jit.load' for an attribute chain, '' for anything else."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _kw(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return None


def scan_source(source: str, filename: str = "<src>") -> list[str]:
    """Every unsafe construct in `source`, as 'file:line: what'."""
    found = []
    tree = ast.parse(source, filename)
    # Importing pickle only to name its exception types (to catch what torch.load(weights_only=True)
    # raises) is harmless; any other use of a pickle-like module's names is flagged.
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PICKLE_MODULES:
                    aliases[alias.asname or alias.name.split(".")[0]] = alias.name
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PICKLE_MODULES - {"pickle", "_pickle", "cPickle"}:
                    found.append(f"{where}: import {alias.name}")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            if node.attr not in PICKLE_ERRORS:
                found.append(f"{where}: {node.value.id}.{node.attr}")
        elif isinstance(node, ast.ImportFrom):
            if (node.module or "").split(".")[0] in PICKLE_MODULES and not all(
                    a.name in PICKLE_ERRORS for a in node.names):
                found.append(f"{where}: from {node.module} import ...")
            for alias in node.names:
                if node.module in ("torch", "torch.jit") and alias.name in ("load", "jit"):
                    found.append(f"{where}: from {node.module} import {alias.name} (unpickling loader)")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            last = name.rsplit(".", 1)[-1]
            if name in CODE_BUILTINS or name in {f"builtins.{b}" for b in CODE_BUILTINS}:
                found.append(f"{where}: {name}()")
            elif name.endswith("jit.load"):
                found.append(f"{where}: {name}() (TorchScript archives run code)")
            elif name in ("torch.load",) or (last == "load" and name.split(".")[0] == "torch"):
                wo = _kw(node, "weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    found.append(f"{where}: {name}() without weights_only=True")
            elif name in ("np.load", "numpy.load"):
                ap = _kw(node, "allow_pickle")
                if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                    found.append(f"{where}: {name}(allow_pickle=...) not False")
            elif last == "read_pickle":
                found.append(f"{where}: {name}()")
            elif name in ("importlib.import_module", "import_module") and node.args and \
                    isinstance(node.args[0], ast.Constant) and str(node.args[0].value).split(".")[0] in PICKLE_MODULES:
                found.append(f"{where}: {name}({node.args[0].value!r})")
    return found


def _shipped_sources():
    for root in SCANNED:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info")]
            for f in filenames:
                if f.endswith(".py"):
                    yield Path(dirpath) / f


BAD_SOURCE = '''
import pickle
import marshal as m
import pickle as p2; p2.Unpickler
from shelve import open as so
import torch, numpy as np
from torch import load
a = pickle.loads(b"")
b = torch.load("x.pt")
c = torch.load("x.pt", weights_only=False)
d = torch.jit.load("x.pt")
e = np.load("x.npy", allow_pickle=True)
f = eval("1")
exec("g = 1")
h = __import__("os")
ok1 = torch.load("x.pt", weights_only=True)
ok2 = np.load("x.npz", allow_pickle=False)
ok3 = np.load("x.npz")
try: pass
except pickle.UnpicklingError: pass
'''


def test_the_scanner_catches_every_pattern():
    found = scan_source(BAD_SOURCE)
    lines = sorted({int(f.split(":")[1]) for f in found})
    assert lines == [3, 4, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15], found  # every bad line, none of the ok ones


def test_shipped_code_never_unpickles_or_evaluates():
    files = list(_shipped_sources())
    assert len(files) > 20  # the scan really covers the package and the add-on
    assert any(p.name == "model_store.py" for p in files) and any(p.parent.name == "hemgs_blender" for p in files)
    found = [hit for p in files for hit in scan_source(p.read_text(encoding="utf-8"), str(p.relative_to(REPO)))]
    assert found == []


# ---- a real malicious pickle --------------------------------------------------------------------
class _Payload:
    """Unpickling this calls os.mkdir(marker): proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / "PWNED"
    raw = pickle.dumps({"anchor": _Payload(marker)}, protocol=2)
    # Sanity: this kind of payload really runs when unpickled (shown in a throwaway process).
    probe = tmp_path / "probe"
    (tmp_path / "p.pkl").write_bytes(pickle.dumps(_Payload(probe), protocol=2))
    out = subprocess.run([sys.executable, "-c", "import pickle,sys; pickle.loads(open(sys.argv[1],'rb').read())",
                          str(tmp_path / "p.pkl")], capture_output=True, timeout=60, cwd=Path(__file__).parent)
    assert out.returncode == 0 and probe.is_dir(), out.stderr
    return raw, marker


def _torch_style_zip(path: Path, raw: bytes) -> None:
    """The layout torch.save writes (a zip with data.pkl) around the malicious pickle."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", raw)
        z.writestr("archive/version", "3\n")


def test_malicious_pickle_as_a_model_is_refused_without_running(evil, tmp_path):
    from hemgs.model_store import load_model

    raw, marker = evil
    cases = {"model.safetensors": raw, "model.pt": raw}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    _torch_style_zip(tmp_path / "ckpt.safetensors", raw)
    for name in [*cases, "ckpt.safetensors"]:
        with pytest.raises(FormatError) as err:
            load_model(tmp_path / name)
        assert "\n" not in str(err.value)
        assert not marker.exists(), f"{name}: the pickle ran"


def test_malicious_pickle_in_a_hgs_networks_section_is_refused(evil, tmp_path):
    from hemgs.codec.registry import decode
    from hemgs.container import pack_hgs, read_hgs

    raw, marker = evil
    golden = read_hgs(Path(__file__).parent / "golden" / "tiny_a.hgs")
    for section in ("networks", "grid", "locations"):
        sections = dict(golden.sections)
        sections[section] = raw  # valid CRC: the container passes it on to the decoder
        f = read_hgs(pack_hgs(golden.header, sections))
        with pytest.raises(HemgsError) as err:
            decode(f.header, f.sections)
        assert "\n" not in str(err.value)
        assert not marker.exists(), f"{section}: the pickle ran"


@pytest.mark.slow
def test_malicious_pickle_through_the_cli(evil, tmp_path):
    """`hemgs compress` and `hemgs info` on the disguised pickle: exit 2, one line, nothing ran."""
    raw, marker = evil
    path = tmp_path / "evil.safetensors"
    path.write_bytes(raw)
    for cmd in (["compress", str(path), "-o", str(tmp_path / "out.hgs")], ["info", str(path)]):
        out = subprocess.run([sys.executable, "-m", "hemgs.cli", *cmd], capture_output=True, text=True,
                             timeout=120, cwd=tmp_path)
        assert out.returncode == 2, (cmd, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert not marker.exists()
    assert not (tmp_path / "out.hgs").exists()
