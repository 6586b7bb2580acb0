"""`hemgs batch` (hemgs.batch): the jobs a command line or manifest makes and what it refuses before
any work, results.jsonl and what a re-run skips, and real batches on tiny scenes: the local
process pool (results, a broken scene isolated with its message, --retry-failed), a batch killed
halfway and run again (only the rest runs), and a local Ray instance (the same .hgs bytes).
Tiny scenes: pieces of the demo scene of 600-800 Gaussians, fitted for 10 iterations (anchor mode:
trained for 2 steps)."""

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import DEMO_PLY
from hemgs.cli import main
from hemgs.batch.catalogue import lambda_tag, make_jobs, read_manifest
from hemgs.batch.engines import scene_groups
from hemgs.batch.results import RESULTS, ResultsLog, read_results, split_done
from hemgs.errors import InputError

FAST = ["--iters", "10", "--views", "2", "--view-size", "64"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """A folder of two tiny scenes (a PLY and an SPZ) and a truncated PLY."""
    from hemgs.io import load_scene, save_scene

    scene = load_scene(DEMO_PLY)
    order = np.argsort(np.linalg.norm(scene.means - np.median(scene.means, axis=0), axis=1))
    folder = tmp_path_factory.mktemp("batch") / "scenes"
    folder.mkdir()
    save_scene(scene.subset(np.sort(order[:800])), folder / "a.ply")
    save_scene(scene.subset(np.sort(order[:600])), folder / "b.spz")
    (folder / "broken.ply").write_bytes((folder / "a.ply").read_bytes()[:3000])
    return folder


def batch(*args) -> tuple[int, str, str]:
    """`hemgs batch ARGS` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["batch", *(str(a) for a in args)])
    return rc, out.getvalue(), err.getvalue()


def lines(outdir) -> list[dict]:
    return [json.loads(ln) for ln in (outdir / RESULTS).read_text().splitlines()]


# ---- the jobs, checked before any work ----------------------------------------------------------------
def test_sources_make_one_job_per_scene_and_lambda(scenes, tmp_path):
    jobs = make_jobs([{"source": str(scenes / "a.ply")}, {"source": str(scenes / "b.spz")}], tmp_path,
                     {"lambdas": [0.5, 2.0], "iters": 10})
    assert [j["key"] for j in jobs] == ["a.direct.lam5e-01.hgs", "a.direct.lam2e+00.hgs",
                                        "b.direct.lam5e-01.hgs", "b.direct.lam2e+00.hgs"]
    assert all(j["output"] == str(tmp_path.resolve() / j["key"]) and j["options"]["iters"] == 10 for j in jobs)
    assert lambda_tag(1.0) == "lam1e+00" and lambda_tag(2.5e-3) == "lam2.5e-03"
    # Runs that share a fit stay together, split only where workers would idle.
    assert [len(g) for g in scene_groups(jobs, 2)] == [2, 2]
    assert [len(g) for g in scene_groups(jobs[:2], 2)] == [1, 1]
    assert [len(g) for g in scene_groups(jobs, 1)] == [2, 2]


def test_anchor_jobs_keep_their_model_only_when_asked_and_one_worker_trains_it(scenes, tmp_path):
    src = [{"source": str(scenes / "a.ply")}]
    jobs = make_jobs(src, tmp_path, {"mode": "anchor", "lambdas": [1e-3, 2e-3]})
    assert [j["model"] for j in jobs] == [None, None] and [len(g) for g in scene_groups(jobs, 2)] == [1, 1]
    kept = make_jobs(src, tmp_path, {"mode": "anchor", "lambdas": [1e-3, 2e-3], "keep_models": True})
    assert {j["model"] for j in kept} == {str(tmp_path.resolve() / "a.anchor.model.safetensors")}  # variable rate
    assert [len(g) for g in scene_groups(kept, 2)] == [2]
    fixed = make_jobs(src, None, {"mode": "anchor", "lambdas": [1e-3, 2e-3], "keep_models": True, "codec": "hac"})
    assert [Path(j["model"]).name for j in fixed] == ["a.anchor.lam1e-03.model.safetensors",
                                                      "a.anchor.lam2e-03.model.safetensors"]
    assert all(Path(j["output"]).parent == scenes.resolve() for j in fixed)  # no outdir: beside the source
    with pytest.raises(InputError, match="'keep_models' does not apply to direct mode"):
        make_jobs([{**src[0], "keep_models": True}], tmp_path, {})


def test_a_manifest_gives_each_scene_its_mode_lambda_and_options(scenes, tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"defaults": {"iters": 5}, "scenes": [
        {"source": str(scenes / "a.ply"), "lambdas": [1, 4]},
        {"source": str(scenes / "b.spz"), "name": "bee", "lambda": 0.25, "iters": 7, "views": 0}]}))
    jobs = make_jobs(read_manifest(str(tmp_path / "m.json")), tmp_path / "out", {"iters": 99})
    assert [(j["key"], j["options"]["iters"]) for j in jobs] == [
        ("a.direct.lam1e+00.hgs", 5), ("a.direct.lam4e+00.hgs", 5), ("bee.direct.lam2.5e-01.hgs", 7)]
    assert jobs[2]["options"]["views"] == 0
    # CSV: sources relative to the manifest, λ lists in one cell, empty cells = defaults.
    shutil.copy(scenes / "a.ply", tmp_path / "a.ply")
    (tmp_path / "m.csv").write_text("source,mode,lambdas,iters,acs\na.ply,direct,0.5;2,,false\n")
    jobs = make_jobs(read_manifest(str(tmp_path / "m.csv")), tmp_path / "out", {"iters": 3})
    assert [j["key"] for j in jobs] == ["a.direct.lam5e-01.hgs", "a.direct.lam2e+00.hgs"]
    assert jobs[0]["options"]["iters"] == 3 and jobs[0]["options"]["acs"] is False
    assert jobs[0]["source"] == str((tmp_path / "a.ply").resolve())


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file"), ("lambda", "outside what direct mode serves"), ("outdir", "cannot make the folder"),
    ("json", "not valid JSON"), ("column", "unknown key 'colour'"), ("neither", "one of them"),
    ("twice", "would both write"), ("workers", "--workers"), ("iters", "iters must be"),
    ("option", "'steps' does not apply to direct mode")])
def test_bad_input_is_one_line_and_exit_2_before_any_work(scenes, tmp_path, case, message):
    out = tmp_path / "out"
    src = [scenes / "a.ply"]
    extra = []
    if case == "missing":
        src = [scenes / "a.ply", tmp_path / "nope.ply"]
    elif case == "lambda":
        extra = ["--lambda", "1", "100"]
    elif case == "outdir":
        (tmp_path / "file").write_text("")
        out = tmp_path / "file" / "out"
    elif case in ("json", "column", "twice", "option"):
        manifest = tmp_path / ("m.csv" if case == "column" else "m.json")
        manifest.write_text({"json": "[{\"source\": ", "column": f"source,colour\n{scenes / 'a.ply'},red\n",
                             "twice": json.dumps([{"source": str(scenes / "a.ply")}, {"source": str(tmp_path / "a.ply")}]),
                             "option": json.dumps([{"source": str(scenes / "a.ply"), "steps": 3}])}[case])
        shutil.copy(scenes / "a.ply", tmp_path / "a.ply")
        src, extra = [], ["--manifest", manifest]
    elif case == "neither":
        src = []
    elif case == "workers":
        extra = ["--workers", "0"]
    elif case == "iters":
        extra = ["--iters", "0"]
    rc, stdout, err = batch(*src, "-o", out, *extra)
    assert rc == 2 and err.count("\n") == 1 and err.startswith("hemgs: error: ") and message in err, err
    assert not (out / RESULTS).exists() and not list(tmp_path.glob("**/*.hgs"))


def test_a_second_batch_on_the_same_outdir_is_refused(scenes, tmp_path):
    fcntl = pytest.importorskip("fcntl")
    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".batch.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running batch holds it
        rc, stdout, err = batch(scenes / "a.ply", "-o", out)
    assert rc == 2 and "another hemgs batch is writing this folder" in err and not (out / RESULTS).exists()


def test_results_say_what_a_rerun_skips(scenes, tmp_path):
    jobs = make_jobs([{"source": str(scenes / "a.ply")}], tmp_path, {"lambdas": [1.0, 2.0, 4.0]})
    log = ResultsLog(tmp_path / RESULTS)
    log.append({"key": jobs[0]["key"], "options": jobs[0]["options"], "status": "ok"})
    log.append({"key": jobs[1]["key"], "options": jobs[1]["options"], "status": "failed", "error": "x"})
    (tmp_path / RESULTS).open("a").write('{"key": "a.direct.lam4e+00.hgs", "sta')  # torn by a kill
    assert set(read_results(tmp_path / RESULTS)) == {jobs[0]["key"], jobs[1]["key"]}
    ResultsLog(tmp_path / RESULTS).append({"key": "later", "status": "ok"})  # ends the torn line first
    assert "later" in read_results(tmp_path / RESULTS)
    results = read_results(tmp_path / RESULTS)
    # ok without its .hgs: runs again; failed: skipped unless retried; never seen: runs.
    assert [j["key"] for j in split_done(jobs, results, False)[0]] == [jobs[0]["key"], jobs[2]["key"]]
    open(jobs[0]["output"], "wb").close()
    assert [j["key"] for j in split_done(jobs, results, False)[0]] == [jobs[2]["key"]]
    assert [j["key"] for j in split_done(jobs, results, True)[0]] == [jobs[1]["key"], jobs[2]["key"]]
    # Other options: another job under the same name, so it runs again.
    changed = make_jobs([{"source": str(scenes / "a.ply")}], tmp_path, {"lambdas": [1.0], "iters": 3})
    assert split_done(changed, results, False)[0] == changed


# ---- real batches ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local_run(scenes, tmp_path_factory):
    """The folder (a, b, broken) at two λ on the local engine, two workers."""
    out = tmp_path_factory.mktemp("local") / "out"
    rc, stdout, err = batch(scenes, "-o", out, "--lambda", "1", "2", "--workers", "2", *FAST)
    return out, rc, stdout, err


@pytest.mark.slow
def test_local_engine_writes_files_and_a_line_per_job_with_a_broken_scene_isolated(local_run):
    out, rc, stdout, err = local_run
    assert rc == 1, err  # some failed
    by_key = {ln["key"]: ln for ln in lines(out)}
    assert sorted(by_key) == sorted(f"{s}.direct.{t}.hgs" for s in ("a", "b", "broken") for t in ("lam1e+00", "lam2e+00"))
    for key, ln in by_key.items():
        if key.startswith("broken"):
            assert ln["status"] == "failed" and "truncated PLY" in ln["error"] and "\n" not in ln["error"]
            assert not (out / key).exists()
            continue
        assert ln["status"] == "ok" and ln["error"] is None and (out / key).stat().st_size == ln["bytes"]
        assert ln["ratio"] == pytest.approx(ln["source_bytes"] / ln["bytes"]) and 30 < ln["psnr"] < 90 and ln["worst_psnr"] <= ln["psnr"] and 0.9 < ln["ssim"] <= 1
        assert ln["psnr_of_mean_mse"] is not None and ln["views"] == 2 and ln["seconds"] > 0 < ln["cpu_seconds"]
        assert ln["host"] and ln["pid"] != os.getpid() and ln["lambda"] in (1.0, 2.0) and ln["mode"] == "direct"
    assert by_key["a.direct.lam2e+00.hgs"]["bytes"] < by_key["a.direct.lam1e+00.hgs"]["bytes"]
    # One fit per scene: the second λ of a scene reused its process's fit.
    assert sorted(ln["fitted"] for k, ln in by_key.items() if not k.startswith("broken")) == [False, False, True, True]
    assert err.count("FAILED") == 2 and err.count("] ok ") == 4
    assert "4 of 6 jobs ok, 2 failed" in stdout and "a.direct.lam1e+00.hgs" in stdout.splitlines()[1]
    assert not list(out.glob(".*.tmp"))


@pytest.mark.slow
def test_a_rerun_skips_what_is_done_and_retry_failed_runs_the_failures(local_run, scenes, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(local_run[0], out)
    src = tmp_path / "scenes"
    shutil.copytree(scenes, src)
    shutil.copy(src / "a.ply", src / "broken.ply")  # the broken scene mended
    rc, stdout, err = batch(src, "-o", out, "--lambda", "1", "2", *FAST)
    assert rc == 1 and "6 jobs, 6 done already, 0 to run" in err and len(lines(out)) == 6
    rc, stdout, err = batch(src, "-o", out, "--lambda", "1", "2", "--retry-failed", *FAST)
    assert rc == 0 and "6 jobs, 4 done already, 2 to run" in err, err
    assert len(lines(out)) == 8
    assert {ln["key"] for ln in lines(out)[6:]} == {"broken.direct.lam1e+00.hgs", "broken.direct.lam2e+00.hgs"}
    assert all(ln["status"] == "ok" for ln in lines(out)[6:]) and (out / "broken.direct.lam2e+00.hgs").is_file()


@pytest.mark.slow
def test_a_batch_killed_halfway_does_only_the_rest_when_run_again(scenes, tmp_path):
    from hemgs.container import read_hgs

    src = tmp_path / "scenes"
    src.mkdir()
    for name in ("a.ply", "b.spz"):
        shutil.copy(scenes / name, src / name)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "hemgs.batch", str(src), "-o", str(out), "--lambda", "1", "2", "--workers", "1", *FAST]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not ((out / RESULTS).exists() and (out / RESULTS).read_text().count("\n") >= 1):
            assert proc.poll() is None and time.monotonic() < deadline, "the batch ended before it was killed"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its worker, mid-job
        proc.wait()
    first = lines(out)
    assert 1 <= len(first) < 4
    for hgs in out.glob("*.hgs"):  # whatever the kill left is whole (atomic writes)
        read_hgs(hgs)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"4 jobs, {len(first)} done already, {4 - len(first)} to run" in res.stderr
    again = lines(out)[len(first):]
    assert len(again) == 4 - len(first) and not {ln["key"] for ln in again} & {ln["key"] for ln in first}
    assert len(list(out.glob("*.hgs"))) == 4


@pytest.mark.slow
def test_ray_runs_the_same_jobs_to_the_same_bytes_and_anchor_mode_trains_once(local_run, scenes, tmp_path):
    ray = pytest.importorskip("ray")
    out = tmp_path / "out"
    # λ in the other order: here λ=2 is each scene's fitted one and λ=1 reuses the fit.
    manifest = tmp_path / "scenes.json"
    manifest.write_text(json.dumps({"defaults": {"iters": 10, "views": 2, "view_size": 64}, "scenes": [
        *({"source": str(scenes / name), "lambdas": [2, 1]} for name in ("a.ply", "b.spz", "broken.ply")),
        {"source": str(scenes / "a.ply"), "mode": "anchor", "lambdas": [1e-3, 2e-3], "steps": 2, "warm_steps": 2}]}))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        rc, stdout, err = batch("--manifest", manifest, "-o", out, "--ray", "auto")
    finally:
        ray.shutdown()
    assert rc == 1 and "6 of 8 jobs ok, 2 failed" in stdout, err
    by_key = {ln["key"]: ln for ln in lines(out)}
    assert "truncated PLY" in by_key["broken.direct.lam2e+00.hgs"]["error"]
    assert by_key["a.direct.lam2e+00.hgs"]["fitted"] and not by_key["a.direct.lam1e+00.hgs"]["fitted"]
    for key in ("a.direct.lam1e+00.hgs", "a.direct.lam2e+00.hgs", "b.direct.lam1e+00.hgs", "b.direct.lam2e+00.hgs"):
        assert (out / key).read_bytes() == (local_run[0] / key).read_bytes(), key
    # Anchor mode: one variable-rate model, trained by the first λ's job, codes both.
    first, second = by_key["a.anchor.lam1e-03.hgs"], by_key["a.anchor.lam2e-03.hgs"]
    assert first["status"] == second["status"] == "ok" and first["fitted"] and not second["fitted"]
    assert first["anchors"] == second["anchors"] > 0 and first["psnr"] > 5


@pytest.mark.slow
def test_kept_anchor_models_are_trained_once_and_reused_by_a_later_batch(scenes, tmp_path):
    out = tmp_path / "out"
    anchor = ["--mode", "anchor", "--steps", "2", "--warm-steps", "2", "--views", "0", "--keep-models", "--workers", "1"]
    rc, stdout, err = batch(scenes / "b.spz", "-o", out, "--lambda", "1e-3", *anchor)
    assert rc == 0, err
    model = out / "b.anchor.model.safetensors"
    (first,) = lines(out)
    assert first["fitted"] and first["model"] == str(model.resolve()) and model.is_file()
    stamp = model.stat().st_mtime_ns
    # Another λ of the same scene and settings, in a later run (another process): the kept model codes it.
    rc, stdout, err = batch(scenes / "b.spz", "-o", out, "--lambda", "1e-3", "3e-3", *anchor)
    assert rc == 0, err
    by_key = {ln["key"]: ln for ln in lines(out)}
    again = by_key["b.anchor.lam3e-03.hgs"]
    assert again["status"] == "ok" and again["fitted"] is False and model.stat().st_mtime_ns == stamp
    assert again["anchors"] == first["anchors"] and (out / again["key"]).is_file()
