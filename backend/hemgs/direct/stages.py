"""The coded stages of an anchor-free file (attributes.STAGES), group by group.

Both sides compute the same distributions from what is decoded so far (`StageParams`: a stage's
steps, and per group the means and scales, all through the exact path); the encoder's loop
(`encode_stages`) makes its choices of values under them and writes the streams, the decoder's
(`decode_stages`) reads them. The encoder's choices never change what the decoder computes:
rate-distortion rounding (`choose_values`) and SH repeats (`_RepeatChoice`) per group here; the
skip decisions and the stage balance, made once per file, in direct/codec.py.

A stage's section is codec/hemgs_codec.py's part layout: the step guard, then one stream per
group (two for a chained stage: the first part, then the rest).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..codec import streams
from ..codec.layout import read_part, write_part
from ..coding.exact_params import run_deterministic
from ..coding.gaussian_coder import BITS_BLOCK, estimate_bits
from ..coding.steps import snap_steps, step_values, steps_from_guard
from ..entropy.ar import pack_context
from ..errors import FormatError, InputError
from .attributes import swing_target, twist_nearest
from .memory import release
from .model import LAMBDA_UNIT, DirectEntropyModel, DirectStage
from .prepare import Prepared
from . import repeats

STEP_BASE = 1.0
# Skipped Gaussians (the encoder's choice, codec.skip_decisions): coded importance 0, nothing else
# coded; they decode transparent, with each later stage's mean value, so the count and the order
# of the source's Gaussians stay as they were.
SKIP_LOGIT = -12.0  # α ≈ 6e-6: below every renderer's cut-off (1/255)
# The smallest position step on a source's lattice, in lattice spacings: below 1 so that a step
# snapped to the step grid (2^(1/16) apart) still keeps errors within half a spacing.
LATTICE_STEP = 0.95


def exact_model(model: DirectEntropyModel) -> DirectEntropyModel:
    """The float64 copy both sides code with (the exact path)."""
    return copy.deepcopy(model).double().eval()


def min_position_steps(prep: Prepared) -> np.ndarray | None:
    """The position steps' floor (N, 3), no finer than the source's lattice: within half its
    spacing the snap to it is exact. None without a lattice."""
    spacing = prep.frame.spacing(prep.centres)
    return None if spacing is None else LATTICE_STEP * spacing / prep.frame.rho


def _chunk_for(rows: int, chunk: int) -> int:
    # Small batches use the smallest power-of-two chunk that holds them (both sides see the same rows).
    return min(chunk, max(64, 1 << max(0, rows - 1).bit_length()))


def _run(fn, x: torch.Tensor, chunk: int) -> torch.Tensor:
    return run_deterministic(fn, x, chunk=_chunk_for(int(x.shape[0]), chunk))


def _run_blocks(fn, make_inputs, n: int, chunk: int, split: int | None = None):
    """`_run(fn, make_inputs(slice over all n rows))`, bit for bit, with only one block of inputs
    in memory at a time: each block is exactly one padded batch of the whole run. With `split`
    k: its columns [:k] and [k:] as two contiguous arrays (a head's means and scales)."""
    c = _chunk_for(n, chunk)
    out = None
    for i in range(0, n, c):
        block = run_deterministic(fn, make_inputs(slice(i, min(i + c, n))), chunk=c).numpy()
        if out is None:  # filled in place: never the blocks and their concatenation at once
            cuts = [(0, block.shape[1])] if split is None else [(0, split), (split, block.shape[1])]
            out = [np.empty((n, b - a) + block.shape[2:], dtype=block.dtype) for a, b in cuts]
        for o, (a, b) in zip(out, cuts):
            o[i:i + block.shape[0]] = block[:, a:b]
    return out[0] if split is None else tuple(out)


def _prior(e64: DirectEntropyModel, prep: Prepared, chunk: int) -> torch.Tensor:
    """The hyperprior per voxel (M, prior_dim); a Gaussian reads its voxel's row."""
    m = prep.xyz01.shape[0]
    if m == 0:
        return torch.zeros((0, e64.cfg.prior_dim), dtype=torch.float64)
    grid = run_deterministic(e64.grid, prep.xyz01, chunk=chunk)
    return _run(e64.prior, e64.hyper(grid, prep.sa_feat), chunk)


def _mean_scale(fn, make_inputs, n: int, chunk: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A head's (mean, scale) of `k` channels each, from `_run_blocks`: two contiguous arrays."""
    if not n:
        return np.zeros((0, k)), np.zeros((0, k))
    return _run_blocks(fn, make_inputs, n, chunk, split=k)


# ---- what both sides compute ---------------------------------------------------------------------

@dataclass
class Group:
    """One coding group's rows of a stage and their distributions: `mean`, `scale` of every
    channel, or of the first part's for a chained stage (`rest` gives the rest's)."""
    index: int
    rows: np.ndarray  # coded rows (a skipped Gaussian's are left out)
    mean: np.ndarray | None  # None once used up (code_in_full)
    scale: np.ndarray | None
    steps: np.ndarray | None  # (rows, dim); None where only parts of it are needed (step_part)
    stage: "StageParams"
    step_index: np.ndarray  # (rows, dim) the steps' indices

    def step_part(self, sel, cols) -> np.ndarray:
        """`part(steps, sel, cols)`, from the step indices where the whole steps are not kept."""
        if self.steps is not None:
            return self.part(self.steps, sel, cols)
        return step_values(self.part(self.step_index, sel, cols), STEP_BASE)

    def part(self, a: np.ndarray, sel, cols) -> np.ndarray:
        """`a[sel][:, cols]` (a: one of the group's row arrays) in one copy, not two."""
        if isinstance(sel, slice):
            return a[sel, cols]
        return a[sel][:, cols] if isinstance(cols, slice) else a[np.ix_(np.flatnonzero(sel), cols)]

    def rest(self, first: np.ndarray, sel=slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """A chained stage's rest: (mean, scale) given the first part's values of rows `sel` (a
        mask or an index into the group's rows)."""
        stage = self.stage
        rest_dim = stage.dim - stage.first_dim
        if not first.shape[0]:
            return np.zeros((0, rest_dim)), np.zeros((0, rest_dim))
        rows = self.rows[np.asarray(sel)] if not isinstance(sel, slice) else self.rows[sel]
        first = np.ascontiguousarray(first, dtype=np.float64)
        return _mean_scale(stage.st.rest_rows, lambda b: torch.cat(
            [stage.head_inputs(rows[b]), torch.from_numpy(first[b])], 1), rows.size, stage.chunk, rest_dim)


class StageParams:
    """One stage as both sides see it: its network inputs from the prior and the earlier stages'
    decoded values, its raw steps, and its values as decoded so far (a skipped Gaussian's hold
    SKIP_LOGIT for opacity, else the stage's `norm_mean`, the same on both sides)."""

    def __init__(self, e64: DirectEntropyModel, prep: Prepared, lam: float, chunk: int, name: str,
                 prior: torch.Tensor, decoded: dict[str, np.ndarray], live: np.ndarray):
        st = e64.stages[name]
        n = prep.n
        self.name, self.st, self.cfg, self.prep, self.chunk, self.live = name, st, e64.cfg, prep, chunk, live
        self.dim = st.dim
        self.first_dim = st.dim if st.rest is None else len(st.first)
        self.n_parts = 1 if st.rest is None else 2
        self.half = prep.frame.residual_half if st.family == "uniform" else None  # the uniform range's bound
        self.prior, self.earlier = prior, [decoded[t] for t, _ in st.earlier]
        raw = _run_blocks(st.step_rows(lam), self.inputs, n, chunk).reshape(-1) if n else np.zeros(0)
        floor = min_position_steps(prep) if name == "position" else None
        if floor is not None:
            raw = np.maximum(raw.reshape(n, self.dim), floor).reshape(-1)
        self.raw_steps = raw  # flat, row-major: what the step guard snaps or checks
        self.values = np.zeros((n, self.dim))
        if not st.fixed_step:
            self.values[~live] = SKIP_LOGIT if name == "opacity" else st.norm_mean.numpy()

    def inputs(self, rows) -> torch.Tensor:
        """The network inputs of Gaussians `rows` (an index or a slice): their voxel's prior and
        their earlier stages' decoded values. Made per block, never for the whole scene."""
        vox = torch.as_tensor(self.prep.layout.voxel_of[rows])
        earlier = [torch.from_numpy(np.ascontiguousarray(e[rows])) for e in self.earlier]
        return torch.cat([self.prior[vox], *earlier], dim=1)

    def head_inputs(self, rows: np.ndarray) -> torch.Tensor:
        """The head's inputs of rows `rows`: `inputs`, then their packed context (the values of
        earlier groups' Gaussians, unchanged while a group is coded)."""
        parts = [self.inputs(rows)]
        if self.st.use_ctx and rows.size:
            crow, off, ok = self.prep.context_rows(rows)
            neigh = self.values[crow] * ok[..., None]
            parts.append(pack_context(torch.from_numpy(neigh), torch.from_numpy(off), torch.from_numpy(ok)))
        return torch.cat(parts, dim=1)

    def step_index(self, index: np.ndarray) -> np.ndarray:
        """The stage's step indices (N, dim), as int16 where they fit (the steps of a group are
        made from them, StageParams.group); the raw steps, used up, are dropped."""
        self.raw_steps = None
        index = index.reshape(-1, self.dim)
        if index.size and -(1 << 15) <= index.min() and index.max() < (1 << 15):
            return index.astype(np.int16)
        return index

    def palette(self) -> repeats.Palette | None:
        """The SH palette, for the stage whose rows may repeat an earlier row."""
        if self.name == repeats.STAGE and self.cfg.sh_repeats:
            return repeats.Palette(self.values)
        return None

    def group(self, g: int, step_index: np.ndarray, steps: bool = True) -> Group:
        """Group `g`'s rows and distributions, from the values decoded in earlier groups; with
        `steps`, its steps (rows, dim) too (else only their indices)."""
        st, prep = self.st, self.prep
        rows = np.flatnonzero(prep.groups == g)
        if not st.fixed_step:
            rows = rows[self.live[rows]]
        mean, scale = _mean_scale(st.head_rows, lambda b: self.head_inputs(rows[b]), rows.size, self.chunk,
                                  self.first_dim)
        index = step_index[rows]
        return Group(g, rows, mean, scale, step_values(index, STEP_BASE) if steps else None, self, index)

    def code_in_full(self, grp: Group, new: np.ndarray, code_part) -> None:
        """Code (or decode) the group's rows `new` in full and keep their values as decoded: a
        chained stage's first part, then its rest under the distribution its decoded first part
        gives (the decoder's order). `code_part(part, cols, mean, scale, steps)` codes one part
        (flat arrays) and returns its values as they decode. Uses up the group's distributions
        (grp.mean, grp.scale: None after the first part)."""
        st, parts = self.st, []
        new = slice(None) if new.all() else new  # (no copies of the group's arrays for all rows)
        for j in range(self.n_parts):
            if j == 0:
                cols, mean, scale = st.first, grp.mean[new], grp.scale[new]
                grp.mean = grp.scale = None
            else:
                cols, (mean, scale) = st.rest, grp.rest(parts[0], new)
            v = code_part(j, cols, mean.reshape(-1), scale.reshape(-1), grp.step_part(new, cols).reshape(-1))
            parts.append(v.reshape(-1, mean.shape[1]))
            del mean, scale, v
        rows = grp.rows[new]
        if self.n_parts == 1:
            self.values[rows] = parts[0]
            return
        for b in _row_blocks(rows.size, self.dim):  # (no whole assembled copy)
            self.values[rows[b]] = st.assemble(parts[0][b], parts[1][b])

    def label(self, grp: Group, part: int | None = None) -> str:
        if part is None or self.n_parts == 1:
            return f"{self.name} (group {grp.index})"
        return f"{self.name} ({('first', 'rest')[part]} part, group {grp.index})"


def _stages(model: DirectEntropyModel, prep: Prepared, lam: float, chunk: int, decoded: dict[str, np.ndarray],
            skips: bool, progress, verb: str):
    """Each stage's StageParams in coding order; once the caller is done with one, its values join
    `decoded` (which the later stages read). With `skips` a Gaussian whose importance decodes to 0
    is coded no further. `progress(verb, step, total, {"stage": name})` per stage."""
    e64 = exact_model(model)
    prior = _prior(e64, prep, chunk)
    live = np.ones(prep.n, dtype=bool)
    for name in e64.stages:
        stage = StageParams(e64, prep, lam, chunk, name, prior, decoded, live)
        yield stage
        decoded[name] = stage.values
        del stage
        release()  # the stage's arrays, freed
        if progress is not None:
            progress(verb, len(decoded), len(e64.stages), {"stage": name})
        if name == "importance" and skips:
            live = decoded[name][:, 0] >= 0.5


# ---- the decoder ---------------------------------------------------------------------------------

def decode_stages(model: DirectEntropyModel, prep: Prepared, lam: float, chunk: int, sections: dict[str, bytes],
                  *, skips: bool, progress=None) -> dict[str, np.ndarray]:
    """Every stage's values from the file's sections, group by group. `progress(stage, step,
    total, info)` hears "decode" per stage."""
    decoded: dict[str, np.ndarray] = {}
    for stage in _stages(model, prep, lam, chunk, decoded, skips, progress, "decode"):
        guard, readers = read_part(sections[stage.name], stage.name, prep.n_groups * stage.n_parts)
        steps = stage.step_index(steps_from_guard(stage.raw_steps, STEP_BASE, guard))
        palette = stage.palette()
        rep_data, rep_pos = sections[repeats.SECTION] if palette is not None else b"", 0
        for g in range(prep.n_groups):
            rep_pos = _decode_group(stage, g, steps, readers, palette, rep_data, rep_pos)
        if palette is not None and rep_pos != len(rep_data):
            raise FormatError(f"section {repeats.SECTION}: {len(rep_data) - rep_pos} bytes after its last group")
        del stage, steps, readers, palette  # (freed before the next stage: _stages releases memory)
    return decoded


def _decode_group(stage: StageParams, g: int, steps: np.ndarray, readers: list, palette: repeats.Palette | None,
                  rep_data: bytes, rep_pos: int) -> int:
    """Decode group `g` of `stage` into its values; returns the position after its repeats record."""
    st = stage.st
    grp = stage.group(g, steps, steps=False)
    rep = np.zeros(grp.rows.size, dtype=bool)
    if palette is not None:
        rep, index, rep_pos = repeats.decode_group(rep_data, rep_pos, grp.rows.size, palette.size,
                                                   f"section {repeats.SECTION}, {stage.label(grp)}")

    def decode_part(j, cols, mean, scale, steps_):
        return streams.decode_values(readers[grp.index * stage.n_parts + j], mean, scale, steps_,
                                     stage.label(grp, j), st.family, st.shifted, stage.half)

    stage.code_in_full(grp, ~rep, decode_part)
    if palette is not None:
        palette.add(grp.rows[~rep])
        stage.values[grp.rows[rep]] = palette.entry(index)
    return rep_pos


# ---- the encoder ---------------------------------------------------------------------------------

def encode_stages(model: DirectEntropyModel, prep: Prepared, lam: float, chunk: int, values: dict[str, np.ndarray],
                  log_weights: dict[str, np.ndarray], *, skips: bool,
                  progress=None) -> tuple[dict[str, np.ndarray], dict[str, bytes]]:
    """Code every stage of `values` (the encoder's, its skip decisions made), group by group.
    `log_weights` per stage: rate-distortion rounding with these weights (codec's
    `_encoder_log_weights`), and SH repeats chosen by rate and distortion; a stage without them is
    rounded to its nearest steps. `progress(stage, step, total, info)` hears "code" per stage.
    Returns (the values as they decode, the stages' sections)."""
    sections: dict[str, bytes] = {}
    decoded: dict[str, np.ndarray] = {}
    for stage in _stages(model, prep, lam, chunk, decoded, skips, progress, "code"):
        index, guard = snap_steps(stage.raw_steps, STEP_BASE)
        steps = stage.step_index(index)
        del index
        # the stage's (N, dim) log weights, in a list that drops them once the last group has its rows'
        weights = [log_weights.get(stage.name)]
        palette = stage.palette()
        group_streams, records = [], []
        for g in range(prep.n_groups):
            _encode_group(stage, g, steps, values[stage.name], weights, g == prep.n_groups - 1, lam, palette,
                          group_streams, records)
        sections[stage.name] = write_part(guard, group_streams)
        if palette is not None:
            sections[repeats.SECTION] = b"".join(records)
        del stage, steps, palette  # (freed before the next stage: _stages releases memory)
    return decoded, sections


def _encode_group(stage: StageParams, g: int, steps: np.ndarray, values: np.ndarray, weights: list, last: bool,
                  lam: float, palette: repeats.Palette | None, group_streams: list, records: list) -> None:
    """Code group `g` of `stage` (`values`: the stage's, every row; `weights`: [its log weights,
    every row, or None], emptied for the `last` group once its rows are taken): its streams join
    `group_streams`, its repeats record `records`."""
    st = stage.st
    grp = stage.group(g, steps)
    log_w = weights[0]
    if last:
        weights.clear()
    lw = log_w[grp.rows] if log_w is not None else None
    del log_w
    x, true, mean, scale = choose_values(stage.name, st, values[grp.rows], grp.mean, grp.scale,
                                         grp.steps, lw, lam, stage.cfg.swing_twist, stage.half, grp.rest)
    choice = None
    if palette is not None:
        choice = _RepeatChoice.make(palette, stage, grp, x, true, mean, scale, lw, lam)
    new = ~choice.rep if choice is not None else np.ones(grp.rows.size, dtype=bool)
    del mean, scale, true, lw  # (the repeats' choice was their last use)
    grp.steps = None  # code_in_full makes each part's steps from their indices

    def encode_part(j, cols, mean, scale, steps_):
        x_part = grp.part(x, slice(None) if new.all() else new, cols).reshape(-1)
        data, v = streams.encode_values(x_part, mean, scale, steps_, b"", st.family, st.shifted, stage.half)
        group_streams.append(data)
        return v

    stage.code_in_full(grp, new, encode_part)
    if choice is not None:
        records.append(choice.record(palette, stage, grp, values))


def _rd_round(x: np.ndarray, mean: np.ndarray, scale: np.ndarray, q: np.ndarray, log_w: np.ndarray,
              lam: float, family: str = "gaussian", shifted: bool = False) -> np.ndarray:
    """Encoder-side rate-distortion rounding: of the two grid points around each value, the one
    with the lower bits + w·error²/(λ·u) (the fit's loss), bits under the element's model. The
    decoder is unchanged: it only ever sees symbols. Returns the chosen values (symbol × q),
    computed a block of elements at a time (each element's choice is its own)."""
    out = np.empty(x.shape)
    for i in range(0, x.size, BITS_BLOCK):
        b = slice(i, i + BITS_BLOCK)
        out[b] = _rd_round_block(x[b], mean[b], scale[b], q[b], log_w[b], lam, family, shifted)
    return out


def _rd_round_block(x: np.ndarray, mean: np.ndarray, scale: np.ndarray, q: np.ndarray, log_w: np.ndarray,
                    lam: float, family: str, shifted: bool) -> np.ndarray:
    m, sd = mean / q, scale / q
    shift = m if shifted else 0.0
    t = x / q - shift
    lo = np.floor(t)
    k = np.exp(log_w) * q * q / (lam * LAMBDA_UNIT)
    j_lo = estimate_bits(lo, m - shift, sd, family) + k * (t - lo) ** 2
    j_hi = estimate_bits(lo + 1, m - shift, sd, family) + k * (lo + 1 - t) ** 2
    return (np.where(j_lo <= j_hi, lo, lo + 1) + shift) * q


def _row_blocks(n_rows: int, dim: int) -> list[slice]:
    """Slices of about BITS_BLOCK elements of rows of `dim` values."""
    step = max(1, BITS_BLOCK // max(dim, 1))
    return [slice(i, min(i + step, n_rows)) for i in range(0, n_rows, step)]


def _rd_cost(x: np.ndarray, x_hat: np.ndarray, mean: np.ndarray, scale: np.ndarray, q: np.ndarray,
             log_w: np.ndarray, lam: float, family: str, shifted: bool) -> np.ndarray:
    """Per element: bits of coding x as x_hat under the element's model + w·error²/(λ·u), the
    trade-off `_rd_round` makes (x_hat on the element's grid)."""
    m, sd = mean / q, scale / q
    shift = m if shifted else 0.0
    bits = estimate_bits(np.rint(x_hat / q - shift), m - shift, sd, family).reshape(x.shape)
    return bits + np.exp(log_w) * (x_hat - x) ** 2 / (lam * LAMBDA_UNIT)


def _round_stage(stage: str, st: DirectStage, true: np.ndarray, mean: np.ndarray, scale: np.ndarray, q: np.ndarray,
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


def choose_values(stage: str, st: DirectStage, true: np.ndarray, mean: np.ndarray, scale: np.ndarray, q: np.ndarray,
                  log_w: np.ndarray | None, lam: float, swing_twist: bool, half: float | None,
                  rest=None, dists: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The encoder's values for one stage's rows and the distributions they are coded under:
    (values, the true values they stand for, mean, scale), every channel. `mean`, `scale` are the
    head's: of the first part for a chained stage, whose rest's distribution `rest(first values)`
    gives (mean, scale) once the first part is rounded. `dists` False: a chained stage's mean and
    scale are not assembled (None), for a caller that needs the values only."""
    if st.rest is None:
        return (*_round_stage(stage, st, true, mean, scale, q, log_w, lam, swing_twist, half), mean, scale)
    # A block of rows at a time (each row's choice is its own: elementwise rounding), but `rest`
    # once, on every row's first part: the rest's distributions are those of one call.
    p0, p1 = st.first, st.rest
    n = true.shape[0]
    blocks = _row_blocks(n, st.dim)
    cols = (lambda b, c: log_w[b][:, c]) if log_w is not None else (lambda b, c: None)
    x0 = np.empty((n, len(p0)))
    for b in blocks:
        x0[b] = _round_stage(stage, st, true[b][:, p0], mean[b], scale[b], q[b][:, p0], cols(b, p0), lam,
                             swing_twist, half)[0]
    m1, s1 = rest(x0)
    x = np.empty((n, st.dim))
    mean_all, scale_all = (np.empty((n, st.dim)), np.empty((n, st.dim))) if dists else (None, None)
    for b in blocks:
        x1 = _round_stage(stage, st, true[b][:, p1], m1[b], s1[b], q[b][:, p1], cols(b, p1), lam, swing_twist, half)[0]
        x[b] = st.assemble(x0[b], x1)
        if dists:
            mean_all[b], scale_all[b] = st.assemble(mean[b], m1[b]), st.assemble(scale[b], s1[b])
    return x, true, mean_all, scale_all


@dataclass
class _RepeatChoice:
    """The encoder's SH repeats for one group (direct/repeats.py): `rep` marks the rows that take a
    palette row; `entry`, `owner` say which (Palette.references); `weight` is each row's summed
    coding weight."""
    rep: np.ndarray
    entry: np.ndarray
    owner: np.ndarray
    weight: np.ndarray

    @staticmethod
    def make(palette: repeats.Palette, stage: StageParams, grp: Group, x: np.ndarray, true: np.ndarray,
             mean: np.ndarray, scale: np.ndarray, log_w: np.ndarray | None, lam: float) -> "_RepeatChoice":
        """Repeat where the index and the referenced row's error cost less than coding the row;
        the reference is an earlier group's row or this group's weightiest of its kind. Rows that
        others may repeat are rounded again with those rows' error counted too (their `x`, `mean`,
        `scale` change in place). Without weights (no rate-distortion choices) nothing repeats."""
        st, n_rows = stage.st, grp.rows.size
        blocks = _row_blocks(n_rows, stage.dim)  # rowwise work: a block of rows at a time
        weight = np.zeros(n_rows)
        if log_w is not None:
            for b in blocks:
                weight[b] = np.exp(log_w[b]).sum(1)
        entry, owner, total = palette.references(true, weight)
        rep = np.zeros(n_rows, dtype=bool)
        if log_w is not None and n_rows:
            lead = total > weight
            if lead.any():
                lead_log_w = log_w[lead] + np.log(total[lead] / weight[lead])[:, None]
                x[lead], _, mean[lead], scale[lead] = choose_values(
                    stage.name, st, true[lead], grp.mean[lead], grp.scale[lead], grp.steps[lead], lead_log_w, lam,
                    stage.cfg.swing_twist, stage.half, lambda first: grp.rest(first, lead))
            index_bits = math.log2(palette.size + n_rows)
            for b in blocks:
                e, o = entry[b], owner[b]
                ref = np.where((e >= 0)[:, None], palette.entry(np.maximum(e, 0)), x[np.maximum(o, 0)])
                d_rep = (np.exp(log_w[b]) * (ref - true[b]) ** 2).sum(1) / (lam * LAMBDA_UNIT)
                keep = _rd_cost(true[b], x[b], mean[b], scale[b], grp.steps[b], log_w[b], lam, st.family,
                                st.shifted).sum(1)
                rep[b] = ((e >= 0) | (o >= 0)) & (index_bits + d_rep < keep)
        return _RepeatChoice(rep, entry, owner, weight)

    def record(self, palette: repeats.Palette, stage: StageParams, grp: Group, true: np.ndarray) -> bytes:
        """Once the group's other rows are coded in full: they join the palette (keyed by their
        source values, rows of `true`: the stage's, every row), the repeats take their rows;
        returns the group's record of the repeats section."""
        new = ~self.rep
        start = palette.size
        rows = grp.rows[new]
        palette.add_owners(rows, true[rows], self.weight[new])
        in_full = start + np.cumsum(new) - 1  # the entry of each of the group's rows coded in full
        index = np.where(self.entry >= 0, self.entry, in_full[np.maximum(self.owner, 0)])[self.rep]
        stage.values[grp.rows[self.rep]] = palette.entry(index)
        return repeats.encode_group(self.rep, index, palette.size)
