"""Niantic SPZ v2/v3/v4 reader and writer, on the real biker.spz and the demo playbot scene.

Tolerances come from the format's quantization steps (half a step each):
positions 2^-(fractionalBits+1); DC colour 0.5 / (255 * 0.15); opacity 0.5/255 in sigmoid space;
log-scales 1/32; v3/v4 rotations: the three smallest components 0.5 * sqrt(1/2) / 511 each, the
largest one (rebuilt from unit length) about 3x that; SH (bucketed 8-bit, step 1/128):
(bucket/2 + 0.5)/128 with bucket 8 for band 1 and 16 for bands 2-3 (5 and 4 bits).
"""

import gzip
import struct
import time

import numpy as np
import pytest
import zstandard

from conftest import DEMO_PLY, shared_file
from hemgs.errors import FormatError, InputError
from hemgs.io import detect_format, load_scene, save_scene
from hemgs.io.ply import read_ply
from hemgs.io.spz import decode_spz, encode_spz, read_spz, write_spz

BIKER_N = 152_746


@pytest.fixture(scope="module")
def demo():
    return read_ply(DEMO_PLY)


@pytest.fixture(scope="module")
def biker_bytes():
    return shared_file("biker.spz").read_bytes()


def v4_streams(data: bytes) -> list[bytes]:
    """Decompressed v4 streams, parsed here from the spec independently of the reader."""
    n_streams, toc = data[15], struct.unpack_from("<I", data, 16)[0]
    pos, out = toc + 16 * n_streams, []
    for i in range(n_streams):
        comp, raw = struct.unpack_from("<QQ", data, toc + 16 * i)
        out.append(zstandard.ZstdDecompressor().decompress(data[pos:pos + comp], max_output_size=raw))
        pos += comp
    return out


def fixed24(stream: bytes) -> np.ndarray:
    b = np.frombuffer(stream, np.uint8).reshape(-1, 3, 3).astype(np.int64)
    v = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
    return np.where(v >= 1 << 23, v - (1 << 24), v)


def quat_err(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-Gaussian max component error, up to the q/-q sign ambiguity."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.minimum(np.abs(a - b).max(1), np.abs(a + b).max(1))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


# ---- the real v4 file ----------------------------------------------------------------------

@pytest.mark.data
def test_biker_reads_upright_in_our_frame(biker_bytes):
    scene = load_scene(shared_file("biker.spz"))
    assert len(scene) == BIKER_N and scene.sh_degree == 0
    assert scene.meta["source_format"] == "spz" and scene.meta["spz_version"] == 4
    assert scene.meta["spz_fractional_bits"] == 12
    for f in ("means", "quats", "log_scales", "opacity_logits", "sh"):
        assert np.isfinite(getattr(scene, f)).all(), f
    np.testing.assert_allclose(np.linalg.norm(scene.quats, axis=1), 1.0, atol=1e-5)
    # README bbox (SPZ's RUB frame, y up): (-0.621, 0.000, -0.613)..(0.414, 3.180, 0.532).
    # In our RDF frame (y down, z forward) y and z change sign: the object stands along -y,
    # as the playbot PLY (y from -1.08 to 0.05) does.
    lo, hi = scene.bounds()
    np.testing.assert_allclose(lo, [-0.621, -3.180, -0.532], atol=1e-3)
    np.testing.assert_allclose(hi, [0.414, 0.000, 0.613], atol=1e-3)
    # Positions are exact multiples of 2^-12, the file's fixed point.
    np.testing.assert_array_equal(scene.means * 4096, np.round(scene.means * 4096))


@pytest.mark.data
def test_biker_reencoding_is_stable(biker_bytes):
    scene = decode_spz(biker_bytes)
    ours = encode_spz(scene)
    assert ours[:20] == biker_bytes[:20]  # magic, version, count, degree, bits, flags, streams, toc
    a, b = v4_streams(biker_bytes), v4_streams(ours)
    for i in range(4):  # positions, alphas, colors, scales: byte for byte
        assert a[i] == b[i], f"stream {i}"
    # Rotations: only near-ties (two components equal to 1e-4) may pick the other "largest"
    # component; that is an equally valid encoding of the same rotation.
    rot_a, rot_b = (np.frombuffer(s[4], np.uint8).reshape(-1, 4) for s in (a, b))
    changed = (rot_a != rot_b).any(1)
    assert changed.sum() <= 10
    again = decode_spz(ours)
    assert quat_err(scene.quats, again.quats).max() <= 3 * 0.5 * np.sqrt(0.5) / 511
    for f in ("means", "log_scales", "opacity_logits", "sh"):
        np.testing.assert_array_equal(getattr(scene, f), getattr(again, f), err_msg=f)


# ---- PLY -> SPZ -> PLY -------------------------------------------------------------------

@pytest.mark.parametrize("version", [3, 4])
def test_ply_spz_ply_within_quantization(demo, tmp_path, version):
    spz_path = tmp_path / "demo.spz"
    save_scene(demo, spz_path, **({"version": 4} if version == 4 else {"spz_version": 3}))
    assert detect_format(spz_path) == "spz"
    head = spz_path.read_bytes()
    assert (head[:4] == b"NGSP") == (version == 4) and (head[:2] == b"\x1f\x8b") == (version == 3)
    ply_path = tmp_path / "back.ply"
    save_scene(load_scene(spz_path), ply_path)
    back = load_scene(ply_path)
    assert len(back) == len(demo) and back.sh_degree == demo.sh_degree

    assert np.abs(back.means - demo.means).max() <= 2.0 ** -13 + 1e-6
    dc_in = np.abs(demo.sh[:, 0]) < 127.5 / (255 * 0.15)  # outside, the byte clamps
    assert dc_in.mean() > 0.99
    assert np.abs(back.sh[:, 0] - demo.sh[:, 0])[dc_in].max() <= 0.5 / (255 * 0.15) + 1e-5
    assert np.abs(sigmoid(back.opacity_logits) - sigmoid(demo.opacity_logits)).max() <= 0.5 / 255 + 1e-6
    assert np.abs(back.log_scales - demo.log_scales)[demo.log_scales > -10].max() <= 1 / 32 + 1e-5
    assert quat_err(back.quats, demo.quats).max() <= 3 * 0.5 * np.sqrt(0.5) / 511
    band1, rest = (slice(1, 4), 8), (slice(4, 9), 16)
    for sl, bucket in (band1, rest):
        d, b = demo.sh[:, sl], back.sh[:, sl]
        inside = np.abs(d) < 1 - bucket / 128
        assert np.abs(b - d)[inside].max() <= (bucket / 2 + 0.5) / 128 + 1e-6


def test_spz_stores_rub_as_the_format_specifies(demo):
    data = encode_spz(demo)
    streams = v4_streams(data)
    assert len(streams) == 6 and len(streams[5]) == len(demo) * 8 * 3
    raw = fixed24(streams[0]) / 4096.0
    # x kept, y and z flipped (RDF -> RUB), within the fixed-point step.
    np.testing.assert_allclose(raw, demo.means * [1, -1, -1], atol=2.0 ** -13 + 1e-6)
    # Band-1 SH: Inria order (y, z, x) basis -> signs (-, -, +) under the flip.
    sh = (np.frombuffer(streams[5], np.uint8).reshape(len(demo), 8, 3).astype(np.float64) - 128) / 128
    big = np.abs(demo.sh[:, 1:4]) > 0.2
    signs = np.sign(sh[:, :3])[big] * np.sign(demo.sh[:, 1:4])[big]
    expect = np.broadcast_to(np.array([-1, -1, 1])[None, :, None], big.shape)[big]
    assert (signs == expect).mean() > 0.99


def test_v2_reads_back(demo):
    back = decode_spz(encode_spz(demo, version=2))
    assert back.meta["spz_version"] == 2
    assert np.abs(back.means - demo.means).max() <= 2.0 ** -13 + 1e-6
    # v2 keeps x, y, z at 8 bits and rebuilds w >= 0: accurate except near 180-degree turns.
    a = demo.quats / np.linalg.norm(demo.quats, axis=1, keepdims=True)
    angle = 2 * np.degrees(np.arccos(np.clip(np.abs((a * back.quats).sum(1)), 0, 1)))
    assert np.median(angle) < 1.0 and angle.max() < 15.0


def test_large_scene_gets_fewer_fractional_bits(demo):
    big = demo.subset(np.arange(100))
    big.means[0] = [3000.0, 0, 0]  # beyond 2^23 / 4096 = 2048
    back = decode_spz(encode_spz(big))
    assert back.meta["spz_fractional_bits"] == 11
    assert np.abs(back.means - big.means).max() <= 2.0 ** -12 + 1e-4


def test_writer_refuses_nan_and_bad_versions(demo, tmp_path):
    bad = demo.subset(np.arange(10))
    bad.means[3, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        write_spz(bad, tmp_path / "x.spz")
    with pytest.raises(InputError, match="version 5"):
        write_spz(demo, tmp_path / "y.spz", version=5)
    assert list(tmp_path.iterdir()) == []


# ---- errors --------------------------------------------------------------------------------

@pytest.mark.data
def test_bad_magic_and_missing_file(biker_bytes, tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_spz(tmp_path / "none.spz")
    for i, junk in enumerate([b"NGSQ" + biker_bytes[4:], b"\x00" + biker_bytes[1:],
                              gzip.compress(b"XXXX" + bytes(60))]):
        p = tmp_path / f"m{i}.spz"
        p.write_bytes(junk)
        with pytest.raises(FormatError, match=f"m{i}.spz.*(not an SPZ|not SPZ|unknown format)"):
            load_scene(p)


@pytest.mark.data
def test_unsupported_versions_are_named(biker_bytes, demo):
    with pytest.raises(FormatError, match="unsupported SPZ version 9"):
        decode_spz(biker_bytes[:4] + struct.pack("<I", 9) + biker_bytes[8:])
    v3 = gzip.decompress(encode_spz(demo.subset(np.arange(50)), version=3))
    with pytest.raises(FormatError, match="unsupported SPZ version 1 "):
        decode_spz(gzip.compress(v3[:4] + struct.pack("<I", 1) + v3[8:]))
    with pytest.raises(FormatError, match="version 3 must be gzip"):
        decode_spz(biker_bytes[:4] + struct.pack("<I", 3) + biker_bytes[8:])


@pytest.mark.data
def test_truncated_v4_at_many_points(biker_bytes, tmp_path):
    for cut in (3, 10, 31, 40, 111, 200, 800_000, len(biker_bytes) - 1):
        p = tmp_path / f"t{cut}.spz"
        p.write_bytes(biker_bytes[:cut])
        with pytest.raises(FormatError, match=f"t{cut}.spz.*truncated"):
            read_spz(p)


def test_truncated_v3_at_many_points(demo):
    data = encode_spz(demo, version=3)
    for frac in (0.001, 0.01, 0.3, 0.9, 0.9999):
        with pytest.raises(FormatError, match="truncated|corrupt"):
            decode_spz(data[: int(len(data) * frac)], "cut.spz")


@pytest.mark.data
def test_lying_counts_are_refused(biker_bytes, demo):
    # v4: a count that disagrees with the table of contents.
    for n in (BIKER_N + 1, BIKER_N - 1, 7):
        with pytest.raises(FormatError, match="inconsistent"):
            decode_spz(biker_bytes[:8] + struct.pack("<I", n) + biker_bytes[12:])
    # v4: a huge count with a table patched to agree: refused by the compression-ratio bound.
    n = 200_000_000
    toc = b"".join(struct.pack("<QQ", 10, s) for s in (9 * n, n, 3 * n, 3 * n, 4 * n))
    fake = biker_bytes[:8] + struct.pack("<I", n) + biker_bytes[12:32] + toc + bytes(50)
    t0 = time.perf_counter()
    with pytest.raises(FormatError, match="absurd"):
        decode_spz(fake)
    # v3: the gzip stream holds fewer or more points than the header says.
    v3 = gzip.decompress(encode_spz(demo.subset(np.arange(1000)), version=3))
    for n, what in ((1001, "truncated"), (999, "longer than"), (50_000_000, "cannot hold")):
        with pytest.raises(FormatError, match=what):
            decode_spz(gzip.compress(v3[:8] + struct.pack("<I", n) + v3[12:]))
    assert time.perf_counter() - t0 < 5.0


def test_gzip_bomb_is_capped():
    # A valid header for 1,000 points followed by 100 MB of zeros: refused without inflating it all.
    head = struct.pack("<IIIBBBB", 0x5053474E, 3, 1000, 0, 12, 0, 0)
    bomb = gzip.compress(head + bytes(100_000_000), compresslevel=1)
    t0 = time.perf_counter()
    with pytest.raises(FormatError, match="longer than"):
        decode_spz(bomb)
    assert time.perf_counter() - t0 < 2.0


@pytest.mark.data
def test_corrupt_zstd_stream_is_refused(biker_bytes):
    data = bytearray(biker_bytes)
    data[32 + 5 * 16 : 32 + 5 * 16 + 4] = b"\x00\x00\x00\x00"  # the first frame's magic
    with pytest.raises(FormatError, match="stream 0 is corrupt"):
        decode_spz(bytes(data))
