"""Do a checkpoint's `tinker://` paths still exist on the service? (Tinker checkpoints have a TTL.)

A plan asks once per path: "gone" is kept for the process (a deleted checkpoint never comes
back), "there" for EXISTS_FOR_S only, since a checkpoint can expire while a long-lived process
(the Python API, a notebook) runs. Without a key, or when the service cannot be reached,
the answer is "unknown" (None): `plan` stays quick and offline-safe.
"""

from __future__ import annotations

import threading
import time
from typing import Optional

from .credentials import has_credentials
from .errors import service_name

_lock = threading.Lock()
_exists: dict[tuple[Optional[str], str], tuple[bool, float]] = {}  # (found, when asked)
EXISTS_FOR_S = 60.0
_clock = time.monotonic
_unreachable: set[Optional[str]] = set()  # services a TCP connection did not reach (asked once per process)


def missing_paths(paths: list[str], base_url: Optional[str]) -> Optional[dict[str, str]]:
    """{path: why it is unusable} for the paths the service no longer has; None when it cannot tell."""
    if not has_credentials():
        return None
    todo = [p for p in paths if not _known(base_url, p)]
    if todo:
        from .service import reachable, rest_client

        if base_url in _unreachable or not reachable(base_url):
            _unreachable.add(base_url)
            return None
        import tinker

        try:
            rest = rest_client(base_url)
        except Exception:  # noqa: BLE001 - a wrong key is reported by the build's own check
            return None
        futures = [(p, rest.get_weights_info_by_tinker_path(p)) for p in todo]
        for path, future in futures:
            try:
                future.result()
                found = True
            except tinker.NotFoundError:
                found = False
            except Exception:  # noqa: BLE001 - cannot tell: assume it is there, the build finds out
                continue
            with _lock:
                _exists[(base_url, path)] = (found, _clock())
    where = service_name(base_url)
    return {p: f"{p} no longer exists on {where}" for p in paths if _exists.get((base_url, p), (None,))[0] is False}


def _known(base_url: Optional[str], path: str) -> bool:
    """Whether an answer for `path` is still good: "gone" always, "there" for EXISTS_FOR_S."""
    found, asked = _exists.get((base_url, path), (None, 0.0))
    return found is False or (found is True and _clock() - asked < EXISTS_FOR_S)


def forget(paths: list[str], base_url: Optional[str]) -> None:
    """Drop cached answers (after a build wrote new checkpoints under these paths)."""
    with _lock:
        for p in paths:
            _exists.pop((base_url, p), None)
