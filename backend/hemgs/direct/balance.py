"""Measured stage balance: the encoder's per-scene, per-λ correction of the stage weights.

The render weights (attributes.render_log_weights) turn an error in each stage's values into image
error with constants calibrated on playbot_lod3; other scenes differ. Decoding with one stage
quantized at a time (16 views at 256², λ = 0.05) gives render MSE per coded value of
- biker: opacity 1.4e-7, scale 5.1e-8, rotation 9.4e-8, position 3.1e-8, colour 1.4e-7;
- playbot_lod2: 4.7e-8, 1.8e-8, 3.2e-8, 1.5e-7, 6.9e-8;
- playbot_lod3 (λ = 2): 7.7e-7, 4.6e-7, 5.4e-7, 8.1e-7, 6.6e-7, balanced.
At the rate-distortion optimum every coded value adds the same error (a stage whose values add
less than the others' is coded too finely), so the encoder measures it: it codes the scene once,
renders the source, and the source with one stage's values decoded, for each stage, from a few
views, and scales each stage's weight by its error per value over the mean (a stage that adds
less gets coarser steps). Then it codes the scene again. Encoder only: the steps travel in the
file's networks (each stage's step bias), the weights of the rounding are the encoder's.

Render errors do not follow the modelled ones in proportion (a scale or rotation error that the
weights count quadratically shows less once large; the per-view totals move with every stage), so
the encoder measures twice (BALANCE_PASSES): again on the values coded with the first factors,
which gives the factors it codes with. And DC and the higher SH bands are measured apart: their
weights' ratio is a constant (attributes.SH_WEIGHT) that the scenes do not share.
"""

from __future__ import annotations

import math

import numpy as np

from ..scene import GaussianScene
from .memory import release

# Views of the measurement: the resolution decides how much geometry errors show (sharper edges at
# more pixels), and 256² is where the weights' constants were calibrated and what the benchmarks
# judge. Few views: the ratios between stages, not the errors themselves, are what is used.
BALANCE_VIEWS = 3
BALANCE_SIZE = 256
BALANCE_SEED = 1  # not the importance views (seed 0): another set of azimuths
# A stage's weight moves by at most this factor either way (a stage whose errors do not show in
# the few views must not lose all its bits).
MAX_FACTOR = 8.0
# Measurements per file: the second, on values coded with the first's factors, gives the factors
# used. Measured at the peers' PSNR (2-3 λ, interpolated), against one pass with colour as one
# group: playbot_lod2 at SOG's -0.8%, playbot_lod3 at SPZ's -0.4%, biker at SOG's +0.1%
# (docs/direct-mode.md); a third pass gave -0.6% and -0.7%.
BALANCE_PASSES = 2
# Groups of stages measured together: the scene attribute each decodes into, and for SH which
# coefficients (DC, the higher bands).
GROUPS = {"opacity": (("opacity",), "opacity_logits", None), "scale": (("scale",), "log_scales", None),
          "rotation": (("rotation",), "quats", None), "position": (("position",), "means", None),
          "dc": (("dc",), "sh", slice(0, 1)), "sh": (("sh",), "sh", slice(1, None))}


_FIELDS = ("means", "quats", "log_scales", "opacity_logits", "sh")


def _with(source: GaussianScene, decoded: GaussianScene, attr: str, cols: slice | None, rows: np.ndarray) -> GaussianScene:
    """The source with `attr` (its columns `cols`) of rows `rows` decoded: a copy of that field
    only, the others shared with the source (nothing writes to them)."""
    fields = {f: getattr(source, f) for f in _FIELDS}
    arr = fields[attr].copy()
    if cols is None:
        arr[rows] = getattr(decoded, attr)[rows]
    else:
        arr[rows, cols] = getattr(decoded, attr)[rows, cols]
    fields[attr] = arr
    return GaussianScene(**fields, meta=dict(source.meta))


def _groups(source: GaussianScene) -> list[str]:
    """The groups the scene has (no higher SH bands at degree 0)."""
    return [g for g, (_, _, cols) in GROUPS.items() if cols is None or cols.start < source.sh.shape[1]]


class Views:
    """The source, the measurement's views and the source's renders from them (made once per file).
    `progress(stage, step, total, info)` hears stage "balance" per render: these and those of
    `passes` measurements (stage_errors)."""

    def __init__(self, source: GaussianScene, progress=None, passes: int = BALANCE_PASSES):
        from ..cameras import sample_views

        self.source = source
        self.cameras = sample_views(source, n=BALANCE_VIEWS, width=BALANCE_SIZE, height=BALANCE_SIZE, seed=BALANCE_SEED)
        self.progress, self.done = progress, 0
        self.total = len(self.cameras) * (1 + passes * len(_groups(source)))
        self.refs = [self.render(source, c) for c in self.cameras]

    def render(self, scene: GaussianScene, camera) -> np.ndarray:
        from ..render import render

        image = render(scene, camera)
        release()  # the render's buffers
        self.done += 1
        if self.progress is not None:
            self.progress("balance", min(self.done, self.total), self.total, {})
        return image


def stage_errors(source: GaussianScene, decoded: GaussianScene, live: np.ndarray,
                 views: Views | None = None) -> dict[str, float]:
    """Render MSE of the source with one group of stages decoded, per group (mean over the views).
    Both scenes in coding order, scale and rotation in the same canonical form; `live` (N,) marks
    the Gaussians the file codes (a skipped one holds placeholders, and the weights do not model
    its error): the others keep their source values. Groups the scene lacks (SH at degree 0) are
    left out."""
    views = views or Views(source)
    coded = np.flatnonzero(live)
    per_view = {}
    for group in _groups(source):
        _, attr, cols = GROUPS[group]
        mixed = _with(source, decoded, attr, cols, coded)
        per_view[group] = np.array([np.mean((views.render(mixed, c) - r) ** 2) for c, r in zip(views.cameras, views.refs)])
    # quality is the mean of the views' PSNRs: an error counts against its view's whole error
    # (attributes.view_weights), which the stages' errors add up to
    total = np.maximum(sum(per_view.values()), 1e-30)
    return {g: float(np.mean(v / total)) for g, v in per_view.items()}


def balance_factors(errors: dict[str, float], modelled: dict[str, float]) -> dict[str, float]:
    """Weight factor per stage: how much more its group's decoded values moved the renders than its
    weights predicted (`modelled`: Σ w·(x̂ - x)² per stage), relative to all stages together."""
    present = {g: [s for s in stages if s in modelled] for g, (stages, _, _) in GROUPS.items()}
    groups = [g for g in GROUPS if present[g] and g in errors]
    model = {g: sum(modelled[s] for s in present[g]) for g in groups}
    ref = sum(errors[g] for g in groups) / max(sum(model.values()), 1e-300)
    out = {}
    for g in groups:
        k = errors[g] / model[g] / ref if model[g] > 0 and ref > 0 else 1.0
        k = min(max(k, 1.0 / MAX_FACTOR), MAX_FACTOR) if math.isfinite(k) and k > 0 else 1.0
        for s in present[g]:
            out[s] = k
    return out
