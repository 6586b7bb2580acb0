"""HEMGS codec: AnchorModel + HemgsEntropyModel  <->  .hgs sections (codec "hemgs").

Progressive order (paper §3.2): locations; then stage A, the anchor features, conditioned on the
locations (hash grid + scene-agnostic prior) and, group by group, on the features of earlier
groups (autoregressive context); then stage B, scaling and offsets, conditioned on the locations,
each anchor's decoded feature, and the scaling/offsets of earlier groups. A group's parameters
depend only on what is already decoded, so the decoder runs one batch per group.

Sections: locations, networks (anchor MLPs, then prior, variable-rate and head networks; header
`"networks": "quantized"`: two quantized parts, the MLPs and the entropy networks, each at its own
bit depth, codec/weights.py `pack_parts`; or "float16" safetensors), grid (hash-grid bits), mask,
and one per attribute — features, scaling, offsets — each in codec/layout.py's part layout (the
part's snapped steps for all anchors, then a stream per coding group).

The scene-agnostic network is not in the file: the header names its weights' id, and a decoder
with other weights refuses the file.
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
from ..entropy.ar import pack_context
from ..entropy.context import assign_groups, num_groups, select_context
from ..entropy.hemgs import HemgsConfig, HemgsEntropyModel
from ..errors import FormatError
from . import registry, streams
from .anchor import Decoded as AnchorDecoded
from .anchor import _positions64
from .layout import CHUNK, check_identity, header_fields, read_part, require_sections, write_part
from .weights import QUANTIZED, SEARCH, pack_networks, round_networks, smallest_file, unpack_networks

MODE = "anchor"
CODEC = "hemgs"
# stage -> its coded parts: (section name, columns of the stage's attribute vector)
PARTS = {"a": (("features", None),), "b": (("scaling", (0, 6)), ("offsets", (6, None)))}


@dataclass
class Decoded(AnchorDecoded):
    entropy: HemgsEntropyModel
    context_counts: np.ndarray | None = None  # context anchors per coded anchor (paper Table 4)


def entropy_networks(ent: HemgsEntropyModel) -> dict:
    """The entropy networks stored in a file (the grid's tables are coded apart as bits)."""
    return {"prior": ent.prior, "vr": ent.vr, "head": ent.head}


class _Geometry:
    """Everything the decoder derives from the locations alone, identically on both sides."""

    def __init__(self, coords: np.ndarray, origin, voxel: float, ent: HemgsEntropyModel, sa, chunk: int):
        cfg = ent.cfg
        self.n = coords.shape[0]
        e64 = copy.deepcopy(ent).double().eval()
        self.e64, self.chunk = e64, chunk
        pos = _positions64(coords, origin, voxel)
        lo, span = e64.bbox_min, (e64.bbox_max - e64.bbox_min).clamp_min(1e-9)
        grid = run_deterministic(e64.grid, (pos - lo) / span, chunk=chunk) if self.n else torch.zeros(0, 48)
        sa_feat = sa.features(coords.astype(np.int64)) if (cfg.scene_agnostic and self.n) else None
        if cfg.scene_agnostic and not self.n:
            sa_feat = torch.zeros((0, cfg.sa_dim), dtype=torch.float64)
        self.hyper = e64.hyper(grid, sa_feat)
        if cfg.ar and self.n:
            self.groups = assign_groups(coords, cfg.groups)
            self.n_groups = num_groups(cfg.groups)
            self.sel = select_context(coords, self.groups, acs=cfg.acs, n=cfg.n_context if cfg.acs else None)
        else:
            self.groups, self.n_groups, self.sel = np.zeros(self.n, np.int64), 1, None

    def run(self, fn, x: torch.Tensor) -> torch.Tensor:
        # Small groups would be padded up to a whole chunk: use the smallest power of two that
        # holds them. Encoder and decoder see the same row counts, so they pick the same chunk.
        chunk = min(self.chunk, max(64, 1 << max(0, int(x.shape[0]) - 1).bit_length()))
        return run_deterministic(fn, x, chunk=chunk)


def _stage(geo: _Geometry, stage: str, prior: torch.Tensor, lam: float, coded: np.ndarray, *,
           values: np.ndarray | None = None, sections: dict | None = None) -> tuple[np.ndarray, dict]:
    """Encode (values given) or decode (sections given) one stage, group by group."""
    e64 = geo.e64
    n, a = coded.shape
    base = np.broadcast_to(getattr(e64, f"base_{stage}").numpy(), (n, a))
    q_raw = geo.run(lambda x: e64.steps(stage, x, lam), prior).numpy() if n else np.zeros((n, a))
    q = np.ones((n, a))
    out_sections, readers = {}, {}
    for name, cols in PARTS[stage]:
        sl = slice(*cols) if cols else slice(None)
        c = coded[:, sl]
        if values is not None:
            idx, guard = snap_steps(q_raw[:, sl][c], base[:, sl][c])
            out_sections[name] = [guard]
        else:
            guard, readers[name] = read_part(sections[name], name, geo.n_groups)
            idx = steps_from_guard(q_raw[:, sl][c], base[:, sl][c], guard)
        part_q = q[:, sl].copy()
        part_q[c] = step_values(idx, base[:, sl][c])
        q[:, sl] = part_q
    decoded = np.zeros((n, a))
    head = e64.head[stage]
    for g in range(geo.n_groups):
        rows = np.flatnonzero(geo.groups == g)
        x = prior[rows]
        if geo.sel is not None:
            ok = geo.sel.index[rows] >= 0
            neigh = decoded[np.maximum(geo.sel.index[rows], 0)] * ok[..., None]
            x = torch.cat([x, pack_context(torch.from_numpy(neigh), torch.from_numpy(geo.sel.offsets[rows]),
                                           torch.from_numpy(ok))], dim=1)
        out = geo.run(head.forward_flat, x).numpy() if rows.size else np.zeros((0, 2 * a))
        mean, scale = out[:, :a], out[:, a:]
        for name, cols in PARTS[stage]:
            sl = slice(*cols) if cols else slice(None)
            c = coded[rows][:, sl]
            args = (mean[:, sl][c], scale[:, sl][c], q[rows][:, sl][c])
            if values is not None:
                data, dec = streams.encode_values(values[rows][:, sl][c], *args, b"")
                out_sections[name].append(data)
            else:
                dec = streams.decode_values(readers[name][g], *args, f"{name} (group {g})")
            block = np.zeros((rows.size, a))[:, sl]
            block[c] = dec
            decoded[rows, sl] = block
    if values is not None:
        out_sections = {k: write_part(v[0], v[1:]) for k, v in out_sections.items()}
    return decoded, out_sections


def _stage_b_inputs(scaling: np.ndarray, offsets: np.ndarray, mask: np.ndarray, k: int):
    n = mask.shape[0]
    mask3 = np.repeat(mask, 3, axis=1)
    values = np.concatenate([scaling, offsets.reshape(n, 3 * k) * mask3], axis=1)
    coded = np.concatenate([np.ones((n, 6), bool), mask3], axis=1)
    return values, coded


SHIPPED = "shipped"  # `sa`: the scene-agnostic prior this package ships, where the config uses one


def encode(model: AnchorModel, ent: HemgsEntropyModel, sa=SHIPPED, *, lam: float, header_extra: dict | None = None,
           chunk: int = CHUNK,
           network_bits: tuple[int, int] | str | None = SEARCH) -> tuple[dict, dict[str, bytes], Decoded]:
    """Code a trained model at rate `lam`. Returns (header, sections, what the file decodes to).
    `sa`: the scene-agnostic prior (its weights travel by id); `network_bits` as
    codec/anchor.py's `encode` (its entropy part: prior, vr and head networks)."""
    if isinstance(sa, str) and sa == SHIPPED:
        from ..entropy.pointnet import load_scene_agnostic

        sa = load_scene_agnostic() if ent.cfg.scene_agnostic else None
    if network_bits == SEARCH:
        return smallest_file(lambda bits: encode(model, ent, sa, lam=lam, header_extra=header_extra, chunk=chunk,
                                                 network_bits=bits))
    model, ent = copy.deepcopy(model).cpu(), copy.deepcopy(ent).cpu()
    parts = [{"anchor": model.mlps}, entropy_networks(ent)]
    round_networks(parts, network_bits)
    coords = model.coords.numpy().astype(np.uint16)
    loc_bytes, order = encode_locations(coords)
    coords = coords[order]
    attrs = {k: v[torch.as_tensor(order)].double().numpy() for k, v in model.anchor_attributes().items()}
    mask = attrs["mask"].astype(bool)
    n, k = coords.shape[0], model.config.k
    cfg = ent.cfg
    header = {
        **registry.get(MODE, CODEC).identity(), "lambda": float(lam), "anchors": int(n),
        "anchor_config": model.config.to_dict(), "origin": [float(v) for v in model.origin.double()],
        "hemgs": cfg.to_dict(),
        "bbox_min": [float(v) for v in ent.bbox_min.double()], "bbox_max": [float(v) for v in ent.bbox_max.double()],
        "scene_agnostic": sa.id if cfg.scene_agnostic else None,
        "networks": QUANTIZED if network_bits is not None else "float16",
        **(header_extra or {}),
    }
    sections = {
        "locations": loc_bytes,
        "networks": pack_networks(parts, network_bits),
        "grid": encode_bits(ent.grid.binary_tables().numpy()),
        "mask": encode_bits(mask.reshape(-1)),
    }
    geo = _Geometry(coords, header["origin"], model.config.voxel_size, ent, sa, chunk)
    feats, secs = _stage(geo, "a", geo.run(geo.e64.prior["a"], geo.hyper), lam, np.ones((n, cfg.feat_dim), bool),
                         values=attrs["features"])
    sections.update(secs)
    values_b, coded_b = _stage_b_inputs(attrs["scaling"], attrs["offsets"], mask, k)
    prior_b = geo.run(geo.e64.prior["b"], torch.cat([geo.hyper, torch.from_numpy(feats)], dim=1))
    dec_b, secs = _stage(geo, "b", prior_b, lam, coded_b, values=values_b)
    sections.update(secs)
    return header, sections, _assemble(model.config, coords, header, mask, feats, dec_b, model.mlp_state(), ent, geo)


def _assemble(config: AnchorConfig, coords, header, mask, feats, dec_b, mlp_state, ent, geo) -> Decoded:
    n, k = coords.shape[0], int(config.k)
    attrs = {
        "features": torch.as_tensor(feats, dtype=torch.float32),
        "scaling": torch.as_tensor(dec_b[:, :6], dtype=torch.float32),
        "offsets": torch.as_tensor(dec_b[:, 6:].reshape(n, k, 3), dtype=torch.float32),
        "mask": torch.as_tensor(mask),
    }
    model = AnchorModel.from_attributes(config, torch.as_tensor(coords.astype(np.int64)),
                                        torch.as_tensor(header["origin"], dtype=torch.float32), attrs, mlp_state)
    counts = geo.sel.count if geo.sel is not None else None
    return Decoded(model, ent, header, counts)


def _header_config(header: dict) -> tuple[AnchorConfig, HemgsConfig, list, list, list, float, int]:
    with header_fields():
        config = AnchorConfig.from_dict(dict(header["anchor_config"]))
        cfg = HemgsConfig.from_untrusted(header["hemgs"])
        if cfg.feat_dim != config.feat_dim or cfg.k != config.k:
            raise ValueError("the hemgs and anchor configs disagree on sizes")
        num_groups(cfg.groups)  # validates the scheme name
        origin = [float(v) for v in header["origin"]]
        bbox = [[float(v) for v in header[key]] for key in ("bbox_min", "bbox_max")]
        lam = float(header["lambda"])
        n = header["anchors"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError("anchors must be a non-negative integer")
        if len(origin) != 3 or any(len(b) != 3 for b in bbox):
            raise ValueError("origin and bounding box need 3 numbers each")
        if not all(math.isfinite(v) for v in origin + bbox[0] + bbox[1] + [config.voxel_size, lam]) or lam <= 0:
            raise ValueError("origin, bounding box, voxel size and λ must be finite (λ > 0)")
    return config, cfg, origin, bbox[0], bbox[1], lam, n


def decode(header: dict, sections: dict[str, bytes], *, chunk: int = CHUNK, sa=None, progress=None) -> Decoded:
    """Rebuild the decoded anchor model from a HEMGS file's header (current format:
    codec/registry.py) and sections; `progress` hears stage "decode" as one step."""
    from ..progress import step_stage

    with step_stage(progress, "decode"):
        return _decode(header, sections, chunk, sa)


def _decode(header: dict, sections: dict[str, bytes], chunk: int, sa) -> Decoded:
    check_identity(header, MODE, CODEC, "a HEMGS file")
    require_sections(sections, ("locations", "networks", "grid", "mask", "features", "scaling", "offsets"))
    config, cfg, origin, lo, hi, lam, n_header = _header_config(header)
    total = sum(len(v) for v in sections.values())
    if n_header > 8 * total:
        raise FormatError(f"the header claims {n_header} anchors, more than a {total}-byte file can hold")
    if cfg.scene_agnostic:
        from ..entropy.pointnet import prior_for_file

        sa = prior_for_file(header, cfg.sa_dim, sa)
    g = cfg.grid
    grid_bits = (g["levels_3d"] * (1 << g["log2_table_3d"]) + 3 * g["levels_2d"] * (1 << g["log2_table_2d"])) * g["features"]
    if grid_bits > max(512 * len(sections["grid"]), 1 << 16):
        raise FormatError(f"the file's hash grid needs {grid_bits} bits, its 'grid' section holds {len(sections['grid'])} bytes")
    coords = decode_locations(sections["locations"], max_anchors=n_header)
    n = coords.shape[0]
    if n != n_header:
        raise FormatError(f"the location stream holds {n} anchors, the header says {n_header}")
    ent = HemgsEntropyModel(cfg, lo, hi)
    probe = AnchorModel(config, torch.zeros((0, 3), dtype=torch.int64), torch.zeros(3), seed=0)
    unpack_networks(header, sections["networks"], [{"anchor": probe.mlps}, entropy_networks(ent)])
    ent.grid.load_binary_tables(torch.as_tensor(decode_bits(sections["grid"], ent.grid.num_bits())))
    mask = decode_bits(sections["mask"], n * config.k).reshape(n, config.k).astype(bool)
    geo = _Geometry(coords, origin, config.voxel_size, ent, sa, chunk)
    feats, _ = _stage(geo, "a", geo.run(geo.e64.prior["a"], geo.hyper), lam, np.ones((n, cfg.feat_dim), bool),
                      sections=sections)
    _, coded_b = _stage_b_inputs(np.zeros((n, 6)), np.zeros((n, config.k, 3)), mask, config.k)
    prior_b = geo.run(geo.e64.prior["b"], torch.cat([geo.hyper, torch.from_numpy(feats)], dim=1))
    dec_b, _ = _stage(geo, "b", prior_b, lam, coded_b, sections=sections)
    return _assemble(config, coords, header, mask, feats, dec_b, probe.mlp_state(), ent, geo)
