"""Trained models on disk: one safetensors file, tensors plus a JSON description, never a pickle.

Train once, export many: `hemgs train` writes this file, `hemgs compress MODEL` reads it. The
JSON (safetensors metadata key "hemgs") holds the configs and provenance; the tensors hold the
anchor model and the entropy model's state.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from . import __version__
from .anchor.model import AnchorConfig, AnchorModel
from .codec.anchor import network_sizes
from .entropy.hac import HacEntropyModel
from .entropy.hemgs import HemgsConfig, HemgsEntropyModel
from .entropy.hashgrid import HashGridConfig
from .errors import FormatError, HemgsError, InputError
from .io.atomic import write_bytes_atomic

KIND = "hemgs-model"
FORMAT_VERSION = 1


def save_model(path, model: AnchorModel, entropy, *, lam: float, extra: dict | None = None) -> None:
    """`entropy` is a HacEntropyModel (codec "hac", fixed rate λ) or a HemgsEntropyModel (codec
    "hemgs"; variable-rate models serve the λ range they were trained on)."""
    tensors = {f"anchor.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"entropy.{k}": v.detach().cpu().contiguous() for k, v in entropy.state_dict().items()})
    meta = {"kind": KIND, "format": FORMAT_VERSION, "hemgs": __version__, "mode": "anchor",
            "lambda": float(lam), "anchor_config": model.config.to_dict()}
    if isinstance(entropy, HemgsEntropyModel):
        cfg = entropy.cfg
        meta.update(codec="hemgs", hemgs_config=cfg.to_dict(),
                    lambda_range=[min(cfg.lambdas), max(cfg.lambdas)] if cfg.variable_rate else [lam, lam])
    else:
        meta.update(codec="hac", lambda_range=[lam, lam],
                    entropy={"feat_dim": entropy.feat_dim, "k": entropy.k, "hidden": entropy.mlp[0].out_features,
                             "grid": entropy.grid.config.to_dict()})
    refinement = getattr(entropy, "refinement", None)  # hemgs.entropy.refine: its budget and what it gained
    if refinement is not None:
        meta["refine"] = refinement
    meta.update(extra or {})
    # Bytes through our own writer: safetensors' save_file makes its file 0600, where every other
    # output gets what a plain open() gives (0644 under the usual umask).
    write_bytes_atomic(path, save(tensors, metadata={"hemgs": json.dumps(meta)}))


def _check_budget(path: Path, meta: dict, tensors: dict) -> None:
    """Refuse configs whose networks and per-anchor arrays the file's tensors cannot hold, before
    the model is built (a lying feat_dim would otherwise allocate gigabytes of zeros)."""
    try:
        weights, grid_bits = network_sizes(meta.get("anchor_config"), meta.get("entropy"))
    except FormatError as exc:
        raise FormatError(f"{path}: {exc}") from None
    coords = tensors.get("anchor.coords")
    n = int(coords.shape[0]) if coords is not None and coords.ndim >= 1 else 0
    cfg = meta["anchor_config"]
    per_anchor = cfg["feat_dim"] + 6 + 4 * cfg["k"]  # features, scaling, offsets (3k), mask logits (k)
    need = weights + grid_bits + n * per_anchor
    have = sum(t.numel() for t in tensors.values() if t.is_floating_point())
    if need > have:
        raise FormatError(f"{path}: model configs need {need} values, the file holds {have}")


def load_model(path) -> tuple[AnchorModel, HacEntropyModel, dict]:
    """Read a trained model file (safetensors only: nothing is unpickled); FormatError if bad."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"model file not found: {path}")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta_raw = (f.metadata() or {}).get("hemgs")
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise FormatError(f"{path} is not a HEMGS model file (safetensors): {' '.join(str(exc).split())}") from None
    try:
        meta = json.loads(meta_raw) if meta_raw else None
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or meta.get("kind") != KIND:
        raise FormatError(f"{path} is a safetensors file but not a HEMGS model")
    fmt = meta.get("format", 0)
    if isinstance(fmt, bool) or not isinstance(fmt, int) or fmt < 1:
        raise FormatError(f"{path}: model file has an invalid format version {fmt!r}"[:200])
    if fmt > FORMAT_VERSION:
        raise FormatError(f"{path} was made by a newer hemgs (model format {fmt}); update hemgs")
    lam = meta.get("lambda")
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not (math.isfinite(lam) and lam > 0):
        raise FormatError(f"{path}: model file has an invalid λ {lam!r}"[:200])
    codec = meta.get("codec", "hac")
    if codec not in ("hac", "hemgs"):
        raise FormatError(f"{path}: unknown codec {codec!r} in the model file"[:200])
    if codec == "hac":
        _check_budget(path, meta, tensors)
    try:
        config = AnchorConfig.from_dict(dict(meta["anchor_config"]))
        anchor_state = {k[7:]: v for k, v in tensors.items() if k.startswith("anchor.")}
        entropy_state = {k[8:]: v for k, v in tensors.items() if k.startswith("entropy.")}
        model = AnchorModel(config, anchor_state["coords"], anchor_state["origin"], seed=None)
        model.load_state_dict(anchor_state)
        if codec == "hac":
            e = meta["entropy"]
            entropy = HacEntropyModel(int(e["feat_dim"]), int(e["k"]), entropy_state["bbox_min"],
                                      entropy_state["bbox_max"], HashGridConfig.from_dict(dict(e["grid"])),
                                      hidden=int(e["hidden"]))
        else:
            hc = meta.get("hemgs_config")
            if isinstance(hc, dict):  # model files made before the rate exponent: a fixed step base
                hc = {"rate_exponent": 0.0, **hc}
            hc = HemgsConfig.from_untrusted(hc)
            if hc.feat_dim != config.feat_dim or hc.k != config.k:
                raise ValueError("the HEMGS and anchor configs disagree on sizes")
            entropy = HemgsEntropyModel(hc, entropy_state["bbox_min"], entropy_state["bbox_max"])
        entropy.load_state_dict(entropy_state)
        if isinstance(meta.get("refine"), dict):
            entropy.refinement = meta["refine"]
        meta.setdefault("lambda_range", [float(lam), float(lam)])
    except (KeyError, TypeError, ValueError, RuntimeError, HemgsError) as exc:
        raise FormatError(f"{path}: model file is incomplete or inconsistent: {' '.join(str(exc).split())[:200]}") from None
    for name, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise FormatError(f"{path}: tensor {name} holds NaN/Inf")
    return model, entropy, meta
