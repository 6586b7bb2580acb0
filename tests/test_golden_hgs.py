"""Format stability: .hgs files written by earlier builds decode to exactly the values they did.

The goldens under tests/golden/ were made by tests/golden/make_golden.py from tiny real models
and are committed; regenerate them only when the format version changes on purpose.
"""

import hashlib
import json
import struct
import zlib
from pathlib import Path

import pytest

from hemgs.codec.registry import decode
from hemgs.container import FORMAT_MAJOR, MAGIC, read_hgs
from hemgs.errors import FormatError
from hemgs.pipeline import decode_file

GOLDEN = Path(__file__).resolve().parent / "golden"
RECORD = json.loads((GOLDEN / "checksums.json").read_text())


def _checksum(decoded) -> str:
    from golden.make_golden import decoded_checksum

    return decoded_checksum(decoded)


def test_there_are_goldens_and_each_is_small():
    assert len(RECORD) >= 4 and any("hemgs" in name for name in RECORD) and any("direct" in name for name in RECORD)
    for name in RECORD:
        assert (GOLDEN / name).stat().st_size < 30_000, name


def test_each_anchor_codec_has_goldens_of_both_network_layouts():
    """Files made before the quantized networks (float16 safetensors, no header key) and after."""
    layouts = {}
    for name in RECORD:
        f = read_hgs(GOLDEN / name)
        if f.header["mode"] == "anchor":
            layouts.setdefault(f.header["codec"], set()).add(f.header.get("networks", "float16"))
    assert layouts == {"hac": {"float16", "quantized"}, "hemgs": {"float16", "quantized"}}


def test_each_codec_has_goldens_of_every_format_it_reads():
    """Format 1 (no number: codec/legacy.py) up to the codec's current one (codec/registry.py)."""
    from hemgs.codec.registry import CODECS

    formats = {}
    for name in RECORD:
        h = read_hgs(GOLDEN / name).header
        formats.setdefault((h["mode"], h["codec"]), set()).add(h.get("format", 1))
    assert formats == {key: set(range(1, codec.format + 1)) for key, codec in CODECS.items()}


@pytest.mark.parametrize("name", sorted(RECORD))
def test_golden_decodes_to_the_recorded_values(name):
    rec = RECORD[name]
    path = GOLDEN / name
    data = path.read_bytes()
    # The file itself is unchanged (else the comparison below would prove nothing)...
    assert hashlib.sha256(data).hexdigest() == rec["file_sha256"]
    f = read_hgs(path)
    assert list(f.version) == rec["version"]
    # ...and today's decoder rebuilds bit-identical attributes, networks and entropy model (the
    # Gaussians, for a direct file), through the library call (the codec registry, which reads
    # the goldens' older headers through codec/legacy.py) and through the pipeline entry the CLI
    # and add-on use.
    decoded = decode(f.header, f.sections)
    if f.header["mode"] == "direct":
        assert f.header["gaussians"] == rec["anchors"]
        assert len(decoded.scene) == rec["anchors"]
    else:
        assert f.header["anchors"] == rec["anchors"]
        assert decoded.model.num_anchors == rec["anchors"]
    assert _checksum(decoded) == rec["decoded_sha256"]
    assert _checksum(decode_file(path)) == rec["decoded_sha256"]


def _with_version(data: bytes, major: int, minor: int = 0) -> bytes:
    assert data.startswith(MAGIC)
    return data[:6] + struct.pack("<HH", major, minor) + data[10:]


def test_a_file_from_a_newer_major_version_is_refused_by_name(tmp_path):
    data = (GOLDEN / sorted(RECORD)[0]).read_bytes()
    path = tmp_path / "future.hgs"
    path.write_bytes(_with_version(data, FORMAT_MAJOR + 1))
    with pytest.raises(FormatError, match=r"newer hemgs \(format 2\.x\)") as err:
        decode_file(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_newer_minor_version_still_decodes():
    """Minor versions only add what older readers may ignore: same values as the recorded ones."""
    name = sorted(RECORD)[0]
    data = _with_version((GOLDEN / name).read_bytes(), FORMAT_MAJOR, 7)
    f = read_hgs(data)
    assert f.version == (FORMAT_MAJOR, 7)
    assert _checksum(decode(f.header, f.sections)) == RECORD[name]["decoded_sha256"]


@pytest.mark.slow
def test_the_cli_says_newer_version_with_exit_2(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "future.hgs"
    path.write_bytes(_with_version((GOLDEN / sorted(RECORD)[0]).read_bytes(), 2))
    out = subprocess.run([sys.executable, "-m", "hemgs.cli", "decompress", str(path), "-o", str(tmp_path / "x.ply")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "newer hemgs" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.ply").exists()


# Torch picks its CPU kernels by the instructions the CPU has (AVX-512, AVX2, or none);
# ATEN_CPU_CAPABILITY makes this machine run the kernels another CPU would. The decoder must not
# notice (the encoder does: docs/robustness.md, "Which machines write the same bytes").
_DECODE_ALL = """
import json, sys
from golden.make_golden import decoded_checksum
from hemgs.pipeline import decode_file
print(json.dumps({n: decoded_checksum(decode_file('golden/' + n)) for n in json.loads(sys.argv[1])}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("capability, threads", [("default", 1), ("avx2", 2)])
def test_goldens_decode_the_same_with_another_cpus_kernels(capability, threads):
    import os
    import subprocess
    import sys

    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability, "OMP_NUM_THREADS": str(threads),
           "HEMGS_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", _DECODE_ALL, json.dumps(sorted(RECORD))], env=env,
                         cwd=GOLDEN.parent, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {name: rec["decoded_sha256"] for name, rec in RECORD.items()}
