"""The training-step fast paths give what the plain paths give: the hash grid's cached lookup,
the entropy model fed a precomputed context, and the tile compositor's hand-written backward."""

import numpy as np
import pytest
import torch

from conftest import DEMO_PLY
from hemgs.anchor.warm_start import assign_slots, build_anchor_model, init_from_targets
from hemgs.cameras import sample_views
from hemgs.entropy.hac import AnchorAttrs
from hemgs.fit import FitConfig, new_entropy_model, render_finetune
from hemgs.io import load_scene
from hemgs.render import rasterize, render
from hemgs.render import tiles


@pytest.fixture(scope="module")
def demo():
    return load_scene(DEMO_PLY)


@pytest.fixture(scope="module")
def model_and_entropy(demo):
    model = build_anchor_model(demo, seed=0)
    init_from_targets(model, assign_slots(model, demo))
    return model, new_entropy_model(model, seed=0)


def test_cached_grid_lookup_equals_uncached(model_and_entropy):
    model, entropy = model_and_entropy
    xyz = model.anchors.detach()
    weight = torch.randn(xyz.shape[0], entropy.grid.config.out_dim, generator=torch.Generator().manual_seed(1))
    grads = []
    for cached in (False, True):
        entropy.zero_grad()
        ctx = entropy.context_of(entropy.lookup(xyz)) if cached else entropy.context(xyz)
        (ctx * weight).sum().backward()
        grads.append((ctx.detach(), entropy.grid.table3.grad.clone(), entropy.grid.table2.grad.clone()))
    (c0, a0, b0), (c1, a1, b1) = grads
    assert c0.abs().max() > 0.5  # a real context, not zeros
    # Same weights and rows; only the order of float additions may differ.
    assert torch.allclose(c0, c1, atol=1e-6, rtol=0)
    assert a0.abs().max() > 0 and b0.abs().max() > 0
    assert torch.allclose(a0, a1, atol=1e-4, rtol=1e-5) and torch.allclose(b0, b1, atol=1e-4, rtol=1e-5)
    entropy.zero_grad()


def test_cached_grid_lookup_float64_and_subsets(model_and_entropy):
    model, entropy = model_and_entropy
    xyz = model.anchors.detach().double()[::7]
    ref = entropy.grid(entropy.normalise(xyz))
    got = entropy.grid.encode(entropy.grid.lookup(entropy.normalise(xyz)))
    assert got.dtype == torch.float64 and torch.allclose(ref, got, atol=1e-12, rtol=0)


def test_grid_rows_read_equals_full_read(model_and_entropy):
    """The direct fit reads only its sampled voxels (encode_rows): same features and table
    gradients as reading every position and then selecting."""
    model, entropy = model_and_entropy
    grid = entropy.grid
    lk = grid.lookup(entropy.normalise(model.anchors.detach()))
    sel = torch.arange(3, lk.n, 5)
    weight = torch.randn(sel.shape[0], grid.config.out_dim, generator=torch.Generator().manual_seed(2))
    grads = []
    for rows in (False, True):
        grid.zero_grad()
        feat = grid.encode_rows(lk, sel) if rows else grid.encode(lk)[sel]
        (feat * weight).sum().backward()
        grads.append((feat.detach(), grid.table3.grad.clone(), grid.table2.grad.clone()))
    (f0, a0, b0), (f1, a1, b1) = grads
    assert f0.abs().max() > 0.5 and a0.abs().max() > 0 and b0.abs().max() > 0
    assert torch.allclose(f0, f1, atol=1e-6, rtol=0)
    assert torch.allclose(a0, a1, atol=1e-4, rtol=1e-5) and torch.allclose(b0, b1, atol=1e-4, rtol=1e-5)
    grid.zero_grad()


def test_entropy_forward_with_context_equals_positions(model_and_entropy):
    model, entropy = model_and_entropy
    vis = torch.zeros(model.num_anchors, dtype=torch.bool)
    vis[::3] = True
    attrs = AnchorAttrs(model.features[vis], model.scaling[vis], model.offsets[vis], model.binary_mask()[vis])
    torch.manual_seed(5)
    hat0, bits0 = entropy(model.anchors[vis], attrs)
    torch.manual_seed(5)  # same quantization noise
    hat1, bits1 = entropy(None, attrs, context=entropy.context_of(entropy.lookup(model.anchors.detach()))[vis])
    for k in bits0:
        assert torch.allclose(bits0[k], bits1[k], rtol=1e-5), k
    assert torch.allclose(hat0.offsets, hat1.offsets, atol=1e-6)


def _args(scene, idx):
    t = lambda a: torch.tensor(np.asarray(a)[idx], dtype=torch.float32)  # noqa: E731
    out = [t(scene.means), t(scene.quats), t(scene.log_scales).exp(), torch.sigmoid(t(scene.opacity_logits)),
           t(scene.sh[:, 0]) * 0.28 + 0.5]
    return [x.requires_grad_() for x in out]


@pytest.mark.parametrize("size", [(64, 48), (37, 29)])
def test_hand_backward_equals_autograd(demo, size, monkeypatch):
    w, h = size
    idx = np.arange(0, len(demo), 3)
    cam = sample_views(demo, n=2, width=w, height=h)[1]
    V, K = torch.tensor(cam.viewmat), torch.tensor(cam.K)
    loss_w = torch.rand(h, w, 3, generator=torch.Generator().manual_seed(0))
    out = {}
    for hand in (False, True):
        monkeypatch.setattr(tiles, "HAND_BACKWARD", hand)
        args = _args(demo, idx)
        img, alpha = rasterize(*args, V, K, w, h, background=torch.tensor([0.2, 0.3, 0.4]))
        ((img * loss_w).sum() + (alpha * loss_w[..., :1]).sum()).backward()
        out[hand] = (img.detach(), alpha.detach(), [a.grad for a in args])
    (i0, a0, g0), (i1, a1, g1) = out[False], out[True]
    assert torch.equal(i0, i1) and torch.equal(a0, a1)
    assert a0.max() > 0.9  # the object covers pixels: saturation and early stop are exercised
    for name, x, y in zip(("means", "quats", "scales", "opacities", "colors"), g0, g1):
        assert x.abs().max() > 0, name
        assert (x - y).norm() / x.norm() < 1e-5, name


def test_render_finetune_trains_with_rate(demo):
    model = build_anchor_model(demo, seed=0)
    init_from_targets(model, assign_slots(model, demo))
    entropy = new_entropy_model(model, seed=0)
    cfg = FitConfig(width=32, steps=3, rate_start=0.0)
    views = sample_views(demo, n=3, width=32, height=32)
    targets = [torch.as_tensor(render(demo, c, device="cpu")) for c in views]
    table = entropy.grid.table3.detach().clone()
    log = render_finetune(model, entropy, views, targets, cfg, lambda *a: None)
    assert all(b is not None and np.isfinite(b) for b in log["bits_per_param"])
    assert not torch.equal(table, entropy.grid.table3.detach())  # the grid's tables trained
