"""Which Tinker key evsys hands the SDK, resolved in the SDK's order: TINKER_API_KEY, else none
when TINKER_CREDENTIAL_CMD is set (the SDK runs that command for each request), else the
default key `tinker auth login` stored (~/.tinker/credentials.json). The key is kept in
memory only; it is never part of a node's key or written to the store."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from evsys_build.errors import ConfigError

from .errors import MISSING_KEY


def api_key() -> Optional[str]:
    """The key to pass to the SDK (None: the SDK's credential command); no credential at all is
    MISSING_KEY."""
    key = os.environ.get("TINKER_API_KEY", "").strip()
    if key:
        return key
    if os.environ.get("TINKER_CREDENTIAL_CMD", "").strip():
        return None
    key = stored_key()
    if key:
        return key
    raise ConfigError(MISSING_KEY)


def has_credentials() -> bool:
    try:
        api_key()
    except ConfigError:
        return False
    return True


def key_in_use() -> Optional[str]:
    """The key `api_key()` gives the SDK, or None (none, or the credential command's); never raises."""
    try:
        return api_key()
    except ConfigError:
        return None


def stored_key() -> Optional[str]:
    """The default key in the SDK's credentials file, or None (no SDK, no file, no default)."""
    path = Path("~/.tinker/credentials.json").expanduser()  # the SDK's default_credentials_path(): no import when there is no file
    if not path.is_file():
        return None
    try:
        from tinker.lib import credentials
    except ImportError:
        return None
    try:
        record = credentials.JsonCredentialStore(path).get_default_key()
    except Exception as exc:  # noqa: BLE001 - the SDK's own parse errors, whatever their type
        raise ConfigError(f"{path}: cannot read the stored Tinker credentials ({type(exc).__name__}); run `tinker auth login` again or export TINKER_API_KEY") from None
    return record.key.strip() if record is not None and record.key.strip() else None
