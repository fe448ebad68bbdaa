"""One changed value shown as `old → new` on one line: newlines and tabs escaped, and a long
value cut around where the two sides first differ (cut from the start, both sides would often
read the same)."""

from __future__ import annotations

WIDTH = 60  # characters per side
BEFORE = 20  # characters kept before the first difference


def change_pair(old: str, new: str) -> tuple[str, str]:
    """`old` and `new`, escaped and, when too long, windowed on their first difference."""
    old, new = _escaped(old), _escaped(new)
    if len(old) <= WIDTH and len(new) <= WIDTH:
        return old, new
    first = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
    start = max(0, first - BEFORE)
    return _window(old, start), _window(new, start)


def _window(text: str, start: int) -> str:
    head = "..." if start > 0 else ""
    body = text[start : start + WIDTH - len(head) - 3]
    tail = "..." if start + len(body) < len(text) else ""
    return head + body + tail


def _escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
