"""The docs in the repository stay true: every path they name exists, and the README points nowhere outside."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PATH_RE = re.compile(r"`([A-Za-z0-9_.\-/]+/[A-Za-z0-9_.\-/]*|[A-Za-z0-9_\-]+\.(?:py|md|yaml|toml))`")


STORE_PATHS = (".evsys-cache/", "<", "objects/", "nodes/", "memo/", "refs/", "tmp/", "locks/", "runs/", "quarantine/", "builds/")


@pytest.mark.parametrize("doc", ["docs/architecture.md", "docs/scale-out.md", "README.md"])
def test_every_path_a_doc_names_exists(doc):
    """A path with a folder must exist from the repo root; a bare file name (a table row listing a
    folder's modules) must exist under a folder named on the same line."""
    missing, checked = [], 0
    for line in (REPO / doc).read_text().splitlines():
        named = [m for m in PATH_RE.findall(line) if not m.startswith(STORE_PATHS)]
        folders = [REPO / m for m in named if "/" in m and (REPO / m).is_dir()]
        for path in named:
            checked += 1
            if "/" in path.rstrip("/"):
                found = (REPO / path.rstrip("/")).exists()
            else:
                found = (REPO / path).exists() or any(next(f.rglob(path), None) for f in folders)
            if not found:
                missing.append(f"{path} (line: {line.strip()[:60]})")
    assert checked > 5
    assert missing == []


def test_readme_and_docs_never_point_outside_the_repository():
    for doc in [REPO / "README.md", *(REPO / "docs").glob("*.md")]:
        assert "../shared" not in doc.read_text(), doc
