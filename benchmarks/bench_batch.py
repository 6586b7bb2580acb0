"""Batch throughput (issue #25): jobs per minute of `hemgs batch` with 1 and 2 workers, on the local
engine and on a two-node Ray cluster started on this machine, over 8 demo-sized scenes at 2 λ.

Scenes: 8 variants of the demo scene (data/demo/playbot_lod3.ply, 31,000 Gaussians): each keeps a
seeded 97% of the Gaussians and moves them by a seeded jitter of 1e-4 of the scene's extent, so no
two are the same file. They go to the ignored folder benchmarks/large/batch/scenes/.

Runs, each `python -m hemgs.batch SCENES -o OUT --lambda 1 2` as a subprocess, timed end to end
(start-up, the worker processes' imports and every job), OMP_WAIT_POLICY=PASSIVE, 1 thread per job:

  local-1, local-2   the local engine, --workers 1 and 2
  ray-1              `ray start --head --num-cpus 1`: a cluster of one 1-CPU node, --ray ADDRESS
  ray-2              + `ray start --address ... --num-cpus 1 --resources '{"second_node": 1}'`:
                     two 1-CPU nodes (both on this machine)
  kill               local, 2 workers, killed (SIGKILL to the driver and its workers) once half
                     the jobs have their line, then run again: what the second run does

It checks that every run wrote the same .hgs bytes for every job, and writes
docs/benchmarks/batch.md and docs/benchmarks/batch.json.

The Ray nodes are `ray start --block` processes in their own process groups, stopped by signalling
those groups (not `ray stop`, which would stop every Ray process on the machine).
Ray's token authentication (Ray >= 2.5x) is on for a cluster `ray start` makes when a token exists:
every process here gets RAY_AUTH_MODE=token and reads the same ~/.ray/auth_token.

Usage:
    .venv/bin/python benchmarks/bench_batch.py                 # all runs, ~15 min on 2 cores
    .venv/bin/python benchmarks/bench_batch.py --runs local    # local engine only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

from machine import cpu_name

REPO = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("HEMGS_BENCH_WORK", REPO / "benchmarks" / "large" / "batch"))  # git-ignored
DEMO = REPO / "data" / "demo" / "playbot_lod3.ply"
DOC = REPO / "docs" / "benchmarks" / "batch.md"
JSON = REPO / "docs" / "benchmarks" / "batch.json"
RAY = Path(sys.executable).parent / "ray"
ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}


def make_scenes(n: int) -> Path:
    import numpy as np

    from hemgs.io import load_scene, save_scene

    folder = WORK / "scenes"
    folder.mkdir(parents=True, exist_ok=True)
    scene = None
    for i in range(n):
        path = folder / f"demo_{i}.ply"
        if path.is_file():
            continue
        scene = load_scene(DEMO) if scene is None else scene
        rng = np.random.default_rng(i)
        variant = scene.subset(np.sort(rng.permutation(len(scene))[: int(0.97 * len(scene))]))
        extent = float(np.ptp(variant.means, axis=0).max())
        variant.means = variant.means + rng.normal(0, 1e-4 * extent, variant.means.shape).astype(np.float32)
        save_scene(variant, path)
    for stale in sorted(folder.glob("demo_*.ply"))[n:]:
        stale.unlink()
    return folder


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def wait_for_quiet(args) -> float:
    """Wait (at most --quiet-wait s) until the 1-minute load average is below --quiet: on a shared
    machine other work would take the cores a run measures."""
    t0 = time.monotonic()
    while loadavg() >= args.quiet and time.monotonic() - t0 < args.quiet_wait:
        time.sleep(5)
    return round(time.monotonic() - t0)


def batch_cmd(scenes: Path, out: Path, args, extra: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "hemgs.batch", str(scenes), "-o", str(out), "--lambda", *map(str, args.lambdas)]
    if args.iters:
        cmd += ["--iters", str(args.iters)]
    return cmd + extra


def results(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "results.jsonl").read_text().splitlines() if ln.strip()]


def run_batch(label: str, scenes: Path, args, extra: list[str]) -> dict:
    out = WORK / label
    if out.exists():
        import shutil

        shutil.rmtree(out)
    waited = wait_for_quiet(args)
    load = loadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(batch_cmd(scenes, out, args, extra), env=ENV, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    lines = results(out) if (out / "results.jsonl").exists() else []
    ok = [ln for ln in lines if ln["status"] == "ok"]
    rec = {"run": label, "returncode": proc.returncode, "jobs": len(lines), "ok": len(ok), "wall_s": round(wall, 1),
           "jobs_per_min": round(len(ok) / wall * 60, 2), "job_s_sum": round(sum(ln["seconds"] for ln in ok), 1),
           "job_cpu_s_sum": round(sum(ln.get("cpu_seconds") or 0 for ln in ok), 1),
           "fits": sum(bool(ln.get("fitted")) for ln in ok), "processes": len({(ln["host"], ln["pid"]) for ln in ok}),
           "loadavg_before": load, "loadavg_after": loadavg(), "waited_for_quiet_s": waited}
    if proc.returncode != 0:
        rec["error"] = (proc.stderr.strip().splitlines() or ["?"])[-1]
    print(f"{label}: {rec['ok']}/{rec['jobs']} jobs ok in {wall:.1f} s = {rec['jobs_per_min']} jobs/min "
          f"({rec['fits']} fits, {rec['processes']} processes, load {load:.1f} -> {rec['loadavg_after']:.1f})",
          flush=True)
    return rec


def start_node(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([str(RAY), "start", "--block", "--disable-usage-stats", *args], env=ENV,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_cpus(address: str, cpus: int, timeout: float = 120) -> None:
    """Until the cluster at `address` has `cpus` CPUs (a node joins in seconds)."""
    probe = (f"import ray, time\nray.init(address={address!r}, log_to_driver=False)\n"
             f"t = time.time()\nwhile ray.cluster_resources().get('CPU', 0) < {cpus} and time.time() - t < {timeout}:\n"
             "    time.sleep(0.5)\nprint(ray.cluster_resources().get('CPU', 0))\n")
    got = subprocess.run([sys.executable, "-c", probe], env=ENV, capture_output=True, text=True, timeout=timeout + 60)
    if got.returncode != 0 or float(got.stdout.split()[-1]) < cpus:
        raise SystemExit(f"the Ray cluster at {address} did not reach {cpus} CPUs: {got.stderr[-500:]}")


def stop_nodes(nodes: list[subprocess.Popen]) -> None:
    for p in reversed(nodes):
        os.killpg(p.pid, signal.SIGTERM)  # `ray start --block` stops the node's processes on SIGTERM
    for p in reversed(nodes):
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def forget_cluster(port: int) -> None:
    """`ray start --head` notes its address in /tmp/ray/ray_current_cluster, where a later
    ray.init() looks for a cluster to join; `ray stop` removes it, and so does this, for ours."""
    note = Path("/tmp/ray/ray_current_cluster")
    if note.is_file() and note.read_text().strip().endswith(f":{port}"):
        note.unlink()


def ray_runs(scenes: Path, args) -> list[dict]:
    address = f"127.0.0.1:{args.port}"
    nodes = [start_node(["--head", f"--port={args.port}", "--num-cpus=1", "--include-dashboard=false"],
                        WORK / "ray-head.log")]
    try:
        wait_for_cpus(address, 1)
        recs = [run_batch("ray-1", scenes, args, ["--ray", address])]
        nodes.append(start_node([f"--address={address}", "--num-cpus=1", '--resources={"second_node": 1}'],
                                WORK / "ray-node2.log"))
        wait_for_cpus(address, 2)
        recs.append(run_batch("ray-2", scenes, args, ["--ray", address]))
        return recs
    finally:
        stop_nodes(nodes)
        forget_cluster(args.port)


def kill_run(scenes: Path, args, n_jobs: int) -> dict:
    out = WORK / "kill"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    cmd = batch_cmd(scenes, out, args, ["--workers", "2"])
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    path = out / "results.jsonl"
    try:
        while not (path.exists() and path.read_text().count("\n") >= n_jobs // 2):
            if proc.poll() is not None:
                raise SystemExit("kill run: the batch ended before half its jobs")
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = results(out)
    left = sorted(p.name for p in out.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))
    partial = [p.name for p in out.glob("*.hgs") if not whole(p)]
    t0 = time.perf_counter()
    again = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = results(out)[len(before):]
    rec = {"run": "kill", "lines_before_kill": len(before), "partial_hgs": partial,
           "temp_files_left_by_kill": len(left), "rerun_jobs": len(after), "rerun_wall_s": round(wall, 1),
           "rerun_redid": sorted({ln["key"] for ln in after} & {ln["key"] for ln in before}),
           "rerun_returncode": again.returncode, "all_ok": all(ln["status"] == "ok" for ln in before + after)}
    print(f"kill: {len(before)} lines when killed, the re-run ran {len(after)} jobs in {wall:.1f} s "
          f"(redid {len(rec['rerun_redid'])}), {len(left)} temporary files left by the kill", flush=True)
    return rec


def whole(path: Path) -> bool:
    from hemgs.container import read_hgs

    try:
        read_hgs(path)
        return True
    except Exception:  # noqa: BLE001 - any failure to read is a partial file
        return False


def same_bytes(labels: list[str]) -> dict:
    """Whether every run wrote identical bytes for every job (against the first run)."""
    ref = WORK / labels[0]
    names = sorted(p.name for p in ref.glob("*.hgs"))
    differ = [f"{lab}/{n}" for lab in labels[1:] for n in names
              if not (WORK / lab / n).is_file() or (WORK / lab / n).read_bytes() != (ref / n).read_bytes()]
    return {"runs": labels, "files": len(names), "differ": differ}


def write_doc(data: dict) -> None:
    recs = {r["run"]: r for r in data["runs"]}
    rows = [f"| {r['run']} | {r['ok']}/{r['jobs']} | {r['wall_s']:.0f} | **{r['jobs_per_min']:.2f}** | {r['fits']} | "
            f"{r['processes']} | {r['job_s_sum']:.0f} | {r.get('job_cpu_s_sum') or '-'} | "
            f"{r['loadavg_before']:.1f} / {r['loadavg_after']:.1f} |"
            for r in data["runs"] if r["run"] != "kill"]
    speed = []
    for engine in ("local", "ray"):
        one, two = recs.get(f"{engine}-1"), recs.get(f"{engine}-2")
        if one and two:
            speed.append(f"- {engine}: 2 workers give **{two['jobs_per_min'] / one['jobs_per_min']:.2f}×** the jobs/min "
                         f"of 1 (target ≥ 1.5×)")
    sb = data["same_bytes"]
    kill = recs.get("kill")
    text = [
        "# Batch throughput (`hemgs batch`)", "",
        f"Measured by `benchmarks/bench_batch.py` on {data['date']}: {data['machine']}.", "",
        f"{data['scenes']} demo-sized scenes (variants of `data/demo/playbot_lod3.ply`, ~30,000 Gaussians each) × "
        f"λ {', '.join(map(str, data['lambdas']))} = {data['jobs']} direct-mode jobs (default fit, 16 evaluation views "
        "of 256 px each). One thread per job, `OMP_WAIT_POLICY=PASSIVE`. Wall time is the whole command, start-up "
        "and worker start included. Ray: `ray start --head --num-cpus 1` (ray-1), then a second "
        "`ray start --address … --num-cpus 1` with its own resources (ray-2), both on this machine.", "",
        "| run | jobs ok | wall s | jobs/min | fits | processes | Σ job s | Σ job CPU s | load avg before / after |",
        "|---|---|---|---|---|---|---|---|---|", *rows, "",
        *speed, "",
        f"- Identical bytes: every run wrote the same bytes for each of the {sb['files']} files "
        f"({', '.join(sb['runs'])})" if not sb["differ"] else f"- Bytes differ: {', '.join(sb['differ'])}",
    ]
    if kill:
        text.append(f"- Killed (SIGKILL, driver and workers) with {kill['lines_before_kill']} of {data['jobs']} result "
                    f"lines written, then run again: the re-run ran {kill['rerun_jobs']} jobs "
                    f"({len(kill['rerun_redid'])} of them again) in {kill['rerun_wall_s']:.0f} s; the kill left "
                    f"{kill['temp_files_left_by_kill']} hidden temporary files and "
                    f"{len(kill['partial_hgs'])} partial .hgs.")
    text += ["", f"Fits: a scene's λ run as one unit on one worker, so each scene is fitted once ({data['scenes']} "
             f"fits for {data['jobs']} jobs); the rest of a job is coding at its λ, decoding the file and measuring it. "
             "Load average: this machine is shared; a load above the worker count means other work took "
             "CPU time during the run. Σ job s is the jobs' wall time summed, Σ job CPU s their processes' CPU "
             "time (`cpu_seconds` in results.jsonl; a dash where the runs predate that field): where 2 workers' "
             "CPU sum matches 1 worker's but their wall sum is larger, the jobs did the same work and waited for "
             "a core, i.e. other processes held the cores, not the batch.", ""]
    text += [f"Notes: {data['notes']}", ""] if data.get("notes") else []
    DOC.write_text("\n".join(text))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenes", type=int, default=8)
    p.add_argument("--lambdas", type=float, nargs="+", default=[1.0, 2.0])
    p.add_argument("--iters", type=int, default=None, help="direct mode's fit iterations (default: the fit's)")
    p.add_argument("--runs", nargs="+", default=["local", "ray", "kill"], choices=["local", "ray", "kill"])
    p.add_argument("--port", type=int, default=6397, help="the Ray head's port")
    p.add_argument("--quiet", type=float, default=0.8, help="start a run once the load average is below this")
    p.add_argument("--quiet-wait", type=float, default=240, help="... or after this many seconds")
    p.add_argument("--report", action="store_true", help="only rewrite the doc from the JSON")
    args = p.parse_args()
    if args.report:
        write_doc(json.loads(JSON.read_text()))
        print(f"wrote {DOC}")
        return 0
    scenes = make_scenes(args.scenes)
    n_jobs = args.scenes * len(args.lambdas)
    runs = []
    if "local" in args.runs:
        runs += [run_batch(f"local-{w}", scenes, args, ["--workers", str(w)]) for w in (1, 2)]
    if "ray" in args.runs:
        runs += ray_runs(scenes, args)
    if "kill" in args.runs:
        runs.append(kill_run(scenes, args, n_jobs))
    # Runs of an earlier invocation with the same jobs are kept unless measured again (--runs local).
    setup = {"scenes": args.scenes, "lambdas": args.lambdas, "jobs": n_jobs, "iters": args.iters}
    old = json.loads(JSON.read_text()) if JSON.is_file() else {}
    if all(old.get(k) == v for k, v in setup.items()):
        mine = {r["run"] for r in runs}
        runs = [r for r in old.get("runs", []) if r["run"] not in mine] + runs
        runs.sort(key=lambda r: ["local-1", "local-2", "ray-1", "ray-2", "kill"].index(r["run"]))
    labels = [r["run"] for r in runs if r["run"] != "kill" and (WORK / r["run"]).is_dir()]
    labels += ["kill"] if any(r["run"] == "kill" for r in runs) and (WORK / "kill").is_dir() else []
    data = {"date": time.strftime("%Y-%m-%d"), "machine": f"{cpu_name()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}", **setup, "runs": runs, "same_bytes": same_bytes(labels),
            "notes": old.get("notes")}  # written by hand, kept across runs: review them after a new run
    print(json.dumps(data["same_bytes"]))
    JSON.write_text(json.dumps(data, indent=1) + "\n")
    write_doc(data)
    print(f"wrote {DOC} and {JSON}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
