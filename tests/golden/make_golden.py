"""Regenerate the golden .hgs files and their checksums (tests/golden/checksums.json).

Run ONLY when the .hgs format version changes on purpose (a new FORMAT_MAJOR/MINOR in
hemgs/container.py or a new codec layout); otherwise the goldens are the proof that files written
by older builds still decode to the very same values, and regenerating them hides a break.

    OMP_NUM_THREADS=1 .venv/bin/python tests/golden/make_golden.py [NAME ...]   # NAME: only those

The models are tiny (a few hundred Gaussians of the bundled demo scene, small networks and hash
grid) so each file stays well under 30 kB. Also imported by the fuzz tests for `tiny_model`.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEMO_PLY = REPO / "data" / "demo" / "playbot_lod3.ply"
CHECKSUMS = HERE / "checksums.json"

# name -> (first Gaussian, count, seed, lambda): different parts of the scene, so the goldens
# cover different anchor layouts and mask patterns.
GOLDENS = {
    "tiny_a.hgs": (0, 300, 0, 2e-3),
    "tiny_b.hgs": (12000, 500, 1, 5e-3),
    # networks in anchor mode's quantized layout (header "networks": "quantized", codec/weights.py
    # pack_parts: the rendering MLPs and the entropy network at their own bit depths)
    "tiny_a_qnet.hgs": (0, 300, 0, 2e-3),
    # format 2 (the header names its format and every field; codec/registry.py)
    "tiny_a_f2.hgs": (0, 300, 0, 2e-3),
}
# The HEMGS codec (every part on, small networks): name -> (first Gaussian, count, seed, lambda).
GOLDENS_HEMGS = {
    "tiny_hemgs.hgs": (4000, 400, 2, 3e-3),
    "tiny_hemgs_qnet.hgs": (4000, 400, 2, 3e-3),  # quantized networks, as tiny_a_qnet.hgs
    "tiny_hemgs_f2.hgs": (4000, 400, 2, 3e-3),  # format 2
}
# Anchor goldens made before the quantized layout: float16 safetensors networks (no "networks" key).
FLOAT16_NETWORKS = {"tiny_a.hgs", "tiny_b.hgs", "tiny_hemgs.hgs"}
# Anchor-free mode (every part on, small networks): name -> (first Gaussian, count, seed, lambda).
GOLDENS_DIRECT = {
    "tiny_direct.hgs": (8000, 300, 3, 1.0),  # made before skipping: no "skips" key
    "tiny_direct_skips.hgs": (8000, 300, 3, 65536.0),  # λ far beyond the CLI range, so that many are skipped
    # SH under Laplacians, values on the grid through the predicted mean (config "laplace", "shifted")
    "tiny_direct_shifted.hgs": (8000, 300, 3, 1.0),
    # scales in ascending order with weights and step caps by rank (config "scale_ranks")
    "tiny_direct_ranks.hgs": (8000, 300, 3, 1.0),
    # networks in the quantized layout (header "networks": "quantized", codec/weights.py)
    "tiny_direct_qnet.hgs": (8000, 300, 3, 1.0),
    # SH rows that repeat an earlier Gaussian's (config "sh_repeats", section "sh_repeats"): this
    # slice of the demo holds 42 repeated rows; a low λ so that repeating pays
    "tiny_direct_rep.hgs": (8000, 300, 3, 1 / 16),
    # rotations as twist and swing (config "rotation": "swing_twist"), coded after the encoder's
    # stage balance (step biases moved in the networks)
    "tiny_direct_twist.hgs": (8000, 300, 3, 1.0),
    # position residuals coded uniformly inside their voxel (config "uniform", codec/streams.py)
    "tiny_direct_uniform.hgs": (8000, 300, 3, 1.0),
    # DC and SH coded luma first, then chroma given it (config "chain"; two streams a group)
    "tiny_direct_chain.hgs": (8000, 300, 3, 1 / 16),
    "tiny_direct_f2.hgs": (8000, 300, 3, 1 / 16),  # format 2, every part of today's default config
}


def tiny_model(start: int = 0, count: int = 300, seed: int = 0):
    """A small warm-started anchor model + entropy model of part of the demo scene (~1 s)."""
    import torch

    from hemgs.anchor.model import AnchorConfig
    from hemgs.anchor.warm_start import build_anchor_model, warm_start
    from hemgs.entropy.hac import HacEntropyModel
    from hemgs.entropy.hashgrid import HashGridConfig
    from hemgs.io import load_scene

    torch.manual_seed(seed)
    scene = load_scene(DEMO_PLY).subset(slice(start, start + count))
    # Small networks: the float16 weights are most of a tiny file's bytes.
    model = build_anchor_model(scene, AnchorConfig(feat_dim=8, k=4, hidden=8), seed=seed)
    warm_start(model, scene, steps=5, seed=seed)
    a = model.anchors
    grid = HashGridConfig(levels_3d=2, res_3d=(4, 16), log2_table_3d=6, levels_2d=1, res_2d=(8, 16),
                          log2_table_2d=6, features=2)
    entropy = HacEntropyModel(8, 4, a.min(0).values, a.max(0).values, grid, hidden=16, seed=seed)
    return model, entropy


def tiny_hemgs_model(start: int, count: int, seed: int):
    """A tiny anchor model with a small HEMGS entropy model (all parts on)."""
    from hemgs.entropy.hemgs import HemgsConfig, HemgsEntropyModel
    from hemgs.entropy.pointnet import load_scene_agnostic

    model, hac = tiny_model(start, count, seed)
    sa = load_scene_agnostic()
    cfg = HemgsConfig(feat_dim=8, k=4, prior_dim=8, ctx_dim=8, vr_hidden=8, ctx_hidden=8, sa_dim=sa.dim,
                      grid=hac.grid.config.to_dict())
    return model, HemgsEntropyModel(cfg, hac.bbox_min, hac.bbox_max, seed=seed), sa


def tiny_direct_fit(start: int, count: int, seed: int):
    """A direct-mode fit of part of the demo scene with small networks and grid (~2 s)."""
    from hemgs.direct import DirectConfig, DirectFitConfig, fit_direct
    from hemgs.io import load_scene
    from hemgs.scene import sanitize

    scene, _ = sanitize(load_scene(DEMO_PLY).subset(slice(start, start + count)))
    grid = {"levels_3d": 2, "res_3d": [4, 16], "log2_table_3d": 6, "levels_2d": 1, "res_2d": [8, 16],
            "log2_table_2d": 6, "features": 2}
    cfg = DirectConfig(prior_dim=6, hidden=6, ctx_dim=4, grid=grid)
    return fit_direct(scene, cfg, DirectFitConfig(iters=5, rows=256, seed=seed))


def decoded_checksum(decoded) -> str:
    """SHA-256 over everything a decoder rebuilds: anchor attributes, MLPs, the entropy model
    (anchor files); the decoded Gaussians (direct files)."""
    h = hashlib.sha256()
    if decoded.header.get("mode") == "direct":
        for name in ("means", "quats", "log_scales", "opacity_logits", "sh"):
            arr = getattr(decoded.scene, name)
            h.update(name.encode() + str(arr.shape).encode() + arr.tobytes())
        return h.hexdigest()
    parts = {f"attr.{k}": v for k, v in decoded.model.anchor_attributes().items()}
    parts.update({f"mlp.{k}": v for k, v in decoded.model.mlp_state().items()})
    parts.update({f"entropy.{k}": v for k, v in decoded.entropy.state_dict().items()})
    parts["coords"] = decoded.model.coords
    for name in sorted(parts):
        t = parts[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _networks(name: str) -> dict:
    """The encoder's network layout for an anchor golden: float16 for those made before the
    quantized layout, else (rendering MLPs, entropy networks) at 8 and 4 bits, the defaults
    when the quantized goldens were made."""
    return {"network_bits": None if name in FLOAT16_NETWORKS else (8, 4)}


def main(argv: list[str]) -> int:
    """Regenerate every golden, or only those named on the command line (the others keep their
    recorded checksums: adding a golden must not silently re-bless the old ones)."""
    import torch

    torch.set_num_threads(1)
    from hemgs.codec import hemgs_codec, registry
    from hemgs.codec.anchor import encode
    from hemgs.container import read_hgs, write_hgs
    from hemgs import direct

    only = set(argv)
    record = json.loads(CHECKSUMS.read_text()) if (only and CHECKSUMS.exists()) else {}
    for name, (start, count, seed, lam) in {**GOLDENS, **GOLDENS_HEMGS, **GOLDENS_DIRECT}.items():
        if only and name not in only:
            continue
        if name in GOLDENS_DIRECT:
            header, sections, _ = direct.encode(tiny_direct_fit(start, count, seed), lam=lam)
            decode_fn = registry.decode
        elif name in GOLDENS_HEMGS:
            model, entropy, sa = tiny_hemgs_model(start, count, seed)
            header, sections, _ = hemgs_codec.encode(model, entropy, sa, lam=lam, **_networks(name))
            decode_fn = registry.decode
        else:
            model, entropy = tiny_model(start, count, seed)
            header, sections, _ = encode(model, entropy, lam=lam, **_networks(name))
            decode_fn = registry.decode
        path = HERE / name
        write_hgs(path, header, sections)
        f = read_hgs(path)
        record[name] = {
            "file_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "bytes": path.stat().st_size,
            "anchors": int(header.get("anchors", header.get("gaussians", 0))),
            "version": list(f.version),
            "decoded_sha256": decoded_checksum(decode_fn(f.header, f.sections)),
        }
        print(f"{name}: {record[name]['bytes']} bytes, {record[name]['anchors']} anchors (Gaussians in direct mode)")
    CHECKSUMS.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "backend"))
    sys.exit(main(sys.argv[1:]))
