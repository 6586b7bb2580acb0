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
leave the active set (early termination). All updates are out of place, so autograd can give
the gradients (`hand_backward=False`, the reference); by default training runs the loop without
a graph and `_Composite` differentiates it by hand from what the loop recorded, which on the CPU
is faster than autograd (no per-chunk gradient the size of all Gaussians, fewer temporaries).
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
                    step_elements: int = STEP_ELEMENTS, hand_backward: bool | None = None) -> tuple[Tensor, Tensor]:
    """Composite projected Gaussians (M rows) into an image (H,W,D) and alpha (H,W,1).

    `hand_backward` (default HAND_BACKWARD): when gradients are needed, run the compositing
    without an autograd graph and differentiate it by hand (`_Composite`); False keeps plain
    autograd through the chunked loop (the reference the tests compare against).
    """
    dev, dt = means2d.device, means2d.dtype
    D = colors.shape[-1]
    P = tile_size * tile_size
    gauss, counts, tiles_x, tiles_y = tile_intersections(means2d, radii, depths, width, height, tile_size)
    n_tiles = tiles_x * tiles_y

    # One packed row per Gaussian, gathered per step with a single index: mean x/y, conic as the
    # coefficients of -sigma (so the exponent needs no extra negation), opacity, colour.
    a, b, c = conics.unbind(-1)
    packed = torch.cat([means2d, torch.stack([-0.5 * a, -b, -0.5 * c], -1), opacities[:, None], colors], 1)
    plan = _Plan(gauss, counts, tiles_x, tile_size, width, height, step_elements)
    hand = HAND_BACKWARD if hand_backward is None else hand_backward
    if hand and torch.is_grad_enabled() and packed.requires_grad:
        acc, T = _Composite.apply(packed, plan)
    else:
        acc, T = _composite(packed, plan)

    img = torch.zeros(n_tiles, P, D, device=dev, dtype=dt).index_copy(0, plan.active, acc)
    trans = torch.ones(n_tiles, P, device=dev, dtype=dt).index_copy(0, plan.active, T)
    img = _untile(img, tiles_x, tiles_y, tile_size)[:height, :width]
    trans = _untile(trans[..., None], tiles_x, tiles_y, tile_size)[:height, :width]
    if background is not None:
        img = img + trans * background
    return img, 1.0 - trans


# Differentiate the compositing by hand when training (see _Composite): no autograd graph of the
# chunk loop is kept, which is most of the time and memory of a training step on the CPU.
HAND_BACKWARD = True


class _Plan:
    """The per-camera constants of the compositing loop: tile lists and pixel geometry."""

    def __init__(self, gauss, counts, tiles_x, tile_size, width, height, step_elements):
        self.gauss, self.tile_size, self.step_elements = gauss, tile_size, step_elements
        self.P = tile_size * tile_size
        offsets = torch.cumsum(counts, 0) - counts
        self.active = (counts > 0).nonzero().squeeze(1)  # tiles with work, in row-major order
        self.start, self.cnt = offsets[self.active], counts[self.active]
        self.tiles_x, self.width, self.height = tiles_x, width, height
        self.steps: list[tuple] = []  # filled by a recording forward: what the backward replays


def _composite(packed: Tensor, plan: _Plan, record: bool = False) -> tuple[Tensor, Tensor]:
    """The chunked front-to-back loop: (A, P, D) colour and (A, P) transmittance of the tiles
    `plan.active`. With `record`, keeps per step what `_Composite.backward` needs."""
    dev, dt = packed.device, packed.dtype
    D = packed.shape[1] - 6
    P, ts = plan.P, plan.tile_size
    A0 = plan.active.numel()
    pos = torch.arange(A0, device=dev)  # row of each active tile in the output
    start, cnt = plan.start, plan.cnt
    n_isect = int(plan.gauss.numel())

    pix = torch.arange(ts, device=dev, dtype=dt) + 0.5
    # Pixels of partial tiles beyond the image edge start out "done".
    tx_a = (plan.active % plan.tiles_x).to(dt) * ts
    ty_a = (plan.active // plan.tiles_x).to(dt) * ts
    outside = ((tx_a[:, None, None] + pix[None, None, :] > plan.width)
               | (ty_a[:, None, None] + pix[None, :, None] > plan.height)).reshape(-1, P)
    done = outside
    T = torch.ones(A0, P, device=dev, dtype=dt)
    acc = torch.zeros(A0, P, D, device=dev, dtype=dt)

    fin_pos, fin_acc, fin_T = [], [], []
    r0 = 0
    while pos.numel():
        n_act = pos.numel()
        C = max(MIN_CHUNK, min(MAX_CHUNK, plan.step_elements // (n_act * P)))
        g, gid, valid, dx, dy = _chunk(packed, plan, start, cnt, tx_a, ty_a, pix, r0, C, n_isect)
        alpha, raw, vis = _alpha(g, valid, dx, dy, n_act, C, P)
        one_minus = 1.0 - alpha
        T_incl = T[:, None, :] * torch.cumprod(one_minus, dim=1)  # T after each Gaussian
        T_excl = torch.cat([T[:, None, :], T_incl[:, :-1]], 1)  # T before each Gaussian
        # gsplat stops a pixel before the Gaussian that takes T to <= 1e-4; T only falls, so
        # the Gaussians kept are a prefix of the chunk.
        keep = (T_incl > TRANSMITTANCE_MIN) & ~done[:, None, :]
        w = torch.where(keep, alpha * T_excl, torch.zeros((), device=dev, dtype=dt))  # (A,C,P)
        if record:  # what the backward needs, so that it recomputes nothing
            live = keep & (alpha > 0) & (raw <= MAX_ALPHA)
            plan.steps.append((pos, gid, valid, g, dx, dy, alpha, raw, vis, T_excl, live, w))
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
            fin_pos.append(pos[finished])
            fin_acc.append(acc[finished])
            fin_T.append(T[finished])
            stay = ~finished
            pos, start, cnt = pos[stay], start[stay], cnt[stay]
            tx_a, ty_a, done, T, acc = tx_a[stay], ty_a[stay], done[stay], T[stay], acc[stay]
    out_acc = torch.zeros(A0, P, D, device=dev, dtype=dt)
    out_T = torch.ones(A0, P, device=dev, dtype=dt)
    if fin_pos:
        ids = torch.cat(fin_pos)
        out_acc = out_acc.index_copy(0, ids, torch.cat(fin_acc))
        out_T = out_T.index_copy(0, ids, torch.cat(fin_T))
    return out_acc, out_T


def _chunk(packed, plan, start, cnt, tx_a, ty_a, pix, r0, C, n_isect):
    """The next C Gaussians of each active tile: packed rows, their ids, validity, pixel offsets."""
    ranks = r0 + torch.arange(C, device=packed.device)
    valid = ranks[None, :] < cnt[:, None]  # (A,C)
    idx = torch.clamp(start[:, None] + ranks[None, :], max=max(n_isect - 1, 0))
    gid = plan.gauss[idx].long()
    g = packed[gid]  # (A,C,6+D)
    dx = (tx_a[:, None, None] + pix) - g[..., 0:1]  # (A,C,ts) per column
    dy = (ty_a[:, None, None] + pix) - g[..., 1:2]  # (A,C,ts) per row
    return g, gid, valid, dx, dy


def _alpha(g, valid, dx, dy, n_act, C, P):
    """alpha (A,C,P) of a chunk, and (before clamping) opacity * exp(-sigma) and exp(-sigma)."""
    dev, dt = g.device, g.dtype
    # -sigma over the tile's pixels, rows x columns, then flattened row-major.
    nsig = (dy * g[..., 4:5])[..., :, None] * dy[..., :, None] \
        + (g[..., 3:4] * dy)[..., :, None] * dx[..., None, :] \
        + (dx * dx * g[..., 2:3])[..., None, :]
    nsig = nsig.reshape(n_act, C, P)
    op = torch.where(valid, g[..., 5], torch.zeros((), device=dev, dtype=dt))
    vis = torch.exp(nsig)
    raw = op[..., None] * vis
    alpha = torch.clamp_max(raw, MAX_ALPHA)
    alpha = torch.where(alpha >= ALPHA_THRESHOLD, alpha, torch.zeros((), device=dev, dtype=dt))
    return alpha, raw, vis


class _Composite(torch.autograd.Function):
    """The compositing loop with a hand-written backward (as gsplat's rasterize backward).

    Written by hand, for the CPU: autograd through the chunk loop keeps every chunk's
    temporaries and scatters a gradient the size of all Gaussians per chunk. The backward
    replays the recorded chunks from the last to the first, carrying per pixel the colour still
    to come behind each Gaussian, S = sum_{j>i} w_j c_j . v (v: the colour's gradient), so
    with w_i = alpha_i T_i and T_final = prod (1 - alpha_i) over the kept Gaussians:
      dL/dc_i     = w_i v
      dL/dalpha_i = T_i (c_i . v) - (S_i + T_final dL/dT_final) / (1 - alpha_i).
    alpha = min(0.999, o exp(-sigma)) gets no gradient where clamped or below 1/255, as autograd.
    """

    @staticmethod
    def forward(ctx, packed, plan):
        plan.steps = []
        acc, T = _composite(packed.detach(), plan, record=True)
        ctx.plan = plan
        ctx.save_for_backward(packed, T)
        return acc, T

    @staticmethod
    def backward(ctx, v_acc, v_T):
        packed, T_final = ctx.saved_tensors
        plan = ctx.plan
        dev, dt = packed.device, packed.dtype
        A0, P, ts = plan.active.numel(), plan.P, plan.tile_size
        D = packed.shape[1] - 6
        if v_acc is None:
            v_acc = torch.zeros(A0, P, D, device=dev, dtype=dt)
        if v_T is None:
            v_T = torch.zeros(A0, P, device=dev, dtype=dt)
        grad = torch.zeros_like(packed)
        # Per pixel: colour still to come behind the current chunk, dotted with v.
        S = torch.zeros(A0, P, device=dev, dtype=dt)
        tail = T_final * v_T  # T_final dL/dT_final, per pixel
        zero = torch.zeros((), device=dev, dtype=dt)
        with torch.no_grad():
            for pos, gid, valid, g, dx, dy, alpha, raw, vis, T_excl, live, w in reversed(plan.steps):
                n_act, C = gid.shape
                va = v_acc[pos]  # (A,P,D)
                cv = torch.bmm(g[..., 6:], va.transpose(1, 2))  # (A,C,P): c_i . v per pixel
                wcv = w * cv
                # S_i: behind i inside this chunk (chunk total minus inclusive prefix: at most C
                # terms, so no precision worth a reversed cumsum is lost) plus later chunks.
                S_pos = S[pos]
                chunk_total = wcv.sum(1)
                suffix = (S_pos + chunk_total)[:, None, :] - torch.cumsum(wcv, 1)
                v_alpha = T_excl * cv - (suffix + tail[pos][:, None, :]) / (1.0 - alpha)
                # Only kept Gaussians with an unclamped alpha in [1/255, 0.999] carry gradient.
                v_alpha = torch.where(live, v_alpha, zero)
                S = S.index_copy(0, pos, S_pos + chunk_total)
                v_col = torch.bmm(w, va)  # (A,C,D)
                v_op = (v_alpha * vis).sum(2)  # (A,C)
                v_ns = (v_alpha * raw).reshape(n_act, C, ts, ts)  # rows (y) x columns (x)
                # nsig = g2 dx^2 + g3 dx dy + g4 dy^2, with dx = px - g0, dy = py - g1.
                s_x = v_ns.sum(2)  # (A,C,ts) summed over rows: per column
                s_y = v_ns.sum(3)  # per row
                s_xy = (v_ns * dy[..., :, None]).sum(2)  # per column: sum over rows of v dy
                g2 = (s_x * dx * dx).sum(2)
                g3 = (s_xy * dx).sum(2)
                g4 = (s_y * dy * dy).sum(2)
                sdx = (s_x * dx).sum(2)  # sum of v dx
                sdy = (s_y * dy).sum(2)  # sum of v dy
                # d nsig / d g0 = -(2 g2 dx + g3 dy); d nsig / d g1 = -(g3 dx + 2 g4 dy).
                g0 = -(2 * g[..., 2] * sdx + g[..., 3] * sdy)
                g1 = -(g[..., 3] * sdx + 2 * g[..., 4] * sdy)
                rows = torch.cat([g0[..., None], g1[..., None], g2[..., None], g3[..., None], g4[..., None],
                                  v_op[..., None], v_col], -1)
                rows = torch.where(valid[..., None], rows, zero)
                grad.index_add_(0, gid.reshape(-1), rows.reshape(-1, rows.shape[-1]))
        return grad, None


def _untile(x: Tensor, tiles_x: int, tiles_y: int, ts: int) -> Tensor:
    """(tiles, ts*ts, D) in row-major tile order -> (tiles_y*ts, tiles_x*ts, D)."""
    D = x.shape[-1]
    return x.reshape(tiles_y, tiles_x, ts, ts, D).permute(0, 2, 1, 3, 4).reshape(tiles_y * ts, tiles_x * ts, D)
