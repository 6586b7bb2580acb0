"""What anchor-mode training needs in memory, so that a scene too large for the machine is refused
in one line before minutes of teacher renders (issue #24 item 3), not killed by the system later.

Training holds every anchor's features, offsets and optimizer state, and the entropy refinement
every coded symbol, so its peak grows with the scene. Peak RSS of `hemgs train` on the CPU (2
threads, SH 3 scenes of benchmarks/make_large_scene.py, 3 render steps; the refinement's start is
the peak), 2026-12-07: 125k Gaussians 2.27 GB, 500k 5.42 GB, 1M 8.95 GB. The estimate below lies
above each of them.
"""

from __future__ import annotations

import os

from ..errors import InputError

BASE_BYTES = 1.5e9
PER_GAUSSIAN_BYTES = 8.0e3


def training_bytes(n_gaussians: int) -> float:
    """Estimated peak memory of training an anchor model from a scene of `n_gaussians`."""
    return BASE_BYTES + PER_GAUSSIAN_BYTES * n_gaussians


def machine_bytes() -> int | None:
    """This machine's physical memory (None where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_training_memory(n_gaussians: int) -> None:
    """InputError when training on `n_gaussians` would need more memory than the machine has."""
    need, have = training_bytes(n_gaussians), machine_bytes()
    if have is not None and need > have:
        raise InputError(f"anchor mode on {n_gaussians:,} Gaussians needs about {need / 1e9:.0f} GB of memory to "
                         f"train, and this machine has {have / 1e9:.0f} GB: code it with --mode direct (the "
                         "default for a 3DGS scene), or train on a machine with more memory")
