"""The worker subprocess (`python -m hemgs.worker`) driven by the add-on's client, without Blender:
handshake, real operations with progress, errors, cancel (process tree gone within 2 s, no output
left) and a crashed worker."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import DEMO_PLY, REPO


def _load_client():
    # worker_client.py has no bpy import: load it by path, without the add-on's __init__.
    spec = importlib.util.spec_from_file_location("worker_client", REPO / "hemgs_blender" / "worker_client.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


wc = _load_client()


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
    assert set(hello["planned"]) == {"train", "compress", "decompress"}
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
    for op in ("train", "compress", "decompress"):
        with pytest.raises(wc.WorkerError) as err:
            client.run(op, {}, timeout=60)
        assert err.value.kind == "NotAvailable" and "not available in this version" in err.value.message
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
