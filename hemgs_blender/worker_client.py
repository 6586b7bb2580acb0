"""Client of the backend worker subprocess (`python -m hemgs.worker`, docs/protocol.md).

No bpy here (and no torch): the add-on's modal operator polls it from a timer, background-mode
scripts block on `Job.wait`, and the tests drive it from plain Python.

One worker process runs one job at a time. A reader thread turns the worker's stdout lines into
events on a queue; `Job.poll()` drains them on the caller's thread. Cancelling ends the worker's
whole process group (it is started in a session of its own), then removes the temporary files that
an interrupted atomic write may leave next to the job's outputs; the next job starts a new worker.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable

PROTOCOL = 1
HANDSHAKE_TIMEOUT = 60.0  # a cold start imports numpy (and torch for some ops) from a fresh venv
TERM_GRACE = 1.0  # seconds between SIGTERM and SIGKILL: the whole cancel stays within 2 s
STDERR_TAIL = 40

RUNNING, DONE, FAILED, CANCELLED, CRASHED = "running", "done", "failed", "cancelled", "crashed"


class WorkerError(Exception):
    """A job ended without a result: `kind` is the worker's error type, or Crashed/Cancelled/Protocol."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


class Job:
    """One request and what the worker has said about it so far."""

    def __init__(self, client: "WorkerClient", job_id: int, op: str, args: dict, outputs: Iterable[str]):
        self.client = client
        self.id = job_id
        self.op = op
        self.args = args
        self.outputs = [str(o) for o in outputs]
        self.state = RUNNING
        self.stage = "starting"
        self.message = ""
        self.done = 0
        self.total = 0
        self.overall: float | None = None  # the whole job's progress, for ops that send one
        self.result: dict | None = None
        self.error: WorkerError | None = None
        self.warnings: list[str] = []
        self.started = time.monotonic()

    @property
    def finished(self) -> bool:
        return self.state != RUNNING

    @property
    def fraction(self) -> float:
        """Progress in [0, 1]: of the whole job where the worker says (train, compress), else
        within the current stage (0 while it is unknown)."""
        if self.overall is not None:
            return min(1.0, max(0.0, self.overall))
        return min(1.0, self.done / self.total) if self.total else 0.0

    def poll(self) -> list[dict]:
        """Apply the events that have arrived; returns them (non-blocking)."""
        return self.client._pump(self)

    def wait(self, timeout: float | None = None) -> dict:
        """Block until the job ends; returns its result or raises WorkerError. After `timeout`
        seconds the job is cancelled (so the next request finds the worker free) and TimeoutError
        raised."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.finished:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                self.cancel()
                raise TimeoutError(f"{self.op} did not finish within {timeout} s and was cancelled")
            self.client._pump(self, block=min(left, 0.5) if left is not None else 0.5)
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result

    def cancel(self) -> None:
        self.client.cancel(self)


class WorkerClient:
    """Starts and talks to one worker process, restarting it for the job after a cancel or crash."""

    def __init__(self, python: str, env: dict | None = None, cwd: str | None = None):
        self.python = python
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None
        self.hello: dict | None = None
        self._events: queue.Queue = queue.Queue()
        self._stderr: collections.deque = collections.deque(maxlen=STDERR_TAIL)
        self._next_id = 1
        self.job: Job | None = None

    # ---- process ---------------------------------------------------------------------------
    def start(self) -> dict:
        """Start the worker (if it is not running) and return its hello event."""
        if self.proc is not None and self.proc.poll() is None and self.hello is not None:
            return self.hello
        if not self.python:
            raise WorkerError("Setup", "no backend Python is set (add-on preferences: Backend Python)")
        if not Path(self.python).exists():
            raise WorkerError("Setup", f"the backend Python {self.python} does not exist")
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._events = queue.Queue()
        self._stderr.clear()
        try:
            # A session of its own: cancel can signal the worker and everything it started at once.
            self.proc = subprocess.Popen(
                [self.python, "-u", "-m", "hemgs.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, env=env, cwd=self.cwd, text=True, encoding="utf-8", bufsize=1,
                start_new_session=(os.name == "posix"),
                creationflags=getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0) if os.name == "nt" else 0,
            )
        except OSError as exc:
            raise WorkerError("Setup", f"cannot start the backend {self.python}: {exc.strerror or exc}") from None
        proc = self.proc
        threading.Thread(target=self._read_stdout, args=(proc, self._events), daemon=True).start()
        threading.Thread(target=self._read_stderr, args=(proc,), daemon=True).start()
        hello = self._next_event(HANDSHAKE_TIMEOUT)
        if hello is None or hello.get("event") != "hello":
            detail = self._crash_text()
            self._kill()
            raise WorkerError("Crashed", f"the backend did not start: {detail}")
        if hello.get("protocol") != PROTOCOL:
            self._kill()
            raise WorkerError("Protocol", f"the backend speaks protocol {hello.get('protocol')}, this add-on "
                                          f"speaks {PROTOCOL}: update one of them")
        self.hello = hello
        return hello

    @staticmethod
    def _read_stdout(proc: subprocess.Popen, events: queue.Queue) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                events.put(json.loads(line))
            except ValueError:
                events.put({"event": "noise", "line": line[:200]})
        events.put({"event": "eof"})

    def _read_stderr(self, proc: subprocess.Popen) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self._stderr.append(line.rstrip())

    def _next_event(self, timeout: float | None) -> dict | None:
        try:
            return self._events.get(timeout=timeout)
        except queue.Empty:
            return None

    def _crash_text(self) -> str:
        code = self.proc.poll() if self.proc else None
        tail = [ln for ln in self._stderr if ln.strip()]
        last = tail[-1] if tail else "no message"
        how = f"exit code {code}" if code is not None and code >= 0 else (
            f"killed by signal {-code}" if code is not None else "no answer")
        return f"{how}; last message: {last}"

    def stderr_tail(self) -> list[str]:
        return list(self._stderr)

    # ---- jobs ------------------------------------------------------------------------------
    def submit(self, op: str, args: dict | None = None, outputs: Iterable[str] = ()) -> Job:
        """Send one request; `outputs` are files the job writes (swept of temporaries on cancel)."""
        if self.job is not None and not self.job.finished:
            raise WorkerError("Busy", f"the backend is still running {self.job.op}")
        hello = self.start()
        mode = (args or {}).get("mode")
        if mode in ("anchor", "direct") and mode not in ((hello or {}).get("codec") or {}).get("modes", ["anchor"]):
            # An older backend (same protocol) would ignore `mode`: say what is missing instead.
            raise WorkerError("NotAvailable", f"the backend (hemgs {(hello or {}).get('hemgs')}) does not serve "
                                              f"{mode} mode; update it")
        if (args or {}).get("dry_run") and op not in (hello or {}).get("dry_run", []):
            # An older backend would ignore `dry_run` and do the work.
            raise WorkerError("NotAvailable", f"the backend (hemgs {(hello or {}).get('hemgs')}) cannot check {op} "
                                              "without running it; update it")
        job = Job(self, self._next_id, op, dict(args or {}), outputs)
        self._next_id += 1
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({"id": job.id, "op": op, "args": job.args}) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            job.state, job.error = CRASHED, WorkerError("Crashed", f"the backend stopped: {self._crash_text()}")
        self.job = job
        return job

    def run(self, op: str, args: dict | None = None, outputs: Iterable[str] = (), timeout: float | None = None) -> dict:
        """Submit and wait: the blocking form that background-mode scripts use."""
        return self.submit(op, args, outputs).wait(timeout)

    def _pump(self, job: Job, block: float | None = None) -> list[dict]:
        seen: list[dict] = []
        while not job.finished:
            try:
                ev = self._events.get(timeout=block) if block and not seen else self._events.get_nowait()
            except queue.Empty:
                break
            seen.append(ev)
            self._apply(job, ev)
        return seen

    def _apply(self, job: Job, ev: dict) -> None:
        kind = ev.get("event")
        if kind == "eof":
            if self.proc is not None:
                try:
                    self.proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    pass
            job.state = CRASHED
            job.error = WorkerError("Crashed", f"the backend stopped while running {job.op}: {self._crash_text()}")
            self._sweep(job)
            return
        if ev.get("id") != job.id:
            if kind == "error" and ev.get("id") is None:
                job.state, job.error = FAILED, WorkerError(ev.get("type", "Protocol"), ev.get("message", ""))
            return
        if kind == "progress":
            if ev.get("stage") == "warning":
                job.warnings.append(ev.get("message", ""))
                return
            job.stage = ev.get("stage", job.stage)
            job.message = ev.get("message", "")
            if "done" in ev:
                job.done, job.total = int(ev["done"]), int(ev.get("total") or 0)
            if isinstance(ev.get("fraction"), (int, float)):
                job.overall = float(ev["fraction"])
        elif kind == "result":
            job.state, job.result = DONE, ev.get("result") or {}
        elif kind == "error":
            job.state = FAILED
            job.error = WorkerError(ev.get("type", "Error"), ev.get("message", "unknown error"))

    def cancel(self, job: Job | None = None) -> None:
        """Stop the running job: end the worker's process tree (within ~TERM_GRACE + a little)."""
        job = job or self.job
        self._kill()
        if job is not None and not job.finished:
            job.state = CANCELLED
            job.error = WorkerError("Cancelled", f"{job.op} was cancelled")
            self._sweep(job)

    def _kill(self) -> None:
        proc, self.proc, self.hello = self.proc, None, None
        if proc is None or proc.poll() is not None:
            return
        _signal_tree(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=TERM_GRACE)
        except subprocess.TimeoutExpired:
            _signal_tree(proc, getattr(signal, "SIGKILL", signal.SIGTERM))
            proc.wait(timeout=5)
        if os.name == "posix":  # children that outlived their parent still hold the group id
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    @staticmethod
    def _sweep(job: Job) -> None:
        """Remove the temporary files (`.NAME.<hex>.tmp`, see hemgs.io.atomic) of a stopped job's outputs."""
        for out in job.outputs:
            path = Path(out)
            folder = path.parent if str(path.parent) else Path(".")
            try:
                leftovers = list(folder.glob(f".{path.name}.*.tmp"))
            except OSError:
                continue
            for tmp in leftovers:
                try:
                    tmp.unlink()
                except OSError:
                    pass

    def close(self) -> None:
        """Ask the worker to stop; kill it if it does not within a second."""
        proc = self.proc
        if proc is not None and proc.poll() is None and proc.stdin is not None:
            try:
                proc.stdin.close()
                proc.wait(timeout=1.0)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._kill()


def _signal_tree(proc: subprocess.Popen, sig: int) -> None:
    try:
        if os.name == "posix":
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def default_python() -> str:
    """This interpreter: right for tests and for a Blender whose Python has the backend."""
    return sys.executable


def error_text(exc: BaseException) -> str:
    """One line for the panel."""
    if isinstance(exc, WorkerError):
        return exc.message if exc.kind in ("Cancelled",) else f"{exc.kind}: {exc.message}"
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"

