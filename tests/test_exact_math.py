"""Decoder arithmetic that gives the same bits on every machine (coding/exact_math.py), and a
direct-mode decode that does not depend on numpy's transcendental functions."""

import hashlib

import numpy as np
import pytest

from hemgs.coding import exact_math as E
from hemgs.direct import DirectConfig, DirectFitConfig, decode, encode, fit_direct
from hemgs.direct.geometry import Frame
from test_direct_codec import FIELDS, tiny_scene

pytestmark = pytest.mark.slow  # fits and codecs on real patches: `make test-fast` leaves them out

RNG = np.random.default_rng(7)


def _ulps(a, b):
    return float(np.max(np.abs(a - b) / np.spacing(np.maximum(np.abs(b), 1e-300))))


def test_log1p_and_expm1_match_numpy_to_a_few_ulps():
    x = np.concatenate([RNG.uniform(0, 20, 20000), 10.0 ** RNG.uniform(-300, 3, 20000), RNG.uniform(-0.99, 0, 2000),
                        [0.0, 5e-324, 0.5, 1.0, 2.0]])
    assert _ulps(E.log1p(x), np.log1p(x)) <= 4
    y = np.concatenate([RNG.uniform(-20, 20, 20000), 10.0 ** RNG.uniform(-300, 0, 2000),
                        -(10.0 ** RNG.uniform(-300, 0, 2000)), [0.0]])
    assert _ulps(E.expm1(y), np.expm1(y)) <= 4
    assert np.array_equal(E.log1p(np.zeros(3)), np.zeros(3)) and np.array_equal(E.expm1(np.zeros(3)), np.zeros(3))


def test_sincos_norm_and_products_match_numpy():
    t = np.concatenate([RNG.uniform(-10, 10, 20000), [0.0, np.pi / 2, -np.pi, 1e-200]])
    s, c = E.sincos(t)
    assert np.abs(s - np.sin(t)).max() <= 2.3e-16 and np.abs(c - np.cos(t)).max() <= 2.3e-16
    assert s[-1] == 1e-200  # sin x = x for tiny x
    v = RNG.normal(size=(1000, 3))
    assert np.allclose(E.norm3(v), np.linalg.norm(v, axis=1), rtol=1e-15, atol=0)
    b = RNG.normal(size=(3, 3))
    assert np.allclose(E.rows_times(v, b), v @ b, rtol=1e-14, atol=1e-15)


def test_the_bits_are_pinned():
    # What every machine must compute for these inputs: an AVX2 and an AVX-512 machine differ by an
    # ulp in numpy's own functions, which moved decoded positions (the module's doc).
    x = np.linspace(0.0, 12.0, 4001)
    s, c = E.sincos(np.linspace(-4.0, 4.0, 4001))
    h = hashlib.sha256(b"".join(a.astype("<f8").tobytes() for a in (E.log1p(x), E.expm1(x), s, c)))
    assert h.hexdigest()[:16] == "1938f8a1081636ad"


def _perturbed(fn):
    # another machine's libm, simulated: every result an ulp up
    return lambda *a, **k: np.nextafter(fn(*a, **k), np.inf)


def test_a_direct_decode_does_not_use_numpys_transcendental_functions(monkeypatch):
    scene = tiny_scene(800)
    m = scene.means.astype(np.float64)
    y = np.sign(m) * np.log1p(np.abs(m))
    scene.means = Frame(np.zeros(3), 1.0, 2, log_lattice=np.stack([y.min(0), y.max(0)], 1)).snap(m)  # SOG's grid
    f = fit_direct(scene, DirectConfig(), DirectFitConfig(iters=6, rows=1024))
    header, sections, enc = encode(f, lam=1 / 16)
    assert "position_log_lattice" in header and header["direct"].get("rotation") == "swing_twist"
    for name in ("log1p", "expm1", "sin", "cos", "exp", "log", "arctan2", "hypot", "tan"):
        monkeypatch.setattr(np, name, _perturbed(getattr(np, name)))
    dec = decode(header, sections).scene
    for field in FIELDS:
        assert np.array_equal(getattr(dec, field), getattr(enc.scene, field)), field
