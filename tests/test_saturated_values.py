"""Saturated values are valid data: ±inf opacity logits (opacity 1 and 0) and -inf log-scales (size 0),
as compressed-PLY and SOG decoders write them, are kept through every path and render as the source.

The fixture is a real patch of the demo scene written as a PLY that holds each case: its most opaque
Gaussians at +inf (as a decoder writes opacity 1.0), some faint ones at -inf, some zero-size axes, a
huge finite logit, and one NaN (broken data, the one Gaussian dropped)."""

import numpy as np
import pytest

from conftest import DEMO_PLY
from hemgs.cameras import sample_views
from hemgs.cli import main
from hemgs.io import load_scene, write_ply
from hemgs.metrics import psnr
from hemgs.render import render
from hemgs.scene import SATURATED_LOGIT, ZERO_LOG_SCALE, GaussianScene, sanitize

N = 1500
NAN_ROW = 7


def _patch() -> GaussianScene:
    scene, _ = sanitize(load_scene(DEMO_PLY))
    centre = np.median(scene.means, axis=0)
    keep = np.sort(np.argsort(((scene.means - centre) ** 2).sum(1))[:N])
    return scene.subset(keep)


@pytest.fixture(scope="module")
def cases():
    s = _patch()
    o = s.opacity_logits.copy()
    ls = s.log_scales.copy()
    by_opacity = np.argsort(o, kind="stable")
    opaque, faint = by_opacity[-60:], by_opacity[:30]
    o[opaque] = np.inf
    o[faint] = -np.inf
    o[by_opacity[-61]] = 1e30  # finite, but as saturated as +inf
    zero_size = np.arange(100, 1500, 50)
    ls[zero_size, 0] = -np.inf  # flat: one axis of zero size
    ls[zero_size[:5]] = -np.inf  # all three axes: a point, drawn by the renderers' blur alone
    sh = s.sh.copy()
    sh[NAN_ROW, 0, 1] = np.nan
    raw = GaussianScene(s.means, s.quats, ls, o, sh)
    return {"raw": raw, "opaque": opaque, "faint": faint, "zero_size": zero_size}


@pytest.fixture(scope="module")
def ply(cases, tmp_path_factory):
    path = tmp_path_factory.mktemp("saturated") / "saturated.ply"
    write_ply(cases["raw"], path)
    return path


def _without_nan(a: np.ndarray) -> np.ndarray:
    return np.delete(a, NAN_ROW, axis=0)


@pytest.fixture(scope="module")
def views(cases):
    return sample_views(sanitize(cases["raw"])[0], n=4, width=96, height=96)


def test_the_reader_keeps_them_and_sanitize_drops_only_the_nan(cases, ply):
    raw = load_scene(ply)
    assert np.isposinf(raw.opacity_logits).sum() == 60 and np.isneginf(raw.opacity_logits).sum() == 30
    assert np.isneginf(raw.log_scales).any(1).sum() == len(cases["zero_size"])
    clean, warnings = sanitize(raw)
    assert warnings == ["dropped 1 of 1500 Gaussians with NaN/Inf attributes"]
    assert len(clean) == N - 1
    for f in ("means", "quats", "log_scales", "opacity_logits", "sh"):
        assert np.isfinite(getattr(clean, f)).all(), f
    # count and order kept; saturated values at their finite stand-ins, the rest bit for bit
    np.testing.assert_array_equal(clean.means, _without_nan(raw.means))
    want_o = np.clip(_without_nan(raw.opacity_logits), -SATURATED_LOGIT, SATURATED_LOGIT)
    np.testing.assert_array_equal(clean.opacity_logits, want_o)
    np.testing.assert_array_equal(clean.log_scales, np.maximum(_without_nan(raw.log_scales), ZERO_LOG_SCALE))
    assert (clean.opacities[np.isposinf(_without_nan(raw.opacity_logits))] == 1.0).all()  # opacity 1 exactly


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tiles", "dense"])
def test_the_raw_and_the_sanitized_scene_render_the_same(cases, views, backend):
    """Every renderer draws the infinities themselves, and the finite stand-ins the same way."""
    keep = np.arange(N) != NAN_ROW
    raw = cases["raw"].subset(keep)
    clean, _ = sanitize(raw)
    without = raw.subset(~np.isposinf(raw.opacity_logits))  # what dropping them used to give
    for cam in views[:2]:
        a = render(raw, cam, backend=backend)
        b = render(clean, cam, backend=backend)
        assert np.isfinite(a).all()
        assert np.abs(a - b).max() <= 1e-6
        assert np.abs(a - render(without, cam, backend=backend)).max() > 0.05  # and they show


@pytest.mark.slow
def test_direct_mode_codes_them_and_decodes_opacity_one(cases, ply, views, tmp_path, capsys):
    out = tmp_path / "s.hgs"
    rc = main(["compress", str(ply), "-o", str(out), "--mode", "direct", "--lambda", str(1 / 64), "--iters", "40"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "dropped 1 of 1500" in err  # the NaN row only
    from hemgs.pipeline import decode_file

    decoded = decode_file(out)
    clean, _ = sanitize(cases["raw"])
    assert len(decoded.scene) == len(clean)
    # (direct mode stores Gaussians in its coding order: compared through the renders)
    ref = [render(clean, cam) for cam in views]
    got = [render(decoded.scene, cam) for cam in views]
    assert min(psnr(r, g) for r, g in zip(ref, got)) > 45.0
    # the saturated Gaussians decode fully opaque: opacity 1, or within the 1/255 of α's clamp
    assert (decoded.scene.opacities > 0.999).sum() >= 60


def test_anchor_teacher_and_spz_take_them(cases, ply, tmp_path, capsys):
    from hemgs.anchor.warm_start import build_anchor_model, warm_start

    clean, _ = sanitize(load_scene(ply))
    model = build_anchor_model(clean)
    res = warm_start(model, clean, steps=3)
    assert all(np.isfinite(v).all() for v in res.losses.values())
    # converting to SPZ quantizes them (opacity byte 255 and 0, the smallest scale), no refusal
    rc = main(["convert", str(ply), str(tmp_path / "s.spz")])
    assert rc == 0, capsys.readouterr().err
    spz = load_scene(tmp_path / "s.spz")
    assert len(spz) == N - 1 and (spz.opacities[np.isposinf(_without_nan(cases["raw"].opacity_logits))] > 0.99).all()
