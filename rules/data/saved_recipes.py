"""Chat template recipes (`chat_render`) kept between processes.

A process learns a recipe by rendering with transformers' `apply_chat_template`, which costs the
transformers import (about 0.7 s) before the first row: more than tokenizing the one chunk a
one-row edit reruns. So a tokenize node leaves the recipes its build thread learned in a file
beside the stat cache, and the next process renders the rows those recipes hold without
transformers or jinja (any other row still renders, and learns, as before).

A recipe is only as good as what made it, so the file is named by the tokenizer snapshot's key
(the tokenizer files' bytes, chat template included, the transformers, tokenizers and jinja2
versions, and the code of the snapshot and of the renderer: `tokenizer_snapshot`), and carries the digest of
its content: a file from another template, library or renderer is never read, and a damaged
one is ignored. Recipes only ever save time; a missing file means learning again.
"""

from __future__ import annotations

import json
from pathlib import Path

from evsys_build.atomic import write_atomic
from evsys_build.hashing import digest

from .chat_observe import _SAME
from .chat_render import MAX_RECIPES_PER_SHAPE, MAX_SHAPES, _Recipe, chat_renderer


def recipes_path(local_dir: Path, snapshot_key: str) -> Path:
    """Where the recipes of one tokenizer snapshot are kept (its key covers the renderer's code:
    `tokenizer_snapshot.tokenizer_code`)."""
    return Path(local_dir) / "recipes" / f"{snapshot_key}.json"


def seed_recipes(tok, path: Path) -> None:
    """Give `tok`'s renderer the recipes saved at `path` (once per renderer)."""
    renderer = chat_renderer(tok)
    if path in renderer.seeded:
        return
    renderer.seeded.add(path)
    for key, recipes in _read(path):
        _add(renderer.recipes.setdefault(key, []), recipes)


def recipe_count(tok) -> int:
    """How many recipes `tok`'s renderer holds (it grows as rendering learns)."""
    return sum(len(recipes) for recipes in chat_renderer(tok).recipes.values())


def save_recipes(tok, path: Path) -> None:
    """Keep `tok`'s renderer's recipes at `path`, with those already there (within the renderer's limits)."""
    renderer = chat_renderer(tok)
    if not any(renderer.recipes.values()) or renderer.replay_off is not None:
        return  # a renderer whose replay went wrong keeps nothing
    merged: dict[tuple, list[_Recipe]] = {key: list(recipes) for key, recipes in _read(path)}
    for key, recipes in renderer.recipes.items():
        if key not in merged and len(merged) >= MAX_SHAPES:
            continue
        _add(merged.setdefault(key, []), [r for r in recipes if r.checks_left == 0])  # only recipes whose checked replays all matched
    entries = []
    for key, recipes in merged.items():
        try:
            entries.append([_encode(key), [[_encode(r.parts), _encode(r.named_guards)] for r in recipes]])
        except TypeError:  # a guard argument JSON cannot hold exactly: that shape is learned anew each time
            continue
    write_atomic(path, json.dumps({"digest": digest(entries), "recipes": entries}).encode(), path.parent.parent / "tmp")


def _read(path: Path) -> list[tuple[tuple, list[_Recipe]]]:
    try:
        saved = json.loads(Path(path).read_bytes())
        entries = saved["recipes"]
        if digest(entries) != saved["digest"]:
            return []
        return [(_decode(key), [_checked(_Recipe(_decode(parts), _decode(guards))) for parts, guards in recipes]) for key, recipes in entries]
    except (OSError, ValueError, KeyError, TypeError, IndexError):  # missing or damaged: learn again
        return []


def _checked(recipe: _Recipe) -> _Recipe:
    """A saved recipe: its checked replays matched in the process that saved it."""
    recipe.checks_left = 0
    return recipe


def _add(kept: list[_Recipe], recipes: list[_Recipe]) -> None:
    """Append the recipes `kept` does not hold yet, up to the renderer's limit per shape."""
    for recipe in recipes:
        if len(kept) < MAX_RECIPES_PER_SHAPE and not any(a.parts == recipe.parts and a.named_guards == recipe.named_guards for a in kept):
            kept.append(recipe)


def _encode(value):
    """JSON that keeps tuples, lists and the `_SAME` marker apart; TypeError for anything else not plain."""
    if value is _SAME:
        return {"same": True}
    if isinstance(value, tuple):
        return {"tuple": [_encode(v) for v in value]}
    if isinstance(value, list):
        return {"list": [_encode(v) for v in value]}
    if value is None or type(value) in (str, int, float, bool):
        return value
    raise TypeError(f"cannot keep a {type(value).__name__} in a recipe file")


def _decode(value):
    if isinstance(value, dict):
        if "same" in value:
            return _SAME
        if "tuple" in value:
            return tuple(_decode(v) for v in value["tuple"])
        return [_decode(v) for v in value["list"]]
    return value
