"""Direct (anchor-free) mode wherever anchor mode goes: the CLI (`compress --mode direct`, info,
decompress, render, eval), hemgs.pipeline (compress_direct, decode_file, render_views), the worker's
`compress` with mode "direct" (fit progress, a kept fit, preview, metrics) and its other ops on a
direct .hgs. A compact 1,500-Gaussian piece of the demo scene, fitted for 10 iterations."""

import ast
import json
import math
import os
import sys
import time

import numpy as np
import pytest

from conftest import DEMO_PLY, REPO, load_by_path

pytestmark = pytest.mark.slow  # fits and codecs on real patches: `make test-fast` leaves them out

N = 1500
ITERS = "10"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The N Gaussians of the demo scene nearest to its centre (spatially compact), as a PLY."""
    from hemgs.io import load_scene, write_ply

    scene = load_scene(DEMO_PLY)
    centre = np.median(scene.means, axis=0)
    keep = np.sort(np.argsort(np.linalg.norm(scene.means - centre, axis=1))[:N])
    path = tmp_path_factory.mktemp("direct") / "tiny.ply"
    write_ply(scene.subset(keep), path)
    return path


@pytest.fixture(scope="module")
def direct_hgs(tiny):
    """`hemgs compress tiny.ply -o tiny.hgs --mode direct --lambda 2 --iters 10`, in process."""
    from hemgs.cli import main

    out = tiny.with_name("tiny.direct.hgs")
    rc = main(["compress", str(tiny), "-o", str(out), "--mode", "direct", "--lambda", "2", "--iters", ITERS,
               "--threads", "1"])
    assert rc == 0 and out.is_file()
    return out


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if not line.startswith("hemgs: warning")]
    assert len(err) == 1 and err[0].startswith("hemgs: error: "), err
    return err[0]


def test_constants_agree_across_backend_worker_and_addon():
    from hemgs import modes
    from hemgs.direct import LAMBDAS
    from hemgs.entropy.hemgs import LAMBDAS as ANCHOR_LAMBDAS
    from hemgs.worker import CODEC

    assert modes.DIRECT_TRAINED_LAMBDAS == tuple(LAMBDAS)
    assert modes.ANCHOR_TRAINED_LAMBDAS == tuple(ANCHOR_LAMBDAS) and CODEC["lambdas"] == list(ANCHOR_LAMBDAS)
    lo, hi = modes.DIRECT_LAMBDA_RANGE
    assert lo < min(LAMBDAS) and max(LAMBDAS) < hi and lo <= modes.DIRECT_LAMBDA_DEFAULT <= hi
    assert CODEC["modes"] == ["anchor", "direct"] and CODEC["default_mode"] == modes.DEFAULT_MODE == "direct"
    assert CODEC["direct"] == {"lambdas": list(LAMBDAS), "lambda_range": [lo, hi],
                               "lambda_default": modes.DIRECT_LAMBDA_DEFAULT,
                               "switch_defaults": modes.DIRECT_SWITCH_DEFAULTS}
    # The add-on (no hemgs import there for this) registers its properties with the hello's numbers.
    tree = ast.parse((REPO / "hemgs_blender" / "props.py").read_text())
    consts = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Tuple):
            names = [t.id for t in node.targets[0].elts]
            consts.update(zip(names, ast.literal_eval(node.value)))
    assert {k: consts[k] for k in ("DIRECT_LAMBDA_MIN", "DIRECT_LAMBDA_MAX", "DIRECT_LAMBDA_DEFAULT")} == {
        "DIRECT_LAMBDA_MIN": lo, "DIRECT_LAMBDA_MAX": hi, "DIRECT_LAMBDA_DEFAULT": modes.DIRECT_LAMBDA_DEFAULT}
    # Anchor mode: the trained λ list, the margin a variable-rate model codes beyond it, and the
    # fixed-rate training range and default (= hemgs.fit's, which the worker states as literals).
    from hemgs.fit import LAMBDA_RANGE, FitConfig
    from hemgs.pipeline import LAMBDA_MARGIN

    assert consts["ANCHOR_LAMBDAS"] == tuple(CODEC["lambdas"]) and consts["LAMBDA_MARGIN"] == CODEC["lambda_margin"]
    assert CODEC["lambda_margin"] == LAMBDA_MARGIN
    assert CODEC["fixed_rate"] == {"lambda_range": list(LAMBDA_RANGE), "lambda_default": FitConfig().lam}
    assert (consts["LAMBDA_MIN"], consts["LAMBDA_MAX"]) == LAMBDA_RANGE and consts["LAMBDA_DEFAULT"] == FitConfig().lam
    # The λ properties default to those literals.
    keywords = {node.target.id: {k.arg: k.value for k in node.annotation.keywords}
                for node in ast.walk(tree) if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(node.annotation, ast.Call)}
    assert ast.unparse(keywords["direct_lambda"]["default"]) == "DIRECT_LAMBDA_DEFAULT"
    assert ast.unparse(keywords["anchor_lambda"]["default"]) == "LAMBDA_DEFAULT"
    # ... and opens the panel on the same mode (its Mode property's default)
    mode_prop = next(node.annotation for node in ast.walk(tree) if isinstance(node, ast.AnnAssign)
                     and isinstance(node.target, ast.Name) and node.target.id == "mode")
    assert next(k.value.value for k in mode_prop.keywords if k.arg == "default") == modes.DEFAULT_MODE.upper()
    # The direct-mode part switches: DirectConfig, the worker and the add-on's toggles default alike.
    from hemgs.direct import DirectConfig

    cfg = DirectConfig()
    assert {k: getattr(cfg, k) for k in modes.DIRECT_SWITCH_DEFAULTS} == modes.DIRECT_SWITCH_DEFAULTS
    assert CODEC["direct"]["switch_defaults"] == modes.DIRECT_SWITCH_DEFAULTS
    addon = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) \
                and node.target.id in ("direct_scene_agnostic", "direct_ar", "direct_acs", "direct_variable_rate"):
            addon[node.target.id[len("direct_"):]] = next(k.value.value for k in node.annotation.keywords if k.arg == "default")
    assert addon == modes.DIRECT_SWITCH_DEFAULTS


def test_cli_compress_direct_writes_a_direct_file(direct_hgs, tiny, capsys):
    from hemgs.container import read_hgs

    h = read_hgs(direct_hgs).header
    assert h["mode"] == "direct" and h["codec"] == "hemgs" and h["lambda"] == 2.0 and h["gaussians"] == N
    assert h["source"] == "tiny.ply" and h["source_bytes"] == tiny.stat().st_size
    assert not list(direct_hgs.parent.glob(".*.tmp"))


def test_info_shows_mode_and_gaussians(direct_hgs, capsys):
    from hemgs.cli import main

    capsys.readouterr()
    assert main(["info", str(direct_hgs)]) == 0
    text = capsys.readouterr().out
    assert "mode:       direct (codec hemgs, λ=2)" in text and f"Gaussians:  {N:,}" in text
    assert main(["info", str(direct_hgs), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["mode"] == "direct" and info["gaussians"] == N and info["sh_degree"] == 2
    assert "opacity" in info["sections"] and info["bytes"] == direct_hgs.stat().st_size


def test_decompress_keeps_the_decoded_gaussians(direct_hgs, tmp_path, capsys):
    from hemgs.cli import main
    from hemgs.io import load_scene
    from hemgs.pipeline import decode_file

    out = tmp_path / "decoded.ply"
    assert main(["decompress", str(direct_hgs), "-o", str(out)]) == 0
    assert "1,500 Gaussians (decoded, SH degree 2)" in capsys.readouterr().out
    scene, decoded = load_scene(out), decode_file(direct_hgs).scene
    assert len(scene) == N and scene.sh_degree == 2
    np.testing.assert_array_equal(scene.means, decoded.means)
    # A lower SH degree truncates; a higher one keeps the file's (nothing made up).
    assert main(["decompress", str(direct_hgs), "-o", str(tmp_path / "d0.spz"), "--sh-degree", "0"]) == 0
    assert load_scene(tmp_path / "d0.spz").sh_degree == 0
    assert main(["decompress", str(direct_hgs), "-o", str(tmp_path / "d3.ply"), "--sh-degree", "3"]) == 0
    assert load_scene(tmp_path / "d3.ply").sh_degree == 2


def test_render_views_eval_and_render_of_a_direct_file(direct_hgs, tiny, tmp_path, capsys):
    from hemgs.cameras import scene_views
    from hemgs.cli import main
    from hemgs.metrics import compare_images
    from hemgs.pipeline import load_source, render_views

    scene, _ = load_source(tiny)
    cams = scene_views(scene, None, n=2, width=48, height=48)
    done = []
    tests = render_views(direct_hgs, cams, progress=lambda i, n: done.append((i, n)))
    refs = render_views(tiny, cams)
    assert done == [(1, 2), (2, 2)] and tests[0].shape == (48, 48, 3)
    assert compare_images(refs, tests)["psnr"] > 25
    capsys.readouterr()
    assert main(["eval", str(tiny), str(direct_hgs), "--views", "2", "--width", "32", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["psnr"] > 25
    png = tmp_path / "view.png"
    assert main(["render", str(direct_hgs), "-o", str(png), "--width", "32"]) == 0 and png.stat().st_size > 0


@pytest.mark.parametrize("lam", ["0", "-1", "nan", "1e9"])
def test_bad_lambda_is_one_line_and_no_file(tiny, tmp_path, capsys, lam):
    from hemgs.cli import main

    out = tmp_path / "bad.hgs"
    assert main(["compress", str(tiny), "-o", str(out), "--mode", "direct", "--lambda", lam]) == 2
    assert "λ" in _one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_direct_mode_refuses_anchor_inputs(tiny, tmp_path, capsys):
    from hemgs.cli import main

    out = tmp_path / "x.hgs"
    assert main(["compress", str(tiny), "-o", str(out), "--mode", "direct", "--mlps", "x"]) == 2
    assert "--mlps" in _one_error_line(capsys)
    model = tmp_path / "m.safetensors"
    model.write_bytes((2).to_bytes(8, "little") + b"{}")  # what detect_format calls a trained model
    assert main(["compress", str(model), "-o", str(out), "--mode", "direct"]) == 2
    assert "trained anchor-mode model" in _one_error_line(capsys)
    assert main(["compress", str(tiny), "-o", str(out), "--mode", "anchor", "--iters", "5"]) == 2
    assert "--iters applies to --mode direct" in _one_error_line(capsys)
    # a 3DGS scene is coded in direct mode unless anchor mode is named: its training options say so
    assert main(["compress", str(tiny), "-o", str(out), "--steps", "5", "--train-width", "32"]) == 2
    assert "--steps, --train-width train an anchor model: add --mode anchor" in _one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_compress_direct_in_memory_and_encode_again(tiny, tmp_path):
    from hemgs.direct import DirectConfig, DirectFitConfig
    from hemgs.errors import InputError
    from hemgs.pipeline import compress_direct, decode_file, encode_direct, load_source

    scene, _ = load_source(tiny)
    rep = compress_direct(scene, tmp_path / "a.hgs", lam=0.5, cfg=DirectConfig(ar=False),
                          fcfg=DirectFitConfig(iters=int(ITERS)))
    assert rep["bytes"] == (tmp_path / "a.hgs").stat().st_size and rep["gaussians"] == N
    assert rep["source_bytes"] is None and set(rep["sections"]) >= {"locations", "counts", "networks", "grid"}
    assert len(rep["decoded"].scene) == N and rep["seconds"] > 0 and rep["fit_seconds"] > 0
    # One fit, another λ: a smaller file that decodes to what encode said.
    rep2 = encode_direct(rep["fitted"], tmp_path / "b.hgs", lam=8.0)
    assert rep2["bytes"] < rep["bytes"]
    np.testing.assert_array_equal(decode_file(tmp_path / "b.hgs").scene.sh, rep2["decoded"].scene.sh)
    with pytest.raises(InputError, match="outside what direct mode serves"):
        compress_direct(scene, tmp_path / "c.hgs", lam=20.0)
    assert not (tmp_path / "c.hgs").exists()


# ---- the worker ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client():
    wc = load_by_path("hemgs_blender/worker_client.py")
    env = dict(os.environ, OMP_NUM_THREADS="1", HEMGS_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    c = wc.WorkerClient(sys.executable, env=env)
    c.wc = wc
    yield c
    c.close()


def test_worker_compresses_a_source_in_direct_mode(client, tiny, tmp_path):
    from hemgs.container import read_hgs
    from hemgs.preview import load_preview_npz

    hello = client.start()
    assert "direct" in hello["codec"]["modes"] and hello["codec"]["direct"]["lambda_range"] == [1 / 64, 16.0]
    out, npz = tmp_path / "w.hgs", tmp_path / "w.npz"
    args = {"mode": "direct", "source": str(tiny), "output": str(out), "lambda": 1.0, "iters": int(ITERS),
            "views": 2, "width": 32, "preview": str(npz)}
    job = client.submit("compress", args, outputs=[str(out), str(npz)])
    events = []
    while not job.finished:
        events += job.poll()
        time.sleep(0.02)
    res = job.wait(1)
    stages = [e["stage"] for e in events if e.get("event") == "progress"]
    fits = [e for e in events if e.get("stage") == "fitting"]
    assert fits and fits[-1]["done"] == fits[-1]["total"] == int(ITERS)
    assert stages.index("fitting") < stages.index("encoding") < stages.index("rendering")
    assert res["mode"] == "direct" and res["fitted"] is True and res["bytes"] == out.stat().st_size
    assert res["gaussians"] == N and res["ratio"] > 1 and res["psnr"] > 25 and res["views"] == 2
    assert read_hgs(out).header["mode"] == "direct" and len(load_preview_npz(npz)) == N
    # Another λ of the same source: the fit is kept, the file is smaller.
    res2 = client.run("compress", {**args, "lambda": 8.0, "output": str(tmp_path / "w8.hgs"), "views": 0,
                                   "preview": None}, outputs=[str(tmp_path / "w8.hgs")], timeout=60)
    assert res2["fitted"] is False and res2["bytes"] < res["bytes"] and "psnr" not in res2
    # The other ops read a direct file like any .hgs.
    dec = client.run("decompress", {"path": str(out), "output": str(tmp_path / "w.ply")}, timeout=60)
    assert dec["mode"] == "direct" and dec["gaussians"] == N and dec["sh_degree"] == 2
    prev = tmp_path / "p.npz"
    assert client.run("load_preview", {"path": str(out), "output": str(prev)}, timeout=60)["count"] == N
    assert client.run("info", {"path": str(out)}, timeout=60)["gaussians"] == N
    ev = client.run("eval", {"source": str(tiny), "other": str(out), "views": 2, "width": 32}, timeout=60)
    assert ev["psnr"] == pytest.approx(res["psnr"])
    png = tmp_path / "w.png"
    assert client.run("render", {"path": str(out), "output": str(png), "width": 32}, timeout=60)["width"] == 32


def test_worker_direct_mode_errors_leave_no_file(client, tiny, tmp_path):
    wc = client.wc
    out = str(tmp_path / "x.hgs")
    for args, kind, text in [
        ({"lambda": 0.0}, "InputError", "λ must be a positive number"),
        ({"lambda": 100.0}, "InputError", "outside what direct mode serves"),
        ({"model": str(tiny)}, "InputError", "takes no 'model'"),
        ({"source": str(tmp_path)}, "InputError", "is a folder"),
        ({"mode": "sideways"}, "InputError", "unknown coding mode 'sideways'"),
        ({"iters": 0}, "InputError", "iters must be"),
    ]:
        with pytest.raises(wc.WorkerError) as err:
            client.run("compress", {"mode": "direct", "source": str(tiny), "output": out, **args}, timeout=60)
        assert err.value.kind == kind and text in err.value.message and "\n" not in err.value.message, err.value
    assert list(tmp_path.iterdir()) == []
    assert not math.isnan(client.run("info", {"path": str(tiny)}, timeout=60)["mean_opacity"])  # worker goes on
