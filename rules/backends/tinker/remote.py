"""Do a checkpoint's `tinker://` paths still exist on the service? (Tinker checkpoints have a TTL.)

Answers are kept for the process, so a plan asks once per path. Without TINKER_API_KEY, or when
the service cannot be reached, the answer is "unknown" (None): `plan` stays quick and offline-safe.
"""

from __future__ import annotations

import os
import threading
from typing import Optional

from .errors import service_name

_lock = threading.Lock()
_exists: dict[tuple[Optional[str], str], bool] = {}
_unreachable: set[Optional[str]] = set()  # services a TCP connection did not reach (asked once per process)


def missing_paths(paths: list[str], base_url: Optional[str]) -> Optional[dict[str, str]]:
    """{path: why it is unusable} for the paths the service no longer has; None when it cannot tell."""
    if not os.environ.get("TINKER_API_KEY"):
        return None
    todo = [p for p in paths if (base_url, p) not in _exists]
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
                _exists[(base_url, path)] = found
    where = service_name(base_url)
    return {p: f"{p} no longer exists on {where}" for p in paths if _exists.get((base_url, p)) is False}


def forget(paths: list[str], base_url: Optional[str]) -> None:
    """Drop cached answers (after a build wrote new checkpoints under these paths)."""
    with _lock:
        for p in paths:
            _exists.pop((base_url, p), None)
