import numpy as np
import pytest

from hemgs.errors import SceneError
from hemgs.scene import GaussianScene, sanitize, sh_degree_for


def _scene(n=5, k=4, seed=0):
    rng = np.random.default_rng(seed)
    return GaussianScene(
        rng.normal(size=(n, 3)), rng.normal(size=(n, 4)), rng.normal(size=(n, 3)) - 3,
        rng.normal(size=n), rng.normal(size=(n, k, 3)),
    )


def test_shapes_are_checked_with_the_field_named():
    s = _scene()
    with pytest.raises(SceneError, match="quats"):
        GaussianScene(s.means, s.quats[:, :3], s.log_scales, s.opacity_logits, s.sh)
    with pytest.raises(SceneError, match="degree"):
        GaussianScene(s.means, s.quats, s.log_scales, s.opacity_logits, np.zeros((5, 5, 3)))


def test_sanitize_drops_nonfinite_and_zero_quats_and_normalises():
    s = _scene(n=6)
    s.means[1, 0] = np.nan
    s.sh[2, 3, 1] = np.inf
    s.quats[4] = 0
    out, warns = sanitize(s)
    assert len(out) == 3
    assert np.allclose(np.linalg.norm(out.quats, axis=1), 1, atol=1e-6)
    assert any("NaN/Inf" in w for w in warns) and any("zero quaternion" in w for w in warns)
    np.testing.assert_array_equal(out.means, s.means[[0, 3, 5]])


def test_sanitize_keeps_a_clean_scene_untouched():
    s = _scene()
    s = GaussianScene(s.means, s.quats / np.linalg.norm(s.quats, axis=1, keepdims=True),
                      s.log_scales, s.opacity_logits, s.sh)
    out, warns = sanitize(s)
    assert warns == []
    np.testing.assert_array_equal(out.means, s.means)


def test_empty_scene_and_degrees():
    s = _scene(n=0)
    assert len(s) == 0 and s.summary()["gaussians"] == 0
    assert [sh_degree_for(k) for k in (1, 4, 9, 16)] == [0, 1, 2, 3]
    assert _scene(k=16).with_sh_degree(1).sh.shape == (5, 4, 3)
