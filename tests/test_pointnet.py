"""The scene-agnostic point network: exact neighbourhoods, deterministic features, shipped weights, pre-training."""

import json
import re

import numpy as np
import pytest
import torch

from conftest import DEMO_PLY, shared_file
from hemgs.anchor.voxelize import choose_voxel_size, voxelize
from hemgs.entropy import pointnet as pn
from hemgs.errors import FormatError, InputError
from hemgs.io.ply import read_ply

CFG = pn.PointNetConfig()


@pytest.fixture(scope="module")
def demo_coords():
    """Anchors of the bundled demo scene at the default 4 Gaussians per anchor (~7.8k)."""
    scene = read_ply(DEMO_PLY)
    return voxelize(scene.means, choose_voxel_size(scene, 4.0))[0]


@pytest.fixture(scope="module")
def prior():
    return pn.load_scene_agnostic()


def _brute_offsets(coords, rows, cfg):
    """Reference: all pairwise offsets, sorted by (d2, dx, dy, dz) with np.lexsort."""
    out = np.zeros((len(rows), cfg.slots, 3), dtype=np.int64)
    for j, i in enumerate(rows):
        off = coords - coords[i]
        d2 = (off ** 2).sum(1)
        keep = (d2 > 0) & (d2 <= cfg.r2 ** 2)
        off, d2 = off[keep], d2[keep]
        order = np.lexsort((off[:, 2], off[:, 1], off[:, 0], d2))[: cfg.k2]
        near, nd2 = off[order], d2[order]
        s1 = near[: cfg.k1][nd2[: cfg.k1] <= cfg.r1 ** 2]
        out[j, : len(s1)] = s1
        s2 = near[:: cfg.dilation]
        out[j, cfg.k1: cfg.k1 + len(s2)] = s2
    return out


@pytest.mark.parametrize("ratio", [2.0, 16.0])  # dense (many distance ties) and sparse anchors
def test_neighbourhoods_match_brute_force(ratio):
    scene = read_ply(DEMO_PLY)
    coords = voxelize(scene.means, choose_voxel_size(scene, ratio))[0]
    rows = np.random.default_rng(1).choice(len(coords), 400, replace=False)
    got = pn.neighbourhood_offsets(coords, CFG, rows=rows)
    want = _brute_offsets(coords, rows, CFG)
    np.testing.assert_array_equal(got, want)
    filled = (got != 0).any(-1)
    assert filled[:, CFG.k1:].mean() > 0.5  # the test exercises real, populated neighbourhoods


def test_features_deterministic_across_threads_and_chunks(prior, demo_coords):
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = prior.features(demo_coords)
        torch.set_num_threads(2)
        b = prior.features(demo_coords)
    finally:
        torch.set_num_threads(old)
    assert a.dtype == torch.float64 and a.shape == (len(demo_coords), prior.dim)
    # The codec's path (fixed chunk): bitwise equal whatever the thread count.
    assert torch.equal(a, b)
    # Another chunk size may take another GEMM kernel: float64 noise only (measured ~2e-16).
    for chunk in (1000, 257):
        c = prior.features(demo_coords, chunk=chunk)
        assert (a - c).abs().max().item() <= 1e-12
    assert a.std(0).min().item() > 0  # a real, non-constant feature


def test_features_translation_and_order_invariant(prior, demo_coords):
    a = prior.features(demo_coords)
    shifted = prior.features(demo_coords + np.array([1234, -77, 5]))
    assert torch.equal(a, shifted)
    perm = np.random.default_rng(0).permutation(len(demo_coords))
    b = prior.features(demo_coords[perm])
    assert (a[perm] - b).abs().max().item() <= 1e-12  # same neighbourhoods, other rows in the chunks


def test_features_reject_bad_coordinates(prior):
    with pytest.raises(InputError, match="integer"):
        prior.features(np.zeros((4, 3)))
    with pytest.raises(InputError, match="shape"):
        prior.features(np.zeros((4, 2), dtype=np.int64))
    assert prior.features(np.zeros((0, 3), dtype=np.int64)).shape == (0, prior.dim)
    one = prior.features(np.array([[5, 5, 5]]))  # an isolated anchor: empty neighbourhood, still finite
    assert torch.isfinite(one).all()


def test_shipped_weights_frozen_and_id_matches_readme(prior):
    path = pn.DEFAULT_WEIGHTS
    assert path.stat().st_size < 200_000
    assert not prior.net.training and not any(p.requires_grad for p in prior.net.parameters())
    readme = (path.parent / "README.md").read_text()
    sha = re.search(r"sha256[^0-9a-f]*([0-9a-f]{64})", readme).group(1)
    import hashlib
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha
    assert prior.id == sha[:16] == pn.shipped_weights_id()
    assert prior.meta["version"] == "v1" and prior.config == pn.PointNetConfig.from_dict(prior.meta["config"])
    pn.check_weights_id(prior.id)
    with pytest.raises(FormatError, match=f"made with scene-agnostic weights 0123456789abcdef, this hemgs has {prior.id}"):
        pn.check_weights_id("0123456789abcdef", name="x.hgs")


def test_tampered_or_foreign_weights(tmp_path, prior, demo_coords):
    bad = tmp_path / "w.safetensors"
    data = bytearray(pn.DEFAULT_WEIGHTS.read_bytes())
    # Flip a mantissa bit of the output layer's first bias (safetensors: u64 header length, JSON, data).
    hlen = int.from_bytes(data[:8], "little")
    start = json.loads(data[8:8 + hlen])["head.2.bias"]["data_offsets"][0]
    data[8 + hlen + start + 2] ^= 0x10  # float32 little-endian: byte 2 holds high mantissa bits
    bad.write_bytes(bytes(data))
    other = pn.load_scene_agnostic(bad)
    assert other.id != prior.id
    with pytest.raises(FormatError, match=other.id):
        pn.check_weights_id(other.id)
    assert not torch.equal(other.features(demo_coords[:500]), prior.features(demo_coords[:500]))
    # Not safetensors at all (a pickle, say): refused, never unpickled.
    import pickle
    bad.write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(FormatError, match="not a scene-agnostic weights file"):
        pn.load_scene_agnostic(bad)
    with pytest.raises(InputError, match="not found"):
        pn.load_scene_agnostic(tmp_path / "missing.safetensors")


def test_targets_are_per_voxel_statistics():
    from hemgs.pretrain import TARGETS, anchor_targets

    scene = read_ply(DEMO_PLY)
    v = choose_voxel_size(scene, 4.0)
    coords, t = anchor_targets(scene, np.eye(3), v)
    assert t.shape == (len(coords), len(TARGETS)) and np.isfinite(t).all()
    assert np.exp(t[:, 0]).round().sum() == len(scene)  # counts add up to the scene
    centroid = t[:, 4:7]
    assert (np.abs(centroid) <= 0.5 + 1e-9).all()
    assert (t[:, 7:10] >= -1e-12).all()  # variances
    # A rotation by 90 degrees about z maps x -> y: the voxel counts' distribution is unchanged.
    rz = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    _, t2 = anchor_targets(scene, rz, v)
    assert np.exp(t2[:, 0]).round().sum() == len(scene)


def test_pretrain_tiny_end_to_end(tmp_path):
    import argparse

    from hemgs import pretrain

    out, report = tmp_path / "w.safetensors", tmp_path / "r.json"
    # Wired as the hemgs CLI does: its common options (--debug, --threads) plus ours.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true")
    common.add_argument("--threads", type=int, default=None)
    parser = argparse.ArgumentParser(parents=[common])
    pretrain.add_arguments(parser)
    args = parser.parse_args(["--threads", str(torch.get_num_threads()), "--data", str(DEMO_PLY), "-o", str(out),
                              "--steps", "3", "--batch", "64", "--ratios", "16", "--rotations", "2",
                              "--holdout", str(DEMO_PLY), "--probe-steps", "3", "--report", str(report)])
    assert pretrain.run(args) == 0
    loaded = pn.load_scene_agnostic(out)
    assert loaded.id == pn.weights_id(out) and loaded.meta["steps"] == 3
    assert loaded.meta["data"][0]["file"] == DEMO_PLY.name
    rep = json.loads(report.read_text())
    assert rep["weights_id"] == loaded.id
    assert set(rep["probes"][0]["linear"]) == {"coords", "random_net", "pretrained", "pretrained+coords"}
    with pytest.raises(InputError, match="ratios"):
        pretrain.main(["--data", str(DEMO_PLY), "-o", str(out), "--ratios", "0.5"])
    with pytest.raises(InputError):
        pretrain.main(["--data", str(tmp_path / "nope.ply"), "-o", str(out), "--steps", "1"])


@pytest.mark.data
def test_spz_scene_reads_for_pretraining():
    from hemgs.pretrain import read_scene

    scene = read_scene(shared_file("biker.spz"))
    assert len(scene) == 152_746


def test_saved_weights_load_back_and_are_readable_like_every_output(tmp_path):
    import os
    import stat

    net, _ = pn.load_weights(pn.DEFAULT_WEIGHTS)
    path = tmp_path / "prior.safetensors"
    wid = pn.save_weights(net, path, {"note": "test"})
    again, meta2 = pn.load_weights(path)
    assert wid == pn.weights_id(path) and meta2["note"] == "test"
    for k, v in net.state_dict().items():
        assert torch.equal(v.float(), again.state_dict()[k].float()), k
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # what open() gives (safetensors' writer: 0600)
