"""Network weights inside a .hgs file (never a pickle), in one of these layouts:

- float16 safetensors bytes (`pack_weights`): files made before the quantized layouts (anchor
  files without a header key `networks`, anchor-free files likewise);
- quantized (`pack_quantized`, anchor-free mode): each matrix row as small integers times a
  float16 step, the integers entropy-coded; vectors (biases, standardisation buffers) as raw
  float16, in the modules' own state order, with no names (the decoder builds the same modules
  from the file's config, so it knows every shape). A small scene's file is mostly data, and
  the safetensors layout spent 7 kB of JSON names and 16 bits a weight on ~7,000 weights; at 6
  bits a weight the fit's networks code the scene as well as in float16 (docs/direct-mode.md);
- quantized in parts (`pack_parts`, anchor mode, header `"networks": "quantized"`): the rendering
  MLPs and the entropy networks as two `pack_quantized` blobs, each behind its u32 length and at
  its own bit depth, the symbols' std at least PART_MIN_STD. The depths come from measurement
  (docs/hemgs-results.md, "Networks in the file"). The rendering MLPs change the picture: at
  RENDER_BITS = 8 they lose 0.002-0.016 dB against float16, at 7 bits 0.036-0.044 dB. The entropy
  networks change the rate: the encoder codes at 4, 5, 6, ... bits (ENTROPY_SEARCH) until the
  file grows and keeps the smallest (`smallest_file`; 2 bits is a cliff). At equal bytes on the
  rendering MLPs, per-row steps lose less than one step a matrix, a step a column, or steps from
  the row's rms.

The encoder rounds its networks to what the file holds *before* it computes any distribution
parameter (or renders what the file decodes to), so the decoder, which only has the stored
weights, computes the very same ones.
"""

from __future__ import annotations

import struct

import numpy as np
import torch
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save
from safetensors import SafetensorError

from ..coding.gaussian_coder import decode_symbols, encode_symbols
from ..errors import FormatError

QUANT_BITS = 6  # integers in [-(2^(b-1)-1), 2^(b-1)-1] per matrix row


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


def _tensors(modules: dict[str, torch.nn.Module]) -> list[torch.Tensor]:
    """Every floating tensor (parameters and buffers) in state order: the layout of the section."""
    return [t for module in modules.values() for t in module.state_dict(keep_vars=True).values()
            if t.is_floating_point()]


def _top(bits: int) -> int:
    """The largest integer of a `bits`-bit row: symbols lie in [-top, top]."""
    return (1 << (bits - 1)) - 1


def _row_steps(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Each row's step as float16 values (in w's dtype): the row's largest |weight| is the top integer."""
    # at most float16's largest finite value (a row beyond it is clipped to ±top steps)
    step = (w.abs().amax(dim=1, keepdim=True) / _top(bits)).clamp_max(65504.0).to(torch.float16).to(w.dtype)
    return torch.where(step > 0, step, torch.ones_like(step))


def quantize_weights(modules: dict[str, torch.nn.Module], bits: int | None = None) -> None:
    """Round `modules` in place to what `pack_quantized` stores: matrices to integers times their
    row's float16 step, everything else to float16. The product of a small integer and a float16
    is exact in float32, so the decoder's weights are these, bit for bit."""
    bits = bits or QUANT_BITS
    with torch.no_grad():
        for t in _tensors(modules):
            if t.ndim == 2:
                step = _row_steps(t, bits)
                t.copy_(torch.round(t / step).clamp(-_top(bits), _top(bits)) * step)
            else:
                t.copy_(t.to(torch.float16).to(t.dtype))


def pack_quantized(modules: dict[str, torch.nn.Module], bits: int | None = None, *, min_std: float = 0.1) -> bytes:
    """The section for modules already rounded by `quantize_weights`: one byte `bits`, the float16
    values (vectors, then each matrix's row steps and its symbols' Laplacian std, at least
    `min_std`), then the matrices' integers under those Laplacians (gaussian_coder)."""
    bits = bits or QUANT_BITS
    tensors = [t.detach().cpu().float() for t in _tensors(modules)]
    halves = [t.reshape(-1).numpy() for t in tensors if t.ndim != 2]
    symbols, stds = [], []
    for t in tensors:
        if t.ndim == 2:
            step = _row_steps(t, bits)
            k = torch.round(t / step)
            if not torch.equal(k * step, t):
                raise ValueError("pack_quantized: the networks were not rounded by quantize_weights first")
            k = k.to(torch.int64).reshape(-1).numpy()
            std = np.float16(max(float(np.sqrt(np.mean(k.astype(np.float64) ** 2))) if k.size else 1.0, min_std))
            halves += [step.reshape(-1).numpy(), np.array([std], np.float32)]
            symbols.append(k)
            stds.append(np.full(k.size, float(std)))
    flat = np.concatenate(halves).astype(np.float16) if halves else np.zeros(0, np.float16)
    if not np.isfinite(flat).all():
        raise ValueError("pack_quantized: a network value is beyond float16's range")
    sym = np.concatenate(symbols) if symbols else np.zeros(0, np.int64)
    sd = np.concatenate(stds) if stds else np.zeros(0)
    coded = encode_symbols(sym, np.zeros(sym.size), sd, max_abs=_top(bits), family="laplace")
    return bytes([bits]) + flat.astype("<f2").tobytes() + coded


def unpack_quantized(data: bytes, modules: dict[str, torch.nn.Module]) -> None:
    """Load a `pack_quantized` section into `modules` (which give the shapes); FormatError when
    the section does not fit them or holds non-finite values."""
    data = bytes(data)
    tensors = _tensors(modules)
    if not data or not 2 <= data[0] <= 8:
        raise FormatError("network weights section: missing or impossible bit count")
    vec_size = sum(t.numel() for t in tensors if t.ndim != 2)
    n_halves = vec_size + sum(t.shape[0] + 1 for t in tensors if t.ndim == 2)
    if len(data) < 1 + 2 * n_halves:
        raise FormatError("network weights section is truncated")
    flat = np.frombuffer(data, dtype="<f2", count=n_halves, offset=1).astype(np.float32)
    if not np.isfinite(flat).all():
        raise FormatError("network weights section holds NaN/Inf")
    at, mats, stds = vec_size, [], []
    for t in tensors:
        if t.ndim == 2:
            rows = t.shape[0]
            step, std = flat[at:at + rows], flat[at + rows]
            at += rows + 1
            if std <= 0:
                raise FormatError("network weights section holds a non-positive symbol std")
            mats.append(step)
            stds.append(np.full(t.numel(), float(np.float16(std))))
    sd = np.concatenate(stds) if stds else np.zeros(0)
    sym = decode_symbols(data[1 + 2 * n_halves:], np.zeros(sd.size), sd, max_abs=_top(data[0]), family="laplace")
    with torch.no_grad():
        at, sat, m = 0, 0, 0
        for t in tensors:
            if t.ndim == 2:
                k = torch.from_numpy(sym[sat:sat + t.numel()].astype(np.float32)).reshape(t.shape)
                t.copy_((k * torch.from_numpy(mats[m])[:, None]).to(t.dtype))
                sat += t.numel()
                m += 1
            else:
                t.copy_(torch.from_numpy(flat[at:at + t.numel()]).reshape(t.shape).to(t.dtype))
                at += t.numel()


# ---- anchor mode: the networks in parts, each quantized at its own bit depth ----------------------

# The bit depths anchor mode writes, by measurement on the demo scene (docs/hemgs-results.md,
# "Networks in the file"): the rendering MLPs change the picture, the entropy networks the rate.
RENDER_BITS = 8
ENTROPY_BITS = 4  # the entropy networks' first depth tried (ENTROPY_SEARCH)
NETWORK_BITS = (RENDER_BITS, ENTROPY_BITS)  # (rendering MLPs, entropy networks), as the parts' order
# The entropy networks' depth is the encoder's choice per file (`smallest_file`): these, in order,
# until the file grows. The smallest file came at 4 bits on playbot_lod3 (7.7k anchors), at 5 on
# playbot_lod2 (31k): the streams' loss to coarser networks grows with the anchors and differs
# from model to model; the networks' saving does not.
ENTROPY_SEARCH = (4, 5, 6, 7, 8)
SEARCH = "search"  # the codecs' default `network_bits`
QUANTIZED = "quantized"  # the header's "networks" value; files without the key hold float16 safetensors
# The symbols' Laplacian std is at least this in anchor files, so that even an all-zero matrix
# costs ≥ 0.088 bits a weight (P(0) ≤ 0.941): a decoder may refuse a header whose networks hold
# more than MAX_WEIGHTS_PER_BYTE weights a byte of the section before it allocates them.
PART_MIN_STD = 0.25
MAX_WEIGHTS_PER_BYTE = 256


def pack_parts(parts: list[tuple[dict[str, torch.nn.Module], int]]) -> bytes:
    """Anchor mode's quantized `networks` section: per part (modules, bits), in order, u32 length
    and a `pack_quantized` blob of the part at its bit depth. Round each part first with
    `quantize_weights(modules, bits)`."""
    out = []
    for modules, bits in parts:
        blob = pack_quantized(modules, bits, min_std=PART_MIN_STD)
        out += [struct.pack("<I", len(blob)), blob]
    return b"".join(out)


def unpack_parts(data: bytes, parts: list[dict[str, torch.nn.Module]]) -> list[int]:
    """Load a `pack_parts` section into `parts` (which give the shapes); returns each part's bit
    depth. FormatError when the section does not fit them."""
    data, pos, bits = bytes(data), 0, []
    for i, modules in enumerate(parts):
        if pos + 4 > len(data):
            raise FormatError(f"network weights section is truncated before part {i}")
        (n,) = struct.unpack_from("<I", data, pos)
        if n > len(data) - pos - 4:
            raise FormatError(f"network weights section: part {i} claims {n} bytes, {len(data) - pos - 4} remain")
        blob = data[pos + 4:pos + 4 + n]
        unpack_quantized(blob, modules)
        bits.append(blob[0])
        pos += 4 + n
    if pos != len(data):
        raise FormatError(f"network weights section: {len(data) - pos} bytes after its last part")
    return bits


Parts = list[dict[str, torch.nn.Module]]  # (rendering MLPs, entropy networks), each {prefix: module}


def round_networks(parts: Parts, bits: tuple[int, ...] | None) -> None:
    """Round each part in place to what the file will hold: quantized at its bit depth, or
    float16 when `bits` is None (the safetensors layout of older files)."""
    for modules, b in zip(parts, bits or (None,) * len(parts)):
        if b is None:
            for module in modules.values():
                round_to_half(module)
        else:
            quantize_weights(modules, b)


def pack_networks(parts: Parts, bits: tuple[int, ...] | None) -> bytes:
    """The `networks` section of parts rounded by `round_networks` with the same `bits`."""
    if bits is None:
        return pack_weights({k: m for modules in parts for k, m in modules.items()})
    return pack_parts(list(zip(parts, bits)))


def networks_layout(header: dict) -> str:
    """A file's `networks` layout: "quantized", or "float16" (files of format 1 without the key:
    codec/legacy.py)."""
    layout = header.get("networks")
    if layout not in (QUANTIZED, "float16"):
        raise FormatError(f"the file's networks are in an unknown layout {str(layout)[:40]!r}")
    return layout


def unpack_networks(header: dict, data: bytes, parts: Parts) -> None:
    """Load an anchor file's `networks` section into `parts`, in the header's layout."""
    if networks_layout(header) == QUANTIZED:
        unpack_parts(data, parts)
    else:
        unpack_weights(data, {k: m for modules in parts for k, m in modules.items()})


def smallest_file(encode_at):
    """The encoder's choice of the entropy networks' depth: `encode_at((RENDER_BITS, b))` ->
    (header, sections, decoded) for b in ENTROPY_SEARCH, in order, stopping at the first file
    larger than the one before; returns the smallest file's triple. (The depth changes the steps
    the networks predict, so the picture moves too, by noise: within ±0.03 dB on the scenes
    measured, docs/hemgs-results.md.)"""
    best, best_size = None, 0
    for b in ENTROPY_SEARCH:
        out = encode_at((RENDER_BITS, b))
        size = sum(len(v) for v in out[1].values())
        if best is not None and size >= best_size:
            break
        best, best_size = out, size
    return best
