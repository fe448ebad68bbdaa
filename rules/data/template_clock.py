"""Chat templates that read the clock: `strftime_now(...)` (Llama 3.2's writes today's date into
the system turn) renders differently from one day to the next, so what it renders is keyed.

The compile finds the template's `strftime_now` formats in the tokenizer files (no jinja, no
transformers: a plan imports neither), renders each at that moment and puts the results in the
keys of the nodes that render with the template (tokenize, eval, held-out loss). Those nodes
render with exactly that clock (`pinned`), so a build that crosses midnight still makes what its
keys say and the data changes, and reruns, when the date does. A format the template computes
instead of writing it out keys the moment itself, to the second.
"""

from __future__ import annotations

import ast
import contextlib
import datetime as _dt
import json
import re
import threading
from pathlib import Path

_ANY = re.compile(r"\bstrftime_now\b")
_LITERAL_CALL = re.compile(r"""\bstrftime_now\s*\(\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')\s*\)""")
_DEFINED_TEST = re.compile(r"\bstrftime_now\s+is\s+(?:not\s+)?defined\b")
TEMPLATE_JSON_FILES = ("tokenizer_config.json", "chat_template.json", "processor_config.json")  # where transformers reads templates (besides .jinja files)
_sources: dict[tuple[str, str], tuple[str, ...]] = {}  # (file, digest) -> its templates that read the clock


def template_clock(model_dir: Path, tokenizer_digests: dict[str, str], now: _dt.datetime | None = None) -> dict | None:
    """What the model's chat templates render from the clock: {"formats": {format: text}} when
    every `strftime_now` call names its format, {"at": "<moment, to the second>"} when one does
    not, None when no template reads the clock. `tokenizer_digests` are the keyed files."""
    templates = [t for name, file_digest in sorted(tokenizer_digests.items()) for t in _clock_templates(Path(model_dir) / name, file_digest)]
    if not templates:
        return None
    moment = now or _dt.datetime.now()
    formats = {}
    for text in templates:
        literal = [ast.literal_eval(m.group(1)) for m in _LITERAL_CALL.finditer(text)]
        if len(_ANY.findall(text)) != len(literal) + len(_DEFINED_TEST.findall(text)):
            return {"at": moment.isoformat(timespec="seconds")}
        formats.update({f: moment.strftime(f) for f in literal})
    return {"formats": dict(sorted(formats.items()))}


def _clock_templates(path: Path, file_digest: str) -> tuple[str, ...]:
    """The templates in one tokenizer file (a .jinja file, or the strings of a JSON file that holds
    templates, such as tokenizer_config.json's chat_template) that mention strftime_now; read once
    per content."""
    if not (path.name.endswith(".jinja") or path.name in TEMPLATE_JSON_FILES):
        return ()
    key = (str(path), file_digest)
    if key not in _sources:
        text = path.read_text(encoding="utf-8", errors="replace")
        found: list[str] = []
        if "strftime_now" in text:
            if path.name.endswith(".json"):
                try:
                    _strings_with_clock(json.loads(text), found)
                except ValueError:
                    found.append(text)
            else:
                found.append(text)
        _sources[key] = tuple(found)
    return _sources[key]


def _strings_with_clock(value, found: list[str]) -> None:
    if isinstance(value, str):
        if "strftime_now" in value:
            found.append(value)
    elif isinstance(value, dict):
        for item in value.values():
            _strings_with_clock(item, found)
    elif isinstance(value, list):
        for item in value:
            _strings_with_clock(item, found)


# ----------------------------------------------------------------------------- rendering with the keyed clock

_local = threading.local()
_install_lock = threading.Lock()


@contextlib.contextmanager
def pinned(clock: dict | None):
    """Within this block, this thread's chat-template renders read `clock` (from `template_clock`)
    instead of the time: transformers' `strftime_now` calls its module's `datetime.now()`."""
    if clock is None:
        yield
        return
    _install()
    before = getattr(_local, "clock", None)
    _local.clock = clock
    try:
        yield
    finally:
        _local.clock = before


class _PinnedMoment:
    def __init__(self, clock: dict):
        self.clock = clock

    def strftime(self, fmt: str) -> str:
        if "at" in self.clock:
            return _dt.datetime.fromisoformat(self.clock["at"]).strftime(fmt)
        if fmt not in self.clock["formats"]:
            raise ValueError(f"the chat template called strftime_now({fmt!r}), a format its text did not show; "
                             "write the format as a literal string in the template")
        return self.clock["formats"][fmt]


class _Clock:
    """Stands in for `datetime` in transformers' chat-template module: `now()` is the pinned
    moment inside `pinned`, the time everywhere else."""

    def __getattr__(self, name):
        return getattr(_dt.datetime, name)

    def now(self, tz=None):
        clock = getattr(_local, "clock", None)
        return _dt.datetime.now(tz) if clock is None else _PinnedMoment(clock)


def _install() -> None:
    from ..ml_stack import preload_chat_templates

    preload_chat_templates()  # the first import of transformers holds the ML stack's lock
    from transformers.utils import chat_template_utils

    with _install_lock:
        if not isinstance(chat_template_utils.datetime, _Clock):
            chat_template_utils.datetime = _Clock()
