"""PlayCanvas SOG (hemgs.io.sog): our writer read back by our reader and by splat-transform's, within
the precision SOG keeps; splat-transform's SOG read by ours; what the reader refuses.

splat-transform (npm @playcanvas/splat-transform, pinned in tests/tools/setup_splat_transform.sh) is
installed by that script on first use where npm is; without npm its tests skip, saying so."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from conftest import DEMO_PLY, REPO
from hemgs.cli import main
from hemgs.errors import FormatError, InputError
from hemgs.io import detect_format, load_scene, save_scene, sog
from hemgs.scene import GaussianScene, sanitize

SETUP = REPO / "tests" / "tools" / "setup_splat_transform.sh"
INSTALLED = [REPO / "tests" / "tools" / ".node" / "splat-transform" / "node_modules" / ".bin" / "splat-transform",
             REPO / "benchmarks" / "peers" / ".node" / "node_modules" / ".bin" / "splat-transform"]


@pytest.fixture(scope="module")
def splat_transform():
    """The splat-transform command: installed already, or now by tests/tools/setup_splat_transform.sh."""
    found = next((p for p in INSTALLED if p.exists()), None)
    if found is not None and shutil.which("node"):
        return found
    if shutil.which("npm") is None or shutil.which("node") is None:
        pytest.skip("splat-transform is not installed and node/npm are not available to install it "
                    "(tests/tools/setup_splat_transform.sh)")
    proc = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or not INSTALLED[0].exists():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"could not install splat-transform with npm: {last}")
    return INSTALLED[0]


def run_splat_transform(tool, *args) -> None:
    # -g cpu: its SOG writer's k-means would otherwise look for a GPU (WebGPU).
    proc = subprocess.run([str(tool), "-w", "-g", "cpu", *map(str, args)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:] + proc.stdout[-2000:]


@pytest.fixture(scope="module")
def real_scene() -> GaussianScene:
    """2,000 Gaussians of the demo scene, SH degree 2, with noise: the demo's values came out of a SOG
    file (already on SOG's grids and codebooks), so the noise makes them a scene's own again."""
    scene = load_scene(DEMO_PLY).subset(np.arange(2000))
    rng = np.random.default_rng(7)
    n = len(scene)

    def noisy(a, scale):
        return (a + rng.normal(size=a.shape) * scale).astype(np.float32)

    scene = GaussianScene(noisy(scene.means, 1e-3), noisy(scene.quats, 0.01), noisy(scene.log_scales, 0.05),
                          noisy(scene.opacity_logits, 0.1), noisy(scene.sh, 0.02))
    scene, _ = sanitize(scene)
    assert len(scene) == n and scene.sh_degree == 2
    return scene


def meta_of(path) -> dict:
    return json.loads(zipfile.ZipFile(path).read("meta.json"))


def aligned(q: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """q with each row's sign matching ref's (q and -q are one rotation)."""
    return q * np.where((q * ref).sum(1, keepdims=True) < 0, -1.0, 1.0)


def nearest_gap(values: np.ndarray, book: list[float]) -> np.ndarray:
    """Distance from each value to the nearest codebook entry: the least error a codebook allows."""
    b = np.asarray(book, np.float64)
    return np.abs(values.astype(np.float64)[..., None] - b).min(-1)


def assert_within_sog_precision(src: GaussianScene, back: GaussianScene, meta: dict) -> dict:
    """`back` (read from a SOG file in file order) against `src` (the scene written, in file order):
    each attribute within what SOG keeps. Returns the measured errors."""
    assert len(back) == len(src) and back.sh_degree == src.sh_degree
    # positions: half a 16-bit step of the log-transformed range, times d/dv expm1 = |x| + 1
    step = (np.array(meta["means"]["maxs"]) - np.array(meta["means"]["mins"])) / 65535
    pos_err = np.abs(back.means.astype(np.float64) - src.means)
    assert (pos_err <= 0.5 * step * (np.abs(src.means) + 1) * 1.001 + 1e-6 * np.abs(src.means) + 1e-9).all()
    # rotations: the three stored components within half a byte step (1/(255 sqrt 2)); the rebuilt one follows
    qs = src.quats / np.linalg.norm(src.quats, axis=1, keepdims=True)
    q_err = np.abs(aligned(back.quats.astype(np.float64), qs) - qs)
    assert np.sort(q_err, axis=1)[:, :3].max() <= 1 / (255 * np.sqrt(2)) + 1e-6 and q_err.max() < 0.02
    # opacity: half a byte step after the sigmoid
    op_err = np.abs(back.opacities.astype(np.float64) - src.opacities)
    assert op_err.max() <= 0.5 / 255 + 2e-6
    # log-scales and DC: the nearest codebook entry each
    sc_err = np.abs(back.log_scales.astype(np.float64) - src.log_scales)
    np.testing.assert_allclose(sc_err, nearest_gap(src.log_scales, meta["scales"]["codebook"]), atol=2e-6)
    dc_err = np.abs(back.sh[:, 0].astype(np.float64) - src.sh[:, 0])
    np.testing.assert_allclose(dc_err, nearest_gap(src.sh[:, 0], meta["sh0"]["codebook"]), atol=2e-6)
    out = {"position": pos_err.max(), "rotation": q_err.max(), "opacity": op_err.max(),
           "log_scale": sc_err.max(), "log_scale_rms": np.sqrt((sc_err ** 2).mean()),
           "dc": dc_err.max(), "dc_rms": np.sqrt((dc_err ** 2).mean())}
    if src.sh_degree:
        sh_err = back.sh[:, 1:].astype(np.float64) - src.sh[:, 1:]
        out.update(sh=np.abs(sh_err).max(), sh_rms=np.sqrt((sh_err ** 2).mean()),
                   sh_signal_rms=np.sqrt((src.sh[:, 1:].astype(np.float64) ** 2).mean()))
    return out


# ---- our writer, our reader ---------------------------------------------------------------------------

def test_a_real_scene_round_trips_within_sog_precision(real_scene, tmp_path):
    assert main(["convert", str(save_ply(real_scene, tmp_path / "a.ply")), str(tmp_path / "a.sog")]) == 0
    assert detect_format(tmp_path / "a.sog") == "sog"
    back = load_scene(tmp_path / "a.sog")
    assert back.meta["source_format"] == "sog"
    src = real_scene.subset(sog.morton_order(real_scene.means))
    err = assert_within_sog_precision(src, back, meta_of(tmp_path / "a.sog"))
    # What the codebooks and the palette give on this scene (measured: RMS log-scale 0.0059, DC 0.0036,
    # SH 0.052 of 0.19; splat-transform's own writer does about as well: docs/formats.md).
    assert err["log_scale_rms"] < 0.01 and err["dc_rms"] < 0.01
    assert err["sh_rms"] < 0.35 * err["sh_signal_rms"]


def save_ply(scene, path):
    save_scene(scene, path)
    return path


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_every_sh_degree_round_trips_and_values_on_the_grids_come_back_exactly(degree, tmp_path):
    """Values drawn from fewer than 256 distinct numbers (and 40 distinct SH rows) fit the codebooks
    and palette exactly: so the layout of every image, the SH palette's included, is right."""
    rng = np.random.default_rng(degree)
    n = 500
    grid = np.linspace(-1.5, 1.5, 200).astype(np.float32)
    rows = rng.choice(grid, size=(40, (degree + 1) ** 2 - 1, 3))
    sh = np.concatenate([rng.choice(grid, size=(n, 1, 3)), rows[rng.integers(0, 40, n)]], axis=1)
    scene = GaussianScene(rng.normal(size=(n, 3)) * 3, rng.normal(size=(n, 4)), rng.choice(grid - 4, size=(n, 3)),
                          rng.normal(size=n) * 3, sh)
    save_scene(scene, tmp_path / "s.sog")
    back = load_scene(tmp_path / "s.sog")
    src = scene.subset(sog.morton_order(scene.means))
    assert_within_sog_precision(src, back, meta_of(tmp_path / "s.sog"))
    np.testing.assert_array_equal(back.log_scales, src.log_scales)
    np.testing.assert_array_equal(back.sh, src.sh)
    assert ("shN" in meta_of(tmp_path / "s.sog")) == (degree > 0)


def test_the_same_scene_gives_the_same_bytes(real_scene):
    assert sog.encode_sog(real_scene) == sog.encode_sog(real_scene)


@pytest.mark.slow
def test_a_scene_already_on_sogs_grids_comes_back_exactly():
    """The demo scene was decoded from a SOG file: writing it again loses nothing but rotation bits."""
    scene, _ = sanitize(load_scene(DEMO_PLY))
    data = sog.encode_sog(scene)
    back = sog.decode_sog(data, "demo.sog")
    src = scene.subset(sog.morton_order(scene.means))
    np.testing.assert_allclose(back.means, src.means, rtol=0, atol=1e-6)
    for field in ("log_scales", "sh"):
        np.testing.assert_array_equal(getattr(back, field), getattr(src, field))
    np.testing.assert_allclose(back.opacities, src.opacities, atol=1e-6)
    assert meta_of(io.BytesIO(data))["shN"]["count"] == 16384  # its 16,384 distinct SH rows, each kept


def test_the_bundle_holds_what_the_spec_names(real_scene, tmp_path):
    save_scene(real_scene, tmp_path / "a.sog")
    z = zipfile.ZipFile(tmp_path / "a.sog")
    assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())
    meta = json.loads(z.read("meta.json"))
    assert meta["version"] == 2 and meta["count"] == 2000
    assert meta["means"]["files"] == ["means_l.webp", "means_u.webp"] and len(meta["means"]["mins"]) == 3
    assert len(meta["scales"]["codebook"]) == len(meta["sh0"]["codebook"]) == len(meta["shN"]["codebook"]) == 256
    assert meta["shN"]["bands"] == 2 and meta["shN"]["count"] == sog.palette_size(2000) == 1024
    from PIL import Image
    for name in z.namelist():
        if name.endswith(".webp"):
            img = Image.open(io.BytesIO(z.read(name)))
            assert img.format == "WEBP" and "VP8L" in z.read(name)[12:16].decode()  # lossless
            w, h = img.size
            if name == "shN_centroids.webp":
                assert (w, h) == (64 * 8, 1024 // 64)
            else:
                assert (w, h) == sog.texture_size(2000) == (48, 44) and w * h >= 2000
    quats = np.asarray(Image.open(io.BytesIO(z.read("quats.webp"))).convert("RGBA")).reshape(-1, 4)[:2000]
    assert set(np.unique(quats[:, 3])) <= {252, 253, 254, 255}


def test_the_one_dimensional_codebook_is_the_optimal_k_means():
    rng = np.random.default_rng(3)
    x = np.sort(rng.normal(size=40) ** 3)
    w = rng.uniform(0.5, 2.0, size=40)

    def cost(c):  # each point to its nearest centre
        return (w * ((x[:, None] - c[None]) ** 2).min(1)).sum()

    def brute(k):  # the O(k h^2) dynamic programme
        h = len(x)
        seg = np.full((h, h), np.inf)
        for a in range(h):
            for b in range(a, h):
                ww, xx = w[a:b + 1], x[a:b + 1]
                seg[a, b] = (ww * (xx - np.average(xx, weights=ww)) ** 2).sum()
        best = seg[0].copy()
        for _ in range(1, k):
            best = np.array([min([best[s] + seg[s + 1, j] for s in range(j)] + [np.inf]) for j in range(h)])
        return best[-1]

    for k in (2, 5, 9):
        assert cost(sog._kmeans_1d(x, w, k)) == pytest.approx(brute(k), rel=1e-9, abs=1e-12)
    book, labels = sog.codebook_1d(np.arange(10.0))  # few distinct values: kept as they are
    assert book[:10].tolist() == list(range(10)) and labels.tolist() == list(range(10))


def test_info_and_decompress_write_and_name_sog(tmp_path, capsys):
    out = tmp_path / "x.sog"
    assert main(["decompress", str(REPO / "tests" / "golden" / "tiny_direct.hgs"), "-o", str(out)]) == 0
    assert detect_format(out) == "sog" and len(load_scene(out)) > 0
    capsys.readouterr()
    assert main(["info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "sog"


# ---- splat-transform --------------------------------------------------------------------------------

@pytest.mark.slow
def test_splat_transform_reads_our_sog_as_we_do(splat_transform, real_scene, tmp_path):
    """The issue's check: our .sog read back through splat-transform (to a PLY) within SOG's precision
    of the scene written, and equal to what our reader reads."""
    save_scene(real_scene, tmp_path / "a.sog")
    run_splat_transform(splat_transform, tmp_path / "a.sog", tmp_path / "theirs.ply")
    theirs = load_scene(tmp_path / "theirs.ply")
    ours = load_scene(tmp_path / "a.sog")
    src = real_scene.subset(sog.morton_order(real_scene.means))
    err = assert_within_sog_precision(src, theirs, meta_of(tmp_path / "a.sog"))
    assert err["sh_rms"] < 0.35 * err["sh_signal_rms"]
    np.testing.assert_allclose(theirs.means, ours.means, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(theirs.quats, ours.quats, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(theirs.log_scales, ours.log_scales)
    np.testing.assert_allclose(theirs.opacity_logits, ours.opacity_logits, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(theirs.sh, ours.sh)


@pytest.mark.slow
def test_we_read_splat_transforms_sog_as_it_does(splat_transform, real_scene, tmp_path):
    scene = real_scene.subset(np.arange(600))
    save_scene(scene, tmp_path / "a.ply")
    run_splat_transform(splat_transform, tmp_path / "a.ply", tmp_path / "st.sog")
    run_splat_transform(splat_transform, tmp_path / "st.sog", tmp_path / "st.ply")
    ours, theirs = load_scene(tmp_path / "st.sog"), load_scene(tmp_path / "st.ply")
    assert len(ours) == 600 and ours.sh_degree == 2
    np.testing.assert_allclose(ours.means, theirs.means, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ours.quats, theirs.quats, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(ours.log_scales, theirs.log_scales)
    np.testing.assert_allclose(ours.opacity_logits, theirs.opacity_logits, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(ours.sh, theirs.sh)


# ---- what the reader refuses, what the writer refuses ---------------------------------------------------

def members(data: bytes) -> dict[str, bytes]:
    z = zipfile.ZipFile(io.BytesIO(data))
    return {n: z.read(n) for n in z.namelist()}


def bundle(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


@pytest.fixture(scope="module")
def small_sog() -> bytes:
    rng = np.random.default_rng(0)
    return sog.encode_sog(GaussianScene(rng.normal(size=(50, 3)), rng.normal(size=(50, 4)),
                                        rng.normal(size=(50, 3)) - 4, rng.normal(size=50),
                                        rng.normal(size=(50, 4, 3)) * 0.3))


def with_meta(data: bytes, change) -> bytes:
    files = members(data)
    meta = json.loads(files["meta.json"])
    change(meta)
    files["meta.json"] = json.dumps(meta).encode()
    return bundle(files)


def test_broken_and_foreign_files_give_one_line(small_sog, tmp_path):
    def refused(data: bytes, match: str) -> None:
        with pytest.raises(FormatError, match=match) as err:
            sog.decode_sog(data, "x.sog")
        assert "\n" not in str(err.value) and str(err.value).startswith("x.sog: ")

    files = members(small_sog)
    refused(small_sog[: len(small_sog) // 2], "corrupt or truncated SOG bundle")
    refused(b"PK\x03\x04" + b"\0" * 40, "corrupt or truncated SOG bundle")
    refused(b"RIFF....", "not a SOG file")
    refused(bundle({"readme.txt": b"hello"}), "a ZIP archive without meta.json, not a SOG bundle")
    refused(bundle({**files, "meta.json": b"{not json"}), "meta.json is not JSON")
    refused(bundle({**files, "meta.json": b"[1, 2]"}), "not a JSON object")
    refused(with_meta(small_sog, lambda m: m.pop("version")), "SOG version 1 .* is not read")
    refused(with_meta(small_sog, lambda m: m.update(version=3)), "unsupported SOG version 3")
    refused(with_meta(small_sog, lambda m: m.update(count=-1)), "count -1 is not a Gaussian count")
    refused(with_meta(small_sog, lambda m: m.update(count=10_000)), "fewer than the 10000 Gaussians")
    refused(with_meta(small_sog, lambda m: m["means"].pop("mins")), "no means.mins")
    refused(with_meta(small_sog, lambda m: m["means"].update(maxs=[1, 2])), "means.maxs is not 3 finite numbers")
    refused(with_meta(small_sog, lambda m: m["scales"].update(codebook=[0.5] * 3)),
            "past the 3 entries of scales.codebook")
    refused(with_meta(small_sog, lambda m: m["shN"].update(count=2)), "palette index .* past the 2 entries")
    refused(with_meta(small_sog, lambda m: m["shN"].update(bands=2)), "is 192 texels wide, its palette needs 512")
    refused(with_meta(small_sog, lambda m: m["quats"].update(files=[])), "quats.files does not name its 1 image")
    refused(bundle({k: v for k, v in files.items() if k != "sh0.webp"}), "the SOG bundle has no sh0.webp")
    refused(bundle({**files, "quats.webp": b"RIFF\0\0\0\0WEBPjunk"}), "quats.webp is not a readable image")
    from PIL import Image
    jpeg = io.BytesIO()
    Image.new("RGB", (8, 8)).save(jpeg, "JPEG")
    refused(bundle({**files, "scales.webp": jpeg.getvalue()}), "scales.webp is JPEG, not a lossless WebP")
    # Detection: a bundle cut short is still a SOG file; a ZIP of something else is of no known format.
    (tmp_path / "half.sog").write_bytes(small_sog[: len(small_sog) // 2])
    assert detect_format(tmp_path / "half.sog") == "sog"
    with pytest.raises(FormatError, match="half.sog: corrupt or truncated SOG bundle"):
        load_scene(tmp_path / "half.sog")
    (tmp_path / "other.zip").write_bytes(bundle({"readme.txt": b"hello"}))
    with pytest.raises(FormatError, match=r"other\.zip: unknown format"):
        load_scene(tmp_path / "other.zip")
    np.savez(tmp_path / "arrays.npz", a=np.zeros(3))
    with pytest.raises(FormatError, match="unknown format"):
        detect_format(tmp_path / "arrays.npz")
    # The command line: exit 2, one line.
    (tmp_path / "cut.sog").write_bytes(small_sog[:300])
    proc = subprocess.run([sys.executable, "-m", "hemgs.cli", "info", str(tmp_path / "cut.sog")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "SOG bundle" in proc.stderr


def test_what_a_file_cannot_hold_is_refused_and_nothing_is_written(tmp_path):
    rng = np.random.default_rng(1)
    good = GaussianScene(rng.normal(size=(5, 3)), rng.normal(size=(5, 4)), rng.normal(size=(5, 3)), rng.normal(size=5),
                         rng.normal(size=(5, 1, 3)))
    path = tmp_path / "a.sog"
    path.write_bytes(b"before")
    bad = GaussianScene(good.means.copy(), good.quats, good.log_scales, good.opacity_logits, good.sh)
    bad.means[2, 1] = np.nan
    with pytest.raises(InputError, match="field means has NaN/Inf"):
        save_scene(bad, path)
    with pytest.raises(InputError, match="the scene has no Gaussians"):
        save_scene(good.subset(np.arange(0)), path)
    assert path.read_bytes() == b"before" and sorted(p.name for p in tmp_path.iterdir()) == ["a.sog"]


def test_without_pillow_sog_says_so_in_one_line(small_sog, tmp_path, monkeypatch):
    (tmp_path / "a.sog").write_bytes(small_sog)
    monkeypatch.setitem(sys.modules, "PIL", None)
    assert detect_format(tmp_path / "a.sog") == "sog"  # detection needs no Pillow
    with pytest.raises(InputError, match="SOG files need Pillow"):
        load_scene(tmp_path / "a.sog")
    with pytest.raises(InputError, match="SOG files need Pillow"):
        save_scene(load_scene(DEMO_PLY).subset(np.arange(5)), tmp_path / "b.sog")
    with pytest.raises(FormatError, match="without meta.json"):  # named without Pillow too
        sog.decode_sog(bundle({"means_l.webp": b""}), "x.sog")
