"""A build outlives its reader: `evsys build ... | head`, a closed terminal, an ssh that dropped.

Once a write to stdout or stderr fails because nobody reads it any more (a closed pipe, a
hung-up terminal), later writes go to /dev/null and the build goes on: a training never fails,
and never loses its steps, because a progress line could not be printed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from typing import Iterator

_READER_GONE = (errno.EPIPE, errno.EIO, errno.ENXIO)


class OutlivesReader:
    """A text stream whose failed writes (the reader left) switch it, and its file descriptor, to /dev/null."""

    def __init__(self, stream):
        self._stream = stream
        self.gone = False

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                return self._stream.write(text)
            except OSError as exc:
                self._leave(exc)
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self._stream.flush()
            except OSError as exc:
                self._leave(exc)

    def _leave(self, exc: OSError) -> None:
        if exc.errno not in _READER_GONE:
            raise exc
        self.gone = True
        try:  # the descriptor too: the bytes still buffered, and what a library writes to fd 1/2, go nowhere
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass

    def __getattr__(self, name):
        return getattr(self._stream, name)


@contextlib.contextmanager
def outliving_readers() -> Iterator[None]:
    """sys.stdout and sys.stderr as `OutlivesReader`s while the block runs."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = (OutlivesReader(s) if s is not None else None for s in saved)  # None: started with the fd closed
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


def write_fd(fd: int, data: bytes) -> None:
    """`os.write` for a signal handler: a reader that left (a hung-up terminal) is no error."""
    try:
        os.write(fd, data)
    except OSError:
        pass
