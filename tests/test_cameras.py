"""Camera readers (instant-ngp transforms.json, Inria cameras.json), sampled views, splits."""

import json
import tarfile

import numpy as np
import pytest

from conftest import DEMO_PLY, shared_file
from hemgs.cameras import (Camera, has_cameras_beside, load_cameras, look_at, sample_views, save_cameras,
                           scene_views, split_views)
from hemgs.errors import InputError
from hemgs.io import load_scene


@pytest.fixture(scope="module")
def demo():
    return load_scene(DEMO_PLY)


@pytest.fixture(scope="module")
def fox(tmp_path_factory):
    """The instant-ngp fox, extracted to a temporary folder (never into the repo)."""
    tar = shared_file("instant_ngp_fox.tar")
    out = tmp_path_factory.mktemp("fox")
    with tarfile.open(tar) as tf:
        tf.extractall(out, filter="data")
    return out / "fox"


def _meet_point(cams):
    """Least-squares point nearest to every camera's optical axis."""
    A, b = np.zeros((3, 3)), np.zeros(3)
    for c in cams:
        d = c.viewmat[2, :3]  # camera +z (forward) in world coordinates
        P = np.eye(3) - np.outer(d, d)
        A += P
        b += P @ c.center
    return np.linalg.solve(A, b)


# ---- transforms.json -----------------------------------------------------------------------
@pytest.mark.data
def test_fox_transforms_json(fox):
    meta = json.loads((fox / "transforms.json").read_text())
    assert len(meta["frames"]) == 67
    cams = load_cameras(fox / "transforms.json")
    assert len(cams) == 50  # frames whose photo is missing are skipped
    for c in cams:
        assert (c.width, c.height) == (1080, 1920)
        assert np.allclose(c.K, [[1375.52, 0, 554.558], [0, 1374.49, 965.268], [0, 0, 1]])
        assert c.image_path and (fox / "images" / f"{c.name}.jpg").samefile(c.image_path)
    frames = {f["file_path"]: np.array(f["transform_matrix"]) for f in meta["frames"]}
    c2w = frames[f"images/{cams[0].name}.jpg"]
    assert np.allclose(cams[0].center, c2w[:3, 3])
    # OpenGL looks down its -z: our camera +z (forward) is the frame's -z column.
    assert np.allclose(cams[0].viewmat[2, :3], -c2w[:3, 2])
    # The cameras circle the fox: the point their axes meet at is in front of all of them
    # and projects well inside every image (a wrong axis flip would put it behind).
    p = _meet_point(cams)
    for c in cams:
        uv, depth = c.project(p[None])
        assert depth[0] > 0
        assert 0.1 * c.width < uv[0, 0] < 0.9 * c.width and 0.1 * c.height < uv[0, 1] < 0.9 * c.height


@pytest.mark.data
def test_transforms_downscale_and_per_frame_intrinsics(fox, tmp_path):
    small = load_cameras(fox / "transforms.json", downscale=4)
    assert (small[0].width, small[0].height) == (270, 480)
    assert np.allclose(small[0].K[:2], load_cameras(fox / "transforms.json")[0].K[:2] / 4)
    meta = json.loads((fox / "transforms.json").read_text())
    for key in ("fl_x", "fl_y", "cx", "cy", "w", "h"):
        del meta[key]  # globals gone: camera_angle_x/y must give the focal lengths
    meta["frames"][0].update({"fl_x": 900.0, "w": 1000, "h": 2000})
    for f in meta["frames"]:
        f["file_path"] = str(fox / f["file_path"])
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    cams = load_cameras(tmp_path / "transforms.json")
    first = next(c for c in cams if c.name == "0001")
    assert first.K[0, 0] == 900.0 and (first.width, first.height) == (1000, 2000)
    other = next(c for c in cams if c.name != "0001")
    assert np.isclose(other.K[0, 0], 0.5 * 1080 / np.tan(meta["camera_angle_x"] / 2))
    assert np.isclose(other.K[1, 1], 0.5 * 1920 / np.tan(meta["camera_angle_y"] / 2))


def test_nerf_synthetic_paths_without_extension_and_size_from_image(tmp_path):
    from PIL import Image

    (tmp_path / "train").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "train" / "r_0.png")
    meta = {"camera_angle_x": 0.69, "frames": [
        {"file_path": "./train/r_0", "transform_matrix": np.eye(4).tolist()},
        {"file_path": "./train/r_1", "transform_matrix": np.eye(4).tolist()}]}
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    (cam,) = load_cameras(tmp_path / "transforms.json")
    assert (cam.width, cam.height) == (40, 30) and np.isclose(cam.K[0, 0], 20 / np.tan(0.345))


# ---- Inria cameras.json --------------------------------------------------------------------
def test_inria_cameras_json_round_trip(demo, tmp_path):
    cams = sample_views(demo, n=5, width=320, height=200)
    save_cameras(cams, tmp_path / "cameras.json")
    entries = json.loads((tmp_path / "cameras.json").read_text())
    # The Inria meaning of the fields: position = camera centre, rotation = camera-to-world.
    assert np.allclose(entries[2]["position"], cams[2].center)
    assert np.allclose(np.array(entries[2]["rotation"]) @ cams[2].viewmat[:3, :3], np.eye(3))
    back = load_cameras(tmp_path / "cameras.json")
    assert len(back) == 5
    for a, b in zip(cams, back):
        assert np.allclose(a.viewmat, b.viewmat) and np.allclose(a.K, b.K)
        assert (a.width, a.height, a.name) == (b.width, b.height, b.name)
    half = load_cameras(tmp_path / "cameras.json", downscale=2)
    assert (half[0].width, half[0].height) == (160, 100) and np.allclose(half[0].K[:2], cams[0].K[:2] / 2)


@pytest.mark.parametrize("content, problem", [
    ("{not json", "not a JSON"),
    ('{"cameras": []}', "neither"),
    ("[]", "no usable cameras"),
    ('[{"width": 10, "height": 10, "position": [0, 0], "rotation": [[1,0,0],[0,1,0],[0,0,1]],'
     ' "fx": 5, "fy": 5}]', "position has shape"),
    ('[{"width": 10, "height": 10}]', "lacks position"),
    ('[{"width": -3, "height": 10, "position": [0, 0, 0], "rotation": [[1,0,0],[0,1,0],[0,0,1]],'
     ' "fx": 5, "fy": 5}]', "width"),
    ('{"frames": [{"file_path": "x.png"}]}', "lacks transform_matrix"),
    ('{"frames": 3}', "not a list"),
])
def test_malformed_camera_files_raise_input_error(tmp_path, content, problem):
    path = tmp_path / "cams.json"
    path.write_text(content)
    with pytest.raises(InputError, match=problem) as err:
        load_cameras(path)
    assert "cams.json" in str(err.value) and "\n" not in str(err.value)


def test_missing_camera_file_and_bad_downscale(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_cameras(tmp_path / "nope.json")
    (tmp_path / "c.json").write_text("[]")
    with pytest.raises(InputError, match="downscale"):
        load_cameras(tmp_path / "c.json", downscale=0)


# ---- sampled views -------------------------------------------------------------------------
def test_sample_views_are_deterministic_and_spread(demo):
    a = sample_views(demo, n=16, width=64, height=48)
    b = sample_views(demo, n=16, width=64, height=48)
    assert len(a) == 16 and all(np.array_equal(x.viewmat, y.viewmat) for x, y in zip(a, b))
    c = sample_views(demo, n=16, width=64, height=48, seed=3)
    assert not np.allclose(a[1].viewmat, c[1].viewmat)
    dirs = np.array([cam.center for cam in a])
    dirs -= dirs.mean(0)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    # Well spread: no two views closer than 15 degrees, and they surround the scene.
    cos = dirs @ dirs.T - 2 * np.eye(16)
    assert cos.max() < np.cos(np.radians(15))
    assert np.linalg.norm(dirs.mean(0)) < 0.5


def test_sampled_views_see_the_scene_upright_and_fill_the_frame(demo):
    for cam in sample_views(demo, n=8, width=64, height=48):
        uv, depth = cam.project(demo.means)
        inside = (depth > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < 64) & (uv[:, 1] >= 0) & (uv[:, 1] < 48)
        assert inside.mean() > 0.97  # the scene point projects inside the image
        span = np.percentile(uv[inside], 99, axis=0) - np.percentile(uv[inside], 1, axis=0)
        assert max(span[0] / 64, span[1] / 48) > 0.6  # and fills most of it
    # y-down scene (COLMAP/Inria): the top of the figure (smallest y) is at the top of view 0.
    cam = sample_views(demo, n=1, width=64, height=48)[0]
    top = demo.means[demo.means[:, 1] < np.percentile(demo.means[:, 1], 5)]
    bottom = demo.means[demo.means[:, 1] > np.percentile(demo.means[:, 1], 95)]
    assert cam.project(top)[0][:, 1].mean() < cam.project(bottom)[0][:, 1].mean()
    # up="+y" turns the picture over.
    flipped = sample_views(demo, n=1, width=64, height=48, up="+y")[0]
    assert flipped.project(top)[0][:, 1].mean() > flipped.project(bottom)[0][:, 1].mean()


def test_outliers_do_not_push_the_cameras_away(demo):
    base = sample_views(demo, n=4)
    sub = demo.subset(np.arange(len(demo)))
    sub.means[:20] = 1000.0  # a few floaters far away
    moved = sample_views(sub, n=4)
    for a, b in zip(base, moved):
        assert np.linalg.norm(a.center - b.center) < 0.05 * np.linalg.norm(a.center)


def test_sample_views_bad_arguments(demo):
    with pytest.raises(InputError, match="up axis"):
        sample_views(demo, up="sideways")
    with pytest.raises(InputError, match="n, width and height"):
        sample_views(demo, n=0)


def test_look_at_puts_the_target_at_the_image_centre():
    view = look_at((1.0, -2.0, -3.0), (0.2, 0.1, 0.4), (0, -1, 0))
    cam = Camera(view, [[50, 0, 32], [0, 50, 24], [0, 0, 1]], 64, 48)
    uv, depth = cam.project(np.array([[0.2, 0.1, 0.4]]))
    assert np.allclose(uv, [[32, 24]]) and depth[0] > 0
    assert np.allclose(view[:3, :3] @ view[:3, :3].T, np.eye(3))
    with pytest.raises(InputError, match="parallel"):
        look_at((0, 0, 0), (0, 1, 0), (0, -1, 0))


# ---- splits and scene views ----------------------------------------------------------------
def test_split_views_holds_out_every_eighth():
    cams = [Camera(np.eye(4), np.eye(3), 1, 1, name=str(i)) for i in range(17)]
    train, held = split_views(cams)
    assert [c.name for c in held] == ["0", "8", "16"]
    assert len(train) == 14 and not {c.name for c in train} & {c.name for c in held}
    with pytest.raises(InputError):
        split_views(cams, every=1)


def test_scene_views_prefers_cameras_json_next_to_the_source(demo, tmp_path):
    ply = tmp_path / "scene.ply"
    sampled = scene_views(demo, ply, n=3, width=32, height=32)
    assert len(sampled) == 3 and sampled[0].width == 32
    own = sample_views(demo, n=12, width=400, height=300)
    save_cameras(own, tmp_path / "cameras.json")
    got = scene_views(demo, ply, n=4, width=200, height=200)
    assert len(got) == 4
    assert (got[0].width, got[0].height) == (200, 150)  # resized, aspect kept
    assert np.allclose(got[0].viewmat, own[0].viewmat) and np.allclose(got[-1].viewmat, own[-1].viewmat)
    assert np.isclose(got[0].K[0, 0], own[0].K[0, 0] / 2)



def test_has_cameras_beside_only_with_a_cameras_json_file_next_to_the_source(demo, tmp_path):
    ply = tmp_path / "scene.ply"
    assert not has_cameras_beside(None) and not has_cameras_beside(ply)
    (tmp_path / "transforms.json").write_text("{}")  # only cameras.json counts beside a file
    assert not has_cameras_beside(ply)
    (tmp_path / "cameras.json").mkdir()  # a folder of that name is no camera file
    assert not has_cameras_beside(ply)
    (tmp_path / "cameras.json").rmdir()
    save_cameras(sample_views(demo, n=2, width=32, height=32), tmp_path / "cameras.json")
    assert has_cameras_beside(ply) and has_cameras_beside(str(ply))
    assert not has_cameras_beside(tmp_path / "elsewhere" / "scene.ply")


# ---- the anchor fit's teacher views --------------------------------------------------------
def test_teacher_views_without_cameras_cover_the_whole_sphere_at_the_encoders_phase(demo, tmp_path):
    from hemgs.cameras import ENCODER_PHASE, UP_AXES, robust_bounds, sphere_views
    from hemgs.fit import FitConfig, teacher_views

    cfg = FitConfig(views=16, width=48, height=32)
    for source in (None, tmp_path / "scene.ply"):
        train, test = teacher_views(demo, source, cfg)
        cams = [*test[:1], *train[:7], *test[1:], *train[7:]]  # every 8th held out, from the first
        assert (len(train), len(test)) == (14, 2)
        assert all((c.width, c.height) == (48, 32) for c in cams)
        ref = sphere_views(demo, n=16, width=48, height=32, phase=ENCODER_PHASE)
        assert all(np.allclose(a.viewmat, b.viewmat) and np.allclose(a.K, b.K) for a, b in zip(cams, ref))
        # Both hemispheres: from well below the scene's centre along the up axis as from above
        # (the sampled orbit of scene_views stays within -20..65 degrees).
        lo, hi = robust_bounds(demo.means)
        centre = (lo + hi) / 2
        dirs = np.array([(c.center - centre) / np.linalg.norm(c.center - centre) for c in cams])
        elev = np.degrees(np.arcsin(dirs @ np.asarray(UP_AXES["-y"], float)))
        assert elev.min() < -45 and elev.max() > 45
        assert (elev < 0).sum() >= 6 and (elev > 0).sum() >= 6


def test_teacher_views_use_the_scenes_own_cameras_json(demo, tmp_path):
    from hemgs.fit import FitConfig, teacher_views

    own = sample_views(demo, n=16, width=64, height=48, seed=2)
    save_cameras(own, tmp_path / "cameras.json")
    train, test = teacher_views(demo, tmp_path / "scene.ply", FitConfig(views=16, width=64))
    assert [c.name for c in test] == [own[0].name, own[8].name]
    assert [c.name for c in train] == [c.name for i, c in enumerate(own) if i % 8]
    for got, want in zip([*test[:1], *train[:7], *test[1:], *train[7:]], own):
        assert np.allclose(got.viewmat, want.viewmat) and np.allclose(got.K, want.K)
        assert (got.width, got.height) == (64, 48)  # their own aspect, not the square default
    # More cameras than cfg.views: that many of them, evenly spaced.
    train, test = teacher_views(demo, tmp_path / "scene.ply", FitConfig(views=8, width=64))
    assert len(train) + len(test) == 8 and {c.name for c in train + test} <= {c.name for c in own}


def test_a_scene_without_extent_is_seen_whole():
    """One Gaussian: the views must stand back by its size, not sit on it (the frame was black)."""
    from hemgs.render import render
    from hemgs.scene import GaussianScene

    s = GaussianScene(np.zeros((1, 3)), [[1, 0, 0, 0]], np.log(np.full((1, 3), 0.1)), [3.0], np.ones((1, 1, 3)))
    for cam in sample_views(s, n=3, width=64, height=64):
        img = render(s, cam)
        covered = (img.max(axis=2) > 0.05).mean()
        assert 0.05 < covered < 0.9, covered


def test_sphere_views_cover_every_direction_and_the_two_sets_share_none(demo):
    from hemgs.cameras import (ENCODER_PHASE, EVAL_PHASE, SPHERE_DISTANCE, UP_AXES, evaluation_views,
                               robust_bounds, sphere_views)

    lo, hi = robust_bounds(demo.means)
    centre, half_diag = (lo + hi) / 2, np.linalg.norm(hi - lo) / 2
    up = np.asarray(UP_AXES["-y"], float)  # the default up axis: world -y points up in 3DGS scenes
    sets = {}
    for phase in (EVAL_PHASE, ENCODER_PHASE):
        cams = sphere_views(demo, n=16, width=64, height=64, phase=phase)
        dirs = np.array([(c.center - centre) / np.linalg.norm(c.center - centre) for c in cams])
        for c in cams:
            assert np.linalg.norm(c.center - centre) == pytest.approx(SPHERE_DISTANCE * half_diag)
            uv, depth = c.project(centre[None])
            assert depth[0] > 0 and np.allclose(uv[0], [32, 32], atol=1e-6)  # each looks at the centre
        elev = np.degrees(np.arcsin(dirs @ up))
        assert elev.max() > 60 and elev.min() < -60  # from high above and from far below
        # every direction of the sphere is within 45 degrees of a camera
        probe = np.random.default_rng(0).normal(size=(2000, 3))
        probe /= np.linalg.norm(probe, axis=1, keepdims=True)
        assert np.degrees(np.arccos(np.clip(probe @ dirs.T, -1, 1)).min(1)).max() < 45
        sets[phase] = dirs
    gap = np.degrees(np.arccos(np.clip(sets[EVAL_PHASE] @ sets[ENCODER_PHASE].T, -1, 1)))
    assert gap.min() > 5  # no evaluation view is one of the encoder's
    assert [c.name for c in evaluation_views(demo, n=4)] == [c.name for c in sphere_views(demo, n=4)]
    with pytest.raises(InputError, match="phase"):
        sphere_views(demo, phase=1.0)


def test_compare_images_reports_the_mean_the_psnr_of_the_mean_mse_and_the_worst_view():
    from hemgs.metrics import compare_images

    ref = [np.full((16, 16, 3), 0.5, np.float32)] * 2
    other = [ref[0] + 0.01, ref[1] + 0.1]  # MSE 1e-4 (40 dB) and 1e-2 (20 dB)
    res = compare_images(ref, other)
    assert res["psnr"] == pytest.approx(30.0, abs=1e-3)
    assert res["worst_psnr"] == pytest.approx(20.0, abs=1e-3)
    assert res["psnr_of_mean_mse"] == pytest.approx(-10 * np.log10((1e-4 + 1e-2) / 2), abs=1e-3)
