"""Anchor-free mode (hemgs.direct): exact round trips at several λ, chunk sizes and every switch
combination; size falls with λ; rotations survive any quaternion sign or length, and the 24
equivalent (rotation, scale order) pairs of a Gaussian code alike; SH degrees 0-3,
empty and single-Gaussian scenes; corrupt or lying files are refused by name."""

import numpy as np
import pytest

from conftest import DEMO_PLY
from hemgs.direct import DirectConfig, DirectFitConfig, decode, encode, fit_direct
from hemgs.direct.attributes import (CUBE_GROUP, CUBE_PERMS, canonical_orientation, quat_to_rotvec, rotvec_to_quat,
                                     swing_twist_to_quat)
from hemgs.errors import FormatError, HemgsError
from hemgs.io import load_scene
from hemgs.scene import GaussianScene, sanitize

pytestmark = pytest.mark.slow  # fits and codecs on real patches: `make test-fast` leaves them out

FIELDS = ("means", "quats", "log_scales", "opacity_logits", "sh")
FAST = DirectFitConfig(iters=6, rows=1024)


def tiny_scene(n: int = 1200) -> GaussianScene:
    """The n Gaussians of the demo scene nearest to its centre: a compact real patch."""
    scene, _ = sanitize(load_scene(DEMO_PLY))
    centre = np.median(scene.means, axis=0)
    keep = np.argsort(((scene.means - centre) ** 2).sum(1))[:n]
    return scene.subset(np.sort(keep))


@pytest.fixture(scope="module")
def scene():
    return tiny_scene()


ALL_ON = {"scene_agnostic": True, "ar": True, "acs": True, "variable_rate": True}


@pytest.fixture(scope="module")
def fitted(scene):
    """Every part on (the defaults switch the prior and the context off): the most code paths."""
    return fit_direct(scene, DirectConfig(**ALL_ON), DirectFitConfig(iters=30, rows=1024))


def same(a: GaussianScene, b: GaussianScene) -> bool:
    return all(np.array_equal(getattr(a, f), getattr(b, f)) for f in FIELDS)


def test_round_trip_exact_at_several_lambdas_and_chunks(fitted):
    for lam in (0.0625, 1.0, 16.0):
        header, sections, enc = encode(fitted, lam=lam, chunk=256)
        assert same(enc.scene, decode(header, sections, chunk=97).scene)
        assert same(enc.scene, decode(header, sections).scene)


def test_size_falls_with_lambda_and_error_grows(fitted, scene):
    sizes, errors = [], []
    order = fitted.prep.layout.order
    for lam in (1 / 16, 1 / 4, 1.0, 4.0, 16.0):
        _, sections, enc = encode(fitted, lam=lam)
        sizes.append(sum(len(v) for v in sections.values()))
        errors.append(float(np.abs(enc.scene.sh[:, 0] - scene.sh[order, 0]).mean()))
    assert all(b < 0.97 * a for a, b in zip(sizes, sizes[1:])), sizes  # each 4x λ: -8..-11% on every kernel set
    assert all(a < b for a, b in zip(errors, errors[1:])), errors


def test_decoded_scene_is_close_to_the_source(fitted, scene):
    _, _, enc = encode(fitted, lam=1 / 16)
    src = scene.subset(fitted.prep.layout.order)
    assert len(enc.scene) == len(scene)
    span = fitted.prep.frame.span
    assert np.abs(enc.scene.means - src.means).max() < 0.01 * span
    assert np.abs(enc.scene.sh[:, 0] - src.sh[:, 0]).mean() < 0.02


@pytest.mark.parametrize("switches", [{}, {"scene_agnostic": True}, {"ar": True}, {"ar": True, "acs": False},
                                      {"variable_rate": False},
                                      {"scene_agnostic": False, "ar": False, "acs": False, "variable_rate": False}])
def test_every_switch_decodes_exactly(scene, switches):
    f = fit_direct(scene.subset(slice(0, 600)), DirectConfig(**switches), FAST)
    header, sections, enc = encode(f, lam=1.0)
    assert header["direct"]["ar"] == switches.get("ar", DirectConfig().ar)
    assert same(enc.scene, decode(header, sections).scene)


def test_quaternion_sign_and_length_do_not_matter():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(500, 4))
    unit = q / np.linalg.norm(q, axis=1, keepdims=True)
    back = rotvec_to_quat(quat_to_rotvec(q * rng.uniform(0.1, 5, size=(500, 1))))
    # the same rotation up to sign
    assert np.allclose(np.abs((back * unit).sum(1)), 1.0, atol=1e-12)
    assert np.allclose(quat_to_rotvec(unit), quat_to_rotvec(-unit))
    assert np.allclose(quat_to_rotvec(np.array([[1.0, 0, 0, 0]])), 0.0)


def test_swing_twist_round_trip_and_its_errors_fall_on_the_gaussians_own_axes():
    from scipy.spatial.transform import Rotation

    from hemgs.direct.attributes import quat_to_swing_twist, swing_target

    rng = np.random.default_rng(3)
    q, s = canonical_orientation(rng.normal(size=(3000, 4)), rng.normal(size=(3000, 3)))
    v = quat_to_swing_twist(q)
    # the covariances come back; the twist lies in (-π/2, π/2], the swing within π/2
    assert np.allclose(_covariances(swing_twist_to_quat(v), s), _covariances(q, s), rtol=1e-9, atol=1e-12)
    assert (np.abs(v[:, 0]) <= np.pi / 2 + 1e-12).all() and (np.linalg.norm(v[:, 1:], axis=1) <= np.pi / 2 + 1e-12).all()
    assert (swing_twist_to_quat(v)[:, 0] >= 0).all()
    assert quat_to_swing_twist(np.zeros((0, 4))).shape == (0, 3) and swing_twist_to_quat(np.zeros((0, 3))).shape == (0, 4)
    # a twist rounded by up to 0.2 rad, with the swing coded against it: the error is about z only
    ref = Rotation.from_quat(swing_twist_to_quat(v)[:, [1, 2, 3, 0]])  # q or one of its equivalents
    theta_hat = v[:, 0] + rng.uniform(-0.2, 0.2, len(v))
    t = swing_target(v, theta_hat)
    t[:, 0] = theta_hat
    body = (ref.inv() * Rotation.from_quat(swing_twist_to_quat(t)[:, [1, 2, 3, 0]])).as_rotvec()
    assert np.abs(body[:, :2]).max() < 1e-9 and np.allclose(np.abs(body[:, 2]), np.abs(theta_hat - v[:, 0]))
    # a small error in u0 (u1) is mostly an error about the Gaussian's x (y) axis
    for c in (1, 2):
        d = v.copy()
        d[:, c] += 1e-5
        body = (ref.inv() * Rotation.from_quat(swing_twist_to_quat(d)[:, [1, 2, 3, 0]])).as_rotvec()
        assert np.median(np.abs(body[:, c - 1])) > 0.9e-5 and np.median(np.abs(body[:, 2 - c])) < 0.1e-5


def test_the_twist_is_coded_as_its_representative_nearest_the_prediction():
    """θ and θ + π are the same Gaussian: the encoder codes the one nearest the predicted twist
    (and the fit learns on it), with the swing re-expressed, and the decoded covariance is the
    source's whatever the choice."""
    from types import SimpleNamespace

    from hemgs.direct.attributes import quat_to_swing_twist, twist_nearest
    from hemgs.direct.stages import _round_stage
    from hemgs.direct.fit import _twist_near_mean

    rng = np.random.default_rng(5)
    q, s = canonical_orientation(rng.normal(size=(2000, 4)), rng.normal(size=(2000, 3)))
    v = quat_to_swing_twist(q)
    pred = rng.uniform(-3.0, 3.0, 2000)  # predicted twists anywhere, even beyond (-π/2, π/2]
    near, j = twist_nearest(v[:, 0], pred)
    assert (np.abs(near - pred) <= np.pi / 2 + 1e-12).all() and np.allclose(near, v[:, 0] - j * np.pi)
    st = SimpleNamespace(family="gaussian", shifted=True)
    mean = np.stack([pred, np.zeros(2000), np.zeros(2000)], 1)
    step = np.full((2000, 3), 0.01)
    x, _ = _round_stage("rotation", st, v, mean, np.ones((2000, 3)), step, None, 1.0, True)
    assert (np.abs(x[:, 0] - pred) <= np.pi / 2 + 0.006).all()  # within a half step of the nearest
    assert (np.abs(x[:, 0] - v[:, 0]) > 1.0).sum() > 500  # many moved by π
    dec = _covariances(swing_twist_to_quat(x), s)
    assert np.abs(dec - _covariances(q, s)).max() < 0.05 * np.abs(_covariances(q, s)).max()
    # the fit's view of the same choice: twist moved by jπ, the swing turned with it
    import torch

    t = _twist_near_mean(torch.as_tensor(v), torch.as_tensor(mean)).numpy()
    assert np.allclose(t[:, 0], near) and np.allclose(t[:, 1:], v[:, 1:] * np.where(j % 2, -1.0, 1.0)[:, None])
    assert np.allclose(_covariances(swing_twist_to_quat(t), s), _covariances(q, s), rtol=1e-9, atol=1e-12)


def test_colours_are_coded_luma_first_then_chroma_given_it(fitted, monkeypatch):
    """Chained stages (DC, SH): two streams a group, the chroma's distribution computed from the
    luma as decoded; a decoder that gets other luma values gets other chroma distributions (and
    fails loudly on its checksums rather than decoding garbage)."""
    from hemgs.codec import streams
    from hemgs.codec.layout import read_part
    from hemgs.direct.model import chain_parts

    assert chain_parts("dc", 3) == ([0], [1, 2]) and chain_parts("scale", 3) is None
    first, rest = chain_parts("sh", 24)
    assert first == [0, 3, 6, 9, 12, 15, 18, 21] and len(rest) == 16
    header, sections, enc = encode(fitted, lam=0.5)
    groups = fitted.prep.n_groups
    for stage in ("dc", "sh"):
        assert len(read_part(sections[stage], stage, 2 * groups)[1]) == 2 * groups
    assert len(read_part(sections["opacity"], "opacity", groups)[1]) == groups
    assert same(decode(header, sections).scene, enc.scene)
    real = streams.decode_values

    def shifted_luma(rest_, mean, scale, q, name, *a):
        v = real(rest_, mean, scale, q, name, *a)
        return v + 0.5 * q if name.startswith("dc (first") else v  # the luma decoded off by half a step

    monkeypatch.setattr(streams, "decode_values", shifted_luma)
    with pytest.raises(HemgsError, match="dc \\(rest part"):
        decode(header, sections)


def test_the_encoders_scale_weights_by_rank_are_its_own(fitted, monkeypatch):
    """The encoder codes the log-scales with weights corrected by rank (the fit, its rounding and
    the balance); the decoder's steps do not depend on that correction."""
    import torch

    from hemgs.direct import attributes

    vals = {k: torch.as_tensor(v) for k, v in fitted.values.items()}
    args = (vals, 0.0, True, True)
    diff = attributes.coding_log_weights("scale", *args) - attributes.render_log_weights("scale", *args)
    assert torch.allclose(diff, torch.as_tensor(attributes.SCALE_RANK_CODING, dtype=diff.dtype).expand_as(diff))
    for stage in ("opacity", "rotation", "position", "dc", "sh"):
        assert torch.equal(attributes.coding_log_weights(stage, *args), attributes.render_log_weights(stage, *args))
    # unsorted scales: no ranks, no correction
    assert torch.equal(attributes.coding_log_weights("scale", vals, 0.0, False, True),
                       attributes.render_log_weights("scale", vals, 0.0, False, True))
    header, sections, enc = encode(fitted, lam=1.0)
    monkeypatch.setattr(attributes, "SCALE_RANK_CODING", (5.0, -5.0, 0.0))
    assert same(decode(header, sections).scene, enc.scene)


def test_flipped_and_scaled_quaternions_decode_to_the_same_scene(scene):
    small = scene.subset(slice(0, 400))
    flipped = GaussianScene(small.means, -3.0 * small.quats, small.log_scales, small.opacity_logits, small.sh)
    fa, fb = fit_direct(small, DirectConfig(), FAST), fit_direct(flipped, DirectConfig(), FAST)
    # the same coded rotations, but where float32 noise takes a twist across ±π/2 (the same
    # rotation then: the two ends are one Gaussian)
    same_rows = np.abs(fa.values["rotation"] - fb.values["rotation"]).max(1) < 1e-6
    assert same_rows.mean() > 0.98
    assert np.allclose(np.abs(fa.values["rotation"][~same_rows, 0]), np.pi / 2, atol=1e-6)
    # one model codes both: the same file, but where float noise in the renders that weigh the
    # values moved a rare one across a rounding boundary
    from dataclasses import replace

    # (without the stage balance: its renders of the two would differ by float noise too)
    (ha, sa, ea), (hb, sb, eb) = (encode(fa, lam=1.0, balance=False),
                                  encode(replace(fa, values=fb.values), lam=1.0, balance=False))
    diff = np.abs(ea.scene.quats - eb.scene.quats).max(axis=1)
    assert (diff == 0).mean() > 0.98
    cov_a, cov_b = (_covariances(e.scene.quats, e.scene.log_scales) for e in (ea, eb))
    size = np.abs(cov_a).max(axis=(1, 2))
    assert (np.abs(cov_a - cov_b).max(axis=(1, 2)) < 0.1 * size).all()
    assert sa["rotation"] == sb["rotation"] or (diff == 0).mean() < 1


def _covariances(quats, log_scales):
    from scipy.spatial.transform import Rotation

    r = Rotation.from_quat(np.asarray(quats, np.float64)[:, [1, 2, 3, 0]]).as_matrix()
    m = r * np.exp(np.asarray(log_scales, np.float64))[:, None, :]
    return m @ m.transpose(0, 2, 1)


def _equivalent(quats, log_scales, rng):
    """Each Gaussian rewritten with a random one of its 24 equivalent (rotation, scale order) pairs."""
    from scipy.spatial.transform import Rotation

    g = rng.integers(0, 24, size=len(quats))
    r = Rotation.from_quat(np.asarray(quats, np.float64)[:, [1, 2, 3, 0]]).as_matrix() @ CUBE_GROUP[g]
    xyzw = Rotation.from_matrix(r).as_quat() * rng.choice([-1.0, 1.0], size=(len(quats), 1))
    return xyzw[:, [3, 0, 1, 2]], np.take_along_axis(np.asarray(log_scales, np.float64), CUBE_PERMS[g], axis=1)


@pytest.mark.parametrize("sort_scales", [True, False])
def test_canonical_orientation_keeps_covariances_and_takes_the_smallest_angle(sort_scales):
    rng = np.random.default_rng(1)
    q, s = rng.normal(size=(2000, 4)), rng.normal(size=(2000, 3))
    cq, cs = canonical_orientation(q, s, sort_scales)
    assert np.allclose(_covariances(cq, cs), _covariances(q, s), rtol=1e-9, atol=1e-12)
    angles = np.linalg.norm(quat_to_rotvec(cq), axis=1)
    assert angles.max() <= np.radians(120.0 if sort_scales else 62.8) and (cq[:, 0] >= 0).all()
    if sort_scales:
        assert (np.diff(cs, axis=1) >= 0).all()
    else:
        assert angles.max() > np.radians(55)  # (the bound is reached)
    # every one of the 24 equivalent pairs gives the same canonical form
    for k in range(24):
        eq, es = canonical_orientation(*_equivalent(q, s, np.random.default_rng(k)), sort_scales)
        assert np.allclose(np.linalg.norm(quat_to_rotvec(eq), axis=1), angles, atol=1e-9)
        assert np.allclose(es, cs, atol=1e-12)
    e0, e1 = canonical_orientation(np.zeros((0, 4)), np.zeros((0, 3)), sort_scales)
    assert e0.shape == (0, 4) and e1.shape == (0, 3)


def test_equivalent_orientations_code_alike_and_decode_to_the_same_covariances(scene):
    small = scene.subset(slice(0, 400))
    q, s = _equivalent(small.quats, small.log_scales, np.random.default_rng(2))
    other = GaussianScene(small.means, q, s, small.opacity_logits, small.sh)
    fa, fb = fit_direct(small, DirectConfig(), FAST), fit_direct(other, DirectConfig(), FAST)
    # the same coded values, but where two of the 24 pairs tie in angle (float noise picks one):
    # those are still the same ellipsoid
    same_rows = (np.abs(fa.values["rotation"] - fb.values["rotation"]).max(1) < 1e-5) & (
        np.abs(fa.values["scale"] - fb.values["scale"]).max(1) < 1e-5)
    assert same_rows.mean() > 0.98, same_rows.mean()
    cov_a = _covariances(swing_twist_to_quat(fa.values["rotation"]), fa.values["scale"])
    cov_b = _covariances(swing_twist_to_quat(fb.values["rotation"]), fb.values["scale"])
    size = np.abs(cov_a).max(axis=(1, 2))
    assert (np.abs(cov_a - cov_b).max(axis=(1, 2)) <= 1e-5 * size).all()  # float32 input noise
    dec = encode(fa, lam=1 / 16)[2].scene
    src = small.subset(fa.prep.layout.order)
    c_dec, c_src = _covariances(dec.quats, dec.log_scales), _covariances(src.quats, src.log_scales)
    size = np.exp(src.log_scales.astype(np.float64)).max(1) ** 2
    assert np.median(np.abs(c_dec - c_src).max(axis=(1, 2)) / size) < 0.05


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_sh_degrees(scene, degree):
    small = scene.subset(slice(0, 400)).with_sh_degree(degree)
    f = fit_direct(small, DirectConfig(), FAST)
    header, sections, enc = encode(f, lam=1.0)
    dec = decode(header, sections).scene
    assert dec.sh_degree == degree and same(enc.scene, dec)
    assert ("sh" in sections) == (degree > 0)


@pytest.mark.parametrize("n", [0, 1, 2])
def test_empty_and_tiny_scenes(scene, n):
    small = scene.subset(slice(0, n))
    f = fit_direct(small, DirectConfig(), FAST)
    header, sections, enc = encode(f, lam=1.0)
    dec = decode(header, sections).scene
    assert len(dec) == n and same(enc.scene, dec)
    if n:
        assert np.abs(dec.means - small.means[f.prep.layout.order]).max() < 0.01 * max(f.prep.frame.span, 1e-3)


def test_corrupt_and_lying_files_are_refused(fitted):
    header, sections, _ = encode(fitted, lam=1.0)
    for name in ("dc", "scale", "counts", "locations"):
        bad = dict(sections)
        data = bytearray(bad[name])
        data[len(data) // 2] ^= 0x55
        bad[name] = bytes(data)
        with pytest.raises(HemgsError):
            decode(header, bad)
    with pytest.raises(FormatError, match="impossible|cannot fit|says"):
        decode({**header, "gaussians": 10**9}, sections)
    with pytest.raises(FormatError, match="lacks its 'sh'"):
        decode(header, {k: v for k, v in sections.items() if k != "sh"})
    with pytest.raises(FormatError, match="malformed"):
        decode({**header, "span": float("nan")}, sections)
    with pytest.raises(HemgsError, match="scene-agnostic|weights"):
        decode({**header, "scene_agnostic": "0123456789abcdef"}, sections)
    with pytest.raises(FormatError, match="layout"):
        decode({**header, "networks": "int3"}, sections)
    with pytest.raises(FormatError, match="network weights"):
        decode(header, {**sections, "networks": sections["networks"][:50]})
    for bad_cfg, what in (({"laplace": ["bogus"]}, "laplace"), ({"laplace": "sh"}, "laplace"),
                          ({"shifted": "yes"}, "shifted"), ({"scale_ranks": 1}, "scale_ranks"),
                          ({"uniform": ["sh"]}, "uniform"), ({"uniform": "position"}, "uniform"),
                          ({"uniform": ["position"], "laplace": ["position"]}, "uniform"), ({"chain": "yes"}, "chain")):
        with pytest.raises(FormatError, match=what):
            decode({**header, "direct": {**header["direct"], **bad_cfg}}, sections)


def test_symbol_distribution_and_grid_are_named_in_the_file_and_a_decoder_follows_them(fitted):
    header, sections, enc = encode(fitted, lam=1.0)
    assert header["direct"]["laplace"] == ["sh"] and header["direct"]["shifted"] is True
    assert header["direct"]["uniform"] == ["position"] and header["direct"]["chain"] is True
    # (the coded scales are in ascending order; coarse steps may reorder decoded ones, harmlessly)
    assert header["direct"]["scale_ranks"] is True and (np.diff(fitted.values["scale"], axis=1) >= 0).all()
    # decoding with the other choices (as a file without these fields says) does not give this scene
    for other in ({"laplace": []}, {"shifted": False}, {"scale_ranks": False}, {"uniform": []}, {"chain": False}):
        try:
            assert not same(decode({**header, "direct": {**header["direct"], **other}}, sections).scene, enc.scene)
        except HemgsError:
            pass


def test_position_residuals_are_coded_uniformly_inside_their_voxel(fitted, monkeypatch):
    """Every position residual decodes inside its voxel (to within half a step) and costs log2 of
    the steps there, whatever its value."""
    from hemgs.codec import streams

    seen = []
    real = streams.encode_values

    def spy(values, mean, scale, q, guard, family="gaussian", shifted=False, half_range=None):
        data, dec = real(values, mean, scale, q, guard, family, shifted, half_range)
        seen.append((family, half_range, q, dec))
        return data, dec

    monkeypatch.setattr(streams, "encode_values", spy)
    _, sections, enc = encode(fitted, lam=1.0, balance=False)  # one coding pass
    coded = [r for r in seen if r[0] == "uniform"]
    h = fitted.prep.frame.residual_half
    assert coded and all(r[1] == h for r in coded)
    assert sum(r[3].size for r in coded) == 3 * int((enc.values["importance"][:, 0] >= 0.5).sum())
    for _, _, q, dec in coded:
        assert (np.abs(dec) <= h + 0.5 * q * (1 + 1e-12)).all()
    ideal = sum(np.log2(2 * h / q + 1).sum() for _, _, q, _ in coded) / 8
    assert 0.95 * ideal < len(sections["position"]) < 1.02 * ideal + 100 * len(coded)


def test_gaussians_the_encoder_skips_decode_transparent_and_exactly(fitted):
    from hemgs.direct.codec import SKIP_LOGIT, skip_decisions

    imp = fitted.skip_importance()  # each Gaussian's best view (DirectFitted.peak)
    counts = [int(skip_decisions(imp, lam).sum()) for lam in (1 / 64, 16.0, 256.0, 4096.0)]
    assert counts == sorted(counts) and counts[-1] > counts[0], counts  # more are left out as λ grows
    lam = 4096.0  # beyond the CLI's range: this compact patch of the demo has few faint Gaussians
    skipped = skip_decisions(imp, lam)
    assert 0 < skipped.sum() < skipped.size
    header, sections, enc = encode(fitted, lam=lam)
    assert header["skips"] is True
    assert np.all(enc.scene.opacity_logits[skipped] == SKIP_LOGIT)
    assert not np.any(enc.scene.opacity_logits[~skipped] == SKIP_LOGIT)
    assert len(enc.scene) == len(imp)  # the count and order of the source's Gaussians are kept
    assert same(enc.scene, decode(header, sections, chunk=97).scene)
    # without the encoder's RD decisions nothing is skipped and the file is larger
    h2, s2, enc2 = encode(fitted, lam=lam, rdoq=False)
    assert h2["skips"] is False and not np.any(enc2.scene.opacity_logits == SKIP_LOGIT)
    assert sum(map(len, s2.values())) > sum(map(len, sections.values()))
    # files from before skipping (format 1, no "skips" key) decode as they were made
    from hemgs.codec.registry import decode as decode_any

    del h2["skips"]
    h2.pop("format")
    assert same(enc2.scene, decode_any(h2, s2).scene)
    with pytest.raises(FormatError, match="skips"):
        decode({**header, "skips": "yes"}, sections)


def _shared_pairs(sh_src: np.ndarray, sh_dec: np.ndarray) -> tuple[int, int]:
    """(pairs of Gaussians with the same source SH rows, how many of them decode to the same rows)."""
    src = sh_src[:, 1:].reshape(len(sh_src), -1)
    dec = sh_dec[:, 1:].reshape(len(sh_dec), -1)
    _, group = np.unique(src, axis=0, return_inverse=True)
    pairs = same_pairs = 0
    for g in np.flatnonzero(np.bincount(group.reshape(-1)) > 1):
        members = np.flatnonzero(group.reshape(-1) == g)
        first = members[0]
        pairs += members.size - 1
        same_pairs += sum(np.array_equal(dec[first], dec[m]) for m in members[1:])
    return pairs, same_pairs


def test_repeated_sh_rows_are_coded_as_repeats_and_decode_exactly(scene):
    # The demo scene was decoded from SOG, whose SH is a k-means palette: rows repeat.
    fits = {on: fit_direct(scene, DirectConfig(sh_repeats=on), FAST) for on in (True, False)}
    src = scene.sh[fits[True].prep.layout.order]
    sizes = {}
    for on, f in fits.items():
        header, sections, enc = encode(f, lam=1 / 16)
        assert header["direct"]["sh_repeats"] is on and ("sh_repeats" in sections) is on
        assert same(enc.scene, decode(header, sections, chunk=97).scene)
        pairs, same_pairs = _shared_pairs(src, enc.scene.sh)
        assert pairs > 100
        # with repeats most Gaussians that share their source's row share the decoded row too;
        # coded one by one (steps and means of their own) hardly any do
        assert same_pairs > pairs / 2 if on else same_pairs < pairs / 20, (on, pairs, same_pairs)
        sizes[on] = sum(map(len, sections.values()))
    assert sizes[True] < 0.97 * sizes[False], sizes
    header, sections, _ = encode(fits[True], lam=1 / 16)
    data = sections["sh_repeats"]
    for bad, what in ((data[:-3], "truncated"), (data + b"\0", "after its last group"),
                      (None, "lacks its 'sh_repeats'")):
        broken = {**sections, "sh_repeats": bad} if bad is not None else {
            k: v for k, v in sections.items() if k != "sh_repeats"}
        with pytest.raises(FormatError, match=what):
            decode(header, broken)
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0x10
    with pytest.raises(HemgsError):
        decode(header, {**sections, "sh_repeats": bytes(flipped)})
    with pytest.raises(FormatError, match="sh_repeats"):
        decode({**header, "direct": {**header["direct"], "sh_repeats": "yes"}}, sections)


def test_positions_on_a_source_lattice_stay_on_it(scene, monkeypatch):
    from hemgs.direct import geometry
    from hemgs.direct.geometry import position_lattice

    assert position_lattice(scene.means) is None  # the demo's SOG-decoded positions lie on no 2^-k grid
    on = scene.subset(np.arange(len(scene)))
    on.means = np.round(scene.means.astype(np.float64) * 256) / 256  # fixed point, as SPZ stores them (at 2^-12)
    assert position_lattice(on.means) == 8 and position_lattice(on.means + 2.0**-13) == 13
    f = fit_direct(on, DirectConfig(), FAST)
    src = on.means[f.prep.layout.order]
    for lam in (1 / 64, 4.0):
        header, sections, enc = encode(f, lam=lam)
        assert header["position_lattice"] == 8
        dec = decode(header, sections, chunk=97).scene
        assert same(enc.scene, dec)
        assert np.array_equal(dec.means * 256, np.round(dec.means * 256))  # on the lattice
        # this compact patch's steps reach the coarse lattice's spacing: positions come back exactly
        assert (dec.means == src).all(1).mean() > 0.95
    # (the position stream alone: the other streams come from another fit, whose size moves with the CPU)
    lattice_bytes = len(encode(f, lam=1 / 64)[1]["position"])
    monkeypatch.setattr(geometry, "MAX_LATTICE_BITS", -1)  # the same scene with no lattice found
    f = fit_direct(on, DirectConfig(), FAST)
    header, sections, enc = encode(f, lam=1 / 64)
    assert header["position_lattice"] is None
    assert (enc.scene.means == src).all(1).mean() < 0.5  # near, not on, the source's positions
    assert len(sections["position"]) > 2 * lattice_bytes  # steps finer than the lattice cost bytes (5.5x measured)
    for bad in (-1, 21, 2.5, True):
        with pytest.raises(FormatError, match="position_lattice"):
            decode({**header, "position_lattice": bad}, sections)


def test_positions_on_sogs_log_grid_stay_on_it(scene):
    from hemgs.direct.geometry import Frame, LOG_LATTICE_STEPS, frame_for, log_lattice

    m = scene.means.astype(np.float64)
    assert log_lattice(m) is None  # a patch of the demo: its own range is not SOG's
    y = np.sign(m) * np.log1p(np.abs(m))
    ranges = np.stack([y.min(0), y.max(0)], 1)
    on = scene.subset(np.arange(len(scene)))
    on.means = Frame(np.zeros(3), 1.0, 2, log_lattice=ranges).snap(m)  # as SOG's decoder writes them
    found = log_lattice(on.means.astype(np.float32))  # (float32, as files hold them)
    assert found is not None and np.allclose(found, ranges, atol=1e-6)
    assert log_lattice(on.means + 1e-4) is None
    f = fit_direct(on, DirectConfig(), FAST)
    src = on.means[f.prep.layout.order]
    for lam in (1 / 64, 4.0):
        header, sections, enc = encode(f, lam=lam)
        assert header["position_log_lattice"] is not None and header["position_lattice"] is None
        dec = decode(header, sections, chunk=97).scene
        assert same(enc.scene, dec)
        frame = frame_for(on.means)
        assert np.allclose(frame.snap(dec.means), dec.means, rtol=0, atol=1e-12)  # on the grid
        exact = (np.abs(dec.means - src) < 1e-6).all(1).mean()  # (grid steps are ~1e-5)
        # where the steps reach the grid's spacing (a fine one: 2^16 points over the scene) the
        # source's own positions come back; off the grid, none would
        if lam < 1:  # (at λ = 4 the steps are far coarser than the grid)
            assert exact > 0.3, exact
    assert LOG_LATTICE_STEPS == 65535
    for bad in ([[0, 1], [0, 1]], [[1, 0], [0, 1], [0, 1]], [[0, "1"], [0, 1], [0, 1]], 3, [[0, float("inf")]] * 3):
        with pytest.raises(FormatError, match="position_log_lattice"):
            decode({**header, "position_log_lattice": bad}, sections)


def test_view_weights_balance_the_views_expected_errors(scene):
    from hemgs.cameras import sample_views
    from hemgs.direct.attributes import view_weights, visibility

    views = sample_views(scene, n=6, width=48, height=48)
    captured = []
    for cam in views:  # per-view V, one view at a time (visibility of a single view is that view's V)
        captured.append(visibility(scene, [cam]))
    pv = np.stack(captured, 1)
    assert np.allclose(view_weights(pv, iters=0), 1.0)
    w = view_weights(pv, iters=30)
    assert w.mean() == pytest.approx(1.0) and w.min() > 0
    v = pv @ w / w.sum()
    load = (pv / np.maximum(v, 1e-300)[:, None]).sum(0)
    assert np.allclose(w * load, (w * load).mean(), rtol=1e-6)  # the fixed point: weight ∝ 1/load
    # a view that sees only half the Gaussians carries half the load: it counts about twice as much
    half = np.stack([pv[:, 0], np.where(np.arange(len(pv)) % 2 == 0, pv[:, 0], 0.0)], 1)
    w2 = view_weights(half, iters=30)
    assert w2[1] > 1.5 * w2[0]
