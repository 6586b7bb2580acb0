"""PlayCanvas SOG (version 2, bundled `.sog`): writer and reader (numpy + Pillow's WebP, zipfile).

Hand-written, because no maintained Python library writes SOG: gsply reads SOG but does not write
it (and needs numba), `sogpy` is a young one-author port that only converts PLY files on disk,
and PyPI's `sogs` is the older "Self-Organizing Gaussians" layout. splat-transform (npm
@playcanvas/splat-transform) writes SOG but is a Node program; tests/test_sog.py uses it as the
independent reader. Written from the format specification ("The SOG Format", PlayCanvas developer
manual, user-manual/gaussian-splatting/formats/sog, the version 2 page) and checked against
splat-transform's reader (src/lib/readers/read-sog.ts).

What the specification says, and what we do with it:
- A SOG scene is `meta.json` plus 8-bit images; the bundled form (`.sog`) is a ZIP holding the
  same files at its root. Images "should" be lossless WebP: lossy coding corrupts the quantized
  values. We write stored (uncompressed) ZIP entries, as splat-transform does (WebP is compressed
  already), and lossless WebP with libwebp's `exact` switch, so that the colour of a texel whose
  alpha is 0 (a transparent Gaussian's DC labels) is kept.
- Every per-Gaussian image has the same W x H; Gaussian i is texel (i % W, i // W), row-major
  from the top left; `count` <= W*H and the texels past it are ignored. We use W = ceil(sqrt(n)/4)*4
  and H = ceil(n/W/4)*4, splat-transform's choice.
- Coordinates: SOG keeps the 3DGS PLY frame (x right, y down, z forward, as `GaussianScene`), so
  nothing is turned; a viewer with +y up turns the scene 180 degrees about z itself.
- `means`: per axis v = sign(x) * ln(|x| + 1), mapped linearly from [mins, maxs] (stored in
  meta.json) to 16 bits; `means_l.webp` holds the low byte and `means_u.webp` the high byte (R, G,
  B = x, y, z). Decoding: v = mins + (maxs - mins) * q / 65535, x = sign(v) * (exp(|v|) - 1).
- `quats`: "smallest three". The unit quaternion (w, x, y, z, the PLY's rot_0..3) is signed so its
  largest-magnitude component is positive; the other three, in w, x, y, z order, each times
  sqrt(2) (so in [-1, 1]), are stored as bytes 255 * (v/2 + 1/2) in R, G, B; A = 252 + the index
  of the largest component. Decoding rebuilds the largest component from unit length.
- `scales`: the log-scales, through one codebook of 256 floats shared by the three axes
  (`scales.codebook`); R, G, B are the indices.
- `sh0`: the DC SH coefficients (f_dc) through one 256-entry codebook shared by the three colours
  (`sh0.codebook`), indices in R, G, B; A is the opacity after the sigmoid, as a byte (sigmoid*255).
- `shN` (SH degree >= 1): a palette of `count` centroids of the higher-degree SH coefficients
  (all bands, all three colours, one vector per Gaussian); `shN_labels.webp` holds each Gaussian's
  16-bit palette index (R low byte, G high byte); `shN_centroids.webp` is 64 * coefficients texels
  wide, one row per 64 palette entries: entry e, coefficient j is texel
  ((e % 64) * coefficients + j, e // 64), its R, G, B being indices into `shN.codebook` (256 floats
  shared by every coefficient) for the red, green and blue coefficient. `bands` is the SH degree.

The encoder's own choices (the specification leaves them open): the Gaussians are written in
Morton (z-curve) order of their positions, which keeps neighbouring texels alike so WebP codes
them well (SOG is "Spatially Ordered"); so a file read back has the same Gaussians in another order
(`morton_order` gives it). A codebook is the values themselves when there are at most 256
distinct ones; otherwise the optimal 1-D k-means (exact dynamic programming) of a 2048-bin
histogram whose bins weigh count^0.5, so sparse tails get entries too. The SH palette has
splat-transform's size (min(64, 2^floor(log2(n/1024))) * 1024 entries, at most n): every distinct
SH row when there are no more than that; otherwise k-means in 3 * coefficients dimensions, first
into 256 coarse cells, then within each cell with its share of the palette, then a few rounds over
the whole palette with each row free to move to an entry of its 3 nearest cells; from a fixed seed
(the output is deterministic, and the time grows as n * palette / 256, not n * palette). Positions and
bytes are rounded to the nearest step (splat-transform's writer truncates). Time on one core,
SH degree 2: about 1 s for 2,000 Gaussians, 3-4 s for 31,000, 40-100 s for 310,000
(splat-transform 3.7.0 on its CPU path: 4 s for 2,000, 35-90 s for 31,000).

Precision (what a round trip keeps; tests/test_sog.py checks it against our reader and
splat-transform's): positions within half a 16-bit step of the log-transformed range,
(|x| + 1) * (maxs - mins) / 131070 per axis; rotations within half a byte step, 1/(255 sqrt 2)
≈ 0.0028, on each stored component (a little more on the rebuilt one); opacity within 0.5/255
after the sigmoid (bytes 0 and 255 read as probabilities 1e-6 and 1 - 1e-6, logits -/+13.8, as
splat-transform reads them); log-scales and DC each the nearest entry of their codebook; the
higher SH within the palette's k-means error plus the codebook's.

Reading: the bundled `.sog` (ZIP) of version 2 only (splat-transform reads the same; version 1,
with no `version` field, and the unbundled folder form are not read). Refused with a one-line
FormatError: not a ZIP, a ZIP without meta.json, bad JSON, another version, missing or
inconsistent fields, images missing from the bundle, undecodable or too small images, a
centroid image of the wrong width. An index past the codebook or palette is refused as well
(splat-transform reads zeros there). Images are decoded with Pillow (imported when a SOG file is
read or written: the rest of `hemgs.io` works without it, in Blender's Python).
"""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
from pathlib import Path

import numpy as np

from ..errors import FormatError, InputError
from ..scene import GaussianScene, sh_coeffs
from .atomic import write_bytes_atomic
from .reading import read_bytes

VERSION = 2
ZIP_MAGIC = b"PK\x03\x04"
META = "meta.json"
FILES = {"means": ["means_l.webp", "means_u.webp"], "scales": ["scales.webp"], "quats": ["quats.webp"],
         "sh0": ["sh0.webp"], "shN": ["shN_centroids.webp", "shN_labels.webp"]}
CODEBOOK = 256
PALETTE_ROW = 64  # palette entries per row of shN_centroids
QUAT_TAG = 252  # alpha of a quats texel: 252 + the index of the largest component
MAX_TEXELS = 16383  # WebP's largest width and height
MAX_META_BYTES = 16 << 20  # meta.json: three codebooks and a few numbers (kB)
MAX_IMAGE_BYTES = 4 * MAX_TEXELS * MAX_TEXELS + (1 << 20)  # an image file larger than its raw texels
MAX_INFLATE = 1100  # deflate tops out at 1032:1 (a bundle's members are stored; others may deflate)
OPACITY_EPS = 1e-6  # opacity bytes 0 and 255 read as these probabilities (as splat-transform reads them)
SQRT2 = math.sqrt(2.0)
ALPHA = 0.5  # a codebook bin's weight is its count to this power (codebook_1d)
_SOG_NAMES = {META, *(name for names in FILES.values() for name in names)}
# Distinct coefficients per SH degree beyond DC.
_REST = {1: 3, 2: 8, 3: 15}


def generator() -> str:
    from .. import __version__
    return f"hemgs {__version__}"


def _pil():
    """Pillow's Image module, with WebP; a one-line InputError where it is missing."""
    try:
        from PIL import Image, features
    except ImportError:
        raise InputError("SOG files need Pillow (pip install pillow), which this Python lacks") from None
    if not features.check("webp"):
        raise InputError("SOG files need Pillow built with WebP support; this Pillow has none")
    return Image


# --------------------------------------------------------------------------------------------
# what the writer computes


def texture_size(n: int) -> tuple[int, int]:
    """Width and height of the per-Gaussian images for n Gaussians (multiples of 4, W*H >= n)."""
    width = max(4, math.ceil(math.sqrt(n) / 4) * 4)
    height = max(4, math.ceil(n / width / 4) * 4)
    return width, height


def palette_size(n: int) -> int:
    """Entries of the SH palette for n Gaussians: splat-transform's size (1K to 64K, a power of two
    times 1024, about n/2 below 128K Gaussians), at most n."""
    size = min(64.0, 2.0 ** math.floor(math.log2(n / 1024))) * 1024 if n else 0
    return max(1, min(n, int(size)))


def _spread_bits(v: np.ndarray) -> np.ndarray:
    """The 16 low bits of v (uint64) spread out to every third bit."""
    v = v & 0xFFFF
    v = (v | (v << 16)) & 0x0000FF0000FF
    v = (v | (v << 8)) & 0x00F00F00F00F
    v = (v | (v << 4)) & 0x0C30C30C30C3
    v = (v | (v << 2)) & 0x249249249249
    return v


def morton_order(means: np.ndarray) -> np.ndarray:
    """The order the writer puts Gaussians in: by a 48-bit Morton code of their positions (16 bits
    per axis within the bounding box), ties in their original order."""
    p = np.asarray(means, np.float64)
    if len(p) == 0:
        return np.zeros(0, np.int64)
    lo, hi = p.min(0), p.max(0)
    span = np.where(hi > lo, hi - lo, 1.0)
    cells = np.clip(np.floor((p - lo) / span * 65535.0 + 0.5), 0, 65535).astype(np.uint64)
    code = (_spread_bits(cells[:, 0]) | (_spread_bits(cells[:, 1]) << np.uint64(1))
            | (_spread_bits(cells[:, 2]) << np.uint64(2)))
    return np.argsort(code, kind="stable")


def codebook_1d(values: np.ndarray, k: int = CODEBOOK, *, alpha: float = ALPHA,
                bins: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """A codebook of k floats for `values`: (codebook float32 (k,) ascending, labels uint8 like
    `values`, each the nearest entry).

    At most k distinct values: the codebook is those values (exact). Otherwise the values go into
    `bins` equal bins over their range, each bin a point at its values' mean weighted by its
    count^alpha, and the codebook is the optimal 1-D k-means of those points (`_kmeans_1d`: the
    least weighted squared error, found exactly). alpha < 1 gives sparse tails (outlying values)
    more of the codebook than plain squared error would, at a small cost in the dense middle. The
    codebook is padded with its last value to k entries (a reader indexes it by any byte)."""
    flat = np.asarray(values, np.float64).ravel()
    if flat.size == 0:
        return np.zeros(k, np.float32), np.zeros(np.shape(values), np.uint8)
    distinct = np.unique(flat)
    if distinct.size <= k:
        centres = distinct
    else:
        lo, hi = distinct[0], distinct[-1]
        which = np.minimum(((flat - lo) / (hi - lo) * bins).astype(np.int64), bins - 1)
        counts = np.bincount(which, minlength=bins)
        full = counts > 0
        x = np.bincount(which, weights=flat, minlength=bins)[full] / counts[full]
        w = counts[full].astype(np.float64) ** alpha
        centres = _kmeans_1d(x, w, k)
    book = centres.astype(np.float32)
    labels = _nearest_1d(flat, book.astype(np.float64))
    book = np.concatenate([book, np.full(k - book.size, book[-1], np.float32)])
    return book, labels.reshape(np.shape(values)).astype(np.uint8)


def _kmeans_1d(x: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    """Optimal weighted 1-D k-means of the ascending points x (weights w): the ascending centres.

    Dynamic programming over "the first j points in m clusters" (the classic exact method for one
    dimension, e.g. Wang and Song's Ckmeans.1d.dp), each layer by divide and conquer, since the
    best start of the last cluster never moves left as j grows; the calls of one recursion depth
    are done together as arrays."""
    h = x.size
    if h <= k:
        return x
    shift = np.average(x, weights=w)
    x = x - shift  # less cancellation in the prefix sums
    pw = np.concatenate([[0.0], np.cumsum(w)])
    pwx = np.concatenate([[0.0], np.cumsum(w * x)])
    pwxx = np.concatenate([[0.0], np.cumsum(w * x * x)])

    def cost(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # the cluster of points a..b inclusive
        sw, sx = pw[b + 1] - pw[a], pwx[b + 1] - pwx[a]
        return np.maximum(pwxx[b + 1] - pwxx[a] - sx * sx / sw, 0.0)

    j_all = np.arange(h)
    prev = cost(np.zeros(h, np.int64), j_all)
    starts = np.zeros((k, h), np.int64)  # starts[m][j]: first point of the last of m+1 clusters
    for m in range(1, k):
        cur = np.full(h, np.inf)
        jl, jr = np.array([m]), np.array([h - 1])
        sl, sr = np.array([m - 1]), np.array([h - 2])
        while jl.size:
            mid = (jl + jr) // 2
            top = np.minimum(sr, mid - 1)
            lens = top - sl + 1
            seg = np.repeat(np.arange(mid.size), lens)
            offsets = np.concatenate([[0], np.cumsum(lens)[:-1]])
            s = sl[seg] + np.arange(seg.size) - offsets[seg]
            val = prev[s] + cost(s + 1, mid[seg])
            best = np.minimum.reduceat(val, offsets)
            first = np.flatnonzero(val == best[seg])
            _, pick = np.unique(seg[first], return_index=True)
            arg = s[first[pick]]
            cur[mid] = best
            starts[m, mid] = arg + 1
            left, right = jl <= mid - 1, mid + 1 <= jr
            # Left halves search up to the split found, right halves from it.
            jl, jr = np.concatenate([jl[left], (mid + 1)[right]]), np.concatenate([(mid - 1)[left], jr[right]])
            sl, sr = np.concatenate([sl[left], arg[right]]), np.concatenate([arg[left], sr[right]])
        prev = cur
    centres, j = [], h - 1
    for m in range(k - 1, -1, -1):
        a = starts[m, j] if m else 0
        centres.append((pwx[j + 1] - pwx[a]) / (pw[j + 1] - pw[a]))
        j = a - 1
    return np.unique(np.array(centres) + shift)


def _nearest_1d(values: np.ndarray, book: np.ndarray) -> np.ndarray:
    """Index of the nearest entry of the ascending `book` for each value."""
    i = np.clip(np.searchsorted(book, values), 1, max(book.size - 1, 1))
    if book.size == 1:
        return np.zeros(values.shape, np.int64)
    left = values - book[i - 1] <= book[i] - values
    return np.where(left, i - 1, i)


def _nearest(x: np.ndarray, centres: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Index of the nearest row of `centres` (squared Euclidean) for each row of `x`."""
    cc = (centres * centres).sum(1)
    out = np.empty(len(x), np.int64)
    for s in range(0, len(x), chunk):
        part = x[s:s + chunk]
        out[s:s + chunk] = np.argmin(cc[None, :] - 2.0 * part @ centres.T, axis=1)
    return out


def _lloyd(x: np.ndarray, w: np.ndarray, k: int, iterations: int,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Weighted k-means of the distinct rows x (float64) with weights w: (centres (k', d), labels),
    k' = min(k, rows). Starts at k random rows; a centre left without rows moves to the row
    farthest from its centre, so every centre ends up used."""
    if k >= len(x):
        return x.copy(), np.arange(len(x))
    centres = x[np.sort(rng.choice(len(x), k, replace=False))]
    labels = _nearest(x, centres)
    for _ in range(iterations):
        weight = np.bincount(labels, weights=w, minlength=k)
        sums = _weighted_sums(x, w, labels, k)
        used = weight > 0
        centres[used] = sums[used] / weight[used, None]
        new = _nearest(x, centres)
        empty = np.flatnonzero(np.bincount(new, minlength=k) == 0)
        if empty.size:
            far = np.argsort(-((x - centres[new]) ** 2).sum(1), kind="stable")[:empty.size]
            centres[empty] = x[far]
            new = _nearest(x, centres)
        if np.array_equal(new, labels):
            break
        labels = new
    return _compact(centres, labels)


def sh_palette(rest: np.ndarray, size: int, iterations: int = 10, seed: int = 0, *, refine: int = 3,
               probes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """The SH palette: (centroids (m, d) float64 with m <= size, labels (n,)) for the rows of `rest`
    (n, d). Equal rows count once (with their number as weight): a scene with at most `size`
    distinct rows keeps them exactly. Otherwise a coarse k-means into at most 256 cells, then
    k-means inside each cell with a share of `size` in proportion to its rows, then `refine`
    Lloyd rounds over the whole palette in which each row may move to an entry of any of its
    `probes` nearest cells; from a fixed seed, so the same input gives the same palette."""
    x = np.asarray(rest, np.float64)
    n = len(x)
    rng = np.random.default_rng(seed)
    rows, inverse, weight = np.unique(x, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    weight = weight.astype(np.float64)
    m = len(rows)
    if size >= m:
        return rows, inverse
    coarse = min(256, size)
    if m <= 65536:
        centres, _ = _lloyd(rows, weight, coarse, iterations, rng)
    else:
        pick = np.sort(rng.choice(m, 65536, replace=False))
        centres, _ = _lloyd(rows[pick], weight[pick], coarse, iterations, rng)
    cells = _nearest(rows, centres)
    mass = np.bincount(cells, weights=weight, minlength=len(centres))
    distinct = np.bincount(cells, minlength=len(centres))
    # Each cell's share of the palette: in proportion to its rows, at least one, at most its
    # distinct rows; what rounding leaves goes to the cells that lost most to it.
    ideal = size * mass / n
    share = np.minimum(distinct, np.maximum(distinct > 0, np.floor(ideal)).astype(np.int64))
    spare = size - int(share.sum())
    for c in np.argsort(-(ideal - share), kind="stable"):
        if spare <= 0:
            break
        if share[c] < distinct[c]:
            share[c] += 1
            spare -= 1
    parts, owner, labels, base = [], [], np.empty(m, np.int64), 0
    for c in range(len(centres)):
        here = np.flatnonzero(cells == c)
        if here.size == 0:
            continue
        part, lab = _lloyd(rows[here], weight[here], int(share[c]), iterations, rng)
        parts.append(part)
        owner.append(np.full(len(part), c))
        labels[here] = lab + base
        base += len(part)
    palette = np.concatenate(parts)
    if refine:
        palette, labels = _refine(rows, weight, palette, labels, np.concatenate(owner), centres, refine, probes)
    return palette, labels[inverse]


def _refine(rows, weight, palette, labels, owner, centres, rounds: int, probes: int):
    """Lloyd rounds over the whole palette, each row choosing among the entries of its `probes`
    nearest coarse cells (not only its own): (palette, labels). An entry left without rows keeps
    its place."""
    k = len(palette)
    near = np.concatenate([np.argsort(_sq_dist(rows[s:s + 8192], centres), axis=1, kind="stable")[:, :probes]
                           for s in range(0, len(rows), 8192)])
    # The rows that probe each cell, and each cell's entries, grouped once.
    by_cell = np.argsort(near.ravel(), kind="stable") // probes
    probe_bounds = np.searchsorted(np.sort(near.ravel()), np.arange(len(centres) + 1))
    entry_order = np.argsort(owner, kind="stable")
    entry_bounds = np.searchsorted(owner[entry_order], np.arange(len(centres) + 1))
    for _ in range(rounds):
        mass = np.bincount(labels, weights=weight, minlength=k)
        sums = _weighted_sums(rows, weight, labels, k)
        used = mass > 0
        palette[used] = sums[used] / mass[used, None]
        best = np.full(len(rows), np.inf)
        new = labels.copy()
        for c in range(len(centres)):
            mine = entry_order[entry_bounds[c]:entry_bounds[c + 1]]
            who = by_cell[probe_bounds[c]:probe_bounds[c + 1]]
            if mine.size == 0 or who.size == 0:
                continue
            d = _sq_dist(rows[who], palette[mine])
            pick = np.argmin(d, axis=1)
            dist = d[np.arange(who.size), pick]
            better = dist < best[who]
            best[who[better]] = dist[better]
            new[who[better]] = mine[pick[better]]
        if np.array_equal(new, labels):
            break
        labels = new
    return _compact(palette, labels)


def _compact(centres: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The centres some row uses, in their order, and the labels renumbered to them."""
    used = np.unique(labels)
    remap = np.full(len(centres), -1, np.int64)
    remap[used] = np.arange(used.size)
    return centres[used], remap[labels]


def _weighted_sums(x: np.ndarray, w: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """(k, d): the sum of w * x over the rows of each label (a bincount per column)."""
    return np.stack([np.bincount(labels, weights=x[:, j] * w, minlength=k) for j in range(x.shape[1])], axis=1)


def _sq_dist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    return (x * x).sum(1)[:, None] - 2.0 * x @ c.T + (c * c).sum(1)[None, :]


# --------------------------------------------------------------------------------------------
# writing


def encode_sog(scene: GaussianScene, *, iterations: int = 10, effort: int = 4) -> bytes:
    """Encode `scene` (the PLY frame, which SOG keeps) as the bytes of a bundled `.sog`.

    `iterations`: k-means iterations of the SH palette; `effort`: libwebp's method (0 fast .. 6
    smallest). Deterministic: the same scene gives the same bytes. Refuses (InputError) an empty
    scene, one too large for WebP images and non-finite values (run `hemgs.scene.sanitize` first).
    """
    n = len(scene)
    if n == 0:
        raise InputError("cannot write SOG: the scene has no Gaussians")
    width, height = texture_size(n)
    if width > MAX_TEXELS or height > MAX_TEXELS:
        raise InputError(f"cannot write SOG: {n} Gaussians need {width}x{height} images, "
                         f"WebP holds {MAX_TEXELS}x{MAX_TEXELS}")
    for field in ("means", "quats", "log_scales", "opacity_logits", "sh"):
        if not np.isfinite(getattr(scene, field)).all():
            raise InputError(f"cannot write SOG: scene field {field} has NaN/Inf values (sanitize the scene first)")
    norms = np.linalg.norm(scene.quats.astype(np.float64), axis=1)
    if not (norms > 0).all():
        raise InputError("cannot write SOG: a rotation quaternion is zero (sanitize the scene first)")
    image = _pil()
    order = morton_order(scene.means)

    def texels(channels: list[np.ndarray], alpha: np.ndarray | None = None) -> np.ndarray:
        """Per-Gaussian bytes (n,) per channel, in file order, laid out as an H x W image."""
        out = np.zeros((width * height, 3 if alpha is None else 4), np.uint8)
        for c, values in enumerate(channels + ([] if alpha is None else [alpha])):
            out[:n, c] = values[order]
        return out.reshape(height, width, -1)

    files: dict[str, bytes] = {}

    def webp(name: str, pixels: np.ndarray) -> None:
        buf = io.BytesIO()
        image.fromarray(np.ascontiguousarray(pixels)).save(
            buf, "WEBP", lossless=True, quality=75, method=effort, exact=True)
        files[name] = buf.getvalue()

    # means: log transform, 16 bits within [mins, maxs] per axis.
    m = scene.means.astype(np.float64)
    logm = np.sign(m) * np.log1p(np.abs(m))
    mins, maxs = logm.min(0), logm.max(0)
    span = np.where(maxs > mins, maxs - mins, 1.0)
    q16 = np.clip(np.floor((logm - mins) / span * 65535.0 + 0.5), 0, 65535).astype(np.uint32)
    files_means = FILES["means"]
    webp(files_means[0], texels([(q16[:, a] & 0xFF).astype(np.uint8) for a in range(3)]))
    webp(files_means[1], texels([(q16[:, a] >> 8).astype(np.uint8) for a in range(3)]))

    # quats: smallest three of the unit quaternion (w, x, y, z), largest made positive.
    q = scene.quats.astype(np.float64) / norms[:, None]
    largest = np.argmax(np.abs(q), axis=1)
    q *= np.where(q[np.arange(n), largest] < 0, -1.0, 1.0)[:, None]
    others = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[largest]
    small = np.take_along_axis(q, others, axis=1) * SQRT2
    qbytes = np.clip(np.floor(255.0 * (small * 0.5 + 0.5) + 0.5), 0, 255).astype(np.uint8)
    webp(FILES["quats"][0], texels([qbytes[:, i] for i in range(3)], (QUAT_TAG + largest).astype(np.uint8)))

    # scales: one codebook for the three log-scales.
    scale_book, scale_labels = codebook_1d(scene.log_scales)
    webp(FILES["scales"][0], texels([scale_labels[:, a] for a in range(3)]))

    # sh0: one codebook for the three DC coefficients; opacity (after the sigmoid) as alpha.
    dc_book, dc_labels = codebook_1d(scene.sh[:, 0, :])
    opacity = 1.0 / (1.0 + np.exp(-scene.opacity_logits.astype(np.float64)))
    alpha = np.clip(np.floor(opacity * 255.0 + 0.5), 0, 255).astype(np.uint8)
    webp(FILES["sh0"][0], texels([dc_labels[:, c] for c in range(3)], alpha))

    meta = {
        "version": VERSION,
        "asset": {"generator": generator()},
        "count": n,
        "means": {"mins": mins.tolist(), "maxs": maxs.tolist(), "files": files_means},
        "scales": {"codebook": _floats(scale_book), "files": FILES["scales"]},
        "quats": {"files": FILES["quats"]},
        "sh0": {"codebook": _floats(dc_book), "files": FILES["sh0"]},
    }

    degree = scene.sh_degree
    if degree > 0:
        coeffs = _REST[degree]
        # One vector per Gaussian: coefficient j of colour c at j + c * coeffs (channel-major, as
        # f_rest is in a PLY; the order inside the vector is the palette's own business).
        rest = scene.sh[:, 1:, :].transpose(0, 2, 1).reshape(n, 3 * coeffs)
        centroids, labels = sh_palette(rest, palette_size(n), iterations)
        entries = len(centroids)
        sh_book, sh_labels = codebook_1d(centroids)
        rows = math.ceil(entries / PALETTE_ROW)
        cen = np.zeros((rows * PALETTE_ROW * coeffs, 3), np.uint8)
        cen[:entries * coeffs] = sh_labels.reshape(entries, 3, coeffs).transpose(0, 2, 1).reshape(-1, 3)
        webp(FILES["shN"][0], cen.reshape(rows, PALETTE_ROW * coeffs, 3))
        lab = labels.astype(np.uint32)
        webp(FILES["shN"][1], texels([(lab & 0xFF).astype(np.uint8), (lab >> 8).astype(np.uint8),
                                      np.zeros(n, np.uint8)]))
        meta["shN"] = {"count": entries, "bands": degree, "codebook": _floats(sh_book), "files": FILES["shN"]}

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        # A fixed date: the same scene gives the same bytes.
        zf.writestr(zipfile.ZipInfo(META, (1980, 1, 1, 0, 0, 0)), json.dumps(meta, separators=(",", ":")))
        for name, data in files.items():
            zf.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), data)
    return buf.getvalue()


def _floats(book: np.ndarray) -> list[float]:
    # float32 values as the shortest decimal that reads back as the same float32.
    return [float(np.format_float_positional(v, unique=True, trim="-")) for v in book.astype(np.float32)]


def write_sog(scene: GaussianScene, path: str | os.PathLike, **options) -> None:
    """Write `scene` as a bundled `.sog` (see `encode_sog`), atomically (temp file + rename)."""
    write_bytes_atomic(path, encode_sog(scene, **options))


# --------------------------------------------------------------------------------------------
# reading


def sniff_sog(head: bytes, path: Path) -> bool:
    """The registry's content test: a ZIP archive whose first member is one of SOG's files (so a
    bundle cut short is still named a SOG file), or which holds a meta.json. Other ZIP archives
    (a TorchScript checkpoint, an .npz) stay of unknown format."""
    if not head.startswith(ZIP_MAGIC):
        return False
    try:
        with open(path, "rb") as fh:
            local = fh.read(30 + 64)  # a local file header is 30 bytes, then the member's name
        size = int.from_bytes(local[26:28], "little") if len(local) >= 30 else 0
        if local[30:30 + size].decode("utf-8", "replace") in _SOG_NAMES:
            return True
        with zipfile.ZipFile(path) as bundle:
            return META in bundle.namelist()
    except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError):
        return False


def read_sog(path: str | os.PathLike) -> GaussianScene:
    """Read a bundled `.sog` (version 2) into a `GaussianScene` (the PLY frame, the file's order).

    Raises InputError for a missing file (or a Python without Pillow) and FormatError, one line
    naming the file, for anything the module docstring lists as refused."""
    path = Path(path)
    data = read_bytes(path, "a SOG file")
    scene = decode_sog(data, str(path))
    scene.meta["path"] = str(path)
    return scene


def decode_sog(data: bytes, name: str = "<bytes>") -> GaussianScene:
    """`read_sog` on the bytes of a bundle; `name` is the file name the messages give."""
    return _Reader(data, name).scene()


class _Reader:
    def __init__(self, data: bytes, name: str):
        self.name = name
        if not data.startswith(ZIP_MAGIC):
            raise FormatError(f"{name}: not a SOG file (a .sog is a ZIP archive; starts with {data[:4]!r})")
        try:
            self.zip = zipfile.ZipFile(io.BytesIO(data))
            self.members = {i.filename: i for i in self.zip.infolist()}
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as exc:
            raise FormatError(f"{name}: corrupt or truncated SOG bundle ({exc})") from None
        self.size = len(data)

    def fail(self, what: str) -> FormatError:
        return FormatError(f"{self.name}: {what}")

    def member(self, filename: str, limit: int) -> bytes:
        info = self.members.get(filename)
        if info is None:
            raise self.fail(f"the SOG bundle has no {filename}")
        if info.file_size > limit:
            raise self.fail(f"{filename} in the SOG bundle is {info.file_size} bytes, more than {limit}")
        try:
            return self.zip.read(info)
        except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError, OSError) as exc:
            raise self.fail(f"{filename} in the SOG bundle is corrupt or truncated ({exc})") from None

    def meta(self) -> dict:
        if META not in self.members:
            raise self.fail("a ZIP archive without meta.json, not a SOG bundle")
        raw = self.member(META, MAX_META_BYTES)
        try:
            meta = json.loads(raw)
        except (UnicodeDecodeError, ValueError) as exc:
            raise self.fail(f"meta.json is not JSON ({exc})") from None
        if not isinstance(meta, dict):
            raise self.fail("meta.json is not a JSON object")
        version = meta.get("version")
        if version is None:
            raise self.fail("SOG version 1 (meta.json without 'version') is not read; convert it with "
                            "splat-transform to version 2")
        if version != VERSION:
            raise self.fail(f"unsupported SOG version {version!r} (we read {VERSION})")
        return meta

    def field(self, meta: dict, key: str, sub: str | None = None):
        part = meta.get(key)
        if sub is None:
            return part
        if not isinstance(part, dict) or sub not in part:
            raise self.fail(f"meta.json has no {key}.{sub}")
        return part[sub]

    def numbers(self, meta: dict, key: str, sub: str, length: int | None) -> np.ndarray:
        value = self.field(meta, key, sub)
        try:
            arr = np.asarray(value, np.float64)
        except (TypeError, ValueError):
            arr = np.zeros(0)
        if arr.ndim != 1 or (length is not None and arr.size != length) or not np.isfinite(arr).all():
            want = f"{length} finite numbers" if length else "a list of finite numbers"
            raise self.fail(f"meta.json {key}.{sub} is not {want}")
        return arr

    def files(self, meta: dict, key: str, count: int) -> list[str]:
        names = self.field(meta, key, "files")
        if not isinstance(names, list) or len(names) < count or not all(isinstance(x, str) for x in names[:count]):
            raise self.fail(f"meta.json {key}.files does not name its {count} image(s)")
        return names[:count]

    def texels(self, filename: str, need: int | None = None, width: int | None = None) -> tuple[np.ndarray, int, int]:
        """The image's texels as (H*W, 4) uint8 RGBA, its width and height."""
        raw = self.member(filename, min(MAX_INFLATE * self.size, MAX_IMAGE_BYTES))
        image = _pil()  # after meta.json: a ZIP that is no SOG file is named so even without Pillow
        try:
            with image.open(io.BytesIO(raw)) as img:
                if img.format not in ("WEBP", "PNG"):
                    raise self.fail(f"{filename} is {img.format}, not a lossless WebP (or PNG) image")
                w, h = img.size
                if w > MAX_TEXELS or h > MAX_TEXELS:
                    raise self.fail(f"{filename} is {w}x{h}, larger than a SOG image can be")
                if need is not None and w * h < need:
                    raise self.fail(f"{filename} has {w}x{h} texels, fewer than the {need} Gaussians of meta.json")
                if width is not None and w != width:
                    raise self.fail(f"{filename} is {w} texels wide, its palette needs {width}")
                rgba = np.asarray(img.convert("RGBA"), np.uint8).reshape(-1, 4)
        except FormatError:
            raise
        except Exception as exc:  # Pillow's errors for a broken image are of many types
            raise self.fail(f"{filename} is not a readable image ({type(exc).__name__}: {exc})") from None
        return rgba, w, h

    def codebook(self, meta: dict, key: str) -> np.ndarray:
        book = self.numbers(meta, key, "codebook", None)
        if book.size == 0:
            raise self.fail(f"meta.json {key}.codebook is empty")
        return book.astype(np.float32)

    def lookup(self, book: np.ndarray, index: np.ndarray, key: str) -> np.ndarray:
        if index.size and int(index.max()) >= book.size:
            raise self.fail(f"an index {int(index.max())} past the {book.size} entries of {key}.codebook")
        return book[index]

    def scene(self) -> GaussianScene:
        meta = self.meta()
        n = meta.get("count")
        if not isinstance(n, int) or isinstance(n, bool) or n < 0 or n > MAX_TEXELS * MAX_TEXELS:
            raise self.fail(f"meta.json count {n!r} is not a Gaussian count")

        lo_name, hi_name = self.files(meta, "means", 2)
        mins = self.numbers(meta, "means", "mins", 3)
        maxs = self.numbers(meta, "means", "maxs", 3)
        lo = self.texels(lo_name, n)[0][:n, :3].astype(np.float64)
        hi = self.texels(hi_name, n)[0][:n, :3].astype(np.float64)
        span = np.where(maxs - mins != 0, maxs - mins, 1.0)
        v = mins + span * ((lo + 256.0 * hi) / 65535.0)
        means = np.sign(v) * np.expm1(np.abs(v))

        quat_t = self.texels(self.files(meta, "quats", 1)[0], n)[0][:n]
        quats = _unpack_quats(quat_t)

        scale_t = self.texels(self.files(meta, "scales", 1)[0], n)[0][:n, :3]
        log_scales = self.lookup(self.codebook(meta, "scales"), scale_t, "scales")

        sh0_t = self.texels(self.files(meta, "sh0", 1)[0], n)[0][:n]
        dc = self.lookup(self.codebook(meta, "sh0"), sh0_t[:, :3], "sh0")
        p = np.clip(sh0_t[:, 3].astype(np.float64) / 255.0, OPACITY_EPS, 1.0 - OPACITY_EPS)
        opacity = np.log(p / (1.0 - p))

        degree = 0
        shn = meta.get("shN")
        if shn is not None:
            degree = self.field(meta, "shN", "bands")
            if degree not in (0, 1, 2, 3) or isinstance(degree, bool):
                raise self.fail(f"meta.json shN.bands {degree!r} is not 0-3")
        sh = np.zeros((n, sh_coeffs(degree), 3), np.float32)
        sh[:, 0] = dc
        if degree > 0:
            coeffs = _REST[degree]
            entries = self.field(meta, "shN", "count")
            if not isinstance(entries, int) or isinstance(entries, bool) or not 0 < entries <= 65536:
                raise self.fail(f"meta.json shN.count {entries!r} is not a palette size (1-65536)")
            cen_name, lab_name = self.files(meta, "shN", 2)
            book = self.codebook(meta, "shN")
            lab_t = self.texels(lab_name, n)[0][:n]
            labels = lab_t[:, 0].astype(np.int64) | (lab_t[:, 1].astype(np.int64) << 8)
            if labels.size and int(labels.max()) >= entries:
                raise self.fail(f"a palette index {int(labels.max())} past the {entries} entries of shN.count")
            cen_t, cw, ch = self.texels(cen_name, None, PALETTE_ROW * coeffs)
            if ch * PALETTE_ROW < entries:
                raise self.fail(f"{cen_name} has {ch} rows, {entries} palette entries need "
                                f"{math.ceil(entries / PALETTE_ROW)}")
            palette = cen_t[:entries * coeffs, :3].reshape(entries, coeffs, 3)
            sh[:, 1:] = self.lookup(book, palette, "shN")[labels]

        scene = GaussianScene(means.astype(np.float32), quats, log_scales.astype(np.float32),
                              opacity.astype(np.float32), sh,
                              {"source_format": "sog", "sog_version": VERSION})
        model = meta.get("model")
        if model is not None:
            scene.meta["sog_model"] = model
        return scene


def _unpack_quats(t: np.ndarray) -> np.ndarray:
    """(n, 4) RGBA quats texels -> (n, 4) unit quaternions (w, x, y, z); a tag outside 252..255
    reads as the identity, as splat-transform reads it."""
    n = len(t)
    tag = t[:, 3].astype(np.int64) - QUAT_TAG
    valid = (tag >= 0) & (tag <= 3)
    largest = np.where(valid, tag, 0)
    small = (t[:, :3].astype(np.float64) / 255.0 * 2.0 - 1.0) / SQRT2
    q = np.zeros((n, 4), np.float64)
    others = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[largest]
    np.put_along_axis(q, others, small, axis=1)
    q[np.arange(n), largest] = np.sqrt(np.maximum(0.0, 1.0 - (small * small).sum(1)))
    q[~valid] = (1.0, 0.0, 0.0, 0.0)
    return q.astype(np.float32)
