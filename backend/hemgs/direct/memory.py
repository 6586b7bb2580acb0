"""Freed memory back to the system between direct mode's phases (issue #24 item 2).

glibc's malloc keeps memory that the process has freed inside its heaps: the fit's thousands of
small torch tensors, the importance renders' buffers and the stages' arrays below its mmap
threshold leave whole free pages it does not return by itself. Measured on the 500k scene after
the fit: RSS 2.20 GB, 0.78 GB after malloc_trim(0), so 1.4 GB (2.9 kB per Gaussian) was free
memory counted against every later phase's peak. `release` hands such pages back (malloc_trim
frees whole free pages in every arena); elsewhere (no glibc) it does nothing. It changes no
result, only how much memory the process holds.
"""

from __future__ import annotations

import ctypes
import sys


def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None).malloc_trim  # the process's own C library; musl has none
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


_TRIM = _malloc_trim()


def release() -> None:
    """Return the heap's free pages to the system (glibc), between phases."""
    if _TRIM is not None:
        _TRIM(0)
