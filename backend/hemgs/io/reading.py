"""Opening a file to read, with the one-line errors every reader gives for a missing file or a
folder (the writers' side is `atomic.py`)."""

from __future__ import annotations

import os

from ..errors import InputError


def read_bytes(path: str | os.PathLike, kind: str, limit: int | None = None) -> bytes:
    """The bytes of the file at `path` (its first `limit` bytes when given). `kind` says what the
    file should have been, for the folder message: "a PLY file", "a .hgs file"..."""
    try:
        with open(path, "rb") as fh:
            return fh.read() if limit is None else fh.read(limit)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, not {kind}") from None
