"""Which machines write the same bytes: the encoders' output under each of torch's CPU kernel
sets and thread counts, on this machine, and whether every file decodes the same everywhere.

Torch picks its CPU kernels by what the processor has (AVX-512, AVX2, or none: "default");
ATEN_CPU_CAPABILITY makes one machine run the kernels another would. Each configuration runs in a
fresh process: a direct-mode fit + encode of a 2,000-Gaussian patch of the demo scene, an
anchor-mode fit + encode (HEMGS, tiny budget) of a 1,500-Gaussian one, and the compression of one
model file trained once beforehand (train once, compress anywhere). It prints the SHA-256 of
each file and of what every configuration decodes from the first configuration's file, and writes
docs/benchmarks/encoder_determinism.md.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/encoder_determinism.py
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from machine import cpu_name

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [(cap, threads) for cap in ("avx512", "avx2", "default") for threads in (1, 2)]

_ENCODE = r"""
import hashlib, json, sys
import numpy as np
from hemgs.io import load_scene
from hemgs.scene import sanitize
from hemgs.container import pack_hgs
from hemgs.direct import DirectConfig, DirectFitConfig, fit_direct, encode as direct_encode
from hemgs.fit import FitConfig, fit
from hemgs.codec.hemgs_codec import encode as hemgs_encode
from hemgs.fit import scene_agnostic_prior
import torch

out = sys.argv[1]
scene, _ = sanitize(load_scene(sys.argv[2]))
centre = np.median(scene.means, axis=0)
near = np.argsort(((scene.means - centre) ** 2).sum(1))
res = {"capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}
f = fit_direct(scene.subset(np.sort(near[:2000])), DirectConfig(), DirectFitConfig(iters=60, rows=1024))
h, s, _ = direct_encode(f, lam=1.0)
data = pack_hgs(h, s)
open(out + ".direct.hgs", "wb").write(data)
res["direct"] = hashlib.sha256(data).hexdigest()
fitted = fit(scene.subset(np.sort(near[:1500])), cfg=FitConfig(width=32, steps=20, warm_steps=20, views=4))
h, s, _ = hemgs_encode(fitted.model, fitted.entropy, scene_agnostic_prior(), lam=2e-3)
data = pack_hgs(h, s)
open(out + ".anchor.hgs", "wb").write(data)
res["anchor"] = hashlib.sha256(data).hexdigest()
if len(sys.argv) > 3:  # compress only: one model file, trained once, coded here
    from hemgs.model_store import load_model
    model, entropy, _ = load_model(sys.argv[3])
    h, s, _ = hemgs_encode(model, entropy, scene_agnostic_prior(), lam=2e-3)
    res["compress"] = hashlib.sha256(pack_hgs(h, s)).hexdigest()
else:
    from hemgs.model_store import save_model
    save_model(out + ".model.safetensors", fitted.model, fitted.entropy, lam=2e-3)
print(json.dumps(res))
"""

_DECODE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from golden.make_golden import decoded_checksum
from hemgs.pipeline import decode_file
print(json.dumps({p: decoded_checksum(decode_file(p)) for p in sys.argv[2:]}))
"""


def _run(code: str, args: list[str], cap: str, threads: int) -> dict:
    env = {**os.environ, "ATEN_CPU_CAPABILITY": cap, "OMP_NUM_THREADS": str(threads),
           "HEMGS_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}
    p = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(p.stderr[-3000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    cpu = cpu_name()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ply = str(REPO / "data/demo/playbot_lod3.ply")
        _run(_ENCODE, [f"{tmp}/model", ply], *CONFIGS[0])  # the model every configuration compresses
        for cap, threads in CONFIGS:
            r = _run(_ENCODE, [f"{tmp}/{cap}{threads}", ply, f"{tmp}/model.model.safetensors"], cap, threads)
            r["asked"] = cap
            rows.append(r)
            print(f"{cap:>8} {threads} threads (torch: {r['capability']}): direct {r['direct'][:16]}  "
                  f"anchor {r['anchor'][:16]}  compress {r['compress'][:16]}", flush=True)
        first = [f"{tmp}/{CONFIGS[0][0]}{CONFIGS[0][1]}.{m}.hgs" for m in ("direct", "anchor")]
        decodes = [_run(_DECODE, [str(REPO / "tests"), *first], cap, threads) for cap, threads in CONFIGS]
    decode_same = all(d == decodes[0] for d in decodes)
    print(f"decoded values of the first configuration's files, under every configuration: "
          f"{'identical' if decode_same else 'DIFFERENT'}")
    lines = [
        "# Which machines write the same bytes",
        "",
        f"Measured by `benchmarks/encoder_determinism.py` on {cpu} (torch {_torch_version()}). Each row",
        "is a fresh process with torch's kernels forced to that CPU level (`ATEN_CPU_CAPABILITY`) and",
        "thread count; the hashes are SHA-256 prefixes of the written `.hgs` files.",
        "",
        "| kernels | threads | direct mode (fit + encode) | anchor mode (fit + encode) | anchor mode, one trained model compressed |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['capability']} | {r['threads']} | `{r['direct'][:16]}` | `{r['anchor'][:16]}` "
                     f"| `{r['compress'][:16]}` |")
    lines += ["", f"Decoding the first row's two files under every row's settings: "
              f"{'the same values, bit for bit' if decode_same else 'DIFFERENT values'}.", ""]
    out = REPO / "docs" / "benchmarks" / "encoder_determinism.md"
    out.write_text("\n".join(lines))
    print(f"wrote {out}")


def _torch_version() -> str:
    import torch

    return torch.__version__


if __name__ == "__main__":
    main()
