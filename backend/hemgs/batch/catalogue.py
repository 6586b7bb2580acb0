"""Sources or a manifest -> the jobs of a batch, each (scene, λ) one job, every one checked
before any work: a missing source, a bad λ or option, a malformed manifest or two jobs writing
one file is an InputError with one line.

A job is a plain dict (pickles for a process pool, travels to Ray, is written to results.jsonl):
key (the output's file name, which identifies the job), name, source, mode, lambda, output, model
(anchor mode with keep_models: where its trained model is kept, else None) and options (the
settings that change the output; a result line is reused only for equal options).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from ..errors import FormatError, InputError, one_line
from ..modes import (ANCHOR_LAMBDA_DEFAULT, ANCHOR_SWITCH_DEFAULTS, DIRECT_LAMBDA_DEFAULT, DIRECT_SWITCH_DEFAULTS,
                     anchor_only, check_direct_lambda, check_mode, mode_for)

SCENE_EXTENSIONS = (".ply", ".spz")
DEVICES = ("auto", "cpu", "cuda")
# Options by the mode they apply to, with their type; "views"/"view_size": the evaluation views,
# "train_views": anchor mode's training views. keep_models: keep (and reuse) anchor models.
COMMON = {"views": int, "view_size": int, "device": str}
SWITCHES = {name: bool for name in DIRECT_SWITCH_DEFAULTS}
DIRECT = {"iters": int, **SWITCHES}
ANCHOR = {"preset": str, "steps": int, "warm_steps": int, "width": int, "train_views": int, "codec": str,
          "keep_models": bool, **SWITCHES}
# Unset options: None (the fit's own), else these. Anchor mode has every HEMGS part on (cli's too).
DEFAULTS = {"direct": {"views": 16, "view_size": 256, "device": "auto", **DIRECT_SWITCH_DEFAULTS},
            "anchor": {"views": 16, "view_size": 256, "device": "auto", "preset": "quick", "codec": "hemgs",
                       "keep_models": False, **ANCHOR_SWITCH_DEFAULTS}}
ENTRY_KEYS = {"source", "name", "mode", "lambda", "lambdas"}


def lambda_tag(lam: float) -> str:
    """λ in a file name, 3 significant digits: 1 -> 'lam1e+00', 0.25 -> 'lam2.5e-01'."""
    mantissa, exponent = f"{lam:.2e}".split("e")
    return f"lam{mantissa.rstrip('0').rstrip('.')}e{exponent}"


def output_name(name: str, mode: str, lam: float) -> str:
    return f"{name}.{mode}.{lambda_tag(lam)}.hgs"


def model_name(name: str, lam: float | None) -> str:
    """A kept anchor model's file name: one per scene (variable rate, lam None) or per (scene, λ)."""
    return f"{name}.anchor.{lambda_tag(lam) + '.' if lam is not None else ''}model.safetensors"


def scene_files(paths: list[str]) -> list[Path]:
    """The scene files of SOURCES: files as given, folders' *.ply and *.spz (not recursive)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in SCENE_EXTENSIONS)
            if not found:
                raise InputError(f"{p}: folder holds no .ply or .spz file")
            out += found
        elif not p.exists():
            raise InputError(f"{p}: no such file or folder")
        elif p.suffix.lower() not in SCENE_EXTENSIONS:
            raise InputError(f"{p}: batch codes .ply and .spz scenes")
        else:
            out.append(p)
    return out


def read_manifest(path: str) -> list[dict]:
    """A manifest's entries: JSON (a list of entries, or {"defaults": {...}, "scenes": [...]}) or
    CSV (a header row; empty cells mean the default; λ lists separated by spaces or ';').
    Relative sources are relative to the manifest's folder."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"{p}: no such manifest") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: cannot read the manifest ({exc.__class__.__name__})") from None
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FormatError(f"{p}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
        defaults = {}
        if isinstance(data, dict):
            defaults, data = data.get("defaults", {}), data.get("scenes")
            if not isinstance(defaults, dict):
                raise FormatError(f"{p}: 'defaults' must be an object")
        if not isinstance(data, list) or not all(isinstance(e, dict) for e in data):
            raise FormatError(f"{p}: expected a list of scene objects (or {{\"scenes\": [...]}})")
        # Manifest defaults act as the command line's do: an option applies where its mode does.
        entries = [{**e, "_defaults": defaults} for e in data]
    elif p.suffix.lower() == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        if rows and None in rows[0]:
            raise FormatError(f"{p}: a row has more cells than the header")
        entries = [{k.strip(): v.strip() for k, v in row.items() if k and v is not None and v.strip()} for row in rows]
    else:
        raise InputError(f"{p}: a manifest is a .json or .csv file")
    if not entries:
        raise InputError(f"{p}: the manifest lists no scene")
    for i, entry in enumerate(entries, 1):
        if "source" not in entry:
            raise FormatError(f"{p}: scene {i} has no 'source'")
        entry["source"] = str(p.parent / str(entry["source"]))  # an absolute source stays as it is
        entry["_where"] = f"{p}: scene {i}"
    return entries


def _value(kind: type, value, where: str, key: str):
    """A manifest's value as `kind` (a CSV gives strings)."""
    if kind is bool and isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    if kind is int and isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise InputError(f"{where}: '{key}' must be {kind.__name__}, got {value!r}"[:200])


def _lambdas(value, where: str) -> list[float]:
    items = value.replace(";", " ").split() if isinstance(value, str) else value
    items = items if isinstance(items, list) else [items]
    try:
        lams = [float(v) for v in items if not isinstance(v, bool)]
    except (TypeError, ValueError):
        raise InputError(f"{where}: λ must be numbers, got {value!r}"[:200]) from None
    if not lams or len(lams) != len(items) or not all(math.isfinite(v) and v > 0 for v in lams):
        raise InputError(f"{where}: λ must be positive numbers, got {value!r}"[:200])
    return lams


def _check_options(mode: str, opts: dict, lams: list[float], where: str) -> None:
    from .. import service

    if opts["device"] not in DEVICES and not opts["device"].startswith("cuda:"):
        raise InputError(f"{where}: unknown device {opts['device']!r}; use one of {', '.join(DEVICES)}")
    if opts["views"] < 0 or opts["view_size"] < 16:
        raise InputError(f"{where}: views must be >= 0 and view_size >= 16")
    if mode == "direct":
        service.check_iters(opts.get("iters"), f"{where}: iters")
        for lam in lams:
            try:
                check_direct_lambda(lam)
            except InputError as exc:
                raise InputError(f"{where}: {exc}") from None
        return
    if opts["preset"] not in service.TRAIN_PRESETS:
        raise InputError(f"{where}: unknown preset {opts['preset']!r}; use one of {', '.join(service.TRAIN_PRESETS)}")
    from ..pipeline import check_lambda, recorded_lambda

    for lam in lams:
        try:
            cfg = anchor_fit_config(opts, lam)  # checks the training budget and the λ range
            check_lambda(recorded_lambda(cfg), lam, cfg.lambda_range)  # one model serves every λ
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from None


def anchor_fit_config(opts: dict, lam: float):
    """Anchor mode's FitConfig: the preset's budget, steps/warm_steps when given, coding at λ."""
    from .. import service

    fields = {k: opts[k] for k in ("steps", "warm_steps", "width") if opts.get(k) is not None}
    if opts.get("train_views") is not None:
        fields["views"] = opts["train_views"]
    switches = {k: opts[k] for k in SWITCHES}
    return service.fit_config(opts["preset"], lam=lam, codec=opts["codec"], **switches, **fields)


def make_jobs(entries: list[dict], outdir: str | Path | None, defaults: dict) -> list[dict]:
    """The jobs of `entries` ({"source", optional name/mode/lambda(s)/options}) written into
    `outdir` (None: beside each source); `defaults`: the command line's mode, lambdas and options
    (None: not given). A manifest's own settings win: its entry's, then its "defaults", then the
    command line's."""
    jobs: list[dict] = []
    seen: dict[str, str] = {}
    for raw in entries:
        where = raw.get("_where", raw["source"])
        entry = {k: v for k, v in raw.items() if not k.startswith("_")}
        shared = {k: v for k, v in raw.get("_defaults", {}).items() if k != "source"}
        for given in (entry, shared):
            unknown = set(given) - ENTRY_KEYS - set(COMMON) - set(DIRECT) - set(ANCHOR)
            if unknown:
                raise InputError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        fallback = {**{k: v for k, v in defaults.items() if v is not None}, **shared}
        if "lambda" in fallback:
            fallback["lambdas"] = fallback.pop("lambda")
        source = Path(entry["source"])
        if not source.is_file():
            raise InputError(f"{source}: no such file")
        try:
            anchor_input = anchor_only(source)
        except InputError:
            anchor_input = False  # unreadable: the job fails with the reader's message, alone
        mode = mode_for(check_mode(entry["mode"]) if "mode" in entry else fallback.get("mode"),
                        anchor_input=anchor_input)
        if mode == "direct" and anchor_input:
            raise InputError(f"{source} is a Scaffold-GS anchor PLY; direct mode codes a 3DGS PLY or SPZ")
        given = entry.get("lambdas", entry.get("lambda"))
        given = given if given is not None else fallback.get("lambdas")
        lams = _lambdas(given, where) if given is not None else [
            DIRECT_LAMBDA_DEFAULT if mode == "direct" else ANCHOR_LAMBDA_DEFAULT]
        kinds = {**COMMON, **(DIRECT if mode == "direct" else ANCHOR)}
        wrong = set(entry) & (set(DIRECT) | set(ANCHOR)) - set(kinds)
        if wrong:
            raise InputError(f"{where}: '{sorted(wrong)[0]}' does not apply to {mode} mode")
        opts = {k: DEFAULTS[mode].get(k) for k in kinds}
        opts.update({k: _value(kinds[k], v, where, k) for k, v in fallback.items() if k in kinds})
        opts.update({k: _value(kinds[k], v, where, k) for k, v in entry.items() if k in kinds})
        _check_options(mode, opts, lams, where)
        name = str(entry.get("name") or source.stem)
        if not name or "/" in name or name.startswith("."):
            raise InputError(f"{where}: bad name {name!r}"[:200])
        folder = (Path(outdir) if outdir is not None else source.parent).resolve()
        # a kept model: one per scene when variable-rate (which no λ changes), else one per λ
        keep = mode == "anchor" and opts["keep_models"]
        per_lambda = keep and not anchor_fit_config(opts, lams[0]).variable
        for lam in lams:
            key = output_name(name, mode, lam)
            output = str(folder / key)
            if output in seen:
                raise InputError(f"{source} and {seen[output]} would both write {key}; give one a 'name' "
                                 "(manifest) or use distinct λ"[:300])
            seen[output] = str(source)
            model = str(folder / model_name(name, lam if per_lambda else None)) if keep else None
            jobs.append({"key": key, "name": name, "source": str(source.resolve()), "mode": mode, "lambda": lam,
                         "output": output, "model": model, "options": opts})
    return jobs


def plan(sources: list[str], lambdas: list[float] | None, mode: str | None, outdir: str | None,
         options: dict) -> list[dict]:
    """The jobs of SOURCES (files or folders) as the add-on's batch asks for them (api.compress,
    through the worker): options of another mode are refused rather than ignored, every job is
    checked, then `outdir` (None: beside each source) is made and every output and kept model
    checked writable, before any work."""
    from ..service import check_outputs

    applies = {**COMMON, **(DIRECT if mode == "direct" else ANCHOR if mode == "anchor" else {**DIRECT, **ANCHOR})}
    wrong = sorted(set(options) - set(applies))
    if wrong:
        raise InputError(f"batch: {mode or 'this'} mode takes no option {wrong[0]!r}; it takes "
                         f"{', '.join(sorted(applies))}"[:300])
    jobs = make_jobs([{"source": str(p)} for p in scene_files(sources)], outdir,
                     {"mode": mode, "lambdas": lambdas, **options})
    if outdir is not None:
        try:
            Path(outdir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"batch: cannot make {outdir} ({one_line(exc)})"[:300]) from None
    check_outputs(*(j["output"] for j in jobs), *{j["model"] for j in jobs if j["model"]})
    return jobs
