"""One error family; each user-facing error carries the fix and maps to an exit code."""

from __future__ import annotations


class EvsysError(Exception):
    """Base for every error evsys raises on purpose. `exit_code` is what the CLI returns."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __reduce__(self):  # picklable across processes
        return (type(self), (self.message,))


class ConfigError(EvsysError, ValueError):
    """Bad config or bad input data: one line naming file:line:col, field and the fix."""


class UsageError(EvsysError, ValueError):
    """Bad command-line usage (unknown node prefix, unknown arm...)."""


class UnknownKindError(ConfigError, KeyError):
    """A kind that no registry knows (`kind`: the registry's, e.g. "transform"; `name`: the one asked for)."""

    def __init__(self, message: str, kind: str = "", name: str = ""):
        super().__init__(message)
        self.kind, self.name = kind, name

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.message


class HashingError(EvsysError, TypeError):
    """A value that cannot be hashed canonically; never degrade to a random key."""


class StoreError(EvsysError, OSError):
    """The store is missing, corrupt or inconsistent."""

    exit_code = 1


class NodeFailed(EvsysError, RuntimeError):
    """A node raised while running; the store holds nothing of it."""

    exit_code = 1


class PluginError(EvsysError, TypeError):
    """A plugin that does not fit its kind's protocol (a backend missing a method, ...)."""


class CorruptObject(StoreError):
    """An object whose bytes are missing, truncated or do not match their name. It is moved to
    quarantine on detection, so every node that references it reads as not built and reruns."""

    def __init__(self, message: str, name: str = ""):
        super().__init__(message)
        self.name = name

    def __reduce__(self):
        return (type(self), (self.message, self.name))


class Interrupted(EvsysError):
    """The build was stopped by Ctrl-C or SIGTERM; finished work is stored and the next build resumes."""

    exit_code = 130
