"""What anchor-free mode derives from the decoded voxels alone, identically in fit, encoder and
decoder: voxel centres, the scene-agnostic features, coding groups and the AR context selection."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..entropy.context import ContextSelection, assign_groups, num_groups, select_context
from .geometry import Frame, Layout
from .model import DirectConfig


@dataclass
class Prepared:
    frame: Frame
    layout: Layout
    centres: np.ndarray  # (N, 3) float64: each coded Gaussian's voxel centre
    xyz01: torch.Tensor  # (M, 3) float64 voxel centres in the unit cube (hash-grid input)
    sa_feat: torch.Tensor | None  # (M, D) float64 scene-agnostic features, or None
    groups: np.ndarray  # (N,) coding group of each Gaussian (its voxel's)
    n_groups: int
    selection: ContextSelection | None  # over voxels

    @property
    def n(self) -> int:
        return int(self.layout.voxel_of.size)

    def context_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For Gaussians `rows`: (coded rows of their context Gaussians, offsets, mask); each
        context voxel stands for its first Gaussian. Empty slots point at row 0, masked."""
        vox = self.layout.voxel_of[rows]
        idx = self.selection.index[vox]
        ok = idx >= 0
        return self.layout.first[np.maximum(idx, 0)], self.selection.offsets[vox], ok


def prepare(frame: Frame, layout: Layout, cfg: DirectConfig, sa=None) -> Prepared:
    coords = layout.coords.astype(np.int64)
    vox_centres = frame.centres(coords)
    centres = vox_centres[layout.voxel_of] if layout.voxel_of.size else np.zeros((0, 3))
    xyz01 = torch.from_numpy((vox_centres - frame.origin) / frame.span)
    sa_feat = None
    if cfg.scene_agnostic:
        sa_feat = sa.features(coords) if coords.shape[0] else torch.zeros((0, cfg.sa_dim), dtype=torch.float64)
    if cfg.ar and coords.shape[0]:
        vg = assign_groups(coords, cfg.groups)
        sel = select_context(coords, vg, acs=cfg.acs, n=cfg.n_context if cfg.acs else None)
        groups, n_groups = vg[layout.voxel_of], num_groups(cfg.groups)
    else:
        groups, n_groups, sel = np.zeros(layout.voxel_of.size, np.int64), 1, None
    return Prepared(frame, layout, centres, xyz01, sa_feat, groups, n_groups, sel)
