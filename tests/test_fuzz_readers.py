"""Fuzzing every reader of untrusted bytes: .hgs (container + anchor decoder), PLY, SPZ, glTF (.glb), model files.

A file from a stranger may only ever give a result or one of our own errors (hemgs.errors.*) with
a one-line message; each case finishes within CASE_CPU_S of CPU time (a watchdog alarm catches
true hangs), and a header that lies about counts is refused before memory is allocated for them
(checked in a subprocess by its peak RSS). Hypothesis runs derandomized with a fixed budget so CI
is reproducible; benchmarks/fuzz_long.py runs the same targets with a larger budget.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import DEMO_PLY, REPO
from hemgs.container import MAGIC, pack_hgs, read_hgs
from hemgs.errors import HemgsError

CASE_CPU_S = 2.0  # the bound every single input must be handled within (CPU seconds)
WATCHDOG_S = 20  # wall-clock backstop: an input that never returns fails instead of hanging CI
# The CI budget; fuzz_long.py overrides it through HEMGS_FUZZ_EXAMPLES.
EXAMPLES = int(os.environ.get("HEMGS_FUZZ_EXAMPLES", "100"))
# deadline=None: hypothesis's deadline re-runs slow cases to confirm them, which is flaky on a busy
# machine; run_case's CPU-time bound and watchdog are the explicit, per-case limits instead.
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                derandomize=os.environ.get("HEMGS_FUZZ_RANDOM") != "1",
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
COUNTS: dict[str, int] = {}  # inputs tried per target (reported by fuzz_long.py)


class Hang(Exception):
    """Raised by the watchdog alarm: not a HemgsError, so the case fails."""


def _alarm(signum, frame):
    raise Hang(f"an input took more than {WATCHDOG_S} s")


def run_case(target: str, fn, *args) -> object:
    """Run one fuzz input: only HemgsError may escape (one line), within the CPU bound."""
    COUNTS[target] = COUNTS.get(target, 0) + 1
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(WATCHDOG_S)
    t0 = time.process_time()
    try:
        return fn(*args)
    except HemgsError as exc:
        msg = str(exc)
        assert msg.strip() and "\n" not in msg, f"{target}: error message is not one line: {msg!r}"
        return exc
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        used = time.process_time() - t0
        assert used < CASE_CPU_S, f"{target}: one input took {used:.2f} CPU s (bound {CASE_CPU_S} s)"


# ---- the real inputs the mutations start from ----------------------------------------------------
class Quiet(tuple):
    """Fixture values that hypothesis prints in a failure report: kB of bytes would drown it."""

    def __repr__(self) -> str:
        return f"<{len(self)} fuzz seed parts>"


@pytest.fixture(scope="module")
def hgs_file():
    """A real .hgs of a tiny model (a few hundred demo Gaussians), as (bytes, header, sections)."""
    import torch

    from golden.make_golden import tiny_model
    from hemgs.codec.anchor import encode

    torch.set_num_threads(1)
    model, entropy = tiny_model(0, 300, seed=0)
    header, sections, _ = encode(model, entropy, lam=2e-3)
    return Quiet((pack_hgs(header, sections), header, sections))


@pytest.fixture(scope="module")
def work_dir():
    with tempfile.TemporaryDirectory(prefix="hemgs-fuzz-") as tmp:
        yield Path(tmp)


@pytest.fixture(scope="module")
def ply_files(work_dir):
    """Small real PLYs (binary LE with SH degree 3, ASCII with degree 1) from the demo scene."""
    from hemgs.io import load_scene, write_ply

    scene = load_scene(DEMO_PLY).subset(slice(0, 20))
    write_ply(scene, work_dir / "bin.ply")
    write_ply(scene.subset(slice(0, 5)).with_sh_degree(1), work_dir / "ascii.ply", ascii=True)
    return Quiet([(work_dir / "bin.ply").read_bytes(), (work_dir / "ascii.ply").read_bytes()])


@pytest.fixture(scope="module")
def spz_files():
    """Small real SPZs: v4 (zstd) with SH, v3 and v2 (gzip)."""
    from hemgs.io import load_scene
    from hemgs.io.spz import encode_spz

    scene = load_scene(DEMO_PLY).subset(slice(0, 20))
    return Quiet([encode_spz(scene.with_sh_degree(2), version=4), encode_spz(scene.with_sh_degree(1), version=3),
                  encode_spz(scene.with_sh_degree(0), version=2)])


@pytest.fixture(scope="module")
def glb_files():
    """Small real .glb files (KHR_gaussian_splatting): SH degree 2 and 0."""
    from hemgs.io import load_scene
    from hemgs.io.gltf import encode_glb

    scene = load_scene(DEMO_PLY).subset(slice(0, 20))
    return Quiet([encode_glb(scene.with_sh_degree(2)), encode_glb(scene.with_sh_degree(0))])


@pytest.fixture(scope="module")
def model_file(work_dir):
    import torch

    from golden.make_golden import tiny_model
    from hemgs.model_store import save_model

    torch.set_num_threads(1)
    model, entropy = tiny_model(0, 200, seed=0)
    path = work_dir / "tiny.safetensors"
    save_model(path, model, entropy, lam=2e-3)
    return Quiet([path.read_bytes()])


# ---- generic byte mutations ---------------------------------------------------------------------
def byte_mutations(base: bytes):
    """Truncations, bit flips, length lies (a u8/u32/u64 overwritten) and splices of `base`."""
    n = len(base)
    truncate = st.integers(0, n - 1).map(lambda k: base[:k])
    flips = st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, 7)), min_size=1, max_size=8).map(
        lambda fl: _flip(base, fl))
    lies = st.tuples(st.integers(0, n - 1), st.sampled_from(["<B", "<I", "<Q", "<i"]),
                     st.sampled_from([0, 1, 2, 7, 255, 2**16, 2**31 - 1, 2**31, 2**32 - 1, 2**62, -1]),
                     ).map(lambda t: _overwrite(base, *t))
    splice = st.tuples(st.integers(0, n), st.binary(max_size=64)).map(lambda t: base[:t[0]] + t[1] + base[t[0]:])
    return st.one_of(truncate, flips, lies, splice, st.binary(max_size=256))


def _flip(base: bytes, flips) -> bytes:
    b = bytearray(base)
    for pos, bit in flips:
        b[pos] ^= 1 << bit
    return bytes(b)


def _overwrite(base: bytes, pos: int, fmt: str, value: int) -> bytes:
    s = struct.Struct(fmt)
    try:
        raw = s.pack(value)
    except struct.error:
        raw = s.pack(value & ((1 << (8 * s.size - 1)) - 1))
    b = bytearray(base)
    b[pos:pos + s.size] = raw[: max(0, min(s.size, len(b) - pos))]
    return bytes(b)


# JSON junk: wrong types, huge and negative numbers, NaN/Inf, nesting.
JUNK = st.recursive(
    st.one_of(st.none(), st.booleans(), st.text(max_size=8),
              st.integers(-2**70, 2**70), st.sampled_from([0, -1, 1, 2**31, 10**9, 10**18, 2**64]),
              st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([math.nan, math.inf, -math.inf, 1e308])),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=12,
)


def _paths(obj, prefix=()):
    """Every key path of a JSON object (dicts and lists), leaves and inner nodes."""
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, prefix + (i,))
    return out


def mutate_json(draw, obj: dict) -> dict:
    """A deep copy of `obj` with a few values replaced by junk, deleted, or junk keys added."""
    obj = json.loads(json.dumps(obj))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(obj)
        path = draw(st.sampled_from(paths))
        parent = obj
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add"]))
        if action == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=6))] = draw(JUNK)
        else:
            parent[path[-1]] = draw(JUNK)
    return obj


def pack_raw_header(header: dict, sections: dict[str, bytes]) -> bytes:
    """Like pack_hgs but lets NaN/Infinity through (Python's json writes them; readers must cope)."""
    head = json.dumps(header, allow_nan=True).encode("utf-8")
    parts = [struct.pack("<6sHHI", MAGIC, 1, 0, len(head)), head, struct.pack("<I", zlib.crc32(head)),
             struct.pack("<I", len(sections))]
    for name, payload in sections.items():
        raw = name.encode()
        parts += [bytes([len(raw)]), raw, struct.pack("<QI", len(payload), zlib.crc32(payload)), payload]
    return b"".join(parts)


# ---- targets ------------------------------------------------------------------------------------
def open_hgs(data: bytes):
    """What the add-on does with a downloaded .hgs: parse the container, decode the anchors."""
    from hemgs.codec.anchor import decode

    f = read_hgs(data)
    return decode(f.header, f.sections)


def test_the_unmutated_inputs_decode(hgs_file, ply_files, spz_files, glb_files, model_file, work_dir):
    """The fuzz seeds are valid: a failure below is the mutation's doing, not a broken seed."""
    from hemgs.io.gltf import decode_glb
    from hemgs.io.spz import decode_spz
    from hemgs.model_store import load_model

    data, header, _ = hgs_file
    assert open_hgs(data).model.num_anchors == header["anchors"] > 0
    for i, raw in enumerate(ply_files):
        assert len(_read_ply_bytes(raw, work_dir / f"seed{i}.ply")) > 0
    for raw in spz_files:
        assert len(decode_spz(raw)) == 20
    for raw in glb_files:
        assert len(decode_glb(raw)) == 20
    assert load_model(_write(work_dir / "seed.safetensors", model_file[0]))[2]["kind"] == "hemgs-model"


@FUZZ
@given(data=st.data())
def test_fuzz_hgs_bytes(hgs_file, data):
    base, _, _ = hgs_file
    run_case("hgs bytes", open_hgs, data.draw(byte_mutations(base)))


@FUZZ
@given(data=st.data())
def test_fuzz_hgs_section_payloads_reach_the_decoder(hgs_file, data):
    """Damaged payloads with valid CRCs: what a buggy or malicious encoder could write."""
    _, header, sections = hgs_file
    name = data.draw(st.sampled_from(sorted(sections)))
    new = dict(sections)
    new[name] = data.draw(byte_mutations(sections[name]) if sections[name] else st.binary(max_size=64))
    if data.draw(st.booleans()):
        del new[data.draw(st.sampled_from(sorted(new)))]
    run_case("hgs sections", open_hgs, pack_hgs(header, new))


@FUZZ
@given(data=st.data())
def test_fuzz_hgs_header_json_reaches_the_decoder(hgs_file, data):
    """Header mutations (wrong types, huge/negative counts, NaN, junk), re-CRC'd to pass the container."""
    _, header, sections = hgs_file
    bad = mutate_json(data.draw, header)
    run_case("hgs header", open_hgs, pack_raw_header(bad, sections))


@pytest.fixture(scope="module")
def direct_file():
    """A real anchor-free .hgs (300 demo Gaussians, small networks), as (header, sections)."""
    import torch

    from golden.make_golden import tiny_direct_fit
    from hemgs.direct import encode

    torch.set_num_threads(1)
    header, sections, _ = encode(tiny_direct_fit(8000, 300, 3), lam=1.0)
    return Quiet((header, sections))


def open_direct(data: bytes):
    from hemgs.direct import decode

    f = read_hgs(data)
    return decode(f.header, f.sections)


@pytest.mark.slow
@FUZZ
@given(data=st.data())
def test_fuzz_direct_section_payloads(direct_file, data):
    """Anchor-free files: damaged payloads with valid CRCs, and missing sections."""
    header, sections = direct_file
    name = data.draw(st.sampled_from(sorted(sections)))
    new = dict(sections)
    new[name] = data.draw(byte_mutations(sections[name]) if sections[name] else st.binary(max_size=64))
    if data.draw(st.booleans()):
        del new[data.draw(st.sampled_from(sorted(new)))]
    run_case("direct sections", open_direct, pack_hgs(header, new))


@FUZZ
@given(data=st.data())
def test_fuzz_direct_header_json(direct_file, data):
    """Anchor-free header mutations (counts, frame, config), re-CRC'd to pass the container."""
    header, sections = direct_file
    run_case("direct header", open_direct, pack_raw_header(mutate_json(data.draw, header), sections))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _read_ply_bytes(data: bytes, path: Path):
    from hemgs.io import load_scene

    return load_scene(_write(path, data))


@FUZZ
@given(data=st.data())
def test_fuzz_ply(ply_files, work_dir, data):
    base = data.draw(st.sampled_from(ply_files))
    run_case("ply", _read_ply_bytes, data.draw(byte_mutations(base)), work_dir / "case.ply")


@FUZZ
@given(data=st.data())
def test_fuzz_ply_header_lines(ply_files, work_dir, data):
    """Text mutations of the header: counts, types, formats and names that lie about the body."""
    base = data.draw(st.sampled_from(ply_files))
    end = base.index(b"end_header\n")
    lines = base[:end].decode().split("\n")
    i = data.draw(st.integers(1, len(lines) - 1))
    words = lines[i].split()
    j = data.draw(st.integers(0, max(len(words) - 1, 0)))
    token = data.draw(st.one_of(
        st.sampled_from(["-1", "0", "999999999", "99999999999999999999", "1e9", "nan", "list", "uchar",
                         "double", "int8", "float", "binary_big_endian", "ascii", "vertex", "face", ""]),
        st.text(alphabet="abcdefxyz_0123456789", max_size=10)))
    if words:
        words[j] = token
    lines[i] = " ".join(words)
    if data.draw(st.booleans()):
        lines.insert(i, data.draw(st.sampled_from(["element face 3", "property list uchar int vertex_indices",
                                                   "property float extra", "comment x", "format ascii 1.0"])))
    mutated = "\n".join(lines).encode() + base[end:]
    run_case("ply header", _read_ply_bytes, mutated, work_dir / "case_h.ply")


@FUZZ
@given(data=st.data())
def test_fuzz_spz_bytes(spz_files, data):
    from hemgs.io.spz import decode_spz

    base = data.draw(st.sampled_from(spz_files))
    run_case("spz bytes", decode_spz, data.draw(byte_mutations(base)))


@FUZZ
@given(data=st.data())
def test_fuzz_spz_headers_behind_valid_compression(spz_files, data):
    """Lying header fields inside a valid gzip stream (v2/v3) or a v4 header/TOC."""
    from hemgs.io.spz import decode_spz

    v4, v3, v2 = spz_files
    field = st.sampled_from([(4, "<I"), (8, "<I"), (12, "<B"), (13, "<B"), (14, "<B"), (15, "<B")])
    value = st.sampled_from([0, 1, 2, 3, 4, 5, 23, 24, 255, 2**16, 2**28, 2**31, 2**32 - 1])
    if data.draw(st.booleans()):
        raw = gzip.decompress(data.draw(st.sampled_from([v3, v2])))
        (pos, fmt), val = data.draw(field), data.draw(value)
        raw = _overwrite(raw, pos, fmt, val & ((1 << (8 * struct.calcsize(fmt))) - 1))
        if data.draw(st.booleans()):
            raw = raw[: data.draw(st.integers(0, len(raw)))]
        mutated = gzip.compress(raw, mtime=0)
    else:
        v4_fields = st.sampled_from([(4, "<I"), (8, "<I"), (12, "<B"), (13, "<B"), (15, "<B"), (16, "<I"),
                                     (32, "<Q"), (40, "<Q"), (48, "<Q"), (56, "<Q")])
        (pos, fmt), val = data.draw(v4_fields), data.draw(value)
        mutated = _overwrite(v4, pos, fmt, val & ((1 << (8 * struct.calcsize(fmt))) - 1))
    run_case("spz header", decode_spz, mutated)


@FUZZ
@given(data=st.data())
def test_fuzz_glb_bytes(glb_files, data):
    from hemgs.io.gltf import decode_glb

    base = data.draw(st.sampled_from(glb_files))
    run_case("glb bytes", decode_glb, data.draw(byte_mutations(base)))


def _glb_parts(raw: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack_from("<I", raw, 12)
    return json.loads(raw[20:20 + n]), raw[28 + n:]


def _glb_join(doc: dict, binary: bytes) -> bytes:
    text = json.dumps(doc, allow_nan=True).encode()
    text += b" " * (-len(text) % 4)
    return (struct.pack("<4sII", b"glTF", 2, 28 + len(text) + len(binary)) + struct.pack("<II", len(text), 0x4E4F534A)
            + text + struct.pack("<II", len(binary), 0x004E4942) + binary)


@FUZZ
@given(data=st.data())
def test_fuzz_glb_json(glb_files, data):
    """A well-formed GLB container whose glTF JSON (accessors, views, nodes, the extension) lies."""
    from hemgs.io.gltf import decode_glb

    doc, binary = _glb_parts(data.draw(st.sampled_from(glb_files)))
    run_case("glb json", decode_glb, _glb_join(mutate_json(data.draw, doc), binary))


def _load_model_bytes(data: bytes, path: Path):
    from hemgs.model_store import load_model

    return load_model(_write(path, data))


def _safetensors_parts(raw: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack_from("<Q", raw)
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _safetensors_join(head: dict, body: bytes) -> bytes:
    h = json.dumps(head, allow_nan=True).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + body


@FUZZ
@given(data=st.data())
def test_fuzz_model_file_bytes(model_file, work_dir, data):
    run_case("model bytes", _load_model_bytes, data.draw(byte_mutations(model_file[0])), work_dir / "case.safetensors")


@FUZZ
@given(data=st.data())
def test_fuzz_model_file_metadata_and_tensor_table(model_file, work_dir, data):
    """A well-formed safetensors file whose HEMGS metadata or tensor table lies."""
    head, body = _safetensors_parts(model_file[0])
    if data.draw(st.booleans()):
        meta = json.loads(head["__metadata__"]["hemgs"])
        head["__metadata__"]["hemgs"] = json.dumps(mutate_json(data.draw, meta), allow_nan=True)
    else:
        names = sorted(k for k in head if k != "__metadata__")
        entry = head[data.draw(st.sampled_from(names))]
        key = data.draw(st.sampled_from(["shape", "dtype", "data_offsets"]))
        entry[key] = data.draw(st.one_of(
            JUNK, st.lists(st.integers(-2, 2**40), max_size=4), st.sampled_from(["F64", "I64", "U8", "BOOL", "F16"])))
    run_case("model metadata", _load_model_bytes, _safetensors_join(head, body), work_dir / "case_m.safetensors")


# ---- memory: lying counts are refused before allocation ------------------------------------------
MEMORY_SCRIPT = r"""
import json, resource, struct, sys, zlib, gzip
import torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[1])
from hemgs.codec.anchor import decode
from hemgs.container import pack_hgs, read_hgs
from hemgs.errors import HemgsError
from hemgs.io import load_scene
from hemgs.io.spz import decode_spz
from hemgs.model_store import load_model

hgs = read_hgs(open(sys.argv[2], "rb").read())
model_raw = open(sys.argv[3], "rb").read()
tmp = sys.argv[4]
decode(hgs.header, hgs.sections)  # warm: what a normal decode costs is the baseline
load_model(sys.argv[3])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

def hgs_case(**changes):
    header = json.loads(json.dumps(hgs.header))
    sections = dict(hgs.sections)
    for path, value in changes.items():
        if path.startswith("sec_"):
            sections[path[4:]] = value
            continue
        node = header
        keys = path.split("__")
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return lambda: decode(read_hgs(pack_hgs(header, sections)).header, sections)

loc = hgs.sections["locations"]
cases = {
    "anchors 1e9 in the location stream": hgs_case(anchors=10**9, sec_locations=loc[:2] + struct.pack("<I", 10**9) + loc[6:]),
    "feat_dim 1e6": hgs_case(anchor_config__feat_dim=10**6, entropy__feat_dim=10**6),
    "k 1e8": hgs_case(anchor_config__k=10**8, entropy__k=10**8),
    "hidden 1e9": hgs_case(anchor_config__hidden=10**9),
    "entropy hidden 1e9": hgs_case(entropy__hidden=10**9),
    "hash table 2^40": hgs_case(entropy__grid__log2_table_3d=40),
    "hash levels 1e7": hgs_case(entropy__grid__levels_3d=10**7),
    "hash features 1e8": hgs_case(entropy__grid__features=10**8),
}

def ply():
    p = tmp + "/lie.ply"
    open(p, "wb").write(b"ply\nformat binary_little_endian 1.0\nelement vertex 1000000000\nproperty float x\nend_header\n" + bytes(1000))
    load_scene(p)
cases["ply 1e9 vertices in 1 kB"] = ply
def spz3():
    decode_spz(gzip.compress(struct.pack("<IIIBBBB", 0x5053474E, 3, 2**28, 3, 12, 0, 0) + bytes(1000)))
cases["spz v3 2^28 points"] = spz3
def glb():
    import numpy as np
    from hemgs.io.gltf import decode_glb, encode_glb
    from hemgs.scene import GaussianScene
    raw = encode_glb(GaussianScene(np.zeros((10, 3)), np.ones((10, 4)), np.zeros((10, 3)), np.zeros(10), np.zeros((10, 1, 3))))
    n = struct.unpack_from("<I", raw, 12)[0]
    doc = json.loads(raw[20:20 + n])
    for acc in doc["accessors"]:
        acc["count"] = 10**9
    text = json.dumps(doc).encode(); text += b" " * (-len(text) % 4)
    body = raw[20 + n:]
    decode_glb(struct.pack("<4sII", b"glTF", 2, 20 + len(text) + len(body)) + struct.pack("<II", len(text), 0x4E4F534A) + text + body)
cases["glb accessors of 1e9 elements"] = glb
def model_meta():
    n = struct.unpack_from("<Q", model_raw)[0]
    head = json.loads(model_raw[8:8 + n])
    meta = json.loads(head["__metadata__"]["hemgs"])
    meta["anchor_config"]["feat_dim"] = 10**6
    meta["entropy"]["feat_dim"] = 10**6
    head["__metadata__"]["hemgs"] = json.dumps(meta)
    h = json.dumps(head).encode(); h += b" " * (-len(h) % 8)
    open(tmp + "/lie.safetensors", "wb").write(struct.pack("<Q", len(h)) + h + model_raw[8 + n:])
    load_model(tmp + "/lie.safetensors")
cases["model feat_dim 1e6"] = model_meta

out = {}
for name, fn in cases.items():
    try:
        fn()
        out[name] = "accepted"
    except HemgsError as exc:
        out[name] = "refused: " + str(exc)
    out[name + " (peak MiB over baseline)"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
print(json.dumps(out))
"""


@pytest.mark.slow
def test_lying_counts_are_refused_before_allocating(hgs_file, model_file, work_dir):
    data, _, _ = hgs_file
    hgs_path = _write(work_dir / "mem.hgs", data)
    model_path = _write(work_dir / "mem.safetensors", model_file[0])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(REPO / "backend"), str(hgs_path),
                          str(model_path), str(work_dir)], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    for name, value in res.items():
        if name.endswith("(peak MiB over baseline)"):
            # Every file here is under 100 kB: honouring any of these counts would take gigabytes.
            assert value < 64, f"{name}: {value:.0f} MiB"
        else:
            assert value.startswith("refused: "), f"{name}: {value}"


def test_network_size_arithmetic_matches_the_real_modules(hgs_file):
    """The pre-allocation budget check mirrors the real networks: same weight and grid-bit counts."""
    import torch

    from hemgs.anchor.model import AnchorConfig, AnchorModel
    from hemgs.codec.anchor import network_sizes
    from hemgs.entropy.hac import HacEntropyModel
    from hemgs.entropy.hashgrid import HashGridConfig

    _, header, _ = hgs_file
    for cfg, ent in [(header["anchor_config"], header["entropy"]),
                     ({**header["anchor_config"], "hidden": None, "use_dist": False, "k": 3},
                      {**header["entropy"], "k": 3, "hidden": None})]:
        config = AnchorConfig.from_dict(dict(cfg))
        model = AnchorModel(config, torch.zeros((0, 3), dtype=torch.int64), torch.zeros(3), seed=0)
        entropy = HacEntropyModel(ent["feat_dim"], ent["k"], [0, 0, 0], [1, 1, 1],
                                  HashGridConfig.from_dict(dict(ent["grid"])), hidden=ent["hidden"])
        weights = sum(t.numel() for t in model.mlp_state().values()) + sum(p.numel() for p in entropy.mlp.parameters())
        assert network_sizes(cfg, ent) == (weights, entropy.grid.num_bits())
