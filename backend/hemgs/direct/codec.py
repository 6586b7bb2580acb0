"""Anchor-free HEMGS codec: a fitted DirectEntropyModel + the scene's Gaussians <-> .hgs sections
(header mode "direct", codec "hemgs").

Order: locations (occupied voxels, coding/locations.py) and counts (Gaussians per voxel), then the
stages of attributes.STAGES, each coded group by group exactly as anchor-mode HEMGS codes its
stages (codec/hemgs_codec.py's part layout: the stage's step guard, then one stream per group).
Every distribution parameter and step goes through the exact path (float64 fixed chunks, snapped,
guarded, CRC'd), so any machine decodes the same bits.

Sections: locations, counts, networks (the quantized prior and stage networks), grid (hash-grid
bits), one per stage, and sh_repeats (which Gaussians repeat an earlier SH row, direct/repeats.py).
The scene-agnostic network is named by id in the header, as in anchor mode.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from ..codec import registry
from ..codec.layout import CHUNK, check_identity, header_fields, require_sections
from ..codec.weights import pack_quantized, quantize_weights, unpack_quantized, unpack_weights
from ..coding.bits import decode_bits, encode_bits
from ..coding.locations import decode_locations, encode_locations
from ..entropy.context import num_groups
from ..errors import FormatError, HemgsError, InputError
from ..scene import GaussianScene
from .attributes import GEOM_WEIGHT, IMPORTANCE_OFFSET, coding_log_weights, scene_from_vectors, swing_target
from .fit import DirectFitted
from .memory import release
from .geometry import MAX_LATTICE_BITS, Frame, decode_counts, encode_counts, layout_from_counts
from .model import LAMBDA_UNIT, DirectConfig, DirectEntropyModel
from .prepare import Prepared, prepare
from .stages import choose_values, decode_stages, encode_stages, min_position_steps
from .stages import LATTICE_STEP, SKIP_LOGIT  # noqa: F401 (the format's constants; docs/hgs-format.md names them here)
from . import balance, repeats

MODE = "direct"
CODEC = "hemgs"
NETWORKS_LAYOUT = "quantized"  # codec/weights.py: pack_quantized
MAX_PER_VOXEL = 64  # Gaussians a voxel may hold on average (bounds a lying header's count)
MAX_GAUSSIANS = 1 << 26
# Bits a Gaussian's later stages cost, for the skip decision (calibrated on playbot_lod3 and
# biker: docs/direct-mode.md); the distortion of skipping is the opacity weight of losing all α.
# A skipped Gaussian decodes transparent (stages.SKIP_LOGIT).
SKIP_BITS = 6.0


@dataclass
class DecodedDirect:
    """A decoded anchor-free file: plain 3DGS Gaussians (codec/registry.py's Decoded)."""
    scene: GaussianScene
    header: dict
    context_counts: np.ndarray | None = None  # context voxels per coded voxel (paper Table 4)
    values: dict | None = None  # the decoded stage values, coding order

    def gaussians(self, sh_degree: int | None = None) -> GaussianScene:
        """The decoded Gaussians at the file's SH degree; a lower `sh_degree` truncates their
        bands, a higher one keeps the file's (no coefficients are made up)."""
        if sh_degree is not None and sh_degree < self.scene.sh_degree:
            return self.scene.with_sh_degree(sh_degree)
        return self.scene

    def renderer(self, device=None):
        from ..render import render

        scene = self.scene
        return lambda cam: render(scene, cam, device=device or "auto")


def skip_decisions(importance: np.ndarray, lam: float) -> np.ndarray:
    """Which Gaussians the encoder leaves out (True = skipped), from `importance` in the coded
    stage's log2 units (the encoder passes each one's best view, DirectFitted.skip_importance, so
    a Gaussian one side needs is kept): those whose loss of all opacity
    (distortion GEOM_WEIGHT["opacity"]·V, the opacity stage's weight for Δα = α) costs less than
    SKIP_BITS bits at rate λ, the fit's trade-off: bits + distortion / (λ·LAMBDA_UNIT).
    Not simply every Gaussian no sampled view shows (V < 2^-30): on biker those are 15.6%, and
    leaving them all out cost 1.2 dB at λ = 1/16 (the 16 evaluation views at 256² see some of
    them), which made the file at SOG's PSNR larger, not smaller."""
    imp = np.asarray(importance, dtype=np.float64).reshape(-1)
    return imp < math.log2(lam * LAMBDA_UNIT * SKIP_BITS / GEOM_WEIGHT["opacity"]) + IMPORTANCE_OFFSET


def _skip_values(values: dict, lam: float, skip_importance: np.ndarray) -> dict:
    """The encoder's values with the skip decisions made (on `skip_importance`, DirectFitted's):
    importance 0 for a skipped Gaussian, at least 1 for a kept one (0 is what the decoder reads as
    skipped)."""
    imp = np.asarray(values["importance"], dtype=np.float64)
    skip = skip_decisions(skip_importance, lam)
    out = dict(values)
    out["importance"] = np.where(skip[:, None], 0.0, np.maximum(imp, 1.0))
    return out


def encode(fitted: DirectFitted, *, lam: float, header_extra: dict | None = None,
           chunk: int = CHUNK, rdoq: bool = True, balance: bool = True,
           progress=None) -> tuple[dict, dict[str, bytes], DecodedDirect]:
    """Code the fitted scene at rate `lam`. Returns (header, sections, what the file decodes to).
    `rdoq` False turns the encoder's rate-distortion decisions off: every value is rounded to its
    nearest step (instead of choosing by rate and distortion) and no Gaussian is skipped.
    `balance`: measure how much each stage's coded values move the renders and code again with
    the stages' weights evened out (direct/balance.py; with `rdoq` only). `progress(stage, step,
    total, info)` hears the balance's renders ("balance") and the coding ("code")."""
    if isinstance(lam, bool) or not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam > 0):
        raise InputError(f"λ must be a positive number, got {lam}")
    factors = _balanced_factors(fitted, float(lam), chunk, progress) if balance and rdoq and fitted.prep.n else None
    if progress is None:  # (the call as before: tests spy on _encode's arguments)
        return _encode(fitted, float(lam), header_extra, chunk, rdoq, factors)
    return _encode(fitted, float(lam), header_extra, chunk, rdoq, factors, progress=progress)


def _balanced_factors(fitted: DirectFitted, lam: float, chunk: int, progress=None) -> dict[str, float]:
    """The stage balance's weight factors: measured balance.BALANCE_PASSES times, each time on
    the values coded with the previous factors."""
    factors, views = None, balance.Views(_source(fitted), progress)
    for _ in range(balance.BALANCE_PASSES):
        dec = _approximate_values(fitted, lam, factors)
        release()
        if dec is None:  # (with the AR context: a full coding pass)
            dec = _encode(fitted, lam, None, chunk, True, factors)[2].values
        factors = _balance(fitted, dec, lam, views)
        del dec
        release()  # the renders' and the approximate pass's buffers
    return factors


class _LogWeights(Mapping):
    """The log weights the encoder rounds with, per stepped stage: the coding weights of the true
    values (attributes.coding_log_weights) times the stage balance's factor. Each stage's are
    computed when asked for and not kept (the stages are coded one at a time: only the one being
    coded holds its (N, dim) weights)."""

    def __init__(self, model: DirectEntropyModel, values: dict, prep: Prepared, factors: dict[str, float] | None,
                 dilation: float = 0.0):
        self.cfg, self.factors, self.dilation = model.cfg, factors or {}, dilation
        self.stages = [s for s, st in model.stages.items() if not st.fixed_step]
        self.true = {k: torch.from_numpy(np.asarray(v, dtype=np.float64)) for k, v in values.items()}
        self.log_rho = math.log(prep.frame.rho)

    def __getitem__(self, s: str) -> np.ndarray:
        if s not in self.stages:
            raise KeyError(s)
        cfg = self.cfg
        out = coding_log_weights(s, self.true, self.log_rho, cfg.scale_ranks, cfg.swing_twist, self.dilation).numpy()
        out += math.log(self.factors.get(s, 1.0))  # (in place: a new array from coding_log_weights)
        return out

    def __contains__(self, s) -> bool:
        return s in self.stages

    def __iter__(self):
        return iter(self.stages)

    def __len__(self) -> int:
        return len(self.stages)


def _encoder_log_weights(model: DirectEntropyModel, values: dict, prep: Prepared,
                         factors: dict[str, float] | None, dilation: float = 0.0) -> Mapping[str, np.ndarray]:
    """The log weights the encoder rounds with, per stepped stage (_LogWeights: made per stage
    when asked for)."""
    return _LogWeights(model, values, prep, factors, dilation)


def _with_factors(model: DirectEntropyModel, factors: dict[str, float] | None) -> DirectEntropyModel:
    """A copy of `model` whose stages' steps follow the balance's weight factors: a stage weighted
    k times more takes steps 1/√k as large (through its step bias, which the file's networks carry)."""
    model = copy.deepcopy(model).cpu()
    with torch.no_grad():
        for s, k in (factors or {}).items():
            model.stages[s].step_bias -= 0.5 * math.log(k)
    return model


def _approximate_values(fitted: DirectFitted, lam: float,
                        factors: dict[str, float] | None = None) -> dict[str, np.ndarray] | None:
    """Nearly what a file at `lam` (coded with the balance's `factors`) decodes to, for the stage
    balance: the encoder's rounding from one float32 pass of the model (no exact path, no SH
    repeats, no entropy coding: a third of a coding pass's time). None with the AR context (that
    needs the decoded neighbours, group by group)."""
    prep = fitted.prep
    if any(st.use_ctx for st in fitted.model.stages.values()):
        return None
    model = _with_factors(fitted.model, factors) if factors else fitted.model
    cfg = model.cfg
    log_w = _encoder_log_weights(model, fitted.values, prep, factors, fitted.dilation)
    with torch.no_grad():
        sa = prep.sa_feat.float() if prep.sa_feat is not None else None
        prior = model.prior(model.hyper(model.grid(prep.xyz01.float()), sa))[torch.as_tensor(prep.layout.voxel_of)]
        dec: dict[str, torch.Tensor] = {}
        for s, st in model.stages.items():
            earlier = torch.cat([dec[t] for t, _ in st.earlier], 1) if st.earlier else prior.new_zeros((prep.n, 0))
            q = torch.exp(st.log_steps(prior, earlier, lam))
            floor = min_position_steps(prep) if s == "position" else None
            if floor is not None:
                q = torch.maximum(q, torch.as_tensor(floor, dtype=q.dtype))
            mean, scale = (v.double().numpy() for v in st.params(prior, earlier, None))
            q = q.double().numpy()
            x = np.asarray(fitted.values[s], dtype=np.float64)
            half = prep.frame.residual_half if st.family == "uniform" else None

            def rest(x0, st=st, earlier=earlier):
                return tuple(v.double().numpy() for v in st.params_rest(prior, earlier, None, torch.as_tensor(x0, dtype=torch.float32)))

            x = (choose_values(s, st, x, mean, scale, q, log_w.get(s), lam, cfg.swing_twist, half, rest, dists=False)[0]
                 if s in log_w else np.rint(x))
            dec[s] = torch.as_tensor(x, dtype=torch.float32)
    return {s: v.double().numpy() for s, v in dec.items()}


def _source(fitted: DirectFitted) -> GaussianScene:
    """The source as the encoder holds it: coding order, canonical orientation."""
    prep, cfg = fitted.prep, fitted.model.cfg
    return scene_from_vectors(fitted.values, prep.centres, prep.frame.rho, fitted.sh_degree, cfg.swing_twist)


def _balance(fitted: DirectFitted, dec: dict[str, np.ndarray], lam: float,
             views: balance.Views | None = None) -> dict[str, float]:
    """Weight factors per stage from renders of the source with each stage decoded (balance.py)."""
    prep, cfg = fitted.prep, fitted.model.cfg
    true = fitted.values
    views = views or balance.Views(_source(fitted))
    source = views.source
    live = ~skip_decisions(fitted.skip_importance(), lam)
    decoded = scene_from_vectors(dec, prep.centres, prep.frame.rho, fitted.sh_degree, cfg.swing_twist)
    decoded.means = prep.frame.snap(decoded.means)
    dec = dict(dec)
    # positions as decoded, after the snap to the source's lattice
    dec["position"] = (decoded.means - prep.centres) / prep.frame.rho
    if cfg.swing_twist:  # the swing was coded against the decoded twist
        true = {**true, "rotation": swing_target(true["rotation"], dec["rotation"][:, 0])}
    t = {k: torch.from_numpy(np.asarray(v, dtype=np.float64)) for k, v in true.items()}
    modelled = {}
    for s in cfg.dims:
        if s == "importance":
            continue
        w = np.exp(coding_log_weights(s, t, math.log(prep.frame.rho), cfg.scale_ranks, cfg.swing_twist,
                                      fitted.dilation).numpy())
        modelled[s] = float((w[live] * (dec[s][live] - true[s][live]) ** 2).sum())
    return balance.balance_factors(balance.stage_errors(source, decoded, live, views), modelled)


def _encode(fitted: DirectFitted, lam: float, header_extra: dict | None, chunk: int, rdoq: bool,
            factors: dict[str, float] | None, progress=None) -> tuple[dict, dict[str, bytes], DecodedDirect]:
    prep, cfg = fitted.prep, fitted.model.cfg
    layout = prep.layout
    model = _with_factors(fitted.model, factors)
    quantize_weights(model.networks())
    n, m = prep.n, layout.coords.shape[0]
    if n > MAX_GAUSSIANS or n > MAX_PER_VOXEL * max(m, 1):
        raise InputError(f"{n:,} Gaussians in {m:,} voxels: too many share a position (at most "
                         f"{MAX_PER_VOXEL} per voxel on average); remove duplicates first")
    loc, order = encode_locations(layout.coords.astype(np.uint16))
    if m and not np.array_equal(order, np.arange(m)):
        raise HemgsError("internal: voxels are not in the location coder's order")
    header = {
        **registry.get(MODE, CODEC).identity(), "lambda": float(lam), "gaussians": int(n), "voxels": int(m),
        "sh_degree": int(fitted.sh_degree), **prep.frame.to_header(), "direct": cfg.to_dict(),
        "scene_agnostic": fitted.sa_id if cfg.scene_agnostic else None,
        "skips": bool(rdoq),  # importance 0 = skipped
        "networks": NETWORKS_LAYOUT,
        # where the importance was measured (information only: "cameras" = coded for the scene's own)
        "importance_views": fitted.views,
        **(header_extra or {}),
    }
    sections = {
        "locations": loc,
        "counts": encode_counts(layout.counts),
        "networks": pack_quantized(model.networks()),
        "grid": encode_bits(model.grid.binary_tables().numpy()),
    }
    # the encoder's decisions for the whole file: skips, and the weights it rounds with
    values, log_w = fitted.values, {}
    if rdoq and n:
        values = _skip_values(fitted.values, float(lam), fitted.skip_importance())
        log_w = _encoder_log_weights(model, values, prep, factors, fitted.dilation)
    dec, stage_sections = encode_stages(model, prep, float(lam), chunk, values, log_w, skips=bool(rdoq),
                                        progress=progress)
    sections.update(stage_sections)
    return header, sections, _assemble(dec, prep, cfg, header)


def _assemble(dec: dict, prep: Prepared, cfg: DirectConfig, header: dict) -> DecodedDirect:
    sh_degree = cfg.sh_degree
    if prep.n == 0:
        scene = GaussianScene(np.zeros((0, 3)), np.zeros((0, 4)), np.zeros((0, 3)), np.zeros(0),
                              np.zeros((0, (sh_degree + 1) ** 2, 3)))
    else:
        scene = scene_from_vectors(dec, prep.centres, prep.frame.rho, sh_degree, cfg.swing_twist)
        scene.means = prep.frame.snap(scene.means)
    scene.meta.update({"format": "hgs", "mode": MODE})
    counts = prep.selection.count[prep.layout.voxel_of] if prep.selection is not None else None
    return DecodedDirect(scene, header, counts, dec)


@dataclass
class _FileHeader:
    cfg: DirectConfig
    frame: Frame
    lam: float
    gaussians: int
    voxels: int
    networks: str  # the networks section's layout
    skips: bool  # importance 0 means skipped


def _read_header(header: dict) -> _FileHeader:
    """The header's fields (current format: older ones pass through codec/legacy.py), checked."""
    with header_fields():
        cfg = DirectConfig.from_untrusted(header["direct"])
        num_groups(cfg.groups)
        origin = [float(v) for v in header["origin"]]
        span, lam = float(header["span"]), float(header["lambda"])
        ints = [header[k] for k in ("voxel_bits", "gaussians", "voxels", "sh_degree")]
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in ints):
            raise ValueError("voxel_bits, gaussians, voxels and sh_degree must be non-negative integers")
        bits, n, m, deg = ints
        if len(origin) != 3 or not all(math.isfinite(v) for v in origin + [span, lam]) or span <= 0 or lam <= 0:
            raise ValueError("origin, span and λ must be finite (span, λ > 0)")
        if not 0 <= bits <= 16 or deg != cfg.sh_degree:
            raise ValueError("voxel_bits must be 0..16 and sh_degree must match the config")
        lattice = header["position_lattice"]
        if lattice is not None and (isinstance(lattice, bool) or not isinstance(lattice, int)
                                    or not 0 <= lattice <= MAX_LATTICE_BITS):
            raise ValueError(f"position_lattice must be an integer in [0, {MAX_LATTICE_BITS}]")
        log_lat = header["position_log_lattice"]
        if log_lat is not None:
            if not isinstance(log_lat, list) or len(log_lat) != 3 or not all(
                    isinstance(r, list) and len(r) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                                  for v in r) for r in log_lat):
                raise ValueError("position_log_lattice must be 3 pairs of numbers")
            log_lat = np.asarray(log_lat, dtype=np.float64)
            if not np.isfinite(log_lat).all() or not (log_lat[:, 1] > log_lat[:, 0]).all() or lattice is not None:
                raise ValueError("position_log_lattice must hold finite ranges (low < high), without position_lattice")
        networks, skips = header["networks"], header["skips"]
        if not isinstance(skips, bool):
            raise ValueError("'skips' must be true or false")
    if networks not in (NETWORKS_LAYOUT, "float16"):
        raise FormatError(f"the file's networks are in an unknown layout {str(networks)[:40]!r}")
    frame = Frame(np.asarray(origin, dtype=np.float64), span, bits, lattice, log_lat)
    return _FileHeader(cfg, frame, lam, n, m, networks, skips)


def decode(header: dict, sections: dict[str, bytes], *, chunk: int = CHUNK, sa=None, progress=None) -> DecodedDirect:
    """Rebuild the decoded scene from an anchor-free file's header and sections; `progress(stage,
    step, total, info)` hears "decode" per stage."""
    check_identity(header, MODE, CODEC, "an anchor-free HEMGS file")
    h = _read_header(header)
    cfg, frame, n, m = h.cfg, h.frame, h.gaussians, h.voxels
    needed = (repeats.SECTION,) if cfg.sh_repeats and repeats.STAGE in cfg.dims else ()
    require_sections(sections, ("locations", "counts", "networks", "grid", *cfg.dims, *needed))
    if n > MAX_GAUSSIANS or n > MAX_PER_VOXEL * max(m, 1) or m > n:
        raise FormatError(f"the header's counts are impossible: {n} Gaussians in {m} voxels")
    if cfg.scene_agnostic:
        from ..entropy.pointnet import prior_for_file

        sa = prior_for_file(header, cfg.sa_dim, sa)
    coords = decode_locations(sections["locations"], max_anchors=m).astype(np.int64)
    if coords.shape[0] != m:
        raise FormatError(f"the location stream holds {coords.shape[0]} voxels, the header says {m}")
    if m and coords.max() >= (1 << frame.bits):
        raise FormatError(f"a voxel lies outside the header's {frame.bits}-bit grid")
    counts = decode_counts(sections["counts"], n, m) if n else np.zeros(0, np.int64)
    model = DirectEntropyModel(cfg, math.log(frame.rho))
    unpack = unpack_quantized if h.networks == NETWORKS_LAYOUT else unpack_weights
    unpack(sections["networks"], model.networks())
    model.grid.load_binary_tables(torch.as_tensor(decode_bits(sections["grid"], model.grid.num_bits())))
    prep = prepare(frame, layout_from_counts(coords, counts), cfg, sa)
    dec = decode_stages(model, prep, h.lam, chunk, sections, skips=h.skips, progress=progress)
    return _assemble(dec, prep, cfg, header)
