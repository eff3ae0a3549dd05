"""Writing files: every file circleci-ds writes goes through `write_atomic`.

Rules:
- The content goes to a temporary file in the target's directory, is flushed and fsynced, and then
  renamed over the target; the directory is fsynced after. A reader sees the old file or the new
  one, never a part; a failure (full disk, missing directory, no permission) leaves the old file
  as it was and removes the temporary one.
- Only a regular file (or a new name) is a target: a directory, a device such as /dev/full or a
  FIFO is refused, as renaming over it would replace the device rather than write to it. A
  symbolic link is followed, and the file it points to is replaced.
- A replaced file keeps its permission bits; a new one gets the usual 0o666 less the umask.
- Failures raise OutputError with one line naming the path.
- An output never replaces one of the command's inputs (`check_target`): its database, the
  database's -wal, -shm and -journal files, its fixture or identities file.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path


class OutputError(Exception):
    """A file could not be written; the message is for the user as is."""


def write_atomic(path: Path, data: str | bytes, *, encoding: str = "utf-8") -> None:
    """Replace `path` with `data` all at once, or leave it untouched and raise OutputError."""
    payload = data.encode(encoding) if isinstance(data, str) else data
    target = _target(path)
    mode = _mode_for(target)
    try:
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {_reason(exc)}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(payload)
            out.flush()
            os.fchmod(out.fileno(), mode)
            os.fsync(out.fileno())
        os.replace(tmp_name, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise OutputError(f"cannot write {path}: {_reason(exc)}") from None
    _sync_directory(target.parent)


def _target(path: Path) -> Path:
    """The file to replace: `path`, or what its symbolic links lead to; OutputError if unusable."""
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    if target.exists() and not target.is_file():
        kind = "a directory" if target.is_dir() else "not a regular file"
        raise OutputError(f"cannot write {path}: it is {kind}")
    parent = target.parent
    if not parent.is_dir():
        raise OutputError(f"cannot write {path}: no such directory {parent}")
    return target


def _mode_for(target: Path) -> int:
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _sync_directory(directory: Path) -> None:
    """Make the rename itself durable; some file systems cannot, which is no failure of ours."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _reason(exc: OSError) -> str:
    return exc.strerror or exc.__class__.__name__


def check_target(path: Path, inputs: Iterable[Path] = ()) -> None:
    """OutputError now if `path` can never be written, before any work is done for it, or if it is one
    of the command's `inputs` (its database, the database's -wal and -shm files, its fixture):
    writing the output there would replace what it is made from."""
    target = _target(path)
    for given in inputs:
        if _same_file(target, given):
            raise OutputError(f"cannot write {path}: it is {given}, which this command reads")


def _same_file(a: Path, b: Path) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links
    except OSError:
        return False
