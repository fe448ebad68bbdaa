"""Ctrl-C, SIGTERM and SIGHUP (a closed terminal, a dropped ssh) during a build: the first asks
running nodes to stop after their current step (training saves a checkpoint), the second exits
at once. Never a traceback, never a crash
in a torch thread at interpreter shutdown (the second signal leaves with os._exit)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Iterator

from .atomic import remove_own_staging
from .streams import write_fd

SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)

# The CLI sets this: once a build was interrupted, the process is on its way out, so a later
# Ctrl-C (during the exit message, or torch's shutdown) still exits 130 at once instead of
# raising KeyboardInterrupt. A library caller (a notebook) gets its own handlers back.
KEEP_HANDLERS_AFTER_STOP = False


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[threading.Event]:
    """Set `stop` on the first SIGINT/SIGTERM/SIGHUP; exit 130 on the second. Only the main thread can
    install handlers: elsewhere (a notebook's worker thread) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handle(signum, frame):
        if stop.is_set():
            write_fd(2, b"\nevsys: interrupted again; exiting now (what finished is stored: nodes built, checkpoints saved; "
                        b"the next build resumes from them, and `evsys runs` lists this run as killed)\n")
            remove_own_staging()
            os._exit(130)
        stop.set()
        write_fd(2, b"\nevsys: stopping: running nodes finish their current step and save it (Ctrl-C again to exit now)\n")

    # a signal this process was started ignoring stays ignored: a shell script's background job
    # (`evsys build ... &`) ignores SIGINT so that Ctrl-C in the terminal is not meant for it
    previous = {s: signal.signal(s, handle) for s in SIGNALS if signal.getsignal(s) != signal.SIG_IGN}
    try:
        yield stop
    finally:
        if not (stop.is_set() and KEEP_HANDLERS_AFTER_STOP):
            for s, handler in previous.items():
                signal.signal(s, handler)
        sys.stderr.flush()


def terminate_like_ctrl_c() -> None:
    """In the `evsys` process: SIGTERM and SIGHUP before a build installs its handlers (while the
    command imports and loads the config) end it as Ctrl-C does there, `evsys: interrupted` and exit
    130, instead of a silent death by signal. A signal the process was started ignoring stays ignored."""
    for s in SIGNALS:
        if s != signal.SIGINT and signal.getsignal(s) == signal.SIG_DFL:
            signal.signal(s, _interrupt)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def terminate_by_default() -> None:
    """Once the command has returned: SIGTERM and SIGHUP end the process by the signal again, as
    before `terminate_like_ctrl_c` (an exception raised in an exit handler would only print a
    traceback and cut that cleanup short)."""
    for s in SIGNALS:
        if signal.getsignal(s) is _interrupt:
            signal.signal(s, signal.SIG_DFL)


def exit_now(code: int) -> None:
    """Leave an interrupted build's process without interpreter finalization: everything it
    wrote is already stored, and finalization resets signal handlers (a Ctrl-C then would kill
    the process by signal) and joins torch's threads."""
    remove_own_staging()  # what writer threads were staging: os._exit ends them before their rename
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
