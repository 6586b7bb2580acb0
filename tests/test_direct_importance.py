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
