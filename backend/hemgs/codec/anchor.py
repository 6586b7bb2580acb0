"""Anchor-mode codec: AnchorModel + entropy model  <->  .hgs sections.

Progressive order (paper §3.2): locations first (lossless octree), then everything else is
conditioned on them through the hash-grid context at the decoded anchor positions. Per attribute
group (features, scaling, offsets) a section holds one stream (codec/streams.py: step guard,
parameter guard, parameter CRCs, symbol CRC, symbols); HAC's steps are one per anchor and group.

Only the offsets of slots whose mask is on are coded. Every number the decoder needs is in the
file: the header carries configs and geometry, `networks` the weights (header `"networks":
"quantized"`: the rendering MLPs and the entropy network quantized, each at its own bit depth,
codec/weights.py `pack_parts`; or "float16": safetensors, as files of format 1 without the key).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..anchor.model import AnchorConfig, AnchorModel
from ..coding.bits import decode_bits, encode_bits
from ..coding.exact_params import run_deterministic
from ..coding.locations import decode_locations, encode_locations
from ..coding.steps import snap_steps, step_values, steps_from_guard
from ..entropy.hac import BASE_STEP, GROUPS, HacEntropyModel
from ..entropy.hashgrid import HashGridConfig
from ..errors import FormatError
from . import registry, streams
from .layout import CHUNK, check_identity, header_fields, require_sections
from .weights import (MAX_WEIGHTS_PER_BYTE, QUANTIZED, SEARCH, networks_layout, pack_networks, round_networks,
                      smallest_file, unpack_networks)

MODE = "anchor"
CODEC = "hac"


# Baked exports (PLY/SPZ from an anchor file): SH degree 1 keeps most of the view dependence for 4x9 floats.
BAKE_SH_DEGREE = 1


@dataclass
class Decoded:
    """A decoded anchor file (both anchor codecs): its anchor model, seen through its neural
    Gaussians, or baked to static ones (codec/registry.py's Decoded)."""
    model: AnchorModel
    entropy: HacEntropyModel
    header: dict

    def gaussians(self, sh_degree: int | None = None):
        """The model baked to static 3DGS Gaussians at `sh_degree` (None: BAKE_SH_DEGREE)."""
        from ..anchor.bake import bake

        return bake(self.model.cpu(), mode="sh_fit", sh_degree=BAKE_SH_DEGREE if sh_degree is None else sh_degree)

    def renderer(self, device=None):
        """View-dependent renders of the neural Gaussians, as the codec means them to be seen."""
        from ..fit import render_views_anchor

        model = self.model if device is None else self.model.to(device)
        return lambda cam: render_views_anchor(model, [cam])[0]


def _positions64(coords: np.ndarray, origin, voxel_size: float) -> torch.Tensor:
    """Anchor positions in float64 from integers and header floats: identical on every machine."""
    c = torch.as_tensor(coords.astype(np.float64))
    return torch.as_tensor(np.asarray(origin, dtype=np.float64)) + (c + 0.5) * float(voxel_size)


def _raw_params(entropy: HacEntropyModel, pos64: torch.Tensor, chunk: int) -> torch.Tensor:
    """The entropy head's raw output through the exact path (float64, fixed chunks)."""
    lo = entropy.bbox_min.double()
    span = (entropy.bbox_max.double() - lo).clamp_min(1e-9)
    ctx = run_deterministic(entropy.grid, (pos64 - lo) / span, chunk=chunk)
    return run_deterministic(entropy.mlp, ctx, chunk=chunk)


def _group_values(model_attrs: dict, group: str, mask: np.ndarray) -> np.ndarray:
    v = model_attrs[group].reshape(mask.shape[0], -1).double().numpy()
    if group == "offsets":
        return v[np.repeat(mask, 3, axis=1)]
    return v.reshape(-1)


def _select(x: torch.Tensor, group: str, mask: np.ndarray) -> np.ndarray:
    x = x.numpy()
    if group == "offsets":
        return x[np.repeat(mask, 3, axis=1)]
    return x.reshape(-1)


def encode(model: AnchorModel, entropy: HacEntropyModel, *, lam: float, header_extra: dict | None = None,
           chunk: int = CHUNK,
           network_bits: tuple[int, int] | str | None = SEARCH) -> tuple[dict, dict[str, bytes], Decoded]:
    """Code a trained model. Returns (header, sections, the decoded result the file will give).

    `network_bits`: the bit depths of the rendering MLPs and of the entropy network in the file
    (None: float16 safetensors, the layout of files made before the quantized one; "search": the
    rendering MLPs at RENDER_BITS, the entropy network at the depth that makes the smallest file,
    codec/weights.py `smallest_file`)."""
    if network_bits == SEARCH:
        return smallest_file(lambda bits: encode(model, entropy, lam=lam, header_extra=header_extra, chunk=chunk,
                                                 network_bits=bits))
    model, entropy = copy.deepcopy(model).cpu(), copy.deepcopy(entropy).cpu()
    parts = [{"anchor": model.mlps}, {"entropy": entropy.mlp}]
    round_networks(parts, network_bits)
    coords = model.coords.numpy().astype(np.uint16)
    loc_bytes, order = encode_locations(coords)
    coords = coords[order]
    attrs = {k: v[torch.as_tensor(order)] for k, v in model.anchor_attributes().items()}
    mask = attrs["mask"].numpy().astype(bool)
    n = coords.shape[0]

    header = {
        **registry.get(MODE, CODEC).identity(), "lambda": float(lam), "anchors": int(n),
        "anchor_config": model.config.to_dict(),
        "origin": [float(v) for v in model.origin.double()],
        "entropy": {"feat_dim": entropy.feat_dim, "k": entropy.k, "hidden": entropy.mlp[0].out_features,
                    "bbox_min": [float(v) for v in entropy.bbox_min.double()],
                    "bbox_max": [float(v) for v in entropy.bbox_max.double()],
                    "grid": entropy.grid.config.to_dict()},
        "networks": QUANTIZED if network_bits is not None else "float16",
        **(header_extra or {}),
    }
    sections = {
        "locations": loc_bytes,
        "networks": pack_networks(parts, network_bits),
        "grid": encode_bits(entropy.grid.binary_tables().numpy()),
        "mask": encode_bits(mask.reshape(-1)),
    }
    pos64 = _positions64(coords, header["origin"], model.config.voxel_size)
    params = entropy.split(_raw_params(entropy, pos64, chunk)) if n else None
    decoded = {}
    for group in GROUPS:
        base = BASE_STEP[group]
        values = _group_values(attrs, group, mask)
        if n == 0:
            sections[group] = streams.empty()
            decoded[group] = np.zeros(0)
            continue
        p = params[group]
        step_idx, step_guard = snap_steps(p.step.numpy(), base)
        q_anchor = step_values(step_idx, base)  # (N,) one step per anchor and group
        q = np.broadcast_to(q_anchor[:, None], p.mean.shape)
        q_sel = _select(torch.as_tensor(np.ascontiguousarray(q)), group, mask)
        sections[group], decoded[group] = streams.encode_values(
            values, _select(p.mean, group, mask), _select(p.scale, group, mask), q_sel, step_guard)
    result = _assemble(model.config, coords, header["origin"], mask, decoded, model.mlp_state(), entropy, header)
    return header, sections, result


def _assemble(config: AnchorConfig, coords, origin, mask, values: dict, mlp_state, entropy, header) -> Decoded:
    n, k, f = coords.shape[0], int(config.k), int(config.feat_dim)
    offsets = np.zeros((n, k * 3))
    offsets[np.repeat(mask, 3, axis=1)] = values["offsets"]
    attrs = {
        "features": torch.as_tensor(values["features"].reshape(n, f), dtype=torch.float32),
        "scaling": torch.as_tensor(values["scaling"].reshape(n, 6), dtype=torch.float32),
        "offsets": torch.as_tensor(offsets.reshape(n, k, 3), dtype=torch.float32),
        "mask": torch.as_tensor(mask),
    }
    model = AnchorModel.from_attributes(config, torch.as_tensor(coords.astype(np.int64)),
                                        torch.as_tensor(origin, dtype=torch.float32), attrs, mlp_state)
    return Decoded(model, entropy, header)


# Untrusted headers: every size is a plain int in a sane range, and what the sizes imply must fit
# in the bytes actually present, all checked BEFORE any network or table is allocated.
_MAX_DIM = 1 << 16  # feat_dim, k, hidden widths, levels, resolutions: real values are < 1000
_MAX_LOG2_TABLE = 24
# An anchor costs at least one bit of the file (its location alone costs more): a header or a
# location stream that claims more anchors than that is lying (or a decompression bomb).
_MIN_BITS_PER_ANCHOR = 1
# A hash-grid entry costs ~1 bit (its ±1 values are near 50/50 after training); allowing 512 per
# byte of the grid section still bounds memory by the file size while accepting skewed tables.
_MAX_GRID_BITS_PER_BYTE = 512
_MIN_GRID_BITS_ALLOWED = 1 << 16


def _size(d: dict, key: str, lo: int, hi: int, where: str, *, optional: bool = False) -> int | None:
    v = d.get(key) if isinstance(d, dict) else None
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise FormatError(f"the file's {where}.{key} must be an integer in [{lo}, {hi}], got {v!r}"[:200])
    return v


def network_sizes(anchor_cfg: dict, entropy_cfg: dict) -> tuple[int, int]:
    """(weights of all networks, bits of the hash grid) that header configs imply, validated.

    Pure arithmetic on the untrusted dicts (mirrors AnchorMLPs, HacEntropyModel, BinaryHashGrid;
    tests check it against the real modules), so nothing is allocated for a lying header.
    """
    if not isinstance(anchor_cfg, dict) or not isinstance(entropy_cfg, dict):
        raise FormatError("the file's anchor_config and entropy entries must be JSON objects")
    f = _size(anchor_cfg, "feat_dim", 1, _MAX_DIM, "anchor_config")
    k = _size(anchor_cfg, "k", 1, _MAX_DIM, "anchor_config")
    h = _size(anchor_cfg, "hidden", 1, _MAX_DIM, "anchor_config", optional=True) or f
    use_dist = anchor_cfg.get("use_dist")
    if not isinstance(use_dist, bool):
        raise FormatError(f"the file's anchor_config.use_dist must be true or false, got {use_dist!r}"[:200])
    if entropy_cfg.get("feat_dim") != f or entropy_cfg.get("k") != k:
        raise FormatError("the file's entropy and anchor configs disagree on sizes")
    g = entropy_cfg.get("grid")
    if not isinstance(g, dict):
        raise FormatError("the file's entropy.grid must be a JSON object")
    l3 = _size(g, "levels_3d", 1, _MAX_DIM, "entropy.grid")
    l2 = _size(g, "levels_2d", 1, _MAX_DIM, "entropy.grid")
    feats = _size(g, "features", 1, _MAX_DIM, "entropy.grid")
    t3 = 1 << _size(g, "log2_table_3d", 0, _MAX_LOG2_TABLE, "entropy.grid")
    t2 = 1 << _size(g, "log2_table_2d", 0, _MAX_LOG2_TABLE, "entropy.grid")
    for key in ("res_3d", "res_2d"):
        r = g.get(key)
        if (not isinstance(r, list) or len(r) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= _MAX_DIM for v in r)):
            raise FormatError(f"the file's entropy.grid.{key} must be two integers in [1, {_MAX_DIM}]")
    eh = _size(entropy_cfg, "hidden", 1, _MAX_DIM, "entropy", optional=True) or 2 * f
    mlp_in = f + 3 + (1 if use_dist else 0)
    anchor = 3 * (mlp_in * h + h) + h * 11 * k + 11 * k  # opacity (k), cov (7k), colour (3k) heads
    grid_out = (l3 + 3 * l2) * feats
    out = 2 * (f + 6 + 3 * k) + len(GROUPS)
    entropy = grid_out * eh + eh + eh * out + out
    return anchor + entropy, (l3 * t3 + 3 * l2 * t2) * feats


def _check_budget(header: dict, sections: dict[str, bytes]) -> None:
    """Refuse a header whose sizes the file's bytes cannot hold (before anything is allocated)."""
    weights, grid_bits = network_sizes(header.get("anchor_config"), header.get("entropy"))
    # float16: two bytes a weight; quantized: at most MAX_WEIGHTS_PER_BYTE a byte (codec/weights.py)
    need = 2 * weights if networks_layout(header) == "float16" else weights / MAX_WEIGHTS_PER_BYTE
    if need > len(sections["networks"]):
        raise FormatError(f"the file's configs need {weights} network weights, its 'networks' section holds "
                          f"{len(sections['networks'])} bytes")
    if grid_bits > max(_MAX_GRID_BITS_PER_BYTE * len(sections["grid"]), _MIN_GRID_BITS_ALLOWED):
        raise FormatError(f"the file's hash grid needs {grid_bits} bits, its 'grid' section holds "
                          f"{len(sections['grid'])} bytes")
    n = header.get("anchors")
    total = sum(len(v) for v in sections.values())
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise FormatError(f"the file's anchor count must be a non-negative integer, got {n!r}"[:200])
    if n * _MIN_BITS_PER_ANCHOR > 8 * total:
        raise FormatError(f"the header claims {n} anchors, more than a {total}-byte file can hold")


def decode(header: dict, sections: dict[str, bytes], *, chunk: int = CHUNK, progress=None) -> Decoded:
    """Rebuild the decoded anchor model from a file's header (current format: codec/registry.py)
    and sections; `progress` hears stage "decode" as one step."""
    from ..progress import step_stage

    with step_stage(progress, "decode"):
        return _decode(header, sections, chunk)


def _decode(header: dict, sections: dict[str, bytes], chunk: int) -> Decoded:
    check_identity(header, MODE, CODEC, "an anchor-mode HAC file")
    require_sections(sections, ("locations", "networks", "grid", "mask", *GROUPS))
    _check_budget(header, sections)
    with header_fields():
        config = AnchorConfig.from_dict(dict(header["anchor_config"]))
        e = header["entropy"]
        origin = [float(v) for v in header["origin"]]
        bbox = [[float(v) for v in e[key]] for key in ("bbox_min", "bbox_max")]
        if len(origin) != 3 or any(len(b) != 3 for b in bbox):
            raise ValueError("origin and bounding box need 3 numbers each")
        if not all(math.isfinite(v) for v in origin + bbox[0] + bbox[1] + [config.voxel_size]):
            raise ValueError("origin, bounding box and voxel size must be finite")
        entropy = HacEntropyModel(int(e["feat_dim"]), int(e["k"]), bbox[0], bbox[1],
                                  HashGridConfig.from_dict(dict(e["grid"])), hidden=int(e["hidden"]))
        n_header = int(header["anchors"])
    if int(e["feat_dim"]) != config.feat_dim or int(e["k"]) != config.k:
        raise FormatError("the file's entropy and anchor configs disagree on sizes")
    coords = decode_locations(sections["locations"], max_anchors=n_header)
    n = coords.shape[0]
    if n != n_header:
        raise FormatError(f"the location stream holds {n} anchors, the header says {n_header}")
    probe = AnchorModel(config, torch.zeros((0, 3), dtype=torch.int64), torch.zeros(3), seed=0)
    unpack_networks(header, sections["networks"], [{"anchor": probe.mlps}, {"entropy": entropy.mlp}])
    grid_bits = decode_bits(sections["grid"], entropy.grid.num_bits())
    entropy.grid.load_binary_tables(torch.as_tensor(grid_bits))
    mask = decode_bits(sections["mask"], n * config.k).reshape(n, config.k).astype(bool)

    values = {}
    pos64 = _positions64(coords, origin, config.voxel_size)
    params = entropy.split(_raw_params(entropy, pos64, chunk)) if n else None
    for group in GROUPS:
        step_guard, rest = streams.split(sections[group], group)
        if n == 0:
            values[group] = np.zeros(0)
            continue
        base = BASE_STEP[group]
        p = params[group]
        q_anchor = step_values(steps_from_guard(p.step.numpy(), base, step_guard), base)
        q = np.broadcast_to(q_anchor[:, None], p.mean.shape)
        q_sel = _select(torch.as_tensor(np.ascontiguousarray(q)), group, mask)
        values[group] = streams.decode_values(rest, _select(p.mean, group, mask), _select(p.scale, group, mask),
                                              q_sel, group)
    return _assemble(config, coords, origin, mask, values, probe.mlp_state(), entropy, header)
