"""Progress of the long commands (hemgs.progress): one plain line per stage on stderr when it is not
a terminal, a moving bar when it is; stdout as before either way. A 2,500-Gaussian piece of the
demo scene, fitted for a few iterations."""

import io
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import DEMO_PLY, REPO
from hemgs.progress import STAGE_NAMES, Reporter

pytestmark = pytest.mark.slow  # fits and codecs on real patches: `make test-fast` leaves them out

N = 2500


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    from hemgs.io import load_scene, save_scene

    scene = load_scene(DEMO_PLY)
    keep = np.sort(np.random.default_rng(0).choice(len(scene), N, replace=False))
    path = tmp_path_factory.mktemp("progress") / "small.ply"
    save_scene(scene.subset(keep), path)
    return path


def _env():
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="2", HEMGS_THREADS="2")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "backend"), env.get("PYTHONPATH", "")])
    return env


def _hemgs(*args) -> list[str]:
    return [sys.executable, "-m", "hemgs.cli", *map(str, args)]


def _stdout_is_the_report(out: str, path) -> None:
    lines = out.splitlines()
    assert lines[0].startswith(f"wrote {path}: ") and "\r" not in out, out
    assert all(re.fullmatch(r"  \w+ +[\d,]+ bytes +[\d.]+%", line) for line in lines[1:]), out


# ---- the reporter alone -----------------------------------------------------------------------
def test_one_line_per_stage_when_not_a_terminal():
    out = io.StringIO()
    with Reporter(out) as report:
        for i in range(200):
            report("warm", i + 1, 200, {"loss": 0.5 / (i + 1)})
        report("render", 1, 10, {"loss": 0.25, "bits_per_param": None})
        report("render", 10, 10, {"loss": 0.125, "bits_per_param": 2.0})
        report("encode", 0, 1, {})
        report("encode", 1, 1, {})
        for i in range(3):  # a count callback
            report.counter("eval_source")(i + 1, 3)
    lines = out.getvalue().splitlines()
    assert len(lines) == 4, lines
    assert re.fullmatch(r"hemgs: warm start: 200 steps in \d+\.\d s \(loss 0\.0025\)", lines[0]), lines[0]
    assert re.fullmatch(r"hemgs: training \(render space\): 10 steps in \d+\.\d s \(loss 0\.125, bits_per_param 2\)",
                        lines[1]), lines[1]
    assert re.fullmatch(r"hemgs: encoding: done in \d+\.\d s", lines[2]), lines[2]
    assert lines[3].startswith(f"hemgs: {STAGE_NAMES['eval_source']}: 3 views in ")


def test_a_stage_cut_short_says_how_far_it_got_and_nothing_on_failure():
    out = io.StringIO()
    with Reporter(out) as report:
        report("render", 299, 300, {})  # (its last step never reported)
        report("fit", 1, 5, {})  # another stage: the first one ends
        report("fit", 2, 5, {})
        report("fit", 1, 5, {})  # the same stage again from the start: a new one
    lines = out.getvalue().splitlines()
    assert [line.split(" in ")[0] for line in lines] == [
        "hemgs: training (render space): 299 of 300 steps", "hemgs: fitting (direct mode): 2 of 5 iterations",
        "hemgs: fitting (direct mode): 1 of 5 iterations"]
    out = io.StringIO()
    with pytest.raises(KeyboardInterrupt), Reporter(out) as report:
        report("warm", 3, 10, {})
        raise KeyboardInterrupt
    assert out.getvalue() == ""  # the error line that follows says what happened


# ---- the command line -------------------------------------------------------------------------
def test_compress_without_a_terminal_prints_one_line_per_stage(small, tmp_path, capsys):
    out = tmp_path / "s.hgs"
    res = subprocess.run(_hemgs("compress", small, "-o", out, "--mode", "direct", "--iters", "20"),
                         capture_output=True, text=True, timeout=300, env=_env())
    assert res.returncode == 0, res.stderr
    _stdout_is_the_report(res.stdout, out)
    stages = [line.split(":")[1].strip() for line in res.stderr.splitlines()]
    assert stages == [STAGE_NAMES[s] for s in ("importance", "fit", "balance", "code")], res.stderr
    assert "\r" not in res.stderr and "hemgs: fitting (direct mode): 20 iterations in " in res.stderr
    # the decoder and the evaluation's renders too (in process: stderr is pytest's, no terminal)
    from hemgs.cli import main

    capsys.readouterr()
    assert main(["eval", str(small), str(out), "--views", "3", "--width", "32"]) == 0
    res = capsys.readouterr()
    assert [line.split(":")[1].strip() for line in res.err.splitlines()] == [
        STAGE_NAMES[s] for s in ("eval_source", "decode", "eval_other")], res.err
    assert "PSNR" in res.out and "hemgs:" not in res.out


def test_compress_on_a_terminal_shows_a_bar_that_moves(small, tmp_path):
    import pty

    out = tmp_path / "s.hgs"
    master, slave = pty.openpty()  # (no size set: 0 columns, as under `script -qc`)
    proc = subprocess.Popen(_hemgs("compress", small, "-o", out, "--mode", "direct", "--iters", "150"),
                            stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL, env=_env())
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the other end closed (Linux: EIO)
            break
        if not data:
            break
        chunks.append(data)
    stdout = proc.stdout.read().decode()
    assert proc.wait(timeout=300) == 0
    os.close(master)
    err = b"".join(chunks).decode(errors="replace")
    _stdout_is_the_report(stdout, out)
    # frames of the fit's bar: '\r' + 'fitting (direct mode):  40%|####      | 60/150 [00:01<00:01, ...]'
    frames = [f for f in err.split("\r") if f.startswith(STAGE_NAMES["fit"])]
    counts = [int(m.group(1)) for f in frames for m in [re.search(r"\| *(\d+)/150 \[", f)] if m]
    assert len(set(counts)) >= 3 and counts == sorted(counts) and counts[-1] == 150, frames
    assert any("<" in f for f in frames)  # elapsed<remaining: the ETA
    for stage in ("importance", "balance", "code"):
        assert STAGE_NAMES[stage] in err


def test_anchor_mode_train_and_compress_print_one_line_per_stage(small, tmp_path, capsys):
    from hemgs.cli import main

    model, out = tmp_path / "m.safetensors", tmp_path / "m.hgs"
    assert main(["train", str(small), "-o", str(model), "--steps", "4", "--warm-steps", "4", "--views", "4",
                 "--train-width", "32"]) == 0
    res = capsys.readouterr()
    assert [line.split(":")[1].strip() for line in res.err.splitlines()] == [
        STAGE_NAMES[s] for s in ("teacher", "importance", "warm", "render", "refine")], res.err
    assert res.out.startswith(f"wrote {model}: ") and "hemgs:" not in res.out
    assert main(["compress", str(model), "-o", str(out)]) == 0
    res = capsys.readouterr()
    assert re.fullmatch(r"hemgs: encoding: done in \d+\.\d s\n", res.err), res.err
    _stdout_is_the_report(res.out, out)
