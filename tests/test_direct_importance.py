"""Direct mode measures each Gaussian's importance over the whole sphere of directions (an artist
orbits freely), from views that share none with the evaluation's."""

import numpy as np
import pytest

from hemgs.cameras import evaluation_views
from hemgs.direct import balance
from hemgs.direct.attributes import visibility
from hemgs.direct.fit import importance_views
from test_direct_codec import tiny_scene


def _directions(cams, centre):
    d = np.array([c.center - centre for c in cams])
    return d / np.linalg.norm(d, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def scene():
    return tiny_scene(600)


def test_the_encoders_views_cover_the_sphere_and_none_is_an_evaluation_view(scene):
    from hemgs.cameras import robust_bounds

    lo, hi = robust_bounds(scene.means)
    centre = (lo + hi) / 2
    imp = _directions(importance_views(scene), centre)
    bal = _directions(balance.Views(scene).cameras, centre)
    ev = _directions(evaluation_views(scene, n=16), centre)
    up = np.array([0.0, -1.0, 0.0])
    assert (imp @ up).max() > 0.8 and (imp @ up).min() < -0.8  # from above and from below
    for enc in (imp, bal):
        gap = np.degrees(np.arccos(np.clip(enc @ ev.T, -1, 1)))
        assert gap.min() > 5, gap.min()


def test_a_higher_power_leans_towards_the_view_that_shows_a_gaussian_most(scene):
    views = importance_views(scene)[:6]
    v1, v4 = visibility(scene, views), visibility(scene, views, power=4.0)
    seen = v1 > 1e-9
    assert seen.mean() > 0.5
    assert (v4[seen] >= v1[seen] * (1 - 1e-9)).all()  # a power mean is never below the mean
    assert np.median(v4[seen] / v1[seen]) > 1.05  # and most Gaussians show unevenly over the views


def test_coding_for_the_scenes_own_cameras_is_explicit_and_recorded(scene, tmp_path, capsys):
    from hemgs.cameras import sample_views, save_cameras
    from hemgs.cli import main
    from hemgs.container import read_hgs
    from hemgs.io import write_ply

    src = tmp_path / "patch.ply"
    write_ply(scene, src)
    run = ["compress", str(src), "--mode", "direct", "--iters", "10", "-o"]
    # asked for, but the scene has no cameras: one line, exit 2, nothing written
    assert main(run + [str(tmp_path / "a.hgs"), "--for-cameras"]) == 2
    err = capsys.readouterr().err
    assert "no cameras.json beside" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "a.hgs").exists()
    save_cameras(sample_views(scene, n=40, width=64, height=48), tmp_path / "cameras.json")
    assert main(run + [str(tmp_path / "own.hgs"), "--for-cameras"]) == 0
    assert main(run + [str(tmp_path / "all.hgs")]) == 0  # a cameras.json beside is not enough: the default
    capsys.readouterr()
    assert read_hgs(tmp_path / "own.hgs").header["importance_views"] == "cameras"
    assert read_hgs(tmp_path / "all.hgs").header["importance_views"] == "sphere"
    assert main(["info", str(tmp_path / "own.hgs")]) == 0
    assert "coded for:  the scene's own cameras only" in capsys.readouterr().out
    # anchor mode refuses the switch rather than ignoring it
    assert main(["compress", str(src), "-o", str(tmp_path / "b.hgs"), "--mode", "anchor", "--for-cameras"]) == 2


def test_own_cameras_are_capped_and_rendered_small(scene):
    from hemgs.cameras import sample_views
    from hemgs.direct.fit import IMPORTANCE_SIZE, MAX_CAMERA_VIEWS

    views = importance_views(scene, sample_views(scene, n=MAX_CAMERA_VIEWS + 9, width=640, height=480))
    assert len(views) == MAX_CAMERA_VIEWS and {(v.width, v.height) for v in views} == {(IMPORTANCE_SIZE, 96)}


@pytest.mark.slow
def test_a_gaussian_that_one_side_needs_is_not_skipped():
    """Skips follow each Gaussian's best view, not the views' mean: on the demo scene some Gaussians
    are too faint on average to be worth their bits at λ = 16, yet one side shows them; they are kept."""
    from conftest import DEMO_PLY
    from hemgs.direct import DirectConfig, DirectFitConfig, encode, fit_direct
    from hemgs.direct.codec import skip_decisions
    from hemgs.io import load_scene
    from hemgs.scene import sanitize

    demo, _ = sanitize(load_scene(DEMO_PLY))
    fitted = fit_direct(demo, DirectConfig(), DirectFitConfig(iters=10))
    mean, peak = fitted.values["importance"][:, 0], fitted.peak
    assert (peak >= mean - 1e-9).all()  # no Gaussian's best view shows it less than the views' mean
    by_mean, by_peak = skip_decisions(mean, 16.0), skip_decisions(peak, 16.0)
    assert not (by_peak & ~by_mean).any()
    spared = by_mean & ~by_peak
    assert spared.sum() >= 5
    _, _, dec = encode(fitted, lam=16.0)
    alpha = dec.scene.opacities  # coding order, as the masks
    assert (alpha[spared] > 1 / 255).all()
    assert (alpha[by_peak] < 1e-4).all()


def test_v_stands_for_the_evaluations_width():
    """Measured at 128², a Gaussian much smaller than a pixel covers the renderer's EPS2D px², 4x
    its share of a 256² image; at_resolution rescales it (a large one keeps its share against the
    others), and the scene's total V stays as measured."""
    from hemgs.cameras import sphere_views
    from hemgs.direct.attributes import at_resolution
    from hemgs.scene import GaussianScene

    means = np.array([[0.0, 0, 0], [0.1, 0, 0], [2.0, 2, 2], [-2.0, -2, -2]])
    log_scales = np.log(np.array([[1e-4] * 3, [0.5] * 3, [0.5] * 3, [0.5] * 3]))
    scene = GaussianScene(means, np.tile([1.0, 0, 0, 0], (4, 1)), log_scales, np.zeros(4), np.zeros((4, 1, 3)))
    views = sphere_views(scene, n=3, width=128, height=128)
    pv = np.ones((4, 3))
    out = at_resolution(pv, scene, views)
    assert np.isclose(out.sum(), pv.sum())
    assert np.allclose(out[0] / out[1], 0.25, rtol=0.02)  # tiny against large, every view
    assert np.allclose(out[1:], out[1, 0], rtol=0.05)


def test_rotation_weights_follow_the_drawn_footprint():
    """With the renderer's widening, a Gaussian thinner than a pixel turns without showing it:
    its twist and swing weigh less; a large one's barely change, and no other stage's do."""
    import torch

    from hemgs.direct.attributes import coding_log_weights

    vals = {"importance": torch.full((2, 1), 20.0), "opacity": torch.zeros((2, 1)),
            "scale": torch.log(torch.tensor([[0.01, 0.02, 0.05], [1.0, 2.0, 5.0]], dtype=torch.float64)),
            "rotation": torch.zeros((2, 3)), "position": torch.zeros((2, 3)), "dc": torch.zeros((2, 3))}
    for stage in ("opacity", "scale", "position", "dc"):
        assert torch.equal(coding_log_weights(stage, vals, 0.0, True, True, 0.3),
                           coding_log_weights(stage, vals, 0.0, True, True))
    change = coding_log_weights("rotation", vals, 0.0, True, True, 0.3) - coding_log_weights("rotation", vals, 0.0, True, True)
    assert (change[0] < -5).all()  # σ_max 0.05 against a dilation of 0.3
    assert (change[1].abs() < 0.05).all()
