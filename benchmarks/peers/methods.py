"""The compressors a user would pick instead of HEMGS, each as encode + decode back to a scene.

Every method takes the sanitized source scene and its float32 PLY (`src`), writes into `work`,
and returns one result per operating point: the compressed size, the decoded GaussianScene and
the encode/decode wall times. A point that cannot run raises; the driver records the error.
"""

from __future__ import annotations

import filecmp
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hemgs.io import load_scene, save_scene
from hemgs.scene import GaussianScene, sanitize

HERE = Path(__file__).resolve().parent
SPLAT_TRANSFORM = HERE / ".node" / "node_modules" / ".bin" / "splat-transform"


@dataclass
class Encoded:
    method: str
    point: str                   # the operating point within the method, e.g. "SH 2" or "SH 0"
    bytes: int
    encode_s: float
    decode_s: float
    decoded: GaussianScene | None = None   # None when lossless (byte-identical, nothing to render)
    lossless: bool = False
    note: str = ""
    files: list[str] = field(default_factory=list)


@dataclass
class Point:
    """One planned operating point: `run(scene, src, work)` returns its Encoded."""
    method: str
    point: str
    run: object


def _cmd(args: list) -> float:
    """Run a command, return its wall time; a failure raises with the tool's last error line."""
    t0 = time.perf_counter()
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        lines = [ln for ln in (p.stderr + p.stdout).splitlines() if ln.strip()]
        raise RuntimeError(f"{Path(str(args[0])).name} exited {p.returncode}: {lines[-1] if lines else '(no output)'}")
    return dt


def _load(path: Path) -> GaussianScene:
    scene, _ = sanitize(load_scene(path))
    return scene


def _sh_variants(scene: GaussianScene) -> list[int]:
    """Full SH, and SH dropped to degree 0 (the cheapest rate knob every format has)."""
    return [scene.sh_degree, 0] if scene.sh_degree > 0 else [0]


# ---- lossless floor ----------------------------------------------------------------------------

def xz(scene, src: Path, work: Path) -> Encoded:
    out, back = work / "xz" / "source.ply.xz", work / "xz" / "decoded.ply"
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(out, "wb") as f:
        subprocess.run(["xz", "-9e", "-T1", "-k", "-c", str(src)], stdout=f, check=True)
    enc = time.perf_counter() - t0
    t0 = time.perf_counter()
    with open(back, "wb") as f:
        subprocess.run(["xz", "-d", "-c", str(out)], stdout=f, check=True)
    dec = time.perf_counter() - t0
    if not filecmp.cmp(src, back, shallow=False):
        raise RuntimeError("xz round trip is not byte-identical")
    return Encoded("xz -9e (PLY)", "lossless", out.stat().st_size, enc, dec, None, lossless=True,
                   note="byte-identical round trip of the float32 PLY")


# ---- SPZ ---------------------------------------------------------------------------------------

def hemgs_spz(degree: int):
    def run(scene, src, work):
        out = work / f"hemgs_sh{degree}.spz"
        t0 = time.perf_counter()
        save_scene(scene.with_sh_degree(degree), out)
        enc = time.perf_counter() - t0
        t0 = time.perf_counter()
        dec_scene = _load(out)
        return Encoded("SPZ v4 (hemgs.io)", f"SH {degree}", out.stat().st_size, enc, time.perf_counter() - t0, dec_scene)
    return run


def gsply_spz(degree: int):
    def run(scene, src, work):
        import gsply

        s = scene.with_sh_degree(degree)
        data = gsply.GSData(means=s.means, scales=s.log_scales, quats=s.quats, opacities=s.opacity_logits,
                            sh0=s.sh[:, 0], shN=np.ascontiguousarray(s.sh[:, 1:]))
        out = work / f"gsply_sh{degree}.spz"
        t0 = time.perf_counter()
        gsply.write_spz(out, data, version=4)
        enc = time.perf_counter() - t0
        t0 = time.perf_counter()
        d = gsply.read_spz(out)
        n = len(d.means)
        # gsply leaves shN empty (or None) for SH degree 0
        shn = np.zeros((n, 0, 3), np.float32) if d.shN is None or np.size(d.shN) <= 1 else np.asarray(d.shN).reshape(n, -1, 3)
        dec_scene = GaussianScene(d.means, d.quats, d.scales, np.asarray(d.opacities).reshape(-1),
                                  np.concatenate([np.asarray(d.sh0).reshape(-1, 1, 3), shn], axis=1))
        dec = time.perf_counter() - t0
        return Encoded(f"SPZ v4 (gsply {gsply.__version__})", f"SH {degree}", out.stat().st_size, enc, dec,
                       sanitize(dec_scene)[0])
    return run


# ---- PlayCanvas splat-transform: SPZ, SOG, compressed PLY --------------------------------------

def splat_transform(ext: str, label: str, degree: int, full_degree: int):
    """Encode the source PLY to `ext` and decode it back to a plain PLY, both with splat-transform
    (so decode time includes node's start-up and writing the PLY)."""
    def run(scene, src, work):
        stem = f"st_sh{degree}"
        out, back = work / f"{stem}{ext}", work / f"{stem}_decoded.ply"
        drop = ["-H", str(degree)] if degree < full_degree else []
        extra = ["-g", "cpu", "--max-workers", "0"] if ext == ".sog" else []
        enc = _cmd([SPLAT_TRANSFORM, "-q", "-w", *extra, src, *drop, out])
        dec = _cmd([SPLAT_TRANSFORM, "-q", "-w", out, back])
        t0 = time.perf_counter()
        dec_scene = _load(back)
        dec += time.perf_counter() - t0
        return Encoded(label, f"SH {degree}", out.stat().st_size, enc, dec, dec_scene,
                       note="decode = splat-transform to PLY + read")
    return run


# ---- gsplat PngCompression --------------------------------------------------------------------

def gsplat_png(sort: bool, with_sh: bool):
    def run(scene, src, work):
        import shutil

        import torch
        from gsplat.compression import PngCompression

        out = work / f"gsplat_png_sort{int(sort)}_sh{int(with_sh)}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        t = lambda a: torch.as_tensor(np.ascontiguousarray(a))  # noqa: E731
        splats = {"means": t(scene.means), "scales": t(scene.log_scales), "quats": t(scene.quats),
                  "opacities": t(scene.opacity_logits), "sh0": t(scene.sh[:, :1])}
        if with_sh and scene.sh_degree > 0:
            splats["shN"] = t(scene.sh[:, 1:])
        t0 = time.perf_counter()
        PngCompression(use_sort=sort, verbose=False).compress(str(out), splats)
        enc = time.perf_counter() - t0
        t0 = time.perf_counter()
        d = PngCompression(use_sort=sort, verbose=False).decompress(str(out))
        sh = d["sh0"] if "shN" not in d else torch.cat([d["sh0"], d["shN"]], dim=1)
        dec_scene = GaussianScene(d["means"].numpy(), torch.nn.functional.normalize(d["quats"], dim=-1).numpy(),
                                  d["scales"].numpy(), d["opacities"].numpy().reshape(-1), sh.numpy())
        dec = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in out.iterdir())
        dropped = len(scene) - len(dec_scene)
        note = (f"{'sorted' if sort else 'unsorted'}, {'SH k-means' if with_sh else 'SH 0 only'}; "
                f"{dropped} Gaussians cropped to a square count")
        return Encoded("gsplat PngCompression", f"{'sorted' if sort else 'unsorted'}, SH {'all' if with_sh else 0}",
                       size, enc, dec, sanitize(dec_scene)[0], note=note)
    return run


def plan(scene: GaussianScene) -> list[Point]:
    """Every operating point to run on `scene`, cheapest first; SOG with SH (slow) last."""
    full = scene.sh_degree
    pts = [Point("xz -9e (PLY)", "lossless", xz)]
    for d in _sh_variants(scene):
        pts.append(Point("SPZ v4 (hemgs.io)", f"SH {d}", hemgs_spz(d)))
        pts.append(Point("SPZ v4 (gsply)", f"SH {d}", gsply_spz(d)))
        pts.append(Point("SPZ (splat-transform)", f"SH {d}", splat_transform(".spz", "SPZ (splat-transform)", d, full)))
        pts.append(Point("compressed PLY (splat-transform)", f"SH {d}",
                         splat_transform(".compressed.ply", "compressed PLY (splat-transform)", d, full)))
    pts.append(Point("gsplat PngCompression", "sorted, SH all", gsplat_png(True, True)))
    pts.append(Point("gsplat PngCompression", "unsorted, SH 0", gsplat_png(False, False)))
    for d in reversed(_sh_variants(scene)):
        pts.append(Point("SOG (splat-transform)", f"SH {d}", splat_transform(".sog", "SOG (splat-transform)", d, full)))
    return pts
