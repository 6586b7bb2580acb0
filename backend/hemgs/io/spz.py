"""Niantic SPZ (versions 2, 3 and 4): reader and writer (numpy, gzip/zlib and zstandard only).

Hand-written from the format description in nianticlabs/spz (README.md, src/cc/load-spz.cc,
src/cc/splat-types.h); there is no well-kept pure-Python SPZ library to depend on.

Layout. v2/v3: one gzip stream holding a 16-byte header (magic "NGSP", version, numPoints,
shDegree, fractionalBits, flags, reserved) and then, attribute by attribute: positions (3 x 24-bit
fixed point), alphas (uint8 sigmoid), colors (uint8 SH DC), scales (uint8 log), rotations
(v2: 3 bytes xyz with w >= 0; v3: 4 bytes "smallest three"), SH (uint8, coefficient-major with the
channel fastest). v4: a plain 32-byte header (the same fields, then numStreams, tocByteOffset and
12 reserved bytes), optional extension records up to tocByteOffset, a table of contents of
(compressed size, uncompressed size) uint64 pairs, then one zstd frame per attribute stream in the
same order (the SH stream only when shDegree > 0). Rotations in v4 are smallest-three.

Coordinates. SPZ stores RUB (x right, y up, z back: OpenGL/three.js); the Inria PLY and our
`GaussianScene` are RDF (x right, y down, z forward: OpenCV/COLMAP). Converting is a flip of y and
z (a 180-degree rotation about x): positions (x, -y, -z), quaternion vector part (x, -y, -z) with w
kept, and a sign per SH coefficient. The same flip both ways, so PLY -> SPZ -> PLY is the identity
up to quantization, and our SPZ files open upright in other SPZ viewers.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import zstandard

from ..errors import FormatError, InputError
from ..scene import GaussianScene, sh_coeffs
from .atomic import write_bytes_atomic
from .reading import read_bytes

MAGIC = 0x5053474E  # b"NGSP" little-endian
MAGIC_BYTES = b"NGSP"
GZIP_MAGIC = b"\x1f\x8b"
SUPPORTED_VERSIONS = (2, 3, 4)
COLOR_SCALE = 0.15  # SPZ stores f_dc * 0.15 (not SH_C0) so slightly out-of-gamut DC still fits
SQRT1_2 = 0.7071067811865476
FLAG_ANTIALIASED = 0x1
FLAG_EXTENSIONS = 0x2
# Hard limits that refuse absurd headers before anything is allocated.
MAX_POINTS = 1 << 28
MAX_ZSTD_RATIO = 50_000  # zstd RLE blocks top out around 43,000:1
MAX_GZIP_RATIO = 1_100  # deflate tops out at 1032:1

_HEADER_V3 = struct.Struct("<IIIBBBB")  # 16 bytes
_HEADER_V4 = struct.Struct("<IIIBBBBI12x")  # 32 bytes
_TOC_ENTRY = struct.Struct("<QQ")

# Sign of each SH coefficient (bands 1..3, Inria order) under the RDF <-> RUB flip (y, z -> -y, -z):
# the parity of the real SH basis function under that reflection pair.
_SH_FLIP = np.array([-1, -1, 1, -1, 1, 1, -1, 1, -1, 1, -1, -1, 1, -1, 1], np.float32)
_POS_FLIP = np.array([1, -1, -1], np.float32)


def _sh_dim(degree: int) -> int:
    """SH coefficients per channel beyond DC, for SPZ degrees 0..4."""
    return (degree + 1) ** 2 - 1


def _stream_sizes(n: int, sh_degree: int, rot_bytes: int) -> list[int]:
    """Byte sizes of positions, alphas, colors, scales, rotations, SH for `n` points."""
    return [9 * n, n, 3 * n, 3 * n, rot_bytes * n, 3 * _sh_dim(sh_degree) * n]


# --------------------------------------------------------------------------------------------
# reading


def read_spz(path: str | os.PathLike) -> GaussianScene:
    """Read an SPZ file (v2, v3 or v4) into a `GaussianScene` in the RDF (Inria PLY) frame.

    Raises InputError for a missing file and FormatError for bad magic, unsupported versions,
    truncated or corrupt streams and counts that disagree with the data.
    """
    path = Path(path)
    data = read_bytes(path, "an SPZ file")
    scene = decode_spz(data, name=str(path))
    scene.meta["path"] = str(path)
    return scene


def decode_spz(data: bytes, name: str = "<bytes>") -> GaussianScene:
    """Decode SPZ bytes (any supported version); `name` is used in error messages."""
    if data[:2] == GZIP_MAGIC:
        header, streams = _unpack_gzip(data, name)
    elif data[:4] == MAGIC_BYTES:
        header, streams = _unpack_v4(data, name)
    elif len(data) < 4:
        raise FormatError(f"{name}: truncated SPZ file ({len(data)} bytes)")
    else:
        raise FormatError(f"{name}: not an SPZ file (starts with {data[:4]!r}, expected gzip or 'NGSP')")
    return _decode_streams(header, streams, name)


def _check_header(version: int, n: int, sh_degree: int, frac_bits: int, name: str) -> None:
    if version not in SUPPORTED_VERSIONS:
        raise FormatError(f"{name}: unsupported SPZ version {version} (supported: 2, 3, 4)")
    if sh_degree > 4:
        raise FormatError(f"{name}: SPZ SH degree {sh_degree} is out of range 0-4")
    if frac_bits > 23:
        raise FormatError(f"{name}: SPZ fractionalBits {frac_bits} is out of range 0-23")
    if n > MAX_POINTS:
        raise FormatError(f"{name}: SPZ header claims {n} points, more than the {MAX_POINTS} we accept")


def _unpack_gzip(data: bytes, name: str) -> tuple[dict, list[bytes]]:
    """v2/v3: gunzip with a cap derived from the header, then split into streams."""
    dec = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        head = dec.decompress(data, _HEADER_V3.size)
    except zlib.error as exc:
        raise FormatError(f"{name}: corrupt SPZ gzip stream ({exc})") from None
    if len(head) < _HEADER_V3.size:
        raise FormatError(f"{name}: truncated SPZ: the gzip stream ends inside the 16-byte header")
    magic, version, n, sh_degree, frac_bits, flags, _ = _HEADER_V3.unpack(head)
    if magic != MAGIC:
        raise FormatError(f"{name}: gzip file is not SPZ (inner magic {head[:4]!r}, expected 'NGSP')")
    if version == 4:
        raise FormatError(f"{name}: SPZ version 4 inside gzip is invalid (v4 is a plain zstd container)")
    _check_header(version, n, sh_degree, frac_bits, name)
    if flags & FLAG_EXTENSIONS:
        raise FormatError(f"{name}: SPZ v{version} with extension records is not supported (re-save as v4)")
    sizes = _stream_sizes(n, sh_degree, 4 if version >= 3 else 3)
    body = sum(sizes)
    if body > MAX_GZIP_RATIO * len(data):
        raise FormatError(
            f"{name}: SPZ header claims {n} points ({body} bytes) but a {len(data)}-byte gzip file "
            "cannot hold them (truncated, or a lying count)"
        )
    try:
        # max_length caps what one call may produce, so a lying header cannot balloon memory.
        payload = dec.decompress(dec.unconsumed_tail, body + 1)
        if len(payload) > body or (len(payload) == body and dec.decompress(dec.unconsumed_tail, 1)):
            raise FormatError(f"{name}: SPZ stream is longer than {n} points need: counts are inconsistent")
    except zlib.error as exc:
        raise FormatError(f"{name}: corrupt or truncated SPZ gzip stream ({exc})") from None
    if len(payload) < body:
        raise FormatError(
            f"{name}: truncated SPZ: {n} points need {body} bytes of data, the stream holds {len(payload)}"
        )
    if not dec.eof:
        raise FormatError(f"{name}: truncated SPZ: the gzip stream has no end (file cut short)")
    header = dict(version=version, n=n, sh_degree=sh_degree, frac_bits=frac_bits, flags=flags, extensions=[])
    return header, _split(payload, sizes)


def _split(payload: bytes, sizes: list[int]) -> list[bytes]:
    out, pos = [], 0
    for s in sizes:
        out.append(payload[pos:pos + s])
        pos += s
    return out


def _unpack_v4(data: bytes, name: str) -> tuple[dict, list[bytes]]:
    if len(data) < _HEADER_V4.size:
        raise FormatError(f"{name}: truncated SPZ: {len(data)} bytes, the v4 header alone is 32")
    magic, version, n, sh_degree, frac_bits, flags, n_streams, toc_at = _HEADER_V4.unpack_from(data)
    _check_header(version, n, sh_degree, frac_bits, name)
    if version != 4:
        raise FormatError(f"{name}: SPZ version {version} must be gzip-compressed, found a plain 'NGSP' header")
    sizes = _stream_sizes(n, sh_degree, 4)
    expect_streams = 6 if sh_degree > 0 else 5
    if n_streams != expect_streams:
        raise FormatError(f"{name}: SPZ v4 has {n_streams} streams, SH degree {sh_degree} needs {expect_streams}")
    toc_end = toc_at + n_streams * _TOC_ENTRY.size
    if toc_at < _HEADER_V4.size or toc_end > len(data):
        raise FormatError(f"{name}: truncated SPZ: table of contents at {toc_at}..{toc_end} lies outside the {len(data)}-byte file")
    extensions = _parse_extensions(data[_HEADER_V4.size:toc_at], name) if flags & FLAG_EXTENSIONS else []
    toc = [_TOC_ENTRY.unpack_from(data, toc_at + i * _TOC_ENTRY.size) for i in range(n_streams)]
    for i, (comp, raw) in enumerate(toc):
        if raw != sizes[i]:
            raise FormatError(
                f"{name}: SPZ stream {i} says {raw} bytes, but {n} points need {sizes[i]}: counts are inconsistent"
            )
        if raw > MAX_ZSTD_RATIO * max(comp, 1):
            raise FormatError(f"{name}: SPZ stream {i} claims {raw} bytes from {comp} compressed: absurd count")
    total = sum(c for c, _ in toc)
    if toc_end + total > len(data):
        raise FormatError(
            f"{name}: truncated SPZ: streams need {total} bytes after the table of contents, the file has {len(data) - toc_end}"
        )
    if toc_end + total < len(data):
        raise FormatError(f"{name}: SPZ has {len(data) - toc_end - total} unexpected bytes after its streams")
    streams, pos = [], toc_end
    dctx = zstandard.ZstdDecompressor()
    for i, (comp, raw) in enumerate(toc):
        streams.append(_unzstd(dctx, data[pos:pos + comp], raw, f"{name}: SPZ stream {i}"))
        pos += comp
    if sh_degree == 0:
        streams.append(b"")
    header = dict(version=4, n=n, sh_degree=sh_degree, frac_bits=frac_bits, flags=flags, extensions=extensions)
    return header, streams


def _unzstd(dctx: zstandard.ZstdDecompressor, chunk: bytes, size: int, what: str) -> bytes:
    """Decompress one zstd frame to exactly `size` bytes, never allocating more than that."""
    if size == 0:
        return b""
    try:
        reader = dctx.stream_reader(io.BytesIO(chunk), read_across_frames=False)
        parts, got = [], 0
        while got < size:
            part = reader.read(size - got)
            if not part:
                break
            parts.append(part)
            got += len(part)
        extra = reader.read(1)
    except zstandard.ZstdError as exc:
        raise FormatError(f"{what} is corrupt or truncated ({exc})") from None
    if got < size:
        raise FormatError(f"{what} is truncated: it decompresses to {got} bytes, expected {size}")
    if extra:
        raise FormatError(f"{what} decompresses to more than the {size} bytes its table says")
    return b"".join(parts)


def _parse_extensions(block: bytes, name: str) -> list[int]:
    """Extension records are (u32 type, u32 length, payload); we skip them, keeping their types."""
    types, pos = [], 0
    while pos < len(block):
        if pos + 8 > len(block):
            raise FormatError(f"{name}: SPZ extension block is truncated")
        typ, length = struct.unpack_from("<II", block, pos)
        pos += 8 + length
        if pos > len(block):
            raise FormatError(f"{name}: SPZ extension record 0x{typ:08x} runs past the table of contents")
        types.append(typ)
    return types


def _decode_streams(header: dict, streams: list[bytes], name: str) -> GaussianScene:
    n, version, frac_bits = header["n"], header["version"], header["frac_bits"]
    pos_b, alpha_b, color_b, scale_b, rot_b, sh_b = (np.frombuffer(s, np.uint8) for s in streams)

    p = pos_b.reshape(n, 3, 3).astype(np.int32)
    fixed = p[..., 0] | (p[..., 1] << 8) | (p[..., 2] << 16)
    fixed = np.where(fixed & 0x800000, fixed - (1 << 24), fixed)  # sign-extend 24 bits
    means = fixed.astype(np.float32) * np.float32(2.0 ** -frac_bits)

    # 0 and 255 would decode to -inf/+inf logits; clamp inside their quantization bins instead.
    prob = np.clip(alpha_b.astype(np.float64) / 255.0, 0.25 / 255.0, 1.0 - 0.25 / 255.0)
    opacity = np.log(prob / (1.0 - prob)).astype(np.float32)
    dc = ((color_b.reshape(n, 3).astype(np.float32) / 255.0) - 0.5) / COLOR_SCALE
    log_scales = scale_b.reshape(n, 3).astype(np.float32) / 16.0 - 10.0
    xyzw = (_unpack_smallest_three(rot_b.reshape(n, 4)) if version >= 3
            else _unpack_first_three(rot_b.reshape(n, 3)))

    deg = header["sh_degree"]
    meta = {"source_format": "spz", "spz_version": version, "spz_fractional_bits": frac_bits,
            "spz_antialiased": bool(header["flags"] & FLAG_ANTIALIASED)}
    if header["extensions"]:
        meta["spz_extensions"] = [f"0x{t:08x}" for t in header["extensions"]]
    rest = (sh_b.reshape(n, _sh_dim(deg), 3).astype(np.float32) - 128.0) / 128.0
    if deg > 3:
        rest = rest[:, :_sh_dim(3)]
        meta["warnings"] = [f"SPZ SH degree {deg} truncated to 3 (the highest degree the scene model holds)"]
        deg = 3
    sh = np.empty((n, sh_coeffs(deg), 3), np.float32)
    sh[:, 0] = dc
    sh[:, 1:] = rest

    # RUB (SPZ) -> RDF (ours): flip y and z; the same flip is its own inverse.
    means *= _POS_FLIP
    quats = np.stack([xyzw[:, 3], xyzw[:, 0], -xyzw[:, 1], -xyzw[:, 2]], axis=1)
    sh[:, 1:] *= _SH_FLIP[: sh.shape[1] - 1, None]
    return GaussianScene(means, quats, log_scales, opacity, sh, meta)


def _unpack_first_three(r: np.ndarray) -> np.ndarray:
    """v2 rotations: xyz as uint8 (x / 127.5 - 1), w >= 0 rebuilt from unit length."""
    xyz = r.astype(np.float32) / 127.5 - 1.0
    w = np.sqrt(np.maximum(0.0, 1.0 - (xyz * xyz).sum(1)))
    return np.concatenate([xyz, w[:, None]], axis=1)


def _unpack_smallest_three(r: np.ndarray) -> np.ndarray:
    """v3/v4 rotations: 2-bit index of the largest |component| (xyzw order), then the other three
    as sign + 9-bit magnitude scaled by 1/sqrt(2), first component in the highest bits."""
    comp = (r[:, 0].astype(np.uint32) | (r[:, 1].astype(np.uint32) << 8)
            | (r[:, 2].astype(np.uint32) << 16) | (r[:, 3].astype(np.uint32) << 24))
    largest = (comp >> 30).astype(np.int64)
    q = np.zeros((len(r), 4), np.float32)
    sumsq = np.zeros(len(r), np.float32)
    for i in (3, 2, 1, 0):
        here = largest != i
        mag = (comp & 511).astype(np.float32) * np.float32(SQRT1_2 / 511.0)
        val = np.where((comp >> 9) & 1, -mag, mag)
        q[here, i] = val[here]
        sumsq += np.where(here, val * val, 0.0)
        comp = np.where(here, comp >> 10, comp)
    q[np.arange(len(r)), largest] = np.sqrt(np.maximum(0.0, 1.0 - sumsq))
    return q


# --------------------------------------------------------------------------------------------
# writing


def encode_spz(scene: GaussianScene, *, version: int = 4, sh1_bits: int = 5, sh_rest_bits: int = 4,
               zstd_level: int = 12) -> bytes:
    """Encode `scene` (RDF frame) as SPZ bytes (RUB frame inside, as the format specifies).

    `version`: 4 (zstd streams, default), 3 (gzip, smallest-three rotations) or 2 (gzip, 3-byte
    rotations). `sh1_bits`/`sh_rest_bits` (1-8) quantize SH bands 1 and 2-3 more coarsely, as the
    reference encoder does (5 and 4 bits), so they compress better; the decoder needs no setting.
    Positions use 12 fractional bits (1/4096) unless the scene is too large for 24-bit fixed
    point, then fewer. Non-finite values raise InputError (run `hemgs.scene.sanitize` first).
    """
    if version not in SUPPORTED_VERSIONS:
        raise InputError(f"cannot write SPZ version {version} (supported: 2, 3, 4)")
    for label, bits in (("sh1_bits", sh1_bits), ("sh_rest_bits", sh_rest_bits)):
        if not 1 <= bits <= 8:
            raise InputError(f"SPZ {label} must be 1-8, got {bits}")
    n = len(scene)
    if n > MAX_POINTS:
        raise InputError(f"scene has {n} Gaussians, more than SPZ files we write hold ({MAX_POINTS})")
    for field in ("means", "quats", "log_scales", "opacity_logits", "sh"):
        if not np.isfinite(getattr(scene, field)).all():
            raise InputError(f"cannot write SPZ: scene field {field} has NaN/Inf values (sanitize the scene first)")

    means = scene.means.astype(np.float64) * _POS_FLIP
    extent = float(np.abs(means).max()) if n else 0.0
    frac_bits = 12
    while frac_bits > 0 and round(extent * 2 ** frac_bits) > (1 << 23) - 1:
        frac_bits -= 1
    if round(extent * 2 ** frac_bits) > (1 << 23) - 1:
        raise InputError(f"cannot write SPZ: a position of magnitude {extent:.3g} exceeds the 24-bit range")
    fixed = np.round(means * 2.0 ** frac_bits).astype("<i4")
    positions = fixed.view(np.uint8).reshape(n, 3, 4)[..., :3].tobytes()

    alphas = _to_u8(255.0 / (1.0 + np.exp(-scene.opacity_logits.astype(np.float64))))
    colors = _to_u8(scene.sh[:, 0].astype(np.float64) * (COLOR_SCALE * 255.0) + 127.5)
    scales = _to_u8((scene.log_scales.astype(np.float64) + 10.0) * 16.0)

    q = scene.quats.astype(np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-30)
    xyzw = np.stack([q[:, 1], -q[:, 2], -q[:, 3], q[:, 0]], axis=1)  # RDF wxyz -> RUB xyzw
    rotations = _pack_smallest_three(xyzw) if version >= 3 else _pack_first_three(xyzw)

    deg = scene.sh_degree
    rest = scene.sh[:, 1:].astype(np.float64) * _SH_FLIP[: sh_coeffs(deg) - 1, None]
    bucket = np.array([1 << (8 - (sh1_bits if k < 3 else sh_rest_bits)) for k in range(rest.shape[1])])
    q_sh = np.round(rest * 128.0) + 128.0
    q_sh = (q_sh + (bucket // 2)[None, :, None]) // bucket[None, :, None] * bucket[None, :, None]
    sh_bytes = np.clip(q_sh, 0, 255).astype(np.uint8).tobytes()

    streams = [positions, alphas.tobytes(), colors.tobytes(), scales.tobytes(), rotations.tobytes(), sh_bytes]
    flags = 0
    if version == 4:
        if deg == 0:
            streams = streams[:5]
        cctx = zstandard.ZstdCompressor(level=zstd_level)
        packed = [cctx.compress(s) for s in streams]
        head = _HEADER_V4.pack(MAGIC, 4, n, deg, frac_bits, flags, len(streams), _HEADER_V4.size)
        toc = b"".join(_TOC_ENTRY.pack(len(c), len(s)) for c, s in zip(packed, streams))
        return head + toc + b"".join(packed)
    head = _HEADER_V3.pack(MAGIC, version, n, deg, frac_bits, flags, 0)
    # mtime=0 keeps the output byte-for-byte reproducible.
    return gzip.compress(head + b"".join(streams), compresslevel=9, mtime=0)


def sniff_spz(head: bytes, path: Path) -> bool:
    """The registry's content test (io/formats.py): v2/v3 are gzip streams, v4 starts with 'NGSP'."""
    return head.startswith(GZIP_MAGIC) or head.startswith(MAGIC_BYTES)


def write_spz(scene: GaussianScene, path: str | os.PathLike, *, version: int = 4, spz_version: int | None = None,
              **options) -> None:
    """Write `scene` as an SPZ file (v4 zstd by default; `version=3` for gzip; `spz_version` is the
    CLI's and the worker's name for it, passed through `save_scene`); see `encode_spz`.

    The file appears atomically (temp file + rename); on any error nothing is left behind.
    """
    if spz_version is not None:
        version = spz_version
    write_bytes_atomic(path, encode_spz(scene, version=version, **options))


def _to_u8(x: np.ndarray) -> np.ndarray:
    # floor(x + 0.5) is C's round() for the non-negative values that survive the clip.
    return np.clip(np.floor(x + 0.5), 0, 255).astype(np.uint8)


def _pack_first_three(xyzw: np.ndarray) -> np.ndarray:
    sign = np.where(xyzw[:, 3:4] < 0, -1.0, 1.0)
    return _to_u8(xyzw[:, :3] * sign * 127.5 + 127.5)


def _pack_smallest_three(xyzw: np.ndarray) -> np.ndarray:
    n = len(xyzw)
    largest = np.argmax(np.abs(xyzw), axis=1)
    negate = xyzw[np.arange(n), largest] < 0
    comp = largest.astype(np.uint32)
    for i in range(4):
        here = largest != i
        v = xyzw[:, i]
        # signbit, not v < 0: a decoded -0.0 keeps its sign bit, so re-encoding reproduces the bytes.
        negbit = (np.signbit(v) ^ negate).astype(np.uint32)
        mag = np.floor(511.0 * np.abs(v) / SQRT1_2 + 0.5).astype(np.uint32)
        mag = np.minimum(mag, 511)
        comp = np.where(here, (comp << np.uint32(10)) | (negbit << np.uint32(9)) | mag, comp)
    return comp.astype("<u4").view(np.uint8).reshape(n, 4)
