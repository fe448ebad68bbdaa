"""Atomic file writes: temp file in the same filesystem, fsync, rename, fsync the folder."""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
from pathlib import Path

from .errors import StoreError
from .processes import process_alive
from .tree import first_existing

STAGING_PREFIX = ".evsys-"  # + "<pid>-": a later build or gc removes what a dead process left
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}
FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}  # the rest of DISK_ERRNOS: a folder this user cannot write
NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK}


class WriteFailed(StoreError):
    """The disk refused a write (full, quota, read-only, too large, no permission)."""


def write_atomic(path: Path, data: bytes, tmp_dir: Path | None = None, fsync: bool = True) -> None:
    """Write `data` to `path` so readers see either nothing or the whole file."""
    _publish(path, data, tmp_dir, exclusive=False, fsync=fsync)


def create_atomic(path: Path, data: bytes, tmp_dir: Path | None = None, fsync: bool = True) -> bool:
    """Write `data` to `path` only if nothing is there yet, atomically: the staged file is
    hard-linked into place, and link(2) fails when the name exists (the local counterpart of S3's
    `If-None-Match: *`). Returns False when `path` already existed. Without `fsync` the bytes may
    not survive a power failure (see `Bucket.create`'s `durable`)."""
    return _publish(path, data, tmp_dir, exclusive=True, fsync=fsync)


def _publish(path: Path, data: bytes, tmp_dir: Path | None, exclusive: bool, fsync: bool = True) -> bool:
    tmp = None
    try:
        made = _make_folders(path.parent)
        staging = tmp_dir or path.parent
        staging.mkdir(parents=True, exist_ok=True)
        fd, tmp = _staging_file(staging)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        if not exclusive:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in NO_HARD_LINKS:
                    raise
                if path.exists():  # a filesystem without hard links: check, then rename (not atomic)
                    return False
                os.replace(tmp, path)
        if fsync:
            for folder in (path.parent, *(m.parent for m in made)):  # the new name, and each new folder's own name
                _fsync_folder(folder)
        return True
    except OSError as exc:
        if exc.errno in DISK_ERRNOS:
            fix = "free some space or write elsewhere" if exc.errno in FULL_ERRNOS else "write where this user may"
            raise WriteFailed(f"cannot write {path}: {exc.strerror}; {fix} (--cache-dir, output_dir)") from None
        raise
    finally:
        _remove(tmp)  # renamed already, or linked into place, or left by a failure


def _make_folders(folder: Path) -> list[Path]:
    """Make `folder` and its missing parents; returns the ones this call found missing."""
    base = first_existing(folder)
    missing = list(itertools.takewhile(lambda part: part != base, (folder, *folder.parents)))
    if missing:
        folder.mkdir(parents=True, exist_ok=True)
    return missing


def _fsync_folder(folder: Path) -> None:
    """Make a rename or link in `folder` survive a power failure: the new name lives in the
    folder's own entries, which fsync of the file does not write. Filesystems that cannot fsync
    a folder (some network mounts, Windows) are left as they are."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in {errno.EINVAL, errno.EBADF, errno.ENOTSUP, errno.EOPNOTSUPP}:
            raise
    finally:
        os.close(fd)


def remove_own_staging() -> None:
    """Remove the staging files this process has open (before an immediate exit, whose writer
    threads never finish their rename): a later build or gc would, but `verify` would report them
    until then. Only the files this process made, by name: another machine's process with the
    same pid, staging into a shared store, is left alone."""
    for name in list(_staged_now):
        _remove(name)


def _staging_file(staging: Path) -> tuple[int, str]:
    """A new file in `staging`, named `.evsys-<pid>-<n>` (n counts this process's writes), open
    for writing; created with mode 0666 less the umask, as stores are shared like any files."""
    while True:
        name = os.path.join(staging, f"{STAGING_PREFIX}{os.getpid()}-{next(_staged)}")
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:  # left by an earlier process with this pid: take the next number
            continue
        _staged_now.add(name)
        return fd, name


_staged = itertools.count()  # next() on a count is atomic: threads never share a name
_staged_now: set[str] = set()  # staging files this process made and has not renamed or removed yet


def staging_owner_alive(name: str) -> bool:
    """Whether the process that created staging file `name` (`.evsys-<pid>-...`) still runs."""
    try:
        pid = int(name[len(STAGING_PREFIX):].split("-", 1)[0])
    except ValueError:
        return False
    return process_alive(pid)


def _remove(tmp: str | None) -> None:
    """Best effort: a staging file that cannot be removed now is removed by the next gc."""
    if tmp:
        _staged_now.discard(tmp)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
