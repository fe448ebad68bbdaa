"""Whether a process still runs, by its pid on this host (a lock's, a staging file's or a run's owner)."""

from __future__ import annotations

import os


def process_alive(pid: int) -> bool:
    """True while `pid` runs here (another user's process included: the kernel refuses the probe
    but the process is there)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: someone else's
        return True
    return True
