"""Network weights in .hgs files (hemgs.codec.weights): the quantized layout of anchor-free mode,
and anchor mode's two quantized parts at their own bit depths, round-trip bit for bit, are a
fraction of the float16 safetensors layout, and refuse damaged or foreign sections by name."""

import struct

import numpy as np
import pytest
import torch

from hemgs.codec.weights import (ENTROPY_BITS, ENTROPY_SEARCH, MAX_WEIGHTS_PER_BYTE, RENDER_BITS, _tensors,
                                 pack_networks, pack_quantized, pack_weights, quantize_weights, round_networks,
                                 smallest_file, unpack_networks, unpack_parts, unpack_quantized)
from hemgs.direct.model import DirectConfig, DirectEntropyModel
from hemgs.errors import FormatError


def _model(seed: int, degree: int = 3) -> DirectEntropyModel:
    m = DirectEntropyModel(DirectConfig(sh_degree=degree, ar=True), 0.0, seed=seed)
    with torch.no_grad():  # trained-looking values everywhere, zero-initialised layers included
        for t in m.networks()["stages"].state_dict(keep_vars=True).values():
            if t.is_floating_point():
                t.add_(0.3 * torch.randn_like(t))
    return m


def _state(m: DirectEntropyModel) -> dict:
    return {f"{k}.{n}": t.clone() for k, mod in m.networks().items() for n, t in mod.state_dict().items()}


@pytest.mark.parametrize("bits", [4, 6, 8])
def test_quantized_networks_load_bit_for_bit_and_stay_close(bits):
    src = _model(1)
    before = _state(src)
    quantize_weights(src.networks(), bits)
    data = pack_quantized(src.networks(), bits)
    dst = _model(2)
    unpack_quantized(data, dst.networks())
    after, loaded = _state(src), _state(dst)
    assert all(torch.equal(after[k], loaded[k]) for k in after)
    for k, t in before.items():  # each matrix entry within half a step of its row's largest |value|
        if t.ndim == 2:
            bound = t.abs().amax(dim=1, keepdim=True) / ((1 << (bits - 1)) - 1) * 0.5 * (1 + 2**-9)
            assert ((after[k] - t).abs() <= bound).all(), k
    assert len(data) < 0.5 * len(pack_weights(src.networks()))


def test_pack_refuses_networks_that_were_not_rounded():
    with pytest.raises(ValueError, match="quantize_weights"):
        pack_quantized(_model(1).networks())


def test_damaged_sections_are_refused():
    src = _model(1)
    quantize_weights(src.networks())
    data = pack_quantized(src.networks())
    dst = _model(2).networks()
    with pytest.raises(FormatError, match="truncated"):
        unpack_quantized(data[:40], dst)
    with pytest.raises(FormatError, match="bit count"):
        unpack_quantized(b"\x00" + data[1:], dst)
    nan = bytearray(data)
    nan[1:3] = np.array([np.nan], "<f2").tobytes()
    with pytest.raises(FormatError, match="NaN"):
        unpack_quantized(bytes(nan), dst)
    with pytest.raises(FormatError):  # the model of another SH degree has other shapes
        unpack_quantized(data, _model(2, degree=1).networks())


def test_huge_weights_are_clipped_not_turned_into_nan():
    src = _model(1)
    with torch.no_grad():
        src.stages["sh"].fuse[0].weight[0, 0] = 1e9
    quantize_weights(src.networks())
    w = src.stages["sh"].fuse[0].weight
    assert torch.isfinite(w).all() and w[0, 0] == 31 * 65504.0
    dst = _model(2)
    unpack_quantized(pack_quantized(src.networks()), dst.networks())
    assert torch.equal(dst.stages["sh"].fuse[0].weight, w)


# ---- anchor mode: the networks in parts (rendering MLPs, entropy networks), each at its own depth --

def _anchor_parts(seed: int):
    from hemgs.anchor.model import AnchorConfig, AnchorModel
    from hemgs.entropy.hac import HacEntropyModel

    torch.manual_seed(seed)
    model = AnchorModel(AnchorConfig(feat_dim=16, k=4, voxel_size=0.01), torch.zeros((0, 3), dtype=torch.int64),
                        torch.zeros(3), seed=seed)
    ent = HacEntropyModel(16, 4, [0, 0, 0], [1, 1, 1], seed=seed)
    return [{"anchor": model.mlps}, {"entropy": ent.mlp}]


def _part_state(parts) -> dict:
    return {f"{i}.{k}.{n}": t.clone() for i, p in enumerate(parts) for k, m in p.items()
            for n, t in m.state_dict().items()}


@pytest.mark.parametrize("bits", [(8, 6), (4, 8), (6, 6)])
def test_parts_load_bit_for_bit_each_at_its_own_depth(bits):
    src = _anchor_parts(1)
    round_networks(src, bits)
    data = pack_networks(src, bits)
    dst = _anchor_parts(2)
    assert unpack_parts(data, dst) == list(bits)
    a, b = _part_state(src), _part_state(dst)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # each part's matrices hold at most 2^(b-1)-1 steps a row: the depth is the part's own
    for part, depth in zip(src, bits):
        for t in _tensors(part):
            if t.ndim == 2:
                step = t.abs().amax(dim=1, keepdim=True) / ((1 << (depth - 1)) - 1)
                k = t / torch.where(step > 0, step, torch.ones_like(step))
                assert torch.allclose(k, k.round(), atol=1e-3)


def test_float16_networks_keep_the_safetensors_layout():
    src = _anchor_parts(1)
    round_networks(src, None)
    data = pack_networks(src, None)
    assert data == pack_weights({"anchor": src[0]["anchor"], "entropy": src[1]["entropy"]})
    dst = _anchor_parts(2)
    unpack_networks({"networks": "float16"}, data, dst)
    a, b = _part_state(src), _part_state(dst)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(FormatError, match="unknown layout"):
        unpack_networks({"networks": "int3"}, data, dst)
    with pytest.raises(FormatError, match="safetensors"):  # a quantized file's bytes read as float16
        unpack_networks({"networks": "float16"}, _packed_parts(), dst)
    with pytest.raises(FormatError, match="unknown layout"):  # a format-1 header not read through codec/legacy.py
        unpack_networks({}, data, dst)


def _packed_parts(bits=(8, 6)) -> bytes:
    src = _anchor_parts(1)
    round_networks(src, bits)
    return pack_networks(src, bits)


def test_damaged_or_lying_parts_are_refused_in_one_line():
    data = _packed_parts()
    dst = _anchor_parts(2)
    (first,) = struct.unpack_from("<I", data)
    cases = {
        "truncated before part 0": data[:2],
        "truncated before part 1": data[:4 + first],
        "claims": data[:4 + first + 4] + data[4 + first + 4:][:10],
        "after its last part": data + b"\x00",
        "part 0 claims": struct.pack("<I", 1 << 30) + data[4:],
    }
    for what, bad in cases.items():
        with pytest.raises(FormatError) as err:
            unpack_parts(bad, _anchor_parts(2))
        assert "\n" not in str(err.value)
        if what.startswith(("truncated", "after", "part 0")):
            assert what in str(err.value), (what, str(err.value))
    with pytest.raises(FormatError):  # another model's shapes
        unpack_parts(data, [{"anchor": _anchor_parts(1)[0]["anchor"]}, _model(1).networks()])
    unpack_parts(data, dst)  # the intact section still loads


def test_an_all_zero_part_costs_enough_to_bound_what_a_header_may_claim():
    """The std floor (PART_MIN_STD) keeps every weight at ≥ 0.088 bits, so a decoder may refuse
    more than MAX_WEIGHTS_PER_BYTE weights a byte of the section before allocating them."""
    parts = _anchor_parts(1)
    with torch.no_grad():
        for p in parts:
            for m in p.values():
                for t in m.parameters():
                    t.zero_()
    round_networks(parts, (4, 4))
    data = pack_networks(parts, (4, 4))
    weights = sum(t.numel() for p in parts for t in _tensors(p))
    assert weights / len(data) < MAX_WEIGHTS_PER_BYTE / 2


def test_the_search_keeps_the_smallest_file_and_stops_when_files_grow():
    sizes = {4: 90, 5: 80, 6: 85, 7: 10, 8: 5}  # the search stops at 6: 7 and 8 are never tried
    tried = []

    def encode_at(bits):
        tried.append(bits)
        return {"bits": bits}, {"s": bytes(sizes[bits[1]])}, None

    header, _, _ = smallest_file(encode_at)
    assert header["bits"] == (RENDER_BITS, 5) and tried == [(RENDER_BITS, b) for b in (4, 5, 6)]
    assert ENTROPY_SEARCH[0] == ENTROPY_BITS and list(ENTROPY_SEARCH) == sorted(ENTROPY_SEARCH)
