"""Inria 3DGS PLY reader/writer, format dispatch and the atomic writer, on the real playbot scenes."""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import plyfile
import pytest

from conftest import DEMO_PLY, REPO, shared_file
from hemgs.errors import FormatError, InputError
from hemgs.io import atomic_write, detect_format, load_scene, save_scene
from hemgs.io.ply import read_ply, write_ply
from hemgs.scene import GaussianScene

FIELDS = ("means", "quats", "log_scales", "opacity_logits", "sh")


@pytest.fixture(scope="module")
def demo():
    return read_ply(DEMO_PLY)


@pytest.fixture(scope="module")
def demo_vertex():
    """The demo's vertex table as plyfile reads it (independent of our reader)."""
    return plyfile.PlyData.read(str(DEMO_PLY))["vertex"].data


def assert_same(a: GaussianScene, b: GaussianScene) -> None:
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)


def write_raw(path: Path, columns: dict, *, text=False, byte_order="<") -> Path:
    """A PLY made directly with plyfile from named columns (any dtypes, any order)."""
    rec = np.empty(len(next(iter(columns.values()))), [(k, v.dtype.str) for k, v in columns.items()])
    for k, v in columns.items():
        rec[k] = v
    plyfile.PlyData([plyfile.PlyElement.describe(rec, "vertex")], text=text, byte_order=byte_order).write(str(path))
    return path


def columns_of(vertex) -> dict:
    return {k: np.asarray(vertex[k]) for k in vertex.dtype.names}


# ---- real files ---------------------------------------------------------------------------

@pytest.mark.data
def test_playbot_lod2_loads_with_readme_figures():
    scene = load_scene(shared_file("playbot_lod2.ply"))
    assert len(scene) == 125_000 and scene.sh_degree == 2
    for f in FIELDS:
        assert np.isfinite(getattr(scene, f)).all(), f
    np.testing.assert_allclose(np.linalg.norm(scene.quats, axis=1), 1.0, atol=1e-3)
    lo, hi = scene.bounds()  # figures from shared/data/README.md
    np.testing.assert_allclose(lo, [-1.028, -1.082, -1.035], atol=2e-3)
    np.testing.assert_allclose(hi, [1.031, 0.046, 1.037], atol=2e-3)
    assert abs(scene.summary()["mean_opacity"] - 0.75) < 0.01
    assert scene.meta["source_format"] == "ply" and scene.meta["path"].endswith("playbot_lod2.ply")


def test_demo_loads_and_rest_is_reordered_coefficient_major(demo, demo_vertex):
    assert len(demo) == 31_000 and demo.sh_degree == 2
    # Inria f_rest is channel-major: f_rest_{c*(K-1) + k-1} is coefficient k of channel c.
    for c in range(3):
        np.testing.assert_array_equal(demo.sh[:, 0, c], demo_vertex[f"f_dc_{c}"])
        for k in range(1, 9):
            np.testing.assert_array_equal(demo.sh[:, k, c], demo_vertex[f"f_rest_{c * 8 + k - 1}"])
    np.testing.assert_array_equal(demo.quats[:, 0], demo_vertex["rot_0"])  # w first, by name
    np.testing.assert_array_equal(demo.opacity_logits, demo_vertex["opacity"])


# ---- round trips --------------------------------------------------------------------------

def test_binary_roundtrip_is_exact_and_standard_order(demo, tmp_path):
    out = tmp_path / "out.ply"
    write_ply(demo, out)
    assert_same(read_ply(out), demo)
    ply = plyfile.PlyData.read(str(out))
    assert ply.byte_order == "<" and not ply.text
    names = [p.name for p in ply["vertex"].properties]
    assert names[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert names[9:33] == [f"f_rest_{i}" for i in range(24)]
    assert names[33:] == ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert out.stat().st_size == len(demo) * 41 * 4 + len(open(out, "rb").read(4096).split(b"end_header\n")[0]) + 11


def test_ascii_roundtrip_is_exact(demo, tmp_path):
    small = demo.subset(np.arange(0, len(demo), 10))
    out = tmp_path / "ascii.ply"
    write_ply(small, out, ascii=True)
    assert plyfile.PlyData.read(str(out)).text
    assert_same(read_ply(out), small)
    assert read_ply(out).meta["ply_format"] == "ascii"


def test_big_endian_reordered_extra_props_no_normals_float64(demo, demo_vertex, tmp_path):
    cols = columns_of(demo_vertex)
    variants = {
        "be": (dict(cols), {"byte_order": ">"}),
        # float32 only, any order: read as one matrix (io/ply.py's fast path)
        "reversed_float32": ({**dict(reversed(cols.items())), "extra": np.ones(len(demo), np.float32)}, {}),
        "reversed_with_extras": (
            {"label": np.arange(len(demo), dtype=np.uint8), **dict(reversed(cols.items())),
             "nx": np.zeros(len(demo), np.float32), "confidence": np.ones(len(demo), np.float32)}, {}),
        "float64": ({k: v.astype(np.float64) for k, v in cols.items()}, {}),
        "be_float64": ({k: v.astype(np.float64) for k, v in cols.items()}, {"byte_order": ">"}),
    }
    for name, (columns, kw) in variants.items():
        path = write_raw(tmp_path / f"{name}.ply", columns, **kw)
        assert_same(read_ply(path), demo)
    ascii_cols = {k: v[:500] for k, v in reversed(cols.items())}
    assert_same(read_ply(write_raw(tmp_path / "a.ply", ascii_cols, text=True)), demo.subset(np.arange(500)))


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_every_sh_degree_roundtrips(demo, tmp_path, degree):
    scene = demo.with_sh_degree(degree)
    out = tmp_path / f"d{degree}.ply"
    save_scene(scene, out)
    names = [p.name for p in plyfile.PlyData.read(str(out))["vertex"].properties]
    assert sum(n.startswith("f_rest_") for n in names) == [0, 9, 24, 45][degree]
    back = load_scene(out)
    assert back.sh_degree == degree
    assert_same(back, scene)


# ---- errors -------------------------------------------------------------------------------

def test_missing_file_and_foreign_content(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_ply(tmp_path / "nope.ply")
    junk = tmp_path / "junk.ply"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(FormatError, match="junk.ply.*not a PLY"):
        read_ply(junk)
    with pytest.raises(FormatError, match="junk.ply"):
        load_scene(junk)


def test_truncated_files_are_refused(tmp_path):
    data = DEMO_PLY.read_bytes()
    header_len = data.index(b"end_header\n") + 11
    for cut in (5, 60, header_len - 3, header_len, header_len + 1, header_len + 1000, len(data) // 2, len(data) - 1):
        bad = tmp_path / f"cut{cut}.ply"
        bad.write_bytes(data[:cut])
        with pytest.raises(FormatError, match=f"cut{cut}.ply.*(truncated|end_header)"):
            read_ply(bad)


def test_truncated_ascii_is_refused(demo, tmp_path):
    out = tmp_path / "a.ply"
    write_ply(demo.subset(np.arange(200)), out, ascii=True)
    data = out.read_bytes()
    for frac in (0.5, 0.9, 0.999):
        bad = tmp_path / f"a{frac}.ply"
        bad.write_bytes(data[: int(len(data) * frac)])
        with pytest.raises(FormatError, match=f"a{frac}.ply"):
            read_ply(bad)


def test_lying_vertex_count_is_refused_before_allocating(tmp_path):
    data = DEMO_PLY.read_bytes()
    lie = data.replace(b"element vertex 31000\n", b"element vertex 4000000000\n", 1)
    bad = tmp_path / "lie.ply"
    bad.write_bytes(lie)
    t0 = time.perf_counter()
    with pytest.raises(FormatError, match="lie.ply.*4000000000 vertex.*only"):
        read_ply(bad)
    assert time.perf_counter() - t0 < 1.0


def test_missing_properties_are_named(demo_vertex, tmp_path):
    cols = columns_of(demo_vertex)
    del cols["opacity"], cols["rot_3"]
    with pytest.raises(FormatError, match="missing properties: opacity rot_3"):
        read_ply(write_raw(tmp_path / "m.ply", cols))


def test_wrong_rest_count_is_refused(demo_vertex, tmp_path):
    cols = columns_of(demo_vertex)
    del cols["f_rest_23"]
    with pytest.raises(FormatError, match="23 f_rest_"):
        read_ply(write_raw(tmp_path / "r.ply", cols))
    cols = columns_of(demo_vertex)
    cols["f_rest_30"] = cols.pop("f_rest_5")
    with pytest.raises(FormatError, match="not contiguous"):
        read_ply(write_raw(tmp_path / "g.ply", cols))


def test_half_float_type_is_refused_clearly(tmp_path):
    data = DEMO_PLY.read_bytes().replace(b"property float opacity\n", b"property half opacity\n", 1)
    bad = tmp_path / "half.ply"
    bad.write_bytes(data)
    with pytest.raises(FormatError, match="half.ply.*unsupported PLY property type 'half'"):
        read_ply(bad)


# ---- dispatch ------------------------------------------------------------------------------

def test_detect_and_save_by_extension(demo, tmp_path):
    assert detect_format(DEMO_PLY) == "ply"
    hgs = tmp_path / "x.hgs"
    hgs.write_bytes(b"HEMGS\x00" + bytes(20))
    assert detect_format(hgs) == "hgs"
    with pytest.raises(FormatError, match="x.hgs"):
        load_scene(hgs)
    with pytest.raises(InputError, match=r"'\.obj'"):
        save_scene(demo, tmp_path / "x.obj")
    assert not (tmp_path / "x.obj").exists()
    empty = tmp_path / "e.bin"
    empty.write_bytes(b"")
    with pytest.raises(FormatError, match="empty"):
        detect_format(empty)


# ---- atomic writes -------------------------------------------------------------------------

def test_atomic_write_leaves_nothing_on_failure(demo, tmp_path, monkeypatch):
    target = tmp_path / "scene.ply"

    def explode(self, stream):
        stream.write(b"ply\nhalf a file")
        raise OSError("disk full")

    monkeypatch.setattr(plyfile.PlyData, "write", explode)
    with pytest.raises(OSError, match="disk full"):
        write_ply(demo, target)
    assert list(tmp_path.iterdir()) == []
    # An existing file survives a failed overwrite untouched.
    target.write_bytes(b"previous")
    with pytest.raises(OSError):
        write_ply(demo, target)
    assert target.read_bytes() == b"previous" and list(tmp_path.iterdir()) == [target]


def test_atomic_write_replaces_on_success(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with atomic_write(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_bytes(b"new")
        assert target.read_bytes() == b"old"
    assert target.read_bytes() == b"new" and list(tmp_path.iterdir()) == [target]
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_readers_import_and_work_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from hemgs.io import load_scene, detect_format\n"
        f"s = load_scene({str(DEMO_PLY)!r}); assert len(s) == 31000\n"
        "import hemgs.io.spz, hemgs.io.scaffold\n"
        "assert sys.modules['torch'] is None\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO / "backend"))
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
