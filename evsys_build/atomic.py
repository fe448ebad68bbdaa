"""Atomic file writes: temp file in the same filesystem, fsync, rename."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

from .errors import StoreError

STAGING_PREFIX = ".evsys-"  # + "<pid>-": a later build or gc removes what a dead process left
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


class WriteFailed(StoreError):
    """The disk refused a write (full, quota, read-only, too large, no permission)."""


def write_atomic(path: Path, data: bytes, tmp_dir: Path | None = None) -> None:
    """Write `data` to `path` so readers see either nothing or the whole file."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = tmp_dir or path.parent
        staging.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=staging, prefix=f"{STAGING_PREFIX}{os.getpid()}-")
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; stores are shared like any files
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        if exc.errno in DISK_ERRNOS:
            raise WriteFailed(f"cannot write {path}: {exc.strerror}; free some space or write elsewhere (--cache-dir, output_dir)") from None
        raise
    except BaseException:
        _remove(tmp)
        raise


def staging_owner_alive(name: str) -> bool:
    """Whether the process that created staging file `name` (`.evsys-<pid>-...`) still runs."""
    try:
        pid = int(name[len(STAGING_PREFIX):].split("-", 1)[0])
    except ValueError:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(tmp: str | None) -> None:
    """Best effort: a staging file that cannot be removed now is removed by the next gc."""
    if tmp:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once: os.umask is process-wide, so reading it per write races with other threads
