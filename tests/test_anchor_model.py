"""The anchor model: voxelization, neural-Gaussian generation, codec access, baking (real demo scene)."""

import math

import numpy as np
import pytest
import torch

from conftest import DEMO_PLY
from hemgs.anchor.bake import bake
from hemgs.anchor.model import AnchorConfig, AnchorModel, generate_neural_gaussians
from hemgs.anchor.voxelize import MAX_COORD, choose_voxel_size, min_voxel_size, voxelize
from hemgs.anchor.warm_start import build_anchor_model, warm_start
from hemgs.io import load_scene
from hemgs.errors import FormatError, SceneError
from hemgs.scene import GaussianScene, sanitize


@pytest.fixture(scope="module")
def demo():
    return load_scene(DEMO_PLY)


@pytest.fixture(scope="module")
def small_model(demo):
    """A briefly warm-started model on a 2,000-Gaussian piece of the demo scene."""
    sub = demo.subset(np.random.default_rng(3).choice(len(demo), 2000, replace=False))
    model = build_anchor_model(sub, target_ratio=4.0, seed=0)
    warm_start(model, sub, steps=40, batch_anchors=1024, seed=0)
    return model


# ---- voxelization ------------------------------------------------------------------------------
def test_voxelize_puts_every_gaussian_in_its_anchor_voxel(demo):
    v = choose_voxel_size(demo, 4.0)
    coords, origin, assign = voxelize(demo.means, v)
    assert coords.dtype == np.int64 and coords.shape[1] == 3
    assert coords.min() >= 0 and coords.max() <= MAX_COORD
    assert len(np.unique(coords, axis=0)) == len(coords)
    assert assign.shape == (len(demo),) and assign.min() == 0 and assign.max() == len(coords) - 1
    centres = origin + (coords[assign] + 0.5) * v
    # Each Gaussian lies within half a voxel of its anchor (tiny slack for float rounding).
    assert np.abs(demo.means - centres).max() <= v / 2 * (1 + 1e-6) + 1e-6
    # The voxel-size rule: about N/4 anchors (bisection lands within 2%).
    assert abs(len(coords) - len(demo) / 4.0) <= 0.02 * len(demo) / 4.0


@pytest.mark.parametrize("ratio", [2.0, 8.0])
def test_choose_voxel_size_follows_target_ratio(demo, ratio):
    n = len(voxelize(demo.means, choose_voxel_size(demo, ratio))[0])
    assert abs(len(demo) / n - ratio) / ratio < 0.05


def test_sixteen_bit_limit_enlarges_or_refuses(demo):
    far = demo.means.copy()
    far[0] = [1e5, 0.0, 0.0]  # one outlier stretches the scene far beyond 65536 demo voxels
    v = choose_voxel_size(far, 4.0)
    assert v >= min_voxel_size(far)
    coords, _, _ = voxelize(far, v)
    assert coords.max() <= MAX_COORD
    with pytest.raises(SceneError, match="16 bits"):
        voxelize(far, min_voxel_size(far) / 4)


def test_voxelize_rejects_bad_input():
    with pytest.raises(SceneError):
        voxelize(np.zeros((0, 3)), 0.1)
    with pytest.raises(SceneError):
        voxelize(np.array([[0.0, np.nan, 0.0]]), 0.1)
    with pytest.raises(SceneError):
        voxelize(np.zeros((4, 3)), -1.0)


# ---- generate ----------------------------------------------------------------------------------
def test_generate_shapes_positions_and_selection(small_model):
    m = small_model
    cam = torch.tensor([3.0, -1.0, 2.0])
    g = m.generate(cam)
    n_sel = len(g)
    assert 0 < n_sel <= m.num_anchors * m.config.k
    for t, shape in [(g.means, (n_sel, 3)), (g.quats, (n_sel, 4)), (g.scales, (n_sel, 3)),
                     (g.opacities, (n_sel,)), (g.colors, (n_sel, 3))]:
        assert t.shape == shape and t.dtype == torch.float32 and torch.isfinite(t).all()
    assert torch.allclose(g.quats.norm(dim=1), torch.ones(n_sel), atol=1e-5)
    assert (g.opacities > 0).all() and (g.opacities <= 1).all()
    assert (g.colors >= 0).all() and (g.colors <= 1).all() and (g.scales > 0).all()
    a, s = g.index // m.config.k, g.index % m.config.k
    with torch.no_grad():
        expect = m.anchors[a] + m.offsets[a, s] * torch.exp(m.scaling[a, :3])
        bound = torch.exp(m.scaling[a, 3:])
    assert torch.allclose(g.means, expect, atol=1e-6)
    assert (g.scales <= bound * (1 + 1e-5)).all()  # sigmoid() bounds each scale
    # Only masked-on slots with positive MLP opacity are drawn, and all of those are.
    with torch.no_grad():
        raw = m.slots(cam).opacity * m.binary_mask()
    assert torch.equal(torch.nonzero(raw.reshape(-1) > 0).reshape(-1), g.index)


def test_masks_prune_and_visible_restricts(small_model):
    m = AnchorModel.from_attributes(
        small_model.config, small_model.coords, small_model.origin,
        small_model.anchor_attributes(), small_model.mlp_state())
    cam = torch.tensor([0.0, -3.0, 0.5])
    before = m.generate(cam)
    with torch.no_grad():
        m.mask_logits[:, ::2] = -10.0  # even slots off
    after = m.generate(cam)
    assert len(after) < len(before)
    assert not ((after.index % m.config.k) % 2 == 0).any()
    kept = set(before.index.tolist())
    assert set(after.index.tolist()) == {i for i in kept if (i % m.config.k) % 2 == 1}
    visible = torch.zeros(m.num_anchors, dtype=torch.bool)
    visible[: m.num_anchors // 3] = True
    part = m.generate(cam, visible=visible)
    assert len(part) > 0 and (part.index // m.config.k < m.num_anchors // 3).all()
    full = {i: j for j, i in enumerate(after.index.tolist())}
    rows = torch.tensor([full[i] for i in part.index.tolist()])
    assert torch.allclose(part.colors, after.colors[rows]) and torch.allclose(part.means, after.means[rows])


def test_gradients_reach_features_mlps_scaling_offsets_and_masks(demo):
    sub = demo.subset(np.arange(0, len(demo), 40))
    m = build_anchor_model(sub, target_ratio=3.0)
    g = m.generate(torch.tensor([2.0, -2.0, 2.0]))
    (g.colors.sum() + g.opacities.sum() + g.scales.sum() + g.means.sum() + g.quats[:, 1].sum()).backward()
    for name, p in [("features", m.features), ("scaling", m.scaling), ("offsets", m.offsets),
                    ("mask_logits", m.mask_logits)] + list(m.mlps.named_parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# ---- codec access ------------------------------------------------------------------------------
def test_from_attributes_and_mlp_state_round_trip_exactly(small_model):
    from safetensors.torch import load as st_load, save as st_save

    source = AnchorModel.from_attributes(small_model.config, small_model.coords, small_model.origin,
                                         small_model.anchor_attributes(), small_model.mlp_state())
    with torch.no_grad():  # trained-looking mask logits: any value, some slots switched off
        gen = torch.Generator().manual_seed(5)
        source.mask_logits.copy_(torch.randn(source.mask_logits.shape, generator=gen) * 3.0)
    attrs = source.anchor_attributes()
    assert set(attrs) == {"features", "scaling", "offsets", "mask"} and attrs["mask"].dtype == torch.bool
    assert 0 < int(attrs["mask"].sum()) < attrs["mask"].numel()
    state = st_load(st_save(source.mlp_state()))  # through safetensors bytes: no pickle
    rebuilt = AnchorModel.from_attributes(
        AnchorConfig.from_dict(source.config.to_dict()), source.coords.numpy(),
        source.origin.numpy(), attrs, state)
    for cam in ([3.0, -1.0, 2.0], [-2.5, 0.5, -1.0]):
        a, b = source.generate(torch.tensor(cam)), rebuilt.generate(torch.tensor(cam))
        for name in ("means", "quats", "scales", "opacities", "colors", "index"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
    # The same pure function on the decoded tensors gives the same Gaussians.
    g = generate_neural_gaussians(rebuilt.anchors, attrs["features"], attrs["scaling"], attrs["offsets"],
                                  attrs["mask"].float(), rebuilt.mlps, torch.tensor([3.0, -1.0, 2.0]))
    ref = source.generate(torch.tensor([3.0, -1.0, 2.0]))
    assert torch.equal(g.colors, ref.colors) and torch.equal(g.opacities, ref.opacities)


def test_bad_decoded_state_raises_format_error(small_model):
    state = small_model.mlp_state()
    bad = dict(state)
    bad.pop(next(iter(bad)))
    with pytest.raises(FormatError, match="missing"):
        small_model.load_mlp_state(bad)
    name = next(iter(state))
    wrong = dict(state, **{name: torch.zeros(3, 3)})
    with pytest.raises(FormatError, match="shape"):
        small_model.load_mlp_state(wrong)
    attrs = small_model.anchor_attributes()
    attrs["features"] = attrs["features"][:-1]
    with pytest.raises(FormatError, match="features"):
        AnchorModel.from_attributes(small_model.config, small_model.coords, small_model.origin, attrs, state)
    with pytest.raises(FormatError, match="unknown"):
        AnchorConfig.from_dict({"feat_dim": 50, "from_the_future": 1})


# ---- bake --------------------------------------------------------------------------------------
def _valid(scene: GaussianScene) -> None:
    for arr in (scene.means, scene.quats, scene.log_scales, scene.opacity_logits, scene.sh):
        assert np.isfinite(arr).all()
    assert np.allclose(np.linalg.norm(scene.quats, axis=1), 1.0, atol=1e-5)
    _, warnings = sanitize(scene)
    assert warnings == []


def test_bake_sh_fit_gives_valid_scene(small_model):
    baked = bake(small_model, sh_degree=2, directions=48)
    _valid(baked)
    assert baked.sh_degree == 2
    on = int((small_model.binary_mask() > 0.5).sum())
    assert 0.5 * on <= len(baked) <= on  # drops only masked-off / invisible slots
    assert (baked.opacities >= 1 / 255 - 1e-6).all()


def test_bake_sh_fit_reproduces_constant_colour(small_model):
    m = AnchorModel.from_attributes(small_model.config, small_model.coords, small_model.origin,
                                    small_model.anchor_attributes(), small_model.mlp_state())
    k = m.config.k
    target = torch.tensor([0.8, 0.3, 0.1])
    with torch.no_grad():  # colour head outputs a constant: zero weights, bias = logit(colour)
        last = m.mlps.color[2]
        last.weight.zero_()
        last.bias.copy_(torch.logit(target).repeat(k))
    baked = bake(m, sh_degree=1, directions=32)
    assert len(baked) > 0
    assert np.allclose(baked.colors_dc, target.numpy(), atol=1e-4)
    assert np.abs(baked.sh[:, 1:]).max() < 1e-4


def test_bake_view_matches_generate(small_model):
    cam = np.array([2.0, -1.5, -2.0])
    g = small_model.generate(torch.tensor(cam, dtype=torch.float32))
    baked = bake(small_model, mode="view", camera_center=cam, sh_degree=1)
    _valid(baked)
    assert len(baked) == len(g) and baked.sh_degree == 1
    assert np.allclose(baked.colors_dc, g.colors.detach().numpy(), atol=1e-5)
    assert np.allclose(baked.means, g.means.detach().numpy())
    assert np.allclose(baked.scales, g.scales.detach().numpy(), rtol=1e-4)
    assert np.allclose(baked.opacities, g.opacities.detach().numpy(), atol=1e-5)


def test_bake_rejects_bad_arguments(small_model):
    with pytest.raises(SceneError, match="camera_center"):
        bake(small_model, mode="view")
    with pytest.raises(SceneError, match="mode"):
        bake(small_model, mode="spin")
    with pytest.raises(SceneError, match="directions"):
        bake(small_model, sh_degree=3, directions=8)
    assert math.isfinite(small_model.view_sphere()[1])
