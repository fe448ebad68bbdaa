"""Tinker SDK exceptions as one line each, naming the service and the fix; the API key never appears.

The SDK retries transient failures itself (HTTP 408/409/429/5xx, connection errors) before it
raises, so whatever reaches here has outlived those retries.
"""

from __future__ import annotations

import os

from evsys_build.errors import ConfigError, EvsysError, NodeFailed

from ..base import StepFailed

MISSING_KEY = (
    "backend.kind: tinker needs a Tinker API key: export TINKER_API_KEY=tml-... (or store one with `tinker auth login`); "
    "to run the experiment offline use examples/sft_walkthrough/offline.yaml (backend: {kind: local})"
)


def service_name(base_url: str | None) -> str:
    return f"the Tinker service at {base_url}" if base_url else "hosted Tinker"


def redact(text: str) -> str:
    """`text` with the API key in use (exported or stored) replaced, on one line. A credential
    TINKER_CREDENTIAL_CMD prints goes from the SDK to the service and never reaches evsys."""
    from .credentials import key_in_use

    key = key_in_use()
    if key:
        text = text.replace(key, "<TINKER_API_KEY>")
    return " ".join(text.split())


def key_source() -> tuple[str, str]:
    """Where the key the SDK was given came from, and how to give another, for messages."""
    if os.environ.get("TINKER_API_KEY", "").strip():
        return "TINKER_API_KEY", "export a valid key"
    if os.environ.get("TINKER_CREDENTIAL_CMD", "").strip():
        return "the credential TINKER_CREDENTIAL_CMD printed", "fix TINKER_CREDENTIAL_CMD or export TINKER_API_KEY"
    return "the key `tinker auth login` stored", "run `tinker auth login` again or export TINKER_API_KEY"


def detail(exc: BaseException) -> str:
    """The server's own words from an SDK error (`{"detail": ...}` bodies), else the message."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and body.get("detail"):
        return str(body["detail"])
    return str(exc)


def service_error(exc: BaseException, what: str, base_url: str | None) -> EvsysError | StepFailed:
    """An SDK exception raised while doing `what` as an evsys error (or StepFailed when recreating
    the training client from its last saved state may help)."""
    import tinker

    where = service_name(base_url)
    said = detail(exc)
    if isinstance(exc, EvsysError | StepFailed):
        return exc
    if isinstance(exc, tinker.AuthenticationError) or "status 401" in said:
        source, fix = key_source()
        err: EvsysError | StepFailed = ConfigError(f"tinker: {where} rejected {source} (HTTP 401, authentication failed) while {what}; {fix}")
    elif isinstance(exc, tinker.BillingError) or "status 402" in said:
        err = ConfigError(f"tinker: {where} refused {what} for billing or quota (HTTP 402: {said}); check the account's billing and limits")
    elif isinstance(exc, tinker.PermissionDeniedError) or "status 403" in said:
        err = ConfigError(f"tinker: {where} refused {what} (HTTP 403, permission denied: {said}); check the key's access")
    elif isinstance(exc, tinker.RateLimitError):
        err = NodeFailed(f"tinker: {where} still rate-limited {what} (HTTP 429) after the SDK's retries; wait and run the build again")
    elif isinstance(exc, tinker.NotFoundError):
        err = NodeFailed(f"tinker: {what}: not found on {where} ({said})")
    elif isinstance(exc, tinker.BadRequestError | tinker.UnprocessableEntityError):
        err = ConfigError(f"tinker: {where} rejected {what} ({said})")
    elif isinstance(exc, tinker.APIConnectionError):
        err = NodeFailed(f"tinker: cannot reach {where} while {what} ({said}); check backend.params.base_url, TINKER_BASE_URL and the network")
    elif isinstance(exc, tinker.RequestFailedError) and getattr(exc, "category", None) == "user":
        err = ConfigError(f"tinker: {where} rejected {what}: {said}")
    elif isinstance(exc, tinker.RequestFailedError | tinker.InternalServerError | tinker.APITimeoutError):
        err = StepFailed(f"{what} failed on {where}: {said}")
    elif isinstance(exc, tinker.TinkerError):
        err = ConfigError(f"tinker: {what}: {said}")
    else:
        return exc  # a bug, not the service: keep its traceback
    if isinstance(err, EvsysError):
        err.message = redact(err.message)
        err.args = (err.message,)
    else:
        err.args = (redact(str(err)),)
    return err
