"""Trained models on disk: one safetensors file, tensors plus a JSON description, never a pickle.

Train once, export many: `hemgs train` writes this file, `hemgs compress MODEL` reads it. The
JSON (safetensors metadata key "hemgs") holds the configs and provenance; the tensors hold the
anchor model and the entropy model's state.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .anchor.model import AnchorConfig, AnchorModel
from .entropy.hac import HacEntropyModel
from .entropy.hashgrid import HashGridConfig
from .errors import FormatError, InputError
from .io.atomic import atomic_write

KIND = "hemgs-model"
FORMAT_VERSION = 1


def save_model(path, model: AnchorModel, entropy: HacEntropyModel, *, lam: float, extra: dict | None = None) -> None:
    tensors = {f"anchor.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"entropy.{k}": v.detach().cpu().contiguous() for k, v in entropy.state_dict().items()})
    meta = {
        "kind": KIND, "format": FORMAT_VERSION, "hemgs": __version__, "mode": "anchor", "codec": "hac",
        "lambda": float(lam), "anchor_config": model.config.to_dict(),
        "entropy": {"feat_dim": entropy.feat_dim, "k": entropy.k, "hidden": entropy.mlp[0].out_features,
                    "grid": entropy.grid.config.to_dict()},
        **(extra or {}),
    }
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata={"hemgs": json.dumps(meta)})


def load_model(path) -> tuple[AnchorModel, HacEntropyModel, dict]:
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
    if int(meta.get("format", 0)) > FORMAT_VERSION:
        raise FormatError(f"{path} was made by a newer hemgs (model format {meta['format']}); update hemgs")
    try:
        config = AnchorConfig.from_dict(dict(meta["anchor_config"]))
        e = meta["entropy"]
        anchor_state = {k[7:]: v for k, v in tensors.items() if k.startswith("anchor.")}
        entropy_state = {k[8:]: v for k, v in tensors.items() if k.startswith("entropy.")}
        model = AnchorModel(config, anchor_state["coords"], anchor_state["origin"], seed=None)
        model.load_state_dict(anchor_state)
        entropy = HacEntropyModel(int(e["feat_dim"]), int(e["k"]), entropy_state["bbox_min"], entropy_state["bbox_max"],
                                  HashGridConfig.from_dict(dict(e["grid"])), hidden=int(e["hidden"]))
        entropy.load_state_dict(entropy_state)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise FormatError(f"{path}: model file is incomplete or inconsistent: {' '.join(str(exc).split())[:200]}") from None
    for name, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise FormatError(f"{path}: tensor {name} holds NaN/Inf")
    return model, entropy, meta
