"""One Tinker `ServiceClient` per (service, key) for the whole process, and the calls around it.

The SDK reads nothing from evsys's store: the key (TINKER_API_KEY, else the one `tinker auth
login` stored: credentials.py) is passed to the SDK in memory, and is never written (the SDK
sends it as the X-API-Key header). `tinker` is imported inside functions: `plan` and cached
builds of local configs never load it.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import urllib.parse
from typing import Callable, TypeVar

from evsys_build.errors import ConfigError

from .credentials import api_key
from .errors import service_error, service_name

T = TypeVar("T")
_lock = threading.Lock()
_service_clients: dict[tuple[str | None, int], object] = {}


def import_tinker():
    try:
        import tinker
    except ImportError:
        raise ConfigError("backend.kind: tinker needs the Tinker SDK: pip install 'evsys[tinker]'") from None
    return tinker


class _QuietPolling(logging.Filter):
    """The SDK logs every long-poll round ("Retrying request ... because of try_again"): routine, not news."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "because of try_again" not in record.getMessage()


def service_client(base_url: str | None):
    """The process's ServiceClient for `base_url` (None: the SDK's default service), closed at exit."""
    tinker = import_tinker()
    polling = logging.getLogger("tinker.lib.api_future_impl")  # filters apply where a record is logged
    if not any(isinstance(f, _QuietPolling) for f in polling.filters):
        polling.addFilter(_QuietPolling())
    key = api_key()
    with _lock:
        ident = (base_url, hash(key))  # key None: the SDK's credential command
        if ident not in _service_clients:
            client = call(lambda: tinker.ServiceClient(base_url=base_url, api_key=key), "opening a session", base_url)
            _service_clients[ident] = client
            atexit.register(_close, client)
        return _service_clients[ident]


def rest_client(base_url: str | None):
    """A session-less RestClient (the SDK caches one per service and key)."""
    tinker = import_tinker()
    key = api_key()
    return call(lambda: tinker.RestClient(base_url=base_url, api_key=key), "connecting", base_url)


def call(fn: Callable[[], T], what: str, base_url: str | None) -> T:
    """Run an SDK call; its exceptions come out as one-line evsys errors (or StepFailed)."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - mapped below; bugs are re-raised as they are
        raise service_error(exc, what, base_url) from None


def reachable(base_url: str | None, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the service opens: checked before SDK calls that would retry
    a dead address for minutes (plan must stay quick offline)."""
    url = base_url or os.environ.get("TINKER_BASE_URL") or _sdk_default_url()
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def _sdk_default_url() -> str:
    try:
        from tinker.lib.base_url import DEFAULT_BASE_URL  # type: ignore[attr-defined]

        return DEFAULT_BASE_URL
    except Exception:  # noqa: BLE001 - older/newer SDK layouts
        return "https://tinker.thinkingmachines.dev/services/tinker-prod"


def supported_models(base_url: str | None) -> dict[str, object]:
    """The base models the service offers (its server capabilities), by name."""
    rest = rest_client(base_url)
    caps = call(lambda: rest.get_server_capabilities().result(), "reading the server capabilities", base_url)
    return {m.model_name: m for m in caps.supported_models}


def check_base_model(base_model: str, base_url: str | None, max_length: int | None = None) -> None:
    """The service offers `base_model`, trains and samples it, and takes `max_length` tokens."""
    offered = supported_models(base_url)
    model = offered.get(base_model)
    if model is None:
        raise ConfigError(
            f"model.name: {base_model!r} is not offered by {service_name(base_url)}; it offers: {', '.join(offered) or 'nothing'}"
        )
    for can in ("trainable", "sampleable"):
        if getattr(model, can, None) is False:
            raise ConfigError(f"model.name: {service_name(base_url)} offers {base_model!r} but not as {can}; "
                              f"pick one of: {', '.join(n for n, m in offered.items() if getattr(m, can, None) is not False) or 'none'}")
    context = getattr(model, "max_context_length", None)
    if max_length is not None and context and max_length > context:
        raise ConfigError(f"algorithm.params.max_length: {max_length} tokens exceed the {context} that {service_name(base_url)} "
                          f"takes for {base_model!r}; set max_length <= {context}")


def _close(client) -> None:
    try:
        client.close("success").result(timeout=10)
    except Exception:  # noqa: BLE001 - the process is exiting; the service ends idle sessions itself
        pass
