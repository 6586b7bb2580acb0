"""Network weights inside a .hgs file: float16 safetensors bytes (never a pickle).

The encoder rounds its networks to float16 *before* it computes any distribution parameter, so
the decoder, which only has the float16 weights, computes the very same ones.
"""

from __future__ import annotations

import numpy as np
import torch
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save
from safetensors import SafetensorError

from ..errors import FormatError


def round_to_half(module: torch.nn.Module) -> None:
    """Round every floating parameter and buffer of `module` to float16 precision, in place."""
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            if t.is_floating_point():
                t.copy_(t.to(torch.float16).to(t.dtype))


def pack_weights(modules: dict[str, torch.nn.Module]) -> bytes:
    tensors = {}
    for prefix, module in modules.items():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                tensors[f"{prefix}.{name}"] = t.detach().cpu().to(torch.float16).numpy()
    return st_save(tensors)


def unpack_weights(data: bytes, modules: dict[str, torch.nn.Module]) -> None:
    """Load float16 weights into `modules` (float32 copies); any mismatch is a FormatError."""
    try:
        tensors = st_load(bytes(data))
    except (SafetensorError, ValueError, OSError) as exc:
        raise FormatError(f"network weights section is not valid safetensors: {exc}") from None
    expected = set()
    for prefix, module in modules.items():
        state = module.state_dict()
        for name, ref in state.items():
            if not ref.is_floating_point():
                continue
            key = f"{prefix}.{name}"
            expected.add(key)
            arr = tensors.get(key)
            if arr is None:
                raise FormatError(f"network weights section lacks {key}")
            if arr.dtype != np.float16 or tuple(arr.shape) != tuple(ref.shape):
                raise FormatError(f"network weight {key} has {arr.dtype}{list(arr.shape)}, expected float16{list(ref.shape)}")
            if not np.isfinite(arr).all():
                raise FormatError(f"network weight {key} holds NaN/Inf")
            with torch.no_grad():
                ref.copy_(torch.from_numpy(arr.astype(np.float32)))
    extra = sorted(set(tensors) - expected)
    if extra:
        raise FormatError(f"network weights section has unexpected tensors {extra[:3]}")
