"""Bad scenes, bad arguments and faults: each has a defined outcome, checked through the CLI.

Outcomes: a documented repair with one warning line (exit 0), or one error line with exit 2.
`main([...])` runs the real CLI entry in-process (fast); the cases where the process boundary
matters (argparse, λ, kills, exit codes) run `python -m hemgs.cli` in a subprocess.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import DEMO_PLY, REPO
from hemgs.cli import main
from hemgs.io import load_scene, write_ply
from hemgs.scene import MAX_ABS_COORD, ZERO_LOG_SCALE, GaussianScene, sanitize


@pytest.fixture(scope="module")
def base():
    return load_scene(DEMO_PLY).subset(slice(0, 60))


def _variant(base, **changes) -> GaussianScene:
    d = {k: getattr(base, k).copy() for k in ("means", "quats", "log_scales", "opacity_logits", "sh")}
    for key, (index, value) in changes.items():
        d[key][index] = value
    return GaussianScene(**d)


def _cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _render(capsys, scene, tmp_path, name):
    path = tmp_path / f"{name}.ply"
    write_ply(scene, path)
    rc, out, err = _cli(capsys, "render", path, "-o", tmp_path / f"{name}.png", "--width", 48)
    image = None
    if rc == 0:
        from PIL import Image

        image = np.asarray(Image.open(tmp_path / f"{name}.png"), dtype=np.float64)
    return rc, err, image


REPAIRS = {
    # name: (changes, dropped Gaussians, warning text)
    "nan position": (dict(means=((0, 1), np.nan)), 1, "NaN/Inf"),
    "inf colour": (dict(sh=((3, 0, 2), np.inf)), 1, "NaN/Inf"),
    "nan opacity": (dict(opacity_logits=(5, np.nan)), 1, "NaN/Inf"),
    # A zero scale (log-scale -inf) is valid; an infinite one has no finite size to draw.
    "infinite scale (log +inf)": (dict(log_scales=((7, 0), np.inf)), 1, "NaN/Inf"),
    "inf rotation": (dict(quats=((8, 1), -np.inf)), 1, "NaN/Inf"),
    "zero quaternion": (dict(quats=(slice(2, 4), 0.0)), 2, "zero quaternion"),
    "coordinate 1e30": (dict(means=((9, 2), 1e30)), 1, "units from the origin"),
}


@pytest.mark.parametrize("name", sorted(REPAIRS))
def test_repairs_warn_once_and_render(name, base, tmp_path, capsys):
    changes, dropped, text = REPAIRS[name]
    rc, err, image = _render(capsys, _variant(base, **changes), tmp_path, "s")
    assert rc == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("hemgs: warning:")]
    assert len(warnings) == 1 and text in warnings[0] and f"dropped {dropped} of 60" in warnings[0], err
    assert image.max() > 0  # the remaining Gaussians are drawn (a 1e30 one used to blank the frame)


def test_sanitize_keeps_everything_else_bit_for_bit(base):
    scene = _variant(base, means=((9, 2), 1e30), log_scales=(slice(0, 5), -1e30))
    out, warnings = sanitize(scene)
    assert len(out) == 59 and len(warnings) == 1
    keep = np.arange(60) != 9
    # huge negatives are kept, at the finite stand-in for a zero scale (the same render)
    np.testing.assert_array_equal(out.log_scales[:5], np.full((5, 3), ZERO_LOG_SCALE, np.float32))
    np.testing.assert_array_equal(out.log_scales[5:], scene.log_scales[keep][5:])
    np.testing.assert_array_equal(out.means, scene.means[keep])
    # Just inside the bound is kept: the limit is on absurd values, not on large scenes.
    edge = _variant(base, means=((0, 0), MAX_ABS_COORD))
    assert len(sanitize(edge)[0]) == 60


def test_unnormalised_quaternions_are_normalised_with_a_warning(base, tmp_path, capsys):
    scene = _variant(base, quats=(slice(None), base.quats * 7.0))
    rc, err, image = _render(capsys, scene, tmp_path, "q")
    assert rc == 0 and "normalised quaternions" in err
    rc0, _, ref = _render(capsys, base, tmp_path, "ref")
    # Scaling a quaternion does not change the rotation: the same image.
    assert rc0 == 0 and np.abs(image - ref).max() <= 1


def test_huge_negative_and_positive_log_scales_render(base, tmp_path, capsys):
    """Log-scales are fine negative; -1e30 (scale exactly 0 after exp) and +60 still render."""
    scene = _variant(base, log_scales=(slice(0, 20), -1e30))
    rc, err, image = _render(capsys, scene, tmp_path, "tiny")
    assert rc == 0 and "warning" not in err and np.isfinite(image).all() and image.max() > 0
    scene = _variant(base, log_scales=(slice(0, 2), 60.0))
    rc, err, image = _render(capsys, scene, tmp_path, "big")
    assert rc == 0 and np.isfinite(image).all()


def test_empty_scene(base, tmp_path, capsys):
    empty = base.subset(slice(0, 0))
    path = tmp_path / "empty.ply"
    write_ply(empty, path)  # used to fail: reshape could not infer the SH width of 0 rows
    assert len(load_scene(path)) == 0
    rc, out, err = _cli(capsys, "info", path)
    assert rc == 0 and "Gaussians:  0" in out
    rc, err, image = _render(capsys, empty, tmp_path, "empty")
    assert rc == 0 and image.max() == 0  # nothing to draw: a black frame, not an error
    rc, _, err = _cli(capsys, "compress", path, "-o", tmp_path / "e.hgs", "--mode", "anchor", "--steps", 1,
                      "--warm-steps", 1)
    assert rc == 2 and err.strip() == "hemgs: error: the scene has no Gaussians to fit"
    assert not (tmp_path / "e.hgs").exists()


def test_a_single_gaussian_renders_where_it_is():
    """One Gaussian, seen by a camera 2 units in front of it: it lands on the centre pixel."""
    from hemgs.cameras import Camera, intrinsics, look_at
    from hemgs.render import render

    sh = np.zeros((1, 1, 3))
    sh[0, 0] = 1.5  # a light grey (0.92)
    one = GaussianScene(np.zeros((1, 3)), [[1, 0, 0, 0]], np.full((1, 3), -2.0), [5.0], sh)
    cam = Camera(look_at([0, 0, -2], [0, 0, 0], [0, -1, 0]), intrinsics(60, 33, 33), 33, 33)
    image = render(one, cam, device="cpu")
    assert image[16, 16].max() > 0.2 and image[0, 0].max() < 1e-3


def test_duplicate_positions_render_and_stay(base, tmp_path, capsys):
    scene = _variant(base, means=(slice(None), base.means[0]))
    rc, err, image = _render(capsys, scene, tmp_path, "dup")
    assert rc == 0 and "warning" not in err
    assert len(sanitize(scene)[0]) == 60  # duplicates are legal: nothing dropped


@pytest.mark.parametrize("rest", [3, 10, 44])
def test_sh_count_mismatch_is_one_line_exit_2(base, tmp_path, capsys, rest):
    """f_rest counts that are no SH degree (0, 9, 24, 45) are refused, naming the count."""
    import plyfile

    names = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
             "rot_0", "rot_1", "rot_2", "rot_3"] + [f"f_rest_{i}" for i in range(rest)]
    rec = np.zeros(4, [(n, "<f4") for n in names])
    rec["rot_0"] = 1
    path = tmp_path / "sh.ply"
    plyfile.PlyData([plyfile.PlyElement.describe(rec, "vertex")]).write(str(path))
    rc, _, err = _cli(capsys, "info", path)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert f"{rest} f_rest_* properties" in err and str(path) in err


# ---- λ and the real CLI --------------------------------------------------------------------------
def _run(*argv, timeout=180):
    env = dict(os.environ, OMP_NUM_THREADS="1", HEMGS_THREADS="1", PYTHONPATH=str(REPO / "backend"))
    return subprocess.run([sys.executable, "-m", "hemgs.cli", *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """A tiny model trained (warm-started) at λ = 2e-3."""
    from golden.make_golden import tiny_model
    from hemgs.model_store import save_model

    model, entropy = tiny_model(0, 200, seed=0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_model(path, model, entropy, lam=2e-3)
    return path


@pytest.mark.slow
def test_lambda_outside_the_trained_one_is_refused(model_path, tmp_path):
    out = _run("compress", model_path, "-o", tmp_path / "x.hgs", "--lambda", "5e-3")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "trained at λ=0.002" in out.stderr and "hemgs train --lambda 0.005" in out.stderr
    assert not (tmp_path / "x.hgs").exists()


def test_lambda_that_is_not_a_number_is_an_argparse_error(tmp_path):
    out = _run("compress", DEMO_PLY, "-o", tmp_path / "x.hgs", "--lambda", "abc")
    assert out.returncode == 2 and "invalid float value: 'abc'" in out.stderr


@pytest.mark.parametrize("lam", ["0", "-1", "nan", "inf"])
def test_bad_lambda_values_exit_2(model_path, tmp_path, capsys, lam):
    # On a model: checked against the trained λ; on a PLY: refused before any training starts.
    for src in (model_path, DEMO_PLY):
        t0 = time.perf_counter()
        rc, _, err = _cli(capsys, "compress", src, "-o", tmp_path / "x.hgs", f"--lambda={lam}")
        assert rc == 2 and len(err.strip().splitlines()) == 1 and "λ" in err, err
        assert time.perf_counter() - t0 < 10  # no training ran
    assert not (tmp_path / "x.hgs").exists()


def test_the_trained_lambda_is_accepted(model_path, tmp_path, capsys):
    rc, out, err = _cli(capsys, "compress", model_path, "-o", tmp_path / "x.hgs", "--lambda", "0.002")
    assert rc == 0, err
    assert (tmp_path / "x.hgs").stat().st_size > 0


# ---- faults --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_killed_compress_leaves_no_partial_output(tmp_path):
    """`hemgs compress` of a PLY (direct mode: it fits first) killed mid-run, by SIGKILL and by Ctrl-C."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HEMGS_THREADS="1", PYTHONPATH=str(REPO / "backend"))
    procs = {}
    for sig in (signal.SIGKILL, signal.SIGINT):
        folder = tmp_path / sig.name
        folder.mkdir()
        procs[sig] = (folder, subprocess.Popen(
            [sys.executable, "-m", "hemgs.cli", "compress", str(DEMO_PLY), "-o", str(folder / "out.hgs")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    time.sleep(4)  # imports done, the fit under way (it takes tens of seconds on this scene)
    for sig, (folder, proc) in procs.items():
        assert proc.poll() is None, "compress finished before it could be interrupted"
        proc.send_signal(sig)
    for sig, (folder, proc) in procs.items():
        _, err = proc.communicate(timeout=60)
        # SIGINT: exit 130 via our handler, or death by the signal when it lands outside Python code.
        assert proc.returncode in ((-signal.SIGKILL,) if sig == signal.SIGKILL else (130, -signal.SIGINT)), err
        assert list(folder.iterdir()) == [], f"{sig.name}: left {list(folder.iterdir())}"
        if proc.returncode == 130:
            assert err.strip().splitlines()[-1] == "hemgs: interrupted"


@pytest.mark.slow
def test_unwritable_targets_give_one_line_and_exit_2(model_path, tmp_path, capsys):
    """We run as root, so a chmod'ed folder stays writable: use a path under a FILE (ENOTDIR) and
    one in /proc (the kernel refuses new files there even to root)."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    for target in (afile / "out.hgs", Path("/proc/hemgs-robustness-test.hgs")):
        rc, _, err = _cli(capsys, "compress", model_path, "-o", target)
        assert rc == 2, err
        assert len(err.strip().splitlines()) == 1 and err.startswith("hemgs: error: ") and str(target) in err
    assert afile.read_text() == "x" and list(tmp_path.iterdir()) == [afile]
    out = _run("decompress", REPO / "tests" / "golden" / "tiny_a.hgs", "-o", afile / "x.ply")
    assert out.returncode == 2 and out.stderr.startswith(f"hemgs: error: cannot write {afile / 'x.ply'}: ")
