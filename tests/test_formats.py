"""The file-format registry (hemgs.io.formats): one table drives detection, reading, writing, the CLI's
help and the Blender importer's extensions. A format defined in this file, registered for one test,
goes through all of them; nothing of it is left after."""

import ast
import json
import struct

import numpy as np
import pytest

from conftest import DEMO_PLY, REPO
from hemgs import cli, cli_args
from hemgs.errors import FormatError, InputError
from hemgs.io import detect_format, formats, load_scene, save_scene
from hemgs.io.atomic import write_bytes_atomic
from hemgs.scene import GaussianScene

# ---- a test format: its reader/writer (here, not in the package) and its one registry line ----------
RAW_MAGIC = b"RAWGS\n"
_FIELDS = ("means", "quats", "log_scales", "opacity_logits", "sh")


def write_raw(scene: GaussianScene, path) -> None:
    """Magic, Gaussian count and SH coefficients per colour (u32 each), then every field as float32."""
    n, k = len(scene), scene.sh.shape[1]
    body = b"".join(np.ascontiguousarray(getattr(scene, f), np.float32).tobytes() for f in _FIELDS)
    write_bytes_atomic(path, RAW_MAGIC + struct.pack("<II", n, k) + body)


def read_raw(path) -> GaussianScene:
    data = path.read_bytes()
    n, k = struct.unpack_from("<II", data, len(RAW_MAGIC))
    flat = np.frombuffer(data, np.float32, offset=len(RAW_MAGIC) + 8)
    shapes = [(n, 3), (n, 4), (n, 3), (n,), (n, k, 3)]
    if flat.size != sum(int(np.prod(s)) for s in shapes):
        raise FormatError(f"{path}: truncated RAWGS file")
    parts, at = [], 0
    for s in shapes:
        size = int(np.prod(s))
        parts.append(flat[at:at + size].reshape(s))
        at += size
    return GaussianScene(*parts)


RAW = formats.FileFormat("rawgs", (".rawgs",), lambda head, path: head.startswith(RAW_MAGIC), label="RAWGS",
                         read=read_raw, write=write_raw)


def _same_scene(a: GaussianScene, b: GaussianScene, atol: float = 0.0) -> None:
    for f in _FIELDS:
        np.testing.assert_allclose(getattr(a, f), getattr(b, f), rtol=0, atol=atol)


def test_a_format_defined_in_a_test_is_detected_read_written_and_converted(tmp_path, capsys):
    scene = load_scene(DEMO_PLY).subset(slice(0, 50))
    before = [f.name for f in formats.FORMATS]
    path = tmp_path / "a.rawgs"
    formats.register(RAW)
    try:
        save_scene(scene, path)
        assert detect_format(path) == "rawgs"
        back = load_scene(path)
        _same_scene(back, scene)
        assert back.meta["source_format"] == "rawgs"
        # The CLI: convert both ways (by extension), info, and the help texts that list formats.
        demo_raw, demo_ply = tmp_path / "demo.rawgs", tmp_path / "demo.ply"
        assert cli.main(["convert", str(DEMO_PLY), str(demo_raw)]) == 0
        assert cli.main(["convert", str(demo_raw), str(demo_ply)]) == 0
        _same_scene(load_scene(demo_ply), load_scene(DEMO_PLY), atol=1e-6)  # the CLI normalises quaternions
        capsys.readouterr()
        assert cli.main(["info", str(demo_raw), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["format"] == "rawgs"
        helps = cli_args.build_parser().format_help()
        assert "summarise a PLY, SPZ, glTF, SOG, .hgs or RAWGS file" in helps
        assert "convert between PLY, SPZ, glTF, SOG and RAWGS" in helps  # "(by extension)" wraps
        assert ".rawgs" in formats.preview_extensions()
    finally:
        formats.unregister("rawgs")
    # Gone: unknown again, with today's messages.
    assert [f.name for f in formats.FORMATS] == before
    with pytest.raises(FormatError, match=r"a\.rawgs: unknown format \(not PLY, SPZ, glTF, SOG or \.hgs; starts with b'RAWGS"):
        detect_format(path)
    with pytest.raises(InputError, match=r"cannot save a scene as '\.rawgs'; use \.ply, \.spz, \.glb or \.sog"):
        save_scene(scene, tmp_path / "b.rawgs")
    assert "RAWGS" not in cli_args.build_parser().format_help()


def test_registering_a_name_twice_is_refused():
    with pytest.raises(ValueError, match="'ply'"):
        formats.register(formats.get("ply"))


def test_the_table_says_what_every_front_end_said_before():
    assert [f.name for f in formats.FORMATS] == ["scaffold_ply", "ply", "spz", "glb", "sog", "hgs", "model"]
    assert [f.name for f in formats.readable()] == ["ply", "spz", "glb", "sog"]
    assert formats.labels(formats.listed()) == "PLY, SPZ, glTF, SOG or .hgs"
    assert formats.extension_list(formats.writable()) == ".ply, .spz, .glb or .sog"
    assert formats.preview_extensions() == [".ply", ".spz", ".glb", ".sog", ".hgs"]
    # SOG's images need Pillow and .hgs the decoder (torch): Blender's Python reads neither.
    assert formats.backend_extensions() == [".sog", ".hgs"]


def test_a_trained_model_is_named_as_one_by_load_scene(tmp_path):
    model = tmp_path / "m.safetensors"
    model.write_bytes((2).to_bytes(8, "little") + b"{}")
    assert detect_format(model) == "model"
    with pytest.raises(FormatError, match="m.safetensors: is a trained model"):
        load_scene(model)


def _literal(path, name):
    """The value of the module-level assignment `name = <literal>` in `path`, read without importing it."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{path} has no {name}")


def test_the_blender_importer_takes_the_registrys_extensions():
    # The add-on never imports hemgs to register its operators, so it keeps the list as a literal.
    exts = _literal(REPO / "hemgs_blender" / "ops.py", "IMPORT_EXTENSIONS")
    assert list(exts) == formats.preview_extensions()
    assert list(_literal(REPO / "hemgs_blender" / "ops.py", "BACKEND_EXTENSIONS")) == formats.backend_extensions()
