"""The worker subprocess (`python -m hemgs.worker`) driven by the add-on's client, without Blender:
handshake, real operations with progress, errors, cancel (process tree gone within 2 s, no output
left), a crashed worker, and the codec ops (train, compress, decompress, .hgs previews) on a
few thousand Gaussians of the demo scene with a tiny training budget."""

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from conftest import DEMO_PLY, load_by_path
from hemgs.io import formats

pytestmark = pytest.mark.slow  # each test starts a worker process: `make test-fast` leaves them out


wc = load_by_path("hemgs_blender/worker_client.py")  # no bpy import: loaded without the add-on's __init__


@pytest.fixture
def client():
    env = dict(os.environ, OMP_NUM_THREADS="1", HEMGS_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    c = wc.WorkerClient(sys.executable, env=env)
    yield c
    c.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_handshake_and_info(client):
    hello = client.start()
    assert hello["protocol"] == wc.PROTOCOL == 1
    assert {"info", "load_preview", "render", "convert", "eval"} <= set(hello["ops"])
    assert {"train", "compress", "decompress", "model_info"} <= set(hello["ops"]) and hello["planned"] == []
    from hemgs.entropy.hemgs import LAMBDAS
    from hemgs.pipeline import LAMBDA_MARGIN

    # Variable-rate HEMGS by default; the numbers are the backend's own (the worker states them
    # without importing torch).
    from hemgs.direct import LAMBDAS as DIRECT_LAMBDAS
    from hemgs.fit import LAMBDA_RANGE, FitConfig
    from hemgs.modes import DIRECT_LAMBDA_DEFAULT, DIRECT_LAMBDA_RANGE

    assert hello["codec"] == {"default": "hemgs", "codecs": ["hemgs", "hac"], "variable_rate": True,
                              "lambdas": list(LAMBDAS), "lambda_margin": LAMBDA_MARGIN,
                              "fixed_rate": {"lambda_range": list(LAMBDA_RANGE), "lambda_default": FitConfig().lam},
                              "modes": ["anchor", "direct"], "default_mode": "direct",
                              "direct": {"lambdas": list(DIRECT_LAMBDAS), "lambda_range": list(DIRECT_LAMBDA_RANGE),
                                         "lambda_default": DIRECT_LAMBDA_DEFAULT,
                                         "switch_defaults": {"scene_agnostic": False, "ar": False, "acs": True,
                                                             "variable_rate": True}}}
    info = client.run("info", {"path": str(DEMO_PLY)}, timeout=60)
    assert info["gaussians"] == 31000 and info["format"] == "ply" and info["bytes"] == DEMO_PLY.stat().st_size


def test_eval_reports_progress_per_view_and_writes_report(client, tmp_path):
    spz = tmp_path / "demo.spz"
    conv = client.run("convert", {"src": str(DEMO_PLY), "dst": str(spz)}, outputs=[str(spz)], timeout=60)
    assert spz.stat().st_size == conv["bytes"] < DEMO_PLY.stat().st_size
    report = tmp_path / "eval.json"
    job = client.submit("eval", {"source": str(DEMO_PLY), "other": str(spz), "views": 3, "width": 48,
                                 "output": str(report)}, outputs=[str(report)])
    events = []
    while not job.finished:
        events += job.poll()
        time.sleep(0.02)
    res = job.wait(1)
    done = [e["done"] for e in events if e.get("event") == "progress" and "done" in e]
    assert done == [0, 2, 4, 6] and all(e["total"] == 6 for e in events if "total" in e)
    assert job.fraction == 1.0
    assert 30 < res["psnr"] < 80 and 0.9 < res["ssim"] <= 1.0 and res["views"] == 3
    assert json.loads(report.read_text())["psnr"] == res["psnr"]


def test_errors_are_events_and_the_worker_goes_on(client, tmp_path):
    bad = tmp_path / "broken.ply"
    bad.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 3\nproperty float x\nend_header\n\x00")
    with pytest.raises(wc.WorkerError) as err:
        client.run("info", {"path": str(bad)}, timeout=60)
    assert "broken.ply" in err.value.message and "\n" not in err.value.message
    for op, args, kind, text in [
        ("train", {"model": str(tmp_path / "m.safetensors")}, "InputError", "missing argument 'source'"),
        ("train", {"source": str(DEMO_PLY), "model": str(tmp_path / "m.safetensors"), "lambda": 5.0},
         "InputError", "λ must be a number in"),
        ("train", {"source": str(DEMO_PLY), "model": str(tmp_path / "m.safetensors"), "codec": "zip"},
         "InputError", "unknown codec 'zip'"),
        ("train", {"source": str(DEMO_PLY), "model": str(tmp_path / "m.safetensors"), "ar": "no"},
         "InputError", "'ar' must be bool"),
        ("train", {"source": str(DEMO_PLY), "model": str(tmp_path / "m.safetensors"), "lambdas": [1e-3]},
         "InputError", "variable-rate model trains on >= 2 λ"),
        ("compress", {"model": str(bad), "output": str(tmp_path / "x.hgs")}, "FormatError", "broken.ply"),
        ("compress", {"model": str(tmp_path / "none.safetensors"), "output": str(tmp_path / "x.hgs")},
         "InputError", "model file not found"),
        ("decompress", {"path": str(DEMO_PLY), "output": str(tmp_path / "x.txt")}, "InputError",
         formats.extension_list(formats.writable())),
    ]:
        with pytest.raises(wc.WorkerError) as err:
            client.run(op, args, timeout=60)
        assert err.value.kind == kind and text in err.value.message and "\n" not in err.value.message, err.value
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.ply"]  # no output of a failed job
    with pytest.raises(wc.WorkerError) as err:
        client.run("eval", {"source": str(DEMO_PLY)}, timeout=60)
    assert "missing argument 'other'" in err.value.message
    with pytest.raises(wc.WorkerError, match="unknown operation"):
        client.run("fly", {}, timeout=60)
    assert client.run("info", {"path": str(DEMO_PLY)}, timeout=60)["gaussians"] == 31000  # same worker
    assert client.proc is not None and client.proc.poll() is None


def test_bad_request_line_gets_protocol_error():
    run = subprocess.run([sys.executable, "-m", "hemgs.worker"], input="not json\n", capture_output=True,
                         text=True, timeout=60)
    lines = [json.loads(x) for x in run.stdout.splitlines()]
    assert lines[0]["event"] == "hello" and lines[1]["type"] == "ProtocolError" and run.returncode == 0


def test_cancel_kills_the_tree_within_2s_and_leaves_no_output(client, tmp_path):
    report = tmp_path / "eval.json"
    job = client.submit("eval", {"source": str(DEMO_PLY), "other": str(DEMO_PLY), "views": 400, "width": 64,
                                 "output": str(report)}, outputs=[str(report)])
    pid = client.proc.pid
    deadline = time.monotonic() + 60
    while job.done < 2 and time.monotonic() < deadline:  # really running: a view was rendered
        job.poll()
        time.sleep(0.02)
    assert job.done >= 2 and not job.finished
    t0 = time.monotonic()
    job.cancel()
    elapsed = time.monotonic() - t0
    assert elapsed < 2.0 and not _alive(pid)
    assert job.state == wc.CANCELLED
    with pytest.raises(wc.WorkerError) as err:
        job.wait(1)
    assert err.value.kind == "Cancelled"
    assert list(tmp_path.iterdir()) == []
    # The next job starts a fresh worker.
    assert client.run("info", {"path": str(DEMO_PLY)}, timeout=60)["gaussians"] == 31000


def test_a_timeout_cancels_the_job_and_the_next_call_runs(client, tmp_path):
    report = tmp_path / "eval.json"
    pid = client.start()["pid"]
    with pytest.raises(TimeoutError, match="cancelled"):
        client.run("eval", {"source": str(DEMO_PLY), "other": str(DEMO_PLY), "views": 400, "width": 64,
                            "output": str(report)}, outputs=[str(report)], timeout=3)
    assert client.job.state == wc.CANCELLED and not _alive(pid)
    assert client.run("info", {"path": str(DEMO_PLY)}, timeout=60)["gaussians"] == 31000  # not "Busy"
    assert list(tmp_path.iterdir()) == []


def _events_of(client, op: str, args: dict) -> tuple[list[dict], BaseException | None]:
    """Run one request to its end: its events, and its error (None on success)."""
    job = client.submit(op, args)
    events = []
    deadline = time.monotonic() + 120
    while not job.finished and time.monotonic() < deadline:
        events += job.poll()
        time.sleep(0.01)
    return events, job.error


def test_outputs_that_cannot_be_written_are_refused_before_any_work(client, tiny_ply, tmp_path):
    folder = tmp_path / "a_folder"
    folder.mkdir()
    gone = str(tmp_path / "missing" / "out")  # + an extension: a file in a folder that does not exist
    hgs, src, demo, dir_ = str(tmp_path / "x.hgs"), str(tiny_ply), str(DEMO_PLY), str(folder)
    cases = [
        ("compress", {"mode": "direct", "source": src, "output": gone + ".hgs"}, "does not exist"),
        ("compress", {"mode": "direct", "source": src, "output": dir_}, "it is a folder"),
        ("compress", {"mode": "direct", "source": src, "output": hgs, "preview": gone + ".npz"}, "does not exist"),
        ("train", {"source": src, "model": gone + ".safetensors", **TINY_FIT}, "does not exist"),
        ("train", {"source": src, "model": dir_, **TINY_FIT}, "it is a folder"),
        ("convert", {"src": demo, "dst": gone + ".spz"}, "does not exist"),
        ("eval", {"source": demo, "other": demo, "output": dir_}, "it is a folder"),
        ("render", {"path": demo, "output": gone + ".png"}, "does not exist"),
        ("load_preview", {"path": demo, "output": dir_}, "it is a folder"),
        ("decompress", {"path": hgs, "output": gone + ".ply"}, "does not exist"),
    ]
    for op, args, says in cases:
        events, err = _events_of(client, op, args)
        assert [e for e in events if e.get("event") == "progress"] == [], (op, args)  # no work began
        assert isinstance(err, wc.WorkerError) and err.kind == "InputError" and says in err.message, (op, err)
        bad = gone if says == "does not exist" else dir_
        assert bad in err.message and ".tmp" not in err.message and "\n" not in err.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_folder"] and list(folder.iterdir()) == []


def test_dry_runs_check_lambda_and_options_and_write_nothing(client, tiny_ply, tmp_path):
    hello = client.start()
    assert hello["dry_run"] == ["compress", "train"]
    model = tmp_path / "tiny.hemgs.safetensors"
    plan = client.run("train", {"source": str(tiny_ply), "model": str(model), "serve": [5e-4, 8e-3],
                                "dry_run": True}, timeout=60)
    assert plan["dry_run"] is True and plan["variable_rate"] is True and plan["lambda_serves"] == [5e-4, 8e-3]
    model.write_bytes(b"an older model")  # a refused training leaves it as it was
    for args, says in [
        ({"serve": [0.5], "dry_run": True}, "outside what this model serves"),
        ({"serve": [0.5]}, "outside what this model serves"),  # the real run checks the same, first
        ({"codec": "hac", "lambda": 0.5, "dry_run": True}, "λ must be a number in"),
        ({"codec": "hac", "lambda": 2e-3, "serve": [1e-3], "dry_run": True}, "fixed-rate"),
        ({"serve": ["x"], "dry_run": True}, "'serve' must be a list of numbers"),
    ]:
        events, err = _events_of(client, "train", {"source": str(tiny_ply), "model": str(model), **TINY_FIT, **args})
        assert isinstance(err, wc.WorkerError) and err.kind == "InputError" and says in err.message, (args, err)
        assert [e for e in events if e.get("event") == "progress"] == []
    assert model.read_bytes() == b"an older model"
    out = str(tmp_path / "d.hgs")
    ok = client.run("compress", {"mode": "direct", "source": str(tiny_ply), "output": out, "lambda": 2.0,
                                 "dry_run": True}, timeout=60)
    assert ok == {"dry_run": True, "output": out, "mode": "direct", "lambda": 2.0}
    with pytest.raises(wc.WorkerError, match="λ"):
        client.run("compress", {"mode": "direct", "source": str(tiny_ply), "output": out, "lambda": 100.0,
                                "dry_run": True}, timeout=60)
    with pytest.raises(wc.WorkerError, match="no cameras.json beside"):  # coding for cameras it does not have
        client.run("compress", {"mode": "direct", "source": str(tiny_ply), "output": out, "for_cameras": True,
                                "dry_run": True}, timeout=60)
    assert sorted(p.name for p in tmp_path.iterdir()) == [model.name]
    # An older worker (no "dry_run" in its hello) would ignore the flag and do the work: refused.
    client.hello["dry_run"] = []
    with pytest.raises(wc.WorkerError, match="update it") as err:
        client.run("train", {"source": str(tiny_ply), "model": str(model), "dry_run": True}, timeout=60)
    assert err.value.kind == "NotAvailable"


def test_crashed_worker_is_reported(client, tmp_path):
    out = tmp_path / "view.png"
    job = client.submit("eval", {"source": str(DEMO_PLY), "other": str(DEMO_PLY), "views": 400, "width": 64})
    while job.done < 2:
        job.poll()
        time.sleep(0.02)
    os.kill(client.proc.pid, signal.SIGKILL)  # what an out-of-memory kill looks like
    with pytest.raises(wc.WorkerError) as err:
        job.wait(10)
    assert job.state == wc.CRASHED and err.value.kind == "Crashed"
    assert "signal 9" in err.value.message
    res = client.run("render", {"path": str(DEMO_PLY), "output": str(out), "width": 32}, outputs=[str(out)],
                     timeout=60)
    assert out.stat().st_size > 0 and res["width"] == 32


def test_missing_backend_python_is_a_clear_error(tmp_path):
    c = wc.WorkerClient(str(tmp_path / "no-python"))
    with pytest.raises(wc.WorkerError, match="does not exist"):
        c.run("info", {})
    c = wc.WorkerClient("/bin/false")  # starts, then dies before its hello
    with pytest.raises(wc.WorkerError, match="did not start"):
        c.start()


# ---- the codec -----------------------------------------------------------------------------------
TINY_FIT = {"steps": 5, "warm_steps": 10, "width": 32, "views": 8}


@pytest.fixture(scope="module")
def tiny_ply(tmp_path_factory):
    """3,000 Gaussians of the demo scene: enough to train and code, small enough to take seconds."""
    import numpy as np

    from hemgs.io import load_scene, write_ply

    scene = load_scene(DEMO_PLY)
    keep = np.sort(np.random.default_rng(0).choice(len(scene), 3000, replace=False))
    path = tmp_path_factory.mktemp("tiny") / "tiny.ply"
    write_ply(scene.subset(keep), path)
    return path


def test_train_compress_decompress_through_the_worker(client, tiny_ply, tmp_path):
    import numpy as np
    import torch

    from hemgs.cameras import evaluation_views
    from hemgs.cli import evaluate
    from hemgs.container import read_hgs
    from hemgs.io import load_scene
    from hemgs.preview import load_preview_npz

    model = tmp_path / "tiny.safetensors"
    # The default model: variable-rate HEMGS, all parts on.
    job = client.submit("train", {"source": str(tiny_ply), "model": str(model), **TINY_FIT}, outputs=[str(model)])
    events = []
    while not job.finished:
        events += job.poll()
        time.sleep(0.02)
    trained = job.wait(1)
    progress = [e for e in events if e.get("event") == "progress"]
    stages = [e["stage"] for e in progress]
    assert [s for i, s in enumerate(stages) if i == 0 or stages[i - 1] != s] == ["teacher", "importance", "warm", "render", "refine"]
    fractions = [e["fraction"] for e in progress]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert all(e["done"] <= e["total"] for e in progress)
    assert trained["codec"] == "hemgs" and trained["variable_rate"] is True
    assert trained["switches"] == {"scene_agnostic": True, "ar": True, "acs": True, "variable_rate": True}
    assert (trained["lambda_min"], trained["lambda_max"]) == (1e-3, 4e-3)
    assert trained["lambda_serves"] == [5e-4, 8e-3]  # widened by pipeline.LAMBDA_MARGIN
    assert trained["anchors"] > 0 and model.stat().st_size == trained["bytes"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(model.stat().st_mode) == 0o666 & ~umask  # what open() gives, as for every output
    info = client.run("model_info", {"path": str(model)}, timeout=60)
    assert info["source"] == "tiny.ply" and trained["source"] == str(tiny_ply)  # the name kept in the model
    assert {k: info[k] for k in info if k not in ("fit", "source")} == {
        k: trained[k] for k in info if k not in ("fit", "source")}

    hgs, npz = tmp_path / "tiny.hgs", tmp_path / "decoded.npz"
    res = client.run("compress", {"model": str(model), "output": str(hgs), "source": str(tiny_ply), "views": 4,
                                  "width": 64, "preview": str(npz), "lambda": 1e-3}, outputs=[str(hgs), str(npz)],
                     timeout=120)
    size = hgs.stat().st_size
    assert stat.S_IMODE(hgs.stat().st_mode) == stat.S_IMODE(model.stat().st_mode)
    assert res["bytes"] == size and 0 < sum(res["sections"].values()) <= size
    assert res["source_bytes"] == tiny_ply.stat().st_size and res["ratio"] == pytest.approx(res["source_bytes"] / size)
    assert res["lambda"] == 1e-3 and res["views"] == 4 and res["width"] == res["height"] == 64
    # The metrics are hemgs eval's, on its views, of the file as written.
    cams = evaluation_views(load_scene(tiny_ply), n=4, width=64)
    ref = evaluate(str(tiny_ply), str(hgs), cams, torch.device("cpu"))
    assert res["psnr"] == pytest.approx(ref["psnr"], abs=1e-3) and res["ssim"] == pytest.approx(ref["ssim"], abs=1e-4)
    assert 12 < res["psnr"] < 60 and 0.2 < res["ssim"] < 1.0
    preview = load_preview_npz(npz)
    assert len(preview) == res["preview_count"] > 0
    assert np.isfinite(preview.positions).all() and (preview.opacities > 0).all()

    # The same model at another λ of its range: another file, of another size, coded at that λ.
    hgs4 = tmp_path / "tiny4.hgs"
    res4 = client.run("compress", {"model": str(model), "output": str(hgs4), "views": 0, "lambda": 4e-3},
                      outputs=[str(hgs4)], timeout=120)
    assert res4["lambda"] == 4e-3 and res4["bytes"] == hgs4.stat().st_size != size
    assert read_hgs(hgs4).header["lambda"] == 4e-3 and read_hgs(hgs).header["lambda"] == 1e-3
    assert res4["sections"]["networks"] == res["sections"]["networks"]  # one model, two rates

    # The .hgs previews through the worker as the decoded, baked scene; decompress writes the same Gaussians.
    via_worker = tmp_path / "hgs_preview.npz"
    lp = client.run("load_preview", {"path": str(hgs), "output": str(via_worker)}, timeout=60)
    assert lp["kind"] == "decoded" and lp["count"] == len(preview)
    np.testing.assert_allclose(load_preview_npz(via_worker).positions, preview.positions, atol=1e-6)
    ply = tmp_path / "decoded.ply"
    dec = client.run("decompress", {"path": str(hgs), "output": str(ply)}, outputs=[str(ply)], timeout=60)
    assert dec["gaussians"] == len(preview) == len(load_scene(ply)) and dec["sh_degree"] == 1

    # A λ beyond what the model serves is an error event naming the range, and writes nothing.
    with pytest.raises(wc.WorkerError) as err:
        client.run("compress", {"model": str(model), "output": str(tmp_path / "other.hgs"), "lambda": 2e-2},
                   timeout=60)
    assert err.value.kind == "InputError" and "outside what this model serves" in err.value.message
    assert "0.0005 to 0.008" in err.value.message
    assert not (tmp_path / "other.hgs").exists()
    assert client.run("info", {"path": str(hgs4)}, timeout=60)["format"] == "hgs"  # the same worker goes on


def test_fixed_rate_model_codes_only_its_own_lambda(client, tiny_ply, tmp_path):
    model = tmp_path / "hac.safetensors"
    trained = client.run("train", {"source": str(tiny_ply), "model": str(model), "codec": "hac", "lambda": 2e-3,
                                   **TINY_FIT, "steps": 2}, outputs=[str(model)], timeout=120)
    assert trained["codec"] == "hac" and trained["variable_rate"] is False and trained["switches"] is None
    assert trained["lambda"] == trained["lambda_min"] == trained["lambda_max"] == 2e-3
    assert trained["lambda_serves"] == [2e-3, 2e-3]
    with pytest.raises(wc.WorkerError) as err:
        client.run("compress", {"model": str(model), "output": str(tmp_path / "other.hgs"), "lambda": 1e-3},
                   timeout=60)
    assert err.value.kind == "InputError" and "fixed-rate" in err.value.message and "λ=0.002" in err.value.message
    assert not (tmp_path / "other.hgs").exists()


def test_cancel_during_train_leaves_no_model_and_no_worker(client, tiny_ply, tmp_path):
    model = tmp_path / "cancelled.safetensors"
    job = client.submit("train", {"source": str(tiny_ply), "model": str(model), "lambda": 1e-3, "steps": 5000,
                                  "warm_steps": 10, "width": 32, "views": 8}, outputs=[str(model)])
    pid = client.proc.pid
    deadline = time.monotonic() + 60
    while job.stage != "render" and not job.finished and time.monotonic() < deadline:
        job.poll()
        time.sleep(0.02)
    assert job.stage == "render" and not job.finished  # really training
    t0 = time.monotonic()
    job.cancel()
    assert time.monotonic() - t0 < 2.0 and not _alive(pid)
    assert job.state == wc.CANCELLED
    assert list(tmp_path.iterdir()) == []


def test_the_addons_batch_plans_every_job_first_and_runs_them_through_the_batch_job(client, tiny_ply, tmp_path):
    """api.compress's path: batch_plan checks the whole batch before anything is made, batch_job
    runs hemgs batch's job function with its progress, and a scene that fails is its line."""
    out = tmp_path / "out"
    for args, says in [({"options": {"steps": 3}}, "direct mode takes no option 'steps'"),
                       ({"lambdas": [100.0]}, "outside what direct mode serves"),
                       ({"sources": [str(tmp_path / "nope.ply")]}, "no such file")]:
        with pytest.raises(wc.WorkerError, match=says):
            client.run("batch_plan", {"sources": [str(tiny_ply)], "mode": "direct", "output_dir": str(out),
                                      **args}, timeout=60)
    assert not out.exists()  # refused before the folder is made
    broken = tmp_path / "broken.ply"
    broken.write_bytes(tiny_ply.read_bytes()[:3000])
    plan = client.run("batch_plan", {"sources": [str(tiny_ply), str(broken)], "mode": "direct", "lambdas": [2.0],
                                     "output_dir": str(out), "options": {"iters": 10, "views": 2}}, timeout=60)
    assert [j["key"] for j in plan["jobs"]] == ["tiny.direct.lam2e+00.hgs", "broken.direct.lam2e+00.hgs"]
    job = client.submit("batch_job", {"job": plan["jobs"][0]}, outputs=[plan["jobs"][0]["output"]])
    events = []
    while not job.finished:
        events += job.poll()
        time.sleep(0.02)
    line = job.wait(1)
    assert line["status"] == "ok" and line["fitted"] and line["psnr"] > 20 and line["sections"]
    assert (out / line["key"]).stat().st_size == line["bytes"]
    assert {"fitting", "encoding"} <= {e["stage"] for e in events if e.get("event") == "progress"}
    failed = client.run("batch_job", {"job": plan["jobs"][1]}, timeout=60)
    assert failed["status"] == "failed" and "truncated" in failed["error"] and not (out / failed["key"]).exists()


def test_a_preview_carries_the_gaussians_shape_and_sh_only_when_asked(client, tiny_ply, tmp_path):
    """Point-cloud previews (Blender before 5.3) need positions, colours and sizes alone: without the
    Gaussians' shape and SH the file is a fraction of the size, for the worker to write and Blender to read."""
    import numpy as np

    from hemgs.preview import GAUSSIAN_KEYS, PREVIEW_KEYS

    sizes = {}
    for gaussians in (True, False):
        out = tmp_path / f"p{gaussians}.npz"
        res = client.run("load_preview", {"path": str(tiny_ply), "output": str(out), "preview_gaussians": gaussians},
                         timeout=60)
        assert res["count"] == 3000
        with np.load(out) as data:
            assert sorted(data.files) == sorted(PREVIEW_KEYS + (GAUSSIAN_KEYS if gaussians else ()))
        sizes[gaussians] = out.stat().st_size
    assert sizes[False] < 0.5 * sizes[True]  # SH degree 2: 27 floats of 44 a Gaussian are SH
    with pytest.raises(wc.WorkerError, match="preview_gaussians"):
        client.run("load_preview", {"path": str(tiny_ply), "output": str(tmp_path / "x.npz"),
                                    "preview_gaussians": "no"}, timeout=60)
