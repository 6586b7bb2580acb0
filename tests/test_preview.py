"""Preview baking (hemgs.preview): values against the raw PLY fields, the npz round trip, bad files,
and that it imports without torch (Blender's Python has none)."""

import subprocess
import sys

import numpy as np
import plyfile
import pytest

from conftest import DEMO_PLY, REPO, shared_file
from hemgs.errors import FormatError, InputError
from hemgs.io import ScaffoldAnchors, write_scaffold_ply
from hemgs.preview import (MAX_SIZE_FRACTION, load_preview_npz, preview_file, save_preview, srgb_to_linear)


def _raw(path):
    v = plyfile.PlyData.read(str(path))["vertex"].data
    return {name: np.asarray(v[name], np.float64) for name in v.dtype.names}


def test_preview_of_real_ply_matches_raw_fields():
    raw = _raw(DEMO_PLY)
    p = preview_file(DEMO_PLY)
    assert len(p) == len(raw["x"]) == 31000
    np.testing.assert_allclose(p.positions, np.stack([raw["x"], raw["y"], raw["z"]], 1), rtol=0, atol=1e-6)
    dc = np.stack([raw[f"f_dc_{i}"] for i in range(3)], 1)
    np.testing.assert_allclose(p.colors, np.clip(0.28209479177387814 * dc + 0.5, 0, 1), atol=1e-5)
    np.testing.assert_allclose(p.opacities, 1 / (1 + np.exp(-raw["opacity"])), atol=1e-5)
    sig = np.exp(np.stack([raw[f"scale_{i}"] for i in range(3)], 1))
    cap = MAX_SIZE_FRACTION * np.linalg.norm(np.diff(np.percentile(p.positions, [1, 99], axis=0), axis=0))
    np.testing.assert_allclose(p.sizes, np.minimum(2 * np.sort(sig, 1)[:, 1], cap), rtol=1e-5)
    assert (p.sizes > 0).all() and p.meta["kind"] == "gaussians"


def test_rgba_linear_is_srgb_decoded_colour_with_opacity_alpha():
    p = preview_file(DEMO_PLY)
    rgba = p.rgba_linear()
    assert rgba.shape == (len(p), 4) and rgba.dtype == np.float32
    np.testing.assert_allclose(rgba[:, 3], p.opacities)
    # Known points of the sRGB curve: 0 -> 0, 1 -> 1, 0.5 -> 0.214 (IEC 61966-2-1).
    np.testing.assert_allclose(srgb_to_linear(np.array([0.0, 0.5, 1.0])), [0.0, 0.21404, 1.0], atol=1e-4)


def test_spz_preview_has_every_splat():
    p = preview_file(shared_file("biker.spz"))
    assert len(p) == 152746
    assert np.isfinite(p.positions).all() and (p.colors >= 0).all() and (p.colors <= 1).all()
    assert np.ptp(p.positions[:, 1]) > 2.5  # the upright biker, ~3.2 units tall (data README)


def test_scaffold_anchors_preview(tmp_path):
    rng = np.random.default_rng(0)
    n = 50
    anchors = ScaffoldAnchors(rng.normal(size=(n, 3)), rng.normal(size=(n, 32)), rng.normal(size=(n, 10, 3)),
                              np.log(np.full((n, 6), 0.01)))
    path = tmp_path / "anchors.ply"
    write_scaffold_ply(anchors, path)
    p = preview_file(path)
    assert len(p) == n and p.meta["kind"] == "anchors"
    assert p.log_scales is None and p.quats is None and p.sh is None  # anchors have no Gaussians of their own
    np.testing.assert_allclose(p.positions, anchors.xyz)
    np.testing.assert_allclose(p.sizes, 0.02, rtol=1e-5)  # 2 x exp(log 0.01), below the cap


def test_npz_round_trip_and_bad_files(tmp_path):
    p = preview_file(DEMO_PLY)
    out = tmp_path / "p.npz"
    save_preview(p, out)
    q = load_preview_npz(out)
    for k in ("positions", "colors", "opacities", "sizes", "log_scales", "quats", "sh"):
        np.testing.assert_array_equal(getattr(p, k), getattr(q, k))
    # the scene's own Gaussians travel too, for Blender 5.3's native splats: the file's values
    raw = _raw(DEMO_PLY)
    np.testing.assert_allclose(q.log_scales, np.stack([raw[f"scale_{i}"] for i in range(3)], 1), rtol=1e-6)
    np.testing.assert_allclose(q.sh[:, 0], np.stack([raw[f"f_dc_{i}"] for i in range(3)], 1), rtol=1e-6)
    assert q.quats.shape == (len(q), 4) and q.sh.shape[1] in (1, 4, 9, 16)
    assert [f.name for f in tmp_path.iterdir()] == ["p.npz"]  # no temporary left
    with pytest.raises(FormatError, match="sh"):
        type(p)(p.positions, p.colors, p.opacities, p.sizes, sh=np.zeros((len(p), 5, 3)))

    data = out.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match="cut.npz"):
        load_preview_npz(tmp_path / "cut.npz")
    np.savez(tmp_path / "obj.npz", positions=np.array([{"a": 1}], dtype=object))  # would need unpickling
    with pytest.raises(FormatError, match="obj.npz"):
        load_preview_npz(tmp_path / "obj.npz")
    with pytest.raises(InputError, match="nothere"):
        load_preview_npz(tmp_path / "nothere.npz")
    (tmp_path / "x.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 5\n")
    with pytest.raises(InputError, match="x.ply"):
        preview_file(tmp_path / "x.ply")


def test_preview_imports_and_runs_without_torch():
    code = ("import sys; sys.modules['torch'] = None; sys.modules['gsplat'] = None\n"
            "from hemgs.preview import preview_file\n"
            f"print(len(preview_file({str(DEMO_PLY)!r})))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "31000"


def test_decoded_preview_leaves_out_gaussians_no_renderer_draws():
    from hemgs.pipeline import decode_file

    golden = REPO / "tests" / "golden" / "tiny_direct_skips.hgs"  # 200 of its 300 Gaussians skipped
    scene = decode_file(golden).scene
    p = preview_file(golden)
    visible = scene.opacities >= 1 / 255
    assert len(p) == visible.sum() < len(scene) - 100
    np.testing.assert_allclose(p.positions, scene.means[visible], atol=1e-6)


def test_saturated_values_give_finite_previews(tmp_path):
    import warnings

    from hemgs.io import write_ply
    from hemgs.preview import preview_from_scene
    from hemgs.scene import GaussianScene

    inf = np.inf
    n = 6
    logits = np.array([inf, -inf, 1000, -1000, 0, 2], np.float32)  # opacity 1, 0, 1, 0, 0.5, sigmoid(2)
    log_scales = np.array([[-inf] * 3, [-inf, 0, 0], [100] * 3, [inf] * 3, [-2] * 3, [-3] * 3], np.float32)
    means = np.linspace(0, 1, 3 * n, dtype=np.float32).reshape(n, 3)
    scene = GaussianScene(means, np.tile([1, 0, 0, 0], (n, 1)), log_scales, logits, np.zeros((n, 1, 3)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow, no invalid value
        p = preview_from_scene(scene)
    for name in ("positions", "colors", "opacities", "sizes"):
        assert np.isfinite(getattr(p, name)).all(), name
    np.testing.assert_allclose(p.opacities, [1, 0, 1, 0, 0.5, 1 / (1 + np.exp(-2))], atol=1e-7)
    assert p.sizes[0] == 0 and (p.sizes[1:] > 0).all()
    # Through a file and sanitize (which keeps such Gaussians as finite stand-ins): every one is there.
    path = tmp_path / "saturated.ply"
    write_ply(GaussianScene(means[:2], np.tile([1, 0, 0, 0], (2, 1)), log_scales[:2], logits[:2],
                            np.zeros((2, 1, 3))), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q = preview_file(path)
    assert len(q) == 2 and np.isfinite(q.sizes).all() and np.isfinite(q.opacities).all()
    np.testing.assert_allclose(q.opacities, [1, 0], atol=1e-7)
    assert q.sizes[0] < 1e-9  # all three log-scales -inf: size 0 (the stand-in e^-30)
