"""Anchor-mode codec: exact decoding across processes, thread counts and chunkings, for both network
layouts (quantized, float16); damage is named."""

import copy
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import DEMO_PLY
from hemgs.anchor.warm_start import build_anchor_model, warm_start
from hemgs.codec.anchor import decode, encode
from hemgs.codec.weights import ENTROPY_SEARCH, RENDER_BITS, unpack_parts
from hemgs.container import read_hgs, write_hgs
from hemgs.entropy.hac import HacEntropyModel
from hemgs.entropy.hashgrid import HashGridConfig
from hemgs.errors import FormatError, IntegrityError
from hemgs.io import load_scene


@pytest.fixture(scope="module")
def coded(tmp_path_factory):
    """A warm-started anchor model of part of the demo scene, its entropy model, and its file."""
    scene = load_scene(DEMO_PLY).subset(slice(0, 6000))
    model = build_anchor_model(scene, seed=0)
    warm_start(model, scene, steps=15, seed=0)
    a = model.anchors
    entropy = HacEntropyModel(model.config.feat_dim, model.config.k, a.min(0).values, a.max(0).values,
                              HashGridConfig.for_anchor_count(model.num_anchors))
    header, sections, result = encode(model, entropy, lam=2e-3, chunk=4096)
    path = tmp_path_factory.mktemp("hgs") / "part.hgs"
    write_hgs(path, header, sections)
    return model, result, path


def _attrs(model):
    return {k: v.numpy() for k, v in model.anchor_attributes().items()}


@pytest.mark.slow
def test_decode_reproduces_the_encoders_result_exactly(coded):
    _, result, path = coded
    f = read_hgs(path)
    for chunk in (4096, 1, 777):  # another batch size for the networks
        dec = decode(f.header, f.sections, chunk=chunk)
        for k, v in _attrs(result.model).items():
            np.testing.assert_array_equal(_attrs(dec.model)[k], v, err_msg=k)


def test_decoded_values_are_the_quantized_originals(coded):
    model, result, _ = coded
    src, dec = _attrs(model), _attrs(result.model)
    # Same anchors (decode order is the location coder's), values within half a quantization step.
    order = np.lexsort(model.coords.numpy().T)
    order_d = np.lexsort(result.model.coords.numpy().T)
    assert (src["mask"][order] == dec["mask"][order_d]).all()
    err = np.abs(src["scaling"][order] - dec["scaling"][order_d]).max()
    assert err <= 1e-3 + 1e-9  # scaling steps are at most 2 * 1e-3, so half a step <= 1e-3
    assert np.abs(src["features"][order] - dec["features"][order_d]).max() <= 1.0 + 1e-6


DECODE_SCRIPT = """
import sys, hashlib, torch
torch.set_num_threads(int(sys.argv[2]))
from hemgs.container import read_hgs
from hemgs.codec.anchor import decode
f = read_hgs(sys.argv[1])
d = decode(f.header, f.sections, chunk=int(sys.argv[3]))
h = hashlib.sha256()
for k, v in sorted(d.model.anchor_attributes().items()):
    h.update(v.numpy().tobytes())
print(h.hexdigest())
"""


@pytest.mark.slow
def test_another_process_with_other_threads_and_chunks_decodes_identically(coded):
    _, result, path = coded
    import hashlib

    h = hashlib.sha256()
    for _, v in sorted(result.model.anchor_attributes().items()):
        h.update(v.numpy().tobytes())
    for threads, chunk in ((1, 100), (2, 4096)):
        out = subprocess.run([sys.executable, "-c", DECODE_SCRIPT, str(path), str(threads), str(chunk)],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == h.hexdigest()


def test_a_flipped_bit_in_any_section_is_reported_by_name(coded):
    _, _, path = coded
    data = bytearray(path.read_bytes())
    f = read_hgs(bytes(data))
    for name, payload in f.sections.items():
        start = bytes(data).find(bytes(payload[: min(len(payload), 64)]))
        if not payload:
            continue
        bad = bytearray(data)
        bad[start + len(payload) // 2] ^= 0x10
        with pytest.raises(IntegrityError, match=name):
            read_hgs(bytes(bad))


def test_wrong_networks_fail_loudly_not_silently(coded):
    _, _, path = coded
    f = read_hgs(path)
    header = dict(f.header)
    header["origin"] = [v + 0.37 for v in header["origin"]]  # another context for every anchor
    with pytest.raises((IntegrityError, FormatError)):
        decode(header, f.sections)


def _state(d: dict) -> dict:
    return {k: v.detach().clone() for k, v in d.items()}


def test_networks_are_quantized_and_decode_bit_for_bit_in_both_layouts(coded):
    """The file's networks (quantized: rendering MLPs and entropy network at their own bit
    depths, the entropy network's the smallest file's) decode to exactly the encoder's; the
    float16 layout of older files still codes and decodes, and takes more bytes."""
    model, result, path = coded
    f = read_hgs(path)
    assert f.header["networks"] == "quantized"
    fresh = [{"a": copy.deepcopy(result.model.mlps)}, {"e": copy.deepcopy(result.entropy.mlp)}]
    render, chosen = unpack_parts(f.sections["networks"], fresh)
    assert render == RENDER_BITS and chosen in ENTROPY_SEARCH
    # the search's choice: no depth it tried (those up to the one after it) makes a smaller file
    size = sum(len(v) for v in f.sections.values())
    for b in ENTROPY_SEARCH[:ENTROPY_SEARCH.index(chosen) + 2]:
        _, sections, _ = encode(model, result.entropy, lam=2e-3, network_bits=(RENDER_BITS, b))
        assert sum(len(v) for v in sections.values()) >= size, b
    a = result.model.mlps.state_dict()
    float16 = encode(model, result.entropy, lam=2e-3, network_bits=None)
    for layout, (header, sections, res) in {"quantized": (f.header, f.sections, result), "float16": float16}.items():
        dec = decode(header, sections, chunk=4096)
        for name, (got, want) in {"mlps": (dec.model.mlp_state(), res.model.mlp_state()),
                                  "entropy": (dec.entropy.mlp.state_dict(), res.entropy.mlp.state_dict())}.items():
            assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got), (layout, name)
        if layout == "float16":
            assert header["networks"] == "float16"
            assert len(f.sections["networks"]) < 0.7 * len(sections["networks"])
            assert set(a) == set(dec.model.mlps.state_dict())


def test_an_unknown_network_layout_is_refused_in_one_line(coded):
    _, _, path = coded
    f = read_hgs(path)
    with pytest.raises(FormatError, match="unknown layout") as err:
        decode(dict(f.header, networks="int3"), f.sections)
    assert "\n" not in str(err.value)
    with pytest.raises(FormatError) as err:  # a quantized section read as float16 safetensors
        decode({k: v for k, v in f.header.items() if k != "networks"}, f.sections)
    assert "\n" not in str(err.value)
