"""OUTDIR/results.jsonl: one line per finished job (success or failure), appended by the driver
alone as each job ends, so a killed batch keeps every line it had and a re-run does the rest.
A job is skipped when its latest line has the same options and is "ok" with the .hgs present, or
is "failed" (unless --retry-failed).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from ..errors import InputError

RESULTS = "results.jsonl"


@contextlib.contextmanager
def outdir_lock(outdir: Path):
    """Refuse a second batch on the same OUTDIR while one runs (both would run the same jobs).
    An advisory lock (fcntl; where there is none, as on Windows, no lock), released at exit even
    when the driver is killed."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(outdir / ".batch.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise InputError(f"{outdir}: another hemgs batch is writing this folder") from None
        yield


def read_results(path: str | Path) -> dict[str, dict]:
    """The latest line of each job key; a line torn by a kill mid-write is ignored."""
    out: dict[str, dict] = {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return out
    for raw in text.splitlines():
        try:
            line = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if isinstance(line, dict) and isinstance(line.get("key"), str):
            out[line["key"]] = line
    return out


def split_done(jobs: list[dict], results: dict[str, dict], retry_failed: bool) -> tuple[list[dict], list[dict]]:
    """(jobs to run, result lines of the jobs skipped)."""
    todo, skipped = [], []
    for job in jobs:
        line = results.get(job["key"])
        done = (line is not None and line.get("options") == job["options"]
                and (os.path.isfile(job["output"]) if line.get("status") == "ok" else not retry_failed))
        if done:
            skipped.append(line)
        else:
            todo.append(job)
    return todo, skipped


class ResultsLog:
    """Appends result lines, each written whole and fsync'd before the next job is reported."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        # A kill mid-write can leave a last line without its newline: end it, so the next is whole.
        if self.path.exists() and self.path.stat().st_size:
            with open(self.path, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                torn = fh.read(1) != b"\n"
            if torn:
                self._write("\n")

    def _write(self, text: str) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    def append(self, line: dict) -> None:
        self._write(json.dumps(line, ensure_ascii=False) + "\n")
