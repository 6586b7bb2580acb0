"""The .hgs container: round trips, atomic writes, and every kind of bad file refused cleanly."""

import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

from conftest import DEMO_PLY, REPO, shared_file
from hemgs.container import FORMAT_MAJOR, MAGIC, HgsFile, pack_hgs, read_hgs, write_hgs
from hemgs.errors import FormatError, HemgsError, InputError, IntegrityError


def _sample():
    ply = DEMO_PLY.read_bytes()
    header = {"n_anchors": 31000, "lambda": 0.002, "voxel_size": 0.01, "bbox": [[-1, -1, -1], [1, 0.05, 1]],
              "name": "playbot ☺"}
    # Real, varied payloads: slices of the demo PLY, plus an empty section.
    sections = {"locations": ply[:5000], "features": ply[5000:60000], "mask": b"", "mlp.weights": ply[-777:]}
    return header, sections


def test_round_trip_file(tmp_path):
    header, sections = _sample()
    path = tmp_path / "scene.hgs"
    write_hgs(path, header, sections)
    got = read_hgs(path)
    assert isinstance(got, HgsFile)
    assert got.header == header and got.sections == sections
    assert list(got.sections) == list(sections)  # file order kept
    assert got.version == (1, 0)
    assert read_hgs(path.read_bytes()).sections == sections
    assert [p.name for p in tmp_path.iterdir()] == ["scene.hgs"]  # no temp file left


def test_layout_matches_the_documented_bytes():
    data = pack_hgs({"a": 1}, {"xy": b"\x01\x02\x03"})
    head = b'{"a": 1}'
    expect = (MAGIC + struct.pack("<HHI", 1, 0, len(head)) + head + struct.pack("<I", zlib.crc32(head))
              + struct.pack("<I", 1) + b"\x02xy" + struct.pack("<QI", 3, zlib.crc32(b"\x01\x02\x03")) + b"\x01\x02\x03")
    assert data == expect


def test_failed_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    header, sections = _sample()
    path = tmp_path / "scene.hgs"
    write_hgs(path, header, sections)
    before = path.read_bytes()

    def boom(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        write_hgs(path, {"other": 1}, {"x": b"y"})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.hgs"]


@pytest.mark.parametrize("header, sections", [
    ({"x": float("nan")}, {}),
    ({"x": object()}, {}),
    (["not", "a", "dict"], {}),
    ({}, {"": b""}),
    ({}, {"é": b""}),
    ({}, {"x" * 256: b""}),
    ({}, {"ok": "not bytes"}),
])
def test_writer_refuses_bad_input_before_touching_disk(tmp_path, header, sections):
    path = tmp_path / "out.hgs"
    with pytest.raises(InputError):
        write_hgs(path, header, sections)
    assert not any(tmp_path.iterdir())


def test_every_section_corruption_is_named():
    header, sections = _sample()
    data = pack_hgs(header, sections)
    for name, payload in sections.items():
        if not payload:
            continue
        start = data.index(bytes([len(name)]) + name.encode() + struct.pack("<QI", len(payload), zlib.crc32(payload)))
        pos = start + 1 + len(name) + 12 + len(payload) // 2
        bad = bytearray(data)
        bad[pos] ^= 0x10
        with pytest.raises(IntegrityError, match=f"section '{name}'"):
            read_hgs(bytes(bad))
    bad = bytearray(data)
    bad[_header_start() + 3] ^= 0x01  # inside the JSON header
    with pytest.raises(IntegrityError, match="header"):
        read_hgs(bytes(bad))


def _header_start():
    return len(MAGIC) + 8


def test_truncation_anywhere_gives_format_error():
    header, sections = _sample()
    data = pack_hgs(header, sections)
    cuts = sorted(set(np.linspace(0, len(data) - 1, 300).astype(int)) | set(range(0, 80)))
    for cut in cuts:
        with pytest.raises(FormatError):
            read_hgs(data[:cut])


def test_random_byte_damage_only_raises_our_errors():
    header, sections = _sample()
    data = pack_hgs(header, sections)
    rng = np.random.default_rng(7)
    for _ in range(300):
        bad = bytearray(data)
        for pos in rng.integers(0, 120, size=rng.integers(1, 4)):  # the structural prefix
            bad[pos] = rng.integers(0, 256)
        if bytes(bad) == data:
            continue
        try:
            read_hgs(bytes(bad))
        except HemgsError:
            pass


def test_trailing_garbage_refused():
    data = pack_hgs({"a": 1}, {"s": b"abc"})
    with pytest.raises(FormatError, match="unexpected bytes"):
        read_hgs(data + b"\x00")


def _raw(major=1, minor=0, head=b"{}", sections=(), count=None):
    out = MAGIC + struct.pack("<HHI", major, minor, len(head)) + head + struct.pack("<I", zlib.crc32(head))
    out += struct.pack("<I", len(sections) if count is None else count)
    for name, payload in sections:
        out += bytes([len(name)]) + name + struct.pack("<QI", len(payload), zlib.crc32(payload)) + payload
    return out


def test_versions():
    with pytest.raises(FormatError, match=r"newer hemgs \(format 2.x\); this version reads 1.x"):
        read_hgs(_raw(major=FORMAT_MAJOR + 1))
    newer_minor = read_hgs(_raw(minor=7, sections=[(b"a", b"1")]))
    assert newer_minor.version == (1, 7) and newer_minor.sections == {"a": b"1"}
    with pytest.raises(FormatError, match="version 0"):
        read_hgs(_raw(major=0))


def test_structural_lies_refused():
    with pytest.raises(FormatError, match="duplicate section 'a'"):
        read_hgs(_raw(sections=[(b"a", b"1"), (b"a", b"2")]))
    with pytest.raises(FormatError, match="JSON object"):
        read_hgs(_raw(head=b"[1, 2]"))
    with pytest.raises(FormatError, match="not valid JSON"):
        read_hgs(_raw(head=b"{'a': 1}"))
    with pytest.raises(FormatError, match="limit"):
        read_hgs(MAGIC + struct.pack("<HHI", 1, 0, 2**31))
    with pytest.raises(FormatError, match="sections exceeds"):
        read_hgs(_raw(count=10**9))
    # A section claiming 2^63 bytes: refused from the bytes present, nothing allocated.
    lie = _raw(count=1) + b"\x01a" + struct.pack("<QI", 2**63, 0)
    with pytest.raises(FormatError, match="truncated"):
        read_hgs(lie)
    with pytest.raises(FormatError, match="invalid name"):
        read_hgs(_raw(sections=[(b"a\nb", b"")]))


@pytest.mark.data
def test_foreign_files_named(tmp_path):
    with pytest.raises(FormatError, match="not a .hgs file.*PLY"):
        read_hgs(DEMO_PLY)
    with pytest.raises(FormatError, match="not a .hgs file.*SPZ"):
        read_hgs(shared_file("biker.spz"))
    with pytest.raises(FormatError, match="not a .hgs file"):
        read_hgs(b"")
    with pytest.raises(InputError, match="no such file"):
        read_hgs(tmp_path / "missing.hgs")


def test_reader_imports_without_torch():
    code = "import sys, hemgs.container; assert 'torch' not in sys.modules and 'constriction' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO / "backend")
