"""Choosing the torch device and thread count for the backend."""

from __future__ import annotations

import os

import torch

from .errors import InputError

DEVICE_NAMES = ("auto", "cpu", "cuda")


def resolve_device(name: "str | torch.device" = "auto") -> torch.device:
    """Map "auto" | "cpu" | "cuda" (or "cuda:N") to a torch.device; "auto" prefers CUDA.
    A torch.device passes through the same checks."""
    name = str(name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise InputError(f"device {name!r} was asked for, but this PyTorch has no CUDA GPU available; "
                             "use --device cpu or auto")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"device {name!r} does not exist: {torch.cuda.device_count()} CUDA device(s) found")
        return dev
    raise InputError(f"unknown device {name!r}: expected one of auto, cpu, cuda")


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op thread count: `n` when given, else HEMGS_THREADS when set.

    Returns the count in use. Bad values raise InputError.
    """
    source = "thread count"
    if n is None:
        value = os.environ.get("HEMGS_THREADS", "").strip()
        if not value:
            return torch.get_num_threads()
        source = "HEMGS_THREADS"
        try:
            n = int(value)
        except ValueError:
            raise InputError(f"HEMGS_THREADS={value!r} is not a whole number") from None
    if int(n) < 1:
        raise InputError(f"{source} {n!r} must be at least 1")
    torch.set_num_threads(int(n))
    return torch.get_num_threads()
