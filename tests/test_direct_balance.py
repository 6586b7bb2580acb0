"""Anchor-free mode's measured stage balance (hemgs.direct.balance and the encoder's use of it)."""

import numpy as np
import pytest

from hemgs.direct import DirectConfig, DirectFitConfig, decode, encode, fit_direct
from hemgs.direct import attributes, balance
from hemgs.direct import codec as direct_codec

from test_direct_codec import same, tiny_scene

FIT = DirectFitConfig(iters=30, rows=1024)


def test_factors_follow_render_error_per_modelled_error():
    dims = attributes.stage_dims(2)
    modelled = {s: 1.0 for s in dims if s != "importance"}
    # every group's renders move as its weights say, but position's 4x as much
    errors = {"opacity": 1.0, "scale": 1.0, "rotation": 1.0, "position": 4.0, "colour": 2.0}
    k = balance.balance_factors(errors, modelled)
    assert set(k) == set(modelled)
    assert k["dc"] == k["sh"]  # colour is one group
    assert k["position"] == pytest.approx(4 * k["opacity"]) and k["dc"] == pytest.approx(k["opacity"])
    # the factors keep the modelled total: Σ k·modelled = Σ modelled over the groups
    assert sum(k[s] * modelled[s] for s in modelled) == pytest.approx(sum(modelled.values()))
    # far out of line: clipped; nothing measured: left alone
    k = balance.balance_factors({**errors, "position": 1e6}, modelled)
    assert max(k.values()) <= balance.MAX_FACTOR and min(k.values()) >= 1 / balance.MAX_FACTOR
    k = balance.balance_factors(errors, {**modelled, "rotation": 0.0})
    assert k["rotation"] == 1.0
    # SH degree 0: no sh stage, colour is dc alone
    k0 = balance.balance_factors(errors, {s: 1.0 for s in attributes.stage_dims(0) if s != "importance"})
    assert "sh" not in k0 and "dc" in k0


def test_each_group_is_measured_alone():
    source = tiny_scene(800)
    decoded = source.subset(np.arange(len(source)))
    decoded.means = source.means + 0.002  # only the positions differ...
    live = np.ones(len(source), dtype=bool)
    live[::4] = False  # ...and skipped Gaussians keep their source values
    errors = balance.stage_errors(source, decoded, live)
    assert errors["position"] > 0 and all(v == 0 for g, v in errors.items() if g != "position"), errors
    decoded.sh = source.sh.copy()
    decoded.sh[:, 1:] += 0.05  # now only the colours
    decoded.means = source.means
    errors = balance.stage_errors(source, decoded, live)
    assert errors["colour"] > 0 and all(v == 0 for g, v in errors.items() if g != "colour"), errors
    decoded.sh = source.sh.copy()
    decoded.sh[::4, 1:] += 0.05  # changes to skipped Gaussians only: nothing measured
    assert all(v == 0 for v in balance.stage_errors(source, decoded, live).values())


def test_a_stage_weighted_too_high_is_coded_coarser(monkeypatch):
    scene = tiny_scene(1500)
    # position errors weighted 64x more: the fit and the rounding code positions too finely
    monkeypatch.setitem(attributes.GEOM_WEIGHT, "position", attributes.GEOM_WEIGHT["position"] * 64)
    f = fit_direct(scene, DirectConfig(), FIT)
    first = direct_codec._encode(f, 0.25, None, direct_codec.CHUNK, True, None)
    # what the balance measures on: nearly the file's values
    approx = direct_codec._approximate_values(f, 0.25)
    for stage in ("opacity", "scale", "rotation", "position", "dc", "sh"):
        real = ((f.values[stage] - first[2].values[stage]) ** 2).mean()
        assert 0.7 * real < ((f.values[stage] - approx[stage]) ** 2).mean() < 1.4 * real, stage
    k = direct_codec._balance(f, approx, 0.25)
    assert k["position"] < 0.5, k
    # the balanced file spends fewer bytes on positions, and still decodes exactly
    header, sections, enc = encode(f, lam=0.25)
    # (measured: 0.89 of the bytes with 2 threads; 0.96 with 16, whose fit comes out otherwise)
    assert len(sections["position"]) < 0.97 * len(first[1]["position"])
    assert same(enc.scene, decode(header, sections).scene)


def test_balance_off_and_without_rd_decisions_codes_once(monkeypatch):
    f = fit_direct(tiny_scene(600), DirectConfig(), DirectFitConfig(iters=6, rows=512))
    calls = []
    monkeypatch.setattr(direct_codec, "_balance", lambda *a: calls.append(1) or None)
    encode(f, lam=1.0, balance=False)
    encode(f, lam=1.0, rdoq=False)
    assert not calls
    encode(f, lam=1.0)
    assert calls == [1]
