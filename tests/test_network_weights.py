"""Network weights in .hgs files (hemgs.codec.weights): the quantized layout of anchor-free mode
round-trips bit for bit, is a fraction of the float16 safetensors layout, and refuses damaged or
foreign sections by name."""

import numpy as np
import pytest
import torch

from hemgs.codec.weights import pack_quantized, pack_weights, quantize_weights, unpack_quantized
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
