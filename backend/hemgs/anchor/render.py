"""Render an anchor model from a camera: cull anchors, expand them into neural Gaussians, rasterize.

One function for training (with attributes replaced by their quantized versions) and for
evaluating decoded files, so both see exactly the same pipeline.
"""

from __future__ import annotations

import torch

from ..cameras import Camera
from ..render import rasterize
from .model import AnchorModel, generate_neural_gaussians

# Anchors whose centre projects this far outside the image (in image widths) still count as
# visible: their offsets can reach into the frame.
CULL_MARGIN = 0.25


def visible_anchors(model: AnchorModel, cam: Camera) -> torch.Tensor:
    """(N,) bool: anchors in front of the camera whose centre projects near the image."""
    with torch.no_grad():
        a = model.anchors
        vm = torch.as_tensor(cam.viewmat, dtype=a.dtype, device=a.device)
        K = torch.as_tensor(cam.K, dtype=a.dtype, device=a.device)
        pc = a @ vm[:3, :3].T + vm[:3, 3]
        z = pc[:, 2]
        # Offsets reach a few voxels from their anchor: keep anchors just behind the near plane too.
        front = z > -4 * model.voxel_size
        zc = z.clamp_min(1e-6)
        u = K[0, 0] * pc[:, 0] / zc + K[0, 2]
        v = K[1, 1] * pc[:, 1] / zc + K[1, 2]
        mw, mh = CULL_MARGIN * cam.width, CULL_MARGIN * cam.height
        inside = (u > -mw) & (u < cam.width + mw) & (v > -mh) & (v < cam.height + mh)
        return front & (inside | (z < 4 * model.voxel_size))


def render_anchor(model: AnchorModel, cam: Camera, *, attrs=None, visible=None, background=None):
    """Image (H,W,3) and alpha of `model` seen from `cam` (differentiable).

    `attrs` (an AnchorAttrs for the `visible` anchors) replaces the model's own features, scaling,
    offsets and mask, e.g. by their quantized versions during training.
    """
    if visible is None:
        visible = visible_anchors(model, cam)
    anchors = model.anchors[visible]
    if attrs is None:
        feats, scaling, offsets = model.features[visible], model.scaling[visible], model.offsets[visible]
        mask = model.binary_mask()[visible]
    else:
        feats, scaling, offsets, mask = attrs.features, attrs.scaling, attrs.offsets, attrs.mask
    center = torch.as_tensor(cam.center, dtype=anchors.dtype, device=anchors.device)
    g = generate_neural_gaussians(anchors, feats, scaling, offsets, mask, model.mlps, center,
                                  use_dist=model.config.use_dist)
    vm = torch.as_tensor(cam.viewmat, dtype=anchors.dtype, device=anchors.device)
    K = torch.as_tensor(cam.K, dtype=anchors.dtype, device=anchors.device)
    return rasterize(g.means, g.quats, g.scales, g.opacities, g.colors, vm, K, cam.width, cam.height,
                     background=background)
