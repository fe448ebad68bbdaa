"""Render conversations with the model's own chat template: exactly, and fast.

`ChatRenderer.render` returns what `tokenizer.apply_chat_template(messages, tools=...,
tokenize=False, add_generation_prompt=..., **template_kwargs)` returns. Rows that hold only
{role, content} messages (and no tools) usually take a shortcut, a *recipe*:

A render of one conversation shape (the roles in order, the flags) is run once with each
content wrapped in `_Observed`, a str that records every question the template asks of it
(`content.startswith('<tool_response>')` -> False, `'</think>' in content` -> False,
`content.lstrip('\\n')` -> unchanged, ...) and that survives `+` as a `_Rope`, so the output
comes back as template text and whole contents. The template is a deterministic function of
what it read, so any later row of that shape whose contents give the same answers renders to
the same text with its own contents in place. A render makes no recipe ("opaque") when the
template reads a content in a way no method call shows: passed to a filter such as `tojson`,
to a call (iterators drained first, so `|map(...)|join` is seen), `str.format`, `repr`
(`{{ [content] }}`), `~`, `%`, or anything rendered into a buffer (captured blocks, macros,
recursive loops, blocks, autoescape): `_replay_blocker` refuses templates that can. The
first render of every recipe, and its first CHECKED_REPLAYS replays for other contents (saved
recipes included), are checked against `apply_chat_template` itself; a mismatch turns recipes
off for that tokenizer, so a read the observation missed shows there. Everything else renders through `apply_chat_template`.
"""

from __future__ import annotations

import threading
import weakref

from .chat_observe import _SAME, _STR_OPS, _Observed, _Recorder, _observing_template, _parts

MAX_RECIPES_PER_SHAPE = 8
MAX_SHAPES = 512
CHECKED_REPLAYS = 3  # a recipe's first replays are checked against apply_chat_template: a read it missed shows there
MAX_FRUITLESS_LEARNS = 64  # a shape whose renders keep making no recipe stops being observed
_renderers: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_renderers_lock = threading.Lock()


def chat_renderer(tok) -> "ChatRenderer":
    """The renderer of `tok`'s chat template (one per tokenizer and template, kept while `tok` lives)."""
    template = tok.get_chat_template()
    with _renderers_lock:
        renderer = _renderers.get(tok)
        if renderer is None or renderer.template != template:
            renderer = _renderers[tok] = ChatRenderer(tok, template)
    return renderer


class ChatRenderer:
    """One tokenizer's chat template, with a cache of recipes per conversation shape."""

    def __init__(self, tok, template: str):
        self.tok = tok
        self.template = template
        self.recipes: dict[tuple, list[_Recipe]] = {}
        self.fruitless: dict[tuple, int] = {}  # shape -> learns in a row that kept no recipe
        self.seeded: set = set()  # saved recipe files already read into `recipes` (saved_recipes)
        self._compiled: tuple | None = None  # (observing template, why replay is off), compiled on first need
        self._mismatch: str | None = None

    @property
    def observing(self):
        """The template compiled to observe renders (None when it cannot be); compiled on first
        use, so rows that recipes render need neither jinja nor transformers."""
        if self._compiled is None:
            self._compiled = _observing_template(self.template)
        return self._compiled[0]

    @property
    def replay_off(self) -> str | None:
        """Why renders are never replayed from recipes, or None."""
        if self._mismatch is not None:
            return self._mismatch
        self.observing
        return self._compiled[1]

    def render(self, messages: list[dict], tools: list | None, generation_prompt: bool, template_kwargs: dict, plain: bool) -> str:
        """The conversation as text; `plain` says every message is exactly {role, content: str}."""
        if not (plain and tools is None) or self._mismatch is not None:
            return self.reference(messages, tools, generation_prompt, template_kwargs)
        key = (tuple([m["role"] for m in messages]), generation_prompt, tuple(template_kwargs.items()))
        contents = [m["content"] for m in messages]
        for recipe in self.recipes.get(key, ()):  # only ever made while replay was on, for this template
            if recipe.holds(contents):
                text = recipe.build(contents)
                if recipe.checks_left > 0:  # its first replays, for other contents, are checked too
                    recipe.checks_left -= 1
                    reference = self.reference(messages, tools, generation_prompt, template_kwargs)
                    if reference != text:
                        self._mismatch = "a replayed render differed from apply_chat_template"
                        return reference
                return text
        if self.observing is None or self.replay_off is not None:
            return self.reference(messages, tools, generation_prompt, template_kwargs)
        return self._learn(key, messages, contents, generation_prompt, template_kwargs)

    def reference(self, messages: list[dict], tools: list | None, generation_prompt: bool, template_kwargs: dict) -> str:
        """`apply_chat_template` itself: the slow path, and the truth recipes are checked against."""
        return self.tok.apply_chat_template(
            messages, tools=tools, tokenize=False, add_generation_prompt=generation_prompt, **template_kwargs
        )

    def _learn(self, key: tuple, messages: list[dict], contents: list[str], generation_prompt: bool, template_kwargs: dict) -> str:
        """Render with observed contents; keep the recipe if it is reusable and matches the reference."""
        text = self.reference(messages, None, generation_prompt, template_kwargs)
        fruitless = self.fruitless.get(key, 0)
        if fruitless >= MAX_FRUITLESS_LEARNS:
            return text
        recipe = self._observe(messages, generation_prompt, template_kwargs)
        if recipe is not None and recipe.reusable() and recipe.build(contents) != text:
            self._mismatch = "an observed render differed from apply_chat_template"
            return text
        if recipe is not None and recipe.reusable() and self._keep(key, recipe):
            self.fruitless[key] = 0
        else:
            self.fruitless[key] = fruitless + 1
        return text

    def _keep(self, key: tuple, recipe: "_Recipe") -> bool:
        """Store a recipe unless the cache is full; whether it was stored."""
        if key not in self.recipes and len(self.recipes) >= MAX_SHAPES:
            return False
        kept = self.recipes.setdefault(key, [])
        if len(kept) >= MAX_RECIPES_PER_SHAPE:
            return False
        kept.append(recipe)
        return True

    def _observe(self, messages: list[dict], generation_prompt: bool, template_kwargs: dict) -> "_Recipe | None":
        """One render with every content observed; None when the template failed or read a content unobservably."""
        rec = _Recorder()
        observed = [{"role": m["role"], "content": _Observed(m["content"], i, rec)} for i, m in enumerate(messages)]
        variables = {
            "messages": observed,
            "tools": None,
            "documents": None,
            "add_generation_prompt": generation_prompt,
            **self.tok.special_tokens_map,
            **template_kwargs,
        }
        try:
            pieces = list(self.observing.root_render_func(self.observing.new_context(variables)))
        except Exception:  # the reference render already succeeded; a failure here only means no recipe
            return None
        if rec.opaque:
            return None
        return _Recipe(_parts(pieces, rec), tuple(rec.guards))


class _Recipe:
    """A render's output as template text and content slots, and the guards that make it reusable."""

    __slots__ = ("parts", "guards", "named_guards", "checks_left")

    def __init__(self, parts: list, guards: tuple):
        self.parts = parts
        self.checks_left = CHECKED_REPLAYS
        self.named_guards = tuple(guards)  # (slot, str method name, args, kwargs, result), as recorded
        self.guards = tuple((slot, _STR_OPS[name], args, dict(kwargs) if kwargs else None, result) for slot, name, args, kwargs, result in guards)

    def reusable(self) -> bool:
        """Worth keeping: guards that pin whole strings (a split, a changed strip) match one row only."""
        return all(r is _SAME or not isinstance(r, (str, bytes, list, tuple)) for *_, r in self.guards)

    def holds(self, contents: list[str]) -> bool:
        """Whether these contents answer every question the template asked as the recorded ones did."""
        for slot, fn, args, kwargs, expected in self.guards:
            value = contents[slot]
            try:
                got = fn(value, *args) if kwargs is None else fn(value, *args, **kwargs)
            except Exception:
                return False
            if expected is _SAME:
                if not (type(got) is str and got == value):
                    return False
            elif type(got) is not type(expected) or got != expected:
                return False
        return True

    def build(self, contents: list[str]) -> str:
        return "".join([contents[p] if p.__class__ is int else p for p in self.parts])
