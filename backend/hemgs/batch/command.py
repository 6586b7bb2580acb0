"""`hemgs batch`: many scenes at many λ, one job each, on this machine's cores or a Ray cluster,
resumable (docs/batch.md). `add_parser` registers the subcommand, `run` is its body; bad input
raises InputError before any work (the CLI prints its line and exits with 2)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ..errors import InputError, one_line
from .catalogue import SCENE_EXTENSIONS, make_jobs, read_manifest, scene_files
from .results import RESULTS, ResultsLog, outdir_lock, read_results, split_done


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `batch` on an argparse subparsers object; its `func` default is `run`."""
    s = subparsers.add_parser(
        "batch", help="compress many scenes at many λ (a process pool or a Ray cluster), resumable",
        description="Code every scene at every λ, one job each, into OUTDIR/<stem>.<mode>.<λ>.hgs, with one "
                    "line per job in OUTDIR/results.jsonl. Re-run the same command to finish a killed batch: "
                    "jobs already in results.jsonl (with their .hgs) are skipped.")
    s.add_argument("sources", nargs="*", metavar="SOURCE",
                   help=f"scene files or folders (their {', '.join('*' + e for e in SCENE_EXTENSIONS)})")
    s.add_argument("--manifest", metavar="FILE",
                   help="a .csv or .json list of scenes with their own mode, λ and options (docs/batch.md)")
    s.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="folder of the .hgs files and results")
    s.add_argument("--mode", choices=["anchor", "direct"], default=None,
                   help="coding mode (default: direct for a 3DGS scene, anchor for a Scaffold-GS PLY)")
    s.add_argument("--lambda", dest="lambdas", type=float, nargs="+", metavar="λ",
                   help="λ values, one job each (default: the mode's default λ)")
    s.add_argument("--iters", type=int, help="direct mode: fitting iterations (default: the fit's)")
    s.add_argument("--views", type=int, help="evaluation views measured per file (default 16; 0: none)")
    s.add_argument("--view-size", type=int, help="evaluation view size in pixels (default 256)")
    s.add_argument("--preset", help="anchor mode: training budget, quick or standard (default quick)")
    s.add_argument("--steps", type=int, help="anchor mode: render-space training steps")
    s.add_argument("--warm-steps", type=int, help="anchor mode: warm-start steps")
    s.add_argument("--keep-models", action="store_true", default=None,
                   help="anchor mode: keep each trained model in OUTDIR (<stem>.anchor.model.safetensors) and "
                        "reuse it in later runs that it serves")
    s.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"],
                   help="where each job computes (default auto)")
    s.add_argument("--workers", type=int, default=None,
                   help=f"local engine: processes, one job and one thread each (default: the cores, here "
                        f"{default_workers()}); --ray local: the instance's CPUs")
    s.add_argument("--ray", metavar="ADDRESS",
                   help="run the jobs as Ray tasks: auto (this machine's cluster), a head's address, or local")
    s.add_argument("--retry-failed", action="store_true", help="run again the jobs whose last result failed")
    s.add_argument("--debug", action="store_true", help="show tracebacks")
    s.set_defaults(func=run)
    return s


def _outdir(path: str) -> Path:
    """OUTDIR, made, and refused now when it takes no file."""
    from ..service import check_outputs

    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"-o {path}: cannot make the folder ({one_line(exc)})"[:300]) from None
    check_outputs(str(out / RESULTS))
    return out


def _jobs(args) -> tuple[Path, list[dict]]:
    if bool(args.sources) == bool(args.manifest):
        raise InputError("batch: give SOURCE files/folders or --manifest FILE (one of them)")
    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers must be at least 1, got {args.workers}")
    entries = read_manifest(args.manifest) if args.manifest else [{"source": str(p)} for p in scene_files(args.sources)]
    defaults = {"mode": args.mode, "lambdas": args.lambdas, "iters": args.iters, "views": args.views,
                "view_size": args.view_size, "preset": args.preset, "steps": args.steps,
                "warm_steps": args.warm_steps, "keep_models": args.keep_models, "device": args.device}
    jobs = make_jobs(entries, args.output, defaults)  # every check before the folder is made
    return _outdir(args.output), jobs


def _progress_line(i: int, n: int, line: dict) -> str:
    if line["status"] != "ok":
        return f"[{i}/{n}] FAILED {line['key']}: {line['error']}"
    psnr = f"{line['psnr']:.2f} dB" if line.get("psnr") is not None else "-"
    ratio = f"{line['ratio']:.1f}x" if line.get("ratio") else "-"
    return (f"[{i}/{n}] ok {line['key']}: {line['bytes']:,} B, {ratio}, {psnr}, {line.get('seconds', 0):.1f} s "
            f"({line.get('host')}:{line.get('pid')})")


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def summary(lines: list[dict]) -> str:
    """The table printed at the end: one row per job of the batch, in the batch's order."""
    head = ("job", "mode", "λ", "bytes", "ratio", "PSNR", "worst", "SSIM", "s", "status")
    rows = [(ln["key"], ln["mode"], f"{ln['lambda']:g}", _num(ln.get("bytes"), ","), _num(ln.get("ratio"), ".1f"),
             _num(ln.get("psnr"), ".2f"), _num(ln.get("worst_psnr"), ".2f"), _num(ln.get("ssim"), ".4f"),
             _num(ln.get("seconds"), ".1f"), ln["status"] if ln["status"] == "ok" else f"failed: {ln['error']}")
            for ln in lines]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head) - 1)]
    fmt = "  ".join(f"{{:{'<' if i < 2 else '>'}{w}}}" for i, w in enumerate(widths)) + "  {}"
    return "\n".join(fmt.format(*r) for r in [head, *rows])


def run(args) -> int:
    """The batch: 0 when every job succeeded, 1 when some failed (each with its line)."""
    outdir, jobs = _jobs(args)
    with outdir_lock(outdir):
        return _run(args, outdir, jobs)


def _run(args, outdir: Path, jobs: list[dict]) -> int:
    from .engines import run_local, run_ray

    results_path = outdir / RESULTS
    todo, skipped = split_done(jobs, read_results(results_path), args.retry_failed)
    workers = args.workers or default_workers()
    engine = f"Ray ({args.ray})" if args.ray else f"{min(workers, max(len(todo), 1))} local worker(s)"
    print(f"hemgs batch: {len(jobs)} jobs, {len(skipped)} done already, {len(todo)} to run on {engine}",
          file=sys.stderr)
    log = ResultsLog(results_path)
    t0 = time.perf_counter()
    lines = run_ray(todo, args.ray, args.workers) if args.ray else run_local(todo, workers)
    done = {ln["key"]: ln for ln in skipped}
    for i, line in enumerate(lines, 1):
        log.append(line)
        done[line["key"]] = line
        print(_progress_line(i, len(todo), line), file=sys.stderr, flush=True)
    wall = time.perf_counter() - t0
    ordered = [done[j["key"]] for j in jobs]
    failed = sum(ln["status"] != "ok" for ln in ordered)
    print(summary(ordered))
    rate = f" ({len(todo) / wall * 60:.1f} jobs/min)" if todo and wall > 0 else ""
    print(f"{len(jobs) - failed} of {len(jobs)} jobs ok, {failed} failed; {len(todo)} ran in {wall:.1f} s{rate}; "
          f"results in {results_path}")
    return 1 if failed else 0
