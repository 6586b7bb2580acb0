"""The decoder reproduces the encoder's distribution parameters bit for bit, or fails loudly.

A small real MLP (seeded) on the demo scene's attributes stands in for the entropy model.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import plyfile
import pytest
import torch

from conftest import DEMO_PLY, REPO
from hemgs.coding.exact_params import (GUARD_REL, MEAN_STEPS, SCALE_BOUNDS, SCALE_TABLE, SnappedParams,
                                       apply_guard, check_param_checksums, encode_guard, param_checksums,
                                       run_deterministic, snap_for_encoder, snap_params)
from hemgs.coding.gaussian_coder import decode_symbols, encode_symbols, estimate_bits
from hemgs.errors import FormatError, IntegrityError

N_ROWS = 31_000


def demo_features() -> np.ndarray:
    """(N, 10) standardized real attributes of the demo scene: position, log-scales, opacity, DC colour."""
    v = plyfile.PlyData.read(str(DEMO_PLY))["vertex"]
    names = ["x", "y", "z", "scale_0", "scale_1", "scale_2", "opacity", "f_dc_0", "f_dc_1", "f_dc_2"]
    f = np.stack([np.asarray(v[n], dtype=np.float64) for n in names], axis=1)
    return (f - f.mean(0)) / f.std(0)


class ParamNet(torch.nn.Module):
    """Features -> (mean, scale) in symbol units, shaped like a real entropy-model head."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        dims = [10, 64, 64, 2]
        self.layers = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        with torch.no_grad():
            for lin in self.layers:
                lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) / lin.in_features**0.5)
                lin.bias.copy_(torch.randn(lin.bias.shape, generator=g) * 0.1)

    def forward(self, x):
        for lin in self.layers[:-1]:
            x = torch.relu(lin(x))
        out = self.layers[-1](x)
        mean = 20.0 * out[:, 0]
        scale = torch.exp(2.0 * out[:, 1])
        return torch.stack([mean, scale], dim=1)


def _batched(net, x, batch):
    return torch.cat([run_deterministic(net, x[i:i + batch]) for i in range(0, x.shape[0], batch)]).numpy()


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    x = torch.from_numpy(demo_features())
    net = ParamNet()
    out = run_deterministic(net, x).numpy()
    snapped, guard = snap_for_encoder(out[:, 0], out[:, 1])
    return x, net, out, snapped, guard


def test_raw_float32_depends_on_batching(setup):
    """The problem is real: float32 outputs change with the batch size, and so do decoded symbols."""
    x, net, *_ = setup
    x32 = x.float()
    with torch.no_grad():
        whole = net(x32)
        single = torch.cat([net(x32[i:i + 1]) for i in range(400)])
    differ = (whole[:400] != single).any(dim=1).float().mean().item()
    assert differ > 0.05, differ
    mu_e, sd_e = whole[:400, 0].double().numpy(), whole[:400, 1].double().numpy()
    mu_d, sd_d = single[:, 0].double().numpy(), single[:, 1].double().numpy()
    sym = np.rint(np.random.default_rng(0).normal(mu_e, sd_e)).astype(np.int64)
    decoded = decode_symbols(encode_symbols(sym, mu_e, sd_e), mu_d, sd_d)
    assert (decoded != sym).any()


@pytest.mark.parametrize("batch", [1, 7, 4096])
def test_snapped_float64_identical_for_any_batch_size(setup, batch):
    x, net, out, snapped, guard = setup
    rows = {1: 150, 7: 2100, 4096: N_ROWS}[batch]
    got = _batched(net, x[:rows], batch)
    assert np.abs(got - out[:rows]).max() <= 1e-12 * np.abs(out[:rows]).max()
    dec = apply_guard(got[:, 0], got[:, 1], _sub_guard(out[:rows]))
    np.testing.assert_array_equal(dec.mean_idx, snapped.mean_idx[:rows])
    np.testing.assert_array_equal(dec.scale_idx, snapped.scale_idx[:rows])


def _sub_guard(out):
    return encode_guard(out[:, 0], out[:, 1])


_THREAD_SCRIPT = """
import sys, numpy as np, torch
sys.path.insert(0, sys.argv[2])
from test_exact_params import ParamNet, demo_features, _batched
torch.set_num_threads(int(sys.argv[1]))  # after the imports: conftest sets its own count
assert torch.get_num_threads() == int(sys.argv[1])
x = torch.from_numpy(demo_features())
np.save(sys.argv[3], _batched(ParamNet(), x, 1000))
"""


@pytest.mark.slow
def test_identical_with_two_threads_end_to_end(setup, tmp_path):
    """Encoder: 1 thread, one call. Decoder: 2 threads, batches of 1000, in another process."""
    x, net, out, snapped, guard = setup
    path = tmp_path / "dec.npy"
    env = dict(os.environ, OMP_NUM_THREADS="2")
    subprocess.run([sys.executable, "-c", _THREAD_SCRIPT, "2", str(Path(__file__).parent), str(path)],
                   check=True, env=env, cwd=REPO / "backend", timeout=120)
    dec_out = np.load(path)
    crcs = param_checksums(snapped, chunk=4096)
    dec = apply_guard(dec_out[:, 0], dec_out[:, 1], guard)
    check_param_checksums(dec, crcs, "features", chunk=4096)
    sym = np.rint(np.random.default_rng(1).normal(snapped.means, snapped.scales)).astype(np.int64)
    data = encode_symbols(sym, snapped.means, snapped.scales)
    np.testing.assert_array_equal(decode_symbols(data, dec.means, dec.scales), sym)


def test_guard_survives_perturbation_at_boundaries(setup):
    _, _, out, _, _ = setup
    rng = np.random.default_rng(2)
    m, s = out[:, 0].copy(), out[:, 1].copy()
    # Put 2000 means and 2000 scales exactly on rounding boundaries (as real outputs sometimes are).
    im = rng.choice(m.size, 2000, replace=False)
    m[im] = (np.floor(m[im] * MEAN_STEPS) + 0.5) / MEAN_STEPS
    iscale = rng.choice(s.size, 2000, replace=False)
    s[iscale] = SCALE_BOUNDS[rng.integers(0, SCALE_BOUNDS.size, 2000)]
    enc, guard = snap_for_encoder(m, s)
    assert len(guard) < 4 * 4000  # a few bytes per listed element
    # The decoder's network lands ~1e-12 away (1000x typical float64 noise), in either direction.
    m2 = m * (1 + 1e-12 * rng.choice([-1.0, 1.0], m.size))
    s2 = s * (1 + 1e-12 * rng.choice([-1.0, 1.0], s.size))
    naive = snap_params(m2, s2)
    flips = (naive.mean_idx != enc.mean_idx).sum() + (naive.scale_idx != enc.scale_idx).sum()
    assert flips > 1000  # without the guard about half the boundary elements change side
    dec = apply_guard(m2, s2, guard)
    np.testing.assert_array_equal(dec.mean_idx, enc.mean_idx)
    np.testing.assert_array_equal(dec.scale_idx, enc.scale_idx)
    assert GUARD_REL > 1e-12


def test_wrong_network_fails_naming_the_chunk(setup):
    x, net, out, snapped, guard = setup
    wrong = ParamNet()
    with torch.no_grad():
        wrong.layers[0].weight[3, 5] += 1e-3
    bad = run_deterministic(wrong, x).numpy()
    dec = apply_guard(bad[:, 0], bad[:, 1], guard)
    differs = (dec.mean_idx != snapped.mean_idx) | (dec.scale_idx != snapped.scale_idx)
    first = int(np.flatnonzero(differs)[0]) // 4096
    with pytest.raises(IntegrityError, match=rf"in chunk {first} of features: elements {first * 4096}-"):
        check_param_checksums(dec, param_checksums(snapped, chunk=4096), "features", chunk=4096)


def test_snapping_costs_almost_no_rate(setup):
    _, _, out, snapped, _ = setup
    sym = np.rint(np.random.default_rng(4).normal(out[:, 0], out[:, 1])).astype(np.int64)
    raw = estimate_bits(sym, out[:, 0], out[:, 1]).sum()
    snap = estimate_bits(sym, snapped.means, snapped.scales).sum()
    assert abs(snap - raw) < 0.003 * raw, (snap, raw)
    assert (np.abs(snapped.means - out[:, 0]) <= 0.5 / MEAN_STEPS).all()
    inside = (out[:, 1] > SCALE_TABLE[0]) & (out[:, 1] < SCALE_TABLE[-1])
    ratio = np.abs(np.log(snapped.scales[inside] / out[inside, 1]))
    assert ratio.max() <= 0.5 * np.log(SCALE_TABLE[1] / SCALE_TABLE[0]) * 1.001


def test_guard_stream_damage_refused(setup):
    _, _, out, _, _ = setup
    m = np.full(100, 0.5 / MEAN_STEPS)
    s = np.ones(100)
    guard = encode_guard(m, s)
    for cut in range(len(guard)):
        with pytest.raises(FormatError):
            apply_guard(m, s, guard[:cut])
    with pytest.raises(FormatError):
        apply_guard(m[:50], s[:50], guard)  # lists elements beyond the decoder's count
    empty = encode_guard([], [])
    assert len(apply_guard([], [], empty)) == 0


def test_checksum_length_mismatch_refused(setup):
    _, _, _, snapped, _ = setup
    with pytest.raises(FormatError):
        check_param_checksums(snapped, b"\x00" * 3, "features")
    small = SnappedParams(snapped.mean_idx[:10], snapped.scale_idx[:10])
    check_param_checksums(small, param_checksums(small), "features")
