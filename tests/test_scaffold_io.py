"""Scaffold-GS / HAC anchor PLY and safe loading of their MLP weights."""

import pickle
from pathlib import Path

import numpy as np
import plyfile
import pytest

from conftest import DEMO_PLY
from hemgs.errors import FormatError, InputError
from hemgs.io import detect_format, load_scene
from hemgs.io.ply import read_ply
from hemgs.io.scaffold import ScaffoldAnchors, load_scaffold_mlps, read_scaffold_ply, write_scaffold_ply

try:
    import torch
except ImportError:  # the PLY half needs no torch; only the MLP tests skip
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed")


def make_anchors(n_offsets=10, feat_dim=50, n=2000, seed=0) -> ScaffoldAnchors:
    """Anchors on the demo scene's points (real geometry), with seeded features and offsets."""
    pts = read_ply(DEMO_PLY).means[:n]
    rng = np.random.default_rng(seed)
    return ScaffoldAnchors(
        xyz=pts,
        features=rng.normal(size=(n, feat_dim)),
        offsets=rng.normal(size=(n, n_offsets, 3)),
        scaling=rng.normal(size=(n, 6)) - 4,
        opacity=rng.normal(size=n),
        rotation=np.tile([1.0, 0, 0, 0], (n, 1)),
    )


@pytest.mark.parametrize("k,f", [(10, 50), (5, 32)])
def test_roundtrip_exact_and_offsets_stored_channel_major(tmp_path, k, f):
    a = make_anchors(k, f)
    path = tmp_path / "point_cloud.ply"
    write_scaffold_ply(a, path)
    v = plyfile.PlyData.read(str(path))["vertex"].data
    names = list(v.dtype.names)
    assert names[:6] == ["x", "y", "z", "nx", "ny", "nz"] and names[6] == "f_offset_0"
    assert sum(n.startswith("f_offset_") for n in names) == 3 * k
    # Scaffold-GS saves offsets transposed to (3, k): f_offset_{c*k + j} is offset j, axis c.
    for j in (0, k - 1):
        for c in range(3):
            np.testing.assert_array_equal(v[f"f_offset_{c * k + j}"], a.offsets[:, j, c].astype(np.float32))
    b = read_scaffold_ply(path)
    assert len(b) == len(a) and b.n_offsets == k and b.feat_dim == f
    for name in ("xyz", "features", "offsets", "scaling", "opacity", "rotation"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert b.meta["source_format"] == "scaffold_ply" and b.mlps is None


def test_reordered_ascii_file_reads_by_name(tmp_path):
    a = make_anchors(n=300)
    src = tmp_path / "a.ply"
    write_scaffold_ply(a, src)
    v = plyfile.PlyData.read(str(src))["vertex"].data
    names = list(reversed(v.dtype.names))
    rec = np.empty(len(v), [(n, "<f8") for n in names])
    for n in names:
        rec[n] = v[n]
    dst = tmp_path / "b.ply"
    plyfile.PlyData([plyfile.PlyElement.describe(rec, "vertex")], text=True).write(str(dst))
    b = read_scaffold_ply(dst)
    np.testing.assert_array_equal(a.offsets, b.offsets)
    np.testing.assert_array_equal(a.features, b.features)


def test_the_two_ply_kinds_point_to_each_other(tmp_path):
    path = tmp_path / "anchors.ply"
    write_scaffold_ply(make_anchors(n=100), path)
    assert detect_format(path) == "scaffold_ply"
    with pytest.raises(FormatError, match="Scaffold-GS anchor PLY.*read_scaffold_ply"):
        read_ply(path)
    with pytest.raises(FormatError, match="Scaffold-GS anchor PLY.*read_scaffold_ply"):
        load_scene(path)
    with pytest.raises(FormatError, match="3DGS PLY.*read_ply"):
        read_scaffold_ply(DEMO_PLY)


def test_missing_scaffold_properties_are_named(tmp_path):
    a = make_anchors(n=50)
    src = tmp_path / "a.ply"
    write_scaffold_ply(a, src)
    v = plyfile.PlyData.read(str(src))["vertex"].data
    keep = [n for n in v.dtype.names if not n.startswith("f_offset_") and n != "scale_5"]
    rec = np.empty(len(v), [(n, "<f4") for n in keep])
    for n in keep:
        rec[n] = v[n]
    bad = tmp_path / "bad.ply"
    plyfile.PlyData([plyfile.PlyElement.describe(rec, "vertex")]).write(str(bad))
    with pytest.raises(FormatError, match=r"bad.ply.*missing properties: f_offset_\*"):
        read_scaffold_ply(bad)


def test_truncated_scaffold_ply(tmp_path):
    src = tmp_path / "a.ply"
    write_scaffold_ply(make_anchors(n=200), src)
    data = src.read_bytes()
    src.write_bytes(data[: len(data) - 100])
    with pytest.raises(FormatError, match="a.ply.*truncated"):
        read_scaffold_ply(src)


# ---- MLP weights ----------------------------------------------------------------------------

def scaffold_mlps(feat_dim=32, k=10):
    torch.manual_seed(0)
    make = lambda out, act: torch.nn.Sequential(  # noqa: E731 - the Scaffold-GS MLP shape
        torch.nn.Linear(feat_dim + 4, feat_dim), torch.nn.ReLU(True), torch.nn.Linear(feat_dim, out), act)
    return {"opacity_mlp": make(k, torch.nn.Tanh()), "cov_mlp": make(7 * k, torch.nn.Identity()),
            "color_mlp": make(3 * k, torch.nn.Sigmoid())}


@needs_torch
def test_state_dict_checkpoint_loads_with_the_ply(tmp_path):
    mlps = scaffold_mlps()
    ckpt = tmp_path / "checkpoints.pth"
    torch.save({name: m.state_dict() for name, m in mlps.items()}, ckpt)
    ply = tmp_path / "point_cloud.ply"
    write_scaffold_ply(make_anchors(10, 32, n=100), ply)
    a = read_scaffold_ply(ply, mlp_path=ckpt)
    assert set(a.mlps) == {"opacity_mlp", "cov_mlp", "color_mlp"}
    for name, m in mlps.items():
        for key, t in m.state_dict().items():
            assert torch.equal(a.mlps[name][key], t), (name, key)
    assert a.mlps["cov_mlp"]["2.weight"].shape == (70, 32)


@needs_torch
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_torchscript_mlp_is_refused_with_instructions(tmp_path):
    traced = torch.jit.trace(scaffold_mlps()["opacity_mlp"], torch.zeros(1, 36))
    pt = tmp_path / "opacity_mlp.pt"
    traced.save(str(pt))
    with pytest.raises(FormatError, match=r"opacity_mlp.pt.*TorchScript.*runs code.*state_dict\(\)"):
        load_scaffold_mlps(pt)
    # torch itself would refuse it too with weights_only=True (no code path to jit.load).
    with pytest.raises(RuntimeError):
        torch.load(pt, map_location="cpu", weights_only=True)


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(_Payload.marker),))


@needs_torch
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_malicious_pickle_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    _Payload.marker = str(marker)
    evil = tmp_path / "evil.pth"
    torch.save({"opacity_mlp": _Payload()}, evil)
    assert not marker.exists()
    with pytest.raises(FormatError, match="evil.pth.*not a loadable"):
        load_scaffold_mlps(evil)
    assert not marker.exists()
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(FormatError, match="raw.pkl"):
        load_scaffold_mlps(raw)
    assert not marker.exists()


@needs_torch
def test_bad_mlp_files(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_scaffold_mlps(tmp_path / "none.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(FormatError, match="junk.pth"):
        load_scaffold_mlps(junk)
    notdict = tmp_path / "list.pth"
    torch.save([torch.zeros(3)], notdict)
    with pytest.raises(FormatError, match="list.pth.*expected a dict"):
        load_scaffold_mlps(notdict)
