"""Our tile rasterizer: gsplat's front-to-back alpha compositing, vectorised for the CPU.

Written by hand (no library rasterizes Gaussians on the CPU with autograd). The result is the
same as gsplat's CUDA kernel (`RasterizeToPixels3DGSFwd.cu`) up to float rounding:

- the image is cut into `tile_size`^2 tiles; every Gaussian is listed in each tile its
  bounding box (`radii`) touches, and each tile's list is sorted front to back by depth;
- per pixel (centre at +0.5): alpha = min(0.999, opacity * exp(-sigma)), skipped when
  below 1/255; colour += alpha * T * c; the pixel stops *before* the Gaussian that would take
  its transmittance T to 1e-4 or below; the background fills the remaining T.

Instead of one thread per pixel, the loop runs over *ranks*: each step takes the next C
Gaussians of every still-active tile at once, as a [tiles, C, pixels] tensor, and composites
them with a cumulative product. Tiles whose pixels have all stopped, or whose list is used up,
leave the active set (early termination). All updates are out of place, so autograd gives the
gradients; under `torch.no_grad` the same code simply keeps no graph.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .project import ALPHA_THRESHOLD, MAX_ALPHA, TRANSMITTANCE_MIN

TILE_SIZE = 4
# Elements of the [tiles, C, pixels] working tensors per step: bounds memory (about 20 such
# temporaries live at once, more under autograd) whatever the scene size.
STEP_ELEMENTS = 1 << 18
MIN_CHUNK, MAX_CHUNK = 8, 256


def tile_intersections(means2d: Tensor, radii: Tensor, depths: Tensor, width: int, height: int,
                       tile_size: int = TILE_SIZE) -> tuple[Tensor, Tensor, int, int]:
    """List (tile, Gaussian) pairs sorted by tile, then by depth (front first).

    Returns `gauss` (I,) Gaussian index per intersection, `counts` (tiles,) intersections per
    tile (row-major tile order), and the tile grid size (tiles_x, tiles_y). The tile range per
    Gaussian is gsplat's: floor/ceil of (mean +- radius) / tile_size, clamped to the grid.
    """
    tiles_x = (width + tile_size - 1) // tile_size
    tiles_y = (height + tile_size - 1) // tile_size
    with torch.no_grad():
        m = means2d.detach().float() / tile_size
        r = radii.float() / tile_size
        x0 = torch.floor(m[:, 0] - r[:, 0]).clamp(0, tiles_x).int()
        x1 = torch.ceil(m[:, 0] + r[:, 0]).clamp(0, tiles_x).int()
        y0 = torch.floor(m[:, 1] - r[:, 1]).clamp(0, tiles_y).int()
        y1 = torch.ceil(m[:, 1] + r[:, 1]).clamp(0, tiles_y).int()
        w = x1 - x0
        n_tiles = (w * (y1 - y0)).long()
        order = torch.argsort(depths.detach(), stable=True)  # front to back
        n_ord = n_tiles[order]
        # int32 throughout (tile ids and Gaussian indices fit): halves the memory of these
        # per-intersection arrays, which dominate for a million Gaussians.
        gauss = torch.repeat_interleave(order.int(), n_ord)
        # Position of each intersection inside its Gaussian's tile rectangle.
        first = (torch.cumsum(n_ord, 0) - n_ord).int()
        local = torch.arange(gauss.numel(), device=gauss.device, dtype=torch.int32)
        local -= torch.repeat_interleave(first, n_ord)
        wg = w[gauss]
        tile = (y0[gauss] + local // wg) * tiles_x + x0[gauss] + local % wg
        del local, wg
        # A stable sort by tile keeps the depth order inside each tile.
        tile_sorted, perm = torch.sort(tile, stable=True)
        del tile
        gauss = gauss[perm]
        del perm
        counts = torch.bincount(tile_sorted, minlength=tiles_x * tiles_y)
    return gauss, counts, tiles_x, tiles_y


def composite_tiles(means2d: Tensor, conics: Tensor, opacities: Tensor, colors: Tensor,
                    depths: Tensor, radii: Tensor, width: int, height: int,
                    background: Tensor | None = None, tile_size: int = TILE_SIZE,
                    step_elements: int = STEP_ELEMENTS) -> tuple[Tensor, Tensor]:
    """Composite projected Gaussians (M rows) into an image (H,W,D) and alpha (H,W,1)."""
    dev, dt = means2d.device, means2d.dtype
    D = colors.shape[-1]
    P = tile_size * tile_size
    gauss, counts, tiles_x, tiles_y = tile_intersections(means2d, radii, depths, width, height, tile_size)
    n_tiles = tiles_x * tiles_y

    # One packed row per Gaussian, gathered per step with a single index: mean x/y, conic as the
    # coefficients of -sigma (so the exponent needs no extra negation), opacity, colour.
    a, b, c = conics.unbind(-1)
    packed = torch.cat([means2d, torch.stack([-0.5 * a, -b, -0.5 * c], -1), opacities[:, None], colors], 1)

    offsets = torch.cumsum(counts, 0) - counts
    active = (counts > 0).nonzero().squeeze(1)
    start, cnt = offsets[active], counts[active]
    n_isect = int(gauss.numel())

    pix = torch.arange(tile_size, device=dev, dtype=dt) + 0.5
    # Pixels of partial tiles beyond the image edge start out "done".
    tx_a = (active % tiles_x).to(dt) * tile_size
    ty_a = (active // tiles_x).to(dt) * tile_size
    outside = ((tx_a[:, None, None] + pix[None, None, :] > width)
               | (ty_a[:, None, None] + pix[None, :, None] > height)).reshape(-1, P)
    done = outside
    T = torch.ones(active.numel(), P, device=dev, dtype=dt)
    acc = torch.zeros(active.numel(), P, D, device=dev, dtype=dt)

    fin_tiles, fin_acc, fin_T = [], [], []
    r0 = 0
    while active.numel():
        n_act = active.numel()
        C = max(MIN_CHUNK, min(MAX_CHUNK, step_elements // (n_act * P)))
        ranks = r0 + torch.arange(C, device=dev)
        valid = ranks[None, :] < cnt[:, None]  # (A,C)
        idx = torch.clamp(start[:, None] + ranks[None, :], max=max(n_isect - 1, 0))
        g = packed[gauss[idx].long()]  # (A,C,6+D)
        dx = (tx_a[:, None, None] + pix) - g[..., 0:1]  # (A,C,ts) per column
        dy = (ty_a[:, None, None] + pix) - g[..., 1:2]  # (A,C,ts) per row
        # -sigma over the tile's pixels, rows x columns, then flattened row-major.
        nsig = (dy * g[..., 4:5])[..., :, None] * dy[..., :, None] \
            + (g[..., 3:4] * dy)[..., :, None] * dx[..., None, :] \
            + (dx * dx * g[..., 2:3])[..., None, :]
        nsig = nsig.reshape(n_act, C, P)
        op = torch.where(valid, g[..., 5], torch.zeros((), device=dev, dtype=dt))
        alpha = torch.clamp_max(op[..., None] * torch.exp(nsig), MAX_ALPHA)
        alpha = torch.where(alpha >= ALPHA_THRESHOLD, alpha, torch.zeros((), device=dev, dtype=dt))
        one_minus = 1.0 - alpha
        T_incl = T[:, None, :] * torch.cumprod(one_minus, dim=1)  # T after each Gaussian
        T_excl = torch.cat([T[:, None, :], T_incl[:, :-1]], 1)  # T before each Gaussian
        # gsplat stops a pixel before the Gaussian that takes T to <= 1e-4; T only falls, so
        # the Gaussians kept are a prefix of the chunk.
        keep = (T_incl > TRANSMITTANCE_MIN) & ~done[:, None, :]
        w = torch.where(keep, alpha * T_excl, torch.zeros((), device=dev, dtype=dt))  # (A,C,P)
        acc = acc + torch.bmm(w.transpose(1, 2), g[..., 6:])
        # New T: the running product after the last kept Gaussian (kept ones are a prefix).
        # Taken from the product, not as T - sum(w), which loses relative precision as T -> 0.
        n_kept = keep.sum(1, keepdim=True)
        last = T_incl.gather(1, (n_kept - 1).clamp_min(0))  # (A,1,P)
        T = torch.where(n_kept > 0, last, T[:, None, :]).squeeze(1)
        done = done | ~keep[:, -1]
        r0 += C
        finished = done.all(1) | (cnt <= r0)
        if bool(finished.any()):
            fin_tiles.append(active[finished])
            fin_acc.append(acc[finished])
            fin_T.append(T[finished])
            stay = ~finished
            active, start, cnt = active[stay], start[stay], cnt[stay]
            tx_a, ty_a, done, T, acc = tx_a[stay], ty_a[stay], done[stay], T[stay], acc[stay]

    img = torch.zeros(n_tiles, P, D, device=dev, dtype=dt)
    trans = torch.ones(n_tiles, P, device=dev, dtype=dt)
    if fin_tiles:
        ids = torch.cat(fin_tiles)
        img = img.index_copy(0, ids, torch.cat(fin_acc))
        trans = trans.index_copy(0, ids, torch.cat(fin_T))
    img = _untile(img, tiles_x, tiles_y, tile_size)[:height, :width]
    trans = _untile(trans[..., None], tiles_x, tiles_y, tile_size)[:height, :width]
    if background is not None:
        img = img + trans * background
    return img, 1.0 - trans


def _untile(x: Tensor, tiles_x: int, tiles_y: int, ts: int) -> Tensor:
    """(tiles, ts*ts, D) in row-major tile order -> (tiles_y*ts, tiles_x*ts, D)."""
    D = x.shape[-1]
    return x.reshape(tiles_y, tiles_x, ts, ts, D).permute(0, 2, 1, 3, 4).reshape(tiles_y * ts, tiles_x * ts, D)
