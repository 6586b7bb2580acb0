"""Coding groups, adaptive context selection and the context network (hemgs.entropy.context/ar)."""

import os
import time

import numpy as np
import pytest
import torch

from conftest import DEMO_PLY, shared_file
from hemgs.anchor.voxelize import choose_voxel_size, voxelize
from hemgs.coding.exact_params import run_deterministic
from hemgs.entropy.ar import ContextNet, FlatContextNet, context_for_training, gather_context, pack_context
from hemgs.entropy.context import (CLASS_ORDER, assign_groups, context_stats, num_groups,
                                   select_context)
from hemgs.errors import InputError
from hemgs.io.ply import read_ply


def brute_force(coords, groups, radius, n):
    """Reference: per anchor, scan every anchor; sort by (distance², dx, dy, dz)."""
    out = []
    for i in range(len(coords)):
        off = coords - coords[i]
        idx = np.flatnonzero((groups < groups[i]) & (np.abs(off) <= radius).all(axis=1))
        o = off[idx]
        idx = idx[np.lexsort((o[:, 2], o[:, 1], o[:, 0], (o * o).sum(axis=1)))]
        out.append(idx if n is None else idx[:n])
    return out


def assert_matches_brute(coords, groups, sel):
    ref = brute_force(coords, groups, sel.radius, sel.n)
    for i, expect in enumerate(ref):
        got = sel.index[i][: sel.count[i]]
        assert np.array_equal(got, expect), f"anchor {i}"
        assert (sel.index[i][sel.count[i]:] == -1).all()
        assert np.array_equal(sel.offsets[i][: sel.count[i]], coords[got] - coords[i])


@pytest.fixture(scope="module")
def demo_means():
    return read_ply(DEMO_PLY).means


CONFIGS = [dict(), dict(acs=False), dict(radius=12, n=None), dict(radius=5, n=4), dict(radius=0)]


@pytest.mark.parametrize("scheme", ["parity8", "parity2", "parity4@3", "pyramid2"])
def test_selection_equals_brute_force_random(scheme):
    rng = np.random.default_rng(7)
    for trial in range(6):
        extent = int(rng.integers(4, 60))
        coords = np.unique(rng.integers(0, extent, size=(int(rng.integers(2, 900)), 3)), axis=0)
        coords = coords[rng.permutation(len(coords))] + int(rng.integers(0, 65535 - extent))
        groups = assign_groups(coords, scheme)
        for kw in CONFIGS:
            assert_matches_brute(coords, groups, select_context(coords, groups, **kw))


@pytest.mark.slow
@pytest.mark.parametrize("voxel_size", [0.06, 0.1, 0.15])
def test_selection_equals_brute_force_on_real_anchors(demo_means, voxel_size):
    coords = voxelize(demo_means, voxel_size)[0]
    assert 100 < len(coords) < 4000
    groups = assign_groups(coords)
    for kw in CONFIGS[:3]:
        assert_matches_brute(coords, groups, select_context(coords, groups, **kw))


@pytest.mark.slow
def test_rules_on_real_anchors(demo_means):
    coords = voxelize(demo_means, choose_voxel_size(demo_means, 4.0))[0]
    groups = assign_groups(coords)
    sel = select_context(coords, groups)
    rows, slots = np.nonzero(sel.mask)
    # Causality: context only from strictly earlier groups, so a group decodes as one batch.
    assert (groups[sel.index[rows, slots]] < groups[rows]).all()
    assert (sel.count[groups == 0] == 0).all()
    # The 25³ box and the n = 20 rule.
    assert np.abs(sel.offsets).max() <= 12 and sel.count.max() == 20 and sel.n_max == 20
    full = select_context(coords, groups, n=None)
    assert (np.abs(full.offsets) <= 12).all()
    assert np.array_equal(sel.count, np.minimum(full.count, 20))
    # Nearest first: the kept 20 are never farther than a dropped candidate.
    d2 = (sel.offsets ** 2).sum(axis=2)
    assert (np.diff(np.where(sel.mask, d2, 10**9), axis=1) >= 0).all()
    capped = np.flatnonzero(full.count > 20)
    assert capped.size
    fd2 = (full.offsets[capped] ** 2).sum(axis=2)
    assert (d2[capped, 19] <= fd2[:, 20]).all()
    # SRF: a 5x5x5 field, all candidates kept.
    srf = select_context(coords, groups, acs=False)
    assert srf.radius == 2 and srf.n is None and np.abs(srf.offsets).max() <= 2
    assert srf.n_max == srf.count.max()


def test_shuffled_input_selects_the_same_neighbours(demo_means):
    coords = voxelize(demo_means, 0.05)[0]
    perm = np.random.default_rng(3).permutation(len(coords))
    for kw in (dict(), dict(acs=False)):
        a = select_context(coords, assign_groups(coords), **kw)
        b = select_context(coords[perm], assign_groups(coords[perm]), **kw)
        assert np.array_equal(a.count[perm], b.count)
        assert np.array_equal(a.offsets[perm], b.offsets)  # same neighbours, same order
        ia, ib = a.index[perm], b.index
        assert np.array_equal(np.where(ib >= 0, perm[ib], -1), ia)


def test_groups_are_interleaved_lattice_cosets():
    g = np.arange(16)
    coords = np.stack(np.meshgrid(g, g, g, indexing="ij"), axis=-1).reshape(-1, 3)
    cls = (coords[:, 0] % 2) * 4 + (coords[:, 1] % 2) * 2 + coords[:, 2] % 2
    g8 = assign_groups(coords, "parity8")
    assert np.array_equal(g8, np.array([CLASS_ORDER.index(k) for k in cls]))
    assert np.array_equal(assign_groups(coords, "parity2"), coords.sum(axis=1) % 2)  # checkerboard
    assert (assign_groups(coords, "single") == 0).all()
    for scheme in ("parity1", "parity2", "parity4", "parity8", "parity8@2", "pyramid2", "pyramid3"):
        gs = assign_groups(coords, scheme)
        counts = np.bincount(gs, minlength=num_groups(scheme))
        assert counts.size == num_groups(scheme) and counts.min() > 0
        # Spread: every group reaches every 4x4x4 block of the scene (pyramids only at level 1).
        if scheme.startswith("parity"):
            blocks = (coords // 4) @ np.array([16, 4, 1])
            for k in range(counts.size):
                assert np.unique(blocks[gs == k]).size == 64
    assert num_groups("pyramid2") == 15 and num_groups("parity4") == 4
    # A coarse stride makes 2x2x2 blocks share a group.
    assert np.array_equal(assign_groups(coords, "parity8@2"), assign_groups(coords // 2, "parity8"))


def test_empty_one_anchor_and_bad_input():
    empty = np.zeros((0, 3), dtype=np.int64)
    sel = select_context(empty, assign_groups(empty))
    assert sel.index.shape == (0, 20) and sel.offsets.shape == (0, 20, 3)
    one = np.array([[5, 6, 7]])
    sel = select_context(one, assign_groups(one))
    assert sel.count.tolist() == [0] and (sel.index == -1).all()
    assert context_stats(sel, assign_groups(one))["mean"] == 0.0
    with pytest.raises(InputError, match="unique"):
        select_context(np.array([[1, 2, 3], [1, 2, 3]]), np.array([0, 1]))
    with pytest.raises(InputError, match="integers"):
        select_context(np.zeros((2, 3)), np.array([0, 1]))
    with pytest.raises(InputError, match="0..65535"):
        assign_groups(np.array([[0, 0, 70000]]))
    with pytest.raises(InputError, match="shape"):
        select_context(np.zeros((3, 2), dtype=int), np.zeros(3, dtype=int))
    with pytest.raises(InputError, match="groups"):
        select_context(one, np.zeros(2, dtype=int))
    with pytest.raises(InputError, match="radius"):
        select_context(one, np.zeros(1, dtype=int), radius=-1)
    with pytest.raises(InputError, match="scheme"):
        assign_groups(one, "parity3")


def test_context_stats_match_brute_force(demo_means):
    coords = voxelize(demo_means, 0.1)[0]
    groups = assign_groups(coords)
    counts = np.array([len(x) for x in brute_force(coords, groups, 12, 20)])
    stats = context_stats(coords, groups)
    coded = counts[groups > 0]
    assert stats["mean"] == pytest.approx(coded.mean()) and stats["max"] == coded.max()
    assert stats["empty_share"] == pytest.approx((coded == 0).mean())


@pytest.mark.data
def test_timing_and_counts_on_playbot_lod2(capsys):
    means = read_ply(shared_file("playbot_lod2.ply")).means
    coords = voxelize(means, choose_voxel_size(means, 4.0))[0]
    assert 25_000 < len(coords) < 40_000
    lines = [f"playbot_lod2: {len(coords)} anchors"]
    for scheme in ("parity8", "parity2"):
        groups = assign_groups(coords, scheme)
        for name, kw in (("ACS", dict()), ("SRF", dict(acs=False))):
            t = time.perf_counter()
            sel = select_context(coords, groups, **kw)
            dt = time.perf_counter() - t
            s = context_stats(sel, groups)
            lines.append(f"  {scheme} {name}: {dt:.2f}s mean {s['mean']:.2f} max {s['max']} "
                         f"empty {s['empty_share']:.3f}")
            assert s["mean"] > 0
    with capsys.disabled():
        print("\n" + "\n".join(lines))


@pytest.mark.skipif(not os.environ.get("HEMGS_BENCH"), reason="1M-anchor timing: set HEMGS_BENCH=1")
def test_timing_one_million_synthetic(capsys):
    rng = np.random.default_rng(1)
    shells = []
    for _ in range(6):  # thin sphere surfaces: every anchor's context is sparse-ish and wide
        centre, r = rng.uniform(400, 1600, 3), rng.uniform(100, 160)
        u = rng.normal(size=(int(4 * np.pi * r * r * 1.6), 3))
        shells.append(np.floor(centre + r * u / np.linalg.norm(u, axis=1, keepdims=True)).astype(np.int64))
    coords = np.unique(np.concatenate(shells), axis=0)
    groups = assign_groups(coords)
    for kw in (dict(), dict(acs=False)):
        t = time.perf_counter()
        s = context_stats(select_context(coords, groups, **kw), groups)
        with capsys.disabled():
            print(f"\n{len(coords)} synthetic anchors {kw}: {time.perf_counter() - t:.1f}s mean {s['mean']:.2f}")


# ---- the context network ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_context(demo_means):
    coords = voxelize(demo_means, 0.05)[0]
    groups = assign_groups(coords)
    return coords, groups, select_context(coords, groups)


def test_context_net_rows_are_independent(real_context):
    coords, groups, sel = real_context
    torch.manual_seed(0)
    attrs = torch.randn(len(coords), 6, dtype=torch.float64)
    net = ContextNet(attr_dim=6, out_dim=8)
    ctx = gather_context(sel, attrs)
    flat = pack_context(ctx.values, ctx.offsets, ctx.mask)
    a = run_deterministic(FlatContextNet(net), flat, chunk=256)
    b = run_deterministic(FlatContextNet(net), flat, chunk=256)
    assert torch.equal(a, b)
    # No cross-row interaction: other rows' contents never change a row's output, bit for bit.
    rows = torch.from_numpy(groups == 5)
    other = torch.where(rows[:, None], flat, torch.randn_like(flat))
    c = run_deterministic(FlatContextNet(net), other, chunk=256)
    assert torch.equal(a[rows], c[rows]) and not torch.equal(a[~rows], c[~rows])
    # One group as its own batch: rows move within chunks, so only rounding-level differences
    # (the codec must batch the encoder like the decoder, or rely on exact_params' snapping).
    e = run_deterministic(FlatContextNet(net), flat[rows], chunk=256)
    assert torch.allclose(a[rows], e, rtol=1e-12, atol=1e-12)
    # Chunk size changes the GEMM shapes: float64 keeps the difference at rounding level.
    d = run_deterministic(FlatContextNet(net), flat, chunk=1000)
    assert torch.allclose(a, d, rtol=1e-12, atol=1e-12)
    # Empty context -> the learned "no context" vector; the flat and tensor forms agree.
    empty = torch.from_numpy(sel.count == 0)
    assert torch.equal(a[empty], net.empty.detach().double().expand(int(empty.sum()), -1))
    net64 = net.double()
    assert torch.allclose(net64(ctx.values, ctx.offsets, ctx.mask), a, rtol=1e-12, atol=1e-12)


def test_training_contexts_match_decoder_and_gradients_flow(real_context):
    coords, groups, sel = real_context
    torch.manual_seed(1)
    attrs = torch.randn(len(coords), 4, requires_grad=True)
    ctx = context_for_training(coords, groups, attrs, selection=sel)
    # The decoder at group k knows only groups < k: blank out the rest and compare.
    for k in range(1, groups.max() + 1):
        known = torch.where(torch.from_numpy(groups < k)[:, None], attrs.detach(), torch.nan)
        rows = np.flatnonzero(groups == k)
        dec = gather_context(sel, known, rows)
        assert not torch.isnan(dec.values).any()
        assert torch.equal(dec.values, ctx.values.detach()[rows])
    net = ContextNet(attr_dim=4, out_dim=8)
    feat = net(ctx.values, ctx.offsets, ctx.mask)
    feat.pow(2).sum().backward()
    used = np.zeros(len(coords), dtype=bool)
    used[sel.index[sel.mask]] = True
    grad_norm = attrs.grad.abs().sum(dim=1).numpy()
    assert (grad_norm[used] > 0).mean() > 0.9 and (grad_norm[~used] == 0).all()
    assert (grad_norm[groups == groups.max()] == 0).all()  # the last group is nobody's context
    assert net.empty.grad is not None and net.embed[0].weight.grad.abs().sum() > 0
