"""Training from a Scaffold-GS model (anchors + MLPs) and from photos (transforms.json)."""

import tarfile

import numpy as np
import pytest
import torch

from conftest import DEMO_PLY, shared_file
from hemgs.anchor.model import MASK_ON_LOGIT, AnchorConfig, AnchorModel
from hemgs.anchor.warm_start import build_anchor_model, warm_start
from hemgs.cli import main
from hemgs.errors import FormatError, InputError
from hemgs.fit import FitConfig, fit, render_views_anchor
from hemgs.fit_sources import (fit_inputs, infer_grid, load_scaffold_source, scaffold_anchors_of,
                               scaffold_mlp_dicts)
from hemgs.io import load_scene, write_scaffold_ply
from hemgs.metrics import psnr
from hemgs.model_store import load_model

TINY = FitConfig(width=48, views=8, steps=24)


@pytest.fixture(scope="module")
def scaffold(tmp_path_factory):
    """A Scaffold-GS PLY + checkpoint made from a briefly warm-started piece of the demo scene,
    and that model with all its offset slots on (Scaffold-GS has no masks)."""
    d = tmp_path_factory.mktemp("scaffold")
    scene = load_scene(DEMO_PLY)
    centre = np.median(scene.means, axis=0)
    near = np.argsort(np.linalg.norm(scene.means - centre, axis=1))[:1500]
    piece = scene.subset(np.sort(near))
    model = build_anchor_model(piece, AnchorConfig(), seed=0)
    warm_start(model, piece, steps=80, seed=0)
    with torch.no_grad():
        model.mask_logits.fill_(MASK_ON_LOGIT)
    ply, ckpt = d / "point_cloud.ply", d / "checkpoints.pth"
    write_scaffold_ply(scaffold_anchors_of(model), ply)
    torch.save(scaffold_mlp_dicts(model), ckpt)
    return d, ply, ckpt, model


def test_scaffold_model_is_read_back_exactly(scaffold):
    _, ply, ckpt, original = scaffold
    model = load_scaffold_source(ply, ckpt)
    assert model.num_anchors == original.num_anchors
    assert model.voxel_size == pytest.approx(original.voxel_size, rel=1e-5)
    assert torch.allclose(model.anchors, original.anchors, atol=1e-5 * original.voxel_size + 1e-6)
    # Same grid cells, features, MLPs: the same neural Gaussians, so the same render.
    cams = fit_inputs(ply, mlps=ckpt, cfg=TINY).views[0][:2]
    for a, b in zip(render_views_anchor(model, cams), render_views_anchor(original, cams)):
        assert (a.max(axis=2) > 0.05).mean() > 0.1  # not an empty frame
        assert np.abs(a - b).max() < 1e-3


@pytest.mark.slow
def test_training_from_scaffold_beats_a_fresh_model(scaffold):
    _, ply, ckpt, _ = scaffold
    inputs = fit_inputs(ply, mlps=ckpt, cfg=TINY)
    assert inputs.scene is None and inputs.targets is None  # the teacher is the Scaffold model itself
    fitted = fit(cfg=TINY, **inputs.fit_kwargs())
    h = fitted.history
    assert h["targets"] == "initial model" and h["warm_final_loss"] is None
    assert any(b is not None for b in h["render"]["bits_per_param"])  # the rate joined
    # A fresh model on the same anchors, trained the same way against the same teacher renders.
    teacher = load_scaffold_source(ply, ckpt)
    train, test = inputs.views
    targets = (render_views_anchor(teacher, train), render_views_anchor(teacher, test))
    fresh = AnchorModel(teacher.config, teacher.coords, teacher.origin, seed=1)
    base = fit(None, cfg=TINY, views=inputs.views, targets=targets, init_model=fresh).history
    assert h["heldout_psnr"] > base["heldout_psnr"] + 3.0, (h["heldout_psnr"], base["heldout_psnr"])


def test_scaffold_cli_needs_its_mlps_and_a_grid(scaffold, tmp_path, capsys):
    d, ply, ckpt, model = scaffold
    out = tmp_path / "m.safetensors"
    assert main(["train", str(ply), "-o", str(out)]) == 2
    assert "--mlps" in capsys.readouterr().err and not out.exists()
    # Positions off any grid (a 3DGS-like point set with Scaffold properties) are refused.
    anchors = scaffold_anchors_of(model)
    anchors.xyz = anchors.xyz + np.random.default_rng(0).normal(0, 0.3 * model.voxel_size, anchors.xyz.shape)
    bad = tmp_path / "offgrid.ply"
    write_scaffold_ply(anchors, bad)
    assert main(["train", str(bad), "--mlps", str(ckpt), "-o", str(out)]) == 2
    assert "not on a regular grid" in capsys.readouterr().err and not out.exists()
    # With its MLPs it trains (tiny settings) into a model that compresses.
    tiny = ["--steps", "4", "--train-width", "32", "--train-views", "8", "--codec", "hac", "--fixed-rate"]
    assert main(["train", str(ply), "--mlps", str(ckpt), "-o", str(out), *tiny]) == 0
    assert "held-out PSNR" in capsys.readouterr().out
    _, _, meta = load_model(out)
    assert meta["source_format"] == "scaffold_ply" and meta["fit"]["anchors"] == model.num_anchors
    assert main(["compress", str(out), "-o", str(tmp_path / "m.hgs")]) == 0
    # MLPs of another shape (5 offsets per anchor) do not match the PLY's 10.
    other = scaffold_mlp_dicts(AnchorModel(AnchorConfig(k=5, voxel_size=1.0), np.zeros((1, 3)), np.zeros(3)))
    torch.save(other, tmp_path / "other.pth")
    with pytest.raises(FormatError, match="outputs, expected 1 x 10"):
        load_scaffold_source(ply, tmp_path / "other.pth")


def test_infer_grid_of_scaffold_style_positions():
    # Scaffold-GS: round(x / v) * v in float32, far from the origin.
    v = 0.0137
    cells = np.random.default_rng(1).integers(-300, 300, (2000, 3))
    xyz = (cells * v + np.array([40.0, -12.0, 7.0])).astype(np.float32)
    coords, origin, size = infer_grid(xyz)
    assert size == pytest.approx(v, rel=1e-4)
    assert np.abs(origin + (coords + 0.5) * size - xyz).max() < 1e-3 * v + 1e-5
    with pytest.raises(InputError, match="not on a regular grid"):
        infer_grid(xyz + np.random.default_rng(2).uniform(-0.3, 0.3, xyz.shape) * v)


@pytest.fixture(scope="module")
def fox(tmp_path_factory):
    tar = shared_file("instant_ngp_fox.tar")
    d = tmp_path_factory.mktemp("fox")
    with tarfile.open(tar) as tf:
        tf.extractall(d, filter="data")
    return d / "fox"


@pytest.mark.slow
@pytest.mark.data
def test_training_against_photos_from_random_anchors(fox):
    cfg = FitConfig(steps=16, rate_start=0.5)
    inputs = fit_inputs(None, images=fox / "transforms.json", downscale=16, cfg=cfg, random_anchors=400)
    train, test = inputs.views
    assert len(train) + len(test) == 50 and len(test) == 7  # every 8th of the 50 photos present
    assert (train[0].width, train[0].height) == (68, 120) and inputs.targets[0][0].shape == (120, 68, 3)
    fitted = fit(cfg=cfg, **inputs.fit_kwargs())
    h = fitted.history
    l1 = h["render"]["l1"]
    assert h["targets"] == "images" and len(l1) == 16
    assert np.mean(l1[-4:]) < np.mean(l1[:4])  # it learns
    # Held-out PSNR against the photos, computed independently here.
    renders = render_views_anchor(fitted.model, test)
    assert h["heldout_psnr"] == pytest.approx(np.mean([psnr(t, r) for t, r in zip(inputs.targets[1], renders)]))
    assert 5.0 < h["heldout_psnr"] < 40.0


@pytest.mark.data
def test_photo_inputs_are_checked(fox, tmp_path, capsys):
    colmap = tmp_path / "colmap"
    (colmap / "sparse" / "0").mkdir(parents=True)
    out = tmp_path / "m.safetensors"
    assert main(["train", "--images", str(colmap), "-o", str(out)]) == 2
    assert "COLMAP reconstructions are not supported yet" in capsys.readouterr().err
    assert main(["train", "-o", str(out)]) == 2
    assert "--images" in capsys.readouterr().err
    assert main(["train", "--images", str(fox), "--downscale", "0.5", "-o", str(out)]) == 2
    assert "--downscale" in capsys.readouterr().err and not out.exists()


def test_explicit_targets_with_a_3dgs_start():
    """Photos + a 3DGS source: warm start from the scene, train against the given images (here the
    scene's own renders, so a good fit is possible and measurable)."""
    from hemgs.cameras import sample_views, split_views
    from hemgs.render import render

    scene = load_scene(DEMO_PLY)
    centre = np.median(scene.means, axis=0)
    piece = scene.subset(np.sort(np.argsort(np.linalg.norm(scene.means - centre, axis=1))[:800]))
    train, test = split_views(sample_views(piece, n=9, width=40, height=40))
    targets = ([render(piece, c) for c in train], [render(piece, c) for c in test])
    cfg = FitConfig(width=40, steps=6, warm_steps=40, codec="hac", variable_rate=False)
    h = fit(piece, cfg=cfg, views=(train, test), targets=targets).history
    assert h["targets"] == "images" and h["warm_final_loss"] is not None
    assert h["heldout_psnr"] > 15.0
    # the entropy refinement ends every fit, within its budget (2 per render step by default)
    assert 0 < h["refine"]["steps"] <= h["refine"]["budget"] == 12
    assert h["refine"]["bits_after"] <= h["refine"]["bits_before"]
    with pytest.raises(InputError, match="one image with each view"):
        fit(piece, cfg=cfg, views=(train, test), targets=(targets[0][:-1], targets[1]))
