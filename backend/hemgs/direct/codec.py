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
from dataclasses import dataclass

import numpy as np
import torch

from ..codec import streams
from ..codec.anchor import CHUNK
from ..codec.hemgs_codec import read_part, write_part
from ..codec.weights import pack_quantized, quantize_weights, unpack_quantized, unpack_weights
from ..coding.bits import decode_bits, encode_bits
from ..coding.exact_params import run_deterministic
from ..coding.gaussian_coder import estimate_bits
from ..coding.locations import decode_locations, encode_locations
from ..coding.steps import snap_steps, step_values, steps_from_guard
from ..entropy.ar import pack_context
from ..entropy.context import num_groups
from ..errors import FormatError, HemgsError, InputError
from ..scene import GaussianScene
from .attributes import (GEOM_WEIGHT, IMPORTANCE_OFFSET, coding_log_weights, scene_from_vectors, swing_target,
                         twist_nearest)
from .fit import DirectFitted
from .geometry import MAX_LATTICE_BITS, Frame, decode_counts, encode_counts, layout_from_counts
from .model import LAMBDA_UNIT, DirectConfig, DirectEntropyModel
from .prepare import Prepared, prepare
from . import balance, repeats

MODE = "direct"
CODEC = "hemgs"
NETWORKS_LAYOUT = "quantized"  # codec/weights.py: pack_quantized
STEP_BASE = 1.0
MAX_PER_VOXEL = 64  # Gaussians a voxel may hold on average (bounds a lying header's count)
MAX_GAUSSIANS = 1 << 26
# Skipped Gaussians (the encoder's choice, see `skip_decisions`): coded importance 0, nothing else
# coded; they decode transparent, with each later stage's mean value, so the count and the order
# of the source's Gaussians stay as they were.
SKIP_LOGIT = -12.0  # α ≈ 6e-6: below every renderer's cut-off (1/255)
# Bits a Gaussian's later stages cost, for the skip decision (calibrated on playbot_lod3 and
# biker: docs/direct-mode.md); the distortion of skipping is the opacity weight of losing all α.
SKIP_BITS = 6.0
# The smallest position step on a source's lattice, in lattice spacings: below 1 so that a step
# snapped to the step grid (2^(1/16) apart) still keeps errors within half a spacing.
LATTICE_STEP = 0.95


@dataclass
class DecodedDirect:
    scene: GaussianScene
    header: dict
    context_counts: np.ndarray | None = None  # context voxels per coded voxel (paper Table 4)
    values: dict | None = None  # the decoded stage values, coding order


def _run(fn, x: torch.Tensor, chunk: int) -> torch.Tensor:
    # Small batches use the smallest power-of-two chunk that holds them (both sides see the same rows).
    c = min(chunk, max(64, 1 << max(0, int(x.shape[0]) - 1).bit_length()))
    return run_deterministic(fn, x, chunk=c)


def _prior(e64: DirectEntropyModel, prep: Prepared, chunk: int) -> torch.Tensor:
    m = prep.xyz01.shape[0]
    if m == 0:
        return torch.zeros((0, e64.cfg.prior_dim), dtype=torch.float64)
    grid = run_deterministic(e64.grid, prep.xyz01, chunk=chunk)
    return _run(e64.prior, e64.hyper(grid, prep.sa_feat), chunk)[torch.as_tensor(prep.layout.voxel_of)]


def _rd_round(x: np.ndarray, mean: np.ndarray, scale: np.ndarray, q: np.ndarray, log_w: np.ndarray,
              lam: float, family: str = "gaussian", shifted: bool = False) -> np.ndarray:
    """Encoder-side rate-distortion rounding: of the two grid points around each value, the one
    with the lower bits + w·error²/(λ·u) (the fit's loss), bits under the element's model. The
    decoder is unchanged: it only ever sees symbols. Returns the chosen values (symbol × q)."""
    m, sd = mean / q, scale / q
    shift = m if shifted else 0.0
    t = x / q - shift
    lo = np.floor(t)
    k = np.exp(log_w) * q * q / (lam * LAMBDA_UNIT)
    j_lo = estimate_bits(lo, m - shift, sd, family) + k * (t - lo) ** 2
    j_hi = estimate_bits(lo + 1, m - shift, sd, family) + k * (lo + 1 - t) ** 2
    return (np.where(j_lo <= j_hi, lo, lo + 1) + shift) * q


def _rd_cost(x: np.ndarray, x_hat: np.ndarray, mean: np.ndarray, scale: np.ndarray, q: np.ndarray,
             log_w: np.ndarray, lam: float, family: str, shifted: bool) -> np.ndarray:
    """Per element: bits of coding x as x_hat under the element's model + w·error²/(λ·u), the
    trade-off `_rd_round` makes (x_hat on the element's grid)."""
    m, sd = mean / q, scale / q
    shift = m if shifted else 0.0
    bits = estimate_bits(np.rint(x_hat / q - shift), m - shift, sd, family).reshape(x.shape)
    return bits + np.exp(log_w) * (x_hat - x) ** 2 / (lam * LAMBDA_UNIT)


def _round_stage(stage: str, st, true: np.ndarray, mean: np.ndarray, scale: np.ndarray, q: np.ndarray,
                 log_w: np.ndarray | None, lam: float, swing_twist: bool,
                 half_range: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The encoder's choice of values for one stage's rows (N, dim): rate-distortion rounding where
    `log_w` is given, else the values as they are (the coder takes the nearest step). Returns
    (values, the true values they stand for): with rotations as twist and swing, the twist is
    rounded first and the swing re-expressed against it (attributes.swing_target). A stage coded
    uniformly (`half_range`: its bound) costs the same bits at every step of its range: the nearest."""
    if st.family == "uniform":
        shift = mean / q if st.shifted else 0.0
        lo, hi = streams.uniform_range(half_range, q, shift, stage, InputError)
        return (np.clip(np.rint(true / q - shift), lo, hi) + shift) * q, true

    def rd(x, cols):
        if log_w is None:
            return x
        return _rd_round(x.reshape(-1), mean[:, cols].reshape(-1), scale[:, cols].reshape(-1), q[:, cols].reshape(-1),
                         log_w[:, cols].reshape(-1), lam, st.family, st.shifted).reshape(x.shape)

    if not (stage == "rotation" and swing_twist):
        return rd(true, slice(None)), true
    shift = mean[:, 0] / q[:, 0] if st.shifted else 0.0
    near = twist_nearest(true[:, :1], mean[:, :1])[0]  # the twist (mod π) nearest the predicted one
    theta = (np.rint(rd(near, slice(0, 1))[:, 0] / q[:, 0] - shift) + shift) * q[:, 0]  # as it decodes
    target = swing_target(true, theta)
    return np.concatenate([theta[:, None], rd(target[:, 1:], slice(1, None))], axis=1), target


def _choose(stage: str, st, true: np.ndarray, mean: np.ndarray, scale: np.ndarray, q: np.ndarray,
            log_w: np.ndarray | None, lam: float, swing_twist: bool, half: float | None,
            rest=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The encoder's values for one stage's rows and the distributions they are coded under:
    (values, the true values they stand for, mean, scale), every channel. `mean`, `scale` are the
    head's: of the first part for a chained stage, whose rest's distribution `rest(first values)`
    gives (mean, scale) once the first part is rounded."""
    if st.rest is None:
        return (*_round_stage(stage, st, true, mean, scale, q, log_w, lam, swing_twist, half), mean, scale)
    p0, p1 = st.first, st.rest
    cols = (lambda c: log_w[:, c]) if log_w is not None else (lambda c: None)
    x0 = _round_stage(stage, st, true[:, p0], mean, scale, q[:, p0], cols(p0), lam, swing_twist, half)[0]
    m1, s1 = rest(x0)
    x1 = _round_stage(stage, st, true[:, p1], m1, s1, q[:, p1], cols(p1), lam, swing_twist, half)[0]
    return st.assemble(x0, x1), true, st.assemble(mean, m1), st.assemble(scale, s1)


def _split_params(res: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    k = res.shape[1] // 2
    return res[:, :k], res[:, k:]


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


def _code_stages(e64: DirectEntropyModel, prep: Prepared, lam: float, chunk: int, *,
                 values: dict | None = None, sections: dict | None = None, rdoq: bool = True,
                 skips: bool = True, factors: dict[str, float] | None = None, progress=None) -> tuple[dict, dict]:
    """Encode (values given) or decode (sections given) every stage, group by group. With `skips`
    a Gaussian whose importance decodes to 0 is coded no further: its later stages hold
    SKIP_LOGIT (opacity) or the stage's `norm_mean`, the same on both sides. `progress(stage,
    step, total, info)` hears "code" or "decode" per stage."""
    n = prep.n
    live = np.ones(n, dtype=bool)
    log_w = _encoder_log_weights(e64, values, prep, factors) if values is not None and rdoq and n else {}
    prior = _prior(e64, prep, chunk)
    dec: dict[str, np.ndarray] = {}
    out: dict[str, bytes] = {}
    for s, st in e64.stages.items():
        a = st.dim
        earlier = (np.concatenate([dec[t] for t, _ in st.earlier], axis=1) if st.earlier else np.zeros((n, 0)))
        base_in = torch.cat([prior, torch.from_numpy(earlier)], dim=1)
        q_raw = _run(st.step_rows(lam), base_in, chunk).numpy().reshape(-1) if n else np.zeros(0)
        spacing = prep.frame.spacing(prep.centres) if s == "position" else None
        if spacing is not None:
            # no finer than the source's lattice: within half its spacing the snap is exact
            q_raw = np.maximum(q_raw.reshape(n, a), LATTICE_STEP * spacing / prep.frame.rho).reshape(-1)
        if values is not None:
            idx, guard = snap_steps(q_raw, STEP_BASE)
            group_streams = []
        else:
            guard, readers = read_part(sections[s], s, prep.n_groups * (1 if st.rest is None else 2))
            idx = steps_from_guard(q_raw, STEP_BASE, guard)
        q = step_values(idx, STEP_BASE).reshape(n, a)
        half = prep.frame.residual_half if st.family == "uniform" else None
        cur = np.zeros((n, a))
        if not st.fixed_step:
            cur[~live] = SKIP_LOGIT if s == "opacity" else st.norm_mean.numpy()
        palette = repeats.Palette(n, a) if s == repeats.STAGE and e64.cfg.sh_repeats else None
        rep_records, rep_pos = [], 0
        for g in range(prep.n_groups):
            rows = np.flatnonzero(prep.groups == g)
            if not st.fixed_step:
                rows = rows[live[rows]]
            x = [base_in[rows]]
            if st.use_ctx and rows.size:
                crow, off, ok = prep.context_rows(rows)
                neigh = cur[crow] * ok[..., None]
                x.append(pack_context(torch.from_numpy(neigh), torch.from_numpy(off), torch.from_numpy(ok)))
            head_in = torch.cat(x, dim=1)
            n_first = a if st.rest is None else len(st.first)
            res = _run(st.head_rows, head_in, chunk).numpy() if rows.size else np.zeros((0, 2 * n_first))
            mean0, scale0 = _split_params(res)  # (the first part's, for a chained stage)
            qg = q[rows]
            what = f"{s} (group {g})"

            def rest(x0, sel=slice(None)):  # a chained stage's rest, given its first part's values
                if not x0.shape[0]:
                    return np.zeros((0, a - n_first)), np.zeros((0, a - n_first))
                rows_in = torch.cat([head_in[sel], torch.from_numpy(np.ascontiguousarray(x0, dtype=np.float64))], 1)
                return _split_params(_run(st.rest_rows, rows_in, chunk).numpy())

            if values is not None:
                lw = log_w[s][rows] if s in log_w else None
                x, true, mean, scale = _choose(s, st, values[s][rows], mean0, scale0, qg, lw, lam, e64.cfg.swing_twist,
                                               half, rest)
            rep = np.zeros(rows.size, dtype=bool)
            if palette is not None and values is not None:
                wsum = np.exp(lw).sum(1) if s in log_w else np.zeros(rows.size)
                entry, owner, total = palette.references(true, wsum)
                if s in log_w and rows.size:
                    # repeat where the index and the referenced row's error cost less than coding
                    # the row; the reference is an earlier group's row or this group's weightiest
                    # of its kind
                    lead = total > wsum
                    if lead.any():  # rows others may repeat: their error counts for those too
                        lw2 = lw[lead] + np.log(total[lead] / wsum[lead])[:, None]
                        sel = torch.from_numpy(lead)
                        x[lead], _, mean[lead], scale[lead] = _choose(
                            s, st, true[lead], mean0[lead], scale0[lead], qg[lead], lw2, lam, e64.cfg.swing_twist,
                            half, lambda x0: rest(x0, sel))
                    ref = np.where((entry >= 0)[:, None], palette.entries[np.maximum(entry, 0)], x[np.maximum(owner, 0)])
                    d_rep = (np.exp(lw) * (ref - true) ** 2).sum(1) / (lam * LAMBDA_UNIT)
                    keep = _rd_cost(true, x, mean, scale, qg, lw, lam, st.family, st.shifted).sum(1)
                    rep = ((entry >= 0) | (owner >= 0)) & (math.log2(palette.size + rows.size) + d_rep < keep)
            elif palette is not None:
                rep, index, rep_pos = repeats.decode_group(sections[repeats.SECTION], rep_pos, rows.size,
                                                           palette.size, f"section {repeats.SECTION}, {what}")
            new = ~rep
            # the rows coded in full: a chained stage's first part, then its rest under the
            # distribution its decoded first part gives (the decoder's order)
            n_parts = 1 if st.rest is None else 2
            coded = []
            for j in range(n_parts):
                if j == 0:
                    cols, m_, s_ = st.first, mean0[new], scale0[new]
                else:
                    cols, (m_, s_) = st.rest, rest(coded[0], torch.from_numpy(new))
                args = (m_.reshape(-1), s_.reshape(-1), qg[new][:, cols].reshape(-1))
                if values is not None:
                    data, v = streams.encode_values(x[new][:, cols].reshape(-1), *args, b"", st.family, st.shifted, half)
                    group_streams.append(data)
                else:
                    label = what if n_parts == 1 else f"{s} ({('first', 'rest')[j]} part, group {g})"
                    v = streams.decode_values(readers[g * n_parts + j], *args, label, st.family, st.shifted, half)
                coded.append(v.reshape(-1, m_.shape[1]))
            cur[rows[new]] = coded[0] if n_parts == 1 else st.assemble(*coded)
            if palette is not None and values is None:
                palette.add(cur[rows[new]])
                cur[rows[rep]] = palette.entries[index]
            elif palette is not None:
                start = palette.size
                palette.add_owners(cur[rows[new]], true[new], wsum[new])
                in_full = start + np.cumsum(new) - 1  # the entry of each of the group's rows coded in full
                index = np.where(entry >= 0, entry, in_full[np.maximum(owner, 0)])[rep]
                rep_records.append(repeats.encode_group(rep, index, palette.size))
                cur[rows[rep]] = palette.entries[index]
        dec[s] = cur
        if progress is not None:
            progress("code" if values is not None else "decode", len(dec), len(e64.stages), {"stage": s})
        if s == "importance" and skips:
            live = cur[:, 0] >= 0.5
        if values is not None:
            out[s] = write_part(guard, group_streams)
            if palette is not None:
                out[repeats.SECTION] = b"".join(rep_records)
        elif palette is not None and rep_pos != len(sections[repeats.SECTION]):
            raise FormatError(f"section {repeats.SECTION}: {len(sections[repeats.SECTION]) - rep_pos} bytes after its last group")
    return dec, out


def _double(model: DirectEntropyModel) -> DirectEntropyModel:
    return copy.deepcopy(model).double().eval()


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
        if dec is None:  # (with the AR context: a full coding pass)
            dec = _encode(fitted, lam, None, chunk, True, factors)[2].values
        factors = _balance(fitted, dec, lam, views)
    return factors


def _encoder_log_weights(model: DirectEntropyModel, values: dict, prep: Prepared,
                         factors: dict[str, float] | None) -> dict[str, np.ndarray]:
    """The log weights the encoder rounds with, per stepped stage: the coding weights of the true
    values (attributes.coding_log_weights) times the stage balance's factor."""
    cfg = model.cfg
    true = {k: torch.from_numpy(np.asarray(v, dtype=np.float64)) for k, v in values.items()}
    log_rho = math.log(prep.frame.rho)
    return {s: coding_log_weights(s, true, log_rho, cfg.scale_ranks, cfg.swing_twist).numpy()
            + math.log((factors or {}).get(s, 1.0)) for s, st in model.stages.items() if not st.fixed_step}


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
    log_w = _encoder_log_weights(model, fitted.values, prep, factors)
    with torch.no_grad():
        sa = prep.sa_feat.float() if prep.sa_feat is not None else None
        prior = model.prior(model.hyper(model.grid(prep.xyz01.float()), sa))[torch.as_tensor(prep.layout.voxel_of)]
        dec: dict[str, torch.Tensor] = {}
        for s, st in model.stages.items():
            earlier = torch.cat([dec[t] for t, _ in st.earlier], 1) if st.earlier else prior.new_zeros((prep.n, 0))
            q = torch.exp(st.log_steps(prior, earlier, lam))
            spacing = prep.frame.spacing(prep.centres) if s == "position" else None
            if spacing is not None:
                q = torch.maximum(q, torch.as_tensor(LATTICE_STEP * spacing / prep.frame.rho, dtype=q.dtype))
            mean, scale = (v.double().numpy() for v in st.params(prior, earlier, None))
            q = q.double().numpy()
            x = np.asarray(fitted.values[s], dtype=np.float64)
            half = prep.frame.residual_half if st.family == "uniform" else None

            def rest(x0, st=st, earlier=earlier):
                return tuple(v.double().numpy() for v in st.params_rest(prior, earlier, None, torch.as_tensor(x0, dtype=torch.float32)))

            x = _choose(s, st, x, mean, scale, q, log_w.get(s), lam, cfg.swing_twist, half, rest)[0] if s in log_w else np.rint(x)
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
        w = np.exp(coding_log_weights(s, t, math.log(prep.frame.rho), cfg.scale_ranks, cfg.swing_twist).numpy())
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
        "mode": MODE, "codec": CODEC, "lambda": float(lam), "gaussians": int(n), "voxels": int(m),
        "sh_degree": int(fitted.sh_degree), **prep.frame.to_header(), "direct": cfg.to_dict(),
        "scene_agnostic": fitted.sa_id if cfg.scene_agnostic else None,
        "skips": bool(rdoq),  # importance 0 = skipped (files without the key were made before skipping)
        "networks": NETWORKS_LAYOUT,  # files without the key hold float16 safetensors
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
    values = _skip_values(fitted.values, float(lam), fitted.skip_importance()) if rdoq and n else fitted.values
    dec, stage_sections = _code_stages(_double(model), prep, float(lam), chunk, values=values, rdoq=rdoq,
                                       skips=bool(rdoq), factors=factors, progress=progress)
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


def _header(header: dict) -> tuple[DirectConfig, Frame, float, int, int, int]:
    try:
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
        lattice = header.get("position_lattice")
        if lattice is not None and (isinstance(lattice, bool) or not isinstance(lattice, int)
                                    or not 0 <= lattice <= MAX_LATTICE_BITS):
            raise ValueError(f"position_lattice must be an integer in [0, {MAX_LATTICE_BITS}]")
        log_lat = header.get("position_log_lattice")
        if log_lat is not None:
            if not isinstance(log_lat, list) or len(log_lat) != 3 or not all(
                    isinstance(r, list) and len(r) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                                  for v in r) for r in log_lat):
                raise ValueError("position_log_lattice must be 3 pairs of numbers")
            log_lat = np.asarray(log_lat, dtype=np.float64)
            if not np.isfinite(log_lat).all() or not (log_lat[:, 1] > log_lat[:, 0]).all() or lattice is not None:
                raise ValueError("position_log_lattice must hold finite ranges (low < high), without position_lattice")
    except (KeyError, TypeError, ValueError, HemgsError) as exc:
        raise FormatError(f"the file's header is incomplete or malformed: {' '.join(str(exc).split())}"[:300]) from None
    return cfg, Frame(np.asarray(origin, dtype=np.float64), span, bits, lattice, log_lat), lam, n, m, deg


def decode(header: dict, sections: dict[str, bytes], *, chunk: int = CHUNK, sa=None, progress=None) -> DecodedDirect:
    """Rebuild the decoded scene from an anchor-free file's header and sections; `progress(stage,
    step, total, info)` hears "decode" per stage."""
    if header.get("mode") != MODE or header.get("codec") != CODEC:
        raise FormatError(f"not an anchor-free HEMGS file (mode {header.get('mode')!r}, codec {header.get('codec')!r})"[:200])
    cfg, frame, lam, n, m, deg = _header(header)
    needed = (repeats.SECTION,) if cfg.sh_repeats and repeats.STAGE in cfg.dims else ()
    for name in ("locations", "counts", "networks", "grid", *cfg.dims, *needed):
        if name not in sections:
            raise FormatError(f"the file lacks its '{name}' section")
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
    layout = header.get("networks", "float16")
    if layout == NETWORKS_LAYOUT:
        unpack_quantized(sections["networks"], model.networks())
    elif layout == "float16":
        unpack_weights(sections["networks"], model.networks())
    else:
        raise FormatError(f"the file's networks are in an unknown layout {str(layout)[:40]!r}")
    model.grid.load_binary_tables(torch.as_tensor(decode_bits(sections["grid"], model.grid.num_bits())))
    prep = prepare(frame, layout_from_counts(coords, counts), cfg, sa)
    skips = header.get("skips", False)
    if not isinstance(skips, bool):
        raise FormatError("the file's header is malformed: 'skips' must be true or false")
    dec, _ = _code_stages(_double(model), prep, lam, chunk, sections=sections, skips=skips, progress=progress)
    return _assemble(dec, prep, cfg, header)
