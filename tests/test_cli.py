"""The `hemgs` command line, run as users run it: real files, exit codes, one-line errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import DEMO_PLY, REPO, shared_file
from hemgs.cli import main


def run_cli(*args):
    """Run the CLI in a subprocess, as a user would (fresh interpreter, real exit code)."""
    return subprocess.run([sys.executable, "-m", "hemgs.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def test_info_reports_playbot_lod2(capsys):
    path = shared_file("playbot_lod2.ply")
    assert main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["gaussians"] == 125_000 and info["sh_degree"] == 2
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "125,000" in out and "SH degree:  2" in out


def test_render_writes_a_png_with_the_scene_in_it(tmp_path):
    out = tmp_path / "sub" / "view.png"
    assert main(["render", str(DEMO_PLY), "-o", str(out), "--width", "96", "--view", "3"]) == 0
    img = np.asarray(Image.open(out))
    assert img.shape == (96, 96, 3)
    # The object covers a real part of the frame, not a blank or a single blob.
    covered = (img.max(axis=2) > 10).mean()
    assert 0.05 < covered < 0.95, covered


def test_convert_ply_spz_ply_and_eval(tmp_path, capsys):
    spz, back = tmp_path / "d.spz", tmp_path / "d.ply"
    assert main(["convert", str(DEMO_PLY), str(spz)]) == 0
    assert main(["convert", str(spz), str(back)]) == 0
    assert spz.stat().st_size < DEMO_PLY.stat().st_size / 4
    capsys.readouterr()
    assert main(["eval", str(DEMO_PLY), str(back), "--views", "3", "--width", "64", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["views"] == 3 and 30 < res["psnr"] < 90 and res["ssim"] > 0.9


@pytest.mark.parametrize("content", [b"", b"ply\nformat binary_little_endian 1.0\nelement vertex 1000\n",
                                     b"\x89PNG\r\n\x1a\n" + b"\0" * 64])
def test_bad_files_get_one_line_and_exit_2(tmp_path, content):
    bad = tmp_path / "bad.ply"
    bad.write_bytes(content)
    res = run_cli("info", bad)
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("hemgs: error:") and res.stderr.count("\n") == 1, res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.slow
def test_missing_file_and_bad_view(tmp_path):
    res = run_cli("render", tmp_path / "nope.ply", "-o", tmp_path / "x.png")
    assert res.returncode == 2 and "nope.ply" in res.stderr and "Traceback" not in res.stderr
    res = run_cli("render", DEMO_PLY, "-o", tmp_path / "x.png", "--view", "99", "--width", "32")
    assert res.returncode == 2 and "--view 99" in res.stderr
    assert not (tmp_path / "x.png").exists()


def test_truncated_ply_is_refused_with_exit_2(tmp_path):
    data = DEMO_PLY.read_bytes()
    cut = tmp_path / "cut.ply"
    cut.write_bytes(data[: len(data) // 2])
    res = run_cli("info", cut)
    assert res.returncode == 2 and "cut.ply" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("command", [
    ["train", DEMO_PLY, "-o", "{missing}/m.safetensors"],
    ["compress", DEMO_PLY, "-o", "{missing}/x.hgs", "--mode", "anchor"],  # (would train for a minute and more)
    ["compress", DEMO_PLY, "-o", "{missing}/x.hgs", "--mode", "direct"],
    ["decompress", REPO / "tests" / "golden" / "tiny_direct.hgs", "-o", "{missing}/x.ply"],
    ["convert", DEMO_PLY, "{missing}/x.spz"],
    ["render", DEMO_PLY, "-o", "{folder}"],  # (render makes a missing folder; a folder as the file it refuses)
])
def test_an_unwritable_output_is_refused_before_any_work(tmp_path, capsys, command):
    args = [str(a).format(missing=tmp_path / "missing", folder=tmp_path) for a in command]
    assert main(args) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("hemgs: error: cannot write "), err  # no stage ran
    assert ("it is a folder" if command[0] == "render" else "does not exist") in err[0], err
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize("dst", ["x.glb", "x.ply", "x.sog"])
def test_an_spz_version_for_another_format_is_refused_in_one_line(tmp_path, capsys, dst):
    assert main(["convert", str(DEMO_PLY), str(tmp_path / dst), "--spz-version", "3"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "--spz-version applies to a .spz output" in err[0], err
    assert not (tmp_path / dst).exists()
