"""The engines that run a batch's jobs: a local process pool (concurrent.futures) or Ray tasks.
Both run the same function (job.run_job) and yield each job's result line as the job ends.

The unit handed to a worker is a scene's run of λ (`scene_groups`), so that one process fits a
scene once and codes it at each λ; the result lines still come back one per job, as each ends
(a queue from the pool's processes; a streaming generator task in Ray).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
from typing import Iterator

from ..errors import InputError, one_line
from .job import PROCESS_ENV, run_job, setup_process


def scene_groups(jobs: list[dict], slots: int) -> list[list[dict]]:
    """The jobs in runs that share a fit (same source, mode and options), in order; a run is
    split where there are fewer runs than `slots` (workers), so that no worker idles."""
    runs: dict[str, list[dict]] = {}
    for job in jobs:
        runs.setdefault(json.dumps([job["source"], job["mode"], job["options"]], sort_keys=True), []).append(job)
    split = max(1, slots // max(len(runs), 1))
    out = []
    for run in runs.values():
        n = 1 if run[0].get("model") else min(split, len(run))  # a kept model is trained once, by one worker
        out += [run[i * len(run) // n:(i + 1) * len(run) // n] for i in range(n)]
    return out


def lost_line(job: dict, exc: BaseException) -> dict:
    """The line of a job whose worker died (killed, out of memory, a lost node) before it ended."""
    return {"key": job["key"], "source": job["source"], "mode": job["mode"], "lambda": job["lambda"],
            "output": job["output"], "options": job["options"], "status": "failed",
            "error": f"worker lost: {exc.__class__.__name__}: {one_line(exc)}"[:300], "host": None, "pid": None}


# ---- local: a process pool ------------------------------------------------------------------------
_SINK = None  # the pool process's end of the driver's result queue


def _init_local(sink) -> None:
    global _SINK
    _SINK = sink
    setup_process()


def _local_group(jobs: list[dict]) -> None:
    for job in jobs:
        _SINK.put(run_job(job))


@contextlib.contextmanager
def _environment(values: dict):
    """`values` in os.environ while the pool's processes start (OpenMP reads them at start-up)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_local(jobs: list[dict], workers: int) -> Iterator[dict]:
    """The jobs on `workers` processes of this machine, one thread each."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    if not jobs:
        return
    ctx = mp.get_context("spawn")  # a fresh interpreter: no torch threads or state copied from the driver
    sink = ctx.Queue()
    parts = scene_groups(jobs, workers)
    with _environment(PROCESS_ENV):  # the pool starts its processes as jobs are submitted
        pool = ProcessPoolExecutor(min(workers, len(parts)), mp_context=ctx, initializer=_init_local,
                                   initargs=(sink,))
        futures = {pool.submit(_local_group, part): part for part in parts}
    reported: set[str] = set()
    try:
        while len(reported) < len(jobs):
            try:
                line = sink.get(timeout=0.5)
            except queue.Empty:
                # Nothing came: a run whose process died fails its jobs not yet reported.
                for fut, part in futures.items():
                    if fut.done() and fut.exception() is not None:
                        for job in part:
                            if job["key"] not in reported:
                                reported.add(job["key"])
                                yield lost_line(job, fut.exception())
                continue
            if line["key"] not in reported:
                reported.add(line["key"])
                yield line
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


# ---- Ray --------------------------------------------------------------------------------------------
def _ray_group(jobs: list[dict]):
    setup_process()
    for job in jobs:
        yield run_job(job)


def run_ray(jobs: list[dict], address: str, workers: int | None = None) -> Iterator[dict]:
    """The jobs as Ray tasks of 1 CPU (anchor mode: and 1 GPU where the cluster has GPUs).
    `address`: "auto" (the cluster this machine belongs to), a head's host:port or ray:// address,
    or "local" (a Ray instance for this run only, of `workers` CPUs). An instance already started
    in this process (ray.init) is used as it is."""
    try:
        import ray
    except ImportError:
        raise InputError("--ray needs Ray: pip install 'hemgs[ray]'") from None
    own = not ray.is_initialized()
    if own:
        try:
            if address == "local":
                ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise InputError(f"--ray {address}: cannot connect ({one_line(exc)})"[:300]) from None
    streams: dict = {}
    try:
        resources = ray.cluster_resources()
        gpus = resources.get("GPU", 0) >= 1
        task = ray.remote(_ray_group)
        for part in scene_groups(jobs, max(1, int(resources.get("CPU", 1)))):
            gpu = 1 if gpus and part[0]["mode"] == "anchor" else 0  # direct mode's fit is CPU work
            # max_retries=0: a scene that kills its worker fails; --retry-failed runs it again.
            gen = task.options(num_cpus=1, num_gpus=gpu, max_retries=0,
                               runtime_env={"env_vars": PROCESS_ENV}).remote(part)
            streams[gen] = part
        reported: set[str] = set()
        while streams:
            [gen], _ = ray.wait(list(streams), num_returns=1)
            try:
                line = ray.get(next(gen))
            except StopIteration:
                del streams[gen]
                continue
            except Exception as exc:  # noqa: BLE001 - the task died: its jobs not yet reported fail
                for job in streams.pop(gen):
                    if job["key"] not in reported:
                        reported.add(job["key"])
                        yield lost_line(job, exc)
                continue
            reported.add(line["key"])
            yield line
    finally:
        for gen in streams:  # interrupted: stop what still runs on the cluster
            with contextlib.suppress(Exception):
                ray.cancel(gen, force=True)
        if own:
            ray.shutdown()
