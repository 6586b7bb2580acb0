"""Write-then-rename, so no reader ever sees a half-written output file.

Pure standard library: used by every writer here and by the .hgs container writer.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path` atomically.

    The temporary file lives in the same folder (so `os.replace` is an atomic rename on the
    same file system) under a unique name. If the body raises, the temporary file is removed
    and `path` is left exactly as it was (absent, or the previous version).

        with atomic_write("out.ply") as tmp:
            write_everything_to(tmp)
    """
    final = Path(path)
    folder = final.parent if str(final.parent) else Path(".")
    # O_EXCL with a random name: no other writer (thread or process) can get the same file, and
    # mode 0o666 lets the umask give the result the permissions a plain open() would.
    while True:
        tmp = folder / f".{final.name}.{secrets.token_hex(6)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
        except OSError as exc:
            # Name the file the user asked for, not our hidden temporary name.
            raise type(exc)(exc.errno, exc.strerror, str(final)) from None
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through `atomic_write` (fsync'd before the rename)."""
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def check_output_path(path: str | os.PathLike) -> Path:
    """Refuse, before any long work, an output `path` that cannot be written: its folder is
    missing or is no folder, the path is a folder, or the folder refuses a new file. Raises
    InputError with one line naming the user's path; returns it as a Path.

    The probe really creates (and removes) a file: permission bits say nothing for root, and a
    read-only or virtual file system only shows itself on a write."""
    from ..errors import InputError  # stdlib-only module otherwise; errors is pure Python

    final = Path(path)
    folder = final.parent if str(final.parent) else Path(".")
    if final.is_dir():
        raise InputError(f"cannot write {final}: it is a folder; give a file name")
    if not folder.exists():
        raise InputError(f"cannot write {final}: the folder {folder} does not exist")
    if not folder.is_dir():
        raise InputError(f"cannot write {final}: {folder} is not a folder")
    probe = folder / f".{final.name}.{secrets.token_hex(6)}.probe"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as exc:
        raise InputError(f"cannot write {final}: {exc.strerror}") from None
    with contextlib.suppress(OSError):
        probe.unlink()
    return final
